"""Write deploy/pretrained/NAME/MODEL_CARD.md for a shipped model from what its run recorded.

    .venv/bin/python scripts/model_card.py --name pig --model-dir runs/m_pig --data runs/qd/pig \
        --export deploy/pretrained/pig --source ../shared/data/quickdraw_npz/pig.npz \
        --score runs/pig_score_1.json --score runs/pig_score_2.json --out deploy/pretrained/pig/MODEL_CARD.md

Everything in the card is read back, nothing is typed in by hand: the hyperparameters from the
export's assets.extra/hparams.json, N_max and the scale factor from its metadata.json, the steps,
wall time and validation losses from MODEL_DIR/metrics.jsonl, the classifier's rate from the JSON
reports of `scripts/sketch_classifier.py score` (one per seed; with several, a per-seed table and the
pooled rate), the machine from /proc/cpuinfo. The reproduction commands are rebuilt from the hparams
that differ from the preset. What no record holds (how a run was stopped, what else was tried) goes
in with --steps-note and --note, each printed as given.

A run started with `sketch-rnn train --init-from FIRST/checkpoints/ckpt-N`: give --init-from-dir
FIRST and --init-step N. The card then shows both stages: the first run's records up to step N
and its hparams, the changes made at step N, the wall time of both, and the two train commands.
For a chain of stages, repeat both flags, earliest stage first.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from model.hparams import PRESETS, HParams  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sketch_classifier import pool_scores  # noqa: E402  (the classifier's reports, pooled over seeds)

ATTRIBUTION = ("Google Creative Lab, \"The Quick, Draw! Dataset\" "
               "(github.com/googlecreativelab/quickdraw-dataset), CC BY 4.0: the 2,500 drawings of the "
               "official sketch-rnn test split of this category, RDP-simplified (epsilon 2.0) by Quick "
               "Draw, re-split 2,300 / 100 / 100 into train / valid / test.")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def most_common_gap(records: list[dict], default: int) -> int:
    """The usual step spacing of a run's records (a resumed or final record may break it)."""
    gaps = collections.Counter(b["step"] - a["step"] for a, b in zip(records, records[1:]))
    return gaps.most_common(1)[0][0] if gaps else default


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]}, {len(names)} cores" if names else "unknown CPU"
    except OSError:
        return "unknown CPU"


def changes(hps: HParams, base: HParams) -> dict:
    """The fields where `hps` differs from `base`: name -> the value in `hps`."""
    return {k: new for k, (_, new) in base.diff(hps).items()}


def listed(values: dict) -> str:
    """`name=value` pairs for the card's text."""
    return ", ".join(f"`{k}={v}`" for k, v in sorted(values.items())) or "no changes"


def closest_preset(hps: HParams) -> tuple[str, dict]:
    """The preset with the fewest differing fields, and those fields (name -> value)."""
    best = None
    for name, preset in PRESETS.items():
        diff = changes(hps, preset)
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best


def seed_spec(reports: list[dict]) -> str:
    """The `score --seed` value that redraws these reports' seeds: `1-5` for a run of them, else `1,4`."""
    seeds = [r["source"]["seed"] for r in reports]
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(str(s) for s in seeds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True)
    p.add_argument("--model-dir", required=True, help="the training run (metrics.jsonl)")
    p.add_argument("--data", required=True, help="the `sketch-rnn preprocess` output it trained on")
    p.add_argument("--export", required=True, help="the shipped export (base or version dir)")
    p.add_argument("--source", required=True, help="the .npz the data was preprocessed from")
    p.add_argument("--score", action="append", default=[],
                   help="JSON report of `scripts/sketch_classifier.py score` (repeatable, one per seed: "
                   "the first is described in full, all are pooled)")
    p.add_argument("--steps-note", default="", help="a sentence on how the run was stopped, if it was")
    p.add_argument("--note", action="append", default=[],
                   help="a paragraph for the card's classifier section (repeatable), e.g. what else was tried")
    p.add_argument("--checkpoint-every", type=int, default=500,
                   help="the run's --checkpoint-every, for the reproduce line (default: 500)")
    p.add_argument("--init-from-dir", action="append", default=[],
                   help="an earlier stage's --model-dir, when the next was started with --init-from one "
                   "of its checkpoints (repeatable, earliest first)")
    p.add_argument("--init-step", type=int, action="append", default=[],
                   help="with each --init-from-dir: the step of that checkpoint")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if len(args.init_from_dir) != len(args.init_step):
        p.error("--init-from-dir and --init-step go together, one --init-step per --init-from-dir")
    if args.init_step != sorted(set(args.init_step)):
        p.error(f"--init-step must increase from stage to stage (got {args.init_step})")
    if args.note and not args.score:
        p.error("--note paragraphs go in the classifier section: give --score as well")

    from deploy.sample import resolve_export_dir

    version_dir, version = resolve_export_dir(args.export)
    with open(os.path.join(version_dir, "assets.extra", "hparams.json"), encoding="utf-8") as f:
        hps = HParams.from_json(f.read())
    with open(os.path.join(version_dir, "assets.extra", "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    metrics = read_jsonl(os.path.join(args.model_dir, "metrics.jsonl"))
    # Earlier stages: each one's hparams and its records from the previous stage's end to its own.
    stage_hps, earlier, first_wall, start = [], [], 0.0, -1
    for stage_dir, end in zip(args.init_from_dir, args.init_step):
        with open(os.path.join(stage_dir, "hparams.json"), encoding="utf-8") as f:
            stage_hps.append(HParams.from_json(f.read()))
        records = [m for m in read_jsonl(os.path.join(stage_dir, "metrics.jsonl")) if start < m["step"] <= end]
        first_wall += max((m["wall_s"] for m in records if m["split"] == "train"), default=0.0)
        earlier += records
        start = end
    last_init = args.init_step[-1] if args.init_step else None
    if stage_hps:
        metrics = earlier + [m for m in metrics if m["step"] > last_init]
    train = [m for m in metrics if m["split"] == "train"]
    valid = [m for m in metrics if m["split"] == "valid"]
    last_train = train[-1]
    wall_h = (first_wall + last_train["wall_s"]) / 3600
    shipped_step = version
    # The best of the records up to the shipped step; of the last stage's alone when there are several
    # (its costs may not compare with earlier ones: a changed KL floor or weight changes the cost).
    at_export = [m for m in valid if m["step"] <= shipped_step
                 and (last_init is None or m["step"] > last_init)] or valid
    best = min(at_export, key=lambda m: m["cost"])
    # Every stage's hparams, the first one's against the nearest preset, and what each later stage
    # changed from the one before: (step it started at, name -> new value).
    all_hps = stage_hps + [hps]
    preset, diff = closest_preset(all_hps[0])
    stage_changes = [(step, changes(new, old)) for step, old, new in zip(args.init_step, all_hps, all_hps[1:])]
    last_stage = f" of stage {len(all_hps)}" if stage_hps else ""
    # The run's --eval-every / --log-every, read back from the spacing of its records.
    eval_every = most_common_gap(valid, default=1000)
    log_every = most_common_gap(train, default=100)
    def set_flags(values: dict) -> str:
        return " ".join(f"--set {k}={v}" for k, v in sorted(values.items()))

    size = sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(version_dir) for n in names)

    resimplify = float(meta.get("resimplify_epsilon") or 0.0)
    lines = [f"# {args.name}: sketch-rnn trained on Quick Draw `{args.name}`", ""]
    lines += ["A conditional sketch-rnn (bidirectional LSTM encoder, LSTM decoder with a Gaussian mixture "
              "head; Ha & Eck 2017) exported as a versioned SavedModel: signatures "
              "`sample`, `complete`, `encode`, `decode`.", ""]
    lines += ["```bash", f"sketch-rnn sample --model {args.name} --num 16 --temperature 0.5 --output out/{args.name}",
              f"sketch-rnn serve --model {args.name}", "```", ""]
    lines += ["## Data", "", f"`{os.path.basename(args.source)}`: {ATTRIBUTION}", "",
              f"Preprocessed by `sketch-rnn preprocess`"
              + (f" (`--resimplify-epsilon {resimplify:g}`: RDP run again on the simplified "
                 f"strokes at this tolerance, fewer points per sketch)" if resimplify else "")
              + f": {meta['counts']['train']} train, "
              f"{meta['counts']['valid']} valid, {meta['counts']['test']} test sketches; N_max "
              f"{meta['n_max']} (the longest sketch), scale factor {meta['scale_factor']:.3f}.", ""]
    lines += ["## Training", "",
              f"- preset `{preset}` with {listed(diff)}"
              + "".join(f" to step {step}; from there (`sketch-rnn train --init-from` its checkpoint"
                        + (": weights, optimizer state and step, so the schedules go on" if i == 0 else "")
                        + f") with {listed(changed)}" for i, (step, changed) in enumerate(stage_changes)),
              f"- network: encoder {hps.enc_rnn_size} x 2, decoder {hps.dec_rnn_size}, z {hps.z_size}, "
              f"M = {hps.num_mixture}, batch {hps.batch_size}, recurrent dropout {hps.recurrent_dropout_rate}",
              f"- schedule: KL weight {hps.kl_weight_start} -> {hps.kl_weight} (rate {hps.kl_decay_rate} per "
              f"step), KL floor {hps.kl_tolerance}, learning rate {hps.learning_rate} (decay {hps.decay_rate}, "
              f"min {hps.min_learning_rate}), gradient clip {hps.grad_clip}",
              f"- shipped checkpoint: step {shipped_step} (lowest validation cost{last_stage} "
              f"up to it: step {best['step']}); "
              f"trained to step {last_train['step']} in {wall_h:.2f} h of wall clock "
              f"on {cpu_name()}" + (f". {args.steps_note}" if args.steps_note else ""),
              f"- export size: {size / 1e6:.1f} MB", ""]
    lines += ["Validation (whole valid split, padded to N_max as the reference; L_R = L_s + L_p, KL floored as "
              "the reference reports it):", "", "| step | L_R | L_s | L_p | KL | KL (raw) |", "|---|---|---|---|---|---|"]
    stride = max(1, len(valid) // 10)
    # Every stride-th record, plus the shipped checkpoint's and the last one.
    shown_steps = {m["step"] for m in valid[::stride]} | {best["step"], valid[-1]["step"]}
    for step in args.init_step:  # Where each later stage began.
        shown_steps.add(max((m["step"] for m in valid if m["step"] <= step), default=-1))
    shown = [m for m in valid if m["step"] in shown_steps]
    for m in shown:
        lines.append(f"| {m['step']} | {m['recon']:.3f} | {m['l_s']:.3f} | {m['l_p']:.3f} | "
                     f"{m['kl_floored']:.3f} | {m['kl']:.3f} |")
    lines.append("")
    if args.score:
        reports = []
        for path in args.score:
            with open(path, encoding="utf-8") as f:
                reports.append(json.load(f))
        try:
            pooled = pool_scores(reports)
        except ValueError as e:
            p.error(str(e))
        score = reports[0]
        src = score["source"]
        real = ""
        info_path = os.path.join(score.get("classifier", ""), "classifier.json")
        if os.path.exists(info_path):
            with open(info_path, encoding="utf-8") as f:
                held = json.load(f).get("held_out_test", {}).get(args.name, {})
            if "accuracy" in held:
                real = f" (it recognises {held['accuracy']:.0%} of the {held['n']} real held-out {args.name} drawings)"
        thing = args.name.replace("_", " ")
        lines += [f"## Does it draw {'an' if thing[0] in 'aeiou' else 'a'} {thing}?", "",
                  f"{score['num']} samples from z ~ N(0, I) at temperature {src['temperature']} (seed {src['seed']}), "
                  f"drawn through the SavedModel's `sample` signature alone, classified by the project's own "
                  f"small CNN over rasterised sketches (`scripts/sketch_classifier.py`, classes pig, face, "
                  f"alarm_clock and other Quick Draw categories){real}: **{score['recognised']:.0%} recognised as "
                  f"{args.name}**. Degenerate samples: {score['near_empty']} near-empty (single dots), "
                  f"{score['never_ending']} that never ended (ran to N_max = {src.get('max_len')}).",
                  "", f"Class histogram: `{json.dumps(score['histogram'], sort_keys=True)}`", ""]
        if len(reports) > 1:
            lines += [f"Over {len(reports)} seeds, {pooled['num']} samples: **{pooled['hits']} / {pooled['num']} "
                      f"= {pooled['hits'] / pooled['num']:.1%} recognised**, {pooled['never_ending']} never ended, "
                      f"{pooled['near_empty']} near-empty.", "",
                      "| seed | recognised | never ended | near-empty |", "|---|---|---|---|"]
            lines += [f"| {r['seed']} | {r['hits']} / {r['num']} | {r['never_ending']} | {r['near_empty']} |"
                      for r in pooled["rows"]]
            lines.append("")
        for note in args.note:
            lines += [note, ""]
        lines += [f"Reproduce: `python scripts/sketch_classifier.py train` (once), then `python "
                  f"scripts/sketch_classifier.py score --export deploy/pretrained/{args.name} --category "
                  f"{args.name} --num {score['num']} --temperature {src['temperature']} --seed {seed_spec(reports)}`"
                  + (" (the pooled rate; each seed's report under `per_seed`)." if len(reports) > 1 else "."), ""]
    intervals = f"--checkpoint-every {args.checkpoint_every} --eval-every {eval_every} --log-every {log_every}"

    def train_command(run_dir: str, values: dict, steps: int, extra: str = "") -> str:
        return (f"sketch-rnn train --data runs/qd/{args.name} --model-dir {run_dir} --preset {preset} "
                f"{set_flags(values)} {extra}--steps {steps} {intervals}")

    run_dir = f"runs/m_{args.name}"
    commands = [f"sketch-rnn preprocess --input {args.source} --output runs/qd/{args.name}"
                + (f" --resimplify-epsilon {resimplify:g}" if resimplify else "")]
    # Stage 1 to its checkpoint, then each later stage from the one before with its own hparams.
    ends = args.init_step + [last_train["step"]]
    commands.append(train_command(run_dir, diff, ends[0]))
    for i, stage in enumerate(all_hps[1:], start=2):
        previous, run_dir = run_dir, f"runs/m_{args.name}_{i}"
        commands.append(train_command(run_dir, changes(stage, PRESETS[preset]), ends[i - 1],
                                      f"--init-from {previous}/checkpoints/ckpt-{ends[i - 2]} "))
    # Which checkpoint the shipped step is: the best one, the last one, or named by its path.
    which = ("best" if shipped_step == best["step"] else "latest" if shipped_step == last_train["step"]
             else f"{run_dir}/checkpoints/ckpt-{shipped_step}")
    commands.append(f"sketch-rnn export --model-dir {run_dir} --export-dir deploy/pretrained/{args.name} "
                    f"--checkpoint {which} --version {shipped_step}")
    lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

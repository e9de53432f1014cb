"""`sketch-rnn preprocess`: Quick Draw ndjson / sketch-rnn .npz -> stroke-5 TFRecords (Apache Beam).

Thin entry point: parses its own flags, passes every flag it does not know to Beam untouched
(`--runner`, `--project`, `--region`, `--temp_location`, `--setup_file`, ...), runs the job and
prints a summary. Without `--runner` it runs on the DirectRunner in multi-process mode on all cores.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from pipeline import records

EPILOG = """\
Any other flag goes to Apache Beam unchanged, e.g. to run on Dataflow:
  sketch-rnn preprocess --input 'gs://quickdraw_dataset/full/raw/*.ndjson' --output gs://BUCKET/qd \\
    --runner DataflowRunner --project PROJECT --region REGION \\
    --temp_location gs://BUCKET/tmp --setup_file ./setup.py
Locally the default is --runner DirectRunner --direct_running_mode multi_processing
--direct_num_workers 0 (all cores); give your own values to override them.

Outputs: DIR/{train,valid,test}-SSSSS-of-NNNNN.tfrecord.gz, DIR/rejected-*.jsonl (dead letters:
one JSON object per bad input record with "reason", "detail" and the original "line") and
DIR/metadata.json (scale factor, max_seq_len, classes, counts, rejection reasons, ...).
Streaming: DIR/{split}-<window>-*.tfrecord.gz, DIR/rejected-<window>-*.jsonl and
DIR/manifest-<window>.json per window (read = written + dead-lettered + filtered, per reason).
A batch run writes into DIR/.staging-*/ and, only when the job succeeded, replaces these files
(and only these) of an earlier run in DIR; a failed run leaves DIR as it was. A truncated or
corrupt compressed input, or inputs without a single record or kept drawing, fail the run.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sketch-rnn preprocess",
        description="Convert Quick Draw drawings (raw or simplified ndjson) or sketch-rnn .npz files "
                    "into normalized, padded stroke-5 TFRecords with Apache Beam.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        # No abbreviations: a Beam flag must never be taken for a prefix of one of ours.
        allow_abbrev=False)
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", action="append", default=[], metavar="PATTERN",
                    help="file pattern (local or gs://), repeatable: *.ndjson[.gz] or *.npz")
    io.add_argument("--output", metavar="DIR", help="output directory (local or gs://)")
    io.add_argument("--format", choices=records.FORMATS, default="auto",
                    help="input format; auto: .npz by name, ndjson raw vs simplified per drawing "
                         "(strokes with [x, y, t] are raw). Default: auto")
    io.add_argument("--num-shards", type=int, default=0,
                    help="shards per split (0: let the runner decide). Default: 0")
    sel = parser.add_argument_group("selection")
    sel.add_argument("--categories", action="append", default=[], metavar="WORD[,WORD...]",
                     help="keep only these categories (case-insensitive, '_' = space); repeatable")
    sel.add_argument("--recognized-only", action="store_true",
                     help="keep only drawings the Quick Draw game recognized")
    sel.add_argument("--max-seq-len", type=int, default=None,
                     help="drop (count) sketches with more stroke-3 points; N_max of the output. "
                          "Default: 250 (or the --metadata-from value when streaming)")
    proc = parser.add_argument_group("processing")
    proc.add_argument("--rdp-epsilon", type=float, default=records.Config.rdp_epsilon,
                      help="Ramer-Douglas-Peucker tolerance on the 0..255 canvas for raw input. "
                           "Default: 2.0 (Quick Draw's)")
    proc.add_argument("--resimplify-epsilon", type=float, default=records.Config.resimplify_epsilon,
                      help="run RDP again at this tolerance on every drawing once simplified "
                           "(raw ones at --rdp-epsilon first; .npz and simplified ndjson as they "
                           "come), in their units (Quick Draw's 0..255 canvas): shorter sequences, "
                           "e.g. 6 takes Quick Draw's pigs from 88 to 55 points on average; "
                           "--max-seq-len applies after it. Default: 0 (off)")
    proc.add_argument("--valid-fraction", type=float, default=records.Config.valid_fraction,
                      help="fraction of key_ids hashed to valid (npz keeps its own split). Default: 0.05")
    proc.add_argument("--test-fraction", type=float, default=records.Config.test_fraction,
                      help="fraction of key_ids hashed to test. Default: 0.05")
    proc.add_argument("--scale-factor", type=float, default=None,
                      help="divide offsets by this instead of the train split's std (one global "
                           "combine over the train dx, dy)")
    st = parser.add_argument_group("streaming")
    st.add_argument("--streaming", action="store_true",
                    help="read ndjson lines from Pub/Sub and write TFRecord shards per window; needs "
                         "--scale-factor or --metadata-from")
    st.add_argument("--pubsub-topic", metavar="projects/P/topics/T", help="topic of ndjson lines")
    st.add_argument("--pubsub-subscription", metavar="projects/P/subscriptions/S",
                    help="subscription of ndjson lines (instead of --pubsub-topic)")
    st.add_argument("--metadata-from", metavar="DIR",
                    help="output DIR of an earlier batch run: its scale factor and max_seq_len are used")
    st.add_argument("--window-seconds", type=float, default=60.0,
                    help="window length (by the time the job reads a message); one set of shards "
                         "and one manifest-<window>.json with its counts per window. Default: 60")
    return parser


def _categories(values: list[str]) -> tuple[str, ...]:
    words = [records.normalize_word(w) for v in values for w in v.split(",") if w.strip()]
    return tuple(sorted(set(words)))


def _has_flag(beam_args: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in beam_args)


def beam_options(beam_args: list[str], streaming: bool = False):
    """PipelineOptions from the pass-through flags, with the local defaults filled in:
    DirectRunner in multi-process mode on all cores (unless the user chose otherwise)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = list(beam_args)
    if not _has_flag(args, "--runner"):
        args += ["--runner", "DirectRunner"]
    runner = PipelineOptions(args).view_as(StandardOptions).runner or ""
    if runner.endswith("DirectRunner") and not streaming:
        if not _has_flag(args, "--direct_running_mode"):
            args += ["--direct_running_mode", "multi_processing"]
        if not _has_flag(args, "--direct_num_workers"):
            args += ["--direct_num_workers", "0"]
    options = PipelineOptions(args)
    if streaming:
        options.view_as(StandardOptions).streaming = True
    return options


def unknown_flags(parser: argparse.ArgumentParser, beam_args: list[str]) -> list[str]:
    """The pass-through flags that neither this command nor any Beam PipelineOptions knows, each
    with a suggestion: a typo such as `--categorie` must not be ignored by Beam and run a job."""
    import difflib

    from apache_beam.options.pipeline_options import PipelineOptions

    quiet = logging.getLogger("apache_beam.options.pipeline_options")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # Beam warns "Discarding unparseable args": we say it better.
    try:
        known = set(PipelineOptions(beam_args).get_all_options(retain_unknown_options=False))
        every = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True)
        beam_names = set(PipelineOptions([]).get_all_options())
    finally:
        quiet.setLevel(level)
    ours = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    candidates = ours + [f"--{n}" for n in sorted(beam_names)]
    out = []
    given = {a.lstrip("-").split("=", 1)[0]: a.split("=", 1)[0] for a in beam_args if a.startswith("-")}
    for name in sorted(set(every) - known):
        flag = given.get(name, f"--{name}")
        close = difflib.get_close_matches(flag, candidates, n=1, cutoff=0.75)
        out.append(flag + (f" (did you mean {close[0]}?)" if close else ""))
    return out


def _fail(parser: argparse.ArgumentParser, message: str) -> int:
    parser.print_usage(sys.stderr)
    print(f"sketch-rnn preprocess: error: {message}", file=sys.stderr)
    return 2


class JobError(Exception):
    """The batch job ran but its result is not usable (bad input file, nothing read or kept);
    the message is one line and nothing in --output was replaced."""


def _error(message: str) -> int:
    print(f"sketch-rnn preprocess: error: {message}", file=sys.stderr)
    return 1


def print_summary(meta: dict, seconds: float, out=None) -> None:
    out = out or sys.stdout
    read = meta["lines_read"]
    print(f"sketch-rnn preprocess: {read} records read in {seconds:.1f} s "
          f"({read / max(seconds, 1e-9):.0f} drawings/s)", file=out)
    print(f"  written {meta['written']}: " + ", ".join(f"{k} {v}" for k, v in meta["counts"].items()),
          file=out)
    print(f"  dead-lettered {meta['dead_lettered']}, filtered {meta['filtered']}"
          + ("" if meta["accounted"] else "  (MISMATCH: written + rejected != read)"), file=out)
    for reason, n in meta["rejected"].items():
        print(f"    {reason}: {n} ({records.REASONS.get(reason, '?')})", file=out)
    print(f"  scale factor {meta['scale_factor']:.6g} ({meta['scale_factor_source']}), "
          f"max_seq_len {meta['max_seq_len']}, {len(meta['classes'])} classes", file=out)


def run_batch(args: argparse.Namespace, config: records.Config, beam_args: list[str]) -> dict:
    """Runs the batch job to completion into a staging directory, checks its result and moves it
    into --output (replacing the earlier run's files). Returns its metadata.

    Raises ValueError for bad arguments (before the job), JobError for a job whose input is bad;
    --output is then unchanged.
    """
    import apache_beam as beam

    from pipeline import beam_job

    found = beam_job.classify_inputs(args.input, args.format)
    beam_job.check_output(args.output)
    options = beam_options(beam_args)
    staging = beam_job.new_staging_dir(args.output)
    unchanged = f"nothing was replaced in {args.output}"
    try:
        with beam.Pipeline(options=options) as p:
            beam_job.build_batch(p, found.ndjson, found.npz, staging, config, args.scale_factor,
                                 args.num_shards, compressed_paths=found.compressed,
                                 sources=found.sources)
        meta = beam_job.load_metadata_file(staging)
        errors = meta.get("input_errors") or []
        if errors:
            more = f" (and {len(errors) - 1} more input files)" if len(errors) > 1 else ""
            raise JobError(f"{errors[0]}{more}; {unchanged}")
        if meta["lines_read"] == 0:
            raise JobError(f"no records read from {', '.join(found.sources)} (the inputs are empty); "
                           f"{unchanged}")
        if meta["written"] == 0:
            reasons = ", ".join(f"{r} {n}" for r, n in meta["rejected"].items())
            raise JobError(f"no drawings kept: all {meta['lines_read']} records read were rejected "
                           f"({reasons}); {unchanged}")
        deleted, _ = beam_job.promote_staging(staging, args.output)
    finally:
        beam_job.discard_staging(staging)
    if deleted:
        print(f"sketch-rnn preprocess: replaced {len(deleted)} files of an earlier run in {args.output}",
              file=sys.stderr)
    return meta


def run_streaming(args: argparse.Namespace, config: records.Config, scale_factor: float,
                  base_meta: dict, beam_args: list[str]) -> None:
    import apache_beam as beam

    from pipeline import beam_job

    source = args.pubsub_subscription or args.pubsub_topic
    beam_job.write_metadata_file(args.output, beam_job.streaming_metadata(
        dict(base_meta, scale_factor=scale_factor), config, [source]))
    options = beam_options(beam_args, streaming=True)
    with beam.Pipeline(options=options) as p:
        if args.pubsub_subscription:
            messages = p | "ReadPubSub" >> beam.io.ReadFromPubSub(subscription=args.pubsub_subscription)
        else:
            messages = p | "ReadPubSub" >> beam.io.ReadFromPubSub(topic=args.pubsub_topic)
        # Pub/Sub messages are bytes; process_line decodes them strictly (bad ones: `not_utf8`).
        # Windows by arrival time: no message is ever late (see build_streaming).
        beam_job.build_streaming(messages, args.output, config, scale_factor, args.window_seconds,
                                 shards=max(args.num_shards, 1), arrival_time=True)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, beam_args = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    logging.getLogger().setLevel(logging.WARNING)
    # The local job service relays every worker's start-up warnings; keep the terminal readable.
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
    # But keep Dataflow's own INFO lines (the job's id and its monitoring console URL).
    logging.getLogger("apache_beam.runners.dataflow").setLevel(logging.INFO)
    unknown = unknown_flags(parser, beam_args)
    if unknown:
        return _fail(parser, f"unknown option(s): {', '.join(unknown)}; see sketch-rnn preprocess --help "
                             "(Beam's own options, such as --runner or --project, pass through)")
    if not args.output:
        return _fail(parser, "--output DIR is required")
    base_meta: dict = {}
    scale_factor = args.scale_factor
    if args.streaming:
        if not (args.pubsub_topic or args.pubsub_subscription):
            return _fail(parser, "--streaming needs --pubsub-topic or --pubsub-subscription")
        if args.input:
            return _fail(parser, "--streaming reads Pub/Sub, not --input files; run the batch job "
                                 "for files")
        if args.metadata_from:
            from pipeline import beam_job
            try:
                base_meta = beam_job.load_metadata_file(args.metadata_from)
            except (OSError, ValueError) as e:
                return _fail(parser, f"cannot read metadata.json in --metadata-from "
                                     f"{args.metadata_from!r}: {e}")
            if scale_factor is None:
                scale_factor = float(base_meta["scale_factor"])
            if args.max_seq_len is None:
                args.max_seq_len = int(base_meta["max_seq_len"])
            elif args.max_seq_len != int(base_meta["max_seq_len"]):
                return _fail(parser, f"--max-seq-len {args.max_seq_len} differs from the batch run's "
                                     f"{base_meta['max_seq_len']}; the records would not match")
        if scale_factor is None:
            return _fail(parser, "--streaming needs --scale-factor or --metadata-from DIR "
                                 "(the output of a batch run)")
    elif not args.input:
        return _fail(parser, "give at least one --input PATTERN (or --streaming with Pub/Sub)")
    if scale_factor is not None and not scale_factor > 0:
        return _fail(parser, f"--scale-factor must be > 0, got {scale_factor}")
    if args.num_shards < 0:
        return _fail(parser, f"--num-shards must be >= 0, got {args.num_shards}")
    try:
        config = records.Config(
            max_seq_len=args.max_seq_len if args.max_seq_len is not None else 250,
            rdp_epsilon=args.rdp_epsilon, resimplify_epsilon=args.resimplify_epsilon,
            valid_fraction=args.valid_fraction,
            test_fraction=args.test_fraction,
            input_format=args.format,
            categories=_categories(args.categories), recognized_only=args.recognized_only)
    except ValueError as e:
        return _fail(parser, str(e))

    start = time.time()
    if args.streaming:
        run_streaming(args, config, scale_factor, base_meta, beam_args)
        return 0
    args.scale_factor = scale_factor
    try:
        meta = run_batch(args, config, beam_args)
    except ValueError as e:  # bad patterns and the like, found before the job starts
        return _fail(parser, str(e))
    except JobError as e:
        return _error(str(e))
    except Exception:
        print(f"sketch-rnn preprocess: error: the job failed (traceback below); nothing was replaced "
              f"in {args.output}", file=sys.stderr)
        raise
    print_summary(meta, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())

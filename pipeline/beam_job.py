"""The Beam job: composes the per-record functions of `pipeline/records.py` into a pipeline.

Batch (`build_batch`, run by `pipeline/cli.py`):

    ndjson lines, as bytes                       .npz files
    (ReadFromText per pattern; compressed files  (pipeline/safe_npz.py, own split kept)
     by inputs.read_lines: a truncated file ->       /
     metadata `input_errors`)                       /
          \\                                      /
           Results: Drawing | Rejection   (one per line / sketch)
              |-> rejections: dead letters -> DIR/rejected-*.jsonl; all counted by reason
              |-> train drawings' dx, dy -> CombineGlobally(MomentsFn) -> scale factor (std)
              '-> drawings / scale factor (side input) -> stroke-5 -> tf.train.Example
                    -> DIR/{train,valid,test}-SSSSS-of-NNNNN.tfrecord.gz
           counts (read / written per split and word / rejected per reason) + scale factor
              + the written file names -> DIR/metadata.json (written last, by the pipeline itself)

DIR is a staging directory (`new_staging_dir`: OUTPUT/.staging-<time>-<id>/); only a job that
succeeded is moved into OUTPUT (`promote_staging`: the earlier run's files deleted, the new ones
moved in, metadata.json last), so a failed job never deletes or mixes with the previous output.

Streaming (`build_streaming`): the same per-record functions over an unbounded PCollection of
lines, a fixed scale factor, fixed windows (by arrival time), one drawing per key_id per window,
TFRecord shards per window and split, and a manifest per window with its counts.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import os
import time
import uuid
from typing import Any, Iterable, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms import window

from pipeline import inputs as inputs_lib
from pipeline import records
from pipeline.records import DEAD_LETTER, Config, Rejection
from pipeline.schema import FORMAT_VERSION, METADATA_FILE, METADATA_KEYS, SPLITS, TFRECORD_SUFFIX

DEAD_LETTER_PREFIX = "rejected"
DEAD_LETTER_SUFFIX = ".jsonl"
READ = ("read",)


class CountKeys(beam.CombineFn):
    """Counts hashable keys into one `collections.Counter` (few distinct keys; lifts before shuffle)."""

    def create_accumulator(self):
        return collections.Counter()

    def add_input(self, acc, key):
        acc[key] += 1
        return acc

    def merge_accumulators(self, accs):
        out = collections.Counter()
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc):
        return acc


class MomentsFn(beam.CombineFn):
    """(count, mean, M2) of all dx, dy, merged with Chan's formula (stable; any order)."""

    def create_accumulator(self):
        return (0, 0.0, 0.0)

    def add_input(self, acc, strokes3):
        return records.merge_moments(acc, records.offset_moments(strokes3))

    def merge_accumulators(self, accs):
        out = (0, 0.0, 0.0)
        for acc in accs:
            out = records.merge_moments(out, acc)
        return out

    def extract_output(self, acc):
        return acc


# Live progress in the Dataflow UI (and the runner's metrics); the exact counts come from the
# CountKeys combine, which, unlike metrics, every runner computes exactly once.
_DRAWINGS_OK = beam.metrics.Metrics.counter("sketch_rnn", "drawings_kept")
_REJECTED = beam.metrics.Metrics.counter("sketch_rnn", "drawings_rejected")


def _route_result(result, with_moments: bool):
    """Drawing -> main output (and its strokes to "train_strokes" if train); Rejection -> its count
    key to "rejected_keys" and, for bad input, its dead-letter line to "dead_letters"."""
    if isinstance(result, Rejection):
        _REJECTED.inc()
        yield beam.pvalue.TaggedOutput("rejected_keys", ("rejected", result.reason))
        if result.reason == "corrupt_input":  # a whole file: its message goes into the metadata
            yield beam.pvalue.TaggedOutput("rejected_keys", ("input_error", result.detail))
        if result.kind == DEAD_LETTER:
            yield beam.pvalue.TaggedOutput("dead_letters", result.to_json())
        return
    _DRAWINGS_OK.inc()
    if with_moments and result.split == "train":
        yield beam.pvalue.TaggedOutput("train_strokes", result.strokes3)
    yield result


def _to_example(drawing, scale_factor: float, max_seq_len: int):
    """Drawing -> (split, word, serialized Example), and its ("written", split, word) and
    ("length", n) count keys (the second gives N_max, the longest written sketch)."""
    yield (drawing.split, drawing.word,
           records.drawing_to_example(drawing, scale_factor, max_seq_len))
    yield beam.pvalue.TaggedOutput("written_keys", ("written", drawing.split, drawing.word))
    yield beam.pvalue.TaggedOutput("written_keys", ("length", int(drawing.strokes3.shape[0])))


class ExamplesFromResults(beam.PTransform):
    """Results (Drawing | Rejection) -> examples, dead letters, count keys, scale factor.

    Outputs (a dict of PCollections):
      examples:     (split, word, serialized tf.train.Example) for every kept drawing
      dead_letters: JSON lines `{"reason", "detail", "line"}` for bad input
      count_keys:   ("written", split, word) and ("length", n) per example, ("rejected", reason) per
                    rejection
      moments:      one (count, mean, M2) of the train split's dx, dy (empty if a scale is given)
      scale_factor: one float, the train std or the given `scale_factor`
    """

    def __init__(self, config: Config, scale_factor: float | None = None):
        super().__init__()
        self.config = config
        self.scale_factor = scale_factor

    def expand(self, results):
        with_moments = self.scale_factor is None
        # One DoFn routes everything (fewer transforms: pipeline construction is part of the
        # job's fixed cost on small local runs).
        parts = results | "Route" >> beam.FlatMap(_route_result, with_moments).with_outputs(
            "train_strokes", "rejected_keys", "dead_letters", main="drawings")
        if with_moments:
            moments = parts.train_strokes | "TrainMoments" >> beam.CombineGlobally(MomentsFn())
            scale = moments | "Std" >> beam.Map(records.scale_factor_from_moments)
        else:
            moments = results.pipeline | "NoMoments" >> beam.Create([(0, 0.0, 0.0)])
            scale = results.pipeline | "GivenScale" >> beam.Create([float(self.scale_factor)])
        examples = parts.drawings | "ToExamples" >> beam.FlatMap(
            _to_example, beam.pvalue.AsSingleton(scale), self.config.max_seq_len
        ).with_outputs("written_keys", main="examples")
        count_keys = ((examples.written_keys, parts.rejected_keys)
                      | "FlattenKeys" >> beam.Flatten())
        return {"examples": examples.examples, "dead_letters": parts.dead_letters,
                "count_keys": count_keys, "moments": moments, "scale_factor": scale}


class Preprocess(beam.PTransform):
    """Input records -> `ExamplesFromResults` outputs plus `counts`.

    Records are ndjson lines (str) and `records.NpzSketch`es (or a Rejection for an unreadable file).
    `counts` is one Counter of all count keys, with ("read",) once per input record, counted before
    any processing so that `written + dead-lettered + filtered == read` is a real check.
    """

    def __init__(self, config: Config, scale_factor: float | None = None):
        super().__init__()
        self.config = config
        self.scale_factor = scale_factor

    def expand(self, records_in):
        config = self.config
        results = records_in | "Process" >> beam.Map(records.process_record, config)
        out = results | "Examples" >> ExamplesFromResults(config, self.scale_factor)
        read_keys = records_in | "ReadKeys" >> beam.Map(lambda _: READ)
        out["counts"] = ((out["count_keys"], read_keys) | "AllKeys" >> beam.Flatten()
                         | "Count" >> beam.CombineGlobally(CountKeys()))
        return out


# ---- metadata -------------------------------------------------------------------------------------

def summarize_counts(counts: collections.Counter) -> dict[str, Any]:
    """The accounting of a Counter of count keys (a whole batch job's, or one streamed window's):
    read, written (per split and per class), dead-lettered, filtered, per rejection reason, the
    longest written sketch. `accounted`: written + dead_lettered + filtered == read."""
    split_counts = {split: 0 for split in SPLITS}
    class_counts: dict[str, dict[str, int]] = {}
    rejected: dict[str, int] = {}
    input_errors = []
    longest = 0
    for key, n in counts.items():
        if key[0] == "written":
            _, split, word = key
            split_counts[split] += n
            class_counts.setdefault(word, {s: 0 for s in SPLITS})[split] += n
        elif key[0] == "rejected":
            rejected[key[1]] = rejected.get(key[1], 0) + n
        elif key[0] == "length":
            longest = max(longest, int(key[1]))
        elif key[0] == "input_error":
            input_errors.append(key[1])
    dead = sum(n for r, n in rejected.items() if records.REASONS[r] == DEAD_LETTER)
    filtered = sum(rejected.values()) - dead
    written = sum(split_counts.values())
    read = int(counts.get(READ, 0))
    return {"read": read, "written": int(written), "dead_lettered": int(dead),
            "filtered": int(filtered), "accounted": written + dead + filtered == read,
            "counts": split_counts, "class_counts": dict(sorted(class_counts.items())),
            "rejected": dict(sorted(rejected.items())),
            "rejection_kinds": {r: records.REASONS[r] for r in sorted(rejected)},
            "longest_sketch": longest, "input_errors": sorted(input_errors)}


def build_metadata(counts: collections.Counter, moments, scale_factor: float, scale_source: str,
                   config: Config, sources: Sequence[str], files: Iterable[str] = ()) -> dict[str, Any]:
    """The `metadata.json` dict from the job's counts (keys: see `schema.METADATA_KEYS` and README)."""
    summary = summarize_counts(counts)
    return {
        "format_version": FORMAT_VERSION,
        "scale_factor": float(scale_factor),
        "scale_factor_source": scale_source,
        "train_offsets": {"count": int(moments[0]), "mean": float(moments[1]),
                          "std": float(records.scale_factor_from_moments(moments))
                          if moments[0] else None},
        "max_seq_len": config.max_seq_len,
        # N_max: the longest written sketch over all splits (the reference's get_max_len); the
        # trainer's loss divisor and sampling length (schema.n_max). Records are padded to max_seq_len.
        "longest_sketch": summary["longest_sketch"],
        "classes": sorted(summary["class_counts"]),
        "counts": summary["counts"],
        "class_counts": summary["class_counts"],
        "lines_read": summary["read"],
        "written": summary["written"],
        "dead_lettered": summary["dead_lettered"],
        "filtered": summary["filtered"],
        "accounted": summary["accounted"],
        "rejected": summary["rejected"],
        "rejection_kinds": summary["rejection_kinds"],
        # Input files that could not be read to their end (truncated / corrupt compressed files):
        # the CLI refuses such a run's output.
        "input_errors": summary["input_errors"],
        "rdp_epsilon": config.rdp_epsilon,
        "resimplify_epsilon": config.resimplify_epsilon,
        "split_fractions": {"train": 1.0 - config.valid_fraction - config.test_fraction,
                            "valid": config.valid_fraction, "test": config.test_fraction},
        "split_hash": "md5(key_id)[:8] / 2^64: < test -> test, < test+valid -> valid, else train"
                      " (npz keeps its own split)",
        "input_format": config.input_format,
        "categories": list(config.categories),
        "recognized_only": config.recognized_only,
        "sources": list(sources),
        "files": sorted(os.path.basename(f) for f in files),
    }


def write_metadata_file(output: str, metadata: dict[str, Any]) -> str:
    """Writes `output/metadata.json` through Beam's FileSystems (local or gs://, no TensorFlow).

    Same format as `schema.write_metadata` (indent 2, sorted keys); read it with `schema.read_metadata`.
    """
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"metadata is missing keys {missing}")
    path = FileSystems.join(output, METADATA_FILE)
    with FileSystems.create(path, mime_type="application/json",
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True).encode("utf-8"))
    return path


def load_metadata_file(output: str) -> dict[str, Any]:
    path = FileSystems.join(output, METADATA_FILE)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read().decode("utf-8"))


def _output_patterns(directory: str) -> list[str]:
    patterns = [FileSystems.join(directory, f"{split}-*{TFRECORD_SUFFIX}") for split in SPLITS]
    return patterns + [FileSystems.join(directory, f"{DEAD_LETTER_PREFIX}-*{DEAD_LETTER_SUFFIX}"),
                       FileSystems.join(directory, METADATA_FILE)]


def output_files(directory: str) -> list[str]:
    """The files of a batch run in `directory` (only this job's own names:
    `{train,valid,test}-*.tfrecord.gz`, `rejected-*.jsonl`, `metadata.json`), metadata.json first."""
    found = [m.path for r in FileSystems.match(_output_patterns(directory)) for m in r.metadata_list]
    return sorted(found, key=lambda f: os.path.basename(f) != METADATA_FILE)


def clear_outputs(output: str) -> list[str]:
    """Deletes the files an earlier batch run wrote to `output` (`output_files`: only this job's
    names; metadata.json first, so that no reader sees it beside missing shards), so that shards of
    an earlier run with another shard count can never mix with the new ones. Returns what it deleted."""
    found = output_files(output)
    if found:
        FileSystems.delete(found[:1])
        if found[1:]:
            FileSystems.delete(found[1:])
    return found


STAGING_PREFIX = ".staging-"


def _is_local(path: str) -> bool:
    return "://" not in path


def check_output(output: str) -> None:
    """Raises ValueError (one line, saying how to fix it) unless `output` is a directory this
    process can write to, creating it if needed. Called before the job so that a bad --output
    costs nothing."""
    if _is_local(output):
        path = os.path.abspath(output)
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"--output {output} is a file, not a directory; give a directory path")
        parent = path
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ValueError(f"--output {output}: {parent} is a file, not a directory; "
                             "give a directory path")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create --output {output} ({e.strerror or e}); choose a "
                             "directory you can write to") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"--output {output} is not writable; choose a directory you can write "
                             "to (or fix its permissions)")
    probe = FileSystems.join(output, f".write-test-{uuid.uuid4().hex}")
    try:
        with FileSystems.create(probe, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001 - BeamIOError, OSError, auth errors of remote stores
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot write to --output {output} ({first}); choose a directory you can "
                         "write to") from None


def new_staging_dir(output: str) -> str:
    """A fresh staging directory inside `output` for one run (a hidden name, never matched by the
    split patterns of `pipeline/schema.py`)."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return FileSystems.join(output, f"{STAGING_PREFIX}{stamp}-{uuid.uuid4().hex[:8]}")


def discard_staging(staging: str) -> None:
    """Deletes a staging directory and everything in it (best effort: it may not exist)."""
    # Local: the directory itself (deleted recursively); object stores: everything under the prefix.
    target = staging.rstrip("/") if _is_local(staging) else staging.rstrip("/") + "/"
    try:
        FileSystems.delete([target])
    except Exception:  # noqa: BLE001 - nothing there, or already gone
        pass


def promote_staging(staging: str, output: str) -> tuple[list[str], list[str]]:
    """Replaces the earlier run's files in `output` by the finished job in `staging`.

    Order: the old metadata.json, then the old shards and dead letters are deleted; the new shards
    and dead letters are moved in; the new metadata.json last (the trainer reads it first, so it
    never sees a mix). Moves are renames (copy + delete on object stores). Returns (deleted, new).
    """
    new = output_files(staging)
    if not new or os.path.basename(new[0]) != METADATA_FILE:
        raise RuntimeError(f"the job left no {METADATA_FILE} in {staging}")
    deleted = clear_outputs(output)
    meta, rest = new[0], new[1:]
    if rest:
        FileSystems.rename(rest, [FileSystems.join(output, os.path.basename(f)) for f in rest])
    FileSystems.rename([meta], [FileSystems.join(output, METADATA_FILE)])
    return deleted, [FileSystems.join(output, os.path.basename(f)) for f in rest + [meta]]


# ---- inputs ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Inputs:
    """The `--input` patterns sorted by how they are read."""

    ndjson: list[str]       # patterns (or files) of uncompressed ndjson: ReadFromText, splittable
    compressed: list[str]   # compressed ndjson files: inputs.read_lines (truncation is an error)
    npz: list[str]          # sketch-rnn .npz files
    sources: list[str]      # the patterns as given (metadata `sources`)


def _is_directory(path: str) -> bool:
    if _is_local(path):
        return os.path.isdir(path)
    return path.endswith("/")


def classify_inputs(patterns: Sequence[str], input_format: str) -> Inputs:
    """Sorts `--input` patterns into ndjson patterns, compressed ndjson files and npz files, with
    clear errors (ValueError, one line).

    Each pattern must match at least one file, and no directory. With `auto`, `.npz` files are npz
    and all others ndjson (compressed by suffix: .gz, .bz2, .xz, .lzma, .deflate, .zst); a pattern
    may not mix npz and ndjson.
    """
    ndjson, compressed, npz = [], [], []
    for pattern in patterns:
        matched = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list]
        dirs = [p for p in matched if _is_directory(p)]
        if not matched and not any(c in pattern for c in "*?["):
            inside = FileSystems.match([FileSystems.join(pattern.rstrip("/"), "*")])[0].metadata_list
            dirs = [pattern] if inside else []
        if dirs:
            d = dirs[0].rstrip("/")
            raise ValueError(f"--input {d} is a directory; give a glob such as {d}/*.ndjson")
        if not matched:
            raise ValueError(f"--input {pattern!r} matches no file; check the path or glob")
        if input_format == "npz":
            npz.extend(sorted(matched))
            continue
        is_npz = [p.endswith(".npz") for p in matched]
        if input_format == "auto" and all(is_npz):
            npz.extend(sorted(matched))
            continue
        if input_format == "auto" and any(is_npz):
            raise ValueError(f"--input {pattern!r} matches both .npz and ndjson files; "
                             "give them as separate --input patterns")
        packed = sorted(p for p in matched
                        if inputs_lib.compression_of(p) != CompressionTypes.UNCOMPRESSED)
        if not packed:
            ndjson.append(pattern)
        else:  # the compressed files are read by inputs.read_lines, the others one by one
            compressed.extend(packed)
            ndjson.extend(sorted(set(matched) - set(packed)))
    return Inputs(ndjson, compressed, npz, list(patterns))


def _read_npz_file(path: str):
    # zipfile seeks in the (seekable) stream: only the members are read, each with a size limit.
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        yield from records.iter_npz(path, f)


def build_batch(p: beam.Pipeline, ndjson_patterns: Sequence[str], npz_paths: Sequence[str],
                output: str, config: Config, scale_factor: float | None = None,
                num_shards: int = 0, compressed_paths: Sequence[str] = (),
                sources: Sequence[str] | None = None) -> None:
    """Adds the whole batch job to pipeline `p` (sources, `Preprocess`, sinks, metadata).

    `output` is the directory written (the CLI gives a staging directory). ndjson lines are read as
    bytes (`records.decode_line` decodes them: a bad byte is one dead letter, not a failed job);
    `compressed_paths` are read by `inputs.read_lines` (a truncated file: metadata `input_errors`).
    """
    if sources is None:
        sources = list(ndjson_patterns) + list(compressed_paths) + list(npz_paths)
    sources = list(sources)
    inputs = [p | f"ReadNdjson[{i}]" >> beam.io.ReadFromText(pat, coder=beam.coders.BytesCoder())
              for i, pat in enumerate(ndjson_patterns)]
    if compressed_paths:
        inputs.append(p | "CompressedFiles" >> beam.Create(list(compressed_paths))
                      | "SpreadCompressedFiles" >> beam.Reshuffle()
                      | "ReadCompressed" >> beam.FlatMap(inputs_lib.read_lines))
    if npz_paths:
        inputs.append(p | "NpzFiles" >> beam.Create(list(npz_paths))
                      | "SpreadNpzFiles" >> beam.Reshuffle()
                      | "ReadNpz" >> beam.FlatMap(_read_npz_file))
    if not inputs:
        raise ValueError("no input: give at least one --input pattern")
    records_in = inputs | "FlattenInputs" >> beam.Flatten() if len(inputs) > 1 else inputs[0]
    out = records_in | "Preprocess" >> Preprocess(config, scale_factor)
    counts = out["counts"]

    written_files = []
    by_split = out["examples"] | "BySplit" >> beam.Partition(
        lambda e, n: SPLITS.index(e[0]), len(SPLITS))
    for split, examples in zip(SPLITS, by_split):
        written_files.append(
            examples
            | f"Serialized[{split}]" >> beam.Map(lambda e: e[2])
            | f"Write[{split}]" >> beam.io.WriteToTFRecord(
                FileSystems.join(output, split), file_name_suffix=TFRECORD_SUFFIX,
                num_shards=num_shards, compression_type=CompressionTypes.GZIP))
    written_files.append(out["dead_letters"] | "WriteDeadLetters" >> beam.io.WriteToText(
        FileSystems.join(output, DEAD_LETTER_PREFIX), file_name_suffix=DEAD_LETTER_SUFFIX,
        num_shards=num_shards))
    all_files = written_files | "AllFiles" >> beam.Flatten()
    scale_source = "train_std" if scale_factor is None else "given"

    def write_meta(_, counts, moments, scale, files):
        meta = build_metadata(counts, moments, scale, scale_source, config, sources, files)
        return write_metadata_file(output, meta)

    _ = (p | "MetadataTrigger" >> beam.Create([None])
         | "WriteMetadata" >> beam.Map(
             write_meta, counts=beam.pvalue.AsSingleton(counts),
             moments=beam.pvalue.AsSingleton(out["moments"]),
             scale=beam.pvalue.AsSingleton(out["scale_factor"]),
             files=beam.pvalue.AsList(all_files)))


# ---- streaming ------------------------------------------------------------------------------------

class TFRecordGzipSink(fileio.FileSink):
    """fileio sink writing `(split, word, serialized)` elements as GZIP TFRecords."""

    def open(self, fh):
        self._gz = gzip.GzipFile(fileobj=fh, mode="wb")

    def write(self, element):
        records.write_tfrecord(self._gz, element[2])

    def flush(self):
        # Closing the GzipFile writes the gzip trailer; fileio closes `fh` itself.
        self._gz.close()


MANIFEST_PREFIX = "manifest"
MANIFEST_SUFFIX = ".json"


def _stamp_arrival(element):
    """Timestamps a message with the time the job reads it (arrival time, see build_streaming)."""
    return window.TimestampedValue(element, time.time())


def _key_drawings(result):
    """Drawing -> (key_id, drawing) for the per-window dedupe; a Rejection to "rejections"."""
    if isinstance(result, Rejection):
        yield beam.pvalue.TaggedOutput("rejections", result)
    else:
        yield result.key_id, result


def _first_per_key_id(item):
    """(key_id, drawings of one window) -> one Drawing and a `duplicate` Rejection per other copy.
    The same one is kept whatever the order (the smallest stroke bytes) if the copies differ."""
    key_id, drawings = item
    drawings = sorted(drawings, key=lambda d: (d.strokes3.tobytes(), d.word))
    yield drawings[0]
    for _ in drawings[1:]:
        yield Rejection("duplicate", f"key_id {key_id!r} seen {len(drawings)} times in this window",
                        key_id)


def _window_iso(t) -> str:
    """A window bound as the shard names spell it (`fileio`: naive ISO 8601, UTC)."""
    return t.to_utc_datetime().isoformat()


def manifest_name(start: str, end: str) -> str:
    return f"{MANIFEST_PREFIX}-{start}-{end}{MANIFEST_SUFFIX}"


def window_manifest(counts: collections.Counter, start: str, end: str, files: Iterable[str],
                    config: Config, scale_factor: float, moments=(0, 0.0, 0.0)) -> dict[str, Any]:
    """One streamed window's manifest: `summarize_counts` of its messages (read, written per split
    and class, dead_lettered, filtered, per reason, accounted) plus the window bounds (UTC), the
    window's shard and dead-letter file names, and the (count, mean, std) of its train drawings'
    dx, dy in pixels (`train_offsets`: a std far from `scale_factor` means the stream drifted)."""
    summary = summarize_counts(counts)
    del summary["input_errors"]  # Files only: a stream has none.
    return {"format_version": FORMAT_VERSION, "window_start": start + "Z", "window_end": end + "Z",
            **summary, "files": sorted(os.path.basename(f) for f in files),
            "train_offsets": {"count": int(moments[0]), "mean": float(moments[1]),
                              "std": float(records.scale_factor_from_moments(moments))
                              if moments[0] else None},
            "scale_factor": float(scale_factor), "max_seq_len": config.max_seq_len}


class _WriteManifest(beam.DoFn):
    """("window", [("counts", Counter) | ("moments", m) | ("file", name), ...]) of one window ->
    output/manifest-<start>-<end>.json, written to a hidden name and renamed (readers never see a
    partial file). Yields the path."""

    def __init__(self, output: str, config: Config, scale_factor: float):
        self.output, self.config, self.scale_factor = output, config, scale_factor

    def process(self, element, w=beam.DoFn.WindowParam):
        counts, files, moments = collections.Counter(), [], (0, 0.0, 0.0)
        for kind, value in element[1]:
            if kind == "counts":
                counts.update(value)
            elif kind == "moments":
                moments = records.merge_moments(moments, value)
            else:
                files.append(value)
        start, end = _window_iso(w.start), _window_iso(w.end)
        manifest = window_manifest(counts, start, end, files, self.config, self.scale_factor,
                                   moments)
        name = manifest_name(start, end)
        path = FileSystems.join(self.output, name)
        temp = FileSystems.join(self.output, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with FileSystems.create(temp, mime_type="application/json",
                                compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        FileSystems.rename([temp], [path])
        yield path


def build_streaming(lines, output: str, config: Config, scale_factor: float,
                    window_seconds: float = 60.0, shards: int = 1, arrival_time: bool = False) -> None:
    """Adds the streaming job to an unbounded (or TestStream) PCollection of ndjson `lines`.

    Per window of `window_seconds`:
      output/{split}-<window start>-<window end>-SSSSS-of-NNNNN.tfrecord.gz  (splits with drawings)
      output/rejected-<window start>-<window end>-SSSSS-of-NNNNN.jsonl       (dead letters)
      output/manifest-<window start>-<window end>.json                       (the window's accounting)
    The manifest is written after the window's files (it lists them) and holds read, written per
    split, dead_lettered, filtered, per reason, with `written + dead_lettered + filtered == read`.

    `arrival_time`: window by the time the job reads each message (the CLI's choice) instead of the
    elements' own timestamps (Pub/Sub publish time, or TestStream's). A message then always falls in
    a window that is still open: nothing is late, nothing is dropped, each window fires once.

    Duplicates: within a window one drawing per key_id is kept; every other copy is counted as
    filtered (`duplicate`). Copies that land in different windows are both written.
    """
    if arrival_time:
        lines = lines | "ArrivalTime" >> beam.Map(_stamp_arrival)
    windowed = lines | "Window" >> beam.WindowInto(window.FixedWindows(window_seconds))
    keyed = (windowed | "Process" >> beam.Map(records.process_record, config)
             | "KeyById" >> beam.FlatMap(_key_drawings).with_output_types(tuple[str, Any])
             .with_outputs("rejections", main="drawings"))
    firsts = (keyed.drawings | "GroupById" >> beam.GroupByKey()
              | "FirstPerKeyId" >> beam.FlatMap(_first_per_key_id))
    results = (keyed.rejections, firsts) | "Deduplicated" >> beam.Flatten()
    out = results | "Examples" >> ExamplesFromResults(config, scale_factor)
    example_files = out["examples"] | "WriteExamples" >> fileio.WriteToFiles(
        path=output, destination=lambda e: e[0], sink=lambda dest: TFRecordGzipSink(),
        file_naming=fileio.destination_prefix_naming(TFRECORD_SUFFIX), shards=shards)
    dead_files = out["dead_letters"] | "WriteDeadLetters" >> fileio.WriteToFiles(
        path=output, destination=lambda e: DEAD_LETTER_PREFIX, sink=lambda dest: fileio.TextSink(),
        file_naming=fileio.destination_prefix_naming(DEAD_LETTER_SUFFIX), shards=shards)
    # Per window: one Counter of its messages (read before processing) and their outcomes, plus the
    # names of the files written for it -> its manifest (after the files: the GroupByKey fires when
    # the window is complete, and the files' results are part of it).
    read_keys = windowed | "ReadKeys" >> beam.Map(lambda _: READ)
    keys = (out["count_keys"], read_keys) | "WindowKeys" >> beam.Flatten()
    _ = keys | "CountOutcomes" >> beam.Map(_count_metric)  # live counters (Dataflow UI)
    counts = keys | "WindowCounts" >> beam.CombineGlobally(CountKeys()).without_defaults()
    moments = (firsts | "TrainDrawings" >> beam.FlatMap(
        lambda d: [d.strokes3] if isinstance(d, records.Drawing) and d.split == "train" else [])
        | "WindowMoments" >> beam.CombineGlobally(MomentsFn()).without_defaults())
    parts = (counts | "CountsPart" >> beam.Map(lambda c: ("window", ("counts", c))),
             moments | "MomentsPart" >> beam.Map(lambda m: ("window", ("moments", m))),
             (example_files, dead_files) | "AllWindowFiles" >> beam.Flatten()
             | "FilesPart" >> beam.Map(lambda r: ("window", ("file", r.file_name))))
    _ = (parts | "ManifestParts" >> beam.Flatten() | "PerWindow" >> beam.GroupByKey()
         | "WriteManifest" >> beam.ParDo(_WriteManifest(output, config, scale_factor)))


def _count_metric(key: tuple) -> None:
    if key[0] == "length":  # One per sketch length: not worth a counter each.
        return
    beam.metrics.Metrics.counter("sketch_rnn", "/".join(str(k) for k in key)).inc()


def streaming_metadata(base: dict[str, Any], config: Config, sources: Sequence[str]) -> dict[str, Any]:
    """metadata.json of a streaming output: the batch run's scale factor and classes; counts are 0
    (the data is unbounded: each window's manifest-*.json counts its messages) and `streaming` is
    true. No `longest_sketch`: a stream's sketches can be as long as max_seq_len, which is then
    N_max."""
    return {
        "format_version": FORMAT_VERSION,
        "scale_factor": float(base["scale_factor"]),
        "scale_factor_source": base.get("scale_factor_source", "given"),
        "max_seq_len": config.max_seq_len,
        "classes": list(base.get("classes", [])),
        "counts": {split: 0 for split in SPLITS},
        "lines_read": 0,
        "rejected": {},
        "rdp_epsilon": config.rdp_epsilon,
        "resimplify_epsilon": config.resimplify_epsilon,
        "sources": list(sources),
        "streaming": True,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

"""Per-record logic of the preprocessing job, as plain functions (no Beam, no TensorFlow).

One input record (an ndjson line, or one sketch of an .npz file) becomes exactly one result:
a `Drawing` (stroke-3 plus its split) or a `Rejection` (reason, kind, the line). The Beam job
(`pipeline/beam_job.py`) only wires these functions together, so everything here is tested
without a runner.

Rejection kinds: `dead_letter` for bad input (written with the line to `DIR/rejected-*`) and
`filtered` for valid drawings the options exclude (too long, category, unrecognized) and blank
lines, which are only counted.

Hostile input is bounded before the expensive steps: lines over `MAX_LINE_BYTES` are not parsed,
drawings over `MAX_STROKES` strokes or `MAX_POINTS` points are not converted, and simplification
has its own bounds (`simplify.MAX_RESAMPLED_POINTS`, `simplify.MAX_RDP_WORK`); all become
`too_complex` dead letters. `.npz` files are read by `pipeline/safe_npz.py` (never `np.load` with
pickles).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
from typing import Iterator

import numpy as np

from model.strokes import stroke3_to_stroke5
from pipeline import safe_npz
from pipeline import simplify as simplify_lib
from pipeline.schema import KEY_ID, LENGTH, SPLITS, STROKES, WORD

DEAD_LETTER = "dead_letter"
FILTERED = "filtered"

# Rejection reasons (metadata `rejected` keys) and their kind.
REASONS = {
    "malformed_json": DEAD_LETTER,      # not JSON, or not a JSON object
    "missing_field": DEAD_LETTER,       # word / key_id / drawing absent or empty
    "wrong_type": DEAD_LETTER,          # a field of the wrong JSON type
    "length_mismatch": DEAD_LETTER,     # x, y (and t) of a stroke differ in length
    "non_finite": DEAD_LETTER,          # NaN / Infinity coordinates
    "absurd_coordinates": DEAD_LETTER,  # |coordinate| > MAX_ABS_COORDINATE
    "empty_drawing": DEAD_LETTER,       # no points at all
    "single_point": DEAD_LETTER,        # one point, or all points at the same place
    "bad_npz_sketch": DEAD_LETTER,      # an .npz entry that is not a finite [n, 3] array
    "unsafe_npz": DEAD_LETTER,          # an .npz whose pickle names anything but numpy arrays
    "too_large": DEAD_LETTER,           # an .npz member over safe_npz.MAX_MEMBER_BYTES
    "not_utf8": DEAD_LETTER,            # a line that is not UTF-8 (invalid bytes, UTF-16, NUL)
    "too_complex": DEAD_LETTER,         # over MAX_LINE_BYTES / MAX_STROKES / MAX_POINTS or the
                                        # simplification bounds (simplify.TooComplex)
    "corrupt_input": DEAD_LETTER,       # a compressed input file that is truncated or corrupt
                                        # (pipeline/inputs.py); the CLI then fails the whole run
    "too_long": FILTERED,               # more than --max-seq-len stroke-3 points
    "category_excluded": FILTERED,      # word not in --categories
    "unrecognized": FILTERED,           # --recognized-only and recognized is not true
    "blank_line": FILTERED,             # an empty or whitespace-only line (nothing to inspect)
    "duplicate": FILTERED,              # streaming: a key_id already kept in the same window
                                        # (Pub/Sub redelivery or a publisher's retry)
}
# Quick Draw canvases are at most a few thousand pixels; anything beyond this is corrupt data.
MAX_ABS_COORDINATE = 1e5
# Bounds on one input line / drawing. Over the 8,019 raw Quick Draw drawings of ../shared/data and
# the bundled sample the maxima are 37 KB per line, 46 strokes and 1,174 points: these are 100x+.
MAX_LINE_BYTES = 8 << 20
MAX_STROKES = 10_000
MAX_POINTS = 100_000
DEAD_LETTER_PREVIEW_CHARS = 64 << 10  # of a line over MAX_LINE_BYTES, kept in its dead letter
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
FORMATS = ("auto", "raw", "simplified", "npz")


@dataclasses.dataclass(frozen=True)
class Config:
    """Options of the per-record functions (picklable; shipped to the workers)."""

    max_seq_len: int = 250
    rdp_epsilon: float = simplify_lib.DEFAULT_RDP_EPSILON
    # > 0: RDP again at this tolerance on every drawing once simplified (raw ones at rdp_epsilon
    # first; simplified ndjson and .npz as they come), in their units (Quick Draw's 0..255 canvas):
    # shorter sequences. 0: off.
    resimplify_epsilon: float = 0.0
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    input_format: str = "auto"           # auto | raw | simplified (ndjson lines)
    categories: tuple[str, ...] = ()     # normalized words to keep; empty = all
    recognized_only: bool = False

    def __post_init__(self):
        if self.max_seq_len < 2:
            raise ValueError(f"max_seq_len must be >= 2, got {self.max_seq_len}")
        if not self.rdp_epsilon > 0:
            raise ValueError(f"rdp_epsilon must be > 0, got {self.rdp_epsilon}")
        if not self.resimplify_epsilon >= 0:
            raise ValueError(f"resimplify_epsilon must be >= 0, got {self.resimplify_epsilon}")
        if not (0 <= self.valid_fraction and 0 <= self.test_fraction
                and self.valid_fraction + self.test_fraction < 1):
            raise ValueError("valid and test fractions must be >= 0 and sum to less than 1, got "
                             f"{self.valid_fraction} and {self.test_fraction}")
        if self.input_format not in FORMATS:
            raise ValueError(f"unknown input format {self.input_format!r}; expected one of {FORMATS}")


@dataclasses.dataclass(frozen=True)
class Drawing:
    """A valid drawing: `strokes3 [n, 3]` float32 (dx, dy, pen_lifted) in pixels, before scaling."""

    key_id: str
    word: str
    split: str
    strokes3: np.ndarray


@dataclasses.dataclass(frozen=True)
class Rejection:
    reason: str
    detail: str
    line: str  # the input line (ndjson) or a description of the npz entry

    @property
    def kind(self) -> str:
        return REASONS[self.reason]

    def to_json(self) -> str:
        """The dead-letter line: `{"reason", "detail", "line"}` (line = the original text)."""
        return json.dumps({"reason": self.reason, "detail": self.detail, "line": self.line})


def normalize_word(word: str) -> str:
    """Category names compare case-insensitively, with `_` (file names) equal to a space."""
    return " ".join(word.replace("_", " ").lower().split())


def assign_split(key_id: str, valid_fraction: float, test_fraction: float) -> str:
    """Deterministic split of a drawing by a fixed hash of its key_id.

    The first 8 bytes of MD5(key_id) as a number in [0, 1): below `test_fraction` -> test, below
    `test + valid` -> valid, else train. Independent of process, runner, order and sharding
    (Python's `hash` is salted per process, so it must not be used here).
    """
    u = int.from_bytes(hashlib.md5(key_id.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


def _number_array(values) -> np.ndarray | None:
    """A JSON list of numbers -> 1-D int/float array (converted in C, no per-point Python loop);
    None for anything else (strings, booleans, null, nested lists, ints beyond float64)."""
    if not isinstance(values, list):
        return None
    try:
        arr = np.array(values)
    except (ValueError, OverflowError):  # ragged nesting
        return None
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        return None
    return arr


def parse_strokes(drawing, input_format: str) -> tuple[np.ndarray, np.ndarray, bool] | Rejection:
    """Validates a Quick Draw `drawing` field.

    Returns (`xy [P, 2]` float64, `stroke_lengths [S]` int64, is_raw) or a Rejection (line left
    empty; the caller fills it). Empty strokes are dropped (they carry no ink); a stroke with a
    third list (t, raw format) must have it as long as x and y.
    """
    def reject(reason, detail):
        return Rejection(reason, detail, "")

    if not isinstance(drawing, list):
        return reject("wrong_type", f"drawing must be a list of strokes, got {type(drawing).__name__}")
    if len(drawing) > MAX_STROKES:
        return reject("too_complex", f"{len(drawing):,} strokes > MAX_STROKES {MAX_STROKES:,}")
    xs, ys, lengths, arity = [], [], [], set()
    total = 0
    for i, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            return reject("wrong_type", f"stroke {i} must be [[x...], [y...]] or [[x...], [y...], [t...]]")
        total += len(stroke[0]) if isinstance(stroke[0], list) else 0
        if total > MAX_POINTS:  # checked before converting the stroke
            return reject("too_complex", f"more than MAX_POINTS {MAX_POINTS:,} points "
                                         f"({total:,} in the first {i + 1} of {len(drawing):,} strokes)")
        axes = [_number_array(axis) for axis in stroke]
        if any(a is None for a in axes):
            return reject("wrong_type", f"stroke {i} must hold lists of numbers")
        if any(a.size != axes[0].size for a in axes):
            return reject("length_mismatch", f"stroke {i} has axes of lengths {[a.size for a in axes]}")
        arity.add(len(stroke))
        if axes[0].size:
            xs.append(axes[0])
            ys.append(axes[1])
            lengths.append(axes[0].size)
    if not lengths:
        return reject("empty_drawing", "the drawing has no points")
    if len(arity) > 1:
        return reject("wrong_type", "strokes mix the raw [x, y, t] and simplified [x, y] forms")
    is_raw = {"raw": True, "simplified": False}.get(input_format, 3 in arity)
    xy = np.stack([np.concatenate(xs), np.concatenate(ys)], axis=1).astype(np.float64)
    if not np.isfinite(xy).all():
        return reject("non_finite", "coordinates include NaN or Infinity")
    if np.abs(xy).max() > MAX_ABS_COORDINATE:
        return reject("absurd_coordinates",
                      f"|coordinate| up to {np.abs(xy).max():.6g} > {MAX_ABS_COORDINATE:g}")
    if xy.shape[0] < 2 or not (xy != xy[0]).any():
        return reject("single_point", f"{xy.shape[0]} point(s), all at the same place")
    return xy, np.asarray(lengths, dtype=np.int64), is_raw


def _as_text(raw: bytes) -> str:
    """Bytes -> text with nothing lost: invalid UTF-8 bytes become `\\xNN` escapes."""
    return raw.decode("utf-8", errors="backslashreplace")


def decode_line(line: bytes | str) -> str | Rejection:
    """An input line (bytes as read, or str) -> its text, or a Rejection before any parsing.

    UTF-8 only, strictly: invalid bytes, a UTF-16 byte-order mark or NUL bytes (UTF-16 text read as
    bytes) -> `not_utf8`, with the line kept as `backslashreplace`d text. A UTF-8 byte-order mark
    (first line of a file saved by some editors) is dropped. Longer than `MAX_LINE_BYTES` ->
    `too_complex` (not parsed; the dead letter keeps the first `DEAD_LETTER_PREVIEW_CHARS`).
    Empty or whitespace-only -> `blank_line` (filtered: counted, not dead-lettered).
    """
    if isinstance(line, str):
        raw, text = None, line
        size = len(line)
    else:
        raw = bytes(line)
        text = None
        size = len(raw)
    if size > MAX_LINE_BYTES:
        preview = (text[:DEAD_LETTER_PREVIEW_CHARS] if raw is None else
                   _as_text(raw[:DEAD_LETTER_PREVIEW_CHARS]))
        return Rejection("too_complex", f"a line longer than MAX_LINE_BYTES {MAX_LINE_BYTES:,} ({size:,} "
                         f"bytes read); not parsed (the first {DEAD_LETTER_PREVIEW_CHARS:,} characters "
                         "are kept)", preview)
    if raw is not None:
        if raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM):]
        if raw.startswith(_UTF16_BOMS):
            return Rejection("not_utf8", "starts with a UTF-16 byte-order mark: the file is UTF-16; "
                             "convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)", _as_text(raw))
        nul = raw.find(0)
        if nul >= 0:
            return Rejection("not_utf8", f"NUL byte at {nul}: UTF-16 or binary data, "
                             "not UTF-8 text (convert the file to UTF-8)", _as_text(raw))
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection("not_utf8", f"invalid UTF-8 at byte {e.start}: "
                             f"{raw[e.start:e.start + 4]!r} ({e.reason})", _as_text(raw))
    elif text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        return Rejection("blank_line", "an empty or blank line", text)
    return text


def process_line(line: bytes | str, config: Config) -> Drawing | Rejection:
    """One Quick Draw ndjson line (raw or simplified; bytes as read, or str) -> Drawing or Rejection.

    Raw drawings are simplified like Quick Draw's simplified set (`pipeline/simplify.py`);
    simplified ones are kept as they are; with `config.resimplify_epsilon` both get RDP again at
    that tolerance. The stroke-3 of a kept drawing has at most
    `config.max_seq_len` rows.
    """
    line = decode_line(line)
    if isinstance(line, Rejection):
        return line
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as e:
        return Rejection("malformed_json", f"not JSON: {e}"[:200], line)
    if not isinstance(record, dict):
        return Rejection("malformed_json", f"a JSON {type(record).__name__}, not an object", line)
    for field in ("word", "key_id", "drawing"):
        if record.get(field) in (None, "", []):
            return Rejection("missing_field", f"field {field!r} is missing or empty", line)
    word, key_id = record["word"], record["key_id"]
    if not isinstance(word, str):
        return Rejection("wrong_type", f"word must be a string, got {type(word).__name__}", line)
    if isinstance(key_id, bool) or not isinstance(key_id, (str, int)):
        return Rejection("wrong_type", f"key_id must be a string, got {type(key_id).__name__}", line)
    recognized = record.get("recognized")
    if recognized is not None and not isinstance(recognized, bool):
        return Rejection("wrong_type", f"recognized must be true/false, got {recognized!r}"[:200], line)
    parsed = parse_strokes(record["drawing"], config.input_format)
    if isinstance(parsed, Rejection):
        return dataclasses.replace(parsed, line=line)
    if config.categories and normalize_word(word) not in config.categories:
        return Rejection("category_excluded", f"word {word!r} not in --categories", line)
    if config.recognized_only and recognized is not True:
        return Rejection("unrecognized", "recognized is not true (--recognized-only)", line)
    xy, lengths, is_raw = parsed
    if is_raw:
        if 2 * lengths.size > config.max_seq_len:  # RDP keeps both ends of every stroke
            return Rejection("too_long", f"{lengths.size} strokes: at least {2 * lengths.size} points "
                             f"> --max-seq-len {config.max_seq_len}", line)
        try:
            xy, lengths = simplify_lib.simplify(xy, lengths, config.rdp_epsilon)
        except simplify_lib.TooComplex as e:
            return Rejection("too_complex", str(e), line)
    if config.resimplify_epsilon > 0:
        try:
            xy, lengths = simplify_lib.rdp_points(xy, lengths, config.resimplify_epsilon)
        except simplify_lib.TooComplex as e:
            return Rejection("too_complex", str(e), line)
    strokes3 = simplify_lib.to_stroke3(xy, lengths)
    if strokes3.shape[0] > config.max_seq_len:
        return Rejection("too_long", f"{strokes3.shape[0]} points > --max-seq-len {config.max_seq_len}",
                         line)
    key_id = str(key_id)
    return Drawing(key_id, word, assign_split(key_id, config.valid_fraction, config.test_fraction),
                   strokes3)


def process_npz_sketch(strokes3, word: str, split: str, key_id: str, config: Config
                       ) -> Drawing | Rejection:
    """One sketch of a sketch-rnn .npz (already stroke-3) -> Drawing (its own split kept) or Rejection.

    Int / float arrays are checked in their own dtype (no float64 copy of a huge sketch before the
    length check); anything else is converted to float64 first.
    """
    where = f"{key_id} ({word})"
    arr = strokes3
    if not (isinstance(arr, np.ndarray) and safe_npz.is_numeric_dtype(arr.dtype)):
        try:
            arr = np.asarray(strokes3, dtype=np.float64)
        except (TypeError, ValueError) as e:
            return Rejection("bad_npz_sketch", f"not numeric: {e}"[:200], where)
    if arr.ndim != 2 or arr.shape[1] != 3:
        return Rejection("bad_npz_sketch", f"shape {arr.shape}, expected [n, 3]", where)
    if arr.shape[0] == 0:
        return Rejection("empty_drawing", "the sketch has no points", where)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        return Rejection("non_finite", "offsets include NaN or Infinity", where)
    # min / max in the array's own dtype: np.abs of int16 -32768 would overflow
    if max(-float(arr[:, :2].min()), float(arr[:, :2].max())) > MAX_ABS_COORDINATE:
        return Rejection("absurd_coordinates", f"|offset| > {MAX_ABS_COORDINATE:g}", where)
    if arr.shape[0] < 2:
        return Rejection("single_point", "one point", where)
    # Re-simplified, a longer sketch may fit: then only MAX_POINTS bounds the input.
    cap = MAX_POINTS if config.resimplify_epsilon > 0 else config.max_seq_len
    if arr.shape[0] > cap:
        return Rejection("too_long", f"{arr.shape[0]} points > "
                         f"{'the limit' if cap == MAX_POINTS else '--max-seq-len'} {cap}", where)
    if config.categories and normalize_word(word) not in config.categories:
        return Rejection("category_excluded", f"word {word!r} not in --categories", where)
    out = arr.astype(np.float32)
    out[:, 2] = (arr[:, 2] != 0).astype(np.float32)
    if config.resimplify_epsilon > 0:
        try:
            out = simplify_lib.resimplify_stroke3(out, config.resimplify_epsilon)
        except simplify_lib.TooComplex as e:
            return Rejection("too_complex", str(e), where)
        if out.shape[0] > config.max_seq_len:
            return Rejection("too_long", f"{out.shape[0]} points (after --resimplify-epsilon "
                             f"{config.resimplify_epsilon:g}) > --max-seq-len {config.max_seq_len}",
                             where)
    return Drawing(key_id, word, split, out)


_NPZ_REASONS = {safe_npz.UnsafeNpz: "unsafe_npz", safe_npz.NpzTooLarge: "too_large"}


def _npz_rejection(error: safe_npz.NpzError, where: str) -> Rejection:
    return Rejection(_NPZ_REASONS.get(type(error), "bad_npz_sketch"), str(error), where)


@dataclasses.dataclass(frozen=True)
class NpzSketch:
    """One sketch read from a sketch-rnn .npz file, before validation."""

    key_id: str
    word: str
    split: str
    strokes3: object


def iter_npz(path: str, data, max_member_bytes: int = safe_npz.MAX_MEMBER_BYTES
             ) -> Iterator[NpzSketch | Rejection]:
    """All sketches of one sketch-rnn .npz file (its bytes, or a seekable binary file), splits kept.

    key_id is `<file name>:<split>:<index>`, word the file name without `.npz`. Read with
    `pipeline/safe_npz.py` (never `np.load(allow_pickle=True)`). One dead letter (counted as one
    record read) for a file that is not a readable npz or has no train/valid/test member, for a
    member that is unsafe (`unsafe_npz`), over `max_member_bytes` (`too_large`) or not an array of
    sketches (`bad_npz_sketch`); one `bad_npz_sketch` per element that is not an int/float array.
    Accepted members: the sketch-rnn 1-D object array, or a numeric `[N, n, 3]` array.
    """
    name = os.path.basename(path)
    word = name[:-4] if name.endswith(".npz") else name
    try:
        for split, arr in safe_npz.iter_members(data, SPLITS, max_member_bytes):
            where = f"{path}:{split}"
            if isinstance(arr, safe_npz.NpzError):
                yield _npz_rejection(arr, where)
            elif arr.dtype != object and not (arr.ndim == 3 and arr.shape[2] == 3):
                yield Rejection("bad_npz_sketch", f"{split}.npy is a {arr.dtype} array of shape "
                                f"{arr.shape}; expected a 1-D object array of [n, 3] sketches", where)
            else:
                for i, sketch in enumerate(arr):
                    key = f"{name}:{split}:{i}"
                    if not isinstance(sketch, np.ndarray):
                        yield Rejection("bad_npz_sketch", f"a {type(sketch).__name__}, not an array",
                                        f"{key} ({word})")
                    elif not safe_npz.is_numeric_dtype(sketch.dtype):
                        yield Rejection("bad_npz_sketch", f"an array of dtype {sketch.dtype}, not "
                                        "int/float", f"{key} ({word})")
                    else:
                        yield NpzSketch(key, word, split, sketch)
    except safe_npz.NpzError as e:  # the whole file
        yield _npz_rejection(e, path)


def process_record(record, config: Config) -> Drawing | Rejection:
    """Any input record -> Drawing | Rejection: an ndjson line (str/bytes), an `NpzSketch`, or an
    already-made Rejection (an unreadable file), passed through."""
    if isinstance(record, NpzSketch):
        return process_npz_sketch(record.strokes3, record.word, record.split, record.key_id, config)
    if isinstance(record, Rejection):
        return record
    return process_line(record, config)


def offset_moments(strokes3: np.ndarray) -> tuple[int, float, float]:
    """(count, mean, M2) of all dx and dy of one sketch (M2 = sum of squared deviations)."""
    values = np.asarray(strokes3[:, 0:2], dtype=np.float64).reshape(-1)
    if values.size == 0:
        return 0, 0.0, 0.0
    mean = float(values.mean())
    return int(values.size), mean, float(((values - mean) ** 2).sum())


def merge_moments(a: tuple[int, float, float], b: tuple[int, float, float]) -> tuple[int, float, float]:
    """Chan et al.'s parallel update of (count, mean, M2): exact and stable in any merge order."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    if n == 0:
        return 0, 0.0, 0.0
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


def scale_factor_from_moments(moments: tuple[int, float, float]) -> float:
    """Population standard deviation (the reference's `np.std`) of the pooled dx, dy; 1.0 if undefined."""
    n, _, m2 = moments
    if n == 0 or m2 <= 0:
        return 1.0
    return math.sqrt(m2 / n)


def to_stroke5(drawing: Drawing, scale_factor: float, max_seq_len: int) -> np.ndarray:
    """Normalized, padded stroke-5 `[max_seq_len, 5]` float32: offsets / scale_factor."""
    strokes3 = drawing.strokes3.astype(np.float32, copy=True)
    strokes3[:, 0:2] /= np.float32(scale_factor)
    return stroke3_to_stroke5(strokes3, max_seq_len)


# ---- tf.train.Example encoding without TensorFlow -------------------------------------------------
# Beam workers would otherwise import TensorFlow (seconds per worker) just to build a protobuf.
# The bytes parse to the same message as `pipeline.schema.serialize_example` (tested).

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited field (wire type 2)
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _feature_entry(key: str, feature: bytes) -> bytes:  # one map<string, Feature> entry
    return _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))


def encode_example(strokes5: np.ndarray, length: int, word: str, key_id: str) -> bytes:
    """`[N_max, 5]` stroke-5 + length + word + key_id -> serialized tf.train.Example bytes."""
    floats = np.ascontiguousarray(strokes5, dtype="<f4").reshape(-1).tobytes()
    length = int(length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    features = b"".join([
        _feature_entry(STROKES, _field(2, _field(1, floats))),                  # float_list
        _feature_entry(LENGTH, _field(3, _field(1, _varint(length)))),          # int64_list
        _feature_entry(WORD, _field(1, _field(1, word.encode("utf-8")))),       # bytes_list
        _feature_entry(KEY_ID, _field(1, _field(1, str(key_id).encode("utf-8")))),
    ])
    return _field(1, features)


def drawing_to_example(drawing: Drawing, scale_factor: float, max_seq_len: int) -> bytes:
    """Drawing -> serialized tf.train.Example of the schema (`pipeline/schema.py`)."""
    strokes5 = to_stroke5(drawing, scale_factor, max_seq_len)
    return encode_example(strokes5, drawing.strokes3.shape[0], drawing.word, drawing.key_id)


# ---- TFRecord framing (for the streaming sink and the benchmark's plain loop) --------------------

def _masked_crc32c(data: bytes) -> int:
    try:
        import google_crc32c  # installed with apache-beam[gcp]; C implementation
        crc = google_crc32c.value(data)
    except ImportError:  # pragma: no cover - Beam's own (slower) fallback
        from apache_beam.io.tfrecordio import _default_crc32c_fn
        crc = _default_crc32c_fn(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def write_tfrecord(handle, record: bytes) -> None:
    """Appends one record in TFRecord framing: length, masked crc32c(length), data, masked crc32c(data)."""
    header = struct.pack("<Q", len(record))
    handle.write(header + struct.pack("<I", _masked_crc32c(header)) + record
                 + struct.pack("<I", _masked_crc32c(record)))


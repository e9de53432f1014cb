"""Hostile and broken input to the preprocessing job (issue 9): crafted .npz pickles, bad bytes and
encodings in ndjson, pathological drawings, truncated / corrupt compressed files, empty inputs, bad
--input / --output paths. Every test writes its hostile files itself (tmp_path)."""

import bz2
import contextlib
import glob
import gzip
import io
import json
import lzma
import os
import pickle
import signal
import zipfile
import zlib

import numpy as np
import pytest
import zstandard

from pipeline import cli, schema
from pipeline import records as R
from pipeline import simplify as S

IN_MEMORY = ["--direct_running_mode", "in_memory"]


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fails the block with TimeoutError after `seconds` (a drawing that stalls the worker)."""
    def expire(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sample_lines(sample_dir, name="cat"):
    return (sample_dir / f"{name}.ndjson").read_bytes().splitlines()


def _meta_ok(meta):
    assert meta["written"] + meta["dead_lettered"] + meta["filtered"] == meta["lines_read"]
    assert meta["accounted"]


def _dead_letters(out_dir):
    return [json.loads(x) for f in sorted(glob.glob(str(out_dir / "rejected-*.jsonl")))
            for x in open(f, encoding="utf-8").read().splitlines()]


# ---- .npz: pickles that run code, wrong contents, huge members ---------------------------------

class _RunsCode:
    """Unpickling this calls `func(arg)`: what a crafted .npz does to np.load(allow_pickle=True)."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def _npy_bytes(header: dict, payload: bytes) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, header)
    return f.getvalue() + payload


def _zip(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _object_array(items):
    arr = np.empty(len(items), dtype=object)
    for i, x in enumerate(items):
        arr[i] = x
    return arr


def _sketch(n, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.integers(-20, 20, size=(n, 3)).astype(np.int16)
    s[:, 2] = 0
    s[-1, 2] = 1
    return s


def _good_npz(n_train=12, n_valid=3, n_test=3) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, train=_object_array([_sketch(5 + i, i) for i in range(n_train)]),
             valid=_object_array([_sketch(6 + i, 100 + i) for i in range(n_valid)]),
             test=_object_array([_sketch(7 + i, 200 + i) for i in range(n_test)]))
    return buf.getvalue()


def _evil_npzs(marker):
    """(label, bytes): a whole-member pickle that calls os.system / eval, and a genuine-looking
    np.savez file with one malicious element among real sketches."""
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    system = pickle.dumps(_RunsCode(os.system, f"touch {marker}"), protocol=2)
    evaluate = pickle.dumps(_RunsCode(eval, f"__import__('os').system('touch {marker}')"), protocol=4)
    embedded = io.BytesIO()
    np.savez(embedded, train=_object_array([_sketch(5), _RunsCode(os.system, f"touch {marker}")]))
    return [("os.system", _zip({"train.npy": _npy_bytes(header, system)})),
            ("eval", _zip({"train.npy": _npy_bytes(header, evaluate)})),
            ("embedded", embedded.getvalue())]


def test_npz_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "MARKER"
    for label, data in _evil_npzs(marker):
        try:
            out = list(R.iter_npz(f"{label}.npz", data))
        finally:
            assert not marker.exists(), f"the {label} pickle ran code"
        assert len(out) == 1 and out[0].reason == "unsafe_npz" and out[0].kind == R.DEAD_LETTER, out
        assert out[0].detail.startswith("refused to unpickle ") and out[0].line.startswith(label)
        assert {"os.system": "posix.system", "eval": "builtins.eval",
                "embedded": "posix.system"}[label] in out[0].detail


def test_npz_pickle_may_only_build_numeric_arrays():
    header = {"descr": "|O", "fortran_order": False, "shape": (1,)}
    # numpy.ndarray called directly (any allocation), a numpy scalar, elements of dtype str or
    # complex (only int/uint/float dtypes are rebuilt), an object array inside the object array
    direct = pickle.dumps(np.ndarray, protocol=2)[:-1] + b"(K\x00tR."  # ndarray(0) via REDUCE
    scalar = pickle.dumps(_object_array([np.int64(3)]), protocol=2)
    strings = pickle.dumps(_object_array([np.array(["a", "b"])]), protocol=2)
    complex_ = pickle.dumps(_object_array([np.zeros((4, 3), np.complex64)]), protocol=2)
    nested = pickle.dumps(_object_array([_object_array([1, 2])]), protocol=2)
    # BUILD with slot state on numpy.dtype: setattr(dtype, "__setstate__", 1) would patch the loader
    patch = b"\x80\x02cnumpy\ndtype\nN}X\x0c\x00\x00\x00__setstate__K\x01s\x86b."
    for payload, reason in ((direct, "unsafe_npz"), (scalar, "unsafe_npz"), (strings, "unsafe_npz"),
                            (complex_, "unsafe_npz"), (nested, "bad_npz_sketch"), (patch, "unsafe_npz")):
        out = list(R.iter_npz("x.npz", _zip({"train.npy": _npy_bytes(header, payload)})))
        assert [r.reason for r in out] == [reason], (reason, out)
    assert [type(r) for r in R.iter_npz("g.npz", _good_npz(1, 1, 1))] == [R.NpzSketch] * 3


def test_npz_members_of_wrong_shape_or_dtype_are_dead_letters():
    buf = io.BytesIO()
    np.savez(buf, train=np.zeros((1000, 3), np.float32), valid=np.array(["a", "bc"]),
             test=_object_array([_sketch(4), "a string", {"a": 1}, np.zeros((4, 2))]))
    out = list(R.iter_npz("w.npz", buf.getvalue()))
    reasons = [(r.reason, r.line) if isinstance(r, R.Rejection) else r.key_id for r in out]
    # one dead letter per bad member, not one per row; elements of the object array one by one
    assert reasons[:2] == [("bad_npz_sketch", "w.npz:train"), ("bad_npz_sketch", "w.npz:valid")]
    assert "shape (1000, 3)" in out[0].detail and "<U2" in out[1].detail
    assert reasons[2] == "w.npz:test:0" and [r[0] for r in reasons[3:5]] == ["bad_npz_sketch"] * 2
    assert "str" in out[3].detail and "dict" in out[4].detail and len(out) == 6
    assert R.process_record(out[5], R.Config()).reason == "bad_npz_sketch"  # [4, 2]: shape check
    # a numeric [N, n, 3] member is N sketches
    buf = io.BytesIO()
    np.savez(buf, train=np.stack([_sketch(5, i) for i in range(4)]))
    keys = [s.key_id for s in R.iter_npz("n.npz", buf.getvalue())]
    assert keys == [f"n.npz:train:{i}" for i in range(4)]


def test_huge_npz_members_are_refused_before_reading():
    # A header declaring 10^12 x 3 int16 (6 TB) over a few bytes of data: never allocated.
    header = {"descr": "<i2", "fortran_order": False, "shape": (10**12, 3)}
    out = list(R.iter_npz("huge.npz", _zip({"train.npy": _npy_bytes(header, b"\0" * 64)})))
    assert [r.reason for r in out] == ["too_large"] and "6,000,000,000,000 bytes" in out[0].detail
    # A zip bomb: 64 MB of zeros in a 64 KB member, against a 1 MB limit (declared size and read).
    bomb = _npy_bytes({"descr": "<i2", "fortran_order": False, "shape": (32 << 20,)}, bytes(64 << 20))
    data = _zip({"train.npy": bomb}, zipfile.ZIP_DEFLATED)
    assert len(data) < 1 << 20
    out = list(R.iter_npz("bomb.npz", data, max_member_bytes=1 << 20))
    assert [r.reason for r in out] == ["too_large"] and "limit" in out[0].detail
    # An object member over the limit, one that is not an npz at all, and a truncated one.
    good = _good_npz()
    assert [r.reason for r in R.iter_npz("g.npz", good, max_member_bytes=200)] == ["too_large"] * 3
    for data in (b"PK\x03\x04 not really a zip", good[: len(good) // 2]):
        out = list(R.iter_npz("bad.npz", data))
        assert [r.reason for r in out] == ["bad_npz_sketch"] and "not an .npz (zip) file" in out[0].detail


def test_real_npz_files_read_exactly_like_np_load(shared_data):
    paths = sorted(glob.glob(str(shared_data / "sketchrnn_npz" / "*.npz"))
                   + glob.glob(str(shared_data / "quickdraw_npz" / "*.npz")))
    if not paths:
        pytest.skip("no .npz files in ../shared/data")
    for path in paths:  # trusted files: np.load with pickles is the reference here
        ref = np.load(path, encoding="latin1", allow_pickle=True)
        expected = [(s, a) for s in schema.SPLITS if s in ref.files for a in ref[s]]
        with open(path, "rb") as f:
            got = list(R.iter_npz(path, f.read()))
        assert len(got) == len(expected), path
        for g, (split, a) in zip(got, expected):
            assert isinstance(g, R.NpzSketch) and g.split == split
            assert g.strokes3.dtype == a.dtype and np.array_equal(g.strokes3, a)


def test_job_dead_letters_an_unsafe_npz_and_reads_the_others(tmp_path):
    marker = tmp_path / "MARKER"
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "evil.npz").write_bytes(_evil_npzs(marker)[0][1])
    (in_dir / "good.npz").write_bytes(_good_npz())
    (in_dir / "notzip.npz").write_bytes(b"hello")
    out = tmp_path / "out"
    assert cli.main(["--input", str(in_dir / "*.npz"), "--output", str(out)] + IN_MEMORY) == 0
    assert not marker.exists()
    meta = schema.read_metadata(str(out))
    _meta_ok(meta)
    assert meta["counts"] == {"train": 12, "valid": 3, "test": 3} and meta["classes"] == ["good"]
    assert meta["rejected"] == {"unsafe_npz": 1, "bad_npz_sketch": 1}
    dead = {d["reason"]: d for d in _dead_letters(out)}
    assert dead["unsafe_npz"]["line"].endswith("evil.npz:train")
    assert "posix.system" in dead["unsafe_npz"]["detail"]
    assert dead["bad_npz_sketch"]["line"].endswith("notzip.npz")


# ---- ndjson bytes and encodings ----------------------------------------------------------------

def test_line_bytes_are_decoded_strictly(sample_dir):
    line = _sample_lines(sample_dir)[0]
    bad = line.replace(b'"word":"cat"', b'"word":"ca\xfft"')
    assert bad != line
    r = R.process_line(bad, R.Config())
    assert r.reason == "not_utf8" and r.kind == R.DEAD_LETTER and "byte" in r.detail
    assert '"ca\\xfft"' in r.line and json.loads(r.to_json())["line"] == r.line  # nothing lost
    # A UTF-8 byte-order mark (first line of a file saved by some editors) is dropped.
    assert isinstance(R.process_line(b"\xef\xbb\xbf" + line, R.Config()), R.Drawing)
    # UTF-16 text: the BOM line, and the following lines (NUL bytes), are not UTF-8.
    utf16 = ("\ufeff" + line.decode() + "\n" + line.decode() + "\n").encode("utf-16-le")
    parts = utf16.split(b"\n")
    assert [R.process_line(p, R.Config()).reason for p in parts] == ["not_utf8"] * len(parts)
    assert "UTF-16" in R.process_line(parts[0], R.Config()).detail
    # Blank lines are counted as filtered, not dead-lettered.
    for blank in (b"", b"   ", b"\r", " "):
        r = R.process_line(blank, R.Config())
        assert r.reason == "blank_line" and r.kind == R.FILTERED


def test_job_with_bad_bytes_bom_utf16_blank_lines_and_an_empty_file(sample_dir, tmp_path):
    lines = _sample_lines(sample_dir)
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    bad = lines[3].replace(b'"word":"cat"', b'"word":"c\xffat"')
    (in_dir / "a.ndjson").write_bytes(b"\n".join(lines[:3] + [bad] + lines[4:10]) + b"\n")
    (in_dir / "b.ndjson").write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines[10:20]) + b"\n\n  \n")
    utf16 = ("\ufeff" + "\n".join(x.decode() for x in lines[20:22]) + "\n").encode("utf-16-le")
    (in_dir / "c.ndjson").write_bytes(utf16)
    (in_dir / "d.ndjson").write_bytes(b"")
    out = tmp_path / "out"
    assert cli.main(["--input", str(in_dir / "*.ndjson"), "--output", str(out)] + IN_MEMORY) == 0
    meta = schema.read_metadata(str(out))
    _meta_ok(meta)
    n_utf16 = len(utf16.split(b"\n"))  # no line break at its very end: the last "\0" is a line
    assert meta["lines_read"] == 10 + 12 + n_utf16
    assert meta["written"] == 9 + 10  # the BOM line of b.ndjson is kept
    assert meta["rejected"] == {"not_utf8": 1 + n_utf16, "blank_line": 2}
    dead = _dead_letters(out)
    assert sorted(d["reason"] for d in dead) == ["not_utf8"] * (1 + n_utf16)
    assert any('"c\\xffat"' in d["line"] for d in dead)


# ---- pathological drawings ---------------------------------------------------------------------

def _raw_line(strokes):
    return json.dumps({"word": "zig", "key_id": "k1", "recognized": True, "drawing": strokes})


def _zigzag(n):
    return [[[0 if i % 2 == 0 else 10000 for i in range(n)], [i * 0.5 for i in range(n)],
             [i * 10 for i in range(n)]]]


def test_zigzag_drawing_is_rejected_before_resampling():
    # 10,000 points across the canvas: 2.5 million points at 1 px (524 s, 893 MB before the bound)
    with _deadline(30):
        r = R.process_line(_raw_line(_zigzag(10_000)), R.Config())
    assert r.reason == "too_complex" and r.kind == R.DEAD_LETTER
    assert "2,549,747 points after resampling" in r.detail and '"zig"' in r.line


def test_rdp_work_is_bounded():
    # Resamples to 994,247 points (under the bound), but RDP on a zig-zag peels one vertex per level.
    with _deadline(30):
        r = R.process_line(_raw_line(_zigzag(3_900)), R.Config(max_seq_len=10**6))
    assert r.reason == "too_complex" and "RDP needs more than" in r.detail
    xy = np.array([[0, 0], [1, 2], [2, 0], [3, 2], [4, 0]], float)
    with pytest.raises(S.TooComplex):
        S.rdp_keep_mask(xy, np.array([5]), 0.1, max_work=4)
    np.testing.assert_array_equal(S.rdp_keep_mask(xy, np.array([5]), 0.1, max_work=100), [1] * 5)


def test_millions_of_strokes_or_points_are_rejected_fast():
    line = '{"word": "x", "key_id": "k", "drawing": [' + ",".join(["[[0],[0],[0]]"] * 2_000_000) + "]}"
    with _deadline(20):
        r = R.process_line(line, R.Config())  # 28 MB: not even parsed
        assert r.reason == "too_complex" and "MAX_LINE_BYTES" in r.detail
        assert len(r.line) < 100_000  # the dead letter keeps a preview, not 28 MB
        r = R.parse_strokes([[[0], [0], [0]]] * 2_000_000, "auto")  # a parsed one: no per-stroke work
        assert r.reason == "too_complex" and "2,000,000 strokes" in r.detail
        n = 200_000  # points in a tiny, cheap-to-resample stroke
        stroke = [[i * 1e-3 for i in range(n)], [0] * n, list(range(n))]
        r = R.process_line(_raw_line([stroke]), R.Config())
        assert r.reason == "too_complex" and "MAX_POINTS" in r.detail


# ---- compressed, empty and missing files; output replaced only by a good run -----------------

def _snapshot(out_dir):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out_dir.iterdir())}


def test_truncated_gzip_fails_and_keeps_the_previous_output(sample_dir, tmp_path, capsys):
    lines = [x for name in ("cat", "pig", "star") for x in _sample_lines(sample_dir, name)]
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "a.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    out = tmp_path / "out"
    args = ["--output", str(out)] + IN_MEMORY
    assert cli.main(["--input", str(good / "*"), "--num-shards", "2"] + args) == 0
    before = _snapshot(out)
    assert len([n for n in before if n.startswith("train-")]) == 2
    capsys.readouterr()

    # A gzip and a bzip2 file cut in half (228 lines inside each), beside a good file.
    whole = b"\n".join(lines * 3) + b"\n"
    (bad / "a_cut.ndjson.gz").write_bytes(gzip.compress(whole)[: len(gzip.compress(whole)) // 2])
    (bad / "b_cut.ndjson.bz2").write_bytes(bz2.compress(whole)[: len(bz2.compress(whole)) // 2])
    (bad / "ok.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    assert cli.main(["--input", str(bad / "*"), "--num-shards", "3"] + args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"sketch-rnn preprocess: error: input {bad / 'a_cut.ndjson.gz'} is a truncated or "
                   "corrupt gzip file (EOFError: the compressed stream ends before its end-of-stream "
                   f"marker) (and 1 more input files); nothing was replaced in {out}"]
    assert _snapshot(out) == before  # same names, bytes and mtimes; no staging directory left

    # A good run with another shard count replaces every file: no shard of the old run remains.
    assert cli.main(["--input", str(good / "*"), "--num-shards", "3"] + args) == 0
    names = sorted(p.name for p in out.iterdir())
    meta = schema.read_metadata(str(out))
    _meta_ok(meta)
    assert sorted(meta["files"] + [schema.METADATA_FILE]) == names
    assert [n for n in names if n.startswith("train-")] == [f"train-0000{i}-of-00003.tfrecord.gz"
                                                           for i in range(3)]
    assert not any("-of-00002" in n for n in names)


def test_compressed_reader_checks_every_format_to_its_end(tmp_path):
    from pipeline import inputs  # here: the module is new (issue 9)

    lines = [b'{"n": %d}' % i for i in range(3000)]
    data = b"\r\n".join(lines) + b"\n"  # CRLF too
    packed = {".gz": gzip.compress(data), ".bz2": bz2.compress(data), ".xz": lzma.compress(data),
              ".deflate": zlib.compress(data), ".zst": zstandard.ZstdCompressor().compress(data)}
    for suffix, blob in packed.items():
        path = tmp_path / f"a.ndjson{suffix}"
        path.write_bytes(blob + blob)  # concatenated members / streams / frames
        assert list(inputs.read_lines(str(path))) == lines + lines, suffix
        path.write_bytes(blob[: len(blob) * 2 // 3])
        *head, last = inputs.read_lines(str(path))
        assert head == lines[: len(head)] and len(head) < len(lines), suffix
        assert last.reason == "corrupt_input" and str(path) in last.detail and "truncated" in last.detail
    # Not gzip at all, and a flipped byte of the CRC-32 trailer.
    path = tmp_path / "b.ndjson.gz"
    for blob, why in ((b"plain text, not gzip\n", "incorrect header check"),
                      (packed[".gz"][:-6] + bytes([packed[".gz"][-6] ^ 0xFF]) + packed[".gz"][-5:],
                       "incorrect data check")):
        path.write_bytes(blob)
        got = list(inputs.read_lines(str(path)))
        assert got[-1].reason == "corrupt_input" and why in got[-1].detail, got[-1]
        assert got[-1].detail.startswith(f"input {path} is a truncated or corrupt gzip file (")
    # A 16 MB line (a gzip bomb without newlines) is cut after max_line_bytes + 1 and skipped.
    path = tmp_path / "bomb.ndjson.gz"
    path.write_bytes(gzip.compress(b"[" * (16 << 20) + b"\n" + lines[0] + b"\n", compresslevel=1))
    got = list(inputs.read_lines(str(path), max_line_bytes=1 << 20))
    assert [len(x) for x in got] == [(1 << 20) + 1, len(lines[0])]


def test_inputs_without_records_or_drawings_fail(tmp_path, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "empty.ndjson").write_bytes(b"")
    (in_dir / "empty2.ndjson.gz").write_bytes(gzip.compress(b""))
    out = tmp_path / "out"
    assert cli.main(["--input", str(in_dir / "*"), "--output", str(out)] + IN_MEMORY) == 1
    assert "no records read from" in capsys.readouterr().err
    (in_dir / "blank.ndjson").write_bytes(b"\n \n{not json\n")
    assert cli.main(["--input", str(in_dir / "*"), "--output", str(out)] + IN_MEMORY) == 1
    err = capsys.readouterr().err
    assert "no drawings kept: all 3 records read were rejected (blank_line 2, malformed_json 1)" in err
    assert sorted(os.listdir(out)) == []  # nothing written, no staging directory left


def test_directory_input_and_unwritable_output_are_clear_errors(tmp_path, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    (in_dir / "a.ndjson").write_text("{}\n")
    assert cli.main(["--input", str(in_dir), "--output", str(tmp_path / "o")]) == 2
    assert (f"--input {in_dir} is a directory; give a glob such as {in_dir}/*.ndjson"
            in capsys.readouterr().err)
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for output, message in ((a_file, f"--output {a_file} is a file, not a directory"),
                            (a_file / "sub", f"{a_file} is a file, not a directory")):
        assert cli.main(["--input", str(in_dir / "*.ndjson"), "--output", str(output)]) == 2
        assert message in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes through chmod
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert cli.main(["--input", str(in_dir / "*.ndjson"), "--output", str(locked)]) == 2
        assert "not writable" in capsys.readouterr().err

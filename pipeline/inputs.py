"""Lines of compressed ndjson files, read so that a truncated or corrupt file fails loudly.

Beam's `ReadFromText` decompresses `.gz` (and `.bz2`, `.xz`, `.deflate`, `.zst`) without checking
that the stream reached its end-of-stream marker: a gzip file cut in half yields the lines before
the cut and the job succeeds, silently short of data. Compressed files are not splittable anyway
(one reader per file either way), so the batch job reads them with `read_lines` instead: the
stdlib decompressors (zstandard for `.zst`), checked for their end-of-stream marker and, for gzip,
the CRC-32 and length trailer, with concatenated members supported. A file that fails yields, after
the lines read so far, one `corrupt_input` Rejection naming it; the job counts it (metadata
`input_errors`) and `pipeline/cli.py` then fails the run with that one line, replacing nothing.
(Raising inside the DoFn would fail the job too, but Dataflow retries a failed bundle four times,
re-reading the whole file, and the local multi-process workers print a traceback.)

Output per read call is bounded (`max_length`), and a line longer than `max_line_bytes` is cut
after `max_line_bytes + 1` bytes (the rest of it skipped), so neither a zip bomb nor a file without
newlines can take more memory than a few such buffers. Lines are bytes without the trailing
`\\n` / `\\r\\n`, like `ReadFromText(..., coder=BytesCoder())`; decoding is `records.decode_line`'s.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline.records import MAX_LINE_BYTES, Rejection

# CompressionTypes.detect_compression_type values read here (everything but uncompressed).
COMPRESSIONS = (CompressionTypes.GZIP, CompressionTypes.BZIP2, CompressionTypes.LZMA,
                CompressionTypes.DEFLATE, CompressionTypes.ZSTD)
_IN_CHUNK = 1 << 16
_ZSTD_IN_CHUNK = 1 << 12  # zstd's decompressobj has no max_length: small inputs bound its output
_OUT_CHUNK = 1 << 20


def compression_of(path: str) -> str:
    """Beam's compression type for `path` by its suffix (`uncompressed` for .ndjson and the like)."""
    return CompressionTypes.detect_compression_type(path)


def _new_decompressor(kind: str):
    if kind == CompressionTypes.GZIP:
        return zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip header, CRC-32 and size trailer
    if kind == CompressionTypes.DEFLATE:
        return zlib.decompressobj()  # what Beam's DEFLATE writes (zlib format)
    if kind == CompressionTypes.BZIP2:
        return bz2.BZ2Decompressor()
    if kind == CompressionTypes.LZMA:
        return lzma.LZMADecompressor()
    if kind == CompressionTypes.ZSTD:
        import zstandard  # installed with apache-beam

        return zstandard.ZstdDecompressor(max_window_size=1 << 31).decompressobj()
    raise ValueError(f"not a compression read here: {kind}")


def decompressed_chunks(raw: BinaryIO, kind: str) -> Iterator[bytes]:
    """The decompressed bytes of a whole compressed stream (members concatenated), in pieces.

    Raises EOFError when the stream ends inside a member, the decompressor's own error
    (zlib.error, OSError, lzma.LZMAError, zstandard.ZstdError) on corrupt data.
    """
    in_chunk = _ZSTD_IN_CHUNK if kind == CompressionTypes.ZSTD else _IN_CHUNK
    d = None
    data = b""
    while True:
        if not data:
            data = raw.read(in_chunk)
            if not data:
                if d is not None and not d.eof:
                    raise EOFError("the compressed stream ends before its end-of-stream marker")
                return
        if d is None or d.eof:
            d = _new_decompressor(kind)
        if kind in (CompressionTypes.GZIP, CompressionTypes.DEFLATE):
            out = d.decompress(data, _OUT_CHUNK)
            data = d.unused_data if d.eof else d.unconsumed_tail
            if out:
                yield out
        elif kind == CompressionTypes.ZSTD:
            out = d.decompress(data)
            data = d.unused_data if d.eof else b""
            if out:
                yield out
        else:  # bz2 / lzma keep unconsumed input inside; drain it in bounded pieces
            out = d.decompress(data, max_length=_OUT_CHUNK)
            while True:
                if out:
                    yield out
                if d.eof or d.needs_input:
                    break
                out = d.decompress(b"", max_length=_OUT_CHUNK)
            data = d.unused_data if d.eof else b""


def split_lines(chunks: Iterator[bytes], max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Byte chunks -> lines without `\\n` / `\\r\\n` (the last one may lack its newline).

    A line longer than `max_line_bytes` is yielded as its first `max_line_bytes + 1` bytes (so that
    `records.decode_line` rejects it as too long) and the rest of it is skipped.
    """
    pending = b""
    skipping = False
    for chunk in chunks:
        if skipping:
            i = chunk.find(b"\n")
            if i < 0:
                continue
            chunk, skipping = chunk[i + 1:], False
        lines = (pending + chunk if pending else chunk).split(b"\n")
        pending = lines.pop()
        for line in lines:
            yield line[:-1] if line.endswith(b"\r") else line
        if len(pending) > max_line_bytes:
            yield pending[:max_line_bytes + 1]
            pending, skipping = b"", True
    if pending and not skipping:
        yield pending[:-1] if pending.endswith(b"\r") else pending


def read_lines(path: str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[bytes | Rejection]:
    """All lines of one compressed file (local or gs://, by FileSystems), checked to its end.

    When the file is truncated, corrupt or unreadable, the lines before the damage are followed by
    one `corrupt_input` Rejection whose detail is the one-line error naming the file.
    """
    kind = compression_of(path)
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            yield from split_lines(decompressed_chunks(raw, kind), max_line_bytes)
    except Exception as e:  # noqa: BLE001 - zlib.error, EOFError, OSError, LZMAError, ZstdError, ...
        detail = f"{type(e).__name__}: {e}".replace("\n", " ")[:200]
        yield Rejection("corrupt_input", f"input {path} is a truncated or corrupt {kind} file "
                        f"({detail})", path)

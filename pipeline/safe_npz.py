"""Reading sketch-rnn `.npz` files from outside without trusting them (no TensorFlow, no Beam).

A sketch-rnn `.npz` holds `train.npy`, `valid.npy`, `test.npy`: each a 1-D object array of int16
`[n, 3]` stroke-3 arrays, pickled inside the `.npy` member. `np.load(..., allow_pickle=True)` would
run whatever a crafted pickle says (`os.system`, `eval`, ...). This module reads the zip with
`zipfile`, parses each member's `.npy` header itself, reads numeric data with `np.frombuffer`, and
unpickles object arrays with `RestrictedUnpickler`, which resolves only these names and builds
every array itself from plain bytes:

* `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct` (numpy 1 / 2 files),
* `numpy.ndarray` (only as the first argument of `_reconstruct`),
* `numpy.dtype` (only numeric type codes `i1..i8`, `u1..u8`, `f2..f8`, and `O` for the outer array),
* `_codecs.encode` with `latin1` only (Python 3 pickles bytes that way at protocol 2).

What they return are placeholders whose `__setstate__` checks the pickled state and then makes the
array with `np.frombuffer` (numeric) or from the pickled list (object arrays); numpy's own unpickling
code never sees attacker data. Any other global (`builtins.eval`, `os.system`,
`numpy.core.multiarray.scalar`, ...) raises `UnsafeNpz` before anything is called. Real files need
nothing else (checked with pickletools on ../shared/data: py2 protocol-2 files name
`numpy.core.multiarray`, numpy-2 protocol-4 files `numpy._core.multiarray`). Py2 pickles hold their
bytes as `str`; they are read with `encoding="latin1"` as `np.load` does.

Sizes are checked before reading: a member's declared uncompressed size and, for numeric members,
the header's shape x itemsize, against `max_member_bytes` (default `MAX_MEMBER_BYTES`); the read
itself is limited too (a zip bomb cannot lie its way past it).
"""

from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from typing import BinaryIO, Iterator

import numpy as np
from numpy.lib import format as npy_format

MAX_MEMBER_BYTES = 1 << 30  # uncompressed bytes of one .npy member
MAX_HEADER_BYTES = 10_000   # numpy's own default limit for .npy headers

_NUMERIC_CODE = re.compile(r"[<>|=]?([iu][1248]|f[248])")
_OBJECT_CODE = re.compile(r"\|?O[48]?")


class NpzError(ValueError):
    """A member (or the file) is not what a sketch-rnn .npz holds; the message says why."""


class UnsafeNpz(NpzError):
    """The pickle names something other than the numpy array constructors."""


class NpzTooLarge(NpzError):
    """A member is over the size limit."""


def is_numeric_dtype(dtype: np.dtype) -> bool:
    """Plain int / uint / float, no fields, no sub-array (bool, complex, strings, object: no)."""
    return dtype.kind in "iuf" and dtype.fields is None and dtype.subdtype is None


# ---- the restricted unpickler ---------------------------------------------------------------------

class _Frozen:
    """Base of what `find_class` returns: no `__dict__`, no attribute assignment, so that a pickle's
    BUILD opcode (which sets attributes, or calls `__setstate__`) cannot patch this module."""

    __slots__ = ()

    def __setattr__(self, name, value):
        raise UnsafeNpz(f"the pickle tries to set {name!r} on a numpy name")


class _NdarrayToken(_Frozen):
    """What `numpy.ndarray` resolves to: only accepted as `_reconstruct`'s first argument."""

    __slots__ = ()

    def __call__(self, *args, **kwargs):
        raise UnsafeNpz("the pickle calls numpy.ndarray(...) directly; only numpy's own "
                        "_reconstruct form is accepted")


class _Constructor(_Frozen):
    """A frozen callable for one allowed global (the placeholder classes, `_latin1_encode`)."""

    __slots__ = ("_make",)

    def __init__(self, make):
        object.__setattr__(self, "_make", make)

    def __call__(self, *args):
        return self._make(*args)


_NDARRAY = _NdarrayToken()


class _DtypeToken:
    """`numpy.dtype(code, align, copy)` + BUILD state -> a numeric (or the object) dtype."""

    def __init__(self, code, align=False, copy=False):
        if isinstance(code, bytes):
            code = code.decode("latin1")
        allowed = isinstance(code, str) and (_NUMERIC_CODE.fullmatch(code) or _OBJECT_CODE.fullmatch(code))
        if not allowed:
            raise UnsafeNpz(f"the pickle asks for numpy.dtype({code!r}); only int/uint/float "
                            "(and the outer object array) are accepted")
        self.dtype = np.dtype(code)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5 or any(v is not None for v in state[2:5]):
            raise UnsafeNpz(f"unexpected dtype state {state!r}"[:200])
        order = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if order in ("<", ">") and self.dtype.kind != "O":
            self.dtype = self.dtype.newbyteorder(order)
        elif order not in ("|", "="):
            raise UnsafeNpz(f"unexpected dtype byte order {order!r}"[:200])


class _ArrayToken:
    """`_reconstruct(ndarray, shape, code)` + BUILD state -> `.array`, made here from plain data."""

    def __init__(self, subtype, shape, code):
        if subtype is not _NDARRAY:
            raise UnsafeNpz(f"_reconstruct of {type(subtype).__name__}, not numpy.ndarray")
        if not isinstance(shape, tuple) or math.prod(shape) != 0:
            raise UnsafeNpz(f"_reconstruct with shape {shape!r}; numpy writes an empty (0,)"[:200])
        self.array = None

    def __setstate__(self, state):
        # (version, shape, dtype, fortran_order, raw bytes | list of objects)
        if not (isinstance(state, tuple) and len(state) == 5):
            raise UnsafeNpz(f"unexpected array state of type {type(state).__name__}")
        _, shape, dtype, fortran, data = state
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise UnsafeNpz(f"unexpected array shape {shape!r}"[:200])
        if not isinstance(dtype, _DtypeToken):
            raise UnsafeNpz(f"array dtype is a {type(dtype).__name__}, not a numpy.dtype")
        dtype = dtype.dtype
        order = "F" if fortran else "C"
        count = math.prod(shape)
        if dtype.kind == "O":
            if not isinstance(data, list) or len(data) != count:
                raise UnsafeNpz(f"object array of shape {shape} with a {type(data).__name__} "
                                "of the wrong length")
            out = np.empty(count, dtype=object)
            for i, d in enumerate(data):  # one by one: equal-shaped arrays must not be stacked
                out[i] = d.array if isinstance(d, _ArrayToken) else d
            self.array = out.reshape(shape, order=order)
            return
        if isinstance(data, str):  # a py2 str, decoded as latin1 by the unpickler
            data = data.encode("latin1")
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafeNpz(f"numeric array data is a {type(data).__name__}, not bytes")
        if len(data) != count * dtype.itemsize:
            raise NpzError(f"array of shape {shape} and dtype {dtype} with {len(data)} bytes of data")
        self.array = np.frombuffer(data, dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text, encoding="utf-8"):
    """`_codecs.encode(str, "latin1")`: how Python 3 pickles bytes at protocol 2 (other codecs, e.g.
    zlib_codec, are refused)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeNpz(f"refused _codecs.encode(..., {encoding!r}); only latin1 is accepted")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _Constructor(_ArrayToken),
    ("numpy._core.multiarray", "_reconstruct"): _Constructor(_ArrayToken),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Constructor(_DtypeToken),
    ("_codecs", "encode"): _Constructor(_latin1_encode),
}


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the numpy array constructors above (as placeholders); refuses anything else."""

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeNpz(f"refused to unpickle {module}.{name}: a sketch-rnn .npz holds only "
                            "numpy arrays of numbers") from None

    def persistent_load(self, pid):
        raise UnsafeNpz("refused a persistent id in the pickle")


def unpickle_arrays(data: bytes) -> object:
    """Pickle bytes -> the object it describes, with numpy arrays rebuilt by the placeholders."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except NpzError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or garbage pickles, wrong argument counts
        raise NpzError(f"unreadable pickle: {type(e).__name__}: {e}"[:300]) from None
    return obj.array if isinstance(obj, _ArrayToken) else obj


# ---- members --------------------------------------------------------------------------------------

def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = npy_format.read_magic(f)
        if version == (1, 0):
            return npy_format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
        if version == (2, 0):
            return npy_format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
    except (ValueError, TypeError, SyntaxError, EOFError) as e:
        raise NpzError(f"not a .npy array: {e}"[:300]) from None
    raise NpzError(f"unsupported .npy format version {version[0]}.{version[1]}")


def _read_limited(f, limit: int, what: str) -> bytes:
    data = f.read(limit + 1)
    if len(data) > limit:
        raise NpzTooLarge(f"{what} holds more than {limit:,} bytes (limit)")
    return data


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_member_bytes: int = MAX_MEMBER_BYTES
                ) -> np.ndarray:
    """One `.npy` member -> a 1-D object array (of anything, checked by the caller) or a numeric array.

    Raises NpzError (or its subclasses UnsafeNpz, NpzTooLarge) with a one-line reason.
    """
    if info.file_size > max_member_bytes:
        raise NpzTooLarge(f"{info.filename} is {info.file_size:,} bytes uncompressed "
                          f"> {max_member_bytes:,} (limit)")
    try:
        with zf.open(info) as f:
            shape, fortran, dtype = _read_header(f)
            if dtype.hasobject:
                if dtype != np.dtype(object):
                    raise NpzError(f"{info.filename}: structured dtype with objects {dtype}")
                if len(shape) != 1:
                    raise NpzError(f"{info.filename}: object array of shape {shape}; expected 1-D")
                arr = unpickle_arrays(_read_limited(f, max_member_bytes, info.filename))
                if not (isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == shape):
                    raise NpzError(f"{info.filename}: the pickle holds a {type(arr).__name__}, "
                                   f"not the object array of shape {shape} of its header")
                return arr
            if not is_numeric_dtype(dtype):
                raise NpzError(f"{info.filename}: an array of dtype {dtype}; expected a 1-D object "
                               "array of [n, 3] int arrays")
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > max_member_bytes:
                raise NpzTooLarge(f"{info.filename}: shape {shape} x {dtype.itemsize} bytes = "
                                  f"{nbytes:,} bytes > {max_member_bytes:,} (limit)")
            data = _read_limited(f, nbytes, info.filename)
            if len(data) != nbytes:
                raise NpzError(f"{info.filename}: {len(data):,} bytes of data, {nbytes:,} expected")
            return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    except (zipfile.BadZipFile, EOFError, OSError, RuntimeError, NotImplementedError) as e:
        # bad CRC, unsupported compression or encryption, truncated member
        raise NpzError(f"{info.filename}: unreadable zip member: {e}"[:300]) from None


def iter_members(data: bytes | BinaryIO, names: tuple[str, ...], max_member_bytes: int = MAX_MEMBER_BYTES
                 ) -> Iterator[tuple[str, np.ndarray | NpzError]]:
    """(name, array or the NpzError that refused it) for each of `names` present as `name.npy`.

    Raises NpzError when the file is not a zip or holds none of `names`.
    """
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise NpzError(f"not an .npz (zip) file: {e}"[:300]) from None
    with zf:
        members = {info.filename: info for info in zf.infolist()}
        present = [n for n in names if f"{n}.npy" in members]
        if not present:
            raise NpzError(f"no {'/'.join(names)} arrays; members are "
                           f"{sorted(members)[:10]}"[:300])
        for name in present:
            try:
                yield name, read_member(zf, members[f"{name}.npy"], max_member_bytes)
            except NpzError as e:
                yield name, e

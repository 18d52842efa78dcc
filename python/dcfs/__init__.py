"""Load safetensors weights straight from dcfs `.dcz` containers, no mount needed.

Modelled on safetensors, so a loader changes one import::

    import dcfs.torch
    tensors = dcfs.torch.load_file("packed/model.safetensors")   # or ".../model.safetensors.dcz"

    with dcfs.safe_open("packed/model.safetensors", framework="pt", device="cpu") as f:
        for name in f.keys():
            t = f.get_tensor(name)

A path names a `.dcz` container of a safetensors file, or the original file's name inside a
pack directory (`PACKED/x.safetensors` opens `PACKED/x.safetensors.dcz`). Each chunk is
checked against its checksum before any of its bytes are returned: damage raises
`CorruptError` (an `OSError`) naming the container and the chunk, never wrong values.
"""

import errno as _errno
import json as _json
import os as _os

from ._dcfs import Container as _Container
from ._dcfs import CorruptError

__all__ = ["CorruptError", "safe_open", "resolve"]

_FRAMEWORKS = {"pt": "pt", "torch": "pt", "pytorch": "pt", "np": "np", "numpy": "np"}


def resolve(path):
    """The container a path names: `X.dcz` itself, else `X.dcz` beside it when that exists
    (a file name inside a pack directory), else `X` (which must then be a container)."""
    p = _os.fspath(path)
    if isinstance(p, bytes):
        p = _os.fsdecode(p)
    if p.endswith(".dcz"):
        return p
    if _os.path.exists(p + ".dcz"):
        return p + ".dcz"
    if _os.path.exists(p):
        return p
    raise FileNotFoundError(_errno.ENOENT, f"no dcfs container at {p}.dcz or {p}", p)


def _corrupt(path, what):
    """A CorruptError raised from Python (`chunk` None: not one chunk's fault)."""
    e = CorruptError(_errno.EIO, f"{path}: {what}", path)
    e.chunk = None
    return e


class _Tensor:
    __slots__ = ("name", "dtype", "shape", "start", "nbytes")

    def __init__(self, name, dtype, shape, start, nbytes):
        self.name, self.dtype, self.shape, self.start, self.nbytes = name, dtype, list(shape), start, nbytes


class _Open:
    """One opened container and its tensor table (shared by every framework)."""

    def __init__(self, path):
        self.container = _Container(resolve(path))
        self.path = str(self.container.path)
        if not self.container.is_safetensors:
            raise ValueError(f"{self.path}: not a container of a safetensors file")
        self.tensors = {t[0]: _Tensor(*t) for t in self.container.tensors()}
        self._metadata = False

    def metadata(self):
        if self._metadata is False:
            try:
                h = _json.loads(self.container.header())
            except (UnicodeDecodeError, ValueError) as e:
                raise _corrupt(self.path, f"safetensors header is not JSON: {e}") from None
            m = h.get("__metadata__") if isinstance(h, dict) else None
            self._metadata = dict(m) if isinstance(m, dict) else None
        return self._metadata

    def tensor(self, name):
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def read(self, ranges):
        """bytearrays of the original file's byte ranges, decoded in one parallel pass."""
        return self.container.read(ranges)


def _framework(name):
    try:
        return _FRAMEWORKS[name]
    except KeyError:
        raise ValueError(f"framework {name!r}: dcfs supports 'pt' (torch) and 'np' (numpy)") from None


def _rows_wanted(key, rows):
    """(lo, hi, post) for a key whose first element indexes the first dimension of `rows`
    rows: decode rows lo..hi, then index the result with `post` (relative to lo)."""
    if not isinstance(key, tuple):
        key = (key,)
    if not key:
        return 0, rows, ()
    k0, rest = key[0], key[1:]
    if k0 is Ellipsis:
        return 0, rows, key
    if isinstance(k0, slice):
        r = range(*k0.indices(rows))
        if len(r) == 0:
            return 0, 0, (slice(None),) + rest
        lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
        if r.step == 1:
            return lo, hi, (slice(None),) + rest
        return lo, hi, ([i - lo for i in r],) + rest
    if isinstance(k0, bool) or not hasattr(k0, "__index__"):
        raise TypeError(f"get_slice takes ints, slices and ... along the first dimension, not {k0!r}")
    i = k0.__index__()
    if i < 0:
        i += rows
    if not 0 <= i < rows:
        raise IndexError(f"index {k0} out of range for dimension 0 of size {rows}")
    return i, i + 1, (0,) + rest


class _Slice:
    """A lazily decoded tensor (safetensors' PySafeSlice): `get_shape()`, `get_dtype()` and
    indexing along the first dimension, which decodes only the chunks holding those rows."""

    def __init__(self, handle, t):
        self._h, self._t = handle, t

    def get_shape(self):
        return list(self._t.shape)

    def get_dtype(self):
        return self._t.dtype

    def __len__(self):
        if not self._t.shape:
            raise TypeError("len() of a 0-d tensor")
        return self._t.shape[0]

    def __getitem__(self, key):
        t = self._t
        if not t.shape:
            if key in ((), Ellipsis):
                return self._h.get_tensor(t.name)
            raise IndexError("a 0-d tensor takes only () or ...")
        rows = t.shape[0]
        lo, hi, post = _rows_wanted(key, rows)
        row_bytes = t.nbytes // rows if rows else 0
        (buf,) = self._h._o.read([(t.start + lo * row_bytes, t.start + hi * row_bytes)])
        part = _Tensor(t.name, t.dtype, [hi - lo] + t.shape[1:], t.start + lo * row_bytes, (hi - lo) * row_bytes)
        x = self._h._convert(part, buf)
        if post:
            x = x[post]
        return self._h._place(x)


class safe_open:
    """A container opened once, as a context manager with `keys()`, `metadata()`,
    `get_tensor(name)` and `get_slice(name)` (see the module docstring).

    `framework`: "pt" (torch tensors) or "np" (numpy arrays). `device` (torch only): "cpu",
    "cuda", "cuda:N" or an int N. On cuda:0, when dcfs' GPU decoder is usable (a driver,
    NVRTC, and a calibration on this container found it faster than the CPU), tensors are
    decoded on the GPU; otherwise, and on every other GPU, they are decoded on the CPU (all
    cores) and copied. A CUDA device torch does not see raises ValueError.
    """

    def __init__(self, filename, framework, device="cpu"):
        self._fw = _framework(framework)
        self._o = _Open(filename)
        if self._fw == "pt":
            from . import torch as _t

            self._backend = _t
            self._device = _t._device(device)
        else:
            if str(device) != "cpu":
                raise ValueError(f"device {device!r}: numpy arrays live on the cpu")
            from . import numpy as _n

            self._backend = _n
            self._device = "cpu"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return sorted(self._o.tensors)

    def offset_keys(self):
        """Tensor names in file order."""
        return list(self._o.tensors)

    def metadata(self):
        return self._o.metadata()

    def get_tensor(self, name):
        return self._backend._load(self._o, [name], self._device)[name]

    def get_slice(self, name):
        return _Slice(self, self._o.tensor(name))

    def _convert(self, t, buf):
        return self._backend._from_bytes(self._o, t, buf)

    def _place(self, x):
        return self._backend._place(x, self._device)

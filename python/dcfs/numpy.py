"""numpy arrays from a dcfs container, like `safetensors.numpy`."""

import math as _math

import numpy as _np

from . import _corrupt, _Open

# Little-endian, as safetensors stores them. numpy has no BF16 or F8_* type: those raise
# TypeError, as in safetensors.numpy.
_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
    "BOOL": "?",
}  # fmt: skip


def _dtype(o, t):
    try:
        return _np.dtype(_DTYPES[t.dtype])
    except KeyError:
        raise TypeError(f"{o.path}: tensor {t.name!r} has dtype {t.dtype}, which numpy does not have") from None


def _from_bytes(o, t, buf):
    dt = _dtype(o, t)
    if _math.prod(t.shape) * dt.itemsize != len(buf):
        raise _corrupt(o.path, f"tensor {t.name!r}: shape {t.shape} does not fit {len(buf)} bytes")
    return _np.frombuffer(buf, dtype=dt).reshape(t.shape)


def _place(x, device):
    return x


def _load(o, names, device="cpu"):
    ts = [o.tensor(n) for n in names]
    for t in ts:
        _dtype(o, t)  # refuse before decoding anything
    bufs = o.read([(t.start, t.start + t.nbytes) for t in ts])
    return {t.name: _from_bytes(o, t, b) for t, b in zip(ts, bufs)}


def load_file(filename):
    """{name: numpy.ndarray} of every tensor, like `safetensors.numpy.load_file`. All
    chunks are decoded in one pass on all cores; in file order, as safetensors."""
    o = _Open(filename)
    return _load(o, list(o.tensors))

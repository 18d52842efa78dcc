"""torch tensors from a dcfs container, like `safetensors.torch`."""

import math as _math

import torch as _torch

from . import _corrupt, _Open

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8",
    "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}  # fmt: skip


def _dtype(o, t):
    dt = getattr(_torch, _DTYPES.get(t.dtype, "?"), None)
    if dt is None:
        raise TypeError(f"{o.path}: tensor {t.name!r} has dtype {t.dtype}, which this torch does not have")
    return dt


def _device(device):
    """A torch.device; a CUDA device torch cannot see raises ValueError (never a silent
    fallback to another device)."""
    dev = _torch.device(device)
    if dev.type == "cuda":
        n = _torch.cuda.device_count() if _torch.cuda.is_available() else 0
        index = dev.index if dev.index is not None else (_torch.cuda.current_device() if n else 0)
        if index >= n:
            raise ValueError(f"device {str(device)!r}: torch sees {n} CUDA device{'' if n == 1 else 's'}")
        dev = _torch.device("cuda", index)
    return dev


def _from_bytes(o, t, buf):
    dt = _dtype(o, t)
    itemsize = _torch.empty((), dtype=dt).element_size()
    if _math.prod(t.shape) * itemsize != len(buf):
        raise _corrupt(o.path, f"tensor {t.name!r}: shape {t.shape} does not fit {len(buf)} bytes")
    if len(buf) == 0:
        return _torch.empty(t.shape, dtype=dt)
    # Shares the bytearray (writable, so no warning and no copy).
    return _torch.frombuffer(buf, dtype=dt).reshape(t.shape)


def _place(x, device):
    return x if device.type == "cpu" else x.to(device)


class _CudaOwner:
    """Keeps a dcfs device buffer alive for as long as the torch tensor made from it."""

    def __init__(self, buf):
        self._buf = buf
        self.__cuda_array_interface__ = {
            "shape": (buf.nbytes,),
            "typestr": "|u1",
            "data": (buf.ptr, False),
            "strides": None,
            "version": 3,
        }


def _load(o, names, device):
    ts = [o.tensor(n) for n in names]
    dts = [_dtype(o, t) for t in ts]  # refuse before decoding anything
    out = {}
    if device.type == "cuda" and device.index == 0 and o.container.gpu_usable():
        for t, dt in zip(ts, dts):
            if t.nbytes == 0:
                out[t.name] = _torch.empty(t.shape, dtype=dt, device=device)
                continue
            raw = _torch.as_tensor(_CudaOwner(o.container.read_cuda(t.name)), device=device)
            if _math.prod(t.shape) * raw.view(dt).element_size() != t.nbytes:
                raise _corrupt(o.path, f"tensor {t.name!r}: shape {t.shape} does not fit {t.nbytes} bytes")
            out[t.name] = raw.view(dt).reshape(t.shape)
        return out
    bufs = o.read([(t.start, t.start + t.nbytes) for t in ts])
    for t, b in zip(ts, bufs):
        out[t.name] = _place(_from_bytes(o, t, b), device)
    return out


def load_file(filename, device="cpu"):
    """{name: torch.Tensor} of every tensor, like `safetensors.torch.load_file`.

    CPU: every chunk decoded once, in one pass on all cores (GIL released); in file order, as safetensors. `device`:
    see `dcfs.safe_open` (GPU decode on cuda:0 when usable, else decode and copy)."""
    dev = _device(device)
    o = _Open(filename)
    return _load(o, list(o.tensors), dev)

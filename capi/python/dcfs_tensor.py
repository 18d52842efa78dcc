"""Tensors straight out of a dcfs pack, without a mount: a ctypes wrapper of libdcfs_capi.

    from dcfs_tensor import PackedFile
    f = PackedFile("/packs/minilm/model.safetensors.dcz")
    w = f.torch("encoder.layer.0.attention.self.query.weight")                 # CPU tensor
    g = f.torch("encoder.layer.0.attention.self.query.weight", device="cuda")  # decoded on the GPU

`device="cuda"` decodes the rANS chunks on the GPU into device memory (no host copy of the
decoded bytes) and hands the buffer to PyTorch through __cuda_array_interface__ without a
copy; the buffer is freed when the last tensor viewing it is gone. Every chunk is checked
against its checksum; damage raises DcfsError, never returns wrong values.

The library is found at $DCFS_CAPI_LIB, else in this repository's target/release
(build it with `cargo build --release -p dcfs-capi`). No third-party import at module
level: numpy and torch are imported by the methods that return their types.
"""

import ctypes
import os
from pathlib import Path

MAX_DIMS = 8

# safetensors dtype -> (numpy dtype, torch dtype name). BF16 has no numpy dtype: the
# numpy view is uint16 bits (torch gets the real bfloat16).
DTYPES = {
    "F64": ("<f8", "float64"), "F32": ("<f4", "float32"), "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"), "I64": ("<i8", "int64"), "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"), "I8": ("i1", "int8"), "U8": ("u1", "uint8"), "BOOL": ("?", "bool"),
    "F8_E4M3": ("u1", "float8_e4m3fn"), "F8_E5M2": ("u1", "float8_e5m2"),
}


class DcfsError(RuntimeError):
    pass


class _Info(ctypes.Structure):
    _fields_ = [("dtype", ctypes.c_char * 16), ("ndim", ctypes.c_uint32),
                ("shape", ctypes.c_uint64 * MAX_DIMS), ("nbytes", ctypes.c_uint64)]


def _lib_path():
    env = os.environ.get("DCFS_CAPI_LIB")
    if env:
        return env
    return str(Path(__file__).resolve().parents[2] / "target" / "release" / "libdcfs_capi.so")


_LIB = None


def lib():
    global _LIB
    if _LIB is None:
        L = ctypes.CDLL(_lib_path())
        c, p, u64, i = ctypes.c_char_p, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int
        L.dcfs_last_error.restype = c
        L.dcfs_tensor_names.argtypes = [c, c, ctypes.c_size_t]
        L.dcfs_tensor_names.restype = ctypes.c_int64
        L.dcfs_tensor_info_get.argtypes = [c, c, ctypes.POINTER(_Info)]
        L.dcfs_decode_tensor_host.argtypes = [c, c, p, u64]
        L.dcfs_decode_tensor_cuda.argtypes = [c, c, i, ctypes.POINTER(p)]
        L.dcfs_device_tensor_ptr.argtypes = [p]
        L.dcfs_device_tensor_ptr.restype = u64
        L.dcfs_device_tensor_len.argtypes = [p]
        L.dcfs_device_tensor_len.restype = u64
        L.dcfs_device_tensor_free.argtypes = [p]
        _LIB = L
    return _LIB


def _check(rc):
    if rc < 0:
        raise DcfsError(lib().dcfs_last_error().decode("utf-8", "replace"))
    return rc


class _DeviceBuffer:
    """Owns one dcfs device buffer; exposes it to torch/CuPy by __cuda_array_interface__."""

    def __init__(self, handle, shape, typestr):
        self._h = handle
        L = lib()
        self.ptr = L.dcfs_device_tensor_ptr(handle)
        self.nbytes = L.dcfs_device_tensor_len(handle)
        self.__cuda_array_interface__ = {
            "shape": tuple(shape), "typestr": typestr, "data": (self.ptr, False), "version": 3,
            "strides": None, "stream": None,
        }

    def __del__(self):
        if self._h:
            lib().dcfs_device_tensor_free(self._h)
            self._h = None


class PackedFile:
    """One packed file (`X.safetensors.dcz` / `X.gguf.dcz`)."""

    def __init__(self, path):
        self.path = os.fsencode(os.fspath(path))

    def names(self):
        L = lib()
        n = _check(L.dcfs_tensor_names(self.path, None, 0))
        buf = ctypes.create_string_buffer(n + 1)
        _check(L.dcfs_tensor_names(self.path, buf, n + 1))
        return buf.value.decode().split("\n") if n else []

    def info(self, name):
        """(dtype, shape, nbytes) as the file states them."""
        i = _Info()
        _check(lib().dcfs_tensor_info_get(self.path, name.encode(), ctypes.byref(i)))
        return i.dtype.decode(), tuple(i.shape[: i.ndim]), i.nbytes

    def read_into(self, name, address, nbytes):
        """Decodes tensor `name` into host memory at `address` (exactly `nbytes` long)."""
        _check(lib().dcfs_decode_tensor_host(self.path, name.encode(), ctypes.c_void_p(address), nbytes))

    def numpy(self, name):
        import numpy as np

        dtype, shape, nbytes = self.info(name)
        if dtype not in DTYPES:
            raise DcfsError(f"{name}: dtype {dtype} has no numpy equivalent; use raw_bytes()")
        a = np.empty(shape, dtype=DTYPES[dtype][0])
        if a.nbytes != nbytes:
            raise DcfsError(f"{name}: {dtype}{list(shape)} is {a.nbytes} bytes, the file says {nbytes}")
        self.read_into(name, a.ctypes.data, nbytes)
        return a

    def raw_bytes(self, name):
        _, _, nbytes = self.info(name)
        buf = bytearray(nbytes)
        if nbytes:
            self.read_into(name, ctypes.addressof((ctypes.c_char * nbytes).from_buffer(buf)), nbytes)
        return bytes(buf)

    def torch(self, name, device="cpu", verify=False):
        """Tensor `name` as a torch.Tensor on `device` ("cpu" or "cuda"/"cuda:0").

        cuda: decoded on the GPU into device memory and wrapped without a copy; `verify`
        also checks GPU-decoded chunks' checksums (one extra copy back per chunk).
        """
        import torch

        dtype, shape, nbytes = self.info(name)
        if dtype not in DTYPES:
            raise DcfsError(f"{name}: dtype {dtype} has no torch equivalent")
        tdt = getattr(torch, DTYPES[dtype][1])
        dev = torch.device(device)
        if dev.type == "cpu":
            t = torch.empty(nbytes, dtype=torch.uint8)
            if nbytes:
                self.read_into(name, t.data_ptr(), nbytes)
            return t.view(tdt).reshape(shape)
        if dev.type != "cuda" or (dev.index or 0) != 0:
            raise DcfsError(f"device {device}: only cpu and cuda:0 are supported")
        h = ctypes.c_void_p()
        _check(lib().dcfs_decode_tensor_cuda(self.path, name.encode(), int(verify), ctypes.byref(h)))
        buf = _DeviceBuffer(h, (nbytes,), "|u1")
        # as_tensor keeps `buf` alive as long as the tensor (and its views) live.
        return torch.as_tensor(buf, device="cuda").view(tdt).reshape(shape)

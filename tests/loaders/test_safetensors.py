"""safetensors without PyTorch: numpy loads over the mount equal the unpacked source.

safetensors' numpy backend has no BF16 or F8_* dtype (numpy has neither): for those tensors
the installed version raises while converting, on the mount exactly as on the source. We
assert that it does, then compare the tensor's raw bytes, located by the file's own
header, through mmap of both files.
"""

import gc
import json
import mmap
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy as stn
from safetensors import safe_open

from conftest import MINILM_VARIANTS, measure

NUMPY_DTYPES = {"F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8", "BOOL"}


def header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return 8 + n, h


def raw_tensor_bytes(path):
    """{name: bytes} of every tensor, read through mmap using the header's offsets."""
    base, h = header(path)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return {k: bytes(m[base + v["data_offsets"][0] : base + v["data_offsets"][1]]) for k, v in h.items()}


def load_file_outcome(path):
    try:
        return "ok", stn.load_file(path)
    except Exception as e:  # the outcome itself is what we compare
        return "raised", f"{type(e).__name__}: {e}"


@pytest.mark.parametrize("variant", MINILM_VARIANTS)
def test_numpy_load_file(models, mnt, variant):
    rel = f"minilm-{variant}/model.safetensors"
    src, mtd = models / rel, mnt / rel
    _, h = header(src)
    dtypes = {v["dtype"] for v in h.values()}
    a_kind, a = load_file_outcome(src)
    b_kind, b = load_file_outcome(mtd)
    print(f"safetensors {safetensors.__version__} numpy load_file {variant} ({sorted(dtypes)}): "
          f"{a_kind}{' ' + a if a_kind == 'raised' else ''}")
    assert (a_kind, a_kind == "raised" and a) == (b_kind, b_kind == "raised" and b)
    if dtypes <= NUMPY_DTYPES:
        assert a_kind == "ok", a
        assert sorted(a) == sorted(b) == sorted(h)
        for k in a:
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k
            assert a[k].tobytes() == b[k].tobytes(), k
    else:
        # No numpy dtype for BF16/F8: the loader must fail the same way on both sides.
        assert a_kind == "raised"
    # Every tensor's raw bytes, whatever its dtype.
    ra, rb = raw_tensor_bytes(src), raw_tensor_bytes(mtd)
    assert ra.keys() == rb.keys() == h.keys()
    for k in ra:
        assert ra[k] == rb[k], k


@pytest.mark.parametrize("variant", MINILM_VARIANTS)
def test_safe_open_numpy(models, mnt, variant):
    rel = f"minilm-{variant}/model.safetensors"
    _, h = header(models / rel)
    raw = raw_tensor_bytes(models / rel)
    with safe_open(models / rel, framework="numpy") as fa, safe_open(mnt / rel, framework="numpy") as fb:
        assert fa.metadata() == fb.metadata()
        assert sorted(fa.keys()) == sorted(fb.keys()) == sorted(h)
        converted = unconvertible = 0
        for k in fa.keys():
            if h[k]["dtype"] in NUMPY_DTYPES:
                x, y = fa.get_tensor(k), fb.get_tensor(k)
                assert x.dtype == y.dtype and x.shape == y.shape == tuple(h[k]["shape"]), k
                assert x.tobytes() == y.tobytes() == raw[k], k
                # a slice read (partial range of the file) too
                if x.ndim >= 1 and x.shape[0] > 2:
                    sa, sb = fa.get_slice(k)[1:3], fb.get_slice(k)[1:3]
                    assert np.array_equal(sa, sb) and np.array_equal(sa, x[1:3]), k
                converted += 1
            else:
                with pytest.raises(Exception) as ea:
                    fa.get_tensor(k)
                with pytest.raises(Exception) as eb:
                    fb.get_tensor(k)
                assert (ea.type, str(ea.value)) == (eb.type, str(eb.value)), k
                unconvertible += 1
    assert converted + unconvertible == len(h)
    print(f"safe_open numpy {variant}: {converted} tensors compared as arrays, {unconvertible} as raw bytes")


def test_timing_safetensors(models, mount):
    def load(path):
        return stn.load_file(path)

    load(models / "minilm-f16/model.safetensors")  # untimed: one-time setup out of the way
    measure("safetensors.numpy", "load_file minilm-f32 (87 MiB)", mount, models, "minilm-f32/model.safetensors", load)
    gc.collect()

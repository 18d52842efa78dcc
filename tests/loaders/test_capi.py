"""The C ABI (capi/, libdcfs_capi.so) through its Python wrapper capi/python/dcfs_tensor.py:
tensors decoded straight from the packed files, no mount, must equal the source bytes; a
damaged container raises instead of returning wrong values; the CUDA path runs where torch
sees a GPU (skipped, with the reason, elsewhere).
"""

import os
import shutil
import sys

import numpy as np
import pytest
import safetensors.numpy as stn
import torch
from safetensors.torch import load_file

from conftest import MINILM_VARIANTS, REPO
from test_safetensors import header, raw_tensor_bytes

sys.path.insert(0, str(REPO / "capi" / "python"))
import dcfs_tensor  # noqa: E402
from dcfs_tensor import DcfsError, PackedFile  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def capi_lib():
    path = dcfs_tensor._lib_path()
    if not os.path.isfile(path):
        pytest.fail(f"{path} not found (cargo build --release -p dcfs-capi)")


@pytest.mark.parametrize("variant", MINILM_VARIANTS)
def test_torch_cpu_tensors_equal_the_source(models, packed, variant):
    rel = f"minilm-{variant}/model.safetensors"
    f = PackedFile(packed / (rel + ".dcz"))
    _, h = header(models / rel)
    assert sorted(f.names()) == sorted(h)
    raw = raw_tensor_bytes(models / rel)
    ref = load_file(models / rel)
    for name in h:
        t = f.torch(name)
        assert t.dtype == ref[name].dtype and tuple(t.shape) == tuple(ref[name].shape), name
        assert t.contiguous().view(torch.uint8).numpy().tobytes() == raw[name], name
        dtype, shape, nbytes = f.info(name)
        assert (dtype, list(shape), nbytes) == (h[name]["dtype"], h[name]["shape"], len(raw[name]))
    print(f"capi: {variant}: {len(h)} tensors decoded from the pack equal the source")


def test_numpy_equals_safetensors_numpy(models, packed):
    rel = "minilm-f32/model.safetensors"
    f = PackedFile(packed / (rel + ".dcz"))
    ref = stn.load_file(models / rel)
    for name, a in ref.items():
        b = f.numpy(name)
        assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b), name


def test_errors_are_raised_not_wrong_bytes(models, packed, tmp_path):
    rel = "minilm-bf16/model.safetensors"
    f = PackedFile(packed / (rel + ".dcz"))
    with pytest.raises(DcfsError, match="no tensor named"):
        f.info("no.such.tensor")
    with pytest.raises(DcfsError):
        PackedFile(tmp_path / "missing.dcz").names()
    # One flipped byte in every 1 MiB of the container's payload region.
    bad = tmp_path / "bad.dcz"
    shutil.copy(packed / (rel + ".dcz"), bad)
    data = bytearray(bad.read_bytes())
    for off in range(4096, len(data) - 65536, 1 << 20):
        data[off] ^= 0x5A
    bad.write_bytes(bytes(data))
    raw = raw_tensor_bytes(models / rel)
    g = PackedFile(bad)
    try:
        names = g.names()
    except DcfsError as e:  # the damage hit the index: refused whole
        print(f"capi: damaged container refused at open: {e}")
        return
    errors = 0
    for name in names:
        try:
            t = g.torch(name)
        except DcfsError as e:
            errors += 1
            assert "bad.dcz" in str(e), e
            continue
        assert t.contiguous().view(torch.uint8).numpy().tobytes() == raw[name], f"wrong bytes for {name}"
    assert errors > 0, "no tensor overlapped a damaged chunk"
    print(f"capi: damaged container: {errors} of {len(names)} tensors raised, the rest were exact")


def test_cuda_tensors_equal_cpu(models, packed):
    if not torch.cuda.is_available():
        pytest.skip("SKIP capi CUDA path: torch sees no CUDA device on this machine")
    rel = "minilm-bf16/model.safetensors"
    f = PackedFile(packed / (rel + ".dcz"))
    for name in f.names():
        g = f.torch(name, device="cuda", verify=True)
        assert g.is_cuda
        assert torch.equal(g.cpu().view(torch.int16), f.torch(name).view(torch.int16)), name

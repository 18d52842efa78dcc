"""The `dcfs` Python package (python/, installed as a wheel by scripts/loader-tests.sh):
tensors loaded straight from the packed files, no mount, equal safetensors' loads of the
originals bit for bit; damage raises dcfs.CorruptError naming file and chunk, never wrong
values; get_slice decodes only the chunks holding the rows asked for.

Imports the installed package: no sys.path edit, no library path variable.
"""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy as stn
import torch
from safetensors import safe_open as st_open
from safetensors.torch import load_file as st_load_file

import dcfs
import dcfs.numpy
import dcfs.torch
from conftest import MINILM_VARIANTS, REPO

NUMPY_VARIANTS = ["f32", "f16", "int8-tensor", "int8-channel"]
REL = "minilm-{}/model.safetensors"


def raw(t):
    """A tensor's bytes (any dtype, any shape) as a flat uint8 tensor."""
    flat = torch.empty(t.numel(), dtype=t.dtype).copy_(t.reshape(-1))  # stride 1, even for size-1 dims
    return flat.view(torch.uint8)


def assert_same(ref, got):
    assert list(ref) == list(got), "tensor names or their order differ"
    for name, a in ref.items():
        b = got[name]
        assert b.dtype == a.dtype and tuple(b.shape) == tuple(a.shape), name
        assert b.device == a.device or b.device.type == "cuda", name
        assert torch.equal(raw(a), raw(b.cpu())), f"{name}: bytes differ"


def test_imports_the_installed_package_not_the_source_tree():
    where = Path(dcfs.__file__).resolve()
    assert REPO / "python" not in where.parents, f"dcfs imported from the source tree: {where}"
    print(f"python-pkg: dcfs imported from {where.parent}")


@pytest.mark.parametrize("variant", MINILM_VARIANTS)
def test_torch_load_file_equals_safetensors(models, packed, variant):
    rel = REL.format(variant)
    ref = st_load_file(models / rel)
    # The original's name inside the pack, and the container's own name.
    assert_same(ref, dcfs.torch.load_file(packed / rel))
    assert_same(ref, dcfs.torch.load_file(str(packed / (rel + ".dcz")), device="cpu"))
    print(f"python-pkg: {variant}: {len(ref)} tensors equal safetensors.torch.load_file")


@pytest.mark.parametrize("variant", NUMPY_VARIANTS)
def test_numpy_load_file_equals_safetensors(models, packed, variant):
    rel = REL.format(variant)
    ref = stn.load_file(models / rel)
    got = dcfs.numpy.load_file(packed / rel)
    assert list(ref) == list(got)
    for name, a in ref.items():
        b = got[name]
        assert b.dtype == a.dtype and b.shape == a.shape and a.tobytes() == b.tobytes(), name


@pytest.mark.parametrize("variant", ["bf16", "fp8"])
def test_numpy_refuses_dtypes_numpy_lacks(packed, variant):
    with pytest.raises(TypeError, match="numpy does not have"):
        dcfs.numpy.load_file(packed / REL.format(variant))
    with dcfs.safe_open(packed / REL.format(variant), framework="np") as f:
        name = next(k for k in f.keys() if f.get_slice(k).get_dtype() in ("BF16", "F8_E4M3"))
        with pytest.raises(TypeError, match="numpy does not have"):
            f.get_tensor(name)


@pytest.mark.parametrize("variant", ["f32", "bf16", "fp8"])
def test_safe_open_matches_safetensors(models, packed, variant):
    rel = REL.format(variant)
    with st_open(models / rel, framework="pt") as s, dcfs.safe_open(packed / rel, framework="pt") as d:
        assert d.keys() == s.keys()
        assert d.metadata() == s.metadata() and d.metadata() is not None
        for name in s.keys():
            assert torch.equal(raw(d.get_tensor(name)), raw(s.get_tensor(name))), name
            ds, ss = d.get_slice(name), s.get_slice(name)
            assert ds.get_shape() == ss.get_shape() and ds.get_dtype() == ss.get_dtype(), name
            if not ss.get_shape():
                continue
            n = ss.get_shape()[0]
            keys = [slice(None), slice(1, 3), slice(n // 2, None), slice(None, None, 3), slice(n, n), 0, -1]
            if len(ss.get_shape()) > 1:
                keys += [(slice(2, 5), slice(1, 4)), (1, 0), (slice(None), 0)]
            for key in keys:
                try:
                    a = ss[key]
                except IndexError:  # refused alike: e.g. row 1 of a 1-row tensor
                    with pytest.raises(IndexError):
                        ds[key]
                    continue
                b = ds[key]
                assert tuple(b.shape) == tuple(a.shape) and b.dtype == a.dtype, (name, key)
                assert torch.equal(raw(b), raw(a)), (name, key)


def test_safe_open_numpy(models, packed):
    rel = REL.format("f16")
    ref = stn.load_file(models / rel)
    with dcfs.safe_open(packed / rel, framework="np") as f:
        for name in f.keys():
            assert np.array_equal(f.get_tensor(name), ref[name]), name
        big = max(f.keys(), key=lambda k: ref[k].size)
        assert np.array_equal(f.get_slice(big)[10:20], ref[big][10:20])


def flip(src: Path, dst: Path, offset: int):
    shutil.copy(src, dst)
    data = bytearray(dst.read_bytes())
    data[offset] ^= 0x5A
    dst.write_bytes(bytes(data))


def test_damage_raises_corrupt_error_naming_file_and_chunk(models, packed, tmp_path):
    rel = REL.format("bf16")
    src = packed / (rel + ".dcz")
    chunks = dcfs._Container(str(src)).chunks()
    # The middle of a payload in the middle of the file.
    k = len(chunks) // 2
    orig_offset, orig_len, payload_offset, payload_len = chunks[k]
    bad = tmp_path / "bad.safetensors.dcz"
    flip(src, bad, payload_offset + payload_len // 2)

    with pytest.raises(dcfs.CorruptError) as e:
        dcfs.torch.load_file(bad)
    assert isinstance(e.value, OSError)
    assert e.value.filename == str(bad) and e.value.chunk == k, (e.value.filename, e.value.chunk)
    assert "bad.safetensors.dcz" in str(e.value) and f"chunk {k}" in str(e.value), str(e.value)
    with pytest.raises(OSError, match=f"chunk {k}"):
        dcfs.torch.load_file(tmp_path / "bad.safetensors")  # the pack-directory name

    # Every tensor clear of the damaged chunk still loads exactly; the others raise.
    ref = st_load_file(models / rel)
    hit = ok = 0
    with dcfs.safe_open(bad, framework="pt") as f:
        for name in f.keys():
            t = f._o.tensors[name]
            if t.start < orig_offset + orig_len and orig_offset < t.start + t.nbytes:
                with pytest.raises(dcfs.CorruptError, match=f"chunk {k}"):
                    f.get_tensor(name)
                hit += 1
            else:
                assert torch.equal(raw(f.get_tensor(name)), raw(ref[name])), name
                ok += 1
    assert hit > 0 and ok > 0, (hit, ok)
    print(f"python-pkg: one damaged chunk: {hit} tensors raised CorruptError, {ok} loaded exactly")


def test_get_slice_decodes_only_the_chunks_of_the_rows(models, packed, tmp_path):
    """Damage in the last chunk of a tensor spanning many chunks: its first rows still load
    (so only their chunks were decoded), its last rows raise."""
    rel = REL.format("f32")
    src = packed / (rel + ".dcz")
    c = dcfs._Container(str(src))
    name, _, shape, start, nbytes = max(c.tensors(), key=lambda t: t[4])
    mine = [ch for ch in c.chunks() if start <= ch[0] and ch[0] + ch[1] <= start + nbytes]
    assert len(mine) >= 4, f"{name} spans only {len(mine)} chunks"
    last = mine[-1]
    bad = tmp_path / "bad.dcz"
    flip(src, bad, last[2] + last[3] // 2)
    ref = st_load_file(models / rel)[name]
    with dcfs.safe_open(bad, framework="pt") as f:
        s = f.get_slice(name)
        assert torch.equal(s[:10], ref[:10]) and torch.equal(s[5], ref[5])
        with pytest.raises(dcfs.CorruptError):
            s[shape[0] - 1 :]
        with pytest.raises(dcfs.CorruptError):
            f.get_tensor(name)


def test_paths_and_arguments(packed, tmp_path):
    with pytest.raises(FileNotFoundError, match="no dcfs container"):
        dcfs.torch.load_file(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="not a container of a safetensors file"):
        dcfs.safe_open(packed / "smollm2-q4_1" / "SmolLM2-135M-Instruct.Q4_1.gguf", framework="pt")
    not_dcz = tmp_path / "plain.dcz"
    not_dcz.write_bytes(b"\0" * 4096)
    with pytest.raises(dcfs.CorruptError, match="not a dcfs container"):
        dcfs.torch.load_file(not_dcz)
    f32 = packed / REL.format("f32")
    with pytest.raises(ValueError, match="framework"):
        dcfs.safe_open(f32, framework="tf")
    with pytest.raises(ValueError, match="numpy arrays live on the cpu"):
        dcfs.safe_open(f32, framework="np", device="cuda:0")
    with dcfs.safe_open(f32, framework="pt") as f:
        with pytest.raises(KeyError, match="no tensor named"):
            f.get_tensor("no.such.tensor")
        name = next(k for k in f.keys() if len(f.get_slice(k).get_shape()) == 2)
        n = f.get_slice(name).get_shape()[0]
        with pytest.raises(IndexError):
            f.get_slice(name)[n]
        with pytest.raises(TypeError):
            f.get_slice(name)["rows"]


def test_threads_share_one_handle(models, packed):
    rel = REL.format("bf16")
    ref = st_load_file(models / rel)
    errors = []
    with dcfs.safe_open(packed / rel, framework="pt") as f:
        names = f.keys()

        def work(k):
            try:
                for name in names[k::4]:
                    assert torch.equal(raw(f.get_tensor(name)), raw(ref[name])), name
            except Exception as e:  # reported below, with the thread's failure
                errors.append(e)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


def test_cuda_device_torch_cannot_see_is_refused(packed):
    """Documented rule: a CUDA device torch does not see raises ValueError, naming it,
    before anything is decoded (never a silent load onto another device)."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=rf"'cuda:{n}': torch sees {n} CUDA device"):
        dcfs.torch.load_file(packed / REL.format("f32"), device=f"cuda:{n}")
    with pytest.raises(ValueError, match="torch sees"):
        dcfs.safe_open(packed / REL.format("f32"), framework="pt", device=f"cuda:{n}")


def test_cuda_loads_equal_safetensors(models, packed):
    if not torch.cuda.is_available():
        pytest.skip("SKIP dcfs.torch on CUDA: torch sees no CUDA device on this machine")
    for variant in ("bf16", "f32"):
        rel = REL.format(variant)
        ref = st_load_file(models / rel)
        for index in sorted({0, torch.cuda.device_count() - 1}):
            got = dcfs.torch.load_file(packed / rel, device=f"cuda:{index}")
            assert all(t.device == torch.device("cuda", index) for t in got.values())
            assert_same(ref, got)
        gpu = dcfs._Container(str(packed / (rel + ".dcz"))).gpu_usable()
        print(f"python-pkg: {variant} on CUDA equals the source (GPU decoder used on cuda:0: {gpu})")

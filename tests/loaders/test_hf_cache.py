"""A Hugging Face hub cache packed and mounted: with HF_HUB_CACHE pointing at the mount and
HF_HUB_OFFLINE=1, SentenceTransformer("ORG/NAME") and transformers' from_pretrained("ORG/NAME")
load and give bit-identical outputs to the same id loaded from the original cache.

The cache is built here from the fetched models the way huggingface_hub lays it out:
blobs/<sha256> (no suffix), refs/main, snapshots/<rev>/<path> as relative links into
blobs/, two revisions sharing the weights blob."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DCFS, Mount

pytest.importorskip("torch", reason="SKIP: torch not installed in this venv")
pytest.importorskip("sentence_transformers", reason="SKIP: sentence-transformers not installed")

REV1 = "1" * 40
REV2 = "2" * 40
REPO_ID = "dcfs-test/minilm-bf16"

# Runs in a fresh interpreter, so HF_HUB_CACHE is read the way a user's program reads it.
WORKER = r"""
import hashlib, json, sys
import torch
torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
repo = sys.argv[1]
sentences = ["dcfs serves a hub cache through FUSE.", "Paris is the capital of France.", "short"]
st = SentenceTransformer(repo, device="cpu")
with torch.inference_mode():
    e = st.encode(sentences, convert_to_tensor=True, show_progress_bar=False)
tok = AutoTokenizer.from_pretrained(repo)
m = AutoModel.from_pretrained(repo)
with torch.inference_mode():
    h = m(**tok(sentences, return_tensors="pt", padding=True)).last_hidden_state
digest = lambda t: hashlib.sha256(t.float().contiguous().numpy().tobytes()).hexdigest()
print(json.dumps({"st": digest(e), "hf": digest(h), "st_shape": list(e.shape), "dtype": str(m.dtype)}))
"""


def build_hub(hub: Path, model: Path) -> Path:
    repo = hub / ("models--" + REPO_ID.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV2)
    files = sorted(p.relative_to(model) for p in model.rglob("*") if p.is_file())
    for rev in (REV1, REV2):
        for rel in files:
            data = (model / rel).read_bytes()
            if rev == REV2 and rel == Path("config.json"):
                data += b"\n"  # a blob of its own; the weights blob is shared
            sha = hashlib.sha256(data).hexdigest()
            blob = repo / "blobs" / sha
            if not blob.exists():
                blob.write_bytes(data)
            link = repo / "snapshots" / rev / rel
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("../" * (len(rel.parts) + 1) + f"blobs/{sha}")
    return repo


def run_worker(hub: Path) -> dict:
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("HF_HOME", None)
    r = subprocess.run([sys.executable, "-c", WORKER, REPO_ID], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"worker failed ({r.returncode}): {r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_hub_cache_through_the_mount_is_bit_identical(models, tmp_path):
    if os.geteuid() != 0 or not Path("/dev/fuse").exists():
        pytest.skip(f"SKIP: mounting needs root and /dev/fuse (euid={os.geteuid()})")
    hub = tmp_path / "hub"
    repo = build_hub(hub, models / "minilm-bf16")
    packed = tmp_path / "hub.dcfs"
    r = subprocess.run([str(DCFS), "pack", str(hub), str(packed), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    weights = next(f for f in report["files"] if f["size"] == (models / "minilm-bf16/model.safetensors").stat().st_size)
    assert weights["kind"] == "safetensors", weights  # the blob, recognised by content
    assert report["outside_links"] == 0
    ratio = weights["size"] / weights["packed"]
    print(f"hub cache: weights blob {weights['path']} ratio {ratio:.3f}; whole cache {report['original_bytes']} -> "
          f"{report['packed_bytes']} bytes")
    assert ratio > 1.4, "a BF16 blob must pack as safetensors (1.5x), not as opaque bytes (1.28x)"
    want = run_worker(hub)
    m = Mount(packed, tmp_path / "mnt")
    try:
        m.start()
        got = run_worker(m.mnt)
        stats = m.stats()
    finally:
        m.stop()
    assert got == want, f"mount {got} != original cache {want}"
    assert stats["errors"] == 0, stats
    # The loaders map the weights and touch the tensors they use (measured: 43.8 of 45.4 MB),
    # so most, not all, of the blob is served.
    assert stats["bytes_served"] >= weights["size"] // 2, f"the weights were read through the mount: {stats}"
    assert repo.name in os.listdir(hub)

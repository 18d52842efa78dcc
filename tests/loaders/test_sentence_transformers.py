"""PyTorch + sentence-transformers, offline: SentenceTransformer(<mounted dir>) gives the
same embeddings, bit for bit, as the same model loaded from the unpacked directory."""

import gc
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch", reason="SKIP: torch not installed in this venv")
st = pytest.importorskip("sentence_transformers", reason="SKIP: sentence-transformers not installed")

from conftest import measure  # noqa: E402

try:  # keep the -s output readable: no per-load "Loading weights" bars
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
except ImportError:
    pass

SENTENCES = [
    "dcfs serves packed model weights through FUSE.",
    "The quick brown fox jumps over the lazy dog.",
    "A lossless compressor must give back every byte.",
    "Sentence embeddings map text to vectors.",
    "Paris is the capital of France.",
    "",
    "Ünïcödé and emoji 🙂 survive tokenisation too.",
    "short",
]

# Deterministic CPU execution on both sides: one intra-op and one inter-op thread.
torch.set_num_threads(1)
try:
    torch.set_num_interop_threads(1)
except RuntimeError:
    pass  # already set in this process
torch.use_deterministic_algorithms(True)


def load(path):
    return st.SentenceTransformer(str(path), device="cpu", local_files_only=True)


def embed(model):
    with torch.inference_mode():
        return model.encode(SENTENCES, convert_to_tensor=True, batch_size=4, show_progress_bar=False)


@pytest.mark.parametrize("variant", ["f32", "bf16"])
def test_embeddings_bit_identical(models, mnt, variant):
    a_model = load(models / f"minilm-{variant}")
    a = embed(a_model)
    a_params = {k: v.detach().clone() for k, v in a_model.state_dict().items()}
    del a_model
    b_model = load(mnt / f"minilm-{variant}")
    b = embed(b_model)
    b_params = b_model.state_dict()
    print(f"torch {torch.__version__}, sentence-transformers {st.__version__}: minilm-{variant} "
          f"embeddings {tuple(a.shape)} {a.dtype}, {len(a_params)} parameter tensors")
    assert a_params.keys() == b_params.keys()
    for k in a_params:
        assert a_params[k].dtype == b_params[k].dtype, k
        assert torch.equal(a_params[k], b_params[k]), k
    assert a.shape == (len(SENTENCES), 384)
    assert a.dtype == b.dtype
    assert torch.equal(a, b)
    # bit for bit, NaN-safe: compare the raw bytes too
    assert a.float().numpy().tobytes() == b.float().numpy().tobytes()
    # a real embedding, not zeros
    assert float(a.float().abs().sum()) > 0
    del b_model, b_params
    gc.collect()


def test_timing_sentence_transformers(models, mount):
    # One untimed load first: the first SentenceTransformer of a process also pays for lazy
    # imports and one-time setup, which would land on whichever source is timed first.
    del_me = load(models / "minilm-f32")
    del del_me
    gc.collect()
    measure("sentence-transformers", "SentenceTransformer(minilm-f32)", mount, models, "minilm-f32", load)
    measure("sentence-transformers", "SentenceTransformer(minilm-bf16)", mount, models, "minilm-bf16", load)
    gc.collect()

"""llama.cpp (PyPI xllamacpp, a prebuilt CPU build of llama.cpp's server): SmolLM2-135M
Q4_1 GGUF loaded from the mount generates the same 32 greedy tokens, with the same
log-probabilities, as from the unpacked file; with llama.cpp's default load mode (mmap: the
weights are paged in from FUSE while generating) and with mmap off (read into memory).
Each run is its own process (see llama_worker.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import GGUF_REL, measure

pytest.importorskip("xllamacpp", reason="SKIP: xllamacpp not installed in this venv")

WORKER = Path(__file__).with_name("llama_worker.py")
PROMPT = "The three most important properties of a file system are"
N_TOKENS = 32


def run(path, mode, n_tokens):
    try:
        r = subprocess.run(
            [sys.executable, str(WORKER), str(path), mode, str(n_tokens), PROMPT],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"llama.cpp run on {path} ({mode}) timed out; stderr tail: {(e.stderr or '')[-2000:]}")
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert r.returncode == 0 and lines, f"worker rc={r.returncode}; stderr tail: {r.stderr[-3000:]}"
    out = json.loads(lines[-1])
    assert "error" not in out, out
    return out


@pytest.mark.parametrize("mode", ["default", "no-mmap"])
def test_greedy_tokens_identical(models, mnt, mode):
    a = run(models / GGUF_REL, mode, N_TOKENS)
    b = run(mnt / GGUF_REL, mode, N_TOKENS)
    print(
        f"xllamacpp {a['xllamacpp']} {mode}: mapped={a['mapped']}/{b['mapped']} "
        f"generate {a['generate_s']:.2f}s unpacked / {b['generate_s']:.2f}s mount: {PROMPT!r} ->{a['text']!r}"
    )
    # the default really is mmap (the GGUF is mapped into the process), and no-mmap is not
    assert a["mapped"] == b["mapped"] == (mode == "default")
    assert len(a["ids"]) == N_TOKENS
    assert a["ids"] == b["ids"]
    assert a["logprobs"] == b["logprobs"]
    assert a["text"] == b["text"]


@pytest.mark.parametrize("mode", ["default", "no-mmap"])
def test_timing_llama_cpp(models, mount, mode):
    measure(
        "llama.cpp (xllamacpp)",
        f"Server(Q4_1 GGUF 94 MiB) {'mmap' if mode == 'default' else 'no-mmap'}",
        mount,
        models,
        GGUF_REL,
        lambda path: run(path, mode, 0),
        seconds=lambda out: out["load_s"],
    )
    if mode == "default":
        # With mmap, loading only maps the file: the weights are read while generating. So
        # time load + 32 tokens as well, which is where FUSE reads happen.
        measure(
            "llama.cpp (xllamacpp)",
            "Server + 32 tokens, mmap",
            mount,
            models,
            GGUF_REL,
            lambda path: run(path, mode, N_TOKENS),
            seconds=lambda out: out["load_s"] + out["generate_s"],
        )

#!/usr/bin/env python3
"""Synthetic BF16 safetensors models of a given size for the scale benchmark.

Usage: bench_synth.py REAL_BF16.safetensors OUT.safetensors SIZE_BYTES [SEED]

Each synthetic tensor belongs to a class (attention q/k/v/o, MLP up/down, embeddings,
norms) and its values are drawn i.i.d. (with replacement) from the values of the real
MiniLM BF16 tensors of that class: the value distribution is real, the bytes are not
repeated (which would flatter zstd's long-range matching).
"""
import json
import struct
import sys

import numpy as np


def classify(name):
    n = name.lower()
    if "norm" in n:
        return "norm"
    if n.endswith("bias"):
        return "bias"
    if "embeddings" in n:
        return "embeddings"
    for key, cls in (("query", "attn_q"), (".key", "attn_k"), ("value", "attn_v"),
                     ("attention.output", "attn_o"), ("intermediate", "mlp_up"),
                     ("output.dense", "mlp_down")):
        if key in n:
            return cls
    return "other"


def pools(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == "__metadata__" or v["dtype"] != "BF16":
            continue
        a, b = v["data_offsets"]
        out.setdefault(classify(name), []).append(np.frombuffer(data[a:b], dtype="<u2"))
    return {k: np.concatenate(v) for k, v in out.items()}


def main():
    real, out, size = sys.argv[1], sys.argv[2], int(float(sys.argv[3]))
    seed = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rng = np.random.default_rng(seed)
    p = pools(real)
    h, ffn = 1024, 4096
    layer = [("attention.self.query.weight", "attn_q", (h, h)), ("attention.self.key.weight", "attn_k", (h, h)),
             ("attention.self.value.weight", "attn_v", (h, h)),
             ("attention.output.dense.weight", "attn_o", (h, h)),
             ("attention.output.LayerNorm.weight", "norm", (h,)),
             ("intermediate.dense.weight", "mlp_up", (ffn, h)), ("output.dense.weight", "mlp_down", (h, ffn)),
             ("output.LayerNorm.weight", "norm", (h,))]
    vocab = 8192
    tensors = [("embeddings.word_embeddings.weight", "embeddings", (vocab, h))]
    total = vocab * h * 2
    i = 0
    while total < size:
        for name, cls, shape in layer:
            tensors.append((f"encoder.layer.{i}.{name}", cls, shape))
            total += int(np.prod(shape)) * 2
        i += 1
    header, off = {}, 0
    for name, cls, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for name, cls, shape in tensors:
            pool = p.get(cls, p["mlp_up"])
            n = int(np.prod(shape))
            for s in range(0, n, 1 << 24):
                k = min(1 << 24, n - s)
                f.write(pool[rng.integers(0, len(pool), k)].astype("<u2").tobytes())
    print(f"{out}: {8 + len(hj) + off} bytes, {len(tensors)} tensors", file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Accuracy and compressibility of `dcfs quantize` on all-MiniLM-L6-v2.

For each setting (granularity x smoothing alpha x prune ratio) this quantizes
models/minilm-f32 with `dcfs quantize`, dequantizes the result into an equivalent F32
model (w = q * weight_scale, then divided column-wise by smooth_scale when present),
loads it with SentenceTransformer from the local directory, encodes the fixed sentences
of scripts/dc_sentences.txt and compares them with the F32 model's embeddings (cosine
similarity: mean, 5th percentile, min). It then packs the quantized directory with
`dcfs pack` and reports the lossless ratios: of model.safetensors as a whole, and of the
INT8 weight tensors alone, next to plain INT8 (same granularity, no smoothing, no pruning).

Prints a markdown table. `--quick` runs only plain INT8 tensor- and channel-wise (no
calibration, no pack) and exits 1 unless channel-wise mean cosine > 0.99 and tensor-wise
> 0.95 (thresholds are flags; tensor-wise INT8 does not reach 0.99 on MiniLM, see
docs/ANALYSIS.md).

Needs a venv with torch, sentence-transformers and safetensors, e.g.
    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch sentence-transformers
    .venv-torch/bin/python scripts/dc_accuracy.py --quick
Models load from local directories only (HF_HUB_OFFLINE=1).
"""

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(ROOT, "models", "minilm-f32"),
                   help="F32 sentence-transformers directory (default: models/minilm-f32)")
    p.add_argument("--dcfs", help="dcfs binary (default: build and use target/debug/dcfs (opt-level 2))")
    p.add_argument("--quick", action="store_true",
                   help="plain INT8 tensor- and channel-wise only; assert mean cosine > 0.99")
    p.add_argument("--min-cos-channel", type=float, default=0.99,
                   help="--quick: least mean cosine for channel-wise INT8 (default 0.99)")
    p.add_argument("--min-cos-tensor", type=float, default=0.95,
                   help="--quick: least mean cosine for tensor-wise INT8 (default 0.95; see docs/ANALYSIS.md "
                        "for why tensor-wise INT8 stays below 0.99 on MiniLM)")
    p.add_argument("--keep", help="keep work files in this directory instead of a temp dir")
    return p.parse_args()


def dcfs_binary(arg):
    if arg:
        return arg
    subprocess.run(["cargo", "build", "-q", "--bin", "dcfs"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "debug", "dcfs")


def sentences():
    with open(os.path.join(ROOT, "scripts", "dc_sentences.txt")) as f:
        s = [line.strip() for line in f if line.strip()]
    assert len(s) >= 100, f"need >= 100 evaluation sentences, have {len(s)}"
    return s


def dequantize(qdir, out):
    """Writes an F32 model equivalent to the quantized one into `out`."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    t = load_file(os.path.join(qdir, "model.safetensors"))
    deq = {}
    for name, v in t.items():
        if name.endswith("_scale") or name.endswith(".smooth_scale"):
            continue
        if v.dtype == np.int8:
            w = v.astype(np.float32) * t[name + "_scale"].astype(np.float32)
            smooth = name.removesuffix(".weight") + ".smooth_scale"
            if smooth in t:
                w = w / t[smooth][None, :]
            deq[name] = w.astype(np.float32)
        else:
            deq[name] = v
    shutil.copytree(qdir, out, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file(deq, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    # The dequantized copy is plain F32: drop the quantization_config so that
    # transformers does not look for a compressed-tensors loader.
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2)


def embed(model_dir, sents):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(model_dir, device="cpu", local_files_only=True)
    return m.encode(sents, batch_size=32, convert_to_numpy=True, normalize_embeddings=True)


def cosines(a, b):
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def packed_ratios(dcfs, qdir, work):
    """(model.safetensors ratio, INT8 tensors ratio, INT8 packed bytes) after `dcfs pack`."""
    pdir = os.path.join(work, "packed")
    shutil.rmtree(pdir, ignore_errors=True)
    subprocess.run([dcfs, "pack", qdir, pdir, "--json"], check=True, stdout=subprocess.DEVNULL)
    r = json.loads(subprocess.run([dcfs, "inspect", pdir, "--json"], check=True,
                                  capture_output=True, text=True).stdout)
    shutil.rmtree(pdir)
    f = next(f for f in r["files"] if f["path"].endswith("model.safetensors.dcz"))
    i8 = [t for t in f["tensors"] if t["dtype"] == "I8"]
    b = sum(t["bytes"] for t in i8)
    p = sum(t["packed"] for t in i8)
    return f["size"] / f["packed"], b / p, p


def main():
    a = parse_args()
    t0 = time.time()
    import numpy as np

    dcfs = dcfs_binary(a.dcfs)
    sents = sentences()
    work = a.keep or tempfile.mkdtemp(prefix="dc-accuracy-")
    os.makedirs(work, exist_ok=True)
    try:
        ref = embed(a.model, sents)
        if a.quick:
            settings = [("tensor", None, 0.0), ("channel", None, 0.0)]
        else:
            settings = list(itertools.product(["tensor", "channel"], [None, 0.5], [0.0, 0.1, 0.3]))
        stats = None
        if any(al is not None or p > 0 for _, al, p in settings):
            from calibrate import CALIBRATION_TEXT, calibrate
            from safetensors.torch import save_file

            stats = os.path.join(work, "act_stats.safetensors")
            save_file(calibrate(a.model, CALIBRATION_TEXT), stats)
        rows = []
        plain = {}
        for gran, alpha, prune in settings:
            tag = f"{gran}-a{alpha}-p{prune}"
            qdir, ddir = os.path.join(work, "q-" + tag), os.path.join(work, "d-" + tag)
            for d in (qdir, ddir):
                shutil.rmtree(d, ignore_errors=True)
            cmd = [dcfs, "quantize", a.model, qdir, "--granularity", gran]
            if alpha is not None:
                cmd += ["--smooth-alpha", str(alpha)]
            if prune > 0:
                cmd += ["--prune-ratio", str(prune)]
            if stats and (alpha is not None or prune > 0):
                cmd += ["--act-stats", stats]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            dequantize(qdir, ddir)
            c = cosines(ref, embed(ddir, sents))
            row = {"granularity": gran, "alpha": alpha, "prune": prune,
                   "mean": float(c.mean()), "p5": float(np.percentile(c, 5)), "min": float(c.min())}
            if not a.quick:
                row["file_ratio"], row["int8_ratio"], row["int8_packed"] = packed_ratios(dcfs, qdir, work)
                if alpha is None and prune == 0:
                    plain[gran] = row["int8_packed"]
            rows.append(row)
            if not a.keep:
                shutil.rmtree(qdir)
                shutil.rmtree(ddir)
            print(f"  {tag}: mean cosine {row['mean']:.5f}", file=sys.stderr)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"all-MiniLM-L6-v2, {len(sents)} sentences; cosine vs the F32 model's embeddings\n")
    if a.quick:
        print("| granularity | mean cos | p5 cos | min cos |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['granularity']} | {r['mean']:.5f} | {r['p5']:.5f} | {r['min']:.5f} |")
    else:
        print("| granularity | alpha | prune | mean cos | p5 cos | min cos | model.safetensors ratio "
              "| INT8 tensors ratio | INT8 packed vs plain INT8 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            gain = plain[r["granularity"]] / r["int8_packed"]
            al = "none" if r["alpha"] is None else f"{r['alpha']}"
            print(f"| {r['granularity']} | {al} | {r['prune']} | {r['mean']:.5f} | {r['p5']:.5f} "
                  f"| {r['min']:.5f} | {r['file_ratio']:.3f} | {r['int8_ratio']:.3f} | {gain:.3f}x |")
    print(f"\n({time.time() - t0:.0f}s)")
    if a.quick:
        least = {"tensor": a.min_cos_tensor, "channel": a.min_cos_channel}
        bad = [r for r in rows if not r["mean"] > least[r["granularity"]]]
        for r in bad:
            print(f"FAIL: {r['granularity']}-wise INT8 mean cosine {r['mean']:.5f} <= {least[r['granularity']]}",
                  file=sys.stderr)
        if bad:
            sys.exit(1)
        print(f"ok: plain INT8 mean cosine > {a.min_cos_tensor} tensor-wise, > {a.min_cos_channel} channel-wise")


if __name__ == "__main__":
    main()

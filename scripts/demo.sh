#!/usr/bin/env bash
# The main job, end to end on real models: fetch them (scripts/fetch-models.sh), build dcfs,
# pack them, mount the pack, load every safetensors model through the mount with the stock
# `safetensors` loader (numpy) and the GGUF by mmap, prove the bytes equal the plain files,
# and print each file's ratio and load time side by side with the plain files.
#
# Cold loads (page cache dropped, fresh mount) need root; without root the times are warm
# and the table says so. Mounting needs root and /dev/fuse (or fusermount3 for a user).
# Usage: scripts/demo.sh [WORKDIR]   (default: a temp dir, removed at the end)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
die() { echo "demo: error: $*" >&2; exit 2; }

scripts/fetch-models.sh >/dev/null || die "fetching the models failed"
echo "== building dcfs (release)"
cargo build --release --quiet || die "cargo build failed"
DCFS="$ROOT/target/release/dcfs"
PY="${DCFS_VENV:-$ROOT/.venv}/bin/python"
"$PY" -c 'import safetensors' 2>/dev/null || "$PY" -m pip install -q safetensors || die "pip install safetensors failed"

KEEP="${1:-}"
WORK="${KEEP:-$(mktemp -d "${TMPDIR:-/tmp}/dcfs-demo.XXXXXX")}"
trap 'cleanup; [[ -n "$KEEP" ]] || rm -rf "$WORK"' EXIT
MNT="$WORK/mnt"
PACKED="$WORK/models.dcfs"
mkdir -p "$MNT"
mounted() { awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; }
cleanup() { if mounted "$MNT"; then "$DCFS" umount "$MNT" 2>/dev/null || "$DCFS" umount -l "$MNT" || true; fi; }

echo "== dcfs pack models -> $PACKED"
rm -rf "$PACKED"
"$DCFS" pack models "$PACKED" | tail -n 1
echo "== dcfs verify"
"$DCFS" verify "$PACKED" >/dev/null && echo "every chunk and every file digest verified"
MNT="$(cd "$MNT" && pwd -P)"
"$DCFS" mount "$PACKED" "$MNT"
echo "== loading through the mount at $MNT and from the plain files"

"$PY" - "$ROOT/models" "$MNT" "$PACKED" "$DCFS" <<'EOF'
import hashlib, mmap, os, subprocess, sys, time
from pathlib import Path
from safetensors.numpy import load_file

plain, mnt, packed, dcfs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
cold = os.geteuid() == 0 and os.access("/proc/sys/vm/drop_caches", os.W_OK)

def drop():
    if cold:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")

def remount():
    # A fresh daemon: its chunk cache is empty, like after a reboot.
    subprocess.run([dcfs, "umount", str(mnt)], check=True)
    for _ in range(200):
        if not any(l.split()[4] == str(mnt) for l in open("/proc/self/mountinfo")):
            break
        time.sleep(0.02)
    subprocess.run([dcfs, "mount", str(packed), str(mnt)], check=True)

def load_st(p):
    t = load_file(str(p))
    h = hashlib.sha256()
    for k in sorted(t):
        h.update(k.encode()); h.update(t[k].tobytes())
    return h.hexdigest()

def load_mmap(p):
    # What llama.cpp does with a GGUF: map the file and touch every page.
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        return hashlib.sha256(m).hexdigest()

def numpy_can_load(p):
    import json, struct
    with open(p, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    return all(v["dtype"] not in ("BF16", "F8_E4M3", "F8_E5M2") for k, v in hdr.items() if k != "__metadata__")

rows = []
for p in sorted(plain.rglob("*")):
    if p.suffix not in (".safetensors", ".gguf"):
        continue
    rel = p.relative_to(plain)
    if p.suffix == ".safetensors" and numpy_can_load(p):
        load, how = load_st, "safetensors.numpy"
    else:
        # numpy has no BF16/F8 dtype: those files are mapped and read whole instead.
        load, how = load_mmap, "mmap" if p.suffix == ".gguf" else "mmap (no numpy BF16/F8)"
    times = {}
    for src in ("plain", "mount"):
        if src == "mount" and cold:
            remount()
        drop()
        t0 = time.perf_counter()
        digest = load((plain if src == "plain" else mnt) / rel)
        times[src] = (time.perf_counter() - t0, digest)
    if times["plain"][1] != times["mount"][1]:
        sys.exit(f"demo: MISMATCH: {rel} loads differently through the mount")
    size = p.stat().st_size
    packed_size = (packed / rel).with_name(rel.name + ".dcz").stat().st_size
    rows.append((str(rel), how, size, packed_size, times["plain"][0], times["mount"][0]))

kind = "cold (page cache dropped, fresh mount)" if cold else "warm (not root: caches not dropped)"
print(f"\nloads with the stock loaders, {kind}; outputs identical (sha256 of every tensor / every byte)")
print(f"{'file':<46} {'loader':<24} {'original':>10} {'packed':>10} {'ratio':>6} {'plain s':>8} {'mount s':>8} {'mount/plain':>11}")
for rel, how, size, ps, tp, tm in rows:
    print(f"{rel:<46} {how:<24} {size/1e6:>8.1f}MB {ps/1e6:>8.1f}MB {size/ps:>6.3f} {tp:>8.3f} {tm:>8.3f} {tm/tp:>10.2f}x")
tot, totp = sum(r[2] for r in rows), sum(r[3] for r in rows)
tp, tm = sum(r[4] for r in rows), sum(r[5] for r in rows)
print(f"{'total':<46} {'':<24} {tot/1e6:>8.1f}MB {totp/1e6:>8.1f}MB {tot/totp:>6.3f} {tp:>8.3f} {tm:>8.3f} {tm/tp:>10.2f}x")
print("(load times on fast local storage; on slow storage the mount reads ratio-times fewer bytes: "
      "scripts/bench.sh measures that at equal storage speed)")
EOF
"$DCFS" stats "$MNT" | sed 's/^/  /'
cleanup
echo "== done"

#!/usr/bin/env bash
# Reproduces every figure of docs/BENCHMARKS.md in one run (not part of CI's pass/fail):
#   codecs   dcfs bench codecs (+ ZipNN in the venv) per model, dtype and tensor class
#   mount    warm/cold sequential read() and mmap touch, random 4 KiB mmap latency:
#            dcfs mount vs `--codec raw` mount vs the unpacked files (page cache)
#   load     cold load at equal storage speed: ext4 image on a loop device, reads throttled
#            with cgroup v1 blkio (50, 200, 1000 MB/s, unthrottled): unpacked vs dcfs vs
#            dcfs raw vs squashfuse; cat, mmap touch, safetensors load_file, llama.cpp load;
#            and for safetensors, dcfs.torch.load_file straight from the pack (no mount)
#   fraction load time vs --compress-fraction, and the pick of --compress-fraction auto
#   scale    synthetic BF16 models of 0.1-4 GB: pack/verify/mounted cat time, peak RSS
#   ceiling  (opt-in) serving with no storage cost: page cache vs cold/warm mount, raw mount,
#            FUSE alone, verify, 1 vs 2 decode threads, CPU per pass; DCFS_BENCH_BEFORE=BIN
#            adds a before/after; DCFS_BENCH_CEILING_SYNTH_MB=N uses an LLM-shaped model
#   remote   (opt-in) packs on object storage, in a private network namespace with the
#            loopback throttled by tc tbf (DCFS_BENCH_RATES Mbit, default "100 400 1000 0",
#            0 = no limit): an anonymous s3s-fs serves the pushed pack and the plain files;
#            a parallel download (8 MiB ranged GETs, 8 in flight) vs a cold `dcfs mount
#            s3://`, with an empty --cache-dir, a warm remount on that cache, a local-pack
#            mount, and rclone / s3fs FUSE mounts of the plain files (scripts/bench_remote.*).
#            Env: DCFS_BENCH_REMOTE_MODELS, DCFS_BENCH_REMOTE_CONTENDERS,
#            DCFS_BENCH_REMOTE_WORKLOADS ("read st"), DCFS_BENCH_QUICKACK (1: loopback ACKs at
#            once, to show the s3s-fs Nagle stalls; see bench_remote.sh), S3S_FS
# Results: docs/bench/*.csv|json and docs/img/*.png (or --out DIR, DIR/img), tables in
# docs/bench/tables.md (scripts/bench_plots.py redraws plots and tables from the results).
#
# Usage: scripts/bench.sh [--quick] [--out DIR] [--only SECTION[,SECTION..]] [--runs N]
# Needs root (drop_caches, loop devices, cgroups, FUSE). Env: DCFS_BENCH_WORK (scratch,
# default /var/tmp/dcfs-bench), DCFS_VENV (default <repo>/.venv), DCFS_BENCH_NOBUILD=1 (use
# the existing target/release/dcfs), DCFS_BENCH_WORKLOADS (load workloads, default
# "read mmap safetensors llama llama-mmap"; --quick runs read only), DCFS_BENCH_LOOP_RA_KB
# (readahead of the loop device under the load section; default: the kernel's),
# DCFS_BENCH_CONTENDERS (load contenders, default "unpacked auto raw squashfs pylib"; pylib
# is the dcfs Python package reading the pack, and runs the safetensors workload only).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/docs/bench"
IMG="$ROOT/docs/img"
WORK="${DCFS_BENCH_WORK:-/var/tmp/dcfs-bench}"
VENV="${DCFS_VENV:-$ROOT/.venv}"
QUICK=0
RUNS=3
ONLY="codecs,mount,load,fraction,scale"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1; RUNS=1 ;;
    --out) OUT="$2"; IMG="$2/img"; shift ;;
    --only) ONLY="$2"; shift ;;
    --runs) RUNS="$2"; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }
log() { echo "[bench $(date +%T)] $*" >&2; }
[[ $EUID -eq 0 ]] || { echo "bench: needs root (drop_caches, loop devices, cgroups)" >&2; exit 1; }

mkdir -p "$OUT" "$WORK"
# Tables newer than this were written by this run (dated a second back: timestamps are coarse).
STARTED="$WORK/.started"; touch -d "@$(( $(date +%s) - 1 ))" "$STARTED"
DCFS="$ROOT/target/release/dcfs"
PY="$VENV/bin/python"
MNT="$WORK/mnt"
LO="$WORK/lo"
CG=""
LOOP=""
mkdir -p "$MNT" "$LO"

cleanup() {
  set +e
  mountpoint -q "$MNT" && umount "$MNT"
  mountpoint -q "$LO" && umount "$LO"
  [[ -n "$LOOP" ]] && losetup -d "$LOOP"
  if [[ -n "$CG" && -d "$CG" ]]; then
    while read -r p; do echo "$p" > /sys/fs/cgroup/blkio/cgroup.procs; done < "$CG/cgroup.procs"
    rmdir "$CG"
  fi
}
trap cleanup EXIT
trap 'echo "bench: error: line $LINENO: \"$BASH_COMMAND\" exited $?" >&2' ERR
trap 'exit 130' INT TERM

# --- build, models, venv -----------------------------------------------------
if [[ -z "${DCFS_BENCH_NOBUILD:-}" ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release -q)
fi
log "fetch models"
"$ROOT/scripts/fetch-models.sh" >/dev/null
"$PY" -c 'import safetensors, numpy, zipnn, matplotlib' 2>/dev/null \
  || "$PY" -m pip install -q safetensors numpy zipnn matplotlib
M="$ROOT/models"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(nproc) cores"
  echo "ram: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet || echo '+dirty')"
  echo "zipnn: $("$PY" -c 'from importlib.metadata import version; print(version("zipnn"))')"
  echo "quick: $QUICK runs: $RUNS"
} > "$OUT/machine.txt"

# Runs "$@" inside the blkio cgroup (children, e.g. a daemonised FUSE server, stay there).
incg() { bash -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$CG" "$@"; }
j() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
mount_dcfs() { "$DCFS" mount "$1" "$MNT"; }
umnt() { umount "$MNT"; sleep 0.2; }

# --- codecs ------------------------------------------------------------------
if want codecs; then
  log "codec table"
  if [[ $QUICK -eq 1 ]]; then
    set -- "$M/minilm-bf16" "$M/minilm-int8-tensor"
    "$DCFS" bench codecs "$@" --json --no-zstd19 --reps 1 > "$OUT/codecs.json"
  else
    set -- "$M"/minilm-f32 "$M"/minilm-bf16 "$M"/minilm-f16 "$M"/minilm-int8-tensor "$M"/minilm-int8-channel \
      "$M"/minilm-fp8 "$M"/smollm2-q4_1
    "$DCFS" bench codecs "$@" --json > "$OUT/codecs.json"
  fi
  log "zipnn"
  files=()
  for d in "$@"; do for f in "$d"/*.safetensors "$d"/*.gguf; do [[ -f "$f" ]] && files+=("$f"); done; done
  "$PY" -W ignore "$ROOT/scripts/bench_zipnn.py" "${files[@]}" > "$OUT/zipnn.json" 2> "$WORK/zipnn.err" \
    || { cat "$WORK/zipnn.err" >&2; false; }
  grep WARNING "$WORK/zipnn.err" >&2 || true
  set --
fi

# --- packs on the normal disk (mount section) --------------------------------
MODELS=(minilm-bf16 minilm-int8-tensor smollm2-q4_1)
[[ $QUICK -eq 1 ]] && MODELS=(minilm-bf16)
PK="$WORK/packs"
pack() { # SRC DST [args..]: packs unless DST is already a finished pack of the same args
  local src="$1" dst="$2"; shift 2
  local stamp="$dst.args"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$* $(stat -c %Y "$DCFS")" && -f "$dst/.dcfs-pack.json" ]]; then return; fi
  rm -rf "$dst"
  "$DCFS" pack "$src" "$dst" "$@" --json > "$dst.pack.json"
  echo "$* $(stat -c %Y "$DCFS")" > "$stamp"
}

if want mount; then
  mkdir -p "$PK"
  CSV="$OUT/mount.csv"
  echo "model,contender,workload,state,run,seconds,mb_s" > "$CSV"
  RCSV="$OUT/random.csv"
  echo "model,contender,state,run,p50_us,p99_us,mean_us" > "$RCSV"
  for m in "${MODELS[@]}"; do
    pack "$M/$m" "$PK/$m.auto"
    pack "$M/$m" "$PK/$m.raw" --codec raw
    wfile="$(cd "$M/$m" && find . -maxdepth 1 \( -name '*.safetensors' -o -name '*.gguf' \) | sort | head -1)"
    for c in unpacked dcfs raw; do
      src="$M/$m"
      [[ $c == dcfs ]] && src="$PK/$m.auto"
      [[ $c == raw ]] && src="$PK/$m.raw"
      target="$M/$m"
      if [[ $c != unpacked ]]; then mount_dcfs "$src"; target="$MNT"; fi
      log "mount: $m $c warm"
      "$DCFS" bench read "$target" --runs 1 >/dev/null   # warm every cache
      for w in read mmap; do
        flag=""; [[ $w == mmap ]] && flag="--mmap"
        "$DCFS" bench read "$target" $flag --runs $((RUNS + 2)) --json \
          | j "'\n'.join(f'$m,$c,$w,warm,{i},{r[\"seconds\"]},{r[\"mb_per_s\"]}' for i,r in enumerate(d['runs']))" >> "$CSV"
      done
      "$DCFS" bench random "$target/$wfile" --mmap --count 3000 --json \
        | j "f'$m,$c,warm,0,{d[\"p50_us\"]},{d[\"p99_us\"]},{d[\"mean_us\"]}'" >> "$RCSV"
      [[ $c != unpacked ]] && umnt
      log "mount: $m $c cold"
      for r in $(seq 1 "$RUNS"); do
        for w in read mmap random; do
          [[ $c != unpacked ]] && mount_dcfs "$src"
          if [[ $w == random ]]; then
            "$DCFS" bench random "$target/$wfile" --mmap --count 300 --drop-caches --seed "$r" --json \
              | j "f'$m,$c,cold,$r,{d[\"p50_us\"]},{d[\"p99_us\"]},{d[\"mean_us\"]}'" >> "$RCSV"
          else
            flag=""; [[ $w == mmap ]] && flag="--mmap"
            "$DCFS" bench read "$target" $flag --drop-caches --runs 1 --json \
              | j "f'$m,$c,$w,cold,$r,{d[\"runs\"][0][\"seconds\"]},{d[\"runs\"][0][\"mb_per_s\"]}'" >> "$CSV"
          fi
          [[ $c != unpacked ]] && umnt
        done
      done
    done
  done
fi

# --- throttled storage (load, fraction) --------------------------------------
if want load || want fraction; then
  command -v mksquashfs >/dev/null && command -v squashfuse >/dev/null \
    || apt-get install -y -q squashfs-tools squashfuse >/dev/null
  SET="$WORK/set"
  rm -rf "$SET"; mkdir -p "$SET"
  for m in "${MODELS[@]}"; do cp -a "$M/$m" "$SET/"; done
  setbytes=$(du -sb "$SET" | cut -f1)
  img="$WORK/lo.img"
  rm -f "$img"
  truncate -s $(( (setbytes * 8 + (256 << 20)) / 4096 * 4096 )) "$img"
  mkfs.ext4 -q -F "$img"
  LOOP="$(losetup -f --show "$img")"
  mount "$LOOP" "$LO"
  DEV="$(lsblk -dno MAJ:MIN "$LOOP" | tr -d ' ')"
  # Readahead of the loop device: what the unpacked files get on a fault or read(), and
  # what the FUSE daemons' own reads get. Default: the kernel's (2560 KiB on the dev VM).
  if [[ -n "${DCFS_BENCH_LOOP_RA_KB:-}" ]]; then
    echo "$DCFS_BENCH_LOOP_RA_KB" > "/sys/block/$(basename "$LOOP")/queue/read_ahead_kb"
  fi
  log "loop readahead: $(cat "/sys/block/$(basename "$LOOP")/queue/read_ahead_kb") KiB"
  CG="/sys/fs/cgroup/blkio/dcfs-bench-$$"
  mkdir "$CG"
  log "loop $LOOP ($DEV), cgroup $CG"
  cp -a "$SET" "$LO/unpacked"
  "$DCFS" pack "$SET" "$LO/auto" --json > "$OUT/load-pack-auto.json"
  "$DCFS" pack "$SET" "$LO/raw" --codec raw --json > /dev/null
  mksquashfs "$SET" "$LO/sq.img" -comp zstd -Xcompression-level 19 -b 1M -quiet -no-progress >/dev/null
  FRACS=(0 0.2 0.5)
  [[ $QUICK -eq 1 ]] && FRACS=(0)
  for f in "${FRACS[@]}"; do "$DCFS" pack "$SET" "$LO/f$f" --compress-fraction "$f" --json > /dev/null; done
  sync
  {
    echo "what,bytes"
    echo "unpacked,$(du -sb "$LO/unpacked" | cut -f1)"
    for d in auto raw "${FRACS[@]/#/f}"; do echo "dcfs-$d,$(du -sb "$LO/$d" | cut -f1)"; done
    echo "squashfs,$(stat -c %s "$LO/sq.img")"
  } > "$OUT/load-sizes.csv"
  BWS=(50 200 1000 0)
  [[ $QUICK -eq 1 ]] && BWS=(200)
  setbw() { echo "$DEV $(( $1 * 1000000 ))" > "$CG/blkio.throttle.read_bps_device"; }
  # one cold load: contender, workload -> seconds on stdout
  load_once() {
    local c="$1" w="$2" target
    case "$c" in
      unpacked) target="$LO/unpacked" ;;
      pylib) target="$LO/auto" ;;
      squashfs) incg squashfuse "$LO/sq.img" "$MNT"; target="$MNT"
                # same kernel readahead as the dcfs mount, for a like-for-like read pattern
                echo 4096 > "/sys/class/bdi/$(mountpoint -d "$MNT")/read_ahead_kb" ;;
      *) incg "$DCFS" mount "$LO/$c" "$MNT"; target="$MNT" ;;
    esac
    local s
    if [[ $w == safetensors ]]; then
      sync; echo 3 > /proc/sys/vm/drop_caches
      # safetensors.torch (numpy has no bfloat16); torch comes with zipnn in the venv
      s=$(incg "$PY" -c '
import sys, time, glob
from safetensors.torch import load_file
fs = sorted(glob.glob(sys.argv[1] + "/*/*.safetensors"))
if sys.argv[2] == "pylib":
    # the same files read from the pack by the dcfs package: X.safetensors -> X.safetensors.dcz
    from dcfs.torch import load_file
    fs = sorted(f[: -len(".dcz")] for f in glob.glob(sys.argv[1] + "/*/*.safetensors.dcz"))
t = time.perf_counter()
# clone(): materialise every tensor (load_file may hand out lazily mapped storage)
n = sum(a.clone().nbytes for f in fs for a in load_file(f).values())
print(time.perf_counter() - t)' "$target" "$c")
    elif [[ $w == llama || $w == llama-mmap ]]; then
      sync; echo 3 > /proc/sys/vm/drop_caches
      # llama.cpp (xllamacpp) loading the GGUF in a fresh process. "llama": no-mmap load,
      # which read()s every tensor; "llama-mmap": llama.cpp's default mmap load plus one
      # generated token, so every weight page is touched once.
      local g mode=no-mmap n=0
      g="$(find "$target"/ -name '*.gguf' | sort | head -1)"
      [[ $w == llama-mmap ]] && { mode=default; n=1; }
      s=$(incg "$PY" "$ROOT/tests/loaders/llama_worker.py" "$g" "$mode" "$n" "The capital of France is" \
        2>/dev/null | tail -n 1 | j 'd["load_s"] + d.get("generate_s", 0)')
    else
      local flag=""; [[ $w == mmap ]] && flag="--mmap"
      s=$(incg "$DCFS" bench read "$target" $flag --drop-caches --runs 1 --json | j 'd["runs"][0]["seconds"]')
    fi
    [[ $c != unpacked && $c != pylib ]] && umnt
    echo "$s"
  }
  CSV="$OUT/load.csv"
  want load && echo "bw_mb_s,contender,workload,run,seconds" > "$CSV"
  FCSV="$OUT/fraction.csv"
  want fraction && echo "bw_mb_s,fraction,picked,run,seconds" > "$FCSV"
  if want fraction; then
    # The mount's end-to-end rates with no storage cost: containers in the page cache,
    # a fresh mount (empty chunk cache), unthrottled. Fed to --compress-fraction auto.
    setbw 0
    rate() {
      cat "$LO/$1"/* "$LO/$1"/*/* > /dev/null 2>&1 || true
      local v=()
      for _ in 1 2 3; do
        "$DCFS" mount "$LO/$1" "$MNT"
        v+=("$("$DCFS" bench read "$MNT" --runs 1 --json | j 'int(d["runs"][0]["bytes"] / d["runs"][0]["seconds"])')")
        umnt
      done
      printf '%s\n' "${v[@]}" | sort -n | sed -n 2p
    }
    RAW_BPS=$(rate raw)
    CODED_BPS=$(rate auto)
    echo "mount rates (median of 3, bytes/s): raw $RAW_BPS coded $CODED_BPS" > "$OUT/fraction-auto.txt"
  fi
  read -r -a WLS <<< "${DCFS_BENCH_WORKLOADS:-read mmap safetensors llama llama-mmap}"
  [[ $QUICK -eq 1 ]] && WLS=(read)
  if want load && [[ " ${WLS[*]} " == *" llama"* ]]; then
    # the llama.cpp build the loader tests pin (tests/loaders/requirements.txt)
    "$PY" -c 'import xllamacpp' 2>/dev/null \
      || "$PY" -m pip install -q "$(grep -E '^xllamacpp==' "$ROOT/tests/loaders/requirements.txt")"
  fi
  read -r -a CONTENDERS <<< "${DCFS_BENCH_CONTENDERS:-unpacked auto raw squashfs pylib}"
  if want load && [[ " ${WLS[*]} " == *" safetensors "* && " ${CONTENDERS[*]} " == *" pylib "* ]]; then
    # the dcfs package, built as a wheel and installed into the bench venv
    "$ROOT/python/build-wheel.sh" "$PY" >&2
  fi
  for bw in "${BWS[@]}"; do
    setbw "$bw"
    if want load; then
      for w in "${WLS[@]}"; do
        for r in $(seq 1 "$RUNS"); do
          for c in "${CONTENDERS[@]}"; do
            [[ $c == pylib && $w != safetensors ]] && continue
            log "load: ${bw}MB/s $w $c run $r"
            echo "$bw,$c,$w,$r,$(load_once "$c" "$w")" >> "$CSV"
          done
        done
      done
    fi
    if want fraction; then
      # the auto pick for this bandwidth (unthrottled: measured with dcfs bench storage)
      sbw=$((bw * 1000000))
      if [[ $bw == 0 ]]; then
        sbw=$(incg "$DCFS" bench storage "$LO/unpacked" --runs 3 --json | j 'int(d["bytes_per_s"]["median"])')
      fi
      rm -rf "$LO/fauto"
      "$DCFS" pack "$SET" "$LO/fauto" --compress-fraction auto --storage-bw "$sbw" \
        --mount-rates "$RAW_BPS,$CODED_BPS" --json \
        2> "$WORK/auto.err" > /dev/null
      cat "$WORK/auto.err" >> "$OUT/fraction-auto.txt"
      pick=$(sed -n 's/^compress-fraction auto: \([0-9.]*\) .*/\1/p' "$WORK/auto.err" | tail -1)
      echo "bw=$bw storage_bw=$sbw pick=$pick" >> "$OUT/fraction-auto.txt"
      for r in $(seq 1 "$RUNS"); do
        for f in "${FRACS[@]}" 1 auto; do
          d="f$f"; [[ $f == 1 ]] && d=auto; [[ $f == auto ]] && d=fauto
          log "fraction: ${bw}MB/s f=$f run $r"
          fv=$f; picked=0; [[ $f == auto ]] && { fv=$pick; picked=1; }
          echo "$bw,$fv,$picked,$r,$(load_once "$d" read)" >> "$FCSV"
        done
      done
    fi
  done
  echo "$DEV 0" > "$CG/blkio.throttle.read_bps_device"
fi

# --- ceiling (opt-in: --only ceiling) ----------------------------------------------
# The serving ceiling with no storage cost: containers (and the originals) in the page
# cache, a fresh mount each run (empty chunk cache), one sequential `dcfs bench read` of
# every file (cold), then the same again on that mount (warm). Paths: the originals from
# the page cache, the default pack and a `--codec raw` pack through the mount, `dcfs
# verify` (MB/s of original bytes), and the mount at 1 and 2 decode threads. The "floor"
# row is FUSE alone: a mount whose chunk cache already holds every decoded chunk (filled by
# reading each file backwards, so nothing is dropped behind a sequential reader), read
# after `drop_caches`: no decode, no container read, only requests, replies and the
# reader's copy. No FUSE design in this stack serves faster than that. With
# DCFS_BENCH_BEFORE=BINARY, the mount rows also run with that binary, interleaved, for a
# before/after table. Env: DCFS_BENCH_CEILING_MODELS (default "minilm-bf16 minilm-f16"), or
# DCFS_BENCH_CEILING_SYNTH_MB=N for one synthetic LLM-shaped BF16 model of N MB instead
# (scripts/bench_synth.py: tensors of 2-16 MiB, where MiniLM's are mostly under 2 MiB).
if want ceiling; then
  read -r -a CMODELS <<< "${DCFS_BENCH_CEILING_MODELS:-minilm-bf16 minilm-f16}"
  CSET="$WORK/ceiling-set"
  rm -rf "$CSET"; mkdir -p "$CSET"
  if [[ -n "${DCFS_BENCH_CEILING_SYNTH_MB:-}" ]]; then
    CMODELS=("synth-${DCFS_BENCH_CEILING_SYNTH_MB}mb")
    mkdir -p "$CSET/${CMODELS[0]}"
    "$PY" "$ROOT/scripts/bench_synth.py" "$M/minilm-bf16/model.safetensors" \
      "$CSET/${CMODELS[0]}/model.safetensors" "${DCFS_BENCH_CEILING_SYNTH_MB}e6" >&2
  else
    for m in "${CMODELS[@]}"; do cp -a "$M/$m" "$CSET/"; done
  fi
  mkdir -p "$PK"
  # packed afresh every time: pack()'s reuse check cannot see a changed model list
  rm -rf "$PK/ceiling.auto" "$PK/ceiling.raw"
  pack "$CSET" "$PK/ceiling.auto"
  pack "$CSET" "$PK/ceiling.raw" --codec raw
  SETBYTES=$(du -sb "$CSET" | cut -f1)
  # room for every decoded chunk of the set in the floor row's chunk cache
  FLOOR_CACHE="$(( SETBYTES * 2 / 1048576 + 64 ))M"
  fill_backwards() {
    "$PY" - "$1" <<'PYEOF'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        off = (os.fstat(fd).st_size - 1) // (1 << 20) * (1 << 20)
        while off >= 0:
            os.pread(fd, 1 << 20, off)
            off -= 1 << 20
        os.close(fd)
PYEOF
  }
  CCSV="$OUT/ceiling.csv"
  # cpu_s: busy time of the whole machine (all cores, /proc/stat) over the pass
  # mb: the set's size, MB of original bytes per pass
  echo "binary,path,threads,state,run,mb_s,cpu_s,mb" > "$CCSV"
  SETMB=$("$PY" -c "print(round($SETBYTES / 1e6, 2))")
  busy_s() { awk '/^cpu / {printf "%.2f\n", ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat; }
  # one `dcfs bench read` of DIR: "MB/s,cpu seconds"
  timed_read() {
    local b0 v b1
    b0=$(busy_s); v=$("$DCFS" bench read "$1" --runs 1 --json | mbs); b1=$(busy_s)
    echo "$v,$("$PY" -c "print(round($b1 - $b0, 2))"),$SETMB"
  }
  BINS=(after)
  [[ -n "${DCFS_BENCH_BEFORE:-}" ]] && BINS=(before after)
  bin_of() { if [[ $1 == before ]]; then echo "$DCFS_BENCH_BEFORE"; else echo "$DCFS"; fi; }
  mbs() { j 'd["runs"][0]["mb_per_s"]'; }
  warm_files() { find "$1" -type f -exec cat {} + > /dev/null; }
  for r in $(seq 1 "$RUNS"); do
    warm_files "$CSET"
    echo "page-cache,originals,0,warm,$r,$(timed_read "$CSET")" >> "$CCSV"
    for b in "${BINS[@]}"; do
      bin="$(bin_of "$b")"
      for p in auto raw; do
        for th in 2 1; do
          [[ $p == raw && $th == 1 ]] && continue
          warm_files "$PK/ceiling.$p"
          log "ceiling: $b $p threads=$th run $r"
          "$bin" mount "$PK/ceiling.$p" "$MNT" --threads "$th"
          echo "$b,$p,$th,cold,$r,$(timed_read "$MNT")" >> "$CCSV"
          [[ $th == 2 ]] && echo "$b,$p,$th,warm,$r,$(timed_read "$MNT")" >> "$CCSV"
          umnt
        done
      done
      log "ceiling: $b floor run $r"
      "$bin" mount "$PK/ceiling.auto" "$MNT" --cache-size "$FLOOR_CACHE"
      fill_backwards "$MNT"
      sync; echo 3 > /proc/sys/vm/drop_caches
      echo "$b,floor,2,cold,$r,$(timed_read "$MNT")" >> "$CCSV"
      umnt
      warm_files "$PK/ceiling.auto"
      b0=$(busy_s); t0=$(date +%s.%N)
      "$bin" verify "$PK/ceiling.auto" -j 2 > /dev/null
      t1=$(date +%s.%N); b1=$(busy_s)
      echo "$b,verify,2,cold,$r,$("$PY" -c "print($SETBYTES / 1e6 / ($t1 - $t0), round($b1 - $b0, 2), $SETMB, sep=',')")" >> "$CCSV"
    done
  done
  # the decoder alone, for the same files: fastest of repeated passes over warm buffers
  for m in "${CMODELS[@]}"; do
    f="$(find "$CSET/$m" -maxdepth 1 -name '*.safetensors' | head -1)"
    "$DCFS" bench codecs "$f" --no-zstd19 --json > "$OUT/ceiling-codecs-$m.json" 2>/dev/null || true
  done
fi

# --- remote (opt-in: --only remote) -------------------------------------------------
# Everything that touches the network runs in scripts/bench_remote.sh under `unshare -n`:
# its own loopback, throttled there, gone when it exits. s3s-fs 0.14.1 is found as $S3S_FS,
# in .ci/run's cache ($DCFS_S3S_ROOT, default ~/.cache/dcfs/s3s-fs) or on PATH.
if want remote; then
  S3S="${S3S_FS:-${DCFS_S3S_ROOT:-$HOME/.cache/dcfs/s3s-fs}/bin/s3s-fs}"
  [[ -x "$S3S" ]] || S3S="$(command -v s3s-fs || true)"
  [[ -x "$S3S" ]] || { echo "bench: remote needs s3s-fs: cargo install s3s-fs@0.14.1 --features binary --locked" >&2; exit 1; }
  for t in rclone s3fs; do
    command -v "$t" >/dev/null || apt-get install -y -q "$t" >/dev/null 2>&1 || log "remote: could not install $t"
  done
  read -r -a RMODELS <<< "${DCFS_BENCH_REMOTE_MODELS:-${MODELS[*]}}"
  RSET="$WORK/remote-set"
  rm -rf "$RSET"; mkdir -p "$RSET"
  for m in "${RMODELS[@]}"; do cp -a "$M/$m" "$RSET/"; done
  mkdir -p "$PK"
  # packed afresh every time: pack()'s reuse check cannot see a changed model list
  rm -rf "$PK/remote.auto"
  "$DCFS" pack "$RSET" "$PK/remote.auto" --json > "$OUT/remote-pack.json"
  export DCFS PY ROOT WORK MNT RUNS RSET S3S
  export RPK="$PK/remote.auto" CSV="$OUT/remote.csv" RATES="${DCFS_BENCH_RATES:-100 400 1000 0}"
  export RCONTENDERS="${DCFS_BENCH_REMOTE_CONTENDERS:-download cold cold-cache warm local rclone s3fs}"
  export RQUICKACK="${DCFS_BENCH_QUICKACK:-}" RWORKLOADS="${DCFS_BENCH_REMOTE_WORKLOADS:-}"
  [[ $QUICK -eq 1 ]] && RATES="${DCFS_BENCH_RATES:-400}"
  log "remote: rates ${RATES} Mbit, models ${RMODELS[*]}"
  unshare -n bash "$ROOT/scripts/bench_remote.sh"
fi

# --- scale -------------------------------------------------------------------
if want scale; then
  SIZES=(100 500 1000 2000 4000)
  [[ $QUICK -eq 1 ]] && SIZES=(20)
  SD="$WORK/synth"
  mkdir -p "$SD"
  CSV="$OUT/scale.csv"
  echo "size_mb,bytes,packed,pack_s,pack_rss_kb,verify_s,verify_rss_kb,cat_cold_s,mount_rss_kb,cache_bytes" > "$CSV"
  CACHE=256M
  for s in "${SIZES[@]}"; do
    src="$SD/m$s"
    if [[ ! -f "$src/model.safetensors" ]]; then
      log "scale: generating ${s} MB"
      mkdir -p "$src"
      "$PY" "$ROOT/scripts/bench_synth.py" "$M/minilm-bf16/model.safetensors" "$src/model.safetensors" "${s}e6"
    fi
    rm -rf "$SD/p$s"
    sync; echo 3 > /proc/sys/vm/drop_caches
    log "scale: pack ${s} MB"
    /usr/bin/time -f '%e %M' -o "$WORK/t" "$DCFS" pack "$src" "$SD/p$s" --json > /dev/null
    read -r pack_s pack_rss < "$WORK/t"
    sync; echo 3 > /proc/sys/vm/drop_caches
    /usr/bin/time -f '%e %M' -o "$WORK/t" "$DCFS" verify "$SD/p$s" --json > /dev/null
    read -r ver_s ver_rss < "$WORK/t"
    "$DCFS" mount -f "$SD/p$s" "$MNT" --cache-size "$CACHE" 2>/dev/null &
    mpid=$!
    for _ in $(seq 50); do mountpoint -q "$MNT" && break; sleep 0.1; done
    cat_s=$("$DCFS" bench read "$MNT" --drop-caches --runs 1 --json | j 'd["runs"][0]["seconds"]')
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$mpid/status")
    umnt; wait "$mpid" || true
    echo "$s,$(stat -c %s "$src/model.safetensors"),$(du -sb "$SD/p$s" | cut -f1),$pack_s,$pack_rss,$ver_s,$ver_rss,$cat_s,$rss,$CACHE" >> "$CSV"
    rm -rf "$SD/p$s"
  done
fi

# Every table this run wrote must hold a data row, not only its header: a section whose
# loop measured nothing (a mount that never came up, a filter that matched no model) fails
# here instead of passing as an empty CSV.
empty=0
for f in "$OUT"/*.csv; do
  [[ -e "$f" ]] || continue
  if [[ "$f" -nt "$STARTED" ]] && [[ $(grep -c . "$f") -lt 2 ]]; then
    log "no data rows in $f"
    empty=1
  fi
done
[[ $empty -eq 0 ]] || { log "FAILED: a table has no rows"; exit 1; }

log "plots"
"$PY" "$ROOT/scripts/bench_plots.py" "$OUT" "$IMG" || log "plotting failed (results are in $OUT)"
log "done: results in $OUT"

#!/usr/bin/env bash
# The `remote` section of scripts/bench.sh, run by it inside a private network namespace
# (`unshare -n`): the host's loopback is never throttled, and the namespace (with its
# qdisc) ends with this script. Starts an anonymous s3s-fs on the namespace's loopback,
# uploads the packed set (`dcfs push`) and the plain files (PUT), then at each rate
# (`tc tbf` on lo; 0 = no limit) times every contender on every workload, each after
# drop_caches with the server's objects read back into the page cache (so the link is
# the only cold thing): see docs/BENCHMARKS.md for the contenders and columns.
# Env (set by bench.sh): DCFS PY ROOT WORK MNT CSV RUNS RSET RPK S3S
#   RATES ("100 400 1000 0"), RCONTENDERS, RWORKLOADS ("read st"), RQUICKACK.
set -euo pipefail
shopt -s inherit_errexit

PORT=9000
EP="http://127.0.0.1:$PORT"
SRV="$WORK/remote-s3"
CACHE="$WORK/remote-cache"
DL="$WORK/remote-dl"
LOGD="$WORK/remote-logs"
HZ=$(getconf CLK_TCK)
SPID=""
MPID=""

cleanup() {
  set +e
  mountpoint -q "$MNT" && umount "$MNT"
  [[ -n "$MPID" ]] && { kill "$MPID" 2>/dev/null; wait "$MPID" 2>/dev/null; }
  [[ -n "$SPID" ]] && { kill "$SPID" 2>/dev/null; wait "$SPID" 2>/dev/null; }
  tc qdisc del dev lo root 2>/dev/null
}
trap cleanup EXIT
trap 'echo "bench_remote: error: line $LINENO: \"$BASH_COMMAND\" exited $?" >&2' ERR
trap 'exit 130' INT TERM
log() { echo "[bench remote $(date +%T)] $*" >&2; }
j() { "$PY" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

ip link set lo up
# s3s-fs leaves Nagle on, so on a kept-alive connection a response whose body fits in one
# segment waits for the client's delayed ACK of its headers: 40-48 ms per small GET. With
# RQUICKACK=1 the loopback routes ACK at once (for every contender alike), which shows how
# much of a run that server quirk is; the default keeps the stock behaviour.
if [[ -n ${RQUICKACK:-} ]]; then
  for dst in 127.0.0.0/8 127.0.0.1; do
    ip route change table local local "$dst" dev lo proto kernel scope host src 127.0.0.1 quickack 1
  done
  log "loopback routes with quickack 1"
fi
rm -rf "$SRV" "$DL" "$LOGD"
mkdir -p "$SRV/pub" "$LOGD" "$MNT"
"$S3S" --host 127.0.0.1 --port "$PORT" "$SRV" > "$LOGD/s3s-fs.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done

# the server is anonymous: no keys anywhere, so no client pays for signing
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT
export AWS_ENDPOINT_URL="$EP" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
log "push the pack, PUT the plain files"
"$DCFS" push "$RPK" s3://pub/packed --no-sign-request > /dev/null
"$PY" "$ROOT/scripts/bench_remote.py" put "$RSET" "$EP/pub/plain" > /dev/null

# what each workload reads, and its original and packed bytes
(cd "$RSET" && find . -type f -printf '%P\n' | sort) > "$WORK/remote-read.list"
grep '\.safetensors$' "$WORK/remote-read.list" > "$WORK/remote-st.list"
# (a file identical to one packed before it has no container of its own: it counts 0)
sumsz() { local n=0 s; while read -r p; do s=$(stat -c %s "$1/$p$2" 2>/dev/null || echo 0); n=$((n + s)); done < "$3"; echo "$n"; }

ticks() { if [[ -r "/proc/$1/stat" ]]; then awk '{print $14 + $15}' "/proc/$1/stat"; else echo 0; fi; }
secs() { "$PY" -c "print(round($1 / $HZ, 3))"; }
txb() { awk '/^ *lo:/ {sub(/^[^:]*:/, ""); print $9}' /proc/net/dev; }
now() { date +%s.%N; }

# Starts a FUSE daemon in the foreground ("$@"), sets MPID, waits for the mount.
start_mount() {
  "$@" > "$LOGD/mount.log" 2>&1 &
  MPID=$!
  for _ in $(seq 3000); do
    mountpoint -q "$MNT" && return 0
    kill -0 "$MPID" 2>/dev/null || break
    sleep 0.01
  done
  cat "$LOGD/mount.log" >&2
  return 1
}
stop_mount() {
  umount "$MNT"
  wait "$MPID" || true
  MPID=""
}

HAVE_CACHE=0
if "$DCFS" mount --help | grep -q -- '--cache-dir'; then HAVE_CACHE=1; fi
# rclone's S3 remote "rb" from the environment (env execs rclone: $! is rclone itself)
# AWS_CA_BUNDLE (set on some hosts) makes rclone 1.60 refuse its own http transport.
# s3s-fs answers a HEAD of a "directory" key with 500, which rclone and s3fs retry with
# backoff (s3fs: 3 s and up), so both get one retry only, and every mount's tree is listed
# once (`ls -R`) inside its mount time, before the load is timed.
RCLONE=(env -u AWS_CA_BUNDLE RCLONE_CONFIG_RB_TYPE=s3 RCLONE_CONFIG_RB_PROVIDER=Other RCLONE_CONFIG_RB_ENDPOINT="$EP"
  RCLONE_CONFIG_RB_ENV_AUTH=false rclone)

# one cold load: contender, workload -> a CSV row (without rate and run). It runs in a
# command substitution tested by `if`, where bash ignores set -e: every step that can fail
# says so itself (|| return 1).
one() {
  local c="$1" w="$2" list="$WORK/remote-$2.list" out mount_s=0 fetch_s="" dcpu=0 stats="" t0
  # emptied before the clock starts (deleting the last run's entries is not the mount's time)
  [[ $c == cold-cache ]] && { rm -rf "$CACHE"; mkdir -p "$CACHE"; }
  sync; echo 3 > /proc/sys/vm/drop_caches
  find "$SRV" -type f -exec cat {} + > /dev/null
  local net0 scpu0
  net0=$(txb); scpu0=$(ticks "$SPID")
  case "$c" in
    download)
      rm -rf "$DL"; mkdir -p "$DL"
      out=$("$PY" "$ROOT/scripts/bench_remote.py" download "$EP/pub/plain" "$DL" "$list" "$w") || return 1
      fetch_s=$(j 'round(d["fetch_s"], 3)' <<< "$out")
      ;;
    *)
      t0=$(now)
      case "$c" in
        cold) start_mount "$DCFS" mount -f s3://pub/packed "$MNT" --no-sign-request ;;
        cold-cache) start_mount "$DCFS" mount -f s3://pub/packed "$MNT" --no-sign-request --cache-dir "$CACHE" ;;
        warm) start_mount "$DCFS" mount -f s3://pub/packed "$MNT" --no-sign-request --cache-dir "$CACHE" ;;
        local) start_mount "$DCFS" mount -f "$RPK" "$MNT" ;;
        rclone) start_mount "${RCLONE[@]}" mount rb:pub/plain "$MNT" --read-only --low-level-retries 1 ;;
        s3fs) start_mount s3fs pub:/plain "$MNT" -f -o "url=$EP,use_path_request_style,public_bucket=1,ro,retries=1" ;;
      esac || return 1
      ls -R "$MNT" > /dev/null || return 1
      mount_s=$("$PY" -c "print(round($(now) - $t0, 3))")
      out=$("$PY" "$ROOT/scripts/bench_remote.py" "$w" "$MNT" "$list") || return 1
      [[ $c == rclone || $c == s3fs ]] || stats=$("$DCFS" stats "$MNT" --json) || return 1
      dcpu=$(secs "$(ticks "$MPID")")
      stop_mount
      ;;
  esac
  local wire scpu net=",,,"
  wire=$(( $(txb) - net0 ))
  scpu=$(secs "$(( $(ticks "$SPID") - scpu0 ))")
  if [[ -n "$stats" ]]; then
    net=$(j "','.join(str(d.get(k, '')) for k in ('net_gets', 'net_bytes', 'net_retries', 'net_errors'))" <<< "$stats")
  fi
  local load_s ccpu
  load_s=$(j 'round(d["seconds"], 3)' <<< "$out")
  ccpu=$(j 'round(d["cpu_s"], 3)' <<< "$out")
  echo "$c,$w,$mount_s,$fetch_s,$load_s,$("$PY" -c "print(round($mount_s + $load_s, 3))"),$wire,$ccpu,$dcpu,$scpu,$ORIG_B,$PACK_B,$net"
}

read -r -a RATE_L <<< "${RATES:-100 400 1000 0}"
read -r -a CONT_L <<< "${RCONTENDERS:-download cold cold-cache warm local rclone s3fs}"
read -r -a WL_L <<< "${RWORKLOADS:-read st}"
for c in "${CONT_L[@]}"; do
  case "$c" in
    cold-cache|warm) [[ $HAVE_CACHE -eq 1 ]] || log "SKIP $c: this dcfs has no 'mount --cache-dir'" ;;
    rclone|s3fs) command -v "$c" > /dev/null || log "SKIP $c: not installed (apt-get install $c)" ;;
  esac
done
echo "rate_mbit,contender,workload,run,mount_s,fetch_s,load_s,total_s,wire_bytes,client_cpu_s,daemon_cpu_s,server_cpu_s,orig_bytes,packed_bytes,net_gets,net_bytes,net_retries,net_errors" > "$CSV"
for rate in "${RATE_L[@]}"; do
  tc qdisc del dev lo root 2>/dev/null || true
  [[ $rate == 0 ]] || tc qdisc add dev lo root tbf rate "${rate}mbit" burst 1mb latency 100ms
  for r in $(seq 1 "$RUNS"); do
    for w in "${WL_L[@]}"; do
      ORIG_B=$(sumsz "$RSET" "" "$WORK/remote-$w.list")
      PACK_B=$(sumsz "$RPK" ".dcz" "$WORK/remote-$w.list")
      for c in "${CONT_L[@]}"; do
        case "$c" in
          cold-cache|warm) [[ $HAVE_CACHE -eq 1 ]] || continue ;;
          rclone|s3fs) command -v "$c" > /dev/null || continue ;;
        esac
        log "${rate} Mbit run $r $w $c"
        if ! row=$(one "$c" "$w"); then
          log "FAILED: ${rate} Mbit run $r $w $c (no row)"
          mountpoint -q "$MNT" && umount "$MNT"
          continue
        fi
        echo "$rate,${row%%,*},$w,$r,${row#*,*,}" >> "$CSV"
      done
    done
  done
done

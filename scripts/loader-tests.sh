#!/usr/bin/env bash
# Real loaders, unmodified, on a dcfs mount of models/ (issue 5): safetensors (numpy),
# PyTorch + sentence-transformers, llama.cpp (xllamacpp), each compared with the same loader
# reading the unpacked files; load times printed (cold and warm), never asserted. Also the
# dcfs Python package (python/), built as a wheel and installed into the venv, loading
# straight from the pack (tests/loaders/test_python_pkg.py).
#
# Builds dcfs (release), creates/updates the venv ${DCFS_LOADER_VENV:-<repo>/.venv-loaders}
# from tests/loaders/requirements.txt (skipped when it is already installed), packs models/
# into a temp dir, runs pytest over tests/loaders (which mounts it; the trap below unmounts
# whatever is left mounted, on any exit). Needs root and /dev/fuse to mount: without them it
# says SKIP and exits 0, like the Rust mount tests. Extra arguments go to pytest.
#
# The mount-based loader tests run twice: on a mount of the local pack, and on
# `dcfs mount s3://loaders/models MNT` of the same pack pushed (`dcfs push`) to an s3s-fs
# server this script starts on loopback (a free port, fresh keys, its own directory under
# the temp dir; stopped by the trap). s3s-fs is found as $S3S_FS, on PATH, or where .ci/run
# installs it; without it the remote runs are skipped (SKIP), or fail under CI=true.
#
# Env: DCFS_LOADER_VENV  venv path; DCFS_MODELS  models dir (default <repo>/models)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${DCFS_LOADER_VENV:-$ROOT/.venv-loaders}"
REQ="$ROOT/tests/loaders/requirements.txt"
STAMP="$VENV/.dcfs-loader-requirements"
MODELS="${DCFS_MODELS:-$ROOT/models}"
DCFS="$ROOT/target/release/dcfs"
UV_VERSION=0.13.9

die() { echo "loader-tests: error: $*" >&2; exit 1; }

if [[ "$(id -u)" != 0 || ! -e /dev/fuse ]]; then
  echo "SKIP loader tests: mounting needs root and /dev/fuse (uid=$(id -u))"
  exit 0
fi
[[ -d "$MODELS/minilm-f32" ]] || die "$MODELS has no models (run scripts/fetch-models.sh)"

echo "== loader-tests: cargo build --release"
cargo build --release --quiet

# --- venv (cached: installs only when requirements.txt changed or imports fail) ---------
IMPORTS='import pytest, numpy, safetensors.numpy, torch, sentence_transformers, compressed_tensors, xllamacpp'
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v python3 >/dev/null || die "python3 not found"
  echo "== loader-tests: creating venv $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (Debian: apt-get install python3-venv)"
fi
PY="$VENV/bin/python"
if cmp -s "$REQ" "$STAMP" && "$PY" -c "$IMPORTS" 2>/dev/null; then
  echo "== loader-tests: venv $VENV up to date"
else
  echo "== loader-tests: installing tests/loaders/requirements.txt into $VENV (torch from PyPI is ~3 GB with its CUDA libraries)"
  t0=$SECONDS
  # uv (from PyPI) installs these ~3.5x faster than pip: measured 49 s against 178 s into an
  # empty venv, both without a cache, on the 2-core dev machine. pip if uv can't be had.
  if [[ -x "$VENV/bin/uv" ]] || "$PY" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"; then
    "$VENV/bin/uv" pip install -q --python "$PY" -r "$REQ" || die "uv pip install failed"
  else
    echo "loader-tests: uv not installable; using pip"
    "$PY" -m pip install -q --disable-pip-version-check -r "$REQ" || die "pip install failed"
  fi
  "$PY" -c "$IMPORTS" || die "installed packages do not import"
  cp "$REQ" "$STAMP"
  echo "== loader-tests: installed in $((SECONDS - t0))s"
fi

# The oldest compressed-tensors that loads `dcfs quantize` output through the pinned
# transformers (which refuses < 0.15.0), in its own --target dir that test_dc_quantized.py
# puts first on sys.path; the venv keeps the newest (requirements.txt).
CT_OLDEST=0.15.0
CT_OLDEST_DIR="$VENV/ct-oldest-$CT_OLDEST"
if [[ ! -d "$CT_OLDEST_DIR/compressed_tensors" ]]; then
  echo "== loader-tests: compressed-tensors $CT_OLDEST into $CT_OLDEST_DIR"
  if [[ -x "$VENV/bin/uv" ]]; then
    "$VENV/bin/uv" pip install -q --python "$PY" --target "$CT_OLDEST_DIR" --no-deps "compressed-tensors==$CT_OLDEST" \
      || die "installing compressed-tensors $CT_OLDEST failed"
  else
    "$PY" -m pip install -q --disable-pip-version-check --target "$CT_OLDEST_DIR" --no-deps \
      "compressed-tensors==$CT_OLDEST" || die "installing compressed-tensors $CT_OLDEST failed"
  fi
fi

# --- the dcfs wheel, installed (the tests import it from the venv, not from python/) -----
echo "== loader-tests: building and installing the dcfs wheel (python/build-wheel.sh)"
"$ROOT/python/build-wheel.sh" "$PY" || die "building or installing the dcfs wheel failed"

# --- pack, run, always unmount --------------------------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dcfs-loaders.XXXXXX")"
MNT="$WORK/mnt"
S3S_PID=
mounted() { awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; }
RMNT="$WORK/mnt-remote"
cleanup() {
  local rc=$? m left=
  for m in "$MNT" "$RMNT"; do
    if mounted "$m"; then
      echo "loader-tests: unmounting $m"
      "$DCFS" umount "$m" 2>/dev/null || "$DCFS" umount -l "$m" || true
      for _ in $(seq 100); do mounted "$m" || break; sleep 0.05; done
    fi
    if mounted "$m"; then
      echo "loader-tests: $m still mounted; leaving $WORK" >&2
      left=1
    fi
  done
  # The server goes after the remote mount, so that mount's daemon never reads from a dead one.
  if [[ -n "$S3S_PID" ]]; then
    kill "$S3S_PID" 2>/dev/null || true
    wait "$S3S_PID" 2>/dev/null || true
  fi
  [[ -n "$left" ]] || rm -rf "$WORK"
  exit "$rc"
}
PYTEST_PID=
SIGNALLED=
# On INT/TERM: ask pytest to stop (conftest turns SIGTERM into KeyboardInterrupt, so its
# fixtures unmount), then the EXIT trap unmounts whatever is still mounted.
# A pytest stuck in native code gets SIGKILL 30 s later.
on_signal() {
  SIGNALLED=1
  [[ -n "$PYTEST_PID" ]] || exit 143
  kill -TERM "$PYTEST_PID" 2>/dev/null || true
  (sleep 30 && kill -KILL "$PYTEST_PID") >/dev/null 2>&1 &
}
trap cleanup EXIT
trap on_signal INT TERM

echo "== loader-tests: dcfs pack $MODELS"
t0=$SECONDS
"$DCFS" pack "$MODELS" "$WORK/packed" 2>&1 | tail -1
echo "   packed in $((SECONDS - t0))s"

# --- the same pack on a local S3 server (s3s-fs), for the remote-mount runs --------------
S3S="${S3S_FS:-$(command -v s3s-fs || true)}"
[[ -n "$S3S" ]] || S3S="${DCFS_S3S_ROOT:-$HOME/.cache/dcfs/s3s-fs}/bin/s3s-fs"
REMOTE_URL=
if [[ -x "$S3S" ]]; then
  mkdir -p "$WORK/s3/loaders"
  PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  export AWS_ACCESS_KEY_ID="AK$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
  export AWS_SECRET_ACCESS_KEY="SK$(od -An -N16 -tx8 /dev/urandom | tr -d ' \n')"
  export AWS_ENDPOINT_URL="http://127.0.0.1:$PORT" AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
  unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT
  "$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$AWS_ACCESS_KEY_ID" \
    --secret-key "$AWS_SECRET_ACCESS_KEY" "$WORK/s3" >"$WORK/s3s-fs.log" 2>&1 &
  S3S_PID=$!
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    kill -0 "$S3S_PID" 2>/dev/null || die "s3s-fs exited: $(tail -5 "$WORK/s3s-fs.log")"
    sleep 0.05
  done
  REMOTE_URL="s3://loaders/models"
  echo "== loader-tests: dcfs push to $REMOTE_URL (s3s-fs on 127.0.0.1:$PORT)"
  t0=$SECONDS
  "$DCFS" push "$WORK/packed" "$REMOTE_URL" | tail -1
  echo "   pushed in $((SECONDS - t0))s"
elif [[ "${CI:-}" == true ]]; then
  die "s3s-fs not found (set S3S_FS, put it on PATH, or run .ci/run to install it); the remote-mount runs need it"
else
  echo "SKIP loader tests on a remote mount: s3s-fs not found (cargo install s3s-fs@0.14.1 --features binary --locked)"
fi

echo "== loader-tests: pytest tests/loaders"
# In the background so that a signal to this script is handled while pytest runs.
DCFS_BIN="$DCFS" DCFS_MODELS="$MODELS" DCFS_LOADER_PACKED="$WORK/packed" DCFS_LOADER_MNT="$MNT" \
  DCFS_LOADER_REMOTE="$REMOTE_URL" DCFS_LOADER_REMOTE_MNT="$RMNT" \
  DCFS_CT_OLDEST_DIR="$CT_OLDEST_DIR" \
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  "$PY" -m pytest "$ROOT/tests/loaders" -p no:cacheprovider -rs -v -s "$@" &
PYTEST_PID=$!
while :; do
  rc=0
  wait "$PYTEST_PID" || rc=$?
  kill -0 "$PYTEST_PID" 2>/dev/null || break
done
PYTEST_PID=
[[ -z "$SIGNALLED" ]] || die "interrupted (pytest exit $rc)"
case $rc in
  0) ;;
  5) die "pytest collected no tests (exit 5)" ;;
  *) die "pytest failed (exit $rc)" ;;
esac

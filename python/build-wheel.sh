#!/usr/bin/env bash
# Builds the dcfs wheel (abi3, manylinux_2_34) with maturin and installs it into the venv
# of PYTHON, so tests import the installed package, never the source tree. The wheel is
# left in $DCFS_WHEEL_DIR (default <repo>/target/wheels).
#
# manylinux_2_34, not 2_28: built on the host (Debian 12, glibc 2.36), the library needs
# glibc symbols up to 2.34, so maturin's audit refuses 2_28; 2_28 needs a manylinux
# container or `--zig`. Reuses <repo>/target, so the dcfs crate is not compiled twice.
#
# Usage: python/build-wheel.sh PYTHON
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${1:?usage: python/build-wheel.sh PYTHON}"
MATURIN_VERSION=1.16.0
OUT="${DCFS_WHEEL_DIR:-$ROOT/target/wheels}"
BIN="$(dirname "$PY")"

if ! "$BIN/maturin" --version 2>/dev/null | grep -qF " $MATURIN_VERSION"; then
  if [[ -x "$BIN/uv" ]]; then
    "$BIN/uv" pip install -q --python "$PY" "maturin==$MATURIN_VERSION"
  else
    "$PY" -m pip install -q --disable-pip-version-check "maturin==$MATURIN_VERSION"
  fi
fi
mkdir -p "$OUT"
rm -f "$OUT"/dcfs-*.whl
t0=$SECONDS
CARGO_TARGET_DIR="$ROOT/target" "$BIN/maturin" build --quiet --release --compatibility manylinux_2_34 \
  -m "$ROOT/python/Cargo.toml" -o "$OUT" -i "$PY"
WHEEL="$(ls "$OUT"/dcfs-*.whl)"
echo "   built $(basename "$WHEEL") ($(($(stat -c %s "$WHEEL") / 1024)) KiB) in $((SECONDS - t0))s"
if [[ -x "$BIN/uv" ]]; then
  "$BIN/uv" pip install -q --python "$PY" --reinstall --no-deps "$WHEEL"
else
  "$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"
fi

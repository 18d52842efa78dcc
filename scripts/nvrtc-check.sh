#!/usr/bin/env bash
# CI proof that cuda/*.cu compiles, without a GPU: NVRTC from PyPI
# (nvidia-cuda-nvrtc-cu12 ships libnvrtc.so.12, which needs no driver) compiles every
# kernel for compute_70/80/89/90 (PTX) and sm_70/80/89/90 (cubin, through ptxas) with
# the layout defines printed by `dcfs gpu-defines` (generated from
# src/codec/rans_layout.rs: one source of truth). Any error or warning fails, except
# CUDA 12's known deprecation notice for targets before 75 (see docs/GPU.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${DCFS_VENV:-$ROOT/.venv}"
ARCHS="${DCFS_NVRTC_ARCHS:-compute_70 compute_80 compute_89 compute_90 sm_70 sm_80 sm_89 sm_90}"

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
lib() { ls "$VENV"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 2>/dev/null | head -n1; }
if [ -z "$(lib)" ]; then
    "$VENV/bin/pip" install --quiet "nvidia-cuda-nvrtc-cu12>=12.0,<13"
fi
LIB="${DCFS_NVRTC:-$(lib)}"
if [ -z "$LIB" ]; then
    echo "nvrtc-check: libnvrtc.so.12 not found in $VENV after pip install" >&2
    exit 1
fi
DEFINES="$(mktemp)"
trap 'rm -f "$DEFINES"' EXIT
cargo run --quiet --bin dcfs -- gpu-defines > "$DEFINES"
# shellcheck disable=SC2086
"$VENV/bin/python" scripts/nvrtc_check.py "$LIB" "$DEFINES" $ARCHS -- cuda/*.cu

#!/usr/bin/env bash
# For a machine with an NVIDIA GPU: build, show the GPU, pack the fetched models, decode
# every chunk on the GPU, compare with the CPU decoder, print GB/s, then run
# `dcfs verify --gpu on` (every chunk checksum and whole-file digest), show the --gpu auto
# calibration, and load tensors onto the GPU with dcfs.torch (python/). Expected output:
# docs/GPU.md. NVRTC comes from $DCFS_NVRTC, the loader path, or the project venv
# (scripts/nvrtc-check.sh installs it there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${DCFS_VENV:-$ROOT/.venv}"
export DCFS_VENV="$VENV"
WORK="${DCFS_SELFTEST_DIR:-$(mktemp -d)}"

echo "== build (release)"
cargo build --release --quiet
DCFS="$ROOT/target/release/dcfs"
echo "== dcfs gpu-info"
"$DCFS" gpu-info
if [ -z "${DCFS_NVRTC:-}" ] && ! ls "$VENV"/lib/python3*/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.12 >/dev/null 2>&1; then
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "nvidia-cuda-nvrtc-cu12>=12.0,<13"
fi
echo "== fetch and pack the models"
scripts/fetch-models.sh
for m in models/*/; do
    name="$(basename "$m")"
    [ -d "$WORK/$name" ] || "$DCFS" pack "$m" "$WORK/$name" >/dev/null
    echo "== $name: GPU decode vs CPU"
    "$DCFS" gpu-bench "$WORK/$name"
    echo "== $name: dcfs verify --gpu on"
    "$DCFS" verify --gpu on "$WORK/$name" | tail -n1
    echo "== $name: --gpu auto calibration (GPU kept only when faster than the CPU)"
    RUST_LOG=info "$DCFS" verify --gpu auto "$WORK/$name" 2>&1 | grep -E "GPU decode (on|off)" || true
done
echo "== dcfs.torch on the GPU (tests/loaders/test_python_pkg.py; needs the loader venv with torch)"
LVENV="${DCFS_LOADER_VENV:-$ROOT/.venv-loaders}"
if [ -x "$LVENV/bin/python" ]; then
    python/build-wheel.sh "$LVENV/bin/python"
    DCFS_LOADER_PACKED="$WORK" DCFS_MODELS="$ROOT/models" "$LVENV/bin/python" -m pytest -q -s \
        tests/loaders/test_python_pkg.py -k "cuda or torch_load_file"
else
    echo "SKIP dcfs.torch GPU test: no loader venv at $LVENV (scripts/loader-tests.sh creates it)"
fi
# Reached only when every step above passed: gpu-bench exits non-zero on any mismatch and
# on any chunk planned for the GPU that fell back to the CPU (set -e stops the script).
echo "gpu-selftest: all chunks identical to the CPU decoder, every planned chunk decoded on the GPU"

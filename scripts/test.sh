#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this):
# fetch the real models, check formatting and lints, run every test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

echo "== fetch models"
scripts/fetch-models.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== NVRTC compile of cuda/*.cu (no GPU needed)"
scripts/nvrtc-check.sh
echo "== cargo test"
cargo test --all-targets 2>&1 | tee target/test.log
grep -q "test result: ok" target/test.log

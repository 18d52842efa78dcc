#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this):
# fetch the real models, check formatting and lints, run every test (tests/remote.rs and tests/remote_cache.rs against a
# real S3 server, s3s-fs, on loopback), the aarch64 check and the .deb packages (amd64, arm64),
# then the real loaders
# (safetensors, sentence-transformers, llama.cpp, transformers on a hub cache, DC-quantized
# models through compressed-tensors, the dcfs Python wheel) on a dcfs mount (scripts/loader-tests.sh;
# the first run installs their venv, ~3 GB of torch from PyPI), a bench smoke run, and every
# fuzz target for 30 s (DCFS_FUZZ_SECS; DCFS_SKIP_FUZZ=1 skips it on a developer machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# Free disk after each step, so a run that runs out says where; with DCFS_CI_PRUNE (set by
# .ci/run) build trees no later step reads are deleted as soon as their step is done.
disk_free() { echo "   disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target/ $(du -sh target 2>/dev/null | cut -f1)"; }
prune() {
  if [[ -n ${DCFS_CI_PRUNE:-} ]]; then
    echo "   pruning (DCFS_CI_PRUNE): $*"
    rm -rf "$@"
  fi
  disk_free
}

echo "== fetch models"
scripts/fetch-models.sh
# The remote tests (tests/remote.rs, tests/remote_cache.rs) start s3s-fs on loopback; .ci/run installs it here.
S3S_ROOT="${DCFS_S3S_ROOT:-$HOME/.cache/dcfs/s3s-fs}"
if [[ -x "$S3S_ROOT/bin/s3s-fs" ]]; then
  export PATH="$S3S_ROOT/bin:$PATH"
fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== NVRTC compile of cuda/*.cu (no GPU needed)"
scripts/nvrtc-check.sh
echo "== cargo test"
cargo test --all-targets 2>&1 | tee target/test.log
grep -q "test result: ok" target/test.log
disk_free
echo "== C ABI (capi/): unit tests, dcfs.h matches cbindgen, a C program decodes a real model"
cargo test --release -p dcfs-capi 2>&1 | grep -E "^test |test result|SKIP"
# Nothing after this point builds or reads the debug profile (clippy and cargo test did).
prune target/debug
echo "== aarch64: cross-build, NEON/format tests under qemu, packs compared across architectures (scripts/aarch64-check.sh)"
t0=$SECONDS
scripts/aarch64-check.sh
echo "== aarch64 check took $((SECONDS - t0))s"
# The packages step below reuses only the aarch64 binary, not its build tree.
prune target/aarch64-unknown-linux-gnu/release/{deps,build,.fingerprint,incremental}
echo "== .deb packages for amd64 and arm64 (scripts/build-deb.sh; reuses both release builds; tests/package.rs installs the amd64 one)"
t0=$SECONDS
debs="$(mktemp -d)"
DCFS_DEB_OUT="$debs" scripts/build-deb.sh amd64 arm64
[[ $(dpkg-deb --field "$debs"/dcfs_*_arm64.deb Architecture) == arm64 ]]
mkdir "$debs/arm64" && dpkg -x "$debs"/dcfs_*_arm64.deb "$debs/arm64"
# ELF e_machine EM_AARCH64 (0xb7), and the helper link as packaged.
[[ $(od -An -tx1 -j18 -N2 "$debs/arm64/usr/bin/dcfs" | tr -d ' \n') == b700 ]]
[[ $(readlink "$debs/arm64/usr/sbin/mount.dcfs") == ../bin/dcfs ]]
rm -rf "$debs"
echo "== packages took $((SECONDS - t0))s"
echo "== loader tests (scripts/loader-tests.sh)"
t0=$SECONDS
scripts/loader-tests.sh
echo "== loader tests took $((SECONDS - t0))s"
disk_free
echo "== DC accuracy check (dcfs quantize on MiniLM, embeddings vs F32)"
"${DCFS_LOADER_VENV:-$ROOT/.venv-loaders}/bin/python" scripts/dc_accuracy.py --quick --dcfs target/release/dcfs
echo "== bench smoke (scripts/bench.sh --quick --only mount,ceiling; timings are not checked, only that it runs)"
smoke="$(mktemp -d)"
DCFS_BENCH_NOBUILD=1 DCFS_BENCH_WORK="$smoke/work" scripts/bench.sh --quick --only mount,ceiling --out "$smoke/out"
test -s "$smoke/out/mount.csv" && test -s "$smoke/out/random.csv"
# every path of the serving ceiling measured once, the FUSE-alone floor included
for p in originals auto raw verify floor; do grep -q ",$p," "$smoke/out/ceiling.csv"; done
grep -q "FUSE alone" "$smoke/out/tables.md"
rm -rf "$smoke"
if [[ -n "${DCFS_SKIP_FUZZ:-}" ]]; then
  echo "== fuzz smoke SKIPPED (DCFS_SKIP_FUZZ is set)"
else
  echo "== fuzz smoke (scripts/fuzz-smoke.sh: every target ${DCFS_FUZZ_SECS:-30} s; the first instrumented build takes ~17 min)"
  t0=$SECONDS
  scripts/fuzz-smoke.sh "${DCFS_FUZZ_SECS:-30}"
  echo "== fuzz smoke took $((SECONDS - t0))s"
fi
disk_free
echo "== all checks passed"

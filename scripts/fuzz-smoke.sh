#!/usr/bin/env bash
# Runs every fuzz target for a short time (default 25 s each, one process), on the committed
# seeds plus a scratch corpus. Fails on the first crash; the crashing input lands in
# fuzz/artifacts/<target>/ (save it under tests/regressions/<target>/ with the fix).
#
# cargo-fuzz needs `-Zsanitizer=address`, a nightly flag; on the stable toolchain here
# RUSTC_BOOTSTRAP=1 unlocks it (see docs/FUZZING.md). Usage: scripts/fuzz-smoke.sh [SECONDS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECS="${1:-${FUZZ_SECS:-25}}"
export RUSTC_BOOTSTRAP=1
# libFuzzer only sees coverage of code compiled with sanitizer coverage: the Rust code is,
# the C inside zstd-sys only when built by clang with -fsanitize=fuzzer-no-link. Without
# clang the zstd decoder is still fuzzed, but blind (apt-get install clang-14).
CLANG="$(command -v clang || command -v clang-14 || true)"
if [ -n "$CLANG" ]; then
    export CC="$CLANG" CFLAGS="-fsanitize=fuzzer-no-link"
else
    echo "note: no clang; the C code of zstd is fuzzed without coverage feedback"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
echo "== building fuzz targets"
cargo fuzz build -O
for t in $(cargo fuzz list); do
    echo "== fuzz $t for ${SECS}s"
    mkdir -p "work/$t"
    log="work/$t.log"
    if ! cargo fuzz run -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECS" -max_len=65536 -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $t FAILED (log: fuzz/$log)"
        exit 1
    fi
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" | tr '\n' ' '
    grep -E "^#[0-9]+" "$log" | tail -n 1
done
echo "fuzz smoke: all targets ran ${SECS}s without a crash"

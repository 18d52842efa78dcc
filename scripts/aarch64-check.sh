#!/usr/bin/env bash
# aarch64 check: cross-build dcfs for aarch64-unknown-linux-gnu, run the codec, format and
# pack/unpack/verify tests under qemu-user (the NEON rANS decoder among them), and prove that
# packs are byte-identical across architectures: pack models/ natively and with the aarch64
# binary, compare the two packs, verify the native pack with the aarch64 binary and unpack
# the aarch64 pack natively, comparing every file with the original by digest.
#
# Idempotent and self-installing: Debian's gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and
# qemu-user (apt, when missing), and the rustup target. binfmt_misc is not needed: cargo runs
# test binaries through CARGO_TARGET_..._RUNNER. FUSE mounts do not work under qemu-user, so
# the FUSE tests are not run here (the native suite covers them).
#
# Env: DCFS_ARM_WORK (scratch directory, default: a fresh temporary one, removed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

T=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
t_all=$SECONDS
t0=$SECONDS
step() {
  echo "== $* ($((SECONDS - t_all))s so far)"
  t0=$SECONDS
}
took() { echo "   took $((SECONDS - t0))s"; }

step "toolchain: cross gcc, aarch64 libc, qemu-user, rustup target"
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[[ -e $SYSROOT/lib/libc.so.6 ]] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
if ((${#need[@]})); then
  SUDO=""
  [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
rustup target list --installed | grep -qx "$T" || rustup target add "$T"
took

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L $SYSROOT"
# zstd-sys and blake3 compile C/assembly for the target.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
QEMU=(qemu-aarch64 -L "$SYSROOT")

step "models"
scripts/fetch-models.sh >/dev/null
took

step "cross-build (release, aarch64) and native release build"
cargo build --release --target "$T" --bin dcfs
cargo build --release --bin dcfs
ARM="$ROOT/target/$T/release/dcfs"
X86="$ROOT/target/release/dcfs"
# ELF e_machine (offset 18, little-endian) must be EM_AARCH64 = 0xb7.
[[ $(od -An -tx1 -j18 -N2 "$ARM" | tr -d ' \n') == b700 ]] || {
  echo "not an aarch64 binary: $ARM" >&2
  exit 1
}
echo "   aarch64 binary reports decode path: $("${QEMU[@]}" "$ARM" --version)"
took

# Tests build in the release profile: their dependencies (object_store, aws-lc-sys, ...)
# are then the ones the cross-build above already compiled, not a second tree.
step "unit tests under qemu: codec (NEON decoder vs scalar), format, transform"
cargo test --release --target "$T" --lib -- codec format transform
took

# cli_* tests spawn the dcfs binary, which the test process (itself under qemu, without
# binfmt_misc) cannot exec; the CLI is exercised below with the aarch64 binary instead.
step "integration tests under qemu: format_compat, pack_roundtrip (no FUSE)"
cargo test --release --target "$T" --test format_compat --test pack_roundtrip -- --skip cli_
took

if [[ -n ${DCFS_ARM_WORK:-} ]]; then
  W=$DCFS_ARM_WORK
  rm -rf "$W"
  mkdir -p "$W"
else
  W="$(mktemp -d)"
  trap 'rm -rf "$W"' EXIT
fi
SRC="$(readlink -f models)"

# Digest of every regular file of a tree, by relative path.
digests() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

step "pack models/ natively and with the aarch64 binary; the packs must be byte-identical"
"$X86" pack "$SRC" "$W/pack-x86" >/dev/null
t1=$SECONDS
"${QEMU[@]}" "$ARM" pack "$SRC" "$W/pack-arm" >/dev/null
echo "   aarch64 pack under qemu: $((SECONDS - t1))s"
diff -r "$W/pack-x86" "$W/pack-arm"
echo "   packs identical: $(du -sb "$W/pack-x86" | cut -f1) bytes"
took

step "verify the native pack with the aarch64 binary (NEON decoder), then with it forced scalar"
"${QEMU[@]}" "$ARM" verify "$W/pack-x86" >/dev/null
DCFS_NO_SIMD=1 "${QEMU[@]}" "$ARM" verify "$W/pack-x86" >/dev/null
took

step "unpack the aarch64 pack natively and with the aarch64 binary; compare digests with the originals"
digests "$SRC" >"$W/orig.sha"
"$X86" unpack "$W/pack-arm" "$W/un-x86" >/dev/null
digests "$W/un-x86" | diff "$W/orig.sha" -
raw=$(du -sb --apparent-size "$SRC/" | cut -f1)
t1=$(date +%s.%N)
"${QEMU[@]}" "$ARM" unpack -j 1 "$W/pack-x86" "$W/un-arm" >/dev/null
t2=$(date +%s.%N)
DCFS_NO_SIMD=1 "${QEMU[@]}" "$ARM" unpack -j 1 "$W/pack-x86" "$W/un-arm-scalar" >/dev/null
t3=$(date +%s.%N)
digests "$W/un-arm" | diff "$W/orig.sha" -
digests "$W/un-arm-scalar" | diff "$W/orig.sha" -
# A functional figure only: qemu translates NEON into host code, so this says nothing about
# a real aarch64 core.
awk -v b="$raw" -v n="$t1" -v m="$t2" -v s="$t3" 'BEGIN {
  printf "   unpack under qemu, 1 thread, %.1f MB of models: neon %.1f MB/s, scalar %.1f MB/s (functional figure)\n",
    b / 1e6, b / 1e6 / (m - n), b / 1e6 / (s - m) }'
took

echo "== aarch64 check OK in $((SECONDS - t_all))s"

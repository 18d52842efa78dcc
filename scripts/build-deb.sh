#!/usr/bin/env bash
# Builds .deb packages of dcfs with dpkg-deb (no cargo-deb to compile in CI): reuses the
# release build (amd64) and the aarch64 cross-build that scripts/aarch64-check.sh makes
# (arm64). Each package holds:
#   /usr/bin/dcfs, /usr/sbin/mount.dcfs -> ../bin/dcfs (mount -t dcfs, fstab),
#   man pages (dcfs(1), dcfs-<command>(1)), bash/zsh/fish completions,
#   /usr/lib/systemd/system/dcfs@.service, /usr/share/doc/dcfs/ (README, docs).
# The man pages and completions come from `dcfs gen-docs` (the clap definitions) run with the
# native binary; they are text, the same for every architecture.
#
# Usage: scripts/build-deb.sh [amd64] [arm64]   (default: amd64, plus arm64 when its binary exists)
# Env: DCFS_DEB_OUT (output directory, default target/deb).
# Prints the path of each package built.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

OUT="${DCFS_DEB_OUT:-$ROOT/target/deb}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
ARM_BIN="$TARGET_DIR/aarch64-unknown-linux-gnu/release/dcfs"
X86_BIN="$TARGET_DIR/release/dcfs"
# The oldest glibc the binaries may need; docs/INSTALL.md explains it and tests/package.rs
# checks the binary against it. Raising it drops distributions: say so in the docs.
GLIBC_FLOOR=2.34

arches=("$@")
if ((${#arches[@]} == 0)); then
  arches=(amd64)
  [[ -x $ARM_BIN ]] && arches+=(arm64)
fi

cargo build --release --bin dcfs >&2
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
DEBVER="$VERSION-1"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
"$X86_BIN" gen-docs "$stage/gen" >/dev/null

# Newest GLIBC_x.y symbol version an ELF binary needs.
glibc_needed() {
  objdump -T "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1
}

mkdir -p "$OUT"
for arch in "${arches[@]}"; do
  case $arch in
    amd64) bin=$X86_BIN strip=strip ;;
    arm64) bin=$ARM_BIN strip=aarch64-linux-gnu-strip ;;
    *) echo "unknown architecture $arch (amd64, arm64)" >&2; exit 2 ;;
  esac
  if [[ ! -x $bin ]]; then
    echo "no $arch binary at $bin: build it first (arm64: scripts/aarch64-check.sh)" >&2
    exit 2
  fi
  need="$(glibc_needed "$bin")"
  if [[ "$(printf '%s\n%s\n' "$need" "$GLIBC_FLOOR" | sort -V | tail -n 1)" != "$GLIBC_FLOOR" ]]; then
    echo "$arch binary needs GLIBC_$need, above the documented floor $GLIBC_FLOOR" >&2
    exit 1
  fi
  d="$stage/$arch"
  install -d "$d/DEBIAN" "$d/usr/bin" "$d/usr/sbin" "$d/usr/share/man/man1" \
    "$d/usr/share/bash-completion/completions" "$d/usr/share/zsh/vendor-completions" \
    "$d/usr/share/fish/vendor_completions.d" "$d/usr/lib/systemd/system" "$d/usr/share/doc/dcfs"
  # Debug info stays in the build tree; the package ships the stripped binary.
  if command -v "$strip" >/dev/null; then
    "$strip" --strip-debug -o "$d/usr/bin/dcfs" "$bin"
  else
    echo "warning: no $strip; packaging the binary unstripped" >&2
    cp "$bin" "$d/usr/bin/dcfs"
  fi
  chmod 0755 "$d/usr/bin/dcfs"
  # mount(8) runs /sbin/mount.<type> (then /usr/sbin); dcfs acts as the helper when argv[0]
  # is mount.dcfs.
  ln -s ../bin/dcfs "$d/usr/sbin/mount.dcfs"
  for m in "$stage"/gen/man/*.1; do
    gzip -9n <"$m" >"$d/usr/share/man/man1/$(basename "$m").gz"
  done
  install -m 0644 "$stage/gen/completions/dcfs.bash" "$d/usr/share/bash-completion/completions/dcfs"
  install -m 0644 "$stage/gen/completions/_dcfs" "$d/usr/share/zsh/vendor-completions/_dcfs"
  install -m 0644 "$stage/gen/completions/dcfs.fish" "$d/usr/share/fish/vendor_completions.d/dcfs.fish"
  # The source tree's unit runs /usr/local/bin/dcfs (scripts/install.sh); the package's /usr/bin.
  sed 's#/usr/local/bin/dcfs#/usr/bin/dcfs#g' packaging/dcfs@.service >"$d/usr/lib/systemd/system/dcfs@.service"
  chmod 0644 "$d/usr/lib/systemd/system/dcfs@.service"
  install -m 0644 README.md "$d/usr/share/doc/dcfs/README.md"
  for f in docs/*.md; do
    install -m 0644 "$f" "$d/usr/share/doc/dcfs/$(basename "$f")"
  done
  cat >"$d/usr/share/doc/dcfs/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: dcfs

Files: *
License: Apache-2.0
 On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.
EOF
  size_kb=$(du -sk --exclude=DEBIAN "$d" | cut -f1)
  cat >"$d/DEBIAN/control" <<EOF
Package: dcfs
Version: $DEBVER
Architecture: $arch
Maintainer: dcfs maintainers <maintainers@users.noreply.github.com>
Installed-Size: $size_kb
Depends: libc6 (>= $GLIBC_FLOOR), libgcc-s1
Recommends: fuse3
Section: utils
Priority: optional
Description: lossless compression of LLM weights, served through a FUSE mount
 dcfs packs model directories (safetensors, GGUF, configs, tokenizers) into
 smaller checksummed containers and serves them back byte for byte through a
 read-only FUSE mount (mount -t dcfs, fstab, the dcfs@.service template).
 fuse3 (fusermount3) is needed only for mounts by non-root users.
EOF
  deb="$OUT/dcfs_${DEBVER}_${arch}.deb"
  # xz, not dpkg's newer zstd default: older dpkg (the distributions edge devices run)
  # cannot read zstd members.
  dpkg-deb --root-owner-group -Zxz --build "$d" "$deb" >&2
  echo "$deb"
done

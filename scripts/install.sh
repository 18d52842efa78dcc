#!/usr/bin/env bash
# Installs dcfs and the mount(8) helper, so `mount -t dcfs PACKED DIR` and fstab lines work:
#   /var/lib/models.dcz  /models  dcfs  ro,cache_size=1G,nofail  0 0
# Usage: scripts/install.sh [PREFIX]   (default /usr/local; needs root)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${1:-/usr/local}"
cd "$ROOT"
cargo build --release
install -D -m 0755 target/release/dcfs "$PREFIX/bin/dcfs"
# mount(8) runs /sbin/mount.<type> with argv[0] = mount.dcfs; dcfs recognises that name.
ln -sf "$PREFIX/bin/dcfs" /sbin/mount.dcfs
echo "installed $PREFIX/bin/dcfs and /sbin/mount.dcfs"

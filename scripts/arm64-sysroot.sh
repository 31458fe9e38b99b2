#!/usr/bin/env bash
# Makes an arm64 (aarch64) sysroot of Debian bookworm's packages for the
# cross build (cmake/aarch64-linux-gnu.cmake) and for qemu-aarch64 -L:
# the packages a fresh arm64 machine would install for the build, resolved
# by apt as if nothing were installed, downloaded and unpacked (not
# installed: libvips' arm64 packages cannot be installed beside the amd64
# ones, which the x86 build needs).
# Usage: scripts/arm64-sysroot.sh [DIR]   (default build-arm64/sysroot)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(realpath -m "${1:-build-arm64/sysroot}")
stamp="$root/.packages"
packages="libc6-dev libstdc++-12-dev libgomp1 libvips-dev libwebp-dev libicu-dev libdnnl-dev libhwy-dev
  libgtest-dev libgmock-dev nlohmann-json3-dev libspdlog-dev libcli11-dev libcpp-httplib-dev libxxhash-dev
  libcurl4-openssl-dev libssl-dev"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(echo $packages)" ]; then
  echo "arm64 sysroot: $root is up to date"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: >"$work/status"
mkdir -p "$work/archives/partial"
# Dir::State::status: resolve against an empty system (every dependency);
# APT::Architecture(s): as an arm64 machine sees the archive.
$SUDO apt-get install -y -qq --download-only --no-install-recommends \
  -o Dir::State::status="$work/status" -o Dir::Cache::archives="$work/archives" \
  -o APT::Architecture=arm64 -o APT::Architectures::=arm64 -o Debug::NoLocking=1 -o APT::Sandbox::User=root \
  $packages >/dev/null
rm -rf "$root"
mkdir -p "$root"
for deb in "$work"/archives/*.deb; do dpkg-deb -x "$deb" "$root"; done
# Absolute symlinks (libfoo.so -> /lib/aarch64-linux-gnu/libfoo.so.1) point
# into the sysroot, not at the host.
find "$root" -type l -lname '/*' | while read -r link; do
  ln -sfn "$root$(readlink "$link")" "$link"
done
echo $packages >"$stamp"
echo "arm64 sysroot: $(ls "$work"/archives/*.deb | wc -l) packages in $root"

#!/usr/bin/env bash
# Install what the build and the tests need on a fresh Debian machine that has Rust (rustup).
# Idempotent: each step checks first and installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

# Debian packages, by name: the C toolchain (and binutils' nm and readelf) for the C examples
# and -sys crates, pkg-config for the examples' Makefile, fio (the uring bdev's benchmark
# baseline), rsync (the subtree diff's benchmark baseline).
APT_PACKAGES=(build-essential pkg-config fio rsync)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "apt: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Rust components used by the test command.
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
# cbindgen generates include/tandem.h; the test command checks the checked-in one is fresh.
CBINDGEN_VERSION=0.29.4
if ! cbindgen --version 2>/dev/null | grep -q "$CBINDGEN_VERSION"; then
  echo "cargo: installing cbindgen $CBINDGEN_VERSION"
  cargo install cbindgen --version "$CBINDGEN_VERSION" --locked --quiet
fi
# cargo-fuzz runs the fuzz targets (scripts/fuzz.sh).
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "cargo: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --quiet
fi

# SPDK's own JSON-RPC client (spdk-rpc), which the RPC tests drive tandemd with.
SPDK_PY_VERSION=26.9
if ! python3 -c "import spdk.spdk_rpc" 2>/dev/null || ! command -v spdk-rpc >/dev/null; then
  echo "pip: installing spdk $SPDK_PY_VERSION (spdk-rpc)"
  python3 -m pip install --quiet "spdk==$SPDK_PY_VERSION"
  command -v pyenv >/dev/null && pyenv rehash || true
fi
tests/linux-host/guest.sh --prepare   # Linux NVMe/TCP host harness: QEMU, Debian kernel, guest tools (cached)
echo "set-up complete"

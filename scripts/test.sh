#!/usr/bin/env bash
# The one test command: sets up a fresh Debian machine with Rust (packages by name through the
# ordinary installers), then runs every test. CI (.ci/run) calls exactly this.
#
#   ./scripts/test.sh            set up, then run everything
#   SKIP_SETUP=1 ./scripts/test.sh   run without the set-up step (a machine already set up)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s\n' "$*"; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  step "set-up"
  ./scripts/setup.sh
fi

step "format"
cargo fmt --all -- --check

step "build (every target)"
cargo build --workspace --all-targets

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests (unit, integration, doc)"
cargo test --workspace

step "C ABI: header fresh, libtandem.a and .so, tandem.pc, only tandem_* exported"
pkgconfig=$(./scripts/build-c.sh | tail -1)

step "C examples against the static and the shared library, under AddressSanitizer"
PKG_CONFIG_PATH="$pkgconfig" make -C examples-c --no-print-directory clean run

step "fuzz targets, bounded (every parser of outside bytes)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" ./scripts/fuzz.sh

step "benchmarks, each run once as a smoke test"
cargo test -p tandem-bench --benches

step "all tests passed"

#!/usr/bin/env bash
# Build the C libraries and check the C surface:
#   - libtandem.a and libtandem.so (SONAME libtandem.so) into target/c/lib, tandem.pc into
#     target/c/lib/pkgconfig, pointing at include/tandem.h;
#   - include/tandem.h must be exactly what cbindgen makes of ffi/ now (fails when stale;
#     `scripts/build-c.sh --write-header` regenerates it);
#   - only tandem_* symbols may leave the shared library.
# Prints the PKG_CONFIG_PATH to use on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if [ "${1:-}" = "--write-header" ]; then
  cbindgen --quiet --config ffi/cbindgen.toml --crate tandem-ffi --output include/tandem.h ffi
fi
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
cbindgen --quiet --config ffi/cbindgen.toml --crate tandem-ffi --output "$fresh" ffi
if ! cmp -s "$fresh" include/tandem.h; then
  echo "include/tandem.h is stale: run scripts/build-c.sh --write-header and commit it" >&2
  diff -u include/tandem.h "$fresh" | head -40 >&2 || true
  exit 1
fi

cargo build -p tandem-ffi --release --quiet
out="$root/target/c"
mkdir -p "$out/lib/pkgconfig"
cp target/release/libtandem_ffi.a "$out/lib/libtandem.a"
cp target/release/libtandem_ffi.so "$out/lib/libtandem.so"

# What a static link of the Rust runtime needs from the system.
cat > "$out/lib/pkgconfig/tandem.pc" <<PC
prefix=$out
libdir=\${prefix}/lib
includedir=$root/include

Name: tandem
Description: Tandem polled-mode storage engine (C ABI)
Version: $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
Libs: -L\${libdir} -ltandem
Libs.private: -lpthread -ldl -lm -lrt -lgcc_s -lc
Cflags: -I\${includedir}
PC

leaked=$(nm -D --defined-only "$out/lib/libtandem.so" | awk '{print $3}' | grep -v '^tandem_' || true)
if [ -n "$leaked" ]; then
  echo "libtandem.so exports symbols outside tandem_*:" >&2
  echo "$leaked" | head -20 >&2
  exit 1
fi
soname=$(readelf -d "$out/lib/libtandem.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')
[ "$soname" = libtandem.so ] || { echo "SONAME is '$soname', not libtandem.so" >&2; exit 1; }
echo "$out/lib/pkgconfig"

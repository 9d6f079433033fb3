#!/usr/bin/env bash
# Run every fuzz target for a bounded time (FUZZ_SECONDS each, default 20). The test command
# runs this; a crash fails it and leaves the input under fuzz/artifacts/.
#
# cargo fuzz wants nightly-only flags (-Zsanitizer=address); this machine has stable Rust only,
# and RUSTC_BOOTSTRAP=1 lets stable accept them for this build alone.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
cd fuzz
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
  echo "== fuzz $target (${seconds}s)"
  mkdir -p "corpus/$target"
  set +e
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1
  rc=$?
  set -e
  grep -E "^Done [0-9]+ runs" "$log" || true
  if [ $rc -ne 0 ]; then
    echo "fuzz target $target failed (exit $rc); inputs, if any, under fuzz/artifacts/$target:" >&2
    tail -40 "$log" >&2
    exit 1
  fi
done

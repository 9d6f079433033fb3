#!/usr/bin/env bash
# The README's NVMe/TCP table: `tandem perf` against tandemd on loopback, one core each
# (tandemd -m 0x1 --mode poll, perf -c 0x2), each workload ROUNDS times (default 3) for SECS
# seconds (default 10); prints a Markdown table of the medians (IOPS, MiB/s, average, p50, p99
# and p99.9 latency) and the spread of IOPS between rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
PORT=${PORT:-4470}
cargo build --release --quiet --bin tandemd --bin tandem
sock=$(mktemp -u /tmp/tandem-perf-table.XXXXXX.sock)
./target/release/tandemd -m 0x1 --mode poll -r "$sock" --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
trid="trtype:TCP adrfam:IPv4 traddr:127.0.0.1 trsvcid:$PORT subnqn:nqn.2016-06.io.tandem:default"
echo "| workload | IOPS | MiB/s | avg µs | p50 µs | p99 µs | p99.9 µs | IOPS over $ROUNDS runs |"
echo "|---|---|---|---|---|---|---|---|"
while read -r name args; do
  runs=()
  for _ in $(seq "$ROUNDS"); do
    # shellcheck disable=SC2086
    runs+=("$(./target/release/tandem perf -r "$trid" -c 0x2 -t "$SECS" --json $args)")
  done
  printf '%s\n' "${runs[@]}" | python3 -c '
import json, sys
name = sys.argv[1]
docs, buf = [], ""
for line in sys.stdin:
    buf += line
    try:
        docs.append(json.loads(buf)); buf = ""
    except ValueError:
        pass
tot = sorted((d["total"] for d in docs), key=lambda t: t["iops"])
m = tot[len(tot) // 2]
l = m["latency_us"]
spread = " / ".join("{:,.0f}".format(t["iops"]) for t in tot)
print("| {} | {:,.0f} | {:,.0f} | {:.1f} | {:.1f} | {:.1f} | {:.1f} | {} |".format(
    name, m["iops"], m["mib_per_s"], l["avg"], l["p50"], l["p99"], l["p99_9"], spread))
' "$name"
done <<'LIST'
4KiB-randread-QD1 -q 1 -o 4096 -w randread
4KiB-randread-QD32 -q 32 -o 4096 -w randread
4KiB-randwrite-QD32 -q 32 -o 4096 -w randwrite
128KiB-read-QD8 -q 8 -o 131072 -w read
LIST

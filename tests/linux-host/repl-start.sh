#!/usr/bin/env bash
# Hook for the repl-fio case: start the replication relationship the test made, and answer
# once the pair is in sync, while the guest goes on writing.
# Environment: TANDEM_RPC_SOCK (the primary's RPC socket), TANDEM_BIN (the tandem CLI),
# TANDEM_REPL (the relationship).
set -euo pipefail
: "${TANDEM_RPC_SOCK:?}" "${TANDEM_BIN:?}" "${TANDEM_REPL:?}"
"$TANDEM_BIN" repl -s "$TANDEM_RPC_SOCK" start "$TANDEM_REPL" --wait --timeout 50

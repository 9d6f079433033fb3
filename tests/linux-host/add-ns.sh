#!/usr/bin/env bash
# Hook for the ns-add case: add a fresh RAM disk as a namespace of the subsystem under test,
# through SPDK's own RPC client, while the guest's host stays connected.
# Environment: TANDEM_RPC_SOCK (tandemd's RPC socket), LNH_NQN (the subsystem).
set -euo pipefail
: "${TANDEM_RPC_SOCK:?}" "${LNH_NQN:?}"
name="HotNs$RANDOM"
spdk-rpc -s "$TANDEM_RPC_SOCK" bdev_malloc_create -b "$name" 32 512
spdk-rpc -s "$TANDEM_RPC_SOCK" nvmf_subsystem_add_ns "$LNH_NQN" "$name"

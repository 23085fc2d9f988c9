#!/usr/bin/env bash
# Adds simulated nodes to the local cluster for the scale benchmark: the kwok controller as a process (against
# the admin kubeconfig) and N fake Nodes it keeps Ready. Pods bound to them reach Running/Ready without any
# container being run, and are removed when deleted. The nodes carry a taint, so only pods that tolerate it
# (the scale benchmark's) ever land there. Idempotent: a running kwok is kept, missing nodes are added.
#
#   hack/kwok-up.sh [NODES]    NODES: default $KWOK_NODES or 20; each node takes $KWOK_NODE_PODS pods (300)
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/cluster-lib.sh
source "$HACK_DIR/cluster-lib.sh"
# shellcheck source=hack/kwok-lib.sh
source "$HACK_DIR/kwok-lib.sh"

NODES="${1:-${KWOK_NODES:-20}}"
NODE_PODS="${KWOK_NODE_PODS:-300}"
[[ "$NODES" =~ ^[1-9][0-9]{0,3}$ ]] || die "NODES must be a number from 1 to 9999, not '$NODES'"
[[ "$NODE_PODS" =~ ^[1-9][0-9]{0,4}$ ]] || die "KWOK_NODE_PODS must be a number from 1 to 99999, not '$NODE_PODS'"
[ "$(id -u)" = 0 ] || die "kwok-up needs root (the cluster's run directory is root's)"
kubectl_admin get --raw /readyz > /dev/null 2>&1 || die "the local cluster is not up (make cluster-up)"

bash "$HACK_DIR/build-binaries.sh" kwok
mkdir -p "$KWOK_DIR" "$RUN_DIR" "$LOG_DIR"
write_kwok_config

if component_pid kwok > /dev/null; then
  log "kwok already running"
else
  # Lease heartbeats (renewed every 40 s / 4) keep the nodes Ready cheaply; the status heartbeat is every ~10 min.
  # No --server-address/--node-port: kwok then serves nothing (no logs/exec endpoints are needed).
  start_component kwok "$KWOK_BIN_DIR/kwok" --kubeconfig "$ADMIN_KUBECONFIG" --config "$KWOK_CONFIG" \
    --manage-nodes-with-label-selector "$KWOK_NODE_KEY=$KWOK_NODE_VALUE" --node-lease-duration-seconds 40
fi

names=()
for i in $(seq 0 $((NODES - 1))); do names+=("$(printf 'kwok-node-%03d' "$i")"); done
for name in "${names[@]}"; do fake_node_manifest "$name"; done | kubectl_admin apply -f - > /dev/null
wait_for "$NODES fake nodes Ready" 120 fake_nodes_ready "$NODES"
# The room goes in through the status subresource once kwok has initialised the nodes (its first status write
# fills in defaults without ephemeral storage, which every sandbox pod requests; later ones leave it alone).
for name in "${names[@]}"; do
  kubectl_admin patch node "$name" --subresource=status --type=merge -p "$(fake_node_room "$NODE_PODS")" > /dev/null
done
log "kwok up: $NODES fake nodes (label and taint $KWOK_NODE_KEY=$KWOK_NODE_VALUE, $NODE_PODS pods each);" \
  "log $LOG_DIR/kwok.log"

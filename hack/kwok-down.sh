#!/usr/bin/env bash
# Removes what hack/kwok-up.sh added: the fake nodes (their pods go with them) and the kwok process (by the PID
# it recorded). Safe to run at any time; the rest of the cluster is left alone.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/cluster-lib.sh
source "$HACK_DIR/cluster-lib.sh"
# shellcheck source=hack/kwok-lib.sh
source "$HACK_DIR/kwok-lib.sh"

[ "$(id -u)" = 0 ] || die "kwok-down needs root (the cluster's run directory is root's)"
mkdir -p "$RUN_DIR"

if kubectl_admin get --raw /readyz > /dev/null 2>&1; then
  # Pods bound to a deleted node are removed by the pod garbage collector; kwok (still running) would also
  # finish pods that are already terminating, so the nodes go first.
  kubectl_admin delete node -l "$KWOK_NODE_KEY=$KWOK_NODE_VALUE" --ignore-not-found --wait=false > /dev/null
  wait_for "fake nodes gone" 60 no_fake_nodes
else
  log "the cluster is not up: only kwok is stopped"
fi
stop_component kwok
log "kwok down"

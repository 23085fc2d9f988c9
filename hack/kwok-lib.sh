# shellcheck shell=bash
# Shared by hack/kwok-up.sh and hack/kwok-down.sh: where kwok's files go, the fake nodes' mark, their manifest.
# Source it after lib.sh and cluster-lib.sh; do not run it.
# shellcheck disable=SC2034  # the settings are for the scripts that source this file
set -euo pipefail

KWOK_DIR="$CLUSTER_DIR/kwok"
KWOK_CONFIG="$KWOK_DIR/kwok.yaml"
# Label and taint of every fake node (bench/bench_scale.py selects and tolerates the same pair).
KWOK_NODE_KEY="kwok.x-k8s.io/node"
KWOK_NODE_VALUE="fake"

# kwok's stages (what it does to nodes and pods, and when) as its release ships them, read from the pinned
# module so they follow the version: nodes become Ready and renew their leases; pods become Running/Ready,
# Job pods complete, and deleted pods are removed at once. Without the Stage CRD, kwok reads them from --config.
write_kwok_config() {
  local module stage
  module="$(cd "$HACK_DIR/tools/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  [ -d "$module/kustomize/stage" ] || die "no stages in $module (go mod download in hack/tools/kwok)"
  : > "$KWOK_CONFIG.tmp"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    { echo "---"; cat "$module/kustomize/stage/$stage.yaml"; } >> "$KWOK_CONFIG.tmp"
  done
  mv "$KWOK_CONFIG.tmp" "$KWOK_CONFIG"
}

fake_node_manifest() { # name
  cat <<YAML
---
apiVersion: v1
kind: Node
metadata:
  name: $1
  labels:
    $KWOK_NODE_KEY: $KWOK_NODE_VALUE
    kubernetes.io/hostname: $1
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
spec:
  taints:
  - key: $KWOK_NODE_KEY
    value: $KWOK_NODE_VALUE
    effect: NoSchedule
YAML
}

# Room for max-pods sandbox pods (each requests 10m CPU, 64Mi memory and 64Mi ephemeral storage by default), as a
# status patch.
fake_node_room() { # max-pods
  local room="{\"cpu\": \"64\", \"memory\": \"512Gi\", \"ephemeral-storage\": \"2Ti\", \"pods\": \"$1\"}"
  echo "{\"status\": {\"allocatable\": $room, \"capacity\": $room}}"
}

fake_nodes_ready() { # count: at least that many fake nodes are Ready
  local ready
  ready="$(kubectl_admin get nodes -l "$KWOK_NODE_KEY=$KWOK_NODE_VALUE" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)"
  [ "$ready" -ge "$1" ]
}

no_fake_nodes() {
  [ -z "$(kubectl_admin get nodes -l "$KWOK_NODE_KEY=$KWOK_NODE_VALUE" -o name)" ]
}

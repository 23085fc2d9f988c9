#!/usr/bin/env bash
# For machines with Docker: a kind cluster instead of the project's own, loaded with the same images.
# (It cannot run on the project's CI machines, which have no Docker engine.) Afterwards point the tests at it:
#   SANDBOX_KUBECONFIG="$(make -s kubeconfig CLUSTER=kind)" make test
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KIND_CLUSTER="${KIND_CLUSTER:-sandbox-operator}"
KIND_NODE_IMAGE="kindest/node:$KUBE_VERSION"
KIND_KUBECONFIG="$CACHE_ROOT/kind-$KIND_CLUSTER.kubeconfig"

command -v docker > /dev/null || die "CLUSTER=kind needs docker"
command -v kind > /dev/null || die "CLUSTER=kind needs the kind CLI"

if ! kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"; then
  kind create cluster --name "$KIND_CLUSTER" --image "$KIND_NODE_IMAGE" --kubeconfig "$KIND_KUBECONFIG" --wait 180s
fi
kind get kubeconfig --name "$KIND_CLUSTER" > "$KIND_KUBECONFIG"
bash "$HACK_DIR/build-images.sh" build
for archive in "$IMAGE_CACHE"/*.tar; do
  [ -e "$archive" ] && kind load image-archive --name "$KIND_CLUSTER" "$archive"
done
log "kind cluster $KIND_CLUSTER ready; kubeconfig $KIND_KUBECONFIG"
echo "$KIND_KUBECONFIG"

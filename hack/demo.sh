#!/usr/bin/env bash
# `make demo`: from a fresh machine to "Hello" printed by Python inside a sandbox, through the Helm-installed
# operator. Builds only what is missing (each step is cached), so a second run takes seconds. Idempotent: it
# upgrades the release in place and replaces a leftover demo Sandbox. Every step says what it does.
#
#   1. the Python environment (.venv, with sandboxctl)
#   2. the local cluster (make cluster-up: pinned binaries, sandbox images), or kind with CLUSTER=kind
#   3. the operator image (hack/build-operator-image.sh), imported into the node
#   4. the Sandbox CRD (kubectl apply --server-side: Helm never upgrades CRDs), then `helm upgrade --install`
#   5. a Sandbox from samples/sandbox.yaml, Ready
#   6. `sandboxctl exec` of python3 -c "print('Hello')" in it, the output printed, the Sandbox deleted
#
# Leaves the operator running (release DEMO_RELEASE in DEMO_NAMESPACE, watching DEMO_SANDBOX_NAMESPACE only).
# Remove it with: helm uninstall -n sandbox-operator-system sandbox-operator
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLUSTER="${CLUSTER:-local}"
RELEASE="${DEMO_RELEASE:-sandbox-operator}"
NAMESPACE="${DEMO_NAMESPACE:-sandbox-operator-system}"
SANDBOX_NAMESPACE="${DEMO_SANDBOX_NAMESPACE:-sandboxes}"
SAMPLE="$REPO_ROOT/samples/sandbox.yaml"
CHART="$REPO_ROOT/charts/sandbox-operator"
SANDBOX="$(awk '/^metadata:/ { m = 1 } m && $1 == "name:" { print $2; exit }' "$SAMPLE")"
MAKE=(make -s --no-print-directory -C "$REPO_ROOT" "CLUSTER=$CLUSTER")

step() { printf '\n==> %s\n' "$*" >&2; }
# run COMMAND...: prints the command (quoted as a shell would need it, the pinned tools by name), then runs it.
run() {
  local shown
  shown="$(printf '%q ' "$@")"
  printf '    $ %s\n' "${shown//"$BIN_DIR"\//}" >&2
  "$@"
}

step "1/6 Python environment (.venv with the sandbox_operator package and sandboxctl)"
run "${MAKE[@]}" venv
SANDBOXCTL="$REPO_ROOT/.venv/bin/sandboxctl"
[ -x "$SANDBOXCTL" ] || die "$SANDBOXCTL is missing after 'make venv'"

step "2/6 Cluster ($CLUSTER): up, with the sandbox image on the node"
run "${MAKE[@]}" cluster-up
KUBECONFIG="$("${MAKE[@]}" kubeconfig | tail -n 1)"
export KUBECONFIG
KUBECTL="$BIN_DIR/kubectl"
HELM="$BIN_DIR/helm"
{ [ -x "$KUBECTL" ] && [ -x "$HELM" ]; } || die "kubectl or helm missing in $BIN_DIR (make cluster-build)"
log "kubeconfig: $KUBECONFIG"

step "3/6 Operator image: build if its inputs changed, load it into the node"
if [ "$CLUSTER" = kind ]; then
  ARCHIVE="$(run bash "$HACK_DIR/build-operator-image.sh" archive | tail -n 1)"
  command -v kind >/dev/null 2>&1 || die "CLUSTER=kind needs the kind command"
  run kind load image-archive "$ARCHIVE" --name "${KIND_CLUSTER:-sandbox-operator}"
else
  run bash "$HACK_DIR/build-operator-image.sh" import
  ARCHIVE="$(bash "$HACK_DIR/build-operator-image.sh" archive 2>/dev/null | tail -n 1)"   # built just now: quiet
fi
# The archive's name ends in the hash of the image's inputs: as a pod annotation, a rebuilt image (same pinned
# tag, new content) rolls the operator on the next run.
IMAGE_INPUTS="$(basename "$ARCHIVE" .docker.tar)"
IMAGE_INPUTS="${IMAGE_INPUTS##*-}"

step "4/6 Sandbox CRD and the Helm release $RELEASE (namespace $NAMESPACE, sandboxes in $SANDBOX_NAMESPACE)"
# Sandboxes in user namespaces (hostUsers: false) where the node's runtime supports them (the project's cluster
# runs containerd 2.3): each sandbox's UID 1000 is then a host UID of its own, so its process limit is its own.
USER_NAMESPACES="${DEMO_USER_NAMESPACES:-}"
if [ -z "$USER_NAMESPACES" ]; then
  USER_NAMESPACES=false
  case " $("$KUBECTL" get nodes -o jsonpath='{.items[*].status.runtimeHandlers[*].features.userNamespaces}') " in
    *" true "*) USER_NAMESPACES=true ;;
  esac
fi
log "user namespaces for sandboxes: $USER_NAMESPACES (the node's runtime says; DEMO_USER_NAMESPACES overrides)"
# gVisor (a kernel of its own around each sandbox) where the cluster has its RuntimeClass; "" = the node's default
# runtime (runc). DEMO_RUNTIME_CLASS overrides, e.g. DEMO_RUNTIME_CLASS= for runc on a cluster with gVisor.
if [ -z "${DEMO_RUNTIME_CLASS+set}" ]; then
  DEMO_RUNTIME_CLASS=""
  if "$KUBECTL" get runtimeclass gvisor >/dev/null 2>&1; then DEMO_RUNTIME_CLASS=gvisor; fi
fi
if [ -n "$DEMO_RUNTIME_CLASS" ]; then
  log "sandboxes run on RuntimeClass $DEMO_RUNTIME_CLASS (the cluster has it; DEMO_RUNTIME_CLASS= runs them on runc)"
else
  log "sandboxes run on the node's default runtime (no RuntimeClass gvisor on this cluster)"
fi
# Helm installs the chart's crds/ only when the CRD is missing and never upgrades it: apply it first.
run "$KUBECTL" apply --server-side --force-conflicts -f "$CHART/crds/"
run "$KUBECTL" wait --for=condition=Established --timeout=60s crd/sandboxes.sandbox-operator.io
# The operator's own namespace, held to Pod Security "restricted" like the sandbox namespace.
"$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | run "$KUBECTL" apply -f -
run "$KUBECTL" label --overwrite namespace "$NAMESPACE" pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/warn=restricted
run "$HELM" upgrade --install "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
  --set-json "sandboxNamespaces.names=[\"$SANDBOX_NAMESPACE\"]" --set "config.userNamespaces=$USER_NAMESPACES" \
  --set-string "config.defaultRuntimeClass=$DEMO_RUNTIME_CLASS" \
  --set-string "podAnnotations.sandbox-operator\.io/image-inputs=$IMAGE_INPUTS" \
  --wait --timeout 5m
DEPLOYMENT="$("$KUBECTL" -n "$NAMESPACE" get deployment -l "app.kubernetes.io/instance=$RELEASE" \
  -o jsonpath='{.items[0].metadata.name}')"
run "$KUBECTL" -n "$NAMESPACE" rollout status "deployment/$DEPLOYMENT" --timeout=5m

step "5/6 Sandbox $SANDBOX from samples/sandbox.yaml"
if "$KUBECTL" -n "$SANDBOX_NAMESPACE" get sandbox "$SANDBOX" >/dev/null 2>&1; then
  log "a Sandbox $SANDBOX is left from an earlier run: deleting it first"
  run "$KUBECTL" -n "$SANDBOX_NAMESPACE" delete sandbox "$SANDBOX" --wait --timeout=120s
fi
run "$KUBECTL" -n "$SANDBOX_NAMESPACE" apply -f "$SAMPLE"
if ! run "$KUBECTL" -n "$SANDBOX_NAMESPACE" wait --for=condition=Ready "sandbox/$SANDBOX" --timeout=180s; then
  "$KUBECTL" -n "$SANDBOX_NAMESPACE" get sandbox "$SANDBOX" -o yaml >&2 || true
  "$KUBECTL" -n "$NAMESPACE" logs "deployment/$DEPLOYMENT" --tail=50 >&2 || true
  die "the Sandbox did not become Ready"
fi
run "$KUBECTL" -n "$SANDBOX_NAMESPACE" get sandbox "$SANDBOX"

step "6/6 Run python3 -c \"print('Hello')\" in the sandbox through sandboxctl"
OUTPUT="$(run "$SANDBOXCTL" --namespace "$SANDBOX_NAMESPACE" exec "$SANDBOX" -- python3 -c "print('Hello')")"
printf '\n%s\n\n' "$OUTPUT"
KERNEL="$(run "$SANDBOXCTL" --namespace "$SANDBOX_NAMESPACE" exec "$SANDBOX" -- cat /proc/version)"
run "$KUBECTL" -n "$SANDBOX_NAMESPACE" delete sandbox "$SANDBOX" --wait --timeout=120s
[ "$OUTPUT" = "Hello" ] || die "expected 'Hello' from the sandbox, got: $OUTPUT"
log "the sandbox's kernel: $KERNEL"

log "done: the operator keeps running (release $RELEASE in $NAMESPACE, sandboxes in $SANDBOX_NAMESPACE)."
log "Try the quickstarts in README.md, or remove it: helm uninstall -n $NAMESPACE $RELEASE (docs/chart.md)"

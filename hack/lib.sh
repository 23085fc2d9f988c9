# shellcheck shell=bash
# Shared settings for the hack/ scripts. Source it; do not run it.
# Versions are pinned here and nowhere else.
# shellcheck disable=SC2034  # the settings are for the scripts that source this file
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd)"

KUBE_VERSION="v1.35.4"
ETCD_VERSION="v3.6.16"
HELM_VERSION="v3.22.0"
KUBE_ROUTER_VERSION="v2.1.0"   # the only kube-router v2 the Go module proxy serves here
PAUSE_VERSION="3.10.1"
KWOK_VERSION="v0.8.0"          # simulated nodes for the scale benchmark (hack/kwok-up.sh)
BASE_IMAGE_VERSION="bookworm-py3-1"
PAUSE_IMAGE="localhost/sandbox-operator/pause:$PAUSE_VERSION"
BASE_IMAGE="localhost/sandbox-operator/base:$BASE_IMAGE_VERSION"

# Heavy builds live outside the repo, keyed by version, so a fresh clone on this machine reuses them.
CACHE_ROOT="${SANDBOX_OPERATOR_CACHE:-$HOME/.cache/sandbox-operator}"
BIN_DIR="$CACHE_ROOT/bin/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-kr-$KUBE_ROUTER_VERSION"
# kwok has a directory of its own, so its version does not key (and invalidate) the cluster's binaries.
KWOK_BIN_DIR="$CACHE_ROOT/bin/kwok-$KWOK_VERSION"
IMAGE_CACHE="$CACHE_ROOT/images"
export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS="-mod=mod -buildvcs=false"
export GOTOOLCHAIN=local

# Runtime state of the local cluster (outside the repo: one cluster per machine).
CLUSTER_DIR="${SANDBOX_OPERATOR_CLUSTER_DIR:-/var/lib/sandbox-operator-cluster}"
PKI_DIR="$CLUSTER_DIR/pki"
RUN_DIR="$CLUSTER_DIR/run"
LOG_DIR="$CLUSTER_DIR/logs"
ADMIN_KUBECONFIG="$CLUSTER_DIR/admin.kubeconfig"

NODE_NAME="sandbox-node"
POD_CIDR="10.244.0.0/16"
NODE_POD_CIDR="10.244.0.0/24"
SERVICE_CIDR="10.96.0.0/16"
KUBERNETES_SERVICE_IP="10.96.0.1"
CNI_BRIDGE="sbxcni0"
CNI_NETWORK="sandbox-operator-pods"
POD_PIDS_LIMIT=256
# Debian packages the cluster needs on the host.
HOST_PACKAGES=(containerd runc containernetworking-plugins iptables ipset conntrack iproute2 openssl curl util-linux
  libseccomp-dev pkg-config)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The machine's own address: the first global IPv4 address of the default route's interface.
node_ip() {
  local dev
  dev="$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | head -1)"
  [ -n "$dev" ] || dev="$(ip -4 -o addr show scope global | awk '{print $2}' | head -1)"
  ip -4 -o addr show dev "$dev" scope global | awk '{split($4, a, "/"); print a[1]}' | head -1
}

# The container runtime. Default: containerd 2.x + runc built from Go modules, which run user-namespaced pods
# (hostUsers: false), so UID 1000 in each sandbox is a distinct host UID and RLIMIT_NPROC holds per sandbox.
# SANDBOX_CONTAINERD=1 uses Debian's containerd 1.6 and runc 1.1 instead (no user namespaces). docs/containerd2.md.
SANDBOX_CONTAINERD="${SANDBOX_CONTAINERD:-2}"
CONTAINERD_VERSION="v2.3.7"          # the 2.3 LTS line
RUNC_VERSION="v1.5.3"
CONTAINERD2_BIN_DIR="$CACHE_ROOT/bin/containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION"
# The cluster's containerd has a root, state and socket of its own, apart from any containerd of the machine's.
CONTAINERD_ROOT="$CLUSTER_DIR/containerd-$SANDBOX_CONTAINERD"
CONTAINERD_STATE="/run/sandbox-operator/containerd"
CONTAINERD_SOCK="/run/sandbox-operator/containerd.sock"

# gVisor: runsc and its containerd shim, built from the `go` branch of gvisor.dev/gvisor (Go module proxy), as the
# runtime handler `runsc` behind the RuntimeClass `gvisor`. Only with SANDBOX_CONTAINERD=2; SANDBOX_GVISOR=0 leaves it
# out. Platform systrap: ptrace works too but is slower, kvm hangs in this VM (docs/gvisor.md).
SANDBOX_GVISOR="${SANDBOX_GVISOR:-1}"
GVISOR_VERSION="v0.0.0-20260905035102-160fafc42237"
GVISOR_PLATFORM="${SANDBOX_GVISOR_PLATFORM:-systrap}"
# The patches build-binaries.sh applies to the pinned module, in this order (hack/tools/gvisor/<name>.patch). The
# binaries' directory is keyed by their names and content, so a changed or added patch is built anew.
GVISOR_PATCHES=(shim-oom-score exec-unreadable-nondumpable seccomp-errno-ret)
GVISOR_PATCHES_KEY="$(for patch_name in "${GVISOR_PATCHES[@]}"; do
  echo "$patch_name"; cat "$HACK_DIR/tools/gvisor/$patch_name.patch"; done | sha256sum | cut -c1-12)"
GVISOR_BIN_DIR="$CACHE_ROOT/bin/gvisor-$GVISOR_VERSION-patches-$GVISOR_PATCHES_KEY"
GVISOR_RUNTIME_CLASS="gvisor"
GVISOR_HANDLER="runsc"
GVISOR_CONFIG="$CLUSTER_DIR/runsc.toml"
GVISOR_STATE="/run/sandbox-operator/runsc"   # runsc's --root, as the shim passes it; cluster-down removes it
# The RuntimeClass's overhead.podFixed: what a sandbox costs beyond its container (the sentry and the gofer; the
# shim is charged to containerd, not to the pod). Measured standalone with systrap, an idle sandbox: 15 MiB charged
# to its memory cgroup (36 MiB PSS) and no CPU while idle (docs/gvisor.md).
GVISOR_OVERHEAD_MEMORY="32Mi"
GVISOR_OVERHEAD_CPU="10m"

# Images built offline by hack/build-images.sh (pinned tags, never `latest`); archives are cached in IMAGE_CACHE.
# (PAUSE_IMAGE, containerd's sandbox_image, and BASE_IMAGE, the FROM of our Dockerfiles, are defined above.)
IMAGE_PREFIX="localhost/sandbox-operator"
SANDBOX_IMAGE_VERSION="0.1.0"        # = PROJECT_VERSION in operator/sandbox_operator/constants.py (a unit test checks)
SANDBOX_IMAGE="$IMAGE_PREFIX/sandbox:$SANDBOX_IMAGE_VERSION"
# The optional data image: the sandbox image plus numpy, pandas and matplotlib. A tag of the sandbox repository, so
# the operator's default allow-list (sandbox:*) admits it. = SANDBOX_DATA_IMAGE in constants.py (a test checks).
SANDBOX_DATA_IMAGE="$IMAGE_PREFIX/sandbox:$SANDBOX_IMAGE_VERSION-data"
DEBIAN_SUITE="bookworm"

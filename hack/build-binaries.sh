#!/usr/bin/env bash
# Builds the pinned cluster binaries from Go modules into the machine-wide cache.
# One Go module per tool lives under hack/tools/<tool>; its go.mod/go.sum pin the whole graph.
# A second run finds every binary in place and builds nothing.
#
#   hack/build-binaries.sh [TOOL...]    TOOL: kubernetes, etcd, helm, kube-router, containerd, gvisor, kwok
#                                       (default: all but kwok, which only the scale benchmark needs)
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/image-lib.sh
source "$HACK_DIR/image-lib.sh"   # apt_install

KUBE_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"

have_all() {
  local b
  for b in "$@"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

build_kubernetes() {
  have_all "${KUBE_CMDS[@]}" && { log "kubernetes $KUBE_VERSION: cached"; return; }
  log "kubernetes $KUBE_VERSION: building ${KUBE_CMDS[*]} (first time: tens of minutes on 2 cores)"
  local minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
  local v="-X k8s.io/component-base/version" c="-X k8s.io/client-go/pkg/version"
  local build_date; build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local ldflags="-s -w"
  local key
  for key in "$v" "$c"; do
    ldflags+=" $key.gitVersion=$KUBE_VERSION $key.gitMajor=1 $key.gitMinor=$minor"
    ldflags+=" $key.gitTreeState=clean $key.buildDate=$build_date"
  done
  local pkgs=()
  for key in "${KUBE_CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$key"); done
  # One go build for every main, so the shared packages compile once.
  (cd "$HACK_DIR/tools/kubernetes" && CGO_ENABLED=0 go build -trimpath -tags selinux,notest \
    -ldflags "$ldflags" -o "$BIN_DIR/" "${pkgs[@]}")
}

build_one() { # tool-dir output-name package [ldflags]
  local dir="$1" name="$2" pkg="$3" ldflags="${4:-}"
  have_all "$name" && { log "$name: cached"; return; }
  log "$name: building $pkg"
  (cd "$HACK_DIR/tools/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN_DIR/$name" "$pkg")
}

# containerd 2.x + runc, into their own cache dir; the cluster's default runtime (SANDBOX_CONTAINERD=1 skips them
# and uses Debian's containerd 1.6). runc needs cgo + libseccomp.
build_containerd2() {
  local out="$CONTAINERD2_BIN_DIR" b missing=0
  for b in containerd containerd-shim-runc-v2 ctr runc; do [ -x "$out/$b" ] || missing=1; done
  [ "$missing" = 0 ] && { log "containerd $CONTAINERD_VERSION + runc $RUNC_VERSION: cached"; return; }
  # runc links libseccomp statically: the headers and pkg-config are needed at build time only.
  pkg-config --exists libseccomp 2>/dev/null || apt_install libseccomp-dev pkg-config
  mkdir -p "$out"
  log "containerd $CONTAINERD_VERSION + runc $RUNC_VERSION: building into $out"
  local pkg="github.com/containerd/containerd/v2"
  local ctd_ldflags="-s -w -X $pkg/version.Version=$CONTAINERD_VERSION -X $pkg/version.Package=$pkg"
  # Same tags as containerd's Makefile; CGO off drops only the btrfs snapshotter (root fs is ext4, overlayfs is used).
  (cd "$HACK_DIR/tools/containerd" &&
    CGO_ENABLED=0 go build -trimpath -tags urfave_cli_no_docs -ldflags "$ctd_ldflags" \
      -o "$out/" "$pkg/cmd/containerd" "$pkg/cmd/ctr" &&
    CGO_ENABLED=0 go build -trimpath -tags "urfave_cli_no_docs no_grpc" -ldflags "$ctd_ldflags" \
      -o "$out/containerd-shim-runc-v2" "$pkg/cmd/containerd-shim-runc-v2")
  # runc's Makefile "static" target minus libpathrs (a Rust library, not packaged here; runc falls back to its
  # pure-Go pathrs-lite). The version string comes from runc's embedded VERSION file.
  (cd "$HACK_DIR/tools/runc" &&
    CGO_ENABLED=1 go build -trimpath -buildmode=pie -tags "seccomp urfave_cli_no_docs netgo osusergo" \
      -ldflags "-s -w -X main.gitCommit=$RUNC_VERSION -linkmode external -extldflags -static-pie" \
      -o "$out/runc" github.com/opencontainers/runc)
  log "containerd 2 binaries in $out"
}

# kwok (simulated nodes for the scale benchmark) into its own cache dir, keyed by its version.
build_kwok() {
  [ -x "$KWOK_BIN_DIR/kwok" ] && { log "kwok $KWOK_VERSION: cached"; return; }
  mkdir -p "$KWOK_BIN_DIR"
  log "kwok $KWOK_VERSION: building into $KWOK_BIN_DIR"
  (cd "$HACK_DIR/tools/kwok" && CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
    -o "$KWOK_BIN_DIR/kwok" sigs.k8s.io/kwok/cmd/kwok)
}

# gVisor: runsc and containerd-shim-runsc-v1 (the `go` branch is plain Go: CGO off, no build tags; about 2 minutes
# on 2 cores with a cold build cache). Both are built from a copy of the module pinned in hack/tools/gvisor (its
# zip is checked against our go.sum, its own go.sum pins the rest) with the patches GVISOR_PATCHES applied in order:
# Go refuses `-overlay` for files in the module cache.
build_gvisor() {
  local out="$GVISOR_BIN_DIR" b missing=0
  for b in runsc containerd-shim-runsc-v1; do [ -x "$out/$b" ] || missing=1; done
  [ "$missing" = 0 ] && { log "gVisor $GVISOR_VERSION: cached"; return; }
  need_command patch patch
  mkdir -p "$out"
  log "gVisor $GVISOR_VERSION: building runsc + containerd-shim-runsc-v1 into $out"
  local tools="$HACK_DIR/tools/gvisor" src patch_name
  src="$(cd "$tools" && go mod download gvisor.dev/gvisor && go list -m -f '{{.Dir}}' gvisor.dev/gvisor)"
  [ -d "$src" ] || die "gvisor.dev/gvisor: no module directory after go mod download"
  # A fixed place, so that the Go build cache serves the next build and a failed one leaves no stray copy.
  local work="$CACHE_ROOT/go/gvisor-patched"
  rm -rf "$work"
  cp -r "$src" "$work"
  chmod -R u+w "$work"
  for patch_name in "${GVISOR_PATCHES[@]}"; do patch -s -d "$work" -p1 < "$tools/$patch_name.patch"; done
  (cd "$work" &&
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X gvisor.dev/gvisor/runsc/version.version=$GVISOR_VERSION" \
      -o "$out/runsc" ./runsc &&
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$out/containerd-shim-runsc-v1" ./shim)
  rm -rf "$work"
  log "gVisor binaries in $out"
}

CLUSTER_TOOLS=(kubernetes etcd helm kube-router containerd gvisor)
ALL_TOOLS=("${CLUSTER_TOOLS[@]}" kwok)
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=("${CLUSTER_TOOLS[@]}")
for tool in "${tools[@]}"; do
  case "$tool" in
    kubernetes) build_kubernetes ;;
    etcd) build_one etcd etcd go.etcd.io/etcd/server/v3 ;;
    helm) build_one helm helm helm.sh/helm/v3/cmd/helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    kube-router)
      build_one kube-router kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router \
        "-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$KUBE_ROUTER_VERSION" ;;
    # Only for the default runtime; SANDBOX_CONTAINERD=1 uses Debian's containerd 1.6.
    containerd) if [ "${SANDBOX_CONTAINERD:-}" = "2" ]; then build_containerd2; fi ;;
    gvisor) if [ "$SANDBOX_CONTAINERD" = 2 ] && [ "$SANDBOX_GVISOR" != 0 ]; then build_gvisor; fi ;;
    kwok) build_kwok ;;
    *) die "unknown tool $tool (choose from: ${ALL_TOOLS[*]})" ;;
  esac
done
log "binaries in $BIN_DIR"

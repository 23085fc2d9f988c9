#!/usr/bin/env bash
# Stops the local cluster and removes what it put on the machine: its processes (by recorded PID), the
# containers and their shims, pod mounts and network namespaces, the CNI bridge, the iptables chains and
# ipsets of kube-proxy, kube-router and the bridge plugin, the kubepods cgroups, and restores the sysctls.
# Safe to run at any time, also after the cluster was killed with SIGKILL. Keeps certificates and images.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/cluster-lib.sh
source "$HACK_DIR/cluster-lib.sh"

quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true
say() { $quiet || log "$@"; }

[ "$(id -u)" = 0 ] || die "cluster-down needs root"
mkdir -p "$RUN_DIR" "$LOG_DIR"

ctr_k8s() { "$(ctr_bin)" --address "$CONTAINERD_SOCK" -n k8s.io "$@"; }

# Containers outlive a killed containerd (their shims keep running), so containerd is started again, if
# needed, to stop them through its own API rather than by guessing at processes.
remove_containers() {
  local task_dir="$CONTAINERD_STATE/io.containerd.runtime.v2.task/k8s.io" started=false id
  if [ -d "$task_dir" ] && [ -n "$(ls -A "$task_dir" 2>/dev/null)" ]; then
    if ! component_pid containerd > /dev/null; then
      [ -f "$CLUSTER_DIR/containerd.toml" ] || return 0
      start_containerd
      started=true
    fi
    say "removing containers"
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$id" > /dev/null 2>&1 || true; done
    sleep 1
    for id in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$id" > /dev/null 2>&1 || true; done
  fi
  if component_pid containerd > /dev/null; then
    for id in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$id" > /dev/null 2>&1 || true; done
  fi
  $started && stop_component containerd
  return 0
}

# Shims whose containerd died before it could reap them (a SIGKILLed cluster) outlive it: every shim our
# containerd started names our socket, so exactly those are stopped, their container processes first.
remove_orphan_shims() {
  local shim child
  for shim in $(pgrep -f -- "-address $CONTAINERD_SOCK( |\$)" || true); do
    for child in $(pgrep -P "$shim" || true); do kill -KILL "$child" 2>/dev/null || true; done
    kill -KILL "$shim" 2>/dev/null || true
  done
}

unmount_below() { # prefixes...
  local prefix target
  for prefix in "$@"; do
    { findmnt -rn -o TARGET | awk -v p="$prefix" 'index($0, p) == 1' | sort -r || true; } | while read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done
  done
}

# Deletes, in IPv4 and IPv6, the rules whose text matches rule-regex and then the chains matching chain-regex.
delete_rules_and_chains() { # rule-regex chain-regex
  local tool table rule chain
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      { "$tool-save" -t "$table" 2>/dev/null | grep '^-A' | grep -E -- "$1" | sed 's/^-A //' || true; } |
        while read -r rule; do eval "$tool -w -t $table -D $rule" 2>/dev/null || true; done
      for chain in $({ "$tool-save" -t "$table" 2>/dev/null | sed -n 's/^:\([^ ]*\) .*/\1/p' | grep -E -- "$2" || true; }); do
        "$tool" -w -t "$table" -F "$chain" 2>/dev/null || true
        "$tool" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

remove_cni_iptables() {
  # Rules the bridge plugin tagged with our network name, and the per-container CNI- chains they jump to.
  delete_rules_and_chains "$CNI_NETWORK| CNI-" '^CNI-'
}

remove_kube_router_state() {
  if [ -x "$BIN_DIR/kube-router" ] && iptables-save 2>/dev/null | grep -q 'KUBE-ROUTER\|KUBE-NWPLCY\|KUBE-POD-FW'; then
    "$BIN_DIR/kube-router" --cleanup-config >> "$LOG_DIR/kube-router-cleanup.log" 2>&1 || true
  fi
}

remove_ipsets() { # what kube-router's cleanup missed; only after no iptables rule refers to them any more
  local set
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router)' || true); do ipset destroy "$set" 2>/dev/null || true; done
}

remove_kube_proxy_state() {
  if [ -x "$BIN_DIR/kube-proxy" ] && iptables-save 2>/dev/null | grep -q '^:KUBE-'; then
    "$BIN_DIR/kube-proxy" --cleanup >> "$LOG_DIR/kube-proxy-cleanup.log" 2>&1 || true
  fi
  # What kube-proxy's cleanup leaves: the kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY,
  # KUBE-IPTABLES-HINT) and anything else in Kubernetes' KUBE- namespace, the only Kubernetes on this machine.
  delete_rules_and_chains '-j KUBE-|--jump KUBE-' '^KUBE-'
}

remove_kubepods_cgroups() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    [ -d "${hierarchy}kubepods" ] || continue
    find "${hierarchy}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}

say "stopping cluster components"
for c in kwok kube-router kube-proxy kubelet; do stop_component "$c"; done
remove_containers
for c in kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do stop_component "$c"; done
remove_orphan_shims

# The kubelet and containerd bind-mount their own roots (/var/lib/kubelet, /run/netns) to share propagation.
unmount_below /var/lib/kubelet "$CONTAINERD_STATE/" /run/netns/cni- /run/netns
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}' || true); do ip netns delete "$ns" 2>/dev/null || true; done
ip link show "$CNI_BRIDGE" > /dev/null 2>&1 && ip link delete "$CNI_BRIDGE"
rm -rf "$CLUSTER_DIR/cni-ipam" "$CLUSTER_DIR/etcd" /var/lib/kubelet

remove_kube_router_state
remove_kube_proxy_state
remove_cni_iptables
remove_ipsets
remove_kubepods_cgroups
restore_sysctls
say "cluster down"

#!/usr/bin/env bash
# Stops the local cluster and removes what it put on the machine: its processes (by recorded PID), the
# containers and their shims (gVisor's sandboxes and runsc's state too), pod mounts and network namespaces, the CNI
# bridge, the iptables chains and ipsets of kube-proxy, kube-router and the bridge plugin, the kubepods cgroups, and
# restores the sysctls.
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

# runsc's delete SIGKILLs the sandbox and gofer PIDs its state files recorded, without checking that they are still
# its own: after a crash those numbers may by now belong to any process (PIDs wrap at 32768 here). So before the shims
# are asked to clean up, every recorded PID that is no longer a runsc process of ours is set to 0 (runsc skips those).
forget_dead_runsc_pids() {
  local state pid cmdline
  for state in "$GVISOR_STATE"/*/*.state; do
    [ -f "$state" ] || continue
    while read -r pid; do
      [ "$pid" != 0 ] || continue
      cmdline="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || cmdline=""
      if [[ "$cmdline" != *"--root=$GVISOR_STATE/"* ]]; then
        sed -i -E "s/\"(pid|goferPid)\":$pid([,}])/\"\1\":0\2/g" "$state"
      fi
    done < <(grep -oE '"(pid|goferPid)":[0-9]+' "$state" | cut -d: -f2 | sort -u)
  done
}

# gVisor's sandbox and gofer processes are children of its shim (a subreaper) and go with it above; whatever
# survives (a shim killed before its sandbox) still names our runsc state root on its command line. Then runsc's
# state: its container records and any netns bind mounts it left there.
remove_runsc_leftovers() {
  local pid
  for pid in $(pgrep -f -- "--root=$GVISOR_STATE/" || true); do kill -KILL "$pid" 2>/dev/null || true; done
  [ -d "$GVISOR_STATE" ] || return 0
  unmount_below "$GVISOR_STATE/"
  rm -rf "$GVISOR_STATE"
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
forget_dead_runsc_pids
remove_containers
for c in kube-scheduler kube-controller-manager kube-apiserver etcd containerd; do stop_component "$c"; done
remove_orphan_shims
remove_runsc_leftovers

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

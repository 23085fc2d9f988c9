#!/usr/bin/env bash
# Restarts one component of the local cluster, for chaos tests and for recovering a component by hand:
#   hack/cluster-restart.sh COMPONENT [--kill]
# COMPONENT is one cluster-up started (containerd, etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kube-proxy, kube-router). It is stopped by the PID in its PID file (SIGTERM, then SIGKILL after 15 s;
# --kill: SIGKILL at once, a crash), started again by the function cluster-up uses (the same flags), and the script
# returns once it is healthy: etcd /health (and the API server ready again on it), kube-apiserver /readyz,
# containerd `ctr version`, the kubelet's /healthz and the node Ready, kube-proxy's service rules.
# Only that process is signalled, never its process group: containerd's shims and the containers under them (the
# sandboxes) run on and are picked up again by the new containerd; a kubelet restart leaves the pods running.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/cluster-lib.sh
source "$HACK_DIR/cluster-lib.sh"

usage() { die "usage: $0 COMPONENT [--kill]; COMPONENT is one of: ${CLUSTER_COMPONENTS[*]}"; }

if [ $# -lt 1 ] || [ $# -gt 2 ]; then usage; fi
component="$1"
crash=false
if [ $# = 2 ]; then
  [ "$2" = --kill ] || usage
  crash=true
fi
known=false
for c in "${CLUSTER_COMPONENTS[@]}"; do [ "$c" = "$component" ] && known=true; done
$known || usage

[ "$(id -u)" = 0 ] || die "cluster-restart needs root (it signals and starts the cluster's processes)"
[ -f "$PKI_DIR/node-ip" ] || die "no local cluster here ($PKI_DIR/node-ip missing): make cluster-up"
# The address the certificates were issued for, which is the one cluster-up started everything with.
NODE_IP="$(cat "$PKI_DIR/node-ip")"

# containerd's flavour comes from SANDBOX_CONTAINERD (lib.sh); starting the other one on this state would be wrong.
containerd_binary() {
  if [ "$SANDBOX_CONTAINERD" = 2 ]; then echo "$CONTAINERD2_BIN_DIR/containerd"; else echo /usr/bin/containerd; fi
}

if old_pid="$(component_pid "$component")"; then
  if [ "$component" = containerd ]; then
    running="$(readlink -f "/proc/$old_pid/exe")"
    [ "$running" = "$(readlink -f "$(containerd_binary)")" ] || die "the running containerd is $running, but" \
      "SANDBOX_CONTAINERD=$SANDBOX_CONTAINERD would start $(containerd_binary): set it as cluster-up had it"
  fi
  if $crash; then
    log "killing $component (PID $old_pid) with SIGKILL"
    stop_component "$component" --kill
  else
    log "stopping $component (PID $old_pid)"
    stop_component "$component"
  fi
else
  log "$component was not running; starting it"
fi

case "$component" in
  containerd) start_containerd ;;
  etcd)
    start_etcd
    # The API server reconnects to etcd by itself; the restart is over once it serves again.
    if component_pid kube-apiserver > /dev/null; then
      wait_for "kube-apiserver on the restarted etcd" 120 apiserver_ready
    fi
    ;;
  kube-apiserver) start_kube_apiserver "$NODE_IP" ;;
  kube-controller-manager) start_kube_controller_manager ;;
  kube-scheduler) start_kube_scheduler ;;
  kubelet)
    start_kubelet "$NODE_IP"
    wait_for "the kubelet's /healthz" 120 kubelet_healthy
    wait_for "node Ready" 180 node_ready
    ;;
  kube-proxy) start_kube_proxy ;;
  kube-router)
    start_kube_router
    wait_for "NetworkPolicy controller" 60 iptables -w -S KUBE-ROUTER-FORWARD
    ;;
esac
log "$component restarted (PID $(component_pid "$component"))"

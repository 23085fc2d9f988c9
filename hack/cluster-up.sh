#!/usr/bin/env bash
# Brings up the project's real single-node Kubernetes cluster on this machine:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy (iptables)
# and kube-router (NetworkPolicy only), plus the RuntimeClass `gvisor` where runsc works (SANDBOX_GVISOR=0: none).
# Idempotent: a healthy cluster is left alone; whatever a killed cluster left behind is cleaned first. Every
# listener binds to loopback or the machine's own address.
set -euo pipefail
# shellcheck source=hack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=hack/cluster-lib.sh
source "$HACK_DIR/cluster-lib.sh"

[ "$(id -u)" = 0 ] || die "cluster-up needs root (it runs containerd and the kubelet)"

if cluster_healthy; then
  log "cluster already up: $ADMIN_KUBECONFIG"
  exit 0
fi

install_host_packages
bash "$HACK_DIR/build-binaries.sh"
NODE_IP="$(node_ip)"
[ -n "$NODE_IP" ] || die "cannot find this machine's own IPv4 address"

# Whatever a previous (possibly killed) cluster left behind goes first.
bash "$HACK_DIR/cluster-down.sh" --quiet

mkdir -p "$CLUSTER_DIR" "$RUN_DIR" "$LOG_DIR" "$PKI_DIR"
save_sysctls
sysctl -qw net.ipv4.ip_forward=1
sysctl -qw net.bridge.bridge-nf-call-iptables=1

generate_pki "$NODE_IP"
gvisor_preflight
write_configs "$NODE_IP"

# containerd first, so images can be imported while the control plane starts.
start_containerd
bash "$HACK_DIR/build-images.sh" build
bash "$HACK_DIR/build-images.sh" import

start_etcd
start_kube_apiserver "$NODE_IP"
start_kube_controller_manager
start_kube_scheduler
start_kubelet "$NODE_IP"
start_kube_proxy
start_kube_router

wait_for "node Ready" 180 node_ready
wait_for "NetworkPolicy controller" 60 iptables -w -S KUBE-ROUTER-FORWARD
wait_for "default ServiceAccount" 60 kubectl_admin -n default get serviceaccount default
apply_gvisor_runtime_class
log "cluster up: node $NODE_NAME ($NODE_IP) Ready; kubeconfig $ADMIN_KUBECONFIG"

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

start_component etcd "$BIN_DIR/etcd" --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
  --unsafe-no-fsync --log-level warn
wait_for "etcd" 60 curl -fsS http://127.0.0.1:2379/health

start_component kube-apiserver "$BIN_DIR/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 --bind-address="$NODE_IP" --secure-port=6443 \
  --advertise-address="$NODE_IP" --service-cluster-ip-range="$SERVICE_CIDR" \
  --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
  --client-ca-file="$PKI_DIR/ca.crt" \
  --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --profiling=false --v=1
wait_for "kube-apiserver" 120 kubectl_admin get --raw /readyz

start_component kube-controller-manager "$BIN_DIR/kube-controller-manager" \
  --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --service-account-private-key-file="$PKI_DIR/sa.key" \
  --root-ca-file="$PKI_DIR/ca.crt" --cluster-signing-cert-file="$PKI_DIR/ca.crt" \
  --cluster-signing-key-file="$PKI_DIR/ca.key" --use-service-account-credentials=true \
  --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
  --service-cluster-ip-range="$SERVICE_CIDR" --leader-elect=false --profiling=false --v=1

start_component kube-scheduler "$BIN_DIR/kube-scheduler" --config="$CLUSTER_DIR/scheduler.yaml" \
  --authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" --bind-address=127.0.0.1 --v=1

start_component kubelet "$BIN_DIR/kubelet" --config="$CLUSTER_DIR/kubelet.yaml" \
  --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" --node-ip="$NODE_IP" \
  --hostname-override="$NODE_NAME" --v=1
wait_for "node registration" 120 kubectl_admin get node "$NODE_NAME"

start_component kube-proxy "$BIN_DIR/kube-proxy" --config="$CLUSTER_DIR/kube-proxy.yaml" --v=1
# kube-router rewrites the filter table with iptables-restore; started while kube-proxy makes its first chains,
# it can drop one of them, and kube-proxy then waits for the next change to try again. So one after the other.
wait_for "kube-proxy's service rules" 60 kube_proxy_synced
# Firewall only: kube-router enforces NetworkPolicy; routing and service proxy stay off.
start_component kube-router "$BIN_DIR/kube-router" --kubeconfig="$ADMIN_KUBECONFIG" \
  --hostname-override="$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
  --service-cluster-ip-range="$SERVICE_CIDR" --health-port=0 --metrics-port=0 --v=1

wait_for "node Ready" 180 node_ready
wait_for "NetworkPolicy controller" 60 iptables -w -S KUBE-ROUTER-FORWARD
wait_for "default ServiceAccount" 60 kubectl_admin -n default get serviceaccount default
apply_gvisor_runtime_class
log "cluster up: node $NODE_NAME ($NODE_IP) Ready; kubeconfig $ADMIN_KUBECONFIG"

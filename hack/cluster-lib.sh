# shellcheck shell=bash
# Functions shared by cluster-up.sh, cluster-down.sh and cluster-restart.sh. Source lib.sh first.
set -euo pipefail
# shellcheck source=hack/image-lib.sh
source "$HACK_DIR/image-lib.sh"   # apt_install, ctr_bin

kubectl_admin() { "$BIN_DIR/kubectl" --kubeconfig "$ADMIN_KUBECONFIG" --request-timeout=10s "$@"; }

install_host_packages() {
  local missing=() p
  for p in "${HOST_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return
  apt_install "${missing[@]}"
}

# A PID file holds "PID STARTTIME" so a recycled PID is never mistaken for ours.
proc_starttime() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# A zombie (killed, not yet reaped by whoever inherited it) counts as gone.
proc_state() { awk '{print $3}' "/proc/$1/stat" 2>/dev/null; }

component_pid() { # name -> prints the PID if that process is still the one we started
  local file="$RUN_DIR/$1.pid" pid start
  [ -f "$file" ] || return 1
  read -r pid start < "$file" || return 1
  [ -n "$pid" ] && [ "$(proc_starttime "$pid")" = "$start" ] && [ "$(proc_state "$pid")" != Z ] || return 1
  echo "$pid"
}

start_component() { # name binary args...
  local name="$1"; shift
  log "starting $name"
  setsid "$@" >> "$LOG_DIR/$name.log" 2>&1 < /dev/null &
  local pid=$!
  sleep 0.2
  echo "$pid $(proc_starttime "$pid")" > "$RUN_DIR/$name.pid"
  component_pid "$name" > /dev/null || die "$name exited at once; see $LOG_DIR/$name.log"
}

wait_gone() { # name tenths-of-seconds: true once the component's process is gone, false if it is still there then
  local i
  for ((i = 0; i < $2; i++)); do
    component_pid "$1" > /dev/null || return 0
    sleep 0.1
  done
  ! component_pid "$1" > /dev/null
}

# Only the PID is signalled, never its process group: containerd's shims (and the containers under them) run on.
stop_component() { # name [--kill]: SIGTERM, then SIGKILL after 15 s; --kill: SIGKILL at once (a crash)
  local name="$1" mode="${2:-}" pid
  if pid="$(component_pid "$name")"; then
    if [ "$mode" != --kill ]; then kill -TERM "$pid" 2>/dev/null || true; fi
    if [ "$mode" = --kill ] || ! wait_gone "$name" 150; then
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$name" 100 || log "WARNING: $name (PID $pid) is still there 10 s after SIGKILL"
    fi
  fi
  rm -f "$RUN_DIR/$name.pid"
}

wait_for() { # description timeout-seconds command...
  local what="$1" timeout="$2" deadline; shift 2
  deadline=$(( $(date +%s) + timeout ))
  until "$@" > /dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "timed out after ${timeout}s waiting for $what (logs: $LOG_DIR)"
    sleep 1
  done
}

node_ready() {
  [ "$(kubectl_admin get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

kube_proxy_synced() { # the rules for the `kubernetes` Service are in place
  iptables -w -t nat -S KUBE-SERVICES 2>/dev/null | grep -q "default/kubernetes:https cluster IP"
}

# The containerd of the chosen flavour; its PATH finds the matching shim (and runc) first.
start_containerd() {
  mkdir -p "$CONTAINERD_ROOT" "$CONTAINERD_STATE"
  if [ "$SANDBOX_CONTAINERD" = 2 ]; then
    start_component containerd env PATH="$CONTAINERD2_BIN_DIR:$PATH" "$CONTAINERD2_BIN_DIR/containerd" \
      --config "$CLUSTER_DIR/containerd.toml"
  else
    start_component containerd /usr/bin/containerd --config "$CLUSTER_DIR/containerd.toml"
  fi
  wait_for "containerd" 60 "$(ctr_bin)" --address "$CONTAINERD_SOCK" version
}

# One function per component: its command line and what cluster-up waits for before going on. cluster-up calls
# them in order; cluster-restart.sh starts one again with the same flags. NODE_IP is the address the certificates
# were issued for.
start_etcd() {
  start_component etcd "$BIN_DIR/etcd" --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync --log-level warn
  wait_for "etcd" 60 etcd_healthy
}

etcd_healthy() { curl -fsS http://127.0.0.1:2379/health; }

start_kube_apiserver() { # node-ip
  start_component kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address="$1" --secure-port=6443 \
    --advertise-address="$1" --service-cluster-ip-range="$SERVICE_CIDR" \
    --tls-cert-file="$PKI_DIR/apiserver.crt" --tls-private-key-file="$PKI_DIR/apiserver.key" \
    --client-ca-file="$PKI_DIR/ca.crt" \
    --kubelet-client-certificate="$PKI_DIR/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI_DIR/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI_DIR/sa.pub" --service-account-signing-key-file="$PKI_DIR/sa.key" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_for "kube-apiserver" 120 apiserver_ready
}

apiserver_ready() { kubectl_admin get --raw /readyz; }

start_kube_controller_manager() {
  start_component kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --service-account-private-key-file="$PKI_DIR/sa.key" \
    --root-ca-file="$PKI_DIR/ca.crt" --cluster-signing-cert-file="$PKI_DIR/ca.crt" \
    --cluster-signing-key-file="$PKI_DIR/ca.key" --use-service-account-credentials=true \
    --allocate-node-cidrs=true --cluster-cidr="$POD_CIDR" --node-cidr-mask-size=24 \
    --service-cluster-ip-range="$SERVICE_CIDR" --leader-elect=false --profiling=false --v=1
}

start_kube_scheduler() {
  start_component kube-scheduler "$BIN_DIR/kube-scheduler" --config="$CLUSTER_DIR/scheduler.yaml" \
    --authentication-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" \
    --authorization-kubeconfig="$CLUSTER_DIR/scheduler.kubeconfig" --bind-address=127.0.0.1 --v=1
}

start_kubelet() { # node-ip
  start_component kubelet "$BIN_DIR/kubelet" --config="$CLUSTER_DIR/kubelet.yaml" \
    --kubeconfig="$CLUSTER_DIR/kubelet.kubeconfig" --node-ip="$1" \
    --hostname-override="$NODE_NAME" --v=1
  wait_for "node registration" 120 kubectl_admin get node "$NODE_NAME"
}

# healthzBindAddress of kubelet.yaml, default port.
kubelet_healthy() { curl -fsS http://127.0.0.1:10248/healthz; }

start_kube_proxy() {
  start_component kube-proxy "$BIN_DIR/kube-proxy" --config="$CLUSTER_DIR/kube-proxy.yaml" --v=1
  # kube-router rewrites the filter table with iptables-restore; started while kube-proxy makes its first chains,
  # it can drop one of them, and kube-proxy then waits for the next change to try again. So one after the other.
  wait_for "kube-proxy's service rules" 60 kube_proxy_synced
}

start_kube_router() {
  # Firewall only: kube-router enforces NetworkPolicy; routing and service proxy stay off.
  start_component kube-router "$BIN_DIR/kube-router" --kubeconfig="$ADMIN_KUBECONFIG" \
    --hostname-override="$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --health-port=0 --metrics-port=0 --v=1
}

CLUSTER_COMPONENTS=(containerd etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kube-router)

cluster_healthy() { # every component is the process we started, and the node is (or soon becomes) Ready
  local c deadline=$(( $(date +%s) + 90 ))
  for c in "${CLUSTER_COMPONENTS[@]}"; do component_pid "$c" > /dev/null || return 1; done
  [ -x "$BIN_DIR/kubectl" ] || return 1
  until node_ready 2>/dev/null; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 2
  done
}

# The sysctls the kubelet, kube-proxy and the bridge need; saved once, restored by cluster-down.
MANAGED_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)
SYSCTL_SAVE="$CLUSTER_DIR/sysctls.saved"

save_sysctls() {
  [ -f "$SYSCTL_SAVE" ] && return
  local k
  for k in "${MANAGED_SYSCTLS[@]}"; do
    printf '%s=%s\n' "$k" "$(sysctl -n "$k" 2>/dev/null)"
  done > "$SYSCTL_SAVE.tmp"
  mv "$SYSCTL_SAVE.tmp" "$SYSCTL_SAVE"
}

restore_sysctls() {
  [ -f "$SYSCTL_SAVE" ] || return 0
  local line
  while IFS= read -r line; do
    if [ -n "${line#*=}" ]; then sysctl -qw "$line" 2>/dev/null || true; fi
  done < "$SYSCTL_SAVE"
  rm -f "$SYSCTL_SAVE"
}

issue_cert() { # name subject extended-key-usage [subjectAltName]
  local name="$1" subject="$2" eku="$3" san="${4:-}"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } > "$PKI_DIR/$name.ext"
  openssl req -newkey rsa:2048 -nodes -sha256 -subj "$subject" -keyout "$PKI_DIR/$name.key" \
    -out "$PKI_DIR/$name.csr" 2>/dev/null
  openssl x509 -req -sha256 -days 825 -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/ca.crt" -CAkey "$PKI_DIR/ca.key" \
    -CAcreateserial -extfile "$PKI_DIR/$name.ext" -out "$PKI_DIR/$name.crt" 2>/dev/null
  rm -f "$PKI_DIR/$name.csr" "$PKI_DIR/$name.ext"
}

generate_pki() { # node-ip
  local ip="$1"
  if [ -f "$PKI_DIR/ca.crt" ] && [ "$(cat "$PKI_DIR/node-ip" 2>/dev/null)" = "$ip" ]; then return; fi
  log "generating certificates for $ip"
  rm -rf "$PKI_DIR"; mkdir -p "$PKI_DIR"; chmod 700 "$PKI_DIR"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=sandbox-operator-local-ca" \
    -keyout "$PKI_DIR/ca.key" -out "$PKI_DIR/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  issue_cert apiserver "/CN=kube-apiserver" serverAuth \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$ip,IP:$KUBERNETES_SERVICE_IP"
  issue_cert admin "/O=system:masters/CN=kubernetes-admin" clientAuth
  issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue_cert scheduler "/CN=system:kube-scheduler" clientAuth
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" clientAuth
  issue_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  openssl genrsa -out "$PKI_DIR/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI_DIR/sa.key" -pubout -out "$PKI_DIR/sa.pub" 2>/dev/null
  echo "$ip" > "$PKI_DIR/node-ip"
}

write_kubeconfig() { # file user-cert-name server
  cat > "$1" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: sandbox-operator-local
  cluster:
    server: $3
    certificate-authority: $PKI_DIR/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI_DIR/$2.crt
    client-key: $PKI_DIR/$2.key
contexts:
- name: sandbox-operator-local
  context: {cluster: sandbox-operator-local, user: $2}
current-context: sandbox-operator-local
KUBECONFIG
  chmod 600 "$1"
}

write_configs() { # node-ip
  local ip="$1" server="https://$1:6443" c
  write_kubeconfig "$ADMIN_KUBECONFIG" admin "$server"
  for c in controller-manager scheduler kubelet kube-proxy; do
    write_kubeconfig "$CLUSTER_DIR/$c.kubeconfig" "$c" "$server"
  done
  mkdir -p "$CLUSTER_DIR/cni"
  cat > "$CLUSTER_DIR/cni/10-$CNI_NETWORK.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "$CNI_NETWORK",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$CLUSTER_DIR/cni-ipam",
        "ranges": [[{"subnet": "$NODE_POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
CNI
  write_containerd_config
  # Pods never resolve names outside the machine: their resolver is the pod's own loopback, where nothing answers.
  echo "nameserver 127.0.0.1" > "$CLUSTER_DIR/resolv.conf"
  cat > "$CLUSTER_DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI_DIR/ca.crt}
authorization: {mode: Webhook}
clusterDomain: cluster.local
resolvConf: $CLUSTER_DIR/resolv.conf
# A node-wide cap on processes per pod: a fork bomb in one sandbox cannot starve the others.
podPidsLimit: $POD_PIDS_LIMIT
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}
# Emptydir usage is measured this often (default 1m); a sandbox writing past its ephemeral-storage limit is evicted
# within about this period plus the eviction manager's 10 s pass. Each pass walks every sandbox's small emptyDirs.
volumeStatsAggPeriod: 10s
# Preloaded images cannot be pulled again, so image garbage collection stays off.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
maxPods: 110
YAML
  cat > "$CLUSTER_DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
nodePortAddresses: ["$ip/32"]
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  cat > "$CLUSTER_DIR/scheduler.yaml" <<YAML
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection: {kubeconfig: $CLUSTER_DIR/scheduler.kubeconfig}
leaderElection: {leaderElect: false}
YAML
}

unmount_below() { # prefixes...
  local prefix target
  for prefix in "$@"; do
    { findmnt -rn -o TARGET | awk -v p="$prefix" 'index($0, p) == 1' | sort -r || true; } | while read -r target; do
      umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null || true
    done
  done
}

# gVisor is wired in when asked for (SANDBOX_GVISOR, containerd 2) and when runsc runs a container on this machine
# with the chosen platform; otherwise the cluster comes up without it, and without the RuntimeClass.
gvisor_wanted() { [ "$SANDBOX_CONTAINERD" = 2 ] && [ "$SANDBOX_GVISOR" != 0 ]; }

GVISOR_READY=false
gvisor_preflight() { # sets GVISOR_READY
  GVISOR_READY=false
  gvisor_wanted || return 0
  local root out
  root="$(mktemp -d /tmp/sandbox-operator-runsc-preflight.XXXXXX)"
  # TMPDIR: `runsc do` makes its bundle (and a netns mount) there, left behind if it is killed. setsid: a killed
  # runsc must not take this script's process group with it.
  if out="$(TMPDIR="$root" setsid timeout -k 5 30 "$GVISOR_BIN_DIR/runsc" --root "$root/state" --network=none \
      --platform="$GVISOR_PLATFORM" "do" /bin/true 2>&1 < /dev/null)"; then
    GVISOR_READY=true
  else
    log "WARNING: runsc --platform=$GVISOR_PLATFORM cannot run a container here; no gVisor runtime: ${out:0:300}"
  fi
  unmount_below "$root/"
  rm -rf "$root"
}

# The shim's own settings (ConfigPath of the runtime handler): which runsc, its state root, and runsc's flags.
# oci-seccomp: runsc ignores the pods' seccomp profile unless told; with it the RuntimeDefault profile is enforced
# inside the sandbox too, so a syscall refused under runc is refused under gVisor. cgroup v1 needs no flag: runsc
# places the sandbox in the pod's cgroups (cgroupfs driver, as the kubelet). SANDBOX_GVISOR_DEBUG=1: runsc and shim
# logs per container under $LOG_DIR/runsc.
write_runsc_config() {
  {
    echo "# Written by hack/cluster-up.sh for the local cluster's runtime handler $GVISOR_HANDLER."
    echo "binary_name = \"$GVISOR_BIN_DIR/runsc\""
    echo "root = \"$GVISOR_STATE\""
    if [ "${SANDBOX_GVISOR_DEBUG:-0}" = 1 ]; then
      echo "log_level = \"debug\""
      echo "log_path = \"$LOG_DIR/runsc/%ID%/shim.log\""
    fi
    echo "[runsc_config]"
    echo "  platform = \"$GVISOR_PLATFORM\""
    echo "  oci-seccomp = \"true\""
    if [ "${SANDBOX_GVISOR_DEBUG:-0}" = 1 ]; then
      echo "  debug = \"true\""
      echo "  debug-log = \"$LOG_DIR/runsc/%ID%/\""
    fi
  } > "$GVISOR_CONFIG"
}

# The runtime handler's section of containerd 2's config (empty without gVisor). runtime_path names the shim, so
# containerd's PATH stays as it is.
gvisor_runtime_toml() {
  $GVISOR_READY || return 0
  cat <<TOML
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.$GVISOR_HANDLER]
        runtime_type = "io.containerd.runsc.v1"
        runtime_path = "$GVISOR_BIN_DIR/containerd-shim-runsc-v1"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.$GVISOR_HANDLER.options]
          TypeUrl = "io.containerd.runsc.v1.options"
          ConfigPath = "$GVISOR_CONFIG"
TOML
}

# The RuntimeClass that selects the handler; the overhead is added to every such pod's requests and limits.
apply_gvisor_runtime_class() {
  $GVISOR_READY || return 0
  kubectl_admin apply -f - > /dev/null <<YAML
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: $GVISOR_RUNTIME_CLASS
handler: $GVISOR_HANDLER
overhead:
  podFixed: {memory: "$GVISOR_OVERHEAD_MEMORY", cpu: "$GVISOR_OVERHEAD_CPU"}
YAML
  log "RuntimeClass $GVISOR_RUNTIME_CLASS (handler $GVISOR_HANDLER, runsc --platform=$GVISOR_PLATFORM)"
}

# Both flavours: cgroupfs (the kubelet's driver), Debian's CNI plugins, our pause image, streaming on loopback.
# disable_apparmor: this kernel has none. restrict_oom_score_adj: the VM withholds CAP_SYS_RESOURCE even from root,
# so nothing may go below OOM score 0; without it runc fails to apply the kubelet's -998 (pause) and -997
# (Guaranteed pods) with "can't get final child's PID from pipe".
write_containerd_config() {
  if [ "$SANDBOX_CONTAINERD" = 2 ]; then
    if $GVISOR_READY; then write_runsc_config; else rm -f "$GVISOR_CONFIG"; fi
    cat > "$CLUSTER_DIR/containerd.toml" <<TOML
version = 3
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins]
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.runtime']
    # The CRI stats collector asks every shim for its cgroup metrics this often (default 1s): with a hundred idle
    # sandboxes that was a third of a core. The kubelet reads stats every 10 s (eviction manager, summary API).
    stats_collect_period = "10s"
    disable_apparmor = true
    restrict_oom_score_adj = true
    enable_unprivileged_ports = false
    enable_unprivileged_icmp = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "$CONTAINERD2_BIN_DIR/runc"
          SystemdCgroup = false
$(gvisor_runtime_toml)
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$CLUSTER_DIR/cni"
      max_conf_num = 1
  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = "127.0.0.1"
TOML
  else
    cat > "$CLUSTER_DIR/containerd.toml" <<TOML
version = 2
root = "$CONTAINERD_ROOT"
state = "$CONTAINERD_STATE"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  disable_apparmor = true
  enable_unprivileged_ports = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$CLUSTER_DIR/cni"
    max_conf_num = 1
TOML
  fi
}

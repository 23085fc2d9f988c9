"""Smoke tests of the cluster itself: every other test is only as trustworthy as these.

Each test makes its own namespace and pods from the project's base image (preloaded, never pulled).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.kit import Cluster, hack_var, or_none_if_missing, wait_until

EXPECTED_VERSION = "v1.35.4"
BASE_IMAGE = hack_var("BASE_IMAGE")
LISTEN_PORT = 8080

# A tiny TCP echo server and client in the base image's python3: no other tools needed in the pod.
SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    f"s.bind(('0.0.0.0', {LISTEN_PORT})); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept(); c.sendall(b'pong'); c.close()\n"
)
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n"
    "    print('connected')\n"
    "except OSError as e:\n"
    "    print('failed', type(e).__name__); sys.exit(1)\n"
)


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """Without Pod Security labels: these pods are plain ones (one test adds "restricted" itself)."""
    name = cluster.create_namespace("smoke", restricted=False)
    core = client.CoreV1Api(cluster.api)
    wait_until(lambda: or_none_if_missing(core.read_namespaced_service_account, "default", name), 60,
               message="the default ServiceAccount")
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


def run_pod(cluster: Cluster, namespace: str, name: str, script: str, labels: dict[str, str]) -> str:
    """Starts a pod running `python3 -c script` and returns its IP once it runs."""
    core = client.CoreV1Api(cluster.api)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1PodSpec(
            restart_policy="Never",
            termination_grace_period_seconds=0,
            automount_service_account_token=False,
            containers=[client.V1Container(
                name="main", image=BASE_IMAGE, image_pull_policy="Never",
                command=["python3", "-c", script],
            )],
        ),
    )
    core.create_namespaced_pod(namespace, pod)

    def running() -> str | None:
        p = core.read_namespaced_pod(name, namespace)
        assert p.status.phase not in ("Failed", "Succeeded"), f"pod {name} ended: {p.status}"
        return p.status.pod_ip if p.status.phase == "Running" and p.status.pod_ip else None

    return wait_until(running, 120, message=f"pod {name} to run")


def exec_python(
    cluster: Cluster, namespace: str, pod: str, script: str, *args: str,
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("-n", namespace, "exec", pod, "--", "python3", "-c", script, *args, check=False)


def can_connect(cluster: Cluster, namespace: str, pod: str, ip: str, port: int) -> bool:
    out = exec_python(cluster, namespace, pod, CONNECT, ip, str(port))
    assert out.stdout.startswith(("connected", "failed")), f"exec itself failed: {out.stderr}"
    return out.returncode == 0


def test_node_is_ready_and_reports_pinned_version(cluster: Cluster) -> None:
    nodes = client.CoreV1Api(cluster.api).list_node().items
    assert len(nodes) == 1
    node = nodes[0]
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.node_info.kubelet_version == EXPECTED_VERSION
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert server["serverVersion"]["gitVersion"] == EXPECTED_VERSION
    assert server["clientVersion"]["gitVersion"] == EXPECTED_VERSION


def test_pod_from_base_image_runs_and_exec_returns_output(cluster: Cluster, namespace: str) -> None:
    run_pod(cluster, namespace, "hello", "import time; time.sleep(3600)", {"app": "hello"})
    out = cluster.kubectl("-n", namespace, "exec", "hello", "--", "python3", "-c", "print(6 * 7)")
    assert out.stdout.strip() == "42"


def test_deny_all_network_policy_blocks_both_directions_and_the_api_server(
    cluster: Cluster, namespace: str,
) -> None:
    ip_a = run_pod(cluster, namespace, "pod-a", SERVER, {"app": "a"})
    ip_b = run_pod(cluster, namespace, "pod-b", SERVER, {"app": "b"})
    assert can_connect(cluster, namespace, "pod-a", ip_b, LISTEN_PORT)
    assert can_connect(cluster, namespace, "pod-b", ip_a, LISTEN_PORT)
    assert can_connect(cluster, namespace, "pod-a", "10.96.0.1", 443)

    deny_all = client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny-all"),
        spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(), policy_types=["Ingress", "Egress"]),
    )
    client.NetworkingV1Api(cluster.api).create_namespaced_network_policy(namespace, deny_all)

    # kube-router programs the policy asynchronously: wait for it to bite, then check every direction.
    wait_until(lambda: not can_connect(cluster, namespace, "pod-a", ip_b, LISTEN_PORT), 60, message="the policy")
    assert not can_connect(cluster, namespace, "pod-b", ip_a, LISTEN_PORT)
    assert not can_connect(cluster, namespace, "pod-a", "10.96.0.1", 443)
    node_ip = client.CoreV1Api(cluster.api).list_node().items[0].status.addresses[0].address
    assert not can_connect(cluster, namespace, "pod-a", node_ip, 6443)


def test_restricted_namespace_rejects_privileged_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    manifest = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
        "spec": {"containers": [{
            "name": "main", "image": BASE_IMAGE, "imagePullPolicy": "Never",
            "command": ["sleep", "3600"], "securityContext": {"privileged": True},
        }]},
    }
    out = cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert out.returncode != 0
    assert "violates PodSecurity" in out.stderr
    assert "privileged" in out.stderr


def test_kubernetes_service_reachable_from_pod_without_policy(cluster: Cluster, namespace: str) -> None:
    run_pod(cluster, namespace, "client", "import time; time.sleep(3600)", {"app": "client"})
    script = (
        "import ssl, urllib.request, urllib.error\n"
        "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
        "try:\n"
        "    r = urllib.request.urlopen('https://10.96.0.1/livez', context=ctx, timeout=5); print(r.status)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code)\n"
    )
    out = exec_python(cluster, namespace, "client", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("200", "401", "403")


CLUSTER_RANGES = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("10.96.0.0/16"))


def _allowed_address(address: str, node_ips: set[str]) -> bool:
    """Loopback, the machine's own address, or the cluster's pod and service ranges (the bridge is in the former)."""
    ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    return ip.is_loopback or str(ip) in node_ips or any(ip in net for net in CLUSTER_RANGES)


def _cluster_pids() -> set[int]:
    return {int(p.read_text().split()[0]) for p in Path(hack_var("RUN_DIR")).glob("*.pid")}


def test_components_listen_and_connect_only_locally(cluster: Cluster) -> None:
    node_ips = {a.address for n in client.CoreV1Api(cluster.api).list_node().items
                for a in n.status.addresses if a.type == "InternalIP"}
    pids = _cluster_pids()
    assert pids, "no component PIDs recorded"
    sockets = subprocess.run(["ss", "-Htunap"], check=True, capture_output=True, text=True).stdout.splitlines()
    checked = 0
    for line in sockets:
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if not owners & pids:
            continue
        fields = line.split()
        state, local, peer = fields[1], fields[4], fields[5]
        local_host = local.rsplit(":", 1)[0]
        peer_host = peer.rsplit(":", 1)[0]
        if state in ("LISTEN", "UNCONN"):
            assert local_host not in ("*", "0.0.0.0", "[::]"), f"listens on every address: {line}"
            assert _allowed_address(local_host, node_ips), f"listens outside the machine: {line}"
        else:
            assert _allowed_address(peer_host, node_ips), f"talks to an outside address: {line}"
        checked += 1
    assert checked > 5, "found too few sockets of the cluster to judge"


def test_no_image_was_pulled_and_pods_resolve_nothing_outside(cluster: Cluster, namespace: str) -> None:
    run_pod(cluster, namespace, "dns", "import time; time.sleep(3600)", {"app": "dns"})
    events = client.CoreV1Api(cluster.api).list_event_for_all_namespaces().items
    pulls = [e for e in events if e.reason in ("Pulling", "Failed") and "pull" in (e.message or "").lower()]
    assert pulls == []
    resolv = cluster.kubectl("-n", namespace, "exec", "dns", "--", "cat", "/etc/resolv.conf").stdout
    servers = [line.split()[1] for line in resolv.splitlines() if line.startswith("nameserver")]
    assert servers and all(ipaddress.ip_address(s).is_loopback for s in servers), resolv
    lookup = exec_python(cluster, namespace, "dns", "import socket; socket.getaddrinfo('example.org', 80)")
    assert lookup.returncode != 0


def test_user_namespaced_pods_get_distinct_host_uids(cluster: Cluster, namespace: str) -> None:
    """hostUsers: false works, so UID 1000 in each sandbox is its own host UID (and RLIMIT_NPROC is per sandbox)."""
    core = client.CoreV1Api(cluster.api)
    host_uids = []
    for name in ("userns-a", "userns-b"):
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1PodSpec(
                host_users=False, restart_policy="Never", termination_grace_period_seconds=0,
                automount_service_account_token=False,
                security_context=client.V1PodSecurityContext(run_as_user=1000, run_as_group=1000),
                containers=[client.V1Container(name="main", image=BASE_IMAGE, image_pull_policy="Never",
                                               command=["python3", "-c", "import time; time.sleep(3600)"])],
            ),
        )
        core.create_namespaced_pod(namespace, pod)
        wait_until(lambda n=name: core.read_namespaced_pod(n, namespace).status.phase == "Running", 120,
                   message=f"pod {name} running")
        script = "import json, os; print(json.dumps([os.getuid(), open('/proc/self/uid_map').read().split()]))"
        uid, (container_start, host_start, _length) = json.loads(
            cluster.kubectl("-n", namespace, "exec", name, "--", "python3", "-c", script).stdout)
        assert uid == 1000
        assert container_start == "0" and int(host_start) >= 65536, "not in a user namespace"
        host_uids.append(int(host_start) + uid)
    assert host_uids[0] != host_uids[1]

"""The RuntimeClass `gvisor` of the local cluster: a hardened pod on it runs on gVisor's kernel, with the same
hardening as under runc (docs/gvisor.md). Skipped when the cluster was brought up with SANDBOX_GVISOR=0."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.kit import Cluster, hack_var, or_none_if_missing, wait_until

BASE_IMAGE = hack_var("BASE_IMAGE")
RUNTIME_CLASS = hack_var("GVISOR_RUNTIME_CLASS")

pytestmark = pytest.mark.skipif(hack_var("SANDBOX_GVISOR") == "0", reason="SANDBOX_GVISOR=0: no gVisor runtime")

# What the pod reports about itself: its kernel, its user, and what the hardening refuses it.
PROBE = """
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
def write_errno(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return 0
    except OSError as e:
        return e.errno
unshare = libc.syscall(272, 0x10000000)  # unshare(CLONE_NEWUSER): RuntimeDefault refuses it without CAP_SYS_ADMIN
print(json.dumps({
    "version": open("/proc/version").read(),
    "uid": os.getuid(),
    "root_write": errno.errorcode.get(write_errno("/probe"), 0),
    "root_options": [line.split()[3].split(",") for line in open("/proc/self/mounts") if line.split()[1] == "/"][-1],
    "emptydir_write": write_errno("/work/probe"),
    "unshare": errno.errorcode.get(ctypes.get_errno(), 0) if unshare else "allowed",
    "cap_eff": [line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff")][0],
}))
"""


def gvisor_pod(name: str) -> client.V1Pod:
    """A pod with the sandbox pods' hardening (non-root, read-only root, no capabilities, RuntimeDefault seccomp,
    an emptyDir), on the RuntimeClass gvisor."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            runtime_class_name=RUNTIME_CLASS, restart_policy="Never", termination_grace_period_seconds=0,
            automount_service_account_token=False,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True, run_as_user=1000, run_as_group=1000, fs_group=1000,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")),
            containers=[client.V1Container(
                name="main", image=BASE_IMAGE, image_pull_policy="Never",
                command=["python3", "-c", "import time; time.sleep(3600)"],
                security_context=client.V1SecurityContext(
                    allow_privilege_escalation=False, read_only_root_filesystem=True,
                    capabilities=client.V1Capabilities(drop=["ALL"])),
                resources=client.V1ResourceRequirements(limits={"cpu": "500m", "memory": "256Mi"}),
                volume_mounts=[client.V1VolumeMount(name="work", mount_path="/work")],
            )],
            volumes=[client.V1Volume(name="work", empty_dir=client.V1EmptyDirVolumeSource(size_limit="64Mi"))],
        ),
    )


def start_gvisor_pod(cluster: Cluster, namespace: str, name: str) -> client.V1Pod:
    core = client.CoreV1Api(cluster.api)
    core.create_namespaced_pod(namespace, gvisor_pod(name))

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        assert pod.status.phase not in ("Failed", "Succeeded"), f"pod {name} ended: {pod.status}"
        return pod if pod.status.phase == "Running" else None

    return wait_until(running, 120, message=f"gVisor pod {name} to run")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = cluster.create_namespace("gvisor")
    core = client.CoreV1Api(cluster.api)
    wait_until(lambda: or_none_if_missing(core.read_namespaced_service_account, "default", name), 60,
               message="the default ServiceAccount")
    yield name
    core.delete_namespace(name, grace_period_seconds=0)


def test_runtime_class_gvisor_selects_runsc_with_an_overhead(cluster: Cluster) -> None:
    runtime_class = client.NodeV1Api(cluster.api).read_runtime_class(RUNTIME_CLASS)
    assert runtime_class.handler == hack_var("GVISOR_HANDLER")
    assert runtime_class.overhead.pod_fixed == {"memory": hack_var("GVISOR_OVERHEAD_MEMORY"),
                                                "cpu": hack_var("GVISOR_OVERHEAD_CPU")}


def test_hardened_pod_runs_on_gvisors_kernel_with_the_same_refusals(cluster: Cluster, namespace: str) -> None:
    pod = start_gvisor_pod(cluster, namespace, "probe")
    assert pod.spec.overhead == {"memory": hack_var("GVISOR_OVERHEAD_MEMORY"), "cpu": hack_var("GVISOR_OVERHEAD_CPU")}
    report = json.loads(cluster.kubectl("-n", namespace, "exec", "probe", "--", "python3", "-c", PROBE).stdout)
    assert "gvisor" in report["version"].lower(), report["version"]
    assert report["uid"] == 1000
    # gVisor checks the directory's permission before the mount's read-only flag (runc's kernel the other way round).
    assert report["root_write"] in ("EROFS", "EACCES") and "ro" in report["root_options"], report
    assert report["emptydir_write"] == 0
    assert report["cap_eff"] == "0000000000000000"
    # runsc ignores the seccomp profile unless the runtime handler sets oci-seccomp: gVisor's kernel itself lets
    # an unprivileged process make a user namespace.
    assert report["unshare"] == "EPERM"

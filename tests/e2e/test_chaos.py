"""Chaos on the project's own cluster: the Helm-installed operator (the chart's defaults: two replicas, one leading
through a Lease) and the SDK through a disruption each.

Each test runs a burst of 30 Sandbox creates plus commands (tests/kit/chaos.py) and disrupts the cluster in its
middle: the leading operator SIGKILLed, kube-apiserver, etcd, containerd (while sandboxes run: a process started
before it must survive) and the kubelet restarted by hack/cluster-restart.sh. Afterwards every Sandbox is Ready or
Failed with a documented reason, has one pod and one NetworkPolicy, nothing is orphaned, deleting them all leaves
nothing held by a finalizer, and every command the client was told succeeded left its id in the sandbox.

Disruptive (they run last) and only on the local cluster: they signal this machine's processes. One release for the
module; each test waits for a ready leader first and leaves its sandbox namespace empty.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk import SandboxError, SandboxManager
from tests.kit import Cluster, Kube, make_var, wait_until
from tests.kit.chaos import (
    Burst,
    container_ids,
    delete_all_and_wait,
    kill_leader,
    restart_component,
    wait_for_leader,
    wait_for_new_leader,
)
from tests.kit.helm import Release, installed_release

pytestmark = [pytest.mark.disruptive, pytest.mark.timeout(1800)]  # the first includes the image build

SLEEPER_PID_FILE = f"{constants.TMP_DIR}/chaos-sleeper.pid"


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    if Path(cluster.kubeconfig).resolve() != Path(make_var("kubeconfig")).resolve():
        pytest.skip("chaos restarts this machine's cluster processes: only the local cluster (make cluster-up)")
    with installed_release(cluster, "e2e-chaos") as rel:
        yield rel


@pytest.fixture(scope="module")
def manager(cluster: Cluster, release: Release) -> Iterator[SandboxManager]:
    with SandboxManager(release.sandbox_namespace, kubeconfig=cluster.kubeconfig) as m:
        yield m


@pytest.fixture
def kube(cluster: Cluster, release: Release) -> Iterator[Kube]:
    """A ready leader before the test; afterwards the sandbox namespace emptied even when the test failed, so the
    next one starts clean."""
    wait_for_leader(release, timeout=180)
    kube = Kube(cluster)
    yield kube
    with contextlib.suppress(Exception):
        delete_all_and_wait(kube, release.sandbox_namespace)


def test_leader_sigkilled(release: Release, manager: SandboxManager, kube: Kube) -> None:
    def disrupt() -> None:
        wait_for_new_leader(release, kill_leader(release))

    burst = Burst(manager, kube, "op")
    burst.run(disrupt)
    burst.check()


def test_kube_apiserver_restarted(release: Release, manager: SandboxManager, kube: Kube) -> None:
    burst = Burst(manager, kube, "api")
    burst.run(lambda: restart_component("kube-apiserver"))
    burst.check()


def test_etcd_restarted(release: Release, manager: SandboxManager, kube: Kube) -> None:
    burst = Burst(manager, kube, "etcd")
    burst.run(lambda: restart_component("etcd"))
    burst.check()


def test_containerd_restarted_while_sandboxes_run(release: Release, manager: SandboxManager, kube: Kube) -> None:
    """The sandboxes' processes run on through containerd's restart (their shims are not its children), the
    containers are not restarted, and commands work again once the kubelet has reconnected."""
    survivor = manager.create("ctrd-survivor")
    sleeper = survivor.start(f"sleep 600 & echo $! > {SLEEPER_PID_FILE}; wait", timeout=290)

    def sleeper_pid() -> str | None:
        result = survivor.run(f"cat {SLEEPER_PID_FILE}")
        if not sleeper.running:
            raise AssertionError(f"the background command ended: {sleeper.wait()}")
        return result.stdout.strip() if result.exit_code == 0 and result.stdout.strip() else None

    pid = wait_until(sleeper_pid, 30, interval=0.5, message="the background sleep's pid file")
    pod_before = kube.pod(release.sandbox_namespace, survivor.pod_name)
    assert pod_before is not None

    burst = Burst(manager, kube, "ctrd")
    burst.run(lambda: restart_component("containerd"))

    def sleeper_alive() -> bool | None:
        try:
            result = survivor.run(f"tr '\\0' ' ' < /proc/{pid}/cmdline", timeout=20)
        except SandboxError:
            return None  # the kubelet may still be reconnecting to containerd
        return result.exit_code == 0 and result.stdout.strip() == "sleep 600"

    wait_until(sleeper_alive, 120, interval=2, message=f"the sleep (pid {pid}) started before the restart, alive")
    pod_after = kube.pod(release.sandbox_namespace, survivor.pod_name)
    assert pod_after is not None and pod_after["metadata"]["uid"] == pod_before["metadata"]["uid"]
    assert container_ids(pod_after) == container_ids(pod_before), "the sandbox's container was restarted"
    burst.check()


def test_kubelet_restarted(release: Release, manager: SandboxManager, kube: Kube) -> None:
    burst = Burst(manager, kube, "kubelet")
    burst.run(lambda: restart_component("kubelet"))
    burst.check()

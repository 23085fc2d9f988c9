"""The chart's highly available operator on the real cluster: two replicas, one leader through a Lease.

One release with the chart's defaults (2 replicas, leader election on): exactly one pod holds the Lease and the
other waits Ready; the leader's process SIGKILLed, a Sandbox created right after is served by the new leader
(the figure is printed; the bound asserted is generous, the goal is measured by bench/bench_failover.py); a
rolling upgrade during a steady stream of creates loses none, and leaves only the new revision's pods.

The test kills the process from the node itself: it runs as root on the node of the project's cluster, where the
container's processes are host processes (in their own PID namespace, but listed in the host's /proc).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.sdk import SandboxError, SandboxManager
from tests.kit import Cluster, wait_until
from tests.kit.ha import leader_and_standby, operator_pids, owned_by, pod_metric, restarts
from tests.kit.helm import CHART, READY_TIMEOUT, Release, installed_release

FAILOVER_BOUND = 60.0  # generous: the 15 s goal is measured (printed here, benchmarked), not asserted
CREATE_INTERVAL = 1.0
ROLLOUT_ANNOTATION = "sandbox-operator.io/rollout"

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart's defaults: two replicas electing a leader."""
    with installed_release(cluster, "e2e-ha") as rel:
        yield rel


def leader_gauge(release: Release, pod: str) -> float | None:
    return pod_metric(release, pod, "sandbox_operator_leader").get("")


def sandbox_body(release: Release, name: str) -> dict[str, Any]:
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": name, "namespace": release.sandbox_namespace},
            "spec": {"resources": {"cpu": "500m", "memory": "128Mi"}}}


def create_sandbox(release: Release, name: str) -> None:
    client.CustomObjectsApi(release.cluster.api).create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, release.sandbox_namespace, constants.PLURAL, sandbox_body(release, name))


def sandbox_pod_exists(release: Release, name: str) -> bool:
    try:
        client.CoreV1Api(release.cluster.api).read_namespaced_pod(constants.pod_name(name), release.sandbox_namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


# --- one leader ---------------------------------------------------------------------------------------------

def test_one_replica_leads_and_the_other_waits_ready(release: Release) -> None:
    leader, standby = wait_until(lambda: leader_and_standby(release), 180, interval=1,
                                 message=lambda: f"two Ready pods, one holding the Lease ({release.lease_holder()})")
    lease = release.kubectl_json("-n", release.namespace, "get", "lease", release.fullname)
    assert lease["spec"]["holderIdentity"] == leader["metadata"]["name"]
    budget = release.kubectl_json("-n", release.namespace, "get", "poddisruptionbudget", release.fullname)
    assert budget["spec"]["minAvailable"] == 1
    # Each pod's own gauge: 1 on the leader, 0 on the standby.
    wait_until(lambda: leader_gauge(release, leader["metadata"]["name"]) == 1.0, 60, interval=1,
               message="sandbox_operator_leader 1.0 on the leader")
    assert leader_gauge(release, standby["metadata"]["name"]) == 0.0
    # The leader serves.
    release.create_sandbox("led")
    release.wait_ready("led")
    release.delete_sandbox("led")


# --- failover -----------------------------------------------------------------------------------------------

def test_leader_sigkilled_a_standby_serves_the_next_create(release: Release) -> None:
    leader, _standby = wait_until(lambda: leader_and_standby(release), 180, interval=1,
                                  message="two Ready pods, one holding the Lease")
    leader_name = leader["metadata"]["name"]
    pids = operator_pids(leader_name)
    assert pids, (f"no process of {leader_name} in /proc: the test must run as root on the cluster's node "
                  f"(uid {os.geteuid()})")
    name = f"after-kill-{uuid.uuid4().hex[:4]}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    create_sandbox(release, name)
    wait_until(lambda: sandbox_pod_exists(release, name), FAILOVER_BOUND, interval=0.1,
               message=lambda: f"the pod of {name} after the leader was killed\n{release.operator_log()[-3000:]}")
    to_pod = time.monotonic() - killed
    release.wait_ready(name)
    to_ready = time.monotonic() - killed
    print(f"\nfailover: leader {leader_name} SIGKILLed; the next Sandbox's pod after {to_pod:.1f} s, "
          f"Ready after {to_ready:.1f} s")
    assert to_ready < FAILOVER_BOUND, f"Ready {to_ready:.1f} s after the kill"

    # Served by a new holder, or by the same pod's restarted container that took the Lease back.
    holder = wait_until(release.lease_holder, 30, interval=0.5, message="a Lease holder")
    if holder == leader_name:
        pod = release.kubectl_json("-n", release.namespace, "get", "pod", leader_name)
        assert restarts(pod) > restarts(leader), "the Lease holder is the killed pod, but it never restarted"
    # Back to a leader and a Ready standby; the Sandbox has one pod and one policy.
    wait_until(lambda: leader_and_standby(release), 180, interval=1, message="a leader and a standby again")
    sandbox = release.kubectl_json("-n", release.sandbox_namespace, "get", "sandbox", name)
    uid = sandbox["metadata"]["uid"]
    pods = release.kubectl_json("-n", release.sandbox_namespace, "get", "pods")["items"]
    policies = release.kubectl_json("-n", release.sandbox_namespace, "get", "networkpolicies")["items"]
    assert owned_by(pods, uid) == [constants.pod_name(name)]
    assert owned_by(policies, uid) == [constants.network_policy_name(name)]
    release.delete_sandbox(name)


# --- rolling upgrade ----------------------------------------------------------------------------------------

class SteadyCreates:
    """Creates one Sandbox every CREATE_INTERVAL seconds until stopped, each through the SDK in a thread of its own
    (``create`` waits for Ready, and says so when no operator picks its Sandbox up: an upgrade must never look like
    no operator at all); a failed create is kept."""

    def __init__(self, release: Release, prefix: str) -> None:
        self.prefix = prefix
        self.manager = SandboxManager(release.sandbox_namespace, kubeconfig=release.cluster.kubeconfig)
        self.names: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._creates: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _create(self, name: str) -> None:
        try:
            self.manager.create(name, cpu="500m", memory="128Mi", timeout=READY_TIMEOUT)
        except SandboxError as error:
            self.errors.append(f"{name}: {error}")

    def _run(self) -> None:
        while not self._stop.is_set():
            name = f"{self.prefix}-{len(self.names):03d}"
            self.names.append(name)
            thread = threading.Thread(target=self._create, args=(name,), daemon=True)
            thread.start()
            self._creates.append(thread)
            self._stop.wait(CREATE_INTERVAL)

    def __enter__(self) -> SteadyCreates:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for thread in self._creates:
            thread.join(timeout=READY_TIMEOUT + 30)
        self.manager.close()


def test_rolling_upgrade_during_steady_creates_loses_none(release: Release) -> None:
    wait_until(lambda: leader_and_standby(release), 180, interval=1, message="a leader and a standby")
    deployment = release.kubectl_json("-n", release.namespace, "get", "deployment", release.fullname)
    old_generation = deployment["metadata"]["generation"]
    rollout = uuid.uuid4().hex[:8]
    with SteadyCreates(release, "roll") as creates:
        time.sleep(3 * CREATE_INTERVAL)  # a few creates before the upgrade starts
        started = time.monotonic()
        # A changed pod annotation: a new pod template, so every operator pod is replaced.
        result = release.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace,
                              "--reuse-values", "--set-string",
                              f"podAnnotations.{ROLLOUT_ANNOTATION.replace('.', chr(92) + '.')}={rollout}",
                              "--wait", "--timeout", "5m")
        upgrade_seconds = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        wait_until(lambda: all(p["metadata"].get("annotations", {}).get(ROLLOUT_ANNOTATION) == rollout
                               for p in release.operator_pods()), 180, interval=1,
                   message="only the new revision's pods left")
        time.sleep(3 * CREATE_INTERVAL)  # and a few after
    print(f"\nrolling upgrade: {upgrade_seconds:.1f} s, {len(creates.names)} Sandboxes created meanwhile")
    assert not creates.errors, creates.errors
    assert len(creates.names) >= upgrade_seconds / CREATE_INTERVAL / 2, "the stream of creates stalled"

    # Every Sandbox Ready, with exactly one pod and one NetworkPolicy.
    for name in creates.names:
        release.wait_ready(name)
    sandboxes = {s["metadata"]["name"]: s for s in
                 release.kubectl_json("-n", release.sandbox_namespace, "get", "sandboxes")["items"]}
    pods = release.kubectl_json("-n", release.sandbox_namespace, "get", "pods")["items"]
    policies = release.kubectl_json("-n", release.sandbox_namespace, "get", "networkpolicies")["items"]
    for name in creates.names:
        uid = sandboxes[name]["metadata"]["uid"]
        assert owned_by(pods, uid) == [constants.pod_name(name)], name
        assert owned_by(policies, uid) == [constants.network_policy_name(name)], name

    # The Deployment's pods are all the new revision, one of them leading.
    deployment = release.kubectl_json("-n", release.namespace, "get", "deployment", release.fullname)
    assert deployment["metadata"]["generation"] > old_generation
    revision = deployment["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
    replica_sets = release.kubectl_json("-n", release.namespace, "get", "replicasets", "-l",
                                        f"app.kubernetes.io/instance={release.name}")["items"]
    [current] = [rs for rs in replica_sets
                 if rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == revision]
    template_hash = current["metadata"]["labels"]["pod-template-hash"]
    leader, standby = wait_until(lambda: leader_and_standby(release), 180, interval=1,
                                 message="a leader and a standby of the new revision")
    for pod in (leader, standby):
        assert pod["metadata"]["labels"]["pod-template-hash"] == template_hash, pod["metadata"]["name"]
    release.cluster.kubectl("-n", release.sandbox_namespace, "delete", "sandboxes", "--all", "--wait=true",
                            "--timeout=300s", timeout=330)

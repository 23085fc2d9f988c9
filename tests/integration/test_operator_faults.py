"""Faults: the operator killed mid-reconcile, children deleted out of band, specs that got past admission, and
pods rejected by admission."""

from __future__ import annotations

from kubernetes import client

from tests.integration.conftest import SandboxEnv
from tests.kit import consistently, wait_until

SMALL = {"cpu": "20m", "memory": "128Mi", "ephemeralStorage": "256Mi"}


def test_killed_between_pod_creation_and_status_update_still_one_pod(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    first = env.start(failpoint="after-pod-create")
    kube.create(ns, "crash", {"resources": SMALL})
    first.wait_for_log("FAILPOINT after-pod-create reached", timeout=60)

    [pod] = kube.pods(ns, "crash")
    assert "podUID" not in kube.status(ns, "crash"), "the status was written before the kill point"
    first.kill()

    env.start()
    status = kube.wait_phase(ns, "crash", "Ready", timeout=120)
    pods = kube.pods(ns, "crash")
    assert [p["metadata"]["uid"] for p in pods] == [pod["metadata"]["uid"]], "exactly the one pod, adopted"
    assert status["podUID"] == pod["metadata"]["uid"]
    assert len(kube.policies(ns)) == 1


def test_killed_during_a_burst_converges_to_one_pod_each(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    names = [f"burst-{i}" for i in range(8)]
    first = env.start()
    for name in names:
        kube.create(ns, name, {"resources": SMALL})
    wait_until(lambda: len(kube.pods(ns)) >= 3, 60, message="some pods")
    first.kill()
    env.start()
    for name in names:
        kube.wait_phase(ns, name, "Ready", timeout=180)
    pods = kube.pods(ns)
    assert sorted(p["metadata"]["labels"]["sandbox-operator.io/sandbox"] for p in pods) == sorted(names)
    assert len(kube.policies(ns)) == len(names)


def test_pod_deleted_out_of_band_fails_the_sandbox(sbx_env: SandboxEnv) -> None:
    """Documented outcome (docs/operator.md): Failed with reason PodDeleted; no replacement pod."""
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create(ns, "victim", {"resources": SMALL})
    kube.wait_phase(ns, "victim", "Ready")

    kube.core.delete_namespaced_pod("victim", ns)
    status = kube.wait_phase(ns, "victim", "Failed", timeout=60)
    assert status["reason"] == "PodDeleted"
    [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "PodDeleted")
    kube.wait_event(ns, "victim", "PodDeleted")
    wait_until(lambda: kube.pod(ns, "victim") is None, 60, message="the deleted pod to be gone")
    consistently(lambda: kube.pod(ns, "victim") is None and kube.status(ns, "victim")["phase"] == "Failed",
                 5, message="no replacement pod")


def test_network_policy_deleted_out_of_band_is_recreated(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create(ns, "guarded", {"resources": SMALL})
    kube.wait_phase(ns, "guarded", "Ready")
    [policy] = kube.policies(ns)
    kube.networking.delete_namespaced_network_policy(policy["metadata"]["name"], ns)

    def recreated() -> bool:
        policies = kube.policies(ns)
        return len(policies) == 1 and policies[0]["metadata"]["uid"] != policy["metadata"]["uid"]
    wait_until(recreated, 30, message="a new NetworkPolicy")
    kube.wait_event(ns, "guarded", "NetworkPolicyRecreated")
    assert kube.status(ns, "guarded")["phase"] == "Ready"


def test_spec_past_admission_is_invalid_without_a_pod_or_a_hot_loop(sbx_env: SandboxEnv) -> None:
    """Valid for the CRD, not for this operator's settings: Failed/InvalidSpec, no pod, one attempt."""
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start(max_memory="1Gi")
    kube.create(ns, "greedy", {"resources": {"memory": "2Gi"}})
    kube.create(ns, "foreign", {"image": "localhost/not-allowed/image:1", "resources": SMALL})

    for name, fragment in (("greedy", "spec.resources.memory 2Gi exceeds the operator's maximum 1Gi"),
                           ("foreign", "spec.image 'localhost/not-allowed/image:1' is not allowed")):
        status = kube.wait_phase(ns, name, "Failed", timeout=60)
        assert status["reason"] == "InvalidSpec" and fragment in status["message"]
        [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        kube.wait_event(ns, name, "InvalidSpec")

    def one_event_no_pod() -> bool:
        return (kube.pods(ns) == [] and kube.event_reasons(ns, "greedy").count("InvalidSpec") == 1
                and kube.event_reasons(ns, "foreign").count("InvalidSpec") == 1)
    consistently(one_event_no_pod, 12, message="no pod and a single InvalidSpec event (kopf's retry backoff is 5 s)")


def test_pod_rejected_by_admission_fails_without_retry_storm(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    kube.core.create_namespaced_resource_quota(ns, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-pods"), spec=client.V1ResourceQuotaSpec(hard={"pods": "0"})))
    env.start()
    kube.create(ns, "refused", {"resources": SMALL})
    status = kube.wait_phase(ns, "refused", "Failed", timeout=60)
    assert status["reason"] == "AdmissionRejected"
    assert "quota" in status["message"], status["message"]
    kube.wait_event(ns, "refused", "AdmissionRejected")
    consistently(lambda: kube.event_reasons(ns, "refused").count("AdmissionRejected") == 1 and not kube.pods(ns),
                 12, message="a single rejection")

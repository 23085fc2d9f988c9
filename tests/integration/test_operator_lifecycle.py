"""A Sandbox applied with kubectl becomes one Running, Ready, hardened pod behind a deny-all NetworkPolicy, with a
truthful status, Events, printer columns, metrics; updates apply mutable fields; deletion removes everything."""

from __future__ import annotations

import datetime
import re
from typing import Any

import yaml

from sandbox_operator import constants
from tests.integration.conftest import TEST_GC_INTERVAL, SandboxEnv
from tests.kit import consistently, sandbox_manifest, wait_until

SMALL = {"cpu": "20m", "memory": "128Mi", "ephemeralStorage": "256Mi"}


def manifest(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(sandbox_manifest(namespace, name, spec))


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def test_apply_ready_columns_events_then_delete(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    operator = env.start()
    env.cluster.kubectl("apply", "-f", "-", input=manifest(ns, "alpha", {
        "resources": SMALL, "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 1200}}))

    status = kube.wait_phase(ns, "alpha", "Ready", timeout=120)
    sandbox = kube.get(ns, "alpha")
    assert sandbox is not None
    # Status tells the truth about the pod.
    [pod] = kube.pods(ns, "alpha")
    assert pod["metadata"]["name"] == constants.pod_name("alpha")
    assert pod["status"]["phase"] == "Running"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    assert status["podName"] == pod["metadata"]["name"]
    assert status["podUID"] == pod["metadata"]["uid"]
    assert status["nodeName"] == pod["spec"]["nodeName"]
    assert status["podIP"] == pod["status"]["podIP"]
    assert status["observedGeneration"] == sandbox["metadata"]["generation"]
    [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (ready["status"], ready["reason"], ready["observedGeneration"]) == (
        "True", "PodReady", sandbox["metadata"]["generation"])
    created = parse_time(sandbox["metadata"]["creationTimestamp"])
    assert parse_time(status["expiresAt"]) == created + datetime.timedelta(seconds=1200)
    assert parse_time(status["readyTime"]) >= created
    assert parse_time(status["startTime"]) >= created
    assert status["lastActivityTime"] == status["readyTime"]
    assert "reason" not in status

    # The pod is the hardened one (the unit tests check every field; here: the API server kept them).
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] <= 1200
    [container] = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"] == {"cpu": "20m", "memory": "128Mi", "ephemeral-storage": "256Mi"}
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("Sandbox", sandbox["metadata"]["uid"], True)

    # The deny-all policy exists, is owned, and selects the pod.
    [policy] = kube.policies(ns)
    assert policy["metadata"]["name"] == constants.network_policy_name("alpha")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert not policy["spec"].get("ingress") and not policy["spec"].get("egress")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["metadata"]["ownerReferences"][0]["uid"] == sandbox["metadata"]["uid"]
    assert parse_time(policy["metadata"]["creationTimestamp"]) <= parse_time(pod["metadata"]["creationTimestamp"])

    # Events for the transitions.
    kube.wait_event(ns, "alpha", "PodReady")

    # kubectl get sbx shows the columns.
    table = env.cluster.kubectl("get", "sbx", "-n", ns).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "READY", "NODE", "IDLE", "EXPIRES", "AGE"]
    assert row.split()[:4] == ["alpha", "Ready", "True", status["nodeName"]]
    assert row.split()[5] == status["expiresAt"]
    wide = env.cluster.kubectl("get", "sandboxes", "-n", ns, "-o", "wide").stdout
    assert "REASON" in wide.splitlines()[0]

    # Metrics and liveness.
    assert operator.healthy()
    code, metrics = operator.metrics()
    assert code == 200
    assert re.search(r'^sandbox_operator_sandboxes\{phase="Ready"\} 1\.0$', metrics, re.M), metrics
    assert re.search(r"^sandbox_operator_create_to_ready_seconds_count 1\.0$", metrics, re.M)

    # Delete: the pod and the policy go too.
    env.cluster.kubectl("delete", "sbx", "alpha", "-n", ns, "--wait=true", "--timeout=90s")
    assert kube.get(ns, "alpha") is None
    wait_until(lambda: not kube.pods(ns), 30, message="the pod to be gone")
    assert kube.policies(ns) == []


def test_user_namespaces_setting_runs_pods_with_host_users_false(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start(user_namespaces="true")
    kube.create(ns, "userns", {"resources": SMALL})
    kube.wait_phase(ns, "userns", "Ready", timeout=120)
    pod = kube.pod(ns, "userns")
    assert pod is not None and pod["spec"]["hostUsers"] is False


def test_explain_describes_the_timeouts(sbx_env: SandboxEnv) -> None:
    out = sbx_env.cluster.kubectl("explain", "sandbox.spec.timeouts").stdout
    for field in ("commandSeconds", "idleSeconds", "lifetimeSeconds", "last-activity"):
        assert field in out, out


def test_update_applies_mutable_fields(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create(ns, "mut", {"resources": SMALL, "podLabels": {"team": "a", "old": "x"},
                            "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 1200}})
    before = kube.wait_phase(ns, "mut", "Ready")
    pod_before = kube.pod(ns, "mut")
    assert pod_before is not None

    kube.patch(ns, "mut", {"spec": {"podLabels": {"team": "b", "old": None},
                                    "timeouts": {"lifetimeSeconds": 900}}})

    def applied() -> dict[str, Any] | None:
        pod = kube.pod(ns, "mut")
        labels = (pod or {}).get("metadata", {}).get("labels", {})
        return pod if pod and labels.get("team") == "b" and "old" not in labels else None
    pod = wait_until(applied, 30, message="the pod's labels to follow spec.podLabels")
    assert pod["metadata"]["uid"] == pod_before["metadata"]["uid"], "updated in place, not replaced"
    assert pod["metadata"]["labels"][constants.LABEL_SANDBOX] == "mut"
    assert pod["spec"]["activeDeadlineSeconds"] < pod_before["spec"]["activeDeadlineSeconds"]
    after = wait_until(lambda: (s := kube.status(ns, "mut")).get("observedGeneration") == 2 and s, 30,
                       message="observedGeneration 2")
    assert parse_time(after["expiresAt"]) == parse_time(before["expiresAt"]) - datetime.timedelta(seconds=300)
    assert after["phase"] == "Ready"


def test_status_is_not_rewritten_when_nothing_changes(sbx_env: SandboxEnv) -> None:
    """Status is written only on change: across three collector passes a Ready sandbox is not touched."""
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create(ns, "calm", {"resources": SMALL})
    kube.wait_phase(ns, "calm", "Ready")
    kube.wait_event(ns, "calm", "PodReady")
    first = kube.get(ns, "calm")
    assert first is not None
    version = first["metadata"]["resourceVersion"]
    consistently(lambda: (kube.get(ns, "calm") or {}).get("metadata", {}).get("resourceVersion") == version,
                 3 * float(TEST_GC_INTERVAL) + 1, message="the Sandbox unchanged")

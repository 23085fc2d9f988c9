"""The chart's admission policy on the real cluster: a second lock behind the operator.

One release of the chart (namespaced, the default), from the locally built operator image. Pod Security admission
runs before admission policies and would reject most bad pods first, so the test lifts it from the sandbox
namespace: the policy is then the only lock there, which is also the situation it exists for. As an admin, the
test sends the API server one pod per broken rule (tests/kit/admission.py; server-side dry runs, so nothing ever
runs) and checks that each is rejected with that rule's message; the operator's own pod, built by its builders,
is admitted; a Sandbox becomes Ready; a warm pool's pod is claimed (an UPDATE of its labels, owner and deadline);
an update of a running pod is checked only where it can change (its image, ephemeral containers). A second,
cluster-wide release shows the binding by label, and uninstalling removes the lock.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from sandbox_operator import constants
from sandbox_operator.builders.pool import build_pool_pod
from sandbox_operator.models.effective import resolve
from sandbox_operator.models.pool import SandboxPool
from sandbox_operator.settings import OperatorSettings
from tests.kit import Cluster, pool_manifest, wait_until
from tests.kit.admission import (
    BREACHES,
    FOREIGN_IMAGE,
    POLICY_SUFFIX,
    SANDBOX_NAMESPACE_LABEL,
    UNLISTED_RUNTIME_CLASS,
    Breach,
    hardened_ephemeral_container,
    hardened_pod,
    rule_of,
    to_json,
)
from tests.kit.helm import Release, installed_release

pytestmark = pytest.mark.timeout(1800)

# The chart's defaults are the operator's (tests/static/test_chart.py): the pods it builds in the release.
SETTINGS = OperatorSettings()
POOL = "vap-warm"
POOL_RESOURCE = f"{constants.POOL_PLURAL}.{constants.GROUP}"
PRIVILEGED_NAMESPACE = {f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")}
ACTIVE_TIMEOUT = 60.0


def policy_name(release: Release) -> str:
    return f"{release.fullname}{POLICY_SUFFIX}"


def lift_pod_security(cluster: Cluster, namespace: str) -> None:
    """Pod Security "privileged": nothing but the policy stands between a pod and the namespace."""
    cluster.kubectl("label", "namespace", namespace, "--overwrite",
                    *(f"{key}={value}" for key, value in PRIVILEGED_NAMESPACE.items()))


def dry_run_create(cluster: Cluster, pod: dict[str, Any]) -> tuple[bool, str]:
    """Whether the API server admits ``pod`` (a server-side dry run: admission runs, nothing is stored), and its
    error."""
    result = cluster.kubectl("create", "--dry-run=server", "-o", "name", "-f", "-", input=json.dumps(pod),
                             check=False)
    return result.returncode == 0, result.stderr


def denial(release: Release, binding_suffix: str, message: str) -> str:
    return (f"ValidatingAdmissionPolicy '{policy_name(release)}' with binding "
            f"'{policy_name(release)}{binding_suffix}' denied request: {message}")


def foreign_image_pod(namespace: str) -> dict[str, Any]:
    """The operator's pod with an image outside the allow-list: a pod only the policy rejects."""
    return next(b for b in BREACHES if b.id == "image").pod(SETTINGS, namespace)


def wait_active(release: Release, namespace: str, binding_suffix: str) -> None:
    """A new policy takes effect once the API server's informers have it: a bad pod is rejected by it."""
    bad = foreign_image_pod(namespace)

    def rejected() -> bool:
        admitted, error = dry_run_create(release.cluster, bad)
        return not admitted and f"with binding '{policy_name(release)}{binding_suffix}'" in error

    wait_until(rejected, ACTIVE_TIMEOUT, interval=1, message=f"the admission policy active in {namespace}")


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    with installed_release(cluster, "e2e-vap") as rel:
        lift_pod_security(cluster, rel.sandbox_namespace)
        wait_active(rel, rel.sandbox_namespace, "-sandbox-namespaces")
        yield rel


@pytest.fixture(scope="module")
def messages(release: Release) -> dict[str, str]:
    """The installed policy's message of each rule."""
    policy = release.kubectl_json("get", "validatingadmissionpolicy", policy_name(release))
    return {rule_of(v["message"]): v["message"] for v in policy["spec"]["validations"]}


@pytest.fixture(scope="module")
def unlisted_runtime_class(cluster: Cluster) -> Iterator[str]:
    """A RuntimeClass outside the allow-list. It must exist: the RuntimeClass admission plugin refuses a pod naming
    a missing one before any policy sees it. It is never run (the pods are dry runs)."""
    found = cluster.kubectl("get", "runtimeclass", UNLISTED_RUNTIME_CLASS, "--ignore-not-found", "-o", "name").stdout
    if not found:
        body = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "handler": "runc",
                "metadata": {"name": UNLISTED_RUNTIME_CLASS, "labels": {"sandbox-operator.io/test": "e2e-vap"}}}
        cluster.kubectl("create", "-f", "-", input=json.dumps(body))
    try:
        yield UNLISTED_RUNTIME_CLASS
    finally:
        if not found:
            cluster.kubectl("delete", "runtimeclass", UNLISTED_RUNTIME_CLASS, "--ignore-not-found", check=False)


# --- installed ------------------------------------------------------------------------------------------------

def test_the_policy_is_installed_bound_and_type_checks_clean(release: Release) -> None:
    binding = release.kubectl_json("get", "validatingadmissionpolicybinding",
                                   f"{policy_name(release)}-sandbox-namespaces")
    assert binding["spec"]["policyName"] == policy_name(release)
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [release.sandbox_namespace]}]

    # The controller manager type-checks the expressions against the Pod schema and reports in the status.
    def checked() -> dict[str, Any] | None:
        policy = release.kubectl_json("get", "validatingadmissionpolicy", policy_name(release))
        status = policy.get("status") or {}
        current = status.get("observedGeneration") == policy["metadata"]["generation"]
        return status if current and "typeChecking" in status else None

    status = wait_until(checked, 120, interval=1, message="the policy's status with its type checking")
    assert not status["typeChecking"].get("expressionWarnings"), status["typeChecking"]


# --- each rule rejects, the operator's pods pass --------------------------------------------------------------

@pytest.mark.parametrize("breach", BREACHES, ids=[b.id for b in BREACHES])
def test_a_pod_breaking_a_rule_is_rejected_with_that_rules_message(
        release: Release, messages: dict[str, str], unlisted_runtime_class: str, breach: Breach) -> None:
    pod = breach.pod(SETTINGS, release.sandbox_namespace)
    admitted, error = dry_run_create(release.cluster, pod)
    assert not admitted, f"{breach.id} was admitted"
    assert denial(release, "-sandbox-namespaces", messages[breach.rule]) in error, error


def test_the_operators_pods_are_admitted(release: Release) -> None:
    """A Sandbox's pod and a pool's pod, as the operator's builders make them under the chart's defaults."""
    admitted, error = dry_run_create(release.cluster, hardened_pod(SETTINGS, release.sandbox_namespace))
    assert admitted, error
    pool = SandboxPool.from_body({"metadata": {"name": "dry", "namespace": release.sandbox_namespace,
                                               "uid": str(uuid.uuid4())}, "spec": {"size": 1, "template": {}}})
    pod = build_pool_pod(pool, resolve(pool.spec.template, SETTINGS), SETTINGS, run_as_user=SETTINGS.sandbox_uids[0],
                         pod_template_hash="dry", now=datetime.datetime.now(datetime.UTC))
    admitted, error = dry_run_create(release.cluster, to_json(pod))
    assert admitted, error


# --- the operator at work under the policy --------------------------------------------------------------------

def test_a_sandbox_becomes_ready_and_updates_are_checked_where_a_pod_can_change(
        release: Release, messages: dict[str, str]) -> None:
    release.create_sandbox("vap-cold")
    release.wait_ready("vap-cold")
    namespace, pod = release.sandbox_namespace, constants.pod_name("vap-cold")
    kubectl = release.cluster.kubectl
    running = release.kubectl_json("-n", namespace, "get", "pod", pod)
    assert running["status"]["phase"] == "Running"

    # Labels (like a claim's) pass.
    assert kubectl("-n", namespace, "label", "pod", pod, "e2e-vap=relabelled", check=False).returncode == 0
    # A changed image must be allowed.
    retag = json.dumps([{"op": "replace", "path": "/spec/containers/0/image", "value": FOREIGN_IMAGE}])
    result = kubectl("-n", namespace, "patch", "pod", pod, "--type=json", "-p", retag, "--dry-run=server",
                     check=False)
    assert result.returncode != 0 and denial(release, "-sandbox-namespaces", messages["image"]) in result.stderr, \
        result.stderr

    # An ephemeral container (what `kubectl debug` adds) must be as hardened as the pod's own.
    def add_ephemeral(container: dict[str, Any]) -> Any:
        patch = json.dumps([{"op": "add", "path": "/spec/ephemeralContainers", "value": [container]}])
        return kubectl("-n", namespace, "patch", "pod", pod, "--subresource=ephemeralcontainers", "--type=json",
                       "-p", patch, "--dry-run=server", check=False)

    hardened = hardened_ephemeral_container(running)
    result = add_ephemeral(hardened)
    assert result.returncode == 0, result.stderr
    privileged = {**hardened, "securityContext": {**hardened["securityContext"], "privileged": True,
                                                  "allowPrivilegeEscalation": True}}
    result = add_ephemeral(privileged)
    assert result.returncode != 0, "a privileged ephemeral container was admitted"
    assert denial(release, "-sandbox-namespaces", messages["privileged"]) in result.stderr, result.stderr
    release.delete_sandbox("vap-cold")


def test_a_warm_pool_claim_is_admitted(release: Release) -> None:
    """The claim is an UPDATE of a running pool pod (labels, owner, deadline): the policy lets it through."""
    namespace, kubectl = release.sandbox_namespace, release.cluster.kubectl
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pool_manifest(namespace, POOL, 1, {})))
    release.wait_pool_ready(POOL)
    release.claim("vap-claim", POOL)
    assert kubectl("-n", namespace, "get", "events", "--field-selector", "reason=PoolEmpty", "-o", "name").stdout == ""
    release.delete_sandbox("vap-claim")
    kubectl("-n", namespace, "delete", POOL_RESOURCE, POOL, "--wait=true", "--timeout=60s", check=False)


# --- cluster-wide: labelled namespaces ------------------------------------------------------------------------

def test_cluster_wide_the_policy_binds_labelled_namespaces(cluster: Cluster) -> None:
    """A cluster-wide release binds its sandbox namespaces by name and every namespace labelled
    sandbox-operator.io/sandboxes=true; an unlabelled namespace is none of its business."""
    with installed_release(cluster, "e2e-vapcw", "--set", "clusterWide=true",
                           "--set-json", 'watchPatterns=["{release.sandbox_namespace}"]') as rel:
        labelled = cluster.create_namespace("e2e-vap-labelled", restricted=False)
        unlabelled = cluster.create_namespace("e2e-vap-unlabelled", restricted=False)
        try:
            for namespace in (labelled, unlabelled):
                lift_pod_security(cluster, namespace)
            cluster.kubectl("label", "namespace", labelled, f"{SANDBOX_NAMESPACE_LABEL}=true")
            lift_pod_security(cluster, rel.sandbox_namespace)
            wait_active(rel, labelled, "-labelled-namespaces")
            wait_active(rel, rel.sandbox_namespace, "-sandbox-namespaces")
            admitted, error = dry_run_create(cluster, foreign_image_pod(unlabelled))
            assert admitted, error
        finally:
            for namespace in (labelled, unlabelled):
                cluster.delete_namespace(namespace)


# --- uninstall ------------------------------------------------------------------------------------------------

def test_uninstall_removes_the_lock(release: Release) -> None:
    result = release.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "3m")
    assert result.returncode == 0, result.stderr
    left = release.cluster.kubectl("get", "validatingadmissionpolicies,validatingadmissionpolicybindings", "-l",
                                   f"app.kubernetes.io/instance={release.name}", "-o", "name").stdout
    assert left == ""
    # The kept sandbox namespace has no lock left (Pod Security is still lifted from it).
    wait_until(lambda: dry_run_create(release.cluster, foreign_image_pod(release.sandbox_namespace))[0],
               ACTIVE_TIMEOUT, interval=1, message="a pod with a foreign image admitted once the policy is gone")

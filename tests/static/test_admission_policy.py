"""The chart's admission policy (templates/admission-policy.yaml), rendered with helm and evaluated with cel-python:
the operator's own pods (cold, from a pool, claimed) are admitted under the settings the same render gives the
operator, each pod of tests/kit/admission.py is rejected by its rule first, updates are checked only where a pod can
change, and the bindings cover the sandbox namespaces in both install modes.

cel-python is not the API server's CEL: it forgives a field read on a missing parent that Kubernetes reports as an
error (the policy guards every such read with has()). The end-to-end tests (tests/e2e/test_admission_policy.py)
send the same pods to a real API server.
"""

from __future__ import annotations

import copy
import datetime
import functools
from pathlib import Path
from typing import Any

import celpy
import pytest
from celpy import celtypes
from celpy.adapter import json_to_cel

from sandbox_operator import constants
from sandbox_operator.builders import pool as pools
from sandbox_operator.models.effective import resolve
from sandbox_operator.models.pool import spec_with_overrides
from sandbox_operator.settings import OperatorSettings, load_settings
from tests.kit.admission import (
    BREACHES,
    FOREIGN_IMAGE,
    POLICY_SUFFIX,
    RULE_FIELDS,
    SANDBOX_NAMESPACE_LABEL,
    Breach,
    hardened_ephemeral_container,
    hardened_pod,
    rule_of,
    to_json,
)
from tests.static import test_chart
from tests.static.test_chart import (
    FULLNAME,
    RELEASE_NS,
    Doc,
    env_of,
    render,
    render_error,
    select,
    settings_env,
)
from tests.unit.test_pool_builders import POOL, apply_merge_patch, claiming_sandbox, pool_pod

helm = test_chart.helm  # the chart tests' session fixture: the pinned helm binary

POLICY = f"{FULLNAME}{POLICY_SUFFIX}"
NOW = datetime.datetime(2026, 1, 1, 0, 5, tzinfo=datetime.UTC)
JSON = dict[str, Any]

# --- the policy, evaluated ------------------------------------------------------------------------------------

_ENV = celpy.Environment()


@functools.cache
def _program(expression: str) -> Any:
    return _ENV.program(_ENV.compile(expression))


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    result = _program(expression).evaluate(activation)
    if isinstance(result, Exception):
        raise AssertionError(f"{expression!r} failed to evaluate: {result}")
    return result


def denials(policy: Doc, obj: JSON, old: JSON | None = None, operation: str = "CREATE") -> list[str]:
    """The messages of the validations ``obj`` fails, in the policy's order (the API server reports the first);
    an expression that cannot be evaluated fails the test (the policy's failurePolicy would reject the pod)."""
    activation: dict[str, Any] = {"object": json_to_cel(obj), "oldObject": json_to_cel(old),
                                  "request": json_to_cel({"operation": operation})}
    variables: dict[Any, Any] = {}
    for variable in policy["spec"].get("variables") or []:
        value = _evaluate(variable["expression"], {**activation, "variables": celtypes.MapType(variables)})
        variables[celtypes.StringType(variable["name"])] = value
    activation["variables"] = celtypes.MapType(variables)
    return [str(v["message"]) for v in policy["spec"]["validations"]
            if not bool(_evaluate(v["expression"], activation))]


def rules_broken(policy: Doc, obj: JSON, old: JSON | None = None, operation: str = "CREATE") -> list[str]:
    return [rule_of(message) for message in denials(policy, obj, old, operation)]


def the_policy(docs: list[Doc]) -> Doc:
    [policy] = select(docs, "ValidatingAdmissionPolicy", POLICY)
    return policy


def bindings(docs: list[Doc]) -> dict[str, Doc]:
    return {b["metadata"]["name"]: b for b in select(docs, "ValidatingAdmissionPolicyBinding")}


def operator_settings(docs: list[Doc]) -> OperatorSettings:
    """The settings the same render gives the operator."""
    with settings_env(env_of(docs)):
        return load_settings()


def started(pod: JSON, name: str) -> JSON:
    """``pod`` as the API server keeps it after creation: named, versioned, started."""
    pod = copy.deepcopy(pod)
    pod["metadata"].update(name=name, uid=f"uid-{name}", resourceVersion="7",
                           creationTimestamp="2026-01-01T00:00:00Z")
    pod["status"] = {"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}
    return pod


@pytest.fixture(scope="module")
def default_docs(helm: Path) -> list[Doc]:
    return render(helm)


# --- the operator's pods are admitted -------------------------------------------------------------------------

OPERATOR_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "gvisor-default": {"config": {"allowedRuntimeClasses": ["gvisor", "kata"], "defaultRuntimeClass": "gvisor"}},
    "gvisor-allowed": {"config": {"allowedRuntimeClasses": ["gvisor"]}},
    "any-runtime": {"config": {"allowedRuntimeClasses": ["*"], "defaultRuntimeClass": "gvisor"}},
    "user-namespaces": {"config": {"userNamespaces": True, "serviceAccountName": "sandboxes",
                                   "priorityClassName": "low"}},
    "own-registry": {"config": {"allowedImages": ["registry.example.com/agents/*", "registry.example.com/py?:3.1?"],
                                "defaultImage": "registry.example.com/agents/python:3.11"}},
}


@pytest.mark.parametrize("values", OPERATOR_CONFIGS.values(), ids=OPERATOR_CONFIGS.keys())
def test_the_operators_pods_are_admitted(helm: Path, values: dict[str, Any],
                                         tmp_path: Path) -> None:
    """A Sandbox's pod, a pool's pod and the claim that hands it over, built by the operator's own builders with
    the settings the same render passes to the operator."""
    docs = render(helm, values, tmp_path)
    policy = the_policy(docs)
    settings = operator_settings(docs)
    pod = hardened_pod(settings, "sandboxes")
    assert pod["spec"].get("runtimeClassName") == (settings.default_runtime_class or None)
    assert denials(policy, pod) == []
    # A pool's pod is created like any other, and the claim is an UPDATE of its labels, owner and deadline.
    effective = resolve(POOL.spec.template, settings)
    waiting = started(to_json(pools.build_pool_pod(POOL, effective, settings, run_as_user=settings.sandbox_uids[1],
                                                    pod_template_hash="h", now=NOW)), "python.pool-aaaaa")
    assert denials(policy, waiting) == []
    sandbox = claiming_sandbox({"podLabels": {"team": "b"}})
    claim = pools.claim_patch(sandbox, waiting, resolve(spec_with_overrides(POOL.spec.template, sandbox.spec),
                                                        settings), now=NOW)
    claimed = apply_merge_patch(waiting, claim)
    assert claimed["spec"]["activeDeadlineSeconds"] > 0
    assert claimed["metadata"]["ownerReferences"][0]["kind"] == constants.KIND
    assert denials(policy, claimed, waiting, "UPDATE") == []


def test_a_claim_of_the_default_pool_pod_is_admitted(default_docs: list[Doc]) -> None:
    """The unit tests' pool pod and claim, byte for byte."""
    policy = the_policy(default_docs)
    waiting = pool_pod(age=120)
    assert denials(policy, waiting) == []
    sandbox = claiming_sandbox()
    patch = pools.claim_patch(sandbox, waiting, resolve(spec_with_overrides(POOL.spec.template, sandbox.spec),
                                                        OperatorSettings()), now=NOW)
    assert denials(policy, apply_merge_patch(waiting, patch), waiting, "UPDATE") == []


# --- each breach is rejected by its rule ----------------------------------------------------------------------

@pytest.mark.parametrize("breach", BREACHES, ids=[b.id for b in BREACHES])
def test_a_pod_breaking_one_rule_is_rejected_by_that_rule(default_docs: list[Doc], breach: Breach) -> None:
    policy = the_policy(default_docs)
    broken = rules_broken(policy, breach.pod(operator_settings(default_docs), "sandboxes"))
    assert broken and broken[0] == breach.rule, broken
    assert sorted(broken) == sorted([breach.rule, *breach.also])


def test_every_rule_has_a_breach_and_its_own_message(default_docs: list[Doc]) -> None:
    policy = the_policy(default_docs)
    messages = [v["message"] for v in policy["spec"]["validations"]]
    assert [rule_of(m) for m in messages] == list(RULE_FIELDS)  # one validation per rule, in this order
    assert {b.rule for b in BREACHES} == set(RULE_FIELDS)
    for validation in policy["spec"]["validations"]:
        assert validation["reason"] == "Forbidden"
        assert ": " in validation["message"] and "\n" not in validation["message"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule == {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                    "resources": ["pods", "pods/ephemeralcontainers"]}
    assert "paramKind" not in policy["spec"]
    images = next(m for m in messages if rule_of(m) == "image")
    assert "localhost/sandbox-operator/sandbox:*, localhost/sandbox-operator/sandbox@sha256:*" in images


# --- updates: only what can change ----------------------------------------------------------------------------

def test_an_update_checks_only_what_an_update_can_change(default_docs: list[Doc]) -> None:
    """Everything but images and ephemeral containers is immutable: a label, owner or deadline change passes
    even on a pod that breaks every other rule (created before the policy), while a changed image must be
    allowed and an added ephemeral container must be hardened."""
    policy = the_policy(default_docs)
    settings = operator_settings(default_docs)
    pod = started(hardened_pod(settings, "sandboxes"), "sandbox-pod")

    legacy = copy.deepcopy(pod)
    for breach in BREACHES:
        breach.change(legacy)
    legacy["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["NET_RAW"], "drop": []}
    assert set(rules_broken(policy, legacy)) == set(RULE_FIELDS)
    relabelled = copy.deepcopy(legacy)
    relabelled["metadata"]["labels"]["team"] = "c"
    relabelled["metadata"]["ownerReferences"] = []
    relabelled["spec"]["activeDeadlineSeconds"] = 60
    assert denials(policy, relabelled, legacy, "UPDATE") == []

    # A changed image: checked, in a container and in an init container.
    retagged = copy.deepcopy(pod)
    retagged["spec"]["containers"][0]["image"] = FOREIGN_IMAGE
    assert rules_broken(policy, retagged, pod, "UPDATE") == ["image"]
    retagged["spec"]["containers"][0]["image"] = "localhost/sandbox-operator/sandbox:0.2.0"
    assert denials(policy, retagged, pod, "UPDATE") == []
    with_init = copy.deepcopy(pod)
    with_init["spec"]["initContainers"] = [{**copy.deepcopy(pod["spec"]["containers"][0]), "name": "init"}]
    init_retagged = copy.deepcopy(with_init)
    init_retagged["spec"]["initContainers"][0]["image"] = FOREIGN_IMAGE
    assert rules_broken(policy, init_retagged, with_init, "UPDATE") == ["image"]


def test_ephemeral_containers_are_checked_when_added(default_docs: list[Doc]) -> None:
    policy = the_policy(default_docs)
    pod = started(hardened_pod(operator_settings(default_docs), "sandboxes"), "sandbox-pod")

    def adding(**changes: Any) -> JSON:
        debug = hardened_ephemeral_container(pod)
        for key, value in changes.items():
            if key == "image":
                debug["image"] = value
            else:
                debug["securityContext"][key] = value
        with_debug = copy.deepcopy(pod)
        with_debug["spec"]["ephemeralContainers"] = [debug]
        return with_debug

    assert denials(policy, adding(), pod, "UPDATE") == []
    assert rules_broken(policy, adding(privileged=True, allowPrivilegeEscalation=True), pod, "UPDATE") == [
        "privileged", "allowPrivilegeEscalation"]
    assert rules_broken(policy, adding(runAsUser=0), pod, "UPDATE") == ["runAsUser"]
    assert rules_broken(policy, adding(runAsNonRoot=False), pod, "UPDATE") == ["runAsNonRoot"]
    assert rules_broken(policy, adding(capabilities={"add": ["SYS_PTRACE"], "drop": ["ALL"]}), pod, "UPDATE") == [
        "capabilitiesAdd"]
    assert rules_broken(policy, adding(image=FOREIGN_IMAGE), pod, "UPDATE") == ["image"]
    # One already there is not checked again (it cannot change); one added next to it is.
    existing = adding(privileged=True, allowPrivilegeEscalation=True)
    second = copy.deepcopy(existing)
    second["metadata"]["labels"]["team"] = "d"
    assert denials(policy, second, existing, "UPDATE") == []
    second["spec"]["ephemeralContainers"].append({**hardened_ephemeral_container(pod, "debug-2"),
                                                  "image": FOREIGN_IMAGE})
    assert rules_broken(policy, second, existing, "UPDATE") == ["image"]


# --- the allow-lists come from config -------------------------------------------------------------------------

RUNTIME_CLASS_CASES: list[tuple[dict[str, Any], dict[str | None, bool]]] = [
    # (config, {runtimeClassName or None: admitted})
    ({}, {None: True, "gvisor": False}),
    ({"allowedRuntimeClasses": ["gvisor"]}, {None: True, "gvisor": True, "kata": False}),
    ({"defaultRuntimeClass": "gvisor", "allowedRuntimeClasses": ["gvisor"]}, {None: False, "gvisor": True,
                                                                             "runc": False}),
    ({"defaultRuntimeClass": "gvisor"}, {None: False, "gvisor": True, "kata": False}),
    ({"defaultRuntimeClass": "gvisor", "allowedRuntimeClasses": ["gvisor", "kata"]},
     {None: False, "gvisor": True, "kata": True, "runc": False}),
    ({"allowedRuntimeClasses": ["*"]}, {None: True, "anything": True}),
]


@pytest.mark.parametrize(("config", "expected"), RUNTIME_CLASS_CASES,
                         ids=[str(case[0]) for case in RUNTIME_CLASS_CASES])
def test_runtime_classes_follow_the_operators_allow_list(helm: Path, config: dict[str, Any],
                                                         expected: dict[str | None, bool], tmp_path: Path) -> None:
    """What the operator may put on a pod, no more: the listed classes and the default, and no class at all
    only while there is no default."""
    docs = render(helm, {"config": config}, tmp_path)
    policy = the_policy(docs)
    settings = operator_settings(docs)
    for runtime_class, admitted in expected.items():
        pod = hardened_pod(settings, "sandboxes")
        pod["spec"].pop("runtimeClassName", None)
        if runtime_class:
            pod["spec"]["runtimeClassName"] = runtime_class
        broken = rules_broken(policy, pod)
        assert broken == ([] if admitted else ["runtimeClassName"]), (runtime_class, broken)
        # The operator's own check agrees.
        assert admitted == ((runtime_class or "") == (settings.default_runtime_class or "")
                            or bool(runtime_class and settings.runtime_class_allowed(runtime_class)))
    messages = [rule_of(v["message"]) for v in policy["spec"]["validations"]]
    assert ("runtimeClassName" in messages) == ("*" not in config.get("allowedRuntimeClasses", []))


IMAGE_CASES = {
    "registry.example.com/agents/python:3.11": True,
    "registry.example.com/agents/team/python@sha256:abc": True,  # * crosses "/", as in the operator's fnmatch
    "registry.example.com/agents": False,
    "registry.example.com/agentsx/python:3.11": False,
    "registry.example.com/py3:3.12": True,
    "registry.example.com/py3:3.1": False,  # ? is exactly one character
    "registry.example.com/py33:3.12": False,
    "registry-example.com/agents/python:3.11": False,  # "." is literal
    "mirror.example/registry.example.com/agents/python:3.11": False,  # anchored at the start
}


def test_image_globs_become_anchored_patterns_that_agree_with_the_operator(helm: Path,
                                                                           tmp_path: Path) -> None:
    docs = render(helm, OPERATOR_CONFIGS["own-registry"], tmp_path)
    policy = the_policy(docs)
    settings = operator_settings(docs)
    for image, admitted in IMAGE_CASES.items():
        pod = hardened_pod(settings, "sandboxes")
        pod["spec"]["containers"][0]["image"] = image
        assert rules_broken(policy, pod) == ([] if admitted else ["image"]), image
        assert settings.image_allowed(image) == admitted, image
    error = render_error(helm, {"config": {"allowedImages": ["registry.example.com/py[23]:*"],
                                           "defaultImage": "registry.example.com/py3:1"}}, tmp_path)
    assert 'config.allowedImages[0] "registry.example.com/py[23]:*" uses a character class' in error, error


def test_the_data_image_is_admitted_by_default(default_docs: list[Doc]) -> None:
    """A tag of the sandbox repository: the operator's own default allow-list, the chart's and its admission policy
    all admit it without configuration."""
    settings = operator_settings(default_docs)
    pod = hardened_pod(settings, "sandboxes")
    pod["spec"]["containers"][0]["image"] = constants.SANDBOX_DATA_IMAGE
    assert rules_broken(the_policy(default_docs), pod) == []
    assert settings.image_allowed(constants.SANDBOX_DATA_IMAGE)
    with settings_env({}):
        assert load_settings().image_allowed(constants.SANDBOX_DATA_IMAGE)


def test_quotes_and_backslashes_in_a_glob_stay_inside_the_pattern(helm: Path, tmp_path: Path) -> None:
    glob = "odd'\"\\name:*"
    docs = render(helm, {"config": {"allowedImages": [glob], "defaultImage": "odd'\"\\name:1"}}, tmp_path)
    policy = the_policy(docs)
    pod = hardened_pod(OperatorSettings(allowed_images=[glob], default_image="odd'\"\\name:1"), "sandboxes")
    pod["spec"]["containers"][0]["image"] = "odd'\"\\name:1"
    assert denials(policy, pod) == []
    pod["spec"]["containers"][0]["image"] = "odd'\"name:1"
    assert rules_broken(policy, pod) == ["image"]


# --- bindings and namespaces ----------------------------------------------------------------------------------

def _namespace_names(binding: Doc) -> list[str]:
    [expression] = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert (expression["key"], expression["operator"]) == ("kubernetes.io/metadata.name", "In")
    return list(expression["values"])


def test_bound_to_the_sandbox_namespaces_by_name(helm: Path, tmp_path: Path) -> None:
    docs = render(helm)
    [binding] = bindings(docs).values()
    assert binding["metadata"]["name"] == f"{POLICY}-sandbox-namespaces"
    assert binding["spec"]["policyName"] == POLICY
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert _namespace_names(binding) == ["sandboxes"]
    assert "objectSelector" not in binding["spec"]["matchResources"]
    for doc in [*bindings(docs).values(), the_policy(docs)]:
        assert doc["metadata"]["labels"]["app.kubernetes.io/component"] == "admission-policy"
        assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    # Namespaces the chart does not create are bound by name all the same.
    docs = render(helm, {"sandboxNamespaces": {"names": ["team-a", "team-b"], "create": False}}, tmp_path)
    [binding] = bindings(docs).values()
    assert _namespace_names(binding) == ["team-a", "team-b"]


def test_cluster_wide_it_also_binds_labelled_namespaces_never_the_operators(helm: Path,
                                                                           tmp_path: Path) -> None:
    docs = render(helm, {"clusterWide": True, "watchPatterns": ["sbx-*"]}, tmp_path)
    found = bindings(docs)
    assert sorted(found) == [f"{POLICY}-labelled-namespaces", f"{POLICY}-sandbox-namespaces"]
    labelled = found[f"{POLICY}-labelled-namespaces"]
    assert labelled["spec"]["policyName"] == POLICY and labelled["spec"]["validationActions"] == ["Deny"]
    assert labelled["spec"]["matchResources"]["namespaceSelector"] == {
        "matchLabels": {SANDBOX_NAMESPACE_LABEL: "true"},
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [RELEASE_NS]}]}
    # The chart's own namespaces are bound by name and not labelled: a cluster-wide release never applies its
    # allow-lists to another release's namespaces.
    [namespace] = select(docs, "Namespace")
    assert SANDBOX_NAMESPACE_LABEL not in namespace["metadata"]["labels"]
    docs = render(helm, {"clusterWide": True, "sandboxNamespaces": {"names": []}}, tmp_path)
    assert sorted(bindings(docs)) == [f"{POLICY}-labelled-namespaces"]


def test_disabled_renders_no_policy(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {"admissionPolicy": {"enabled": False}}, tmp_path)
    assert not select(docs, "ValidatingAdmissionPolicy") and not select(docs, "ValidatingAdmissionPolicyBinding")
    assert "values don't meet the specifications of the schema" in render_error(
        helm, {"admissionPolicy": {"enable": False}}, tmp_path)


def test_the_release_namespace_is_never_bound(helm: Path, tmp_path: Path) -> None:
    """The policy would reject the operator's own pod (it mounts its token, and runs another image)."""
    values = {"sandboxNamespaces": {"names": [RELEASE_NS], "create": False, "defaultDenyNetworkPolicy": False}}
    assert f'the release namespace "{RELEASE_NS}" must not be a sandbox namespace (the policy would reject' in \
        render_error(helm, values, tmp_path)
    render(helm, {**values, "admissionPolicy": {"enabled": False}}, tmp_path)


def test_the_operator_pod_itself_would_be_rejected(default_docs: list[Doc]) -> None:
    """Why the release namespace stays unbound: the policy is for sandboxes, not for the operator."""
    [deployment] = select(default_docs, "Deployment")
    pod = {"metadata": {"name": "operator", "namespace": RELEASE_NS}, "spec": deployment["spec"]["template"]["spec"]}
    broken = rules_broken(the_policy(default_docs), pod)
    assert "automountServiceAccountToken" in broken and "image" in broken
    assert pod["spec"]["containers"][0]["image"] == constants.OPERATOR_IMAGE

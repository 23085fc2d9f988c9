"""The Helm chart: lint, rendering with default and non-default values, RBAC, pod security, the values schema,
the operator's settings, the CRD copy, and a checkov scan of the rendered manifests.

Runs `helm` from the project's pinned binaries (`make -s bin-dir`; `hack/build-binaries.sh helm` builds it alone when
missing). No cluster is needed. A static check (`make lint`), not a unit test: it needs helm and checkov.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox_operator import constants
from sandbox_operator.models import limits
from sandbox_operator.models.pool import SandboxPool
from sandbox_operator.settings import ENV_PREFIX, OperatorSettings, SettingsError, load_settings
from tests.kit import REPO_ROOT, hack_var, make_var

CHART = REPO_ROOT / "charts" / "sandbox-operator"
RELEASE = "demo"
RELEASE_NS = "sandbox-operator-system"
FULLNAME = "demo-sandbox-operator"
Doc = dict[str, Any]
# Verbs by (group, resource), or by (group, resource, name) for a rule restricted to resourceNames.
Rules = dict[tuple[str, ...], set[str]]

# Settings the chart sets from somewhere other than `config` (or on purpose not at all).
SETTINGS_OUTSIDE_CONFIG = {
    "namespaces": "clusterWide / watchPatterns / sandboxNamespaces.names",
    "health_port": "health.port",
    "metrics_port": "metrics.port (0 with metrics.enabled: false)",
    "bind_address": "always 0.0.0.0: the kubelet probes the pod's address",
    "log_format": "logging.format",
    "verbose": "logging.verbose",
    "failpoint": "test-only, never set by the chart",
    "instance_name": "the release's full name (the Deployment's name)",
    "leader_election": "leaderElection.enabled",
    "leader_election_lease_name": "the release's full name (one Lease per release)",
    "leader_election_namespace": "left to the operator: the pod's namespace (POD_NAMESPACE, downward API)",
    "leader_election_identity": "left to the operator: the pod's name (POD_NAME, downward API)",
    "lease_duration_seconds": "leaderElection.leaseDurationSeconds",
    "renew_deadline_seconds": "leaderElection.renewDeadlineSeconds",
    "retry_period_seconds": "leaderElection.retryPeriodSeconds",
}
# leaderElection's timing values and the settings they set.
LEASE_TIMING = {"leaseDurationSeconds": "lease_duration_seconds", "renewDeadlineSeconds": "renew_deadline_seconds",
                "retryPeriodSeconds": "retry_period_seconds"}
# What the downward API gives the operator pod, as the kubelet would resolve it for one replica.
DOWNWARD_ENV = {"POD_NAME": f"{FULLNAME}-5d8f7c9b6-x2x4q", "POD_NAMESPACE": RELEASE_NS}

# Operator permissions that must never appear, whatever the values.
FORBIDDEN_RESOURCES = {"secrets", "pods/exec", "pods/attach", "pods/portforward", "pods/ephemeralcontainers",
                       "pods/proxy", "serviceaccounts/token", "nodes", "nodes/proxy", "configmaps", "*"}
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}

# The operator's permissions on SandboxPools: read and watch (kopf event handlers write nothing to a pool), the
# status subresource, and update on finalizers for the blockOwnerDeletion of the pool's children. Never create,
# patch or delete: pools are the chart's or an administrator's.
OPERATOR_POOL_RULES: Rules = {
    ("sandbox-operator.io", "sandboxpools"): {"get", "list", "watch"},
    ("sandbox-operator.io", "sandboxpools/status"): {"get", "patch"},
    ("sandbox-operator.io", "sandboxpools/finalizers"): {"update"},
}
# The operator's namespaced permissions, exactly (the table in templates/_rbac.tpl). A change here is a change
# of the operator's privileges: make it on purpose, in both places.
OPERATOR_NAMESPACED_RULES: Rules = {
    ("sandbox-operator.io", "sandboxes"): {"get", "list", "watch", "patch", "delete"},
    ("sandbox-operator.io", "sandboxes/status"): {"get", "patch"},
    ("sandbox-operator.io", "sandboxes/finalizers"): {"update"},
    **OPERATOR_POOL_RULES,
    ("", "pods"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "events"): {"create", "list"},
}
KOPF_CLUSTER_RULES: Rules = {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"}}
# The registry of served namespaces: an annotation on the Sandbox CRD, that one CRD only.
REGISTRY_RULES: Rules = {("apiextensions.k8s.io", "customresourcedefinitions", constants.CRD_NAME): {"get", "patch"}}
CLUSTER_RULES: Rules = {**KOPF_CLUSTER_RULES, **REGISTRY_RULES}
KOPF_NAMESPACE_RULES: Rules = {("", "namespaces"): {"list", "watch"}}
# Leader election, in the release namespace only: the release's Lease by name, and creating it.
LEADER_ELECTION_ROLE = f"{FULLNAME}-leader-election"
LEADER_ELECTION_RULES: Rules = {("coordination.k8s.io", "leases", FULLNAME): {"get", "update"},
                                ("coordination.k8s.io", "leases"): {"create"}}

# checkov findings accepted on purpose; every other failed check fails the test.
CHECKOV_VERSION = "3.3.30"
CHECKOV_SKIPS = {
    # Readiness probe: kopf operators have none on purpose (kopf's docs: "readiness probing makes no practical
    # sense" for an operator; no Service routes requests to it). Liveness and startup probes are there.
    "CKV_K8S_9": "no readiness probe for an operator",
    # imagePullPolicy Always: images are built locally and preloaded into the node (the project's cluster
    # reaches no registry); the tag is pinned and never "latest", so IfNotPresent is right.
    "CKV_K8S_15": "imagePullPolicy IfNotPresent with preloaded, pinned images",
    # Service account token mounted: the operator talks to the API server with it. The ServiceAccount itself
    # has automountServiceAccountToken: false; only the operator pod asks for the token.
    "CKV_K8S_38": "the operator needs its token",
    # Image digest: a locally built image has no registry digest; it is pinned by tag.
    "CKV_K8S_43": "locally built image pinned by tag",
}


# --- helpers ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def helm() -> Path:
    path = Path(make_var("bin-dir")) / "helm"
    if not path.exists():  # a fresh machine: the pinned helm is built once (cached afterwards), nothing else
        subprocess.run(["bash", "hack/build-binaries.sh", "helm"], cwd=REPO_ROOT, check=True)
    assert path.exists(), f"{path} is missing after `bash hack/build-binaries.sh helm`"
    return path


def _values_args(values: dict[str, Any] | None, tmp_path: Path | None) -> list[str]:
    if not values:
        return []
    assert tmp_path is not None
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["--values", str(path)]


def helm_template(helm: Path, *args: str, namespace: str = RELEASE_NS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), "template", RELEASE, str(CHART), "--namespace", namespace, *args],
                          capture_output=True, text=True, timeout=120)


def render(helm: Path, values: dict[str, Any] | None = None, tmp_path: Path | None = None,
           namespace: str = RELEASE_NS) -> list[Doc]:
    result = helm_template(helm, *_values_args(values, tmp_path), namespace=namespace)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(helm: Path, values: dict[str, Any], tmp_path: Path) -> str:
    result = helm_template(helm, *_values_args(values, tmp_path))
    assert result.returncode != 0, f"rendering {values} should fail:\n{result.stdout[:2000]}"
    return result.stderr


def only(docs: list[Doc], kind: str, name: str | None = None, namespace: str | None = None) -> Doc:
    found = select(docs, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''} in {namespace or 'any namespace'}, got {len(found)}"
    return found[0]


def select(docs: list[Doc], kind: str, name: str | None = None, namespace: str | None = None) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind
            and (name is None or d["metadata"]["name"] == name)
            and (namespace is None or d["metadata"].get("namespace") == namespace)]


def container(docs: list[Doc]) -> Doc:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    [c] = pod["containers"]
    return dict(c)


def env_of(docs: list[Doc]) -> dict[str, str]:
    """The container's literal environment; the downward-API variables are checked here and left out."""
    entries = container(docs)["env"]
    downward = {e["name"]: e["valueFrom"] for e in entries if "valueFrom" in e}
    assert downward == {"POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
                        "POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    env = {e["name"]: e["value"] for e in entries if "valueFrom" not in e}
    assert all(isinstance(v, str) for v in env.values())
    return env


def rules_table(role: Doc) -> dict[tuple[str, ...], set[str]]:
    """Verbs by (group, resource), or by (group, resource, name) for a rule restricted to resourceNames."""
    table: Rules = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for name in rule.get("resourceNames") or [None]:
                    key = (group, resource) if name is None else (group, resource, name)
                    table.setdefault(key, set()).update(rule["verbs"])
    return table


def component(doc: Doc) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


@contextlib.contextmanager
def settings_env(env: dict[str, str]) -> Iterator[None]:
    """The process environment with exactly these SANDBOX_OPERATOR_* variables, plus what the downward API gives
    the operator pod (DOWNWARD_ENV)."""
    env = {**DOWNWARD_ENV, **env}
    saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX) or k in DOWNWARD_ENV}
    for key in saved:
        del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        for key in env:
            os.environ.pop(key, None)
        os.environ.update(saved)


# --- lint and the CRD ---------------------------------------------------------------------------------------

CLUSTER_WIDE: dict[str, Any] = {
    "clusterWide": True,
    "watchPatterns": ["sbx-*"],
    "sandboxNamespaces": {"names": ["team-a", "team-b"]},
    "clientRole": {"subjects": [{"kind": "Group", "name": "agents"}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}
NAMESPACED: dict[str, Any] = {
    "sandboxNamespaces": {"names": ["team-a", "team-b"], "create": False},
    "clientRole": {"subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "agents"},
                                {"kind": "User", "name": "alice"}]},
    "config": {"defaultLifetimeSeconds": 1234, "defaultIdleSeconds": 600, "allowedRuntimeClasses": ["gvisor"],
               "defaultRuntimeClass": "gvisor", "fileSizeLimitBytes": 2147483648, "gcIntervalSeconds": 0.5},
    "logging": {"format": "json", "verbose": True},
    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]},
    "pools": [{"name": "python", "namespace": "team-a", "size": 2, "maxAgeSeconds": 3600,
               "template": {"resources": {"cpu": "500m", "memory": "256Mi"}}},
              {"name": "python", "namespace": "team-b", "size": 0}],
}


@pytest.mark.parametrize("values", [None, CLUSTER_WIDE, NAMESPACED], ids=["default", "cluster-wide", "namespaced"])
def test_helm_lint_strict(helm: Path, values: dict[str, Any] | None, tmp_path: Path) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--namespace", RELEASE_NS,
                             *_values_args(values, tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_chart_crd_is_the_canonical_crd() -> None:
    """The chart ships crds/ unchanged (Helm installs it when missing). Fix drift with
    `cp crds/*.yaml charts/sandbox-operator/crds/`."""
    canonical = sorted(p.name for p in (REPO_ROOT / "crds").glob("*.yaml"))
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert shipped == canonical == sorted([f"{constants.CRD_NAME}.yaml", f"{constants.POOL_CRD_NAME}.yaml"])
    for name in canonical:
        assert (CHART / "crds" / name).read_bytes() == (REPO_ROOT / "crds" / name).read_bytes(), (
            f"charts/sandbox-operator/crds/{name} differs from crds/{name}: "
            "run `cp crds/*.yaml charts/sandbox-operator/crds/`")


def test_chart_and_image_versions_match_the_constants() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["name"] == constants.MANAGER_NAME
    assert chart["appVersion"] == chart["version"] == constants.PROJECT_VERSION
    assert f"{values['image']['repository']}:{chart['appVersion']}" == constants.OPERATOR_IMAGE
    assert values["config"]["defaultImage"] == constants.SANDBOX_IMAGE
    script = subprocess.run(["bash", "hack/build-operator-image.sh", "ref"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True)
    assert script.stdout.strip() == constants.OPERATOR_IMAGE


# --- rendering ----------------------------------------------------------------------------------------------

def test_default_render_objects(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", "")) for d in docs)
    assert kinds == sorted([
        ("ClusterRole", FULLNAME, ""),
        ("ClusterRole", f"{FULLNAME}-client", ""),
        ("ClusterRole", f"{FULLNAME}-client-registry", ""),
        ("ClusterRoleBinding", FULLNAME, ""),
        ("Deployment", FULLNAME, RELEASE_NS),
        ("Namespace", "sandboxes", ""),
        ("NetworkPolicy", FULLNAME, RELEASE_NS),
        ("NetworkPolicy", f"{FULLNAME}-default-deny", "sandboxes"),
        ("PodDisruptionBudget", FULLNAME, RELEASE_NS),
        ("Role", FULLNAME, "sandboxes"),
        ("Role", LEADER_ELECTION_ROLE, RELEASE_NS),
        ("RoleBinding", FULLNAME, "sandboxes"),
        ("RoleBinding", LEADER_ELECTION_ROLE, RELEASE_NS),
        ("Service", f"{FULLNAME}-metrics", RELEASE_NS),
        ("ServiceAccount", FULLNAME, RELEASE_NS),
        ("ValidatingAdmissionPolicy", f"{FULLNAME}-pod-hardening", ""),
        ("ValidatingAdmissionPolicyBinding", f"{FULLNAME}-pod-hardening-sandbox-namespaces", ""),
    ])
    for doc in docs:  # chart-prefixed, standard labels everywhere
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "sandbox-operator"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_release_named_like_the_chart_gives_plain_names(helm: Path) -> None:
    result = subprocess.run([str(helm), "template", "sandbox-operator", str(CHART), "--namespace", RELEASE_NS],
                            capture_output=True, text=True, check=True)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert only(docs, "Deployment")["metadata"]["name"] == "sandbox-operator"


def test_two_replicas_elect_a_leader_and_roll_without_a_gap(helm: Path) -> None:
    docs = render(helm)
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # A new pod (a standby) comes up before an old one stops: never zero operators, and the Lease keeps it to
    # one working at a time.
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = env_of(docs)
    assert env[f"{ENV_PREFIX}LEADER_ELECTION"] == "true"
    assert env[f"{ENV_PREFIX}LEADER_ELECTION_LEASE_NAME"] == FULLNAME
    assert (env[f"{ENV_PREFIX}LEASE_DURATION_SECONDS"], env[f"{ENV_PREFIX}RENEW_DEADLINE_SECONDS"],
            env[f"{ENV_PREFIX}RETRY_PERIOD_SECONDS"]) == ("8", "6", "1")
    budget = only(docs, "PodDisruptionBudget", FULLNAME, RELEASE_NS)
    assert budget["spec"] == {"minAvailable": 1, "selector": deployment["spec"]["selector"]}


def test_pod_disruption_budget_only_with_standbys(helm: Path, tmp_path: Path) -> None:
    assert not select(render(helm, {"replicaCount": 1}, tmp_path), "PodDisruptionBudget")
    docs = render(helm, {"replicaCount": 3}, tmp_path)
    assert only(docs, "Deployment")["spec"]["replicas"] == 3
    assert only(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    # --set gives an integer where a values file gives a float: the same either way.
    result = helm_template(helm, "--set", "replicaCount=1")
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert only(docs, "Deployment")["spec"]["replicas"] == 1 and not select(docs, "PodDisruptionBudget")


def test_without_leader_election_one_replica_recreated_never_overlapping(helm: Path, tmp_path: Path) -> None:
    values = {"replicaCount": 1, "leaderElection": {"enabled": False}}
    docs = render(helm, values, tmp_path)
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not select(docs, "PodDisruptionBudget")
    assert not select(docs, "Role", LEADER_ELECTION_ROLE) and not select(docs, "RoleBinding", LEADER_ELECTION_ROLE)
    env = env_of(docs)
    assert env[f"{ENV_PREFIX}LEADER_ELECTION"] == "false"
    assert not {f"{ENV_PREFIX}LEADER_ELECTION_LEASE_NAME", f"{ENV_PREFIX}LEASE_DURATION_SECONDS"} & set(env)
    with settings_env(env):
        assert load_settings().leader_election is False


def test_several_replicas_without_leader_election_are_refused(helm: Path, tmp_path: Path) -> None:
    error = render_error(helm, {"leaderElection": {"enabled": False}}, tmp_path)  # replicaCount stays 2
    assert ("replicaCount 2 needs leaderElection.enabled: true: without leader election every replica would "
            "reconcile the same Sandboxes at once") in error, error
    result = helm_template(helm, "--set", "leaderElection.enabled=false", "--set", "replicaCount=3")
    assert result.returncode != 0 and "replicaCount 3 needs leaderElection.enabled: true" in result.stderr


@pytest.mark.parametrize(("timing", "message"), [
    ({"retryPeriodSeconds": 6}, "leaderElection.retryPeriodSeconds (6) must be less than "
                                "leaderElection.renewDeadlineSeconds (6)"),
    ({"renewDeadlineSeconds": 9}, "leaderElection.renewDeadlineSeconds (9) must be less than "
                                  "leaderElection.leaseDurationSeconds (8)"),
])
def test_lease_timing_out_of_order_is_refused(helm: Path, timing: dict[str, int], message: str,
                                              tmp_path: Path) -> None:
    assert message in render_error(helm, {"leaderElection": timing}, tmp_path)


def test_leader_election_values_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    timing = {"leaseDurationSeconds": 15, "renewDeadlineSeconds": 10, "retryPeriodSeconds": 2}
    env = env_of(render(helm, {"leaderElection": timing}, tmp_path))
    with settings_env(env):
        settings = load_settings()
    assert settings.leader_election is True
    assert settings.leader_election_lease_name == FULLNAME
    assert {name: getattr(settings, name) for name in LEASE_TIMING.values()} == {
        LEASE_TIMING[key]: value for key, value in timing.items()}


def test_leader_election_defaults_are_the_operators_own() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["leaderElection"]
    fields = OperatorSettings.model_fields
    for key, name in LEASE_TIMING.items():
        assert values[key] == fields[name].get_default(), f"leaderElection.{key}"


def test_lease_role_allows_only_the_releases_lease(helm: Path, tmp_path: Path) -> None:
    for values in (None, {"clusterWide": True}):
        docs = render(helm, values, tmp_path)
        role = only(docs, "Role", LEADER_ELECTION_ROLE, RELEASE_NS)
        assert component(role) == "operator"
        assert rules_table(role) == LEADER_ELECTION_RULES
        binding = only(docs, "RoleBinding", LEADER_ELECTION_ROLE, RELEASE_NS)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": LEADER_ELECTION_ROLE}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}]
        # Leases nowhere else: not in the sandbox namespaces, not cluster-wide.
        others = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and d is not role]
        assert not any(key[:2] == ("coordination.k8s.io", "leases") for d in others for key in rules_table(d))


def test_image_pinned_never_pulled_needlessly(helm: Path, tmp_path: Path) -> None:
    c = container(render(helm))
    assert c["image"] == constants.OPERATOR_IMAGE
    assert c["imagePullPolicy"] == "IfNotPresent"
    c = container(render(helm, {"image": {"tag": "0.2.0"}}, tmp_path))
    assert c["image"] == "localhost/sandbox-operator/operator:0.2.0"
    assert "/image/tag" in render_error(helm, {"image": {"tag": "latest"}}, tmp_path)  # the schema's not-latest


def test_operator_pod_meets_restricted_and_more(helm: Path) -> None:
    docs = render(helm)
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    c = container(docs)
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace", "hostUsers"):
        assert key not in pod
    # The node has no AppArmor: the chart never asks for a profile.
    assert "appArmor" not in json.dumps(docs) and "apparmor" not in json.dumps(docs)
    # Restricted volume types only; the one writable path is an emptyDir.
    assert [set(v) - {"name"} for v in pod["volumes"]] == [{"emptyDir"}]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    # The token: mounted into the operator pod only, which asks for it; the ServiceAccount does not by default.
    assert pod["automountServiceAccountToken"] is True
    assert only(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["enableServiceLinks"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert all(not port.get("hostPort") for port in c["ports"])


def test_probes_on_kopf_liveness_endpoint_and_no_readiness(helm: Path) -> None:
    docs = render(helm)
    c = container(docs)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "readinessProbe" not in c
    env = env_of(docs)
    assert env[f"{ENV_PREFIX}HEALTH_PORT"] == "8080"
    assert env[f"{ENV_PREFIX}METRICS_PORT"] == "9090"


def test_metrics_service_and_optional_servicemonitor(helm: Path, tmp_path: Path) -> None:
    docs = render(helm)
    service = only(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == only(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert not select(docs, "ServiceMonitor")

    docs = render(helm, CLUSTER_WIDE, tmp_path)
    monitor = only(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]

    docs = render(helm, {"metrics": {"enabled": False}}, tmp_path)
    assert not select(docs, "Service") and not select(docs, "ServiceMonitor")
    assert env_of(docs)[f"{ENV_PREFIX}METRICS_PORT"] == "0"
    assert [p["name"] for p in container(docs)["ports"]] == ["health"]


def test_operator_network_policy(helm: Path, tmp_path: Path) -> None:
    policy = only(render(helm), "NetworkPolicy", FULLNAME, RELEASE_NS)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]] == ["health", "metrics"]
    assert all("from" not in rule for rule in policy["spec"]["ingress"])
    policy = only(render(helm, NAMESPACED, tmp_path), "NetworkPolicy", FULLNAME, RELEASE_NS)
    assert policy["spec"]["ingress"][1]["from"] == NAMESPACED["networkPolicy"]["metricsFrom"]
    docs = render(helm, {"networkPolicy": {"enabled": False}}, tmp_path)
    assert not select(docs, "NetworkPolicy", FULLNAME)


def test_sandbox_namespaces_restricted_and_default_deny(helm: Path, tmp_path: Path) -> None:
    docs = render(helm)
    namespace = only(docs, "Namespace", "sandboxes")
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "latest"
    assert namespace["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    deny = only(docs, "NetworkPolicy", namespace="sandboxes")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
    assert deny["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}

    docs = render(helm, {"sandboxNamespaces": {"names": ["a", "b"], "keep": False,
                                               "podSecurityVersion": "v1.35"}}, tmp_path)
    assert [n["metadata"]["name"] for n in select(docs, "Namespace")] == ["a", "b"]
    assert all("annotations" not in d["metadata"] for d in select(docs, "Namespace") + select(docs, "NetworkPolicy"))
    assert select(docs, "Namespace")[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce-version"] == "v1.35"

    docs = render(helm, NAMESPACED, tmp_path)  # create: false -> no Namespace objects, but policies and roles
    assert not select(docs, "Namespace")
    assert len(select(docs, "NetworkPolicy")) == 3
    docs = render(helm, {"sandboxNamespaces": {"defaultDenyNetworkPolicy": False}}, tmp_path)
    assert not select(docs, "NetworkPolicy", namespace="sandboxes")


def test_misconfigurations_fail_with_a_message(helm: Path, tmp_path: Path) -> None:
    # The release namespace as a sandbox namespace: the default-deny policy would cut the operator off.
    assert "must not be a sandbox namespace" in render_error(
        helm, {"sandboxNamespaces": {"names": [RELEASE_NS]}}, tmp_path)
    assert "at least one namespace" in render_error(helm, {"sandboxNamespaces": {"names": []}}, tmp_path)
    assert "watchPatterns applies only" in render_error(helm, {"watchPatterns": ["x-*"]}, tmp_path)
    assert "needs a namespace" in render_error(
        helm, {"clientRole": {"subjects": [{"kind": "ServiceAccount", "name": "agent"}]}}, tmp_path)


# --- values schema ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [
    {"replicas": 2},                                   # typo: the value is replicaCount
    {"replicaCount": 0},                               # no operator at all
    {"leaderElection": {"enable": False}},             # typo in a nested key
    {"leaderElection": {"leaseDurationSeconds": "8s"}},  # seconds are whole numbers
    {"config": {"defualtCpu": "2"}},                   # typo in a setting
    {"image": {"tga": "0.1.0"}},                       # typo in a nested key
    {"sandboxNamespaces": {"name": ["x"]}},            # singular instead of plural
    {"metrics": {"serviceMonitor": {"enable": True}}},
    {"securityContext": {"runAsUser": 0}},             # root
    {"securityContext": {"privileged": True}},         # not configurable
    {"config": {"defaultPids": "twenty"}},             # wrong type
    {"logging": {"format": "xml"}},
    {"sandboxNamespaces": {"names": ["Not_A_DNS_Label"]}},
    {"clientRole": {"subjects": [{"kind": "Robot", "name": "x"}]}},
    {"pools": [{"name": "p", "size": 1, "sise": 2}]},                        # typo in a pool's key
    {"pools": [{"name": "p", "size": 1, "template": {"resource": {"cpu": "1"}}}]},  # typo in a template field
    {"pools": {"python": {"size": 1}}},                                       # a map instead of a list
], ids=lambda v: json.dumps(v, separators=(",", ":")))
def test_values_schema_rejects(helm: Path, values: dict[str, Any], tmp_path: Path) -> None:
    error = render_error(helm, values, tmp_path)
    assert "values don't meet the specifications of the schema" in error, error


def test_values_schema_is_strict_everywhere() -> None:
    """Every object of ours rejects unknown keys; only Kubernetes pass-through objects are open."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    # A pool template's fields are the Sandbox spec's: the schema knows their names, the CRD their insides.
    template = schema["properties"]["pools"]["items"]["properties"]["template"]["properties"]
    passthrough = {"global", "affinity", "tolerations[]", "networkPolicy.metricsFrom[]",
                   *(f"pools[].template.{name}" for name, node in template.items() if node["type"] == "object")}
    maps = {"podAnnotations", "podLabels", "nodeSelector", "serviceAccount.annotations",
            "metrics.service.annotations", "metrics.serviceMonitor.labels"}

    def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
        yield path, node
        for name, sub in (node.get("properties") or {}).items():
            yield from walk(sub, f"{path}.{name}".lstrip("."))
        if isinstance(node.get("items"), dict):
            yield from walk(node["items"], f"{path}[]")

    for path, node in walk(schema, ""):
        if node.get("type") == "object" and path not in passthrough:
            if path in maps:
                assert node["additionalProperties"] == {"type": "string"}, path
            else:
                assert node.get("additionalProperties") is False, f"{path or 'root'} accepts unknown keys"
    # Every value in values.yaml is described by the schema (and documented in docs/chart.md).
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = (REPO_ROOT / "docs" / "chart.md").read_text()

    described_whole = maps | {"resources"}

    def leaves(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, dict) and node and path not in described_whole:
            for key, sub in node.items():
                yield from leaves(sub, f"{path}.{key}".lstrip("."))
        else:
            yield path

    for path in leaves(values, ""):
        node = schema
        for part in path.split("."):
            node = node["properties"][part]
        assert f"`{path}`" in docs, f"docs/chart.md does not describe `{path}`"


# --- the operator's settings ---------------------------------------------------------------------------------

def test_config_defaults_are_the_operators_own() -> None:
    """values.yaml's config shows the operator's real defaults, and covers every setting."""
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    fields = OperatorSettings.model_fields
    for key, value in config.items():
        name = snake(key)
        assert name in fields, f"config.{key}: the operator has no setting {ENV_PREFIX}{name.upper()}"
        default = fields[name].get_default(call_default_factory=True)
        assert value == ("" if default is None else default), f"config.{key}: {value!r} != operator's {default!r}"
    covered = {snake(key) for key in config} | set(SETTINGS_OUTSIDE_CONFIG)
    assert set(fields) == covered, f"settings the chart does not set: {set(fields) - covered}"


def test_rendered_environment_is_accepted_by_the_operator(helm: Path) -> None:
    env = env_of(render(helm))
    assert all(name.startswith(ENV_PREFIX) for name in env)
    with settings_env(env):
        settings = load_settings()
    assert settings.namespaces == ["sandboxes"]
    assert settings.bind_address == "0.0.0.0"
    defaults = OperatorSettings.model_construct()
    assert settings.instance_name == FULLNAME
    assert settings.leader_election is True and settings.leader_election_lease_name == FULLNAME
    # The Lease's namespace and the holder's identity come from the pod (the operator resolves them).
    chart_set = {"namespaces", "instance_name", "leader_election", "leader_election_lease_name",
                 "leader_election_namespace", "leader_election_identity"}
    for name in OperatorSettings.model_fields:
        if name not in chart_set:
            assert getattr(settings, name) == getattr(defaults, name), name


def test_nondefault_values_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    env = env_of(render(helm, NAMESPACED, tmp_path))
    assert env[f"{ENV_PREFIX}FILE_SIZE_LIMIT_BYTES"] == "2147483648"  # no float exponent
    with settings_env(env):
        settings = load_settings()
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.default_lifetime_seconds == 1234
    assert settings.allowed_runtime_classes == ["gvisor"] and settings.default_runtime_class == "gvisor"
    assert settings.file_size_limit_bytes == 2147483648
    assert settings.gc_interval_seconds == 0.5
    assert (settings.log_format, settings.verbose) == ("json", True)

    env = env_of(render(helm, CLUSTER_WIDE, tmp_path))
    with settings_env(env):
        assert load_settings().namespaces == ["sbx-*"]
    env = env_of(render(helm, {"clusterWide": True}, tmp_path))
    with settings_env(env):
        settings = load_settings()
    assert settings.namespaces == [] and settings.clusterwide


def test_placement_and_uid_values_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    config = {"allowedTolerationKeys": ["sandbox", "gpu"], "allowedNodeSelectorKeys": ["pool"],
              "allowedRuntimeClasses": ["*"], "avoidControlPlane": False, "sandboxUidRange": "2000000-2000999"}
    env = env_of(render(helm, {"config": config}, tmp_path))
    assert env[f"{ENV_PREFIX}AVOID_CONTROL_PLANE"] == "false"
    with settings_env(env):
        settings = load_settings()
    assert settings.allowed_toleration_keys == ["sandbox", "gpu"]
    assert settings.allowed_node_selector_keys == ["pool"] and settings.allowed_runtime_classes == ["*"]
    assert settings.avoid_control_plane is False and settings.sandbox_uids == range(2000000, 2001000)


@pytest.mark.parametrize("config", [{"sandboxUidRange": "lots"}, {"allowedTolerationKeys": ["a b"]},
                                    {"allowedNodeSelectorKeys": ["*x"]}, {"avoidControlPlane": "yes"}])
def test_values_schema_rejects_bad_placement_values(helm: Path, config: dict[str, Any], tmp_path: Path) -> None:
    error = render_error(helm, {"config": config}, tmp_path)
    assert "values don't meet the specifications of the schema" in error, error


def test_request_values_reach_the_operator(helm: Path, tmp_path: Path) -> None:
    config = {"defaultCpuRequest": "1", "defaultMemoryRequest": "512Mi", "defaultEphemeralStorageRequest": "1Gi"}
    env = env_of(render(helm, {"config": config}, tmp_path))
    assert env[f"{ENV_PREFIX}DEFAULT_CPU_REQUEST"] == "1"
    with settings_env(env):
        settings = load_settings()
    assert (settings.default_cpu_request, settings.default_memory_request,
            settings.default_ephemeral_storage_request) == ("1", "512Mi", "1Gi")


@pytest.mark.parametrize("config", [{"defaultCpuRequest": "lots"}, {"defaultMemoryRequest": -1},
                                    {"readinessPeriodSeconds": 10}])
def test_values_schema_rejects_bad_request_values_and_the_removed_readiness_period(
        helm: Path, config: dict[str, Any], tmp_path: Path) -> None:
    error = render_error(helm, {"config": config}, tmp_path)
    assert "values don't meet the specifications of the schema" in error, error


def test_a_request_above_the_default_limit_is_caught_by_the_operator(helm: Path, tmp_path: Path) -> None:
    env = env_of(render(helm, {"config": {"defaultMemoryRequest": "1Gi"}}, tmp_path))
    with settings_env(env), pytest.raises(SettingsError, match=f"{ENV_PREFIX}DEFAULT_MEMORY_REQUEST=1Gi exceeds"):
        load_settings()


def test_invalid_settings_are_caught_by_the_operator(helm: Path, tmp_path: Path) -> None:
    """What the schema cannot see (cross-field rules) the operator reports by variable name at start."""
    env = env_of(render(helm, {"config": {"defaultCpu": "8", "maxCpu": "4"}}, tmp_path))
    with settings_env(env), pytest.raises(SettingsError, match=f"{ENV_PREFIX}DEFAULT_CPU"):
        load_settings()


# --- RBAC ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [None, CLUSTER_WIDE, NAMESPACED, {"clusterWide": True}],
                         ids=["default", "cluster-wide", "namespaced", "cluster-wide-all"])
def test_operator_rbac_has_no_exec_and_no_secrets(helm: Path, values: dict[str, Any] | None,
                                                  tmp_path: Path) -> None:
    docs = render(helm, values, tmp_path)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and component(d) == "operator"]
    assert roles
    for role in roles:
        for (_group, resource, *_names), verbs in rules_table(role).items():
            assert resource not in FORBIDDEN_RESOURCES, f"{role['metadata']['name']} grants {resource}"
            assert not verbs & FORBIDDEN_VERBS, f"{role['metadata']['name']} grants {verbs & FORBIDDEN_VERBS}"
    # No peering objects: kopf runs standalone.
    assert "kopf.dev" not in json.dumps(roles)


def test_namespaced_rbac_is_confined_to_the_sandbox_namespaces(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, NAMESPACED, tmp_path)
    cluster_role = only(docs, "ClusterRole", FULLNAME)
    assert rules_table(cluster_role) == {**CLUSTER_RULES, **KOPF_NAMESPACE_RULES}
    roles = select(docs, "Role", FULLNAME)
    assert sorted(r["metadata"]["namespace"] for r in select(docs, "Role")) == [RELEASE_NS, "team-a", "team-b"]
    for role in roles:
        assert rules_table(role) == OPERATOR_NAMESPACED_RULES
    bindings = select(docs, "RoleBinding", FULLNAME)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in [*bindings, only(docs, "ClusterRoleBinding", FULLNAME)]:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": RELEASE_NS}]
    assert only(docs, "ClusterRoleBinding", FULLNAME)["roleRef"]["name"] == FULLNAME


def test_cluster_wide_rbac_is_one_cluster_role(helm: Path, tmp_path: Path) -> None:
    docs = render(helm, {"clusterWide": True}, tmp_path)
    # No Role but the Lease's in the release namespace.
    assert [r["metadata"]["name"] for r in select(docs, "Role") + select(docs, "RoleBinding")] == [
        LEADER_ELECTION_ROLE, LEADER_ELECTION_ROLE]
    assert rules_table(only(docs, "ClusterRole", FULLNAME)) == {**CLUSTER_RULES, **OPERATOR_NAMESPACED_RULES}
    docs = render(helm, CLUSTER_WIDE, tmp_path)  # with watchPatterns kopf also matches namespaces
    assert rules_table(only(docs, "ClusterRole", FULLNAME)) == {
        **CLUSTER_RULES, **KOPF_NAMESPACE_RULES, **OPERATOR_NAMESPACED_RULES}


def test_client_cluster_role_and_its_bindings(helm: Path, tmp_path: Path) -> None:
    docs = render(helm)
    client_role = only(docs, "ClusterRole", f"{FULLNAME}-client")
    table = rules_table(client_role)
    assert table[("", "pods/exec")] == {"create", "get"}
    assert table[("", "pods")] == {"get", "list"}
    assert {"create", "get", "list", "watch", "delete", "patch"} <= table[("sandbox-operator.io", "sandboxes")]
    assert table[("", "events")] == {"get", "list", "watch"}
    assert table[("sandbox-operator.io", "sandboxpools")] == {"get", "list", "watch"}  # read only
    assert ("", "secrets") not in table
    # The registry of served namespaces is cluster-scoped: a ClusterRole of its own, reading that one CRD.
    assert rules_table(only(docs, "ClusterRole", f"{FULLNAME}-client-registry")) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", constants.CRD_NAME): {"get"}}
    assert not select(docs, "RoleBinding", f"{FULLNAME}-client")  # nothing is bound without subjects
    assert not any(d["kind"] == "ClusterRoleBinding" and component(d) == "client" for d in docs)

    docs = render(helm, NAMESPACED, tmp_path)
    bindings = select(docs, "RoleBinding", f"{FULLNAME}-client")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                      "name": f"{FULLNAME}-client"}
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "agent", "namespace": "agents"},
            {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]
    # Only the registry role is bound cluster-wide; sandboxes and exec stay bound per namespace.
    [registry_binding] = [d for d in docs if d["kind"] == "ClusterRoleBinding" and component(d) == "client"]
    assert registry_binding["roleRef"]["name"] == f"{FULLNAME}-client-registry"
    assert registry_binding["subjects"] == bindings[0]["subjects"]
    docs = render(helm, {"clientRole": {"create": False}}, tmp_path)
    assert not select(docs, "ClusterRole", f"{FULLNAME}-client")
    assert not select(docs, "ClusterRole", f"{FULLNAME}-client-registry")


@pytest.mark.parametrize("values", [NAMESPACED, {"clusterWide": True, "pools": [{"name": "p", "size": 1}]}],
                         ids=["namespaced", "cluster-wide"])
def test_operator_reconciles_pools_where_it_serves_and_clients_only_read_them(
        helm: Path, values: dict[str, Any], tmp_path: Path) -> None:
    docs = render(helm, values, tmp_path)
    granting = [role for role in docs if role["kind"] in ("Role", "ClusterRole") and component(role) == "operator"
                and ("sandbox-operator.io", "sandboxpools") in rules_table(role)]
    if values.get("clusterWide"):
        assert [(r["kind"], r["metadata"]["name"]) for r in granting] == [("ClusterRole", FULLNAME)]
    else:  # a Role in each sandbox namespace, nothing cluster-wide
        assert sorted((r["kind"], r["metadata"]["namespace"]) for r in granting) == [
            ("Role", "team-a"), ("Role", "team-b")]
    for role in granting:
        table = rules_table(role)
        assert {key: verbs for key, verbs in table.items() if key[1].startswith("sandboxpools")} == OPERATOR_POOL_RULES
        # Handing a pool pod to a Sandbox is a conditional patch; deleting an unclaimed one carries preconditions.
        assert {"get", "list", "watch", "create", "patch", "delete"} <= table[("", "pods")]
    client = rules_table(only(docs, "ClusterRole", f"{FULLNAME}-client"))
    assert {key: verbs for key, verbs in client.items() if key[1].startswith("sandboxpools")} == {
        ("sandbox-operator.io", "sandboxpools"): {"get", "list", "watch"}}


# --- sharding: several releases -----------------------------------------------------------------------------

def test_two_releases_with_disjoint_namespaces_share_no_object(helm: Path, tmp_path: Path) -> None:
    """Shards (docs/chart.md, "Sharding: several releases"): releases with their own names, namespaces, sandbox
    namespaces and uid ranges install side by side. Helm refuses to adopt an object another release owns, so a
    shared name, cluster-scoped above all, would make the second install fail."""
    def objects(release: str, namespace: str, values: dict[str, Any]) -> set[tuple[str, str, str]]:
        result = subprocess.run([str(helm), "template", release, str(CHART), "--namespace", namespace,
                                 *_values_args(values, tmp_path)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        docs = [d for d in yaml.safe_load_all(result.stdout) if d]
        return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]) for d in docs}

    first = objects("shard-a", "operators-a", {"sandboxNamespaces": {"names": ["team-a"]},
                                               "config": {"sandboxUidRange": "1000000000-1000065535"}})
    second = objects("shard-b", "operators-b", {"sandboxNamespaces": {"names": ["team-b"]},
                                                "config": {"sandboxUidRange": "1000065536-1000131071"}})
    assert not first & second, first & second
    cluster_scoped = {kind for kind, namespace, _name in first if not namespace}
    assert cluster_scoped == {"ClusterRole", "ClusterRoleBinding", "Namespace", "ValidatingAdmissionPolicy",
                              "ValidatingAdmissionPolicyBinding"}


# --- warm pools ---------------------------------------------------------------------------------------------

POOL_TEMPLATE: dict[str, Any] = {
    "image": constants.SANDBOX_IMAGE,
    "env": [{"name": "MODE", "value": "warm"}],
    "resources": {"cpu": "500m", "memory": "256Mi", "requests": {"cpu": "10m", "memory": "64Mi"}},
    "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 3600},
    "podLabels": {"team": "a"},
}
SIZE_RULE = f"must be a whole number from {limits.POOL_SIZE_MIN} to {limits.POOL_SIZE_MAX}"
MAX_AGE_RULE = (f"must be a whole number from {limits.POOL_MAX_AGE_SECONDS_MIN} to "
                f"{limits.POOL_MAX_AGE_SECONDS_MAX}")


def test_pools_render_as_sandbox_pools_the_operator_accepts(helm: Path, tmp_path: Path) -> None:
    assert not select(render(helm), constants.POOL_KIND)
    docs = render(helm, {"pools": [{"name": "python", "size": 5, "maxAgeSeconds": 3600, "template": POOL_TEMPLATE},
                                   {"name": "bare", "size": 0}]}, tmp_path)
    python, bare = select(docs, constants.POOL_KIND)
    for pool in (python, bare):
        assert pool["apiVersion"] == constants.API_VERSION
        assert pool["metadata"]["namespace"] == "sandboxes"  # the one sandbox namespace
        assert pool["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert component(pool) == "pools"
        SandboxPool.from_body(pool)  # the operator's own model: raises naming the field it refuses
    assert python["metadata"]["name"] == "python"
    assert python["spec"] == {"size": 5, "maxAgeSeconds": 3600, "template": POOL_TEMPLATE}
    assert bare["spec"] == {"size": 0, "template": {}}
    assert isinstance(python["spec"]["size"], int) and isinstance(python["spec"]["maxAgeSeconds"], int)
    # --set gives integers where a values file gives floats: the same object either way.
    result = helm_template(helm, "--set", "pools[0].name=python", "--set", "pools[0].size=5",
                           "--set", "pools[0].maxAgeSeconds=3600")
    assert result.returncode == 0, result.stderr
    [pool] = select([d for d in yaml.safe_load_all(result.stdout) if d], constants.POOL_KIND)
    assert pool["spec"] == {"size": 5, "maxAgeSeconds": 3600, "template": {}}


def test_pool_namespace_defaults_to_the_one_sandbox_namespace_and_must_be_served(helm: Path, tmp_path: Path) -> None:
    two = {"sandboxNamespaces": {"names": ["team-a", "team-b"]}}
    docs = render(helm, {**two, "pools": [{"name": "p", "size": 1, "namespace": "team-b"},
                                          {"name": "p", "size": 1, "namespace": "team-a"}]}, tmp_path)
    assert sorted(p["metadata"]["namespace"] for p in select(docs, constants.POOL_KIND, "p")) == ["team-a", "team-b"]
    assert ('pools[0].namespace is required: it defaults only to a single sandbox namespace, and '
            'sandboxNamespaces.names is ["team-a","team-b"]') in render_error(
        helm, {**two, "pools": [{"name": "p", "size": 1}]}, tmp_path)
    # Without clusterWide the operator serves its sandbox namespaces only: a pool elsewhere would never fill.
    assert ('pools[0].namespace "elsewhere" is not watched by the operator: without clusterWide it serves only '
            'sandboxNamespaces.names ["sandboxes"]') in render_error(
        helm, {"pools": [{"name": "p", "size": 1, "namespace": "elsewhere"}]}, tmp_path)
    docs = render(helm, {"clusterWide": True, "pools": [{"name": "p", "size": 1, "namespace": "elsewhere"}]},
                  tmp_path)
    assert only(docs, constants.POOL_KIND)["metadata"]["namespace"] == "elsewhere"
    assert "pools[1] repeats the pool sandboxes/p of pools[0]" in render_error(
        helm, {"pools": [{"name": "p", "size": 1}, {"name": "p", "size": 2, "namespace": "sandboxes"}]}, tmp_path)


# A bad pools entry: the template's message, and the path the schema names.
BAD_POOLS: list[tuple[list[Any], str, str]] = [
    ([{"name": "p", "size": -1}], f"pools[0].size {SIZE_RULE}, not -1", "/pools/0/size"),
    ([{"name": "p", "size": 1.5}], f"pools[0].size {SIZE_RULE}, not 1.5", "/pools/0/size"),
    ([{"name": "p", "size": "3"}], f'pools[0].size {SIZE_RULE}, not "3"', "/pools/0/size"),
    ([{"name": "p", "size": limits.POOL_SIZE_MAX + 1}], f"pools[0].size {SIZE_RULE}, not {limits.POOL_SIZE_MAX + 1}",
     "/pools/0/size"),
    ([{"name": "ok", "size": 1}, {"name": "p"}], "pools[1].size is required", "/pools/1"),
    ([{"size": 1}], "pools[0].name is required", "/pools/0"),
    ([{"name": "Python", "size": 1}], "pools[0].name must be a DNS label of at most 63 characters", "/pools/0/name"),
    ([{"name": "p", "size": 1, "maxAgeSeconds": 10}], f"pools[0].maxAgeSeconds {MAX_AGE_RULE}, not 10",
     "/pools/0/maxAgeSeconds"),
    ([{"name": "p", "size": 1, "template": {"poolRef": {"name": "q"}}}], "pools[0].template.poolRef is not allowed",
     "/pools/0/template"),
]


@pytest.mark.parametrize(("pools", "message", "schema_path"), BAD_POOLS,
                         ids=[json.dumps(case[0], separators=(",", ":")) for case in BAD_POOLS])
def test_bad_pool_values_fail_naming_the_value(helm: Path, pools: list[Any], message: str, schema_path: str,
                                               tmp_path: Path) -> None:
    values = _values_args({"pools": pools}, tmp_path)
    # The template's own check, which holds even when the schema is skipped...
    result = helm_template(helm, *values, "--skip-schema-validation")
    assert result.returncode != 0 and message in result.stderr, result.stderr
    # ...and the schema's, which runs first.
    result = helm_template(helm, *values)
    assert "values don't meet the specifications of the schema" in result.stderr, result.stderr
    assert f"at '{schema_path}'" in result.stderr, result.stderr


def test_pool_values_schema_follows_the_crd() -> None:
    """The values schema knows a pool's fields by the SandboxPool CRD: the template's field names and types, and
    the bounds of size and maxAgeSeconds (templates/pools.yaml repeats the bounds; the failure messages above
    pin them)."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["pools"]["items"]["properties"]
    crd = yaml.safe_load((CHART / "crds" / f"{constants.POOL_CRD_NAME}.yaml").read_text())
    [version] = crd["spec"]["versions"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {name: node["type"] for name, node in schema["template"]["properties"].items()} == {
        name: node["type"] for name, node in spec["template"]["properties"].items()}
    for field in ("size", "maxAgeSeconds"):
        assert (schema[field]["type"], schema[field]["minimum"], schema[field]["maximum"]) == (
            spec[field]["type"], spec[field]["minimum"], spec[field]["maximum"]), field


# --- checkov ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def checkov() -> Path:
    """checkov in its own virtual environment in the machine's cache: its pins (packaging<24,
    python-dateutil<3) conflict with the project's (pytest, kubernetes), so it cannot share .venv."""
    venv = Path(hack_var("CACHE_ROOT")) / "tools" / f"checkov-{CHECKOV_VERSION}"
    binary = venv / "bin" / "checkov"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with (venv.parent / ".checkov.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                     [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                      f"checkov=={CHECKOV_VERSION}"]]
            for step in steps:
                result = subprocess.run(step, capture_output=True, text=True, timeout=900)
                if result.returncode != 0:
                    pytest.skip(f"checkov does not install here: {result.stderr[-800:]}")
    return binary


def test_checkov_scan_of_rendered_manifests(helm: Path, checkov: Path, tmp_path: Path) -> None:
    scan = tmp_path / "scan"
    scan.mkdir()
    for name, values in (("default", None), ("cluster-wide", CLUSTER_WIDE), ("namespaced", NAMESPACED)):
        result = helm_template(helm, *_values_args(values, tmp_path))
        assert result.returncode == 0, result.stderr
        (scan / f"{name}.yaml").write_text(result.stdout)
    # --skip-download: checkov contacts no platform API (this machine reaches no such address anyway).
    result = subprocess.run([str(checkov), "--directory", str(scan), "--framework", "kubernetes", "--quiet",
                             "--compact", "--skip-download", "--output", "json",
                             "--skip-check", ",".join(sorted(CHECKOV_SKIPS))],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [f"{c['check_id']} {c['check_name']}: {c['resource']}"
              for report in reports for c in report.get("results", {}).get("failed_checks", [])]
    assert not failed, "\n".join(failed)
    summary = reports[0]["summary"]
    assert summary["passed"] > 50 and summary["parsing_errors"] == 0, summary

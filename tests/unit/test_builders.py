"""The pod and NetworkPolicy builders: every hardening field, asserted on the JSON sent to the API server."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.builders.meta import child_labels
from sandbox_operator.builders.network_policy import build_network_policy
from sandbox_operator.builders.pod import active_deadline_seconds, build_pod
from sandbox_operator.models.effective import resolve
from sandbox_operator.models.quantity import parse_quantity
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.settings import OperatorSettings

CREATED = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SETTINGS = OperatorSettings()
HOST_UID = constants.SANDBOX_UID_RANGE_FIRST + 7  # what the UID pool handed this sandbox


def sandbox(spec: dict[str, Any] | None = None, name: str = "sbx-1") -> Sandbox:
    return Sandbox.from_body({
        "apiVersion": constants.API_VERSION, "kind": constants.KIND,
        "metadata": {"name": name, "namespace": "team-a", "uid": "uid-1", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z", "labels": {"evil": "label"}},
        "spec": spec or {}})


def to_json(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return data


def pod_json(spec: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS,
             now: datetime.datetime = CREATED, run_as_user: int = HOST_UID) -> dict[str, Any]:
    box = sandbox(spec)
    return to_json(build_pod(box, resolve(box.spec, settings), settings, run_as_user=run_as_user, now=now))


# --------------------------------------------------------------------------------------------------------------
# Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards):
# the checks the API server's PodSecurity admission applies, written out so a unit test can apply them.

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret", "image"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    spec = pod["spec"]
    pod_sc = spec.get("securityContext") or {}
    containers = [*spec.get("containers", []), *spec.get("initContainers", []),
                  *spec.get("ephemeralContainers", [])]
    out: list[str] = []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            out.append(field)
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume['name']}: {kinds}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            out.append(f"sysctl {sysctl['name']}")
    if (pod_sc.get("seLinuxOptions") or {}).get("user") or (pod_sc.get("seLinuxOptions") or {}).get("role"):
        out.append("pod seLinuxOptions")
    if pod_sc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    if (pod_sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
        out.append("pod appArmor Unconfined")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    if pod_seccomp == "Unconfined":
        out.append("pod seccomp Unconfined")
    for container in containers:
        sc = container.get("securityContext") or {}
        name = container["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation must be false")
        if not (sc.get("runAsNonRoot") is True or (pod_sc.get("runAsNonRoot") is True
                                                     and sc.get("runAsNonRoot") is not False)):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities add")
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{name}: procMount")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append(f"{name}: appArmor Unconfined")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            out.append(f"{name}: hostPort")
    return out


@pytest.mark.parametrize(("settings", "uid"), [(SETTINGS, HOST_UID),
                                               (OperatorSettings(user_namespaces=True), constants.SANDBOX_UID)],
                         ids=["plain", "userns"])
def test_pod_passes_pod_security_restricted(settings: OperatorSettings, uid: int) -> None:
    assert restricted_violations(pod_json(settings=settings, run_as_user=uid)) == []


def test_restricted_checker_catches_violations() -> None:
    """The checker above is not vacuous."""
    pod = pod_json()
    pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    pod["spec"]["hostPID"] = True
    pod["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    assert len(restricted_violations(pod)) == 3


# --------------------------------------------------------------------------------------------------------------


def test_pod_identity_and_ownership() -> None:
    pod = pod_json()
    meta = pod["metadata"]
    assert meta["name"] == constants.pod_name("sbx-1") and meta["namespace"] == "team-a"
    assert meta["labels"] == child_labels("sbx-1")
    assert "evil" not in meta["labels"], "the Sandbox's own labels are not copied onto the pod"
    assert meta["ownerReferences"] == [{
        "apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": "sbx-1", "uid": "uid-1",
        "controller": True, "blockOwnerDeletion": True}]


def test_pod_level_hardening() -> None:
    spec = pod_json()["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert (spec["hostNetwork"], spec["hostPID"], spec["hostIPC"]) == (False, False, False)
    assert spec["shareProcessNamespace"] is False
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 5
    assert spec["activeDeadlineSeconds"] == 3600
    assert spec["hostname"] == "sandbox"
    assert spec["dnsPolicy"] == "None" and spec["dnsConfig"] == {"nameservers": ["127.0.0.1"]}
    assert "hostUsers" not in spec
    assert spec["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": HOST_UID, "runAsGroup": 1000, "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert "appArmorProfile" not in str(spec)


def test_user_namespaces_setting_adds_host_users_false() -> None:
    assert pod_json(settings=OperatorSettings(user_namespaces=True))["spec"]["hostUsers"] is False


USERNS_GVISOR = OperatorSettings(user_namespaces=True, allowed_runtime_classes=["gvisor", "runc"])


@pytest.mark.parametrize(("spec", "settings", "host_users"), [
    ({"runtimeClassName": "gvisor"}, USERNS_GVISOR, None),
    ({"runtimeClassName": "runc"}, USERNS_GVISOR, False),
    ({}, USERNS_GVISOR, False),
    ({}, OperatorSettings(user_namespaces=True, default_runtime_class="gvisor"), None),
    ({"runtimeClassName": "gvisor"},
     OperatorSettings(user_namespaces=True, allowed_runtime_classes=["gvisor"], kernel_boundary_runtime_classes=[]),
     False),
    ({"runtimeClassName": "kata"},
     OperatorSettings(user_namespaces=True, allowed_runtime_classes=["kata"],
                      kernel_boundary_runtime_classes=["gvisor", "kata"]), None),
    ({"runtimeClassName": "gvisor"}, OperatorSettings(allowed_runtime_classes=["gvisor"]), None),
], ids=["gvisor", "runc-class", "node-default", "gvisor-by-default", "boundary-list-emptied", "kata-listed",
        "userns-off"])
def test_a_kernel_boundary_runtime_class_gets_no_user_namespace(
        spec: dict[str, Any], settings: OperatorSettings, host_users: bool | None) -> None:
    assert pod_json(spec, settings=settings)["spec"].get("hostUsers") is host_users


def test_kernel_boundary_runtime_classes_come_from_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_OPERATOR_KERNEL_BOUNDARY_RUNTIME_CLASSES", "gvisor, kata-fc")
    assert OperatorSettings().kernel_boundary_runtime_classes == ["gvisor", "kata-fc"]
    monkeypatch.delenv("SANDBOX_OPERATOR_KERNEL_BOUNDARY_RUNTIME_CLASSES")
    assert OperatorSettings().kernel_boundary_runtime_classes == ["gvisor"]


@pytest.mark.parametrize("uid", [constants.SANDBOX_UID, constants.SANDBOX_UID_RANGE_FIRST, 2**31 - 1])
def test_the_host_uid_is_the_pods_and_the_containers_but_the_group_stays(uid: int) -> None:
    spec = pod_json(run_as_user=uid)["spec"]
    container = spec["containers"][0]["securityContext"]
    assert spec["securityContext"]["runAsUser"] == container["runAsUser"] == uid
    assert spec["securityContext"]["runAsGroup"] == container["runAsGroup"] == constants.SANDBOX_GID
    assert spec["securityContext"]["fsGroup"] == constants.SANDBOX_GID


def test_control_plane_is_avoided_by_default() -> None:
    affinity = pod_json()["spec"]["affinity"]
    assert affinity == {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}]}}}
    assert "affinity" not in pod_json(settings=OperatorSettings(avoid_control_plane=False))["spec"]


def test_container_hardening() -> None:
    [container] = pod_json()["spec"]["containers"]
    assert container["name"] == constants.CONTAINER_NAME
    assert container["image"] == constants.SANDBOX_IMAGE
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == [constants.INIT_PROGRAM] and "args" not in container
    assert container["workingDir"] == constants.WORKSPACE_DIR
    assert container["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": HOST_UID, "runAsGroup": 1000, "allowPrivilegeEscalation": False,
        "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_no_probe_spawns_processes_in_the_sandbox() -> None:
    """Readiness comes from PID 1's start-up self-check; an exec probe would be a process per sandbox per period."""
    [container] = pod_json()["spec"]["containers"]
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(container)


def qos_class(pod: dict[str, Any]) -> str:
    """The pod's QoS class as the kubelet computes it (cpu and memory only; ephemeral storage does not count)."""
    requests: dict[str, list[str]] = {"cpu": [], "memory": []}
    limits: dict[str, list[str]] = {"cpu": [], "memory": []}
    guaranteed = True
    for container in pod["spec"]["containers"]:
        resources = container.get("resources") or {}
        for name in ("cpu", "memory"):
            request, limit = (resources.get("requests") or {}).get(name), (resources.get("limits") or {}).get(name)
            requests[name] += [request] if request else []
            limits[name] += [limit] if limit else []
            if limit is None or (request is not None and parse_quantity(request) != parse_quantity(limit)):
                guaranteed = False
    if not any(requests.values()) and not any(limits.values()):
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def test_default_requests_are_small_and_limits_stay_hard() -> None:
    pod = pod_json()
    [container] = pod["spec"]["containers"]
    assert container["resources"] == {
        "limits": {"cpu": "1", "memory": "512Mi", "ephemeral-storage": "1Gi"},
        "requests": {"cpu": "10m", "memory": "64Mi", "ephemeral-storage": "64Mi"}}
    assert qos_class(pod) == "Burstable"


def test_requests_and_limits_from_the_spec() -> None:
    [container] = pod_json({"resources": {"cpu": "250m", "memory": "1Gi", "ephemeralStorage": "2Gi",
                                          "requests": {"cpu": "100m"}}})["spec"]["containers"]
    assert container["resources"] == {
        "limits": {"cpu": "250m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
        "requests": {"cpu": "100m", "memory": "64Mi", "ephemeral-storage": "64Mi"}}


def test_default_requests_are_capped_at_a_smaller_limit() -> None:
    [container] = pod_json({"resources": {"cpu": "10m", "memory": "32Mi", "ephemeralStorage": "16Mi"}})[
        "spec"]["containers"]
    assert container["resources"]["requests"] == {"cpu": "10m", "memory": "32Mi", "ephemeral-storage": "16Mi"}


@pytest.mark.parametrize(("spec", "settings"), [
    ({"resources": {"cpu": "1", "memory": "1Gi",
                    "requests": {"cpu": "1000m", "memory": "1Gi", "ephemeralStorage": "1Gi"}}}, SETTINGS),
    ({}, OperatorSettings(default_cpu_request="1", default_memory_request="512Mi",
                          default_ephemeral_storage_request="1Gi")),
], ids=["per-sandbox", "settings"])
def test_requests_equal_to_limits_give_guaranteed_qos(spec: dict[str, Any], settings: OperatorSettings) -> None:
    pod = pod_json(spec, settings)
    [container] = pod["spec"]["containers"]
    assert qos_class(pod) == "Guaranteed"
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert {k: parse_quantity(v) for k, v in requests.items()} == {k: parse_quantity(v) for k, v in limits.items()}


def test_writable_emptydirs_with_size_limits() -> None:
    spec = pod_json()["spec"]
    assert spec["volumes"] == [{"name": "workspace", "emptyDir": {"sizeLimit": "1Gi"}},
                               {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    assert spec["containers"][0]["volumeMounts"] == [
        {"name": "workspace", "mountPath": constants.WORKSPACE_DIR}, {"name": "tmp", "mountPath": constants.TMP_DIR}]
    small = pod_json({"resources": {"ephemeralStorage": "100Mi"}})["spec"]["volumes"]
    assert [v["emptyDir"]["sizeLimit"] for v in small] == ["100Mi", "100Mi"]


def test_environment() -> None:
    [container] = pod_json({"timeouts": {"commandSeconds": 42}, "resources": {"pids": 30},
                            "env": [{"name": "FOO", "value": "bar"}]})["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env == {"HOME": constants.WORKSPACE_DIR, "FOO": "bar", constants.ENV_COMMAND_TIMEOUT: "42",
                   constants.ENV_PIDS_LIMIT: "30", constants.ENV_FILE_SIZE_LIMIT: str(SETTINGS.file_size_limit_bytes)}
    assert [e["name"] for e in container["env"]][-3:] == [
        constants.ENV_COMMAND_TIMEOUT, constants.ENV_PIDS_LIMIT, constants.ENV_FILE_SIZE_LIMIT]
    default_env = {e["name"]: e.get("value") for e in pod_json()["spec"]["containers"][0]["env"]}
    assert default_env[constants.ENV_PIDS_LIMIT] == "20" and default_env[constants.ENV_COMMAND_TIMEOUT] == "300"


@pytest.mark.parametrize("settings", [SETTINGS, OperatorSettings(user_namespaces=True)], ids=["plain", "userns"])
def test_process_limit_goes_to_the_wrapper_in_both_modes(settings: OperatorSettings) -> None:
    """Every sandbox has host UIDs of its own either way, so RLIMIT_NPROC never couples two sandboxes."""
    env = {e["name"]: e.get("value") for e in pod_json({"resources": {"pids": 30}}, settings=settings)[
        "spec"]["containers"][0]["env"]}
    assert env[constants.ENV_PIDS_LIMIT] == "30" and env[constants.ENV_COMMAND_TIMEOUT] == "300"


def test_user_may_override_home_once() -> None:
    env = pod_json({"env": [{"name": "HOME", "value": "/tmp"}]})["spec"]["containers"][0]["env"]
    assert [e for e in env if e["name"] == "HOME"] == [{"name": "HOME", "value": "/tmp"}]


def test_secret_env_when_allowed() -> None:
    env = pod_json({"env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
                   settings=OperatorSettings(allow_secret_env=True))["spec"]["containers"][0]["env"]
    assert {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}} in env


def test_user_command_args_and_workdir() -> None:
    [container] = pod_json({"command": ["sleep"], "args": ["infinity"], "workingDir": "/tmp/x"})[
        "spec"]["containers"]
    assert (container["command"], container["args"], container["workingDir"]) == (["sleep"], ["infinity"], "/tmp/x")


def test_user_labels_and_annotations_never_override_the_operators() -> None:
    meta = pod_json({"podLabels": {"team": "a"}, "podAnnotations": {"example.com/n": "1"}})["metadata"]
    assert meta["labels"] == {"team": "a", **child_labels("sbx-1")}
    assert meta["annotations"] == {"example.com/n": "1"}


def test_scheduling_fields() -> None:
    spec = pod_json({"runtimeClassName": "gvisor", "nodeSelector": {"pool": "sandboxes"},
                     "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]},
                    settings=OperatorSettings(priority_class_name="sandbox-low", allowed_runtime_classes=["gvisor"],
                                              allowed_node_selector_keys=["pool"],
                                              allowed_toleration_keys=["sandbox"]))["spec"]
    assert spec["runtimeClassName"] == "gvisor"
    assert spec["nodeSelector"] == {"pool": "sandboxes"}
    assert spec["tolerations"] == [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["priorityClassName"] == "sandbox-low"
    plain = pod_json()["spec"]
    assert not {"runtimeClassName", "nodeSelector", "tolerations", "priorityClassName"} & set(plain)


@pytest.mark.parametrize(("elapsed", "expected"), [(0, 3600), (600.2, 3000), (3599.5, 1), (9999, 1)])
def test_active_deadline_counts_from_the_sandboxs_creation(elapsed: float, expected: int) -> None:
    now = CREATED + datetime.timedelta(seconds=elapsed)
    assert active_deadline_seconds(sandbox(), 3600, now) == expected
    assert pod_json(now=now)["spec"]["activeDeadlineSeconds"] == expected


def test_builders_are_deterministic() -> None:
    assert pod_json() == pod_json()


def test_network_policy_denies_everything() -> None:
    policy = to_json(build_network_policy(sandbox()))
    assert policy["metadata"]["name"] == constants.network_policy_name("sbx-1")
    assert policy["metadata"]["namespace"] == "team-a"
    assert policy["metadata"]["labels"] == child_labels("sbx-1")
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["metadata"]["ownerReferences"][0]["controller"] is True
    assert policy["spec"] == {"podSelector": {"matchLabels": {constants.LABEL_SANDBOX: "sbx-1"}},
                              "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}


def test_network_policy_selects_the_pod() -> None:
    pod_labels = pod_json({"podLabels": {"team": "a"}})["metadata"]["labels"]
    selector = to_json(build_network_policy(sandbox()))["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

"""The Sandbox models: parsing, defaults from settings, and checks against the operator's settings."""

from __future__ import annotations

import ast
import datetime
from pathlib import Path
from typing import Any

import pytest

from sandbox_operator import constants
from sandbox_operator.models.conditions import REASONS_BY_PHASE
from sandbox_operator.models.effective import effective_timeouts, resolve
from sandbox_operator.models.sandbox import (
    InvalidSpecError,
    Sandbox,
    SandboxSpec,
    SandboxStatus,
    immutable_violations,
)
from sandbox_operator.models.timestamps import format_time, parse_time
from sandbox_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()


def body(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": "sbx-1", "namespace": "ns", "uid": "u-1", "generation": 3,
                         "creationTimestamp": "2026-01-01T00:00:00Z", **meta},
            "spec": spec or {}}


def test_empty_spec_gets_the_project_defaults() -> None:
    spec = resolve(Sandbox.from_body(body()).spec, SETTINGS)
    assert spec.image == constants.SANDBOX_IMAGE
    assert spec.command == (constants.INIT_PROGRAM,)
    assert spec.args is None
    assert (spec.cpu, spec.memory, spec.ephemeral_storage, spec.pids) == ("1", "512Mi", "1Gi", 20)
    assert (spec.cpu_request, spec.memory_request, spec.ephemeral_storage_request) == ("10m", "64Mi", "64Mi")
    assert (spec.command_seconds, spec.idle_seconds, spec.lifetime_seconds) == (300, 1800, 3600)
    assert spec.working_dir == constants.WORKSPACE_DIR
    assert spec.runtime_class_name is None


def test_integer_quantities_are_kept_as_strings() -> None:
    sandbox = Sandbox.from_body(body({"resources": {"cpu": 2, "memory": 1073741824}}))
    assert sandbox.spec.resources is not None
    assert (sandbox.spec.resources.cpu, sandbox.spec.resources.memory) == ("2", "1073741824")


def test_spec_values_override_defaults() -> None:
    spec = resolve(Sandbox.from_body(body({
        "resources": {"cpu": "250m", "memory": "1Gi", "pids": 50},
        "timeouts": {"commandSeconds": 30, "idleSeconds": 60, "lifetimeSeconds": 120},
        "workingDir": "/tmp", "command": ["sleep"], "args": ["infinity"]})).spec, SETTINGS)
    assert (spec.cpu, spec.memory, spec.ephemeral_storage, spec.pids) == ("250m", "1Gi", "1Gi", 50)
    assert (spec.command_seconds, spec.idle_seconds, spec.lifetime_seconds) == (30, 60, 120)
    assert (spec.working_dir, spec.command, spec.args) == ("/tmp", ("sleep",), ("infinity",))


def test_requests_from_the_spec_or_defaulted_and_capped_at_the_limit() -> None:
    spec = resolve(SandboxSpec.model_validate({"resources": {
        "cpu": "2", "memory": "32Mi", "requests": {"cpu": "2", "ephemeralStorage": "1Gi"}}}), SETTINGS)
    assert (spec.cpu, spec.memory, spec.ephemeral_storage) == ("2", "32Mi", "1Gi")
    assert (spec.cpu_request, spec.memory_request, spec.ephemeral_storage_request) == ("2", "32Mi", "1Gi")


def test_defaults_never_exceed_a_short_lifetime() -> None:
    spec = resolve(SandboxSpec.model_validate({"timeouts": {"lifetimeSeconds": 60}}), SETTINGS)
    assert (spec.command_seconds, spec.idle_seconds, spec.lifetime_seconds) == (60, 60, 60)
    spec = resolve(SandboxSpec.model_validate({"timeouts": {"idleSeconds": 7200}}), SETTINGS)
    assert spec.idle_seconds == 3600  # capped at the defaulted lifetime


@pytest.mark.parametrize(("spec", "settings", "fragment"), [
    ({"image": "docker.io/library/python:3"}, SETTINGS, "spec.image 'docker.io/library/python:3' is not allowed"),
    ({"resources": {"cpu": "5"}}, SETTINGS, "spec.resources.cpu 5 exceeds the operator's maximum 4"),
    ({"resources": {"memory": "9Gi"}}, SETTINGS, "spec.resources.memory 9Gi exceeds"),
    ({"resources": {"ephemeralStorage": "11Gi"}}, SETTINGS, "spec.resources.ephemeralStorage 11Gi exceeds"),
    ({"resources": {"pids": 2000}}, SETTINGS, "spec.resources.pids 2000 exceeds"),
    ({"resources": {"cpu": "5", "requests": {"cpu": "5"}}}, SETTINGS,
     "spec.resources.requests.cpu 5 exceeds the operator's maximum 4"),
    ({"resources": {"requests": {"memory": "1Gi"}}}, SETTINGS,
     "spec.resources.requests.memory 1Gi exceeds the limit 512Mi (the operator's default "
     "SANDBOX_OPERATOR_DEFAULT_MEMORY)"),
    ({"resources": {"requests": {"ephemeralStorage": "2Gi"}}}, OperatorSettings(default_ephemeral_storage="1Gi"),
     "spec.resources.requests.ephemeralStorage 2Gi exceeds the limit 1Gi"),
    ({"timeouts": {"commandSeconds": 4000}}, OperatorSettings(default_lifetime_seconds=80000),
     "spec.timeouts.commandSeconds 4000 exceeds the operator's maximum 3600"),
    ({"timeouts": {"lifetimeSeconds": 90000}}, SETTINGS, "spec.timeouts.lifetimeSeconds 90000 exceeds"),
    ({"timeouts": {"idleSeconds": 200}}, OperatorSettings(max_idle_seconds=100, default_idle_seconds=50),
     "spec.timeouts.idleSeconds 200 exceeds the operator's maximum 100"),
    ({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, SETTINGS,
     "spec.env K: Secret references are not allowed"),
    ({"runtimeClassName": "runc"}, OperatorSettings(allowed_runtime_classes=["gvisor"]),
     'spec.runtimeClassName "runc" is not allowed (allowed runtime classes: gvisor; '
     "SANDBOX_OPERATOR_ALLOWED_RUNTIME_CLASSES)"),
])
def test_operator_settings_reject(spec: dict[str, Any], settings: OperatorSettings, fragment: str) -> None:
    with pytest.raises(InvalidSpecError) as error:
        resolve(SandboxSpec.model_validate(spec), settings)
    assert fragment in str(error.value)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(InvalidSpecError) as error:
        resolve(SandboxSpec.model_validate({"image": "evil/img:1", "resources": {"cpu": "8"}}), SETTINGS)
    assert "spec.image" in str(error.value) and "spec.resources.cpu" in str(error.value)


def test_secret_env_allowed_when_configured() -> None:
    spec = resolve(SandboxSpec.model_validate(
        {"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
        OperatorSettings(allow_secret_env=True))
    assert spec.env[0].value_from is not None


def test_default_runtime_class_applies() -> None:
    settings = OperatorSettings(default_runtime_class="gvisor", allowed_runtime_classes=["gvisor", "kata"])
    assert resolve(SandboxSpec(), settings).runtime_class_name == "gvisor"
    assert resolve(SandboxSpec.model_validate({"runtimeClassName": "kata"}), settings).runtime_class_name == "kata"


def invalid(spec: dict[str, Any], settings: OperatorSettings = SETTINGS) -> str:
    with pytest.raises(InvalidSpecError) as error:
        resolve(SandboxSpec.model_validate(spec), settings)
    return str(error.value)


def test_empty_runtime_class_list_allows_only_the_default() -> None:
    assert resolve(SandboxSpec(), SETTINGS).runtime_class_name is None
    assert invalid({"runtimeClassName": "anything-goes"}) == (
        'spec.runtimeClassName "anything-goes" is not allowed (allowed runtime classes: none; '
        "SANDBOX_OPERATOR_ALLOWED_RUNTIME_CLASSES)")
    settings = OperatorSettings(default_runtime_class="gvisor")
    assert settings.runtime_class_allowed("gvisor") and not settings.runtime_class_allowed("runc")
    assert resolve(SandboxSpec.model_validate({"runtimeClassName": "gvisor"}), settings).runtime_class_name == \
        "gvisor"
    assert "(allowed runtime classes: gvisor (the default);" in invalid({"runtimeClassName": "runc"}, settings)
    anything = OperatorSettings(allowed_runtime_classes=["*"], default_runtime_class="gvisor")
    assert resolve(SandboxSpec.model_validate({"runtimeClassName": "kata"}), anything).runtime_class_name == "kata"


def test_tolerations_need_an_allowed_key() -> None:
    assert invalid({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}) == (
        'spec.tolerations[0].key "node-role.kubernetes.io/control-plane" is not allowed (allowed toleration keys: '
        "none; SANDBOX_OPERATOR_ALLOWED_TOLERATION_KEYS)")
    settings = OperatorSettings(allowed_toleration_keys=["sandbox", "gpu"])
    spec = resolve(SandboxSpec.model_validate({"tolerations": [{"key": "gpu", "operator": "Exists"},
                                                               {"key": "sandbox", "value": "x"}]}), settings)
    assert [t.key for t in spec.tolerations] == ["gpu", "sandbox"]
    message = invalid({"tolerations": [{"key": "gpu", "operator": "Exists"}, {"key": "dedicated", "value": "x"}]},
                      settings)
    assert message.startswith('spec.tolerations[1].key "dedicated" is not allowed (allowed toleration keys: '
                              "sandbox, gpu;"), message


def test_a_toleration_of_every_taint_needs_the_wildcard() -> None:
    everything = {"tolerations": [{"operator": "Exists"}]}
    for settings in (SETTINGS, OperatorSettings(allowed_toleration_keys=["sandbox"])):
        message = invalid(everything, settings)
        assert message.startswith("spec.tolerations[0] has an empty key and so tolerates every taint"), message
        assert "SANDBOX_OPERATOR_ALLOWED_TOLERATION_KEYS=*" in message
    anything = OperatorSettings(allowed_toleration_keys=["*"])
    assert len(resolve(SandboxSpec.model_validate(everything), anything).tolerations) == 1
    assert resolve(SandboxSpec.model_validate({"tolerations": [{"key": "x", "operator": "Exists"}]}), anything)


@pytest.mark.parametrize("key", ["kubernetes.io/hostname", "node-role.kubernetes.io/control-plane", "pool"])
def test_node_selector_keys_outside_the_safe_set_are_refused(key: str) -> None:
    message = invalid({"nodeSelector": {"kubernetes.io/arch": "amd64", key: "x"}})
    assert message == (f'spec.nodeSelector key "{key}" is not allowed (allowed node selector keys: '
                       "kubernetes.io/arch, kubernetes.io/os, node.kubernetes.io/instance-type, "
                       "topology.kubernetes.io/zone, topology.kubernetes.io/region; "
                       "SANDBOX_OPERATOR_ALLOWED_NODE_SELECTOR_KEYS)")


def test_node_selector_keys_the_admin_allows() -> None:
    safe = {"kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "a"}
    assert resolve(SandboxSpec.model_validate({"nodeSelector": safe}), SETTINGS).node_selector == safe
    pools = OperatorSettings(allowed_node_selector_keys=["pool"])
    assert resolve(SandboxSpec.model_validate({"nodeSelector": {"pool": "p"}}), pools).node_selector == {"pool": "p"}
    assert "spec.nodeSelector" in invalid({"nodeSelector": {"kubernetes.io/os": "linux"}}, pools)
    anything = OperatorSettings(allowed_node_selector_keys=["*"])
    assert resolve(SandboxSpec.model_validate({"nodeSelector": {"kubernetes.io/hostname": "n"}}), anything)


def test_placement_problems_are_named_together() -> None:
    message = invalid({"tolerations": [{"key": "a", "operator": "Exists"}], "nodeSelector": {"b": "c"},
                       "runtimeClassName": "d", "resources": {"cpu": "8"}})
    for fragment in ("spec.tolerations[0].key", "spec.nodeSelector key", "spec.runtimeClassName",
                     "spec.resources.cpu"):
        assert fragment in message


def test_a_request_above_its_own_limit_is_an_invalid_spec_naming_both_fields() -> None:
    """Past admission (the CRD's CEL rule refuses it first), the model's re-check does."""
    with pytest.raises(InvalidSpecError) as error:
        Sandbox.from_body(body({"resources": {"cpu": "500m", "requests": {"cpu": "1"}}}))
    assert "spec.resources.requests.cpu must not exceed spec.resources.cpu" in str(error.value)


def test_invalid_spec_error_names_the_field() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.timeouts\.idleSeconds"):
        Sandbox.from_body(body({"timeouts": {"idleSeconds": 1}}))
    with pytest.raises(InvalidSpecError, match=r"spec\.resources: cpu must be between 10m and 64"):
        Sandbox.from_body(body({"resources": {"cpu": "100"}}))


def test_name_must_fit_a_pod_name_and_label() -> None:
    with pytest.raises(InvalidSpecError, match=r"metadata\.name"):
        Sandbox.from_body(body(name="x" * 64))
    assert Sandbox.from_body(body(name="x" * 63)).name == "x" * 63


def test_bad_status_is_ignored_but_bad_spec_is_not() -> None:
    sandbox = Sandbox.from_body({**body(), "status": {"phase": "Bogus", "conditions": "nope"}})
    assert sandbox.status == SandboxStatus()
    shell = Sandbox.shell_from_body({**body({"resources": {"cpu": "x"}}), "status": {"phase": "Ready"}})
    assert shell.status.phase == "Ready"
    assert shell.spec == SandboxSpec()


def test_status_round_trips_in_api_shape() -> None:
    raw = {"phase": "Ready", "podName": "sbx-1", "podUID": "p-1", "podIP": "10.0.0.5",
           "readyTime": "2026-01-01T00:00:02Z",
           "conditions": [{"type": "Ready", "status": "True", "reason": "PodReady", "message": "",
                           "lastTransitionTime": "2026-01-01T00:00:02Z", "observedGeneration": 3}]}
    status = SandboxStatus.model_validate(raw)
    assert status.pod_ip == "10.0.0.5"
    assert status.model_dump(mode="json", by_alias=True, exclude_none=True) == raw


def test_times_are_rfc3339_utc_seconds() -> None:
    moment = datetime.datetime(2026, 1, 1, 1, 2, 3, 456789, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert format_time(moment) == "2025-12-31T23:02:03Z"
    assert parse_time(format_time(moment)) == moment.replace(microsecond=0)
    with pytest.raises(ValueError, match="time zone"):
        format_time(moment.replace(tzinfo=None))


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-28T01:02:03Z", datetime.datetime(2026, 11, 28, 1, 2, 3, tzinfo=datetime.UTC)),
    ("2026-11-28T02:02:03.5+01:00", datetime.datetime(2026, 11, 28, 1, 2, 3, 500000, tzinfo=datetime.UTC)),
    ("2026-11-28T01:02:03", None),  # no zone: not RFC 3339, and never guessed
    ("nonsense", None), ("", None), (None, None), (1700000000, None),
])
def test_parse_time(text: object, expected: datetime.datetime | None) -> None:
    assert parse_time(text) == expected


def test_immutable_violations() -> None:
    old = SandboxSpec.model_validate({"image": "a/b:1", "timeouts": {"lifetimeSeconds": 100, "idleSeconds": 50}})
    assert immutable_violations(old, old) == []
    lowered = SandboxSpec.model_validate({"image": "a/b:1", "timeouts": {"lifetimeSeconds": 90, "idleSeconds": 20},
                                          "podLabels": {"x": "y"}})
    assert immutable_violations(old, lowered) == []
    changed = SandboxSpec.model_validate({"image": "a/b:2", "timeouts": {"lifetimeSeconds": 200}})
    assert immutable_violations(old, changed) == [
        "spec.image is immutable",
        "spec.timeouts.lifetimeSeconds may be lowered after creation, not raised or removed"]


def test_effective_timeouts_never_raise_and_cap() -> None:
    assert effective_timeouts(SandboxSpec(), SETTINGS) == (300, 1800, 3600)
    big = SandboxSpec.model_validate({"timeouts": {"lifetimeSeconds": 10**6, "idleSeconds": 10**6}})
    assert effective_timeouts(big, SETTINGS) == (300, 86400, 86400)


def _status_reasons_in_operator_code() -> set[tuple[str, str]]:
    """(phase, reason) of every literal verdict the operator's code writes: ``Verdict("Failed", "OOMKilled", ...)``,
    and the Failed reasons handed to ``_Refused(...)``/``_fail(...)``."""
    package = Path(constants.__file__).parent
    found: set[tuple[str, str]] = set()
    for path in [*(package / "builders").glob("*.py"), *(package / "handlers").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            literals = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None
                        for a in node.args]
            if node.func.id == "Verdict" and len(literals) >= 2 and literals[0] and literals[1]:
                found.add((literals[0], literals[1]))
            elif node.func.id == "_Refused" and literals and literals[0]:
                found.add(("Failed", literals[0]))
            elif node.func.id == "_fail" and len(literals) >= 3 and literals[2]:
                found.add(("Failed", literals[2]))
    return found


def test_the_shared_reasons_are_the_ones_the_operator_writes() -> None:
    """The SDK judges a Sandbox by REASONS_BY_PHASE, so it must hold exactly what the operator's code writes."""
    written = _status_reasons_in_operator_code()
    assert ("Failed", "ImageMissing") in written and ("Expired", "LifetimeExpired") in written  # the scan works
    listed = {(phase, reason) for phase, reasons in REASONS_BY_PHASE.items() for reason in reasons}
    assert written - listed == set(), "reasons the operator writes that models/conditions.py does not list"
    assert listed - written == set(), "reasons models/conditions.py lists that the operator never writes"

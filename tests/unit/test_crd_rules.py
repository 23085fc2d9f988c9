"""Every bound and CEL rule of the Sandbox CRD has a case that must be rejected, by both gates.

Each bad spec is checked twice: against the generated CRD schema (OpenAPI value validation plus its CEL rules,
evaluated with cel-python, the Kubernetes quantity functions shimmed) and by the operator's own models (the
re-check for objects that got past admission). A coverage test proves that every bound and rule in the spec's
schema is exercised by at least one case.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import celpy
import pytest
from celpy import celtypes
from celpy.adapter import json_to_cel

from sandbox_operator import crdgen
from sandbox_operator.models.effective import resolve
from sandbox_operator.models.quantity import parse_quantity
from sandbox_operator.models.sandbox import InvalidSpecError, Sandbox, SandboxSpec, immutable_violations
from sandbox_operator.settings import OperatorSettings

SCHEMA = crdgen.openapi_schema()
BOUND_KEYWORDS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "maxItems", "maxProperties", "enum",
                  "required")

# --------------------------------------------------------------------------------------------------------------
# A small validator: the OpenAPI keywords the CRD uses, plus CEL via cel-python.

_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}


def _is_quantity(value: Any) -> celtypes.BoolType:
    try:
        parse_quantity(str(value))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _quantity(value: Any) -> celtypes.DoubleType:
    return celtypes.DoubleType(float(parse_quantity(str(value))))


def _compare_to(a: Any, b: Any) -> celtypes.IntType:
    return celtypes.IntType((a > b) - (a < b))


_FUNCTIONS: dict[str, Any] = {"isQuantity": _is_quantity, "quantity": _quantity, "compareTo": _compare_to}


def cel_holds(rule: str, self_value: Any, old_value: Any = None) -> bool:
    program = _PROGRAMS.get(rule)
    if program is None:
        program = _PROGRAMS[rule] = _ENV.program(_ENV.compile(rule), functions=_FUNCTIONS)
    activation = {"self": json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = json_to_cel(old_value)
    result = program.evaluate(activation)
    if isinstance(result, Exception):
        raise AssertionError(f"CEL rule {rule!r} failed to evaluate: {result}")
    return bool(result)


@dataclass
class Rejection:
    path: str
    keyword: str
    message: str


def _type_ok(schema: dict[str, Any], value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, str)
    expected = schema.get("type")
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        None: True,
    }[expected]


def validate(schema: dict[str, Any], value: Any, old: Any = None, path: str = "") -> list[Rejection]:
    """What the API server would reject in ``value`` (``old`` enables transition rules)."""
    out: list[Rejection] = []
    if not _type_ok(schema, value):
        return [Rejection(path, "type", f"must be {schema.get('type')}")]
    if "enum" in schema and value not in schema["enum"]:
        out.append(Rejection(path, "enum", f"must be one of {schema['enum']}"))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            out.append(Rejection(path, "maxLength", "too long"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            out.append(Rejection(path, "minLength", "too short"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            out.append(Rejection(path, "pattern", "does not match"))
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(Rejection(path, "minimum", "too small"))
        if "maximum" in schema and value > schema["maximum"]:
            out.append(Rejection(path, "maximum", "too large"))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append(Rejection(path, "maxItems", "too many items"))
        if schema.get("x-kubernetes-list-type") == "map":
            keys = [tuple(item.get(k) for k in schema["x-kubernetes-list-map-keys"]) for item in value]
            if len(keys) != len(set(keys)):
                out.append(Rejection(path, "x-kubernetes-list-type", "duplicate map-list keys"))
        for index, item in enumerate(value):
            out += validate(schema["items"], item, None, f"{path}[{index}]")
    if isinstance(value, dict):
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            out.append(Rejection(path, "maxProperties", "too many properties"))
        for name in schema.get("required", []):
            if name not in value:
                out.append(Rejection(f"{path}.{name}", "required", "required"))
        properties = schema.get("properties")
        for key, item in value.items():
            if properties is not None:
                if key not in properties:
                    out.append(Rejection(f"{path}.{key}", "unknown", "unknown field"))
                    continue
                old_item = old.get(key) if isinstance(old, dict) else None
                out += validate(properties[key], item, old_item, f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += validate(schema["additionalProperties"], item, None, f"{path}[{key}]")
    if not out:  # like the API server: CEL runs on values that passed the OpenAPI checks
        for rule in schema.get("x-kubernetes-validations", []):
            transition = "oldSelf" in rule["rule"]
            if transition and old is None:
                continue
            if not cel_holds(rule["rule"], value, old if transition else None):
                out.append(Rejection(path + rule.get("fieldPath", ""), "x-kubernetes-validations", rule["message"]))
    return out


def sandbox(spec: dict[str, Any], name: str = "sbx-1") -> dict[str, Any]:
    return {"apiVersion": "sandbox-operator.io/v1alpha1", "kind": "Sandbox",
            "metadata": {"name": name, "namespace": "ns", "uid": "u-1"}, "spec": spec}


def api_rejections(spec: dict[str, Any], old_spec: dict[str, Any] | None = None,
                   name: str = "sbx-1") -> list[Rejection]:
    old = sandbox(old_spec, name) if old_spec is not None else None
    return validate(SCHEMA, sandbox(spec, name), old)


LENIENT = OperatorSettings(allowed_images=["*"], allow_secret_env=True, max_cpu="64", max_memory="256Gi",
                           max_ephemeral_storage="1Ti", max_pids=32768, max_command_seconds=86400,
                           max_idle_seconds=30 * 86400, max_lifetime_seconds=30 * 86400,
                           default_idle_seconds=10, default_lifetime_seconds=30 * 86400,
                           allowed_runtime_classes=["*"], allowed_toleration_keys=["*"],
                           allowed_node_selector_keys=["*"])


def operator_rejects(spec: dict[str, Any], old_spec: dict[str, Any] | None = None, name: str = "sbx-1") -> bool:
    """The operator's own check, with settings that allow everything the CRD allows."""
    try:
        parsed = Sandbox.from_body(sandbox(spec, name))
        resolve(parsed.spec, LENIENT)
    except InvalidSpecError:
        return True
    if old_spec is not None:
        return bool(immutable_violations(SandboxSpec.model_validate(old_spec), parsed.spec))
    return False


# --------------------------------------------------------------------------------------------------------------
# The cases.

VALID_SPEC: dict[str, Any] = {
    "image": "localhost/sandbox-operator/sandbox:0.1.0",
    "command": ["/usr/local/bin/sandbox-init"],
    "args": ["--verbose"],
    "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
    "resources": {"cpu": "500m", "memory": "512Mi", "ephemeralStorage": "1Gi", "pids": 20,
                  "requests": {"cpu": "100m", "memory": "128Mi", "ephemeralStorage": "256Mi"}},
    "timeouts": {"commandSeconds": 60, "idleSeconds": 600, "lifetimeSeconds": 3600},
    "workingDir": "/workspace/project",
    "podLabels": {"team": "a", "example.com/tier": "x"},
    "podAnnotations": {"example.com/note": "hello"},
    "runtimeClassName": "gvisor",
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
}


@dataclass
class Case:
    id: str
    spec: dict[str, Any]
    covers: list[tuple[str, str]] = field(default_factory=list)  # (schema path, keyword)
    name: str = "sbx-1"


def with_spec(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(VALID_SPEC)
    for dotted, value in changes.items():
        node = spec
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return spec


def quantity_cases(name: str, where: str, not_a_quantity: str, too_small: str,
                   too_large: dict[str, Any] | None = None) -> list[Case]:
    """A quantity field (``resources.cpu``, ``resources.requests.memory``, ...) refused for its pattern, its length,
    and its bounds, which the CEL rule of the object holding it checks (``too_large``: a whole spec, if there is an
    upper bound)."""
    path = f"spec.{where}"
    key = where.replace(".", "__")
    bounds = [(path.rpartition(".")[0], CEL)]
    cases = [Case(f"{name}-pattern", with_spec(**{key: not_a_quantity}), [(path, "pattern")]),
             Case(f"{name}-too-long", with_spec(**{key: "1" * 33}), [(path, "maxLength")]),
             Case(f"{name}-too-small", with_spec(**{key: too_small}), bounds)]
    if too_large is not None:
        cases.append(Case(f"{name}-too-large", too_large, bounds))
    return cases


# A Sandbox taking its pod from a pool, with every override it may carry.
POOLED_SPEC: dict[str, Any] = {
    "poolRef": {"name": "python"},
    "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 3600},
    "podLabels": {"team": "a"},
    "podAnnotations": {"example.com/note": "hello"},
}
NOT_WITH_POOL = ("image", "command", "args", "env", "resources", "workingDir", "runtimeClassName", "nodeSelector",
                 "tolerations", "timeouts.commandSeconds")


def pooled_with(path: str) -> dict[str, Any]:
    """POOLED_SPEC plus one field (dotted path) taken from VALID_SPEC."""
    spec = copy.deepcopy(POOLED_SPEC)
    parent, _, leaf = path.rpartition(".")
    source, target = VALID_SPEC, spec
    if parent:
        source, target = VALID_SPEC[parent], spec[parent]
    target[leaf] = copy.deepcopy(source[leaf])
    return spec


ENV_OK = {"name": "A", "value": "1"}
TOL_OK = {"key": "k", "operator": "Equal", "value": "v"}
CEL = "x-kubernetes-validations"

BAD_CASES = [
    Case("image-pattern", with_spec(image="UPPER/Case:1"), [("spec.image", "pattern")]),
    Case("image-too-long", with_spec(image="a" * 513), [("spec.image", "maxLength")]),
    Case("command-too-many", with_spec(command=["x"] * 65), [("spec.command", "maxItems")]),
    Case("command-item-too-long", with_spec(command=["x" * 4097]), [("spec.command[]", "maxLength")]),
    Case("args-too-many", with_spec(args=["x"] * 65), [("spec.args", "maxItems")]),
    Case("args-item-too-long", with_spec(args=["x" * 4097]), [("spec.args[]", "maxLength")]),
    Case("env-too-many", with_spec(env=[{"name": f"V{i}", "value": "x"} for i in range(65)]),
         [("spec.env", "maxItems")]),
    Case("env-duplicate", with_spec(env=[ENV_OK, ENV_OK]), [("spec.env", "x-kubernetes-list-type")]),
    Case("env-name-missing", with_spec(env=[{"value": "x"}]), [("spec.env[]", "required")]),
    Case("env-name-pattern", with_spec(env=[{"name": "1BAD", "value": "x"}]), [("spec.env[].name", "pattern")]),
    Case("env-name-too-long", with_spec(env=[{"name": "A" * 257, "value": "x"}]),
         [("spec.env[].name", "maxLength")]),
    Case("env-value-too-long", with_spec(env=[{"name": "A", "value": "x" * 4097}]),
         [("spec.env[].value", "maxLength")]),
    Case("env-value-and-from", with_spec(env=[{"name": "A", "value": "x",
                                               "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
         [("spec.env[]", CEL)]),
    Case("env-reserved-name", with_spec(env=[{"name": "SANDBOX_PIDS_LIMIT", "value": "99"}]),
         [("spec.env[]", CEL)]),
    Case("env-from-without-ref", with_spec(env=[{"name": "A", "valueFrom": {}}]),
         [("spec.env[].valueFrom", "required")]),
    Case("env-secret-name-pattern", with_spec(env=[{"name": "A", "valueFrom": {"secretKeyRef": {
        "name": "Bad_Name", "key": "k"}}}]), [("spec.env[].valueFrom.secretKeyRef.name", "pattern")]),
    Case("env-secret-name-too-long", with_spec(env=[{"name": "A", "valueFrom": {"secretKeyRef": {
        "name": "a" * 254, "key": "k"}}}]), [("spec.env[].valueFrom.secretKeyRef.name", "maxLength")]),
    Case("env-secret-key-pattern", with_spec(env=[{"name": "A", "valueFrom": {"secretKeyRef": {
        "name": "s", "key": "a/b"}}}]), [("spec.env[].valueFrom.secretKeyRef.key", "pattern")]),
    Case("env-secret-key-too-long", with_spec(env=[{"name": "A", "valueFrom": {"secretKeyRef": {
        "name": "s", "key": "k" * 254}}}]), [("spec.env[].valueFrom.secretKeyRef.key", "maxLength")]),
    Case("env-secret-missing-key", with_spec(env=[{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]),
         [("spec.env[].valueFrom.secretKeyRef", "required")]),
    *quantity_cases("cpu", "resources.cpu", "-1", "1m", with_spec(resources__cpu=65)),
    *quantity_cases("memory", "resources.memory", "1GB", "1Mi", with_spec(resources__memory="257Gi")),
    *quantity_cases("storage", "resources.ephemeralStorage", "lots", "1Ki",
                    with_spec(resources__ephemeralStorage="2Ti")),
    *quantity_cases("request-cpu", "resources.requests.cpu", "-1", "1m"),
    # The limit stays the default here: a request above it would fail another rule first.
    *quantity_cases("request-memory", "resources.requests.memory", "1GB", "1Mi",
                    with_spec(resources={"requests": {"memory": "257Gi"}})),
    *quantity_cases("request-storage", "resources.requests.ephemeralStorage", "lots", "1Ki"),
    Case("request-cpu-above-limit", with_spec(resources__requests__cpu="501m"), [("spec.resources", CEL)]),
    Case("request-memory-above-limit", with_spec(resources__requests__memory="513Mi"), [("spec.resources", CEL)]),
    Case("request-storage-above-limit", with_spec(resources__requests__ephemeralStorage="2Gi"),
         [("spec.resources", CEL)]),
    Case("request-int-above-limit", with_spec(resources={"memory": 1073741824, "requests": {"memory": 1073741825}}),
         [("spec.resources", CEL)]),
    Case("pids-too-small", with_spec(resources__pids=4), [("spec.resources.pids", "minimum")]),
    Case("pids-too-large", with_spec(resources__pids=32769), [("spec.resources.pids", "maximum")]),
    Case("pids-not-int", with_spec(resources__pids="20"), []),
    Case("command-seconds-zero", with_spec(timeouts__commandSeconds=0),
         [("spec.timeouts.commandSeconds", "minimum")]),
    Case("command-seconds-too-large", with_spec(timeouts={"commandSeconds": 86401}),
         [("spec.timeouts.commandSeconds", "maximum")]),
    Case("idle-too-small", with_spec(timeouts__idleSeconds=9), [("spec.timeouts.idleSeconds", "minimum")]),
    Case("idle-too-large", with_spec(timeouts={"idleSeconds": 30 * 86400 + 1}),
         [("spec.timeouts.idleSeconds", "maximum")]),
    Case("lifetime-too-small", with_spec(timeouts={"lifetimeSeconds": 9}),
         [("spec.timeouts.lifetimeSeconds", "minimum")]),
    Case("lifetime-too-large", with_spec(timeouts={"lifetimeSeconds": 30 * 86400 + 1}),
         [("spec.timeouts.lifetimeSeconds", "maximum")]),
    Case("idle-over-lifetime", with_spec(timeouts={"idleSeconds": 7200, "lifetimeSeconds": 3600}),
         [("spec.timeouts", CEL)]),
    Case("command-over-lifetime", with_spec(timeouts={"commandSeconds": 600, "lifetimeSeconds": 300}),
         [("spec.timeouts", CEL)]),
    Case("workdir-relative", with_spec(workingDir="workspace"), [("spec.workingDir", "pattern")]),
    Case("workdir-dotdot", with_spec(workingDir="/workspace/../etc"), [("spec.workingDir", "pattern")]),
    Case("workdir-empty", with_spec(workingDir=""), [("spec.workingDir", "minLength")]),
    Case("workdir-too-long", with_spec(workingDir="/" + "a" * 1024), [("spec.workingDir", "maxLength")]),
    Case("labels-too-many", with_spec(podLabels={f"k{i}": "v" for i in range(33)}),
         [("spec.podLabels", "maxProperties")]),
    Case("label-value-pattern", with_spec(podLabels={"k": "has space"}), [("spec.podLabels[]", "pattern")]),
    Case("label-value-too-long", with_spec(podLabels={"k": "v" * 64}), [("spec.podLabels[]", "maxLength")]),
    Case("label-key-invalid", with_spec(podLabels={"bad key": "v"}), [("spec.podLabels", CEL)]),
    Case("label-key-reserved", with_spec(podLabels={"sandbox-operator.io/sandbox": "other"}),
         [("spec.podLabels", CEL)]),
    Case("label-key-reserved-subdomain", with_spec(podLabels={"node-role.kubernetes.io/x": ""}),
         [("spec.podLabels", CEL)]),
    Case("label-key-reserved-app", with_spec(podLabels={"app.kubernetes.io/managed-by": "me"}),
         [("spec.podLabels", CEL)]),
    Case("annotations-too-many", with_spec(podAnnotations={f"k{i}": "v" for i in range(33)}),
         [("spec.podAnnotations", "maxProperties")]),
    Case("annotation-value-too-long", with_spec(podAnnotations={"k": "v" * 4097}),
         [("spec.podAnnotations[]", "maxLength")]),
    Case("annotation-key-invalid", with_spec(podAnnotations={"-bad": "v"}), [("spec.podAnnotations", CEL)]),
    Case("annotation-key-reserved", with_spec(podAnnotations={"sandbox-operator.io/last-activity": "x"}),
         [("spec.podAnnotations", CEL)]),
    Case("runtime-class-pattern", with_spec(runtimeClassName="Not_Valid"), [("spec.runtimeClassName", "pattern")]),
    Case("runtime-class-too-long", with_spec(runtimeClassName="a" * 254), [("spec.runtimeClassName", "maxLength")]),
    Case("node-selector-too-many", with_spec(nodeSelector={f"k{i}": "v" for i in range(17)}),
         [("spec.nodeSelector", "maxProperties")]),
    Case("node-selector-value-pattern", with_spec(nodeSelector={"k": "a b"}), [("spec.nodeSelector[]", "pattern")]),
    Case("node-selector-value-too-long", with_spec(nodeSelector={"k": "v" * 64}),
         [("spec.nodeSelector[]", "maxLength")]),
    Case("node-selector-key-invalid", with_spec(nodeSelector={"a b": "v"}), [("spec.nodeSelector", CEL)]),
    Case("tolerations-too-many", with_spec(tolerations=[TOL_OK] * 17), [("spec.tolerations", "maxItems")]),
    Case("toleration-key-too-long", with_spec(tolerations=[{"key": "k" * 317}]),
         [("spec.tolerations[].key", "maxLength")]),
    Case("toleration-operator-enum", with_spec(tolerations=[{"key": "k", "operator": "In"}]),
         [("spec.tolerations[].operator", "enum")]),
    Case("toleration-value-too-long", with_spec(tolerations=[{"key": "k", "value": "v" * 64}]),
         [("spec.tolerations[].value", "maxLength")]),
    Case("toleration-effect-enum", with_spec(tolerations=[{"key": "k", "effect": "Sometimes"}]),
         [("spec.tolerations[].effect", "enum")]),
    Case("toleration-seconds-negative", with_spec(tolerations=[{"key": "k", "tolerationSeconds": -1}]),
         [("spec.tolerations[].tolerationSeconds", "minimum")]),
    Case("toleration-seconds-too-large", with_spec(tolerations=[{"key": "k", "tolerationSeconds": 10**9}]),
         [("spec.tolerations[].tolerationSeconds", "maximum")]),
    Case("toleration-exists-with-value", with_spec(tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
         [("spec.tolerations[]", CEL)]),
    Case("unknown-field", with_spec(privileged=True), []),
    Case("pool-ref-name-pattern", {"poolRef": {"name": "Python_3"}}, [("spec.poolRef.name", "pattern")]),
    Case("pool-ref-name-too-long", {"poolRef": {"name": "p" * 64}}, [("spec.poolRef.name", "maxLength")]),
    Case("pool-ref-name-missing", {"poolRef": {}}, [("spec.poolRef", "required")]),
    *(Case(f"pool-ref-with-{path}", pooled_with(path), [("spec", CEL)]) for path in NOT_WITH_POOL),
    Case("name-too-long", VALID_SPEC, [("", CEL)], name="a" * 64),
    Case("name-not-dns-label", VALID_SPEC, [("", CEL)], name="a.b"),
]

TRANSITION_CASES = [
    Case(f"immutable-{field_name}", with_spec(**{field_name: value}), [("spec", CEL)])
    for field_name, value in {
        "image": "localhost/sandbox-operator/sandbox:0.2.0",
        "command": ["/bin/sh"],
        "args": ["--other"],
        "env": [{"name": "A", "value": "2"}],
        "resources": {"cpu": "1"},
        "workingDir": "/tmp",
        "runtimeClassName": "kata",
        "nodeSelector": {"kubernetes.io/os": "windows"},
        "tolerations": [],
    }.items()
] + [
    Case("immutable-command-seconds", with_spec(timeouts__commandSeconds=61), [("spec", CEL)]),
    Case("lifetime-raised", with_spec(timeouts__lifetimeSeconds=7200), [("spec", CEL)]),
    Case("lifetime-removed", with_spec(timeouts={"idleSeconds": 600, "commandSeconds": 60}), [("spec", CEL)]),
    Case("image-removed", {k: v for k, v in VALID_SPEC.items() if k != "image"}, [("spec", CEL)]),
    Case("pool-ref-added", with_spec(poolRef={"name": "python"}), [("spec", CEL)]),
]

GOOD_TRANSITIONS = {
    "same": VALID_SPEC,
    "idle-changed": with_spec(timeouts__idleSeconds=900),
    "lifetime-lowered": with_spec(timeouts__lifetimeSeconds=1800),
    "labels-changed": with_spec(podLabels={"team": "b"}),
    "annotations-removed": {k: v for k, v in VALID_SPEC.items() if k != "podAnnotations"},
}


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_spec_rejected_by_the_crd_and_by_the_operator(case: Case) -> None:
    assert api_rejections(case.spec, name=case.name), "the CRD schema accepted it"
    assert operator_rejects(case.spec, name=case.name), "the operator's models accepted it"


@pytest.mark.parametrize("case", TRANSITION_CASES, ids=lambda c: c.id)
def test_forbidden_update_rejected_by_the_crd_and_by_the_operator(case: Case) -> None:
    assert not api_rejections(VALID_SPEC), "the old object itself is invalid"
    rejected = api_rejections(case.spec, old_spec=VALID_SPEC)
    assert rejected, "the CRD's transition rules accepted it"
    assert all(r.keyword == CEL for r in rejected), rejected
    assert operator_rejects(case.spec, old_spec=VALID_SPEC), "immutable_violations accepted it"


@pytest.mark.parametrize("new", GOOD_TRANSITIONS.values(), ids=GOOD_TRANSITIONS.keys())
def test_allowed_update_accepted_by_both(new: dict[str, Any]) -> None:
    assert api_rejections(new, old_spec=VALID_SPEC) == []
    assert not operator_rejects(new, old_spec=VALID_SPEC)


@pytest.mark.parametrize("spec", [
    {}, VALID_SPEC, {"resources": {"cpu": 2, "memory": 1073741824}}, {"resources": {"cpu": "10m"}},
    {"resources": {"cpu": "64", "memory": "256Gi", "ephemeralStorage": "1Ti"}},
    {"timeouts": {"idleSeconds": 10, "lifetimeSeconds": 10}}, {"workingDir": "/"},
    {"tolerations": [{"operator": "Exists"}]}, {"podLabels": {"a": ""}},
    {"image": "registry.example:5000/team/img@sha256:" + "a" * 64},
    {"resources": {"cpu": "1", "memory": "512Mi", "ephemeralStorage": "1Gi",
                   "requests": {"cpu": "1000m", "memory": "512Mi", "ephemeralStorage": "1Gi"}}},
    {"resources": {"memory": 1073741824, "requests": {"cpu": "10m", "memory": 536870912}}},
    {"resources": {"requests": {"cpu": "10m", "memory": "16Mi", "ephemeralStorage": "16Mi"}}},
], ids=lambda s: ",".join(s) or "empty")
def test_good_spec_accepted_by_both(spec: dict[str, Any]) -> None:
    assert api_rejections(spec) == []
    assert not operator_rejects(spec)


def test_the_api_server_would_name_the_field() -> None:
    rejected = api_rejections(with_spec(timeouts={"idleSeconds": 7200, "lifetimeSeconds": 3600}))
    assert [(r.path, r.message) for r in rejected] == [
        (".spec.timeouts.idleSeconds", "idleSeconds must not exceed lifetimeSeconds")]
    rejected = api_rejections(with_spec(image="localhost/other:1"), old_spec=VALID_SPEC)
    assert [(r.path, r.message) for r in rejected] == [(".spec.image", "spec.image is immutable")]
    rejected = api_rejections(with_spec(resources__requests__cpu="2"))
    assert [(r.path, r.message) for r in rejected] == [
        (".spec.resources.requests.cpu", "spec.resources.requests.cpu must not exceed spec.resources.cpu")]


@pytest.mark.parametrize(("resources", "message"), [
    ({"requests": {"cpu": "2"}},
     "spec.resources.requests.cpu 2 exceeds the limit 1 (the operator's default SANDBOX_OPERATOR_DEFAULT_CPU)"),
    ({"requests": {"memory": "1Gi"}}, "spec.resources.requests.memory 1Gi exceeds the limit 512Mi "
                                      "(the operator's default SANDBOX_OPERATOR_DEFAULT_MEMORY)"),
    ({"requests": {"ephemeralStorage": "2Gi"}},
     "spec.resources.requests.ephemeralStorage 2Gi exceeds the limit 1Gi "
     "(the operator's default SANDBOX_OPERATOR_DEFAULT_EPHEMERAL_STORAGE)"),
])
def test_a_request_above_a_defaulted_limit_is_refused_by_the_operator_alone(resources: dict[str, Any],
                                                                           message: str) -> None:
    """The CRD cannot see the operator's defaults, so only the operator's re-check refuses these."""
    assert api_rejections({"resources": resources}) == []
    with pytest.raises(InvalidSpecError) as info:
        resolve(Sandbox.from_body(sandbox({"resources": resources})).spec, OperatorSettings())
    assert str(info.value) == message


# --------------------------------------------------------------------------------------------------------------
# Coverage: every bound and rule of the spec (and the root rule) has a rejected case.


def _bounds(schema: dict[str, Any], path: str) -> Iterator[tuple[str, str]]:
    for keyword in BOUND_KEYWORDS:
        if keyword in schema:
            yield path, keyword
    if "x-kubernetes-validations" in schema:
        yield path, CEL
    if schema.get("x-kubernetes-list-type") == "map":
        yield path, "x-kubernetes-list-type"
    for name, sub in (schema.get("properties") or {}).items():
        if path == "" and name != "spec":
            continue  # metadata is the API server's, status is written by the operator only
        yield from _bounds(sub, f"{path}.{name}".lstrip("."))
    if isinstance(schema.get("items"), dict):
        yield from _bounds(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _bounds(schema["additionalProperties"], f"{path}[]")


def test_every_bound_and_rule_has_a_rejected_case() -> None:
    covered = {c for case in [*BAD_CASES, *TRANSITION_CASES] for c in case.covers}
    # Enums of booleans or of phases do not occur in spec; "required" of optional objects is listed explicitly.
    missing = sorted(set(_bounds(SCHEMA, "")) - covered)
    assert missing == []


def test_every_cel_rule_fails_in_some_case() -> None:
    """Each rule (by message) is the reason for at least one rejection."""
    seen = set()
    for case in BAD_CASES:
        seen |= {r.message for r in api_rejections(case.spec, name=case.name) if r.keyword == CEL}
    for case in TRANSITION_CASES:
        seen |= {r.message for r in api_rejections(case.spec, old_spec=VALID_SPEC)}
    all_rules: set[str] = set()

    def walk(schema: dict[str, Any]) -> None:
        all_rules.update(rule["message"] for rule in schema.get("x-kubernetes-validations", []))
        for sub in (schema.get("properties") or {}).values():
            walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(schema.get(key), dict):
                walk(schema[key])

    walk(SCHEMA)
    assert sorted(all_rules - seen) == []


def test_quantity_shim_matches_kubernetes_semantics() -> None:
    assert _quantity("1Gi") == celtypes.DoubleType(1073741824.0)
    assert parse_quantity("500m") == Decimal("0.5")
    assert not _is_quantity("1GB")


# --------------------------------------------------------------------------------------------------------------
# poolRef: only what applies to a running pod may be overridden, and the reference never changes.


@pytest.mark.parametrize("path", NOT_WITH_POOL)
def test_a_pooled_sandbox_may_not_set_what_the_pool_fixed(path: str) -> None:
    message = (f"spec.{path} cannot be set together with spec.poolRef: the pool's pod is already running, so only "
               "timeouts.idleSeconds, timeouts.lifetimeSeconds, podLabels and podAnnotations may be overridden")
    assert [(r.path, r.message) for r in api_rejections(pooled_with(path))] == [(f".spec.{path}", message)]
    with pytest.raises(InvalidSpecError) as info:
        Sandbox.from_body(sandbox(pooled_with(path)))
    assert str(info.value) == f"spec: {message}"


def test_every_field_but_the_overrides_is_refused_with_a_pool() -> None:
    """A new spec field is refused next to poolRef unless it is added to the overrides on purpose."""
    spec_fields = set(SCHEMA["properties"]["spec"]["properties"])
    overrides = {"poolRef", "timeouts", "podLabels", "podAnnotations"}
    assert spec_fields - overrides == set(NOT_WITH_POOL) - {"timeouts.commandSeconds"}


@pytest.mark.parametrize("spec", [POOLED_SPEC, {"poolRef": {"name": "p"}},
                                  {"poolRef": {"name": "p"}, "timeouts": {"lifetimeSeconds": 60}}],
                         ids=["all-overrides", "bare", "lifetime-only"])
def test_a_pooled_sandbox_with_overrides_only_is_accepted_by_both(spec: dict[str, Any]) -> None:
    assert api_rejections(spec) == []
    assert not operator_rejects(spec)


POOLED_UPDATES = {
    "pool-ref-changed": ({**POOLED_SPEC, "poolRef": {"name": "other"}}, True),
    "pool-ref-removed": ({k: v for k, v in POOLED_SPEC.items() if k != "poolRef"}, True),
    "lifetime-raised": ({**POOLED_SPEC, "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 7200}}, True),
    "idle-changed": ({**POOLED_SPEC, "timeouts": {"idleSeconds": 60, "lifetimeSeconds": 3600}}, False),
    "lifetime-lowered": ({**POOLED_SPEC, "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 1800}}, False),
    "labels-changed": ({**POOLED_SPEC, "podLabels": {"team": "b"}}, False),
}


@pytest.mark.parametrize(("new", "refused"), POOLED_UPDATES.values(), ids=POOLED_UPDATES.keys())
def test_updates_of_a_pooled_sandbox(new: dict[str, Any], refused: bool) -> None:
    assert bool(api_rejections(new, old_spec=POOLED_SPEC)) is refused
    assert operator_rejects(new, old_spec=POOLED_SPEC) is refused


def test_the_api_server_names_pool_ref_when_it_changes() -> None:
    rejected = api_rejections({**POOLED_SPEC, "poolRef": {"name": "other"}}, old_spec=POOLED_SPEC)
    assert [(r.path, r.message) for r in rejected] == [(".spec.poolRef", "spec.poolRef is immutable")]

"""The committed CRD is exactly what the models generate, and it is a strict structural schema."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sandbox_operator import constants, crdgen

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / crdgen.CRD_FILE


@pytest.mark.parametrize("kind", crdgen.KINDS.values(), ids=crdgen.KINDS.keys())
def test_committed_crd_matches_the_models(kind: crdgen.CrdKind) -> None:
    assert (REPO / kind.file).read_text() == crdgen.render(kind), (
        f"{kind.file} is stale: run `.venv/bin/python -m sandbox_operator.crdgen {kind.plural} > {kind.file}`"
        " and `cp crds/*.yaml charts/sandbox-operator/crds/`")


def test_crdgen_prints_the_asked_kind_and_refuses_others(capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main([]) == 0
    assert capsys.readouterr().out == crdgen.render(crdgen.SANDBOX)
    assert crdgen.main(["sandboxpools"]) == 0
    assert capsys.readouterr().out == crdgen.render(crdgen.SANDBOX_POOL)
    assert crdgen.main(["pools"]) == 2
    assert "usage: python -m sandbox_operator.crdgen [sandboxes|sandboxpools]" in capsys.readouterr().err


def _crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


def _schema() -> dict[str, Any]:
    version = _crd()["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _nodes(schema[key], f"{path}[]")


def test_names_scope_and_version() -> None:
    crd = _crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "sandboxes.sandbox-operator.io"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("Sandbox", "sandboxes", "sandbox")
    assert names["shortNames"] == ["sbx"]
    assert names["categories"] == [constants.MANAGER_NAME]
    assert crd["spec"]["scope"] == "Namespaced"
    [version] = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    [version] = _crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0] == [
        "Phase", "Ready", "Node", "Idle", "Expires", "Age"]
    assert columns["Phase"]["jsonPath"] == ".status.phase"
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Node"]["jsonPath"] == ".status.nodeName"
    assert columns["Idle"] == {**columns["Idle"], "type": "date", "jsonPath": ".status.lastActivityTime"}
    assert columns["Expires"]["jsonPath"] == ".status.expiresAt"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_structural() -> None:
    """Every node has a type (int-or-string excepted), no $ref, no nullable, no JSON-schema-only keywords."""
    allowed = {"type", "description", "properties", "items", "additionalProperties", "required", "enum",
               "pattern", "maxLength", "minLength", "minimum", "maximum", "maxItems", "maxProperties", "format",
               "default", "anyOf", "x-kubernetes-int-or-string", "x-kubernetes-validations",
               "x-kubernetes-list-type", "x-kubernetes-list-map-keys"}
    for path, node in _nodes(_schema()):
        assert set(node) <= allowed, (path, set(node) - allowed)
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
            assert "anyOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        if node.get("type") == "object" and path:
            assert "properties" in node or "additionalProperties" in node or path == ".metadata", path


def test_spec_is_bounded_and_described() -> None:
    """Bounded strings, lists and maps keep CEL within the API server's cost budget; descriptions feed
    `kubectl explain`."""
    spec = _schema()["properties"]["spec"]
    for path, node in _nodes(spec, ".spec"):
        kind = node.get("type")
        if kind == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if kind == "array":
            assert "maxItems" in node, path
        if kind == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path
        if not path.endswith("[]"):
            assert node.get("description"), path
    assert "\n" not in str(spec.get("description"))


def test_explain_timeouts_is_useful() -> None:
    timeouts = _schema()["properties"]["spec"]["properties"]["timeouts"]
    assert "idle" in timeouts["description"].lower()
    for field in ("commandSeconds", "idleSeconds", "lifetimeSeconds"):
        assert len(timeouts["properties"][field]["description"]) > 40, field
    assert "last-activity" in timeouts["properties"]["idleSeconds"]["description"]


def test_spec_defaults_to_empty_object_so_transition_rules_always_run() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["default"] == {}
    defaults = [path for path, node in _nodes(_schema()) if "default" in node]
    assert defaults == [".spec"]


def test_status_shape() -> None:
    status = _schema()["properties"]["status"]["properties"]
    assert set(status["phase"]["enum"]) == {"Pending", "Ready", "Terminating", "Expired", "Failed"}
    for field in ("observedGeneration", "podName", "nodeName", "podIP", "startTime", "readyTime",
                  "lastActivityTime", "expiresAt", "reason", "message", "conditions"):
        assert field in status, field
    condition = status["conditions"]["items"]
    assert set(condition["required"]) == {"type", "status", "lastTransitionTime", "reason"}
    assert status["conditions"]["x-kubernetes-list-type"] == "map"
    assert status["conditions"]["x-kubernetes-list-map-keys"] == ["type"]


def test_no_cel_rule_on_status() -> None:
    """Rules on status would make a bad status write fail; the operator owns status."""
    status = _schema()["properties"]["status"]
    assert not [path for path, node in _nodes(status) if "x-kubernetes-validations" in node]


# --------------------------------------------------------------------------------------------------------------
# SandboxPool


def _pool_crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / crdgen.SANDBOX_POOL.file).read_text())
    return data


def _pool_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _pool_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_pool_names_scope_and_version() -> None:
    crd = _pool_crd()
    assert crd["metadata"]["name"] == "sandboxpools.sandbox-operator.io" == constants.POOL_CRD_NAME
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"]) == ("SandboxPool", "sandboxpools", "sandboxpool")
    assert names["shortNames"] == ["sbxpool"]
    assert names["categories"] == [constants.MANAGER_NAME]
    assert crd["spec"]["scope"] == "Namespaced"
    [version] = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_pool_printer_columns() -> None:
    [version] = _pool_crd()["spec"]["versions"]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert [c["name"] for c in version["additionalPrinterColumns"] if c.get("priority", 0) == 0] == [
        "Size", "Ready", "Starting", "Claimed", "Age"]
    assert [columns[n]["jsonPath"] for n in ("Size", "Ready", "Starting", "Claimed")] == [
        ".spec.size", ".status.readyCount", ".status.startingCount", ".status.claimedCount"]


def test_pool_schema_is_structural_bounded_and_described() -> None:
    schema = _pool_schema()
    assert schema["required"] == ["spec"]
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["size"]
    assert (spec["properties"]["size"]["minimum"], spec["properties"]["size"]["maximum"]) == (0, 1000)
    max_age = spec["properties"]["maxAgeSeconds"]
    assert (max_age["minimum"], max_age["maximum"]) == (60, 30 * 86400)
    for path, node in _nodes(spec, ".spec"):
        assert "default" not in node, path
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"} or node.get(
            "x-kubernetes-int-or-string"), path
        if node.get("type") == "string" and "enum" not in node:
            assert "maxLength" in node, path
        if not path.endswith("[]"):
            assert node.get("description"), path
    assert not [path for path, node in _nodes(schema["properties"]["status"]) if "x-kubernetes-validations" in node]


def test_pool_template_is_the_sandbox_spec_without_pool_ref_and_update_rules() -> None:
    """One schema for what a sandbox runs: a change to the Sandbox's spec reaches the pool's template."""
    sandbox_spec = copy.deepcopy(_schema()["properties"]["spec"])
    template = _pool_schema()["properties"]["spec"]["properties"]["template"]
    del sandbox_spec["properties"]["poolRef"]
    for key in ("x-kubernetes-validations", "default", "description"):
        sandbox_spec.pop(key)
    assert "x-kubernetes-validations" not in template
    template = {k: v for k, v in template.items() if k != "description"}
    assert template == sandbox_spec

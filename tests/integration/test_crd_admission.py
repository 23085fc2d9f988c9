"""The real API server enforces the CRD: every bad case of the unit tests is rejected, naming the field;
forbidden updates are rejected by the transition rules; good specs are accepted. Server-side dry runs, so no
operator is needed and nothing is stored."""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any

import pytest
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.kit import Cluster, Kube, sandbox_manifest
from tests.unit.test_crd_rules import BAD_CASES, TRANSITION_CASES, VALID_SPEC, Case

# The path the API server names for each case (the first covered bound, in the API's notation).
DRY_RUN = "All"


@pytest.fixture(scope="module")
def namespace(cluster: Cluster, kube: Kube, sandbox_crd: None) -> Any:
    name = cluster.create_namespace("sbxcrd")
    yield name
    kube.drop_namespace(name, operator_running=False)


def create(kube: Kube, namespace: str, name: str, spec: dict[str, Any], *, dry_run: str | None = DRY_RUN) -> Any:
    return kube.custom.create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, namespace, constants.PLURAL, sandbox_manifest(namespace, name, spec),
        dry_run=dry_run, field_validation="Strict")


def field_pattern(case: Case) -> str:
    """How the API server names the offending field: ``spec.env[0].name``, ``spec.podLabels.k``, ..."""
    if not case.covers:
        return {"unknown-field": r'unknown field "spec\.privileged"',
                "pids-not-int": r"spec\.resources\.pids"}[case.id]
    path, _keyword = case.covers[0]
    if not path:
        return r"metadata\.name must be a DNS label"
    return re.escape(path).replace(r"\[\]", r"(\[\d+\]|\.[\w.-]+)")


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_spec_rejected_with_the_field_named(kube: Kube, namespace: str, case: Case) -> None:
    name = case.name if case.name != "sbx-1" else f"bad-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ApiException) as error:
        create(kube, namespace, name, case.spec)
    assert error.value.status in (400, 422), error.value.body
    message = json.loads(error.value.body or "{}")["message"]
    assert re.search(field_pattern(case), message), message


def test_good_spec_accepted(kube: Kube, namespace: str) -> None:
    create(kube, namespace, "good", VALID_SPEC)
    create(kube, namespace, "empty", {})


@pytest.fixture(scope="module")
def stored(kube: Kube, namespace: str) -> str:
    """A stored Sandbox to update (no operator runs here, so it stays as created)."""
    create(kube, namespace, "stored", VALID_SPEC, dry_run=None)
    return "stored"


def update(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> Any:
    current = kube.get(namespace, name)
    assert current is not None
    new = copy.deepcopy(current)
    new["spec"] = spec
    return kube.custom.replace_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                        constants.PLURAL, name, new, dry_run=DRY_RUN)


@pytest.mark.parametrize("case", TRANSITION_CASES, ids=lambda c: c.id)
def test_forbidden_update_rejected(kube: Kube, namespace: str, stored: str, case: Case) -> None:
    with pytest.raises(ApiException) as error:
        update(kube, namespace, stored, case.spec)
    assert error.value.status == 422, error.value.body
    message = json.loads(error.value.body or "{}")["message"]
    assert "immutable" in message or "may be lowered" in message, message


def test_allowed_update_accepted(kube: Kube, namespace: str, stored: str) -> None:
    spec = copy.deepcopy(VALID_SPEC)
    spec["timeouts"]["lifetimeSeconds"] = 1800
    spec["timeouts"]["idleSeconds"] = 900
    spec["podLabels"] = {"team": "b"}
    update(kube, namespace, stored, spec)


def test_messages_name_the_field(kube: Kube, namespace: str) -> None:
    with pytest.raises(ApiException) as error:
        create(kube, namespace, "x1", {"timeouts": {"idleSeconds": 7200, "lifetimeSeconds": 3600}})
    message = json.loads(error.value.body or "{}")["message"]
    assert "spec.timeouts.idleSeconds" in message and "idleSeconds must not exceed lifetimeSeconds" in message
    with pytest.raises(ApiException) as error:
        create(kube, namespace, "x2", {"resources": {"memory": "1Ti"}})
    message = json.loads(error.value.body or "{}")["message"]
    assert "spec.resources.memory" in message and "between 16Mi and 256Gi" in message
    with pytest.raises(ApiException) as error:
        create(kube, namespace, "x3", {"privileged": True})
    assert 'unknown field "spec.privileged"' in json.loads(error.value.body or "{}")["message"]

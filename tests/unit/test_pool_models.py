"""The SandboxPool's schema: its own bounds, refused by the CRD (cel-python) and by the operator's model alike."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_operator import crdgen
from sandbox_operator.models.pool import SandboxPool
from sandbox_operator.models.sandbox import InvalidSpecError
from tests.unit.test_crd_rules import Rejection, validate

POOL_SCHEMA = crdgen.openapi_schema(crdgen.SANDBOX_POOL)
TEMPLATE = {"image": "localhost/sandbox-operator/sandbox:0.1.0", "timeouts": {"idleSeconds": 600},
            "resources": {"cpu": "500m"}}


def pool(spec: dict[str, Any] | None, name: str = "python") -> dict[str, Any]:
    body: dict[str, Any] = {"apiVersion": "sandbox-operator.io/v1alpha1", "kind": "SandboxPool",
                            "metadata": {"name": name, "namespace": "ns", "uid": "pool-uid"}}
    if spec is not None:
        body["spec"] = spec
    return body


def api_rejections(spec: dict[str, Any] | None, old_spec: dict[str, Any] | None = None,
                   name: str = "python") -> list[Rejection]:
    return validate(POOL_SCHEMA, pool(spec, name), pool(old_spec, name) if old_spec is not None else None)


BAD = {
    "spec-missing": (None, "python"),
    "size-missing": ({"template": TEMPLATE}, "python"),
    "size-negative": ({"size": -1}, "python"),
    "size-too-large": ({"size": 1001}, "python"),
    "size-a-string": ({"size": "3"}, "python"),
    "max-age-too-small": ({"size": 1, "maxAgeSeconds": 59}, "python"),
    "max-age-too-large": ({"size": 1, "maxAgeSeconds": 30 * 86400 + 1}, "python"),
    "template-pool-ref": ({"size": 1, "template": {"poolRef": {"name": "other"}}}, "python"),
    "template-bad-image": ({"size": 1, "template": {"image": "UPPER/Case:1"}}, "python"),
    "template-idle-over-lifetime": ({"size": 1, "template": {"timeouts": {"idleSeconds": 600,
                                                                          "lifetimeSeconds": 60}}}, "python"),
    "template-reserved-label": ({"size": 1, "template": {"podLabels": {"sandbox-operator.io/pool": "x"}}},
                                "python"),
    "name-not-a-label": ({"size": 1}, "py.thon"),
    "name-too-long": ({"size": 1}, "p" * 64),
}


@pytest.mark.parametrize(("spec", "name"), BAD.values(), ids=BAD.keys())
def test_bad_pool_refused_by_the_crd_and_by_the_operator(spec: dict[str, Any] | None, name: str) -> None:
    assert api_rejections(spec, name=name), "the CRD schema accepted it"
    with pytest.raises(InvalidSpecError):
        SandboxPool.from_body(pool(spec, name))


@pytest.mark.parametrize("spec", [{"size": 0}, {"size": 1000, "maxAgeSeconds": 60}, {"size": 5, "template": TEMPLATE},
                                  {"size": 1, "template": {}}], ids=["empty", "bounds", "template", "empty-template"])
def test_good_pool_accepted_by_both(spec: dict[str, Any]) -> None:
    assert api_rejections(spec) == []
    parsed = SandboxPool.from_body(pool(spec))
    assert parsed.spec.size == spec["size"]


def test_the_template_may_change() -> None:
    """Pods of an older template are replaced, so none of a Sandbox's update rules bind a pool."""
    old = {"size": 2, "template": TEMPLATE}
    new = {"size": 3, "template": {"image": "localhost/sandbox-operator/sandbox:0.2.0", "resources": {"cpu": "1"}}}
    assert api_rejections(new, old_spec=old) == []


def test_the_operator_names_the_field() -> None:
    with pytest.raises(InvalidSpecError) as info:
        SandboxPool.from_body(pool({"size": 1001}))
    assert str(info.value) == "spec.size: Input should be less than or equal to 1000"
    with pytest.raises(InvalidSpecError) as info:
        SandboxPool.from_body(pool({"size": 1}, name="py.thon"))
    assert "metadata.name must be a DNS label" in str(info.value)


def test_a_bad_status_is_ignored() -> None:
    body = {**pool({"size": 1}), "status": {"readyCount": "many"}}
    assert SandboxPool.from_body(body).status.ready_count == 0

"""Generates the Sandbox CRD from the pydantic models: ``python -m sandbox_operator.crdgen > crds/<name>.yaml``.

pydantic's JSON schema is turned into a structural OpenAPI v3 schema: references inlined, optional fields'
``null`` branches and titles dropped, ``additionalProperties: false`` removed (unknown fields are pruned by
the API server), descriptions folded to one line. ``tests/unit/test_crd.py`` fails when the committed file
differs from this output.
"""

from __future__ import annotations

import copy
import sys
from typing import Any

import yaml

from sandbox_operator import constants
from sandbox_operator.models import Sandbox

CRD_FILE = f"crds/{constants.CRD_NAME}.yaml"
HEADER = "# Generated from sandbox_operator.models by `python -m sandbox_operator.crdgen`. Do not edit.\n"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase",
     "description": "Pending, Ready, Terminating, Expired or Failed"},
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
     "description": "The Ready condition"},
    {"name": "Node", "type": "string", "jsonPath": ".status.nodeName",
     "description": "Node of the sandbox pod"},
    {"name": "Idle", "type": "date", "jsonPath": ".status.lastActivityTime",
     "description": "Time since the last recorded activity (or since Ready)"},
    {"name": "Expires", "type": "string", "jsonPath": ".status.expiresAt",
     "description": "End of the sandbox's lifetime (UTC)"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1,
     "description": "Why the sandbox is not Ready"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROPPED_KEYS = ("title", "$defs")


def _fold(text: str) -> str:
    return " ".join(text.split())


def _convert(node: dict[str, Any], defs: dict[str, Any], *, keep_default: bool = False) -> dict[str, Any]:
    node = copy.deepcopy(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = _convert(target, defs)
        merged.update(_convert(node, defs, keep_default=keep_default))
        return merged
    any_of = node.get("anyOf")
    if any_of is not None and any(branch == {"type": "null"} for branch in any_of):
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        del node["anyOf"]
        if len(rest) == 1:
            merged = _convert(rest[0], defs)
            merged.update(_convert(node, defs, keep_default=keep_default))
            return merged
        node["anyOf"] = rest
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "default" and not keep_default:
            continue
        if key == "additionalProperties" and value is False:
            continue
        if key == "description":
            out[key] = _fold(value)
        elif key == "properties":
            out[key] = {name: _convert(sub, defs, keep_default=(name == "spec"))
                        for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _convert(value, defs)
        else:
            out[key] = value
    return out


def openapi_schema() -> dict[str, Any]:
    """The structural OpenAPI v3 schema of the Sandbox kind."""
    raw = Sandbox.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _convert(raw, defs)
    schema.pop("required", None)  # metadata is the API server's business
    schema["properties"]["metadata"] = {"type": "object"}  # the API server allows nothing more here
    # Only spec may carry a default (``{}``, so that the spec's transition rules always run).
    for name, prop in schema["properties"].items():
        if name != "spec":
            prop.pop("default", None)
    return schema


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": constants.CRD_NAME,
            "labels": {constants.LABEL_APP_NAME: constants.MANAGER_NAME},
        },
        "spec": {
            "group": constants.GROUP,
            "names": {
                "kind": constants.KIND,
                "listKind": f"{constants.KIND}List",
                "plural": constants.PLURAL,
                "singular": constants.SINGULAR,
                "shortNames": list(constants.SHORT_NAMES),
                "categories": [constants.MANAGER_NAME],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": constants.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema()},
            }],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120, allow_unicode=True)


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

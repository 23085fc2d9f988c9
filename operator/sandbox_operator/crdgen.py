"""Generates the CRDs from the pydantic models: ``python -m sandbox_operator.crdgen [PLURAL] > crds/<name>.yaml``
(PLURAL: ``sandboxes``, the default, or ``sandboxpools``).

pydantic's JSON schema is turned into a structural OpenAPI v3 schema: references inlined, optional fields'
``null`` branches and titles dropped, ``additionalProperties: false`` removed (unknown fields are pruned by
the API server), descriptions folded to one line. ``tests/unit/test_crd.py`` fails when a committed file
differs from this output.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from sandbox_operator import constants
from sandbox_operator.models import Sandbox, SandboxPool

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

POOL_PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Size", "type": "integer", "jsonPath": ".spec.size",
     "description": "Ready, unclaimed pods to keep"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyCount",
     "description": "Unclaimed pods ready to be claimed"},
    {"name": "Starting", "type": "integer", "jsonPath": ".status.startingCount",
     "description": "Unclaimed pods not ready yet"},
    {"name": "Claimed", "type": "integer", "jsonPath": ".status.claimedCount",
     "description": "Live pods of this pool that belong to a Sandbox"},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason', "priority": 1,
     "description": "Reason of the Ready condition"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


@dataclass(frozen=True)
class CrdKind:
    """One custom resource: its model and its names."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: list[dict[str, Any]]

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{constants.GROUP}"

    @property
    def file(self) -> str:
        return f"crds/{self.crd_name}.yaml"


SANDBOX = CrdKind(Sandbox, constants.KIND, constants.PLURAL, constants.SINGULAR, constants.SHORT_NAMES,
                  PRINTER_COLUMNS)
SANDBOX_POOL = CrdKind(SandboxPool, constants.POOL_KIND, constants.POOL_PLURAL, constants.POOL_SINGULAR,
                       constants.POOL_SHORT_NAMES, POOL_PRINTER_COLUMNS)
KINDS: dict[str, CrdKind] = {kind.plural: kind for kind in (SANDBOX, SANDBOX_POOL)}
CRD_FILE = SANDBOX.file

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


def openapi_schema(kind: CrdKind = SANDBOX) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a kind (the Sandbox by default)."""
    raw = kind.model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _convert(raw, defs)
    required = [name for name in schema.pop("required", []) if name != "metadata"]  # the API server's business
    if required:
        schema["required"] = required
    schema["properties"]["metadata"] = {"type": "object"}  # the API server allows nothing more here
    # Only spec may carry a default (``{}``, so that the spec's transition rules always run).
    for name, prop in schema["properties"].items():
        if name != "spec":
            prop.pop("default", None)
    return schema


def crd(kind: CrdKind = SANDBOX) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {constants.LABEL_APP_NAME: constants.MANAGER_NAME},
        },
        "spec": {
            "group": constants.GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [constants.MANAGER_NAME],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": constants.VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": kind.printer_columns,
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
            }],
        },
    }


def render(kind: CrdKind = SANDBOX) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=120, allow_unicode=True)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    plural = args[0] if args else SANDBOX.plural
    kind = KINDS.get(plural)
    if kind is None or len(args) > 1:
        sys.stderr.write(f"usage: python -m sandbox_operator.crdgen [{'|'.join(KINDS)}]\n")
        return 2
    sys.stdout.write(render(kind))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

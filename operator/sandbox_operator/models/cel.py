"""CEL validation rules (``x-kubernetes-validations``) attached to the pydantic models.

Each model lists its rules in a ``cel_rules`` class variable; :func:`cel_json_schema_extra` writes them into the
model's JSON schema, which :mod:`sandbox_operator.crdgen` turns into the CRD. The same constraint is also checked
in Python by the model's validators, and the unit tests run every bad case through both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from sandbox_operator import constants

Reason = Literal["FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"]


@dataclass(frozen=True)
class CelRule:
    rule: str
    message: str
    field_path: str | None = None
    reason: Reason | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def cel_json_schema_extra(schema: dict[str, Any], cls: type) -> None:
    """pydantic ``json_schema_extra`` hook: appends the class's CEL rules to its schema."""
    rules: tuple[CelRule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.schema() for rule in rules]


def field_rules(*rules: CelRule) -> dict[str, Any]:
    """``json_schema_extra`` for a single field."""
    return {"x-kubernetes-validations": [rule.schema() for rule in rules]}


def cel_string(text: str) -> str:
    """A CEL single-quoted string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# A label or annotation key: an optional DNS-subdomain prefix and a name (Kubernetes "qualified name").
QUALIFIED_NAME_PATTERN = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                          r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
QUALIFIED_NAME_MAX_LENGTH = 317  # 253 prefix + "/" + 63 name
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_MAX_LENGTH = 63


def _reserved_pattern() -> str:
    domains = sorted({prefix.rstrip("/") for prefix in constants.RESERVED_KEY_PREFIXES})
    alternatives = "|".join(domain.replace(".", r"\.") for domain in domains)
    return rf"^([^/]*\.)?({alternatives})/"


# Keys under a reserved domain or any of its subdomains (``app.kubernetes.io/``, ``node.k8s.io/`` ...).
RESERVED_KEY_PATTERN = _reserved_pattern()


def is_reserved_key(key: str) -> bool:
    return re.match(RESERVED_KEY_PATTERN, key) is not None


def is_qualified_name(key: str) -> bool:
    name = key.rpartition("/")[2]
    return (len(key) <= QUALIFIED_NAME_MAX_LENGTH and len(name) <= 63
            and re.fullmatch(QUALIFIED_NAME_PATTERN, key) is not None)


def key_rules(what: str, *, reserved: bool) -> tuple[CelRule, ...]:
    """Rules for the keys of a label/annotation map (OpenAPI cannot constrain map keys)."""
    rules = [CelRule(
        rule=(f"self.all(k, k.size() <= {QUALIFIED_NAME_MAX_LENGTH} && "
              f"k.matches({cel_string(QUALIFIED_NAME_PATTERN)}))"),
        message=f"{what} keys must be qualified names (an optional DNS prefix, '/', and up to 63 characters)",
    )]
    if reserved:
        rules.append(CelRule(
            rule=f"self.all(k, !k.matches({cel_string(RESERVED_KEY_PATTERN)}))",
            message=(f"{what} keys under " + ", ".join(constants.RESERVED_KEY_PREFIXES)
                     + " (or their subdomains) are reserved for the operator"),
            reason="FieldValueForbidden",
        ))
    return tuple(rules)

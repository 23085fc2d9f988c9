"""Kubernetes resource quantities ("500m", "1Gi", 2) as a pydantic type with the CRD's int-or-string schema."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from kubernetes.utils import parse_quantity as _k8s_parse_quantity
from pydantic import BeforeValidator, WithJsonSchema

# The Kubernetes quantity grammar without a sign: a sandbox never asks for a negative amount.
QUANTITY_PATTERN = (r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
                    r"(([KMGTPE]i)|[numkMGTPE]|([eE](([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
QUANTITY_MAX_LENGTH = 32


def parse_quantity(value: str | int) -> Decimal:
    """The quantity's value in base units (cores, bytes); ValueError if it is not a quantity."""
    try:
        return Decimal(_k8s_parse_quantity(value))  # type: ignore[no-untyped-call]
    except (ValueError, InvalidOperation, TypeError) as error:
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from error


def _to_quantity_string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a quantity such as 500m, 1Gi or an integer")
    text = str(value)
    if isinstance(value, int) and value < 0:
        raise ValueError("must not be negative")
    if len(text) > QUANTITY_MAX_LENGTH:
        raise ValueError(f"must be at most {QUANTITY_MAX_LENGTH} characters")
    if not re.fullmatch(QUANTITY_PATTERN, text):
        raise ValueError(f"{text!r} is not a quantity such as 500m or 1Gi")
    parse_quantity(text)
    return text


QUANTITY_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "x-kubernetes-int-or-string": True,
    "pattern": QUANTITY_PATTERN,
    "maxLength": QUANTITY_MAX_LENGTH,
}

Quantity = Annotated[str, BeforeValidator(_to_quantity_string), WithJsonSchema(QUANTITY_SCHEMA)]
"""A quantity; ints are accepted and kept as their decimal string."""

"""Pydantic models of the Sandbox and SandboxPool resources; the CRD in crds/ is generated from them (see crdgen).

The names below load lazily, so a client that needs only the light modules (``timestamps``, ``conditions``)
does not build the whole spec schema.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox_operator.models.conditions import TERMINAL_PHASES, Condition, Phase
    from sandbox_operator.models.pool import SandboxPool, SandboxPoolSpec, SandboxPoolStatus
    from sandbox_operator.models.sandbox import InvalidSpecError, Sandbox, SandboxSpec, SandboxStatus

_HOMES = {
    "TERMINAL_PHASES": "conditions", "Condition": "conditions", "Phase": "conditions",
    "InvalidSpecError": "sandbox", "Sandbox": "sandbox", "SandboxSpec": "sandbox", "SandboxStatus": "sandbox",
    "SandboxPool": "pool", "SandboxPoolSpec": "pool", "SandboxPoolStatus": "pool",
}
__all__ = ["TERMINAL_PHASES", "Condition", "InvalidSpecError", "Phase", "Sandbox", "SandboxPool",
           "SandboxPoolSpec", "SandboxPoolStatus", "SandboxSpec", "SandboxStatus"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value

"""Pydantic models of the Sandbox resource; the CRD in crds/ is generated from them (see crdgen)."""

from sandbox_operator.models.sandbox import (
    TERMINAL_PHASES,
    Condition,
    InvalidSpecError,
    Phase,
    Sandbox,
    SandboxSpec,
    SandboxStatus,
)

__all__ = ["TERMINAL_PHASES", "Condition", "InvalidSpecError", "Phase", "Sandbox", "SandboxSpec",
           "SandboxStatus"]

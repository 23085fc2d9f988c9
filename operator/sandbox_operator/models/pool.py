"""The SandboxPool resource: a number of ready, unclaimed sandbox pods kept warm from one template.

Like the Sandbox models, these are the single source of the CRD schema (see crdgen). The template has the shape
of a Sandbox's spec without poolRef and without its update rules: a pool's template may change, and pods of an
older template are replaced (docs/pools.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, Field, ValidationError

from sandbox_operator import constants
from sandbox_operator.models import limits
from sandbox_operator.models.base import CrdModel
from sandbox_operator.models.conditions import Condition
from sandbox_operator.models.sandbox import (
    InvalidSpecError,
    NamespacedResource,
    SandboxSpec,
    SandboxTemplate,
    Timeouts,
    describe_validation_error,
    dns_label_name_rule,
    parse_resource,
)


class SandboxPoolSpec(CrdModel):
    """Desired pool: how many ready, unclaimed pods to keep, built from which template."""

    template: SandboxTemplate = Field(default_factory=SandboxTemplate)
    """What each of the pool's sandboxes runs: the same fields as a Sandbox's spec (poolRef excepted), with the
    operator's defaults for those left out. Pods built from an older template are replaced when it changes."""
    size: int = Field(ge=limits.POOL_SIZE_MIN, le=limits.POOL_SIZE_MAX)
    """How many ready, unclaimed pods to keep. A claim never waits for a refill: when none is ready, the Sandbox
    starts cold from the template."""
    max_age_seconds: int | None = Field(None, ge=limits.POOL_MAX_AGE_SECONDS_MIN,
                                         le=limits.POOL_MAX_AGE_SECONDS_MAX)
    """Unclaimed pods older than this are replaced by fresh ones (and no longer handed out). Unset: kept until
    claimed, unhealthy or outdated. A claimed sandbox's own lifetime starts at its claim either way."""


class SandboxPoolStatus(CrdModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(extra="ignore", strict=False)

    ready_count: int = Field(0, ge=0)
    """Unclaimed pods that are ready to be claimed."""
    starting_count: int = Field(0, ge=0)
    """Unclaimed pods that are not ready yet."""
    claimed_count: int = Field(0, ge=0)
    """Live pods this pool started that now belong to a Sandbox (they are never returned to the pool)."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    """Conditions in the shape of metav1.Condition; Ready is True while readyCount reaches size."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation the status was computed from."""

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


_POOL_NAME_RULE = dns_label_name_rule("the pool's pods carry it as a label value")


class SandboxPool(NamespacedResource):
    """A pool of ready, hardened sandbox pods kept warm from one template. A Sandbox with spec.poolRef takes one;
    a taken pod belongs to that Sandbox for good and is never returned to the pool."""

    cel_rules = (_POOL_NAME_RULE,)

    kind: str = constants.POOL_KIND
    """Kind is a string value representing the REST resource this object represents."""
    spec: SandboxPoolSpec
    """Desired pool."""
    status: SandboxPoolStatus = Field(default_factory=SandboxPoolStatus)
    """Observed state, written by the operator."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SandboxPool:
        """Parses a SandboxPool. A bad spec raises :class:`InvalidSpecError` naming the fields; a bad status is
        ignored."""
        return parse_resource(cls, SandboxPoolStatus, body, _POOL_NAME_RULE)


def spec_with_overrides(template: SandboxTemplate, spec: SandboxSpec) -> SandboxTemplate:
    """What a Sandbox with poolRef runs: the pool's template with the Sandbox's overrides. Its idleSeconds and
    lifetimeSeconds replace the template's; its podLabels and podAnnotations are merged over the template's.
    The template's idle and command limits are capped at an overriding, shorter lifetime (as the operator's
    defaults are), since the lifetime ends the pod anyway. Raises :class:`InvalidSpecError` naming the field when
    the merge breaks a bound (more labels than allowed, for example)."""
    base, override = template.timeouts or Timeouts(), spec.timeouts or Timeouts()
    lifetime = override.lifetime_seconds if override.lifetime_seconds is not None else base.lifetime_seconds
    idle = override.idle_seconds if override.idle_seconds is not None else base.idle_seconds
    command = base.command_seconds
    if override.lifetime_seconds is not None:
        if idle is not None and override.idle_seconds is None:
            idle = min(idle, override.lifetime_seconds)
        if command is not None:
            command = min(command, override.lifetime_seconds)
    raw = template.model_dump(by_alias=True, exclude_none=True)
    timeouts = {key: value for key, value in
                (("commandSeconds", command), ("idleSeconds", idle), ("lifetimeSeconds", lifetime))
                if value is not None}
    raw.pop("timeouts", None)
    if timeouts:
        raw["timeouts"] = timeouts
    for field, extra in (("podLabels", spec.pod_labels), ("podAnnotations", spec.pod_annotations)):
        merged = {**raw.get(field, {}), **(extra or {})}
        if merged:
            raw[field] = merged
    try:
        return SandboxTemplate.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpecError(_in_spec(describe_validation_error(error))) from None


def _in_spec(message: str) -> str:
    """Paths of a validation error of the merged template, as fields of the Sandbox's spec."""
    return "; ".join(f"spec.{part}" if part and not part.startswith("spec.") else part
                     for part in message.split("; "))

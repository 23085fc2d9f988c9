"""Warm pools from the client's side: the spec of a Sandbox that takes its pod from a SandboxPool, and the pools of
a namespace as read-only values. The operator keeps the pools (docs/pools.md); a client only reads them."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sandbox_operator.models.conditions import CONDITION_READY
from sandbox_operator.models.pool import SandboxPoolStatus
from sandbox_operator.models.sandbox import POOL_OVERRIDES
from sandbox_operator.models.timestamps import parse_time
from sandbox_operator.sdk import errors

# The create() keywords that set the overrides, in the order of POOL_OVERRIDES.
OVERRIDE_KEYWORDS = ("idle_timeout", "lifetime", "pod_labels", "pod_annotations")


def _set_fields(spec: Mapping[str, Any]) -> list[str]:
    """The spec's fields as the pool rules name them: ``timeouts`` by its own fields, the rest whole."""
    paths = []
    for key, value in spec.items():
        if key == "timeouts" and isinstance(value, Mapping):
            paths += [f"timeouts.{leaf}" for leaf in value]
        else:
            paths.append(str(key))
    return paths


def pooled_spec(pool: str | None, requested: Mapping[str, Any], *, name: str | None = None,
                namespace: str | None = None) -> dict[str, Any]:
    """The spec of a Sandbox that takes its pod from ``pool`` (or from the ``poolRef`` already in ``requested``):
    ``poolRef`` plus the overrides ``requested`` sets.

    Raises :class:`InvalidSandboxSpec` naming every other field set: the pool's pod already runs, so its image,
    environment, resources, command limit and placement are the pool's template's, and the API server would refuse
    the Sandbox the same way (the CRD's rules).
    """
    spec = copy.deepcopy(dict(requested))
    ref = spec.pop("poolRef", None)
    named = ref.get("name") if isinstance(ref, Mapping) else None
    if ref is not None and pool is not None and named != pool:
        raise errors.InvalidSandboxSpec(
            f"spec.poolRef.name {named!r} and pool {pool!r} differ: name the pool once", reason="Invalid",
            name=name, namespace=namespace)
    pool = pool if pool is not None else named
    if not isinstance(pool, str) or not pool:
        raise errors.InvalidSandboxSpec(f"the pool must be a SandboxPool's name, got {pool!r}", reason="Invalid",
                                        name=name, namespace=namespace)
    refused = [path for path in _set_fields(spec) if path not in POOL_OVERRIDES]
    if refused:
        fields = ", ".join(f"spec.{path}" for path in refused)
        allowed = ", ".join(POOL_OVERRIDES[:-1]) + f" and {POOL_OVERRIDES[-1]}"
        keywords = ", ".join(OVERRIDE_KEYWORDS)
        raise errors.InvalidSandboxSpec(
            f"{fields} cannot be set together with a pool ({pool!r}): the pool's pod is already running, so only "
            f"{allowed} may be overridden (keywords {keywords})", reason="FieldValueForbidden", name=name,
            namespace=namespace,
            details={"causes": [{"field": f"spec.{path}", "reason": "FieldValueForbidden"} for path in refused]})
    return {"poolRef": {"name": pool}, **spec}


@dataclass(frozen=True)
class PoolInfo:
    """One SandboxPool as last read: its size, its pods by state, and its Ready condition (``ready`` is True while
    ``ready_count`` reaches ``size``; ``reason`` is ``PoolFull``, ``Refilling`` or ``InvalidSpec``)."""

    name: str
    namespace: str
    size: int
    ready_count: int
    """Unclaimed pods ready to be claimed."""
    starting_count: int
    """Unclaimed pods not ready yet."""
    claimed_count: int
    """Live pods of the pool that now belong to a Sandbox."""
    ready: bool
    reason: str | None
    message: str | None
    created: datetime.datetime | None
    obj: dict[str, Any] = field(repr=False, compare=False)
    """The SandboxPool object as read."""


def pool_info(obj: Mapping[str, Any]) -> PoolInfo:
    """A SandboxPool object as a :class:`PoolInfo`. A pool the operator has not counted yet has zero counts and no
    condition; a status it did not write in its own shape is read as none."""
    meta = obj.get("metadata") or {}
    size = (obj.get("spec") or {}).get("size")
    try:
        status = SandboxPoolStatus.model_validate(obj.get("status") or {})
    except ValidationError:
        status = SandboxPoolStatus()
    condition = status.condition(CONDITION_READY)
    return PoolInfo(
        name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")),
        size=size if isinstance(size, int) else 0, ready_count=status.ready_count,
        starting_count=status.starting_count, claimed_count=status.claimed_count,
        ready=condition is not None and condition.status == "True",
        reason=condition.reason if condition else None, message=condition.message if condition else None,
        created=parse_time(meta.get("creationTimestamp")), obj=dict(obj))

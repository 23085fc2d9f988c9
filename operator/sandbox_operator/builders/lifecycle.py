"""When a Sandbox is collected: past its lifetime, or idle longer than idleSeconds.

Idle time is measured from the latest of: the client's activity annotation, readyTime, and (for a sandbox that
never became ready and saw no activity) its creation. A sandbox with activity newer than idleSeconds is never
collected for idleness; the lifetime applies regardless of activity.

The collector keeps a :class:`CollectionInputs` per Sandbox (a few fields, not the body) and decides a whole pass
with :func:`plan_pass`, without any API call.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from sandbox_operator import constants
from sandbox_operator.builders.status import format_time_or_none, idle_clock_from, lifetime_end
from sandbox_operator.models.effective import effective_timeouts
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.models.timestamps import format_time
from sandbox_operator.settings import OperatorSettings

CollectionReason = Literal["LifetimeExpired", "IdleTimeout"]
Limits = tuple[int, int]
"""(idleSeconds, lifetimeSeconds) in effect, defaults and caps applied."""


@dataclass(frozen=True)
class Collection:
    reason: CollectionReason
    message: str


@dataclass(frozen=True, slots=True)
class CollectionInputs:
    """What the collector needs of one Sandbox, small enough to keep for thousands."""

    namespace: str
    name: str
    uid: str
    resource_version: str | None
    """The version these inputs come from: the deletion is conditional on it."""
    deleting: bool
    created: datetime.datetime | None
    activity: str | None
    """The client's activity annotation as written."""
    ready_time: datetime.datetime | None
    expires_at: datetime.datetime | None
    mirrored_activity: str | None
    """status.lastActivityTime as written."""
    phase: str | None
    limits: Limits
    """From the Sandbox's own spec; a pooled one's pool template may change them (see :func:`plan_pass`)."""
    pooled: bool


def collection_inputs(sandbox: Sandbox, settings: OperatorSettings, *, resource_version: str | None = None,
                      mirrored_activity: str | None = None) -> CollectionInputs:
    """The inputs of a parsed Sandbox; ``resource_version`` and ``mirrored_activity`` come from the raw body (the
    model keeps neither as written)."""
    _, idle_seconds, lifetime_seconds = effective_timeouts(sandbox.spec, settings)
    meta, status = sandbox.metadata, sandbox.status
    return CollectionInputs(
        namespace=sandbox.namespace, name=sandbox.name, uid=meta.uid, resource_version=resource_version,
        deleting=meta.deletion_timestamp is not None, created=meta.creation_timestamp,
        activity=meta.annotations.get(constants.ANNOTATION_LAST_ACTIVITY), ready_time=status.ready_time,
        expires_at=status.expires_at, mirrored_activity=mirrored_activity, phase=status.phase,
        limits=(idle_seconds, lifetime_seconds), pooled=sandbox.spec.pool_ref is not None)


def collection_due(sandbox: Sandbox, settings: OperatorSettings, now: datetime.datetime) -> Collection | None:
    inputs = collection_inputs(sandbox, settings)
    return due(inputs, inputs.limits, now)


def due(inputs: CollectionInputs, limits: Limits, now: datetime.datetime) -> Collection | None:
    if inputs.deleting:
        return None
    idle_seconds, lifetime_seconds = limits
    end = inputs.expires_at or lifetime_end(inputs.created, lifetime_seconds)
    if end is not None and now >= end:
        return Collection("LifetimeExpired",
                          f"the sandbox's lifetime ({lifetime_seconds}s) ended at {format_time(end)}")
    start = idle_clock_from(inputs.activity, inputs.ready_time, now) or inputs.created
    if start is not None:
        idle = (now - start).total_seconds()
        if idle >= idle_seconds:
            return Collection("IdleTimeout",
                              f"no activity for {int(idle)}s (idleSeconds={idle_seconds})")
    return None


@dataclass(frozen=True)
class CollectorPass:
    """What one pass does: delete the expired (first: their lifetime is a promise), then the idle, and mirror the
    idle clock into status.lastActivityTime where it moved."""

    expired: list[tuple[CollectionInputs, Collection]] = field(default_factory=list)
    idle: list[tuple[CollectionInputs, Collection]] = field(default_factory=list)
    mirror: list[tuple[CollectionInputs, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.expired or self.idle or self.mirror)


def own_limits(inputs: CollectionInputs) -> Limits:
    return inputs.limits


def plan_pass(sandboxes: Iterable[CollectionInputs], now: datetime.datetime,
              limits: Callable[[CollectionInputs], Limits] = own_limits) -> CollectorPass:
    """One pass over every Sandbox known, decided at ``now``. ``limits`` gives a Sandbox's limits in effect (a
    pooled Sandbox runs its pool's template with its own overrides, which only the operator's runtime knows)."""
    plan = CollectorPass()
    for inputs in sandboxes:
        if inputs.deleting:
            continue
        collection = due(inputs, limits(inputs), now)
        if collection is not None:
            (plan.expired if collection.reason == "LifetimeExpired" else plan.idle).append((inputs, collection))
            continue
        clock = format_time_or_none(idle_clock_from(inputs.activity, inputs.ready_time, now))
        if clock is not None and clock != inputs.mirrored_activity:
            plan.mirror.append((inputs, clock))
    return plan

"""When a Sandbox is collected: past its lifetime, or idle longer than idleSeconds.

Idle time is measured from the latest of: the client's activity annotation, readyTime, and (for a sandbox that
never became ready and saw no activity) its creation. A sandbox with activity newer than idleSeconds is never
collected for idleness; the lifetime applies regardless of activity.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from sandbox_operator.builders.status import expires_at, idle_clock_start
from sandbox_operator.models.effective import effective_timeouts
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.models.timestamps import format_time
from sandbox_operator.settings import OperatorSettings

CollectionReason = Literal["LifetimeExpired", "IdleTimeout"]


@dataclass(frozen=True)
class Collection:
    reason: CollectionReason
    message: str


def collection_due(sandbox: Sandbox, settings: OperatorSettings, now: datetime.datetime) -> Collection | None:
    if sandbox.metadata.deletion_timestamp is not None:
        return None
    _, idle_seconds, lifetime_seconds = effective_timeouts(sandbox.spec, settings)
    end = sandbox.status.expires_at or expires_at(sandbox, lifetime_seconds)
    if end is not None and now >= end:
        return Collection("LifetimeExpired",
                          f"the sandbox's lifetime ({lifetime_seconds}s) ended at {format_time(end)}")
    start = idle_clock_start(sandbox, sandbox.status.ready_time, now) or sandbox.metadata.creation_timestamp
    if start is not None:
        idle = (now - start).total_seconds()
        if idle >= idle_seconds:
            return Collection("IdleTimeout",
                              f"no activity for {int(idle)}s (idleSeconds={idle_seconds})")
    return None

"""The collector: a kopf timer per Sandbox, every ``SANDBOX_OPERATOR_GC_INTERVAL_SECONDS``.

Per-Sandbox timers (rather than one cluster-wide loop) reuse kopf's cached body: a pass over a sandbox that is
neither due nor newly active makes no API call at all, and timers restart with the operator on their own. The
timer deletes Sandboxes past their lifetime (Expired first) or idle longer than idleSeconds, with an Event, and
mirrors the client's activity annotation into ``status.lastActivityTime``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from sandbox_operator import constants
from sandbox_operator.builders.lifecycle import collection_due
from sandbox_operator.builders.status import Verdict, format_time_or_none, idle_clock_start
from sandbox_operator.handlers.errors import counted
from sandbox_operator.handlers.reconcile import collect, parse_sandbox, sync_status
from sandbox_operator.handlers.runtime import runtime, utcnow
from sandbox_operator.k8s.api import JSON
from sandbox_operator.settings import get_settings

RESOURCE = (constants.GROUP, constants.VERSION, constants.PLURAL)


@kopf.timer(*RESOURCE, id="collector", interval=get_settings().gc_interval_seconds)
@counted("collector")
async def collector(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    rt = runtime(memo)
    raw: JSON = dict(body)
    rt.remember(raw)
    sandbox, _invalid = parse_sandbox(raw)
    now = utcnow()
    due = collection_due(rt.run_view(sandbox), rt.settings, now)
    if due is not None:
        if due.reason == "LifetimeExpired":
            updated = await sync_status(rt, sandbox.namespace, sandbox.name,
                                        override=Verdict("Expired", "LifetimeExpired", due.message), log=logger)
            if updated is None or updated.status.phase == "Expired":
                return  # gone, or sync_status deleted it
            # Failed stays Failed, but its lifetime is over all the same: delete it as it is now.
            fresh: dict[str, Any] | None = await asyncio.to_thread(
                rt.api.get_sandbox, sandbox.namespace, sandbox.name)
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return
            raw = fresh
        await collect(rt, raw, due.reason, due.message, log=logger)
        return
    mirrored = format_time_or_none(idle_clock_start(sandbox, sandbox.status.ready_time, now))
    if mirrored != (raw.get("status") or {}).get("lastActivityTime") and mirrored is not None:
        written = await asyncio.to_thread(rt.api.patch_sandbox_status, sandbox.namespace, sandbox.name,
                                          {"lastActivityTime": mirrored})
        if written is not None:
            rt.remember(written)

"""The collector: one loop per operator, a pass every ``SANDBOX_OPERATOR_GC_INTERVAL_SECONDS``.

A kopf index keeps, per Sandbox, only what the collector decides on (:class:`CollectionInputs`); kopf updates it
from the watch it runs anyway. A pass decides over the whole index at once (:func:`plan_pass`, no API call), then
deletes Sandboxes past their lifetime (Expired first) or idle longer than idleSeconds, with an Event, and mirrors
the client's activity annotation into ``status.lastActivityTime``; a pass with nothing to do calls nothing. One
loop rather than a kopf timer per Sandbox: thousands of timers are thousands of tasks, and no pass to time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import kopf

from sandbox_operator import constants
from sandbox_operator.builders.lifecycle import (
    Collection,
    CollectionInputs,
    CollectorPass,
    Limits,
    collection_inputs,
    plan_pass,
)
from sandbox_operator.builders.status import Verdict
from sandbox_operator.handlers.errors import counted
from sandbox_operator.handlers.reconcile import collect, parse_sandbox, sync_status
from sandbox_operator.handlers.runtime import Runtime, runtime, utcnow
from sandbox_operator.handlers.uids import Key
from sandbox_operator.k8s.api import JSON
from sandbox_operator.metrics import COLLECTOR_PASS_SECONDS, COLLECTOR_SANDBOXES
from sandbox_operator.models.effective import effective_timeouts
from sandbox_operator.settings import OperatorSettings

RESOURCE = (constants.GROUP, constants.VERSION, constants.PLURAL)
INDEX = "sandbox_collection"
MAX_CONCURRENT_WRITES = 16
"""Deletions and status writes of one pass in flight at once: a pass that finds hundreds due must not take every
API worker from the handlers that start Sandboxes."""

logger = logging.getLogger(__name__)
CollectionIndex = Mapping[Key, Any]
"""kopf's index: per Sandbox, a store of its one :class:`CollectionInputs`."""


@kopf.index(*RESOURCE, id=INDEX)
async def sandbox_collection(body: kopf.Body, memo: kopf.Memo, **_: Any) -> dict[Key, CollectionInputs]:
    ensure_collector(memo)
    return index_entry(dict(body), runtime(memo).settings)


def index_entry(raw: JSON, settings: OperatorSettings) -> dict[Key, CollectionInputs]:
    sandbox, _invalid = parse_sandbox(raw)  # an invalid spec is collected with the default limits
    inputs = collection_inputs(sandbox, settings, resource_version=(raw.get("metadata") or {}).get("resourceVersion"),
                               mirrored_activity=(raw.get("status") or {}).get("lastActivityTime"))
    return {(sandbox.namespace, sandbox.name): inputs}


@kopf.on.startup(id="collector")
async def keep_collection_index(memo: kopf.Memo, sandbox_collection: CollectionIndex | None = None,
                                **_: Any) -> None:
    """Keeps the index for the loop (kopf passes its indexes, empty until the first listing, to startup handlers
    too); the first Sandbox indexed starts the loop."""
    if sandbox_collection is None:
        raise RuntimeError(f"the {INDEX} index was not passed to the startup handler")
    runtime(memo).collection_index = sandbox_collection


def ensure_collector(memo: kopf.Memo) -> None:
    """Starts the loop unless it runs. From the indexer, not at start-up: a task keeps the context it was created
    in, and ``kopf.event`` needs the Event queue that kopf sets only in the context of its per-object work. Kept
    on the runtime, not the memo: kopf hands each object a copy of the memo."""
    rt = runtime(memo)
    if rt.collection_index is not None and (rt.collector is None or rt.collector.done()):
        rt.collector = asyncio.get_running_loop().create_task(collect_forever(rt, rt.collection_index),
                                                              name="collector")


@kopf.on.cleanup(id="collector")
async def stop_collector(memo: kopf.Memo, **_: Any) -> None:
    task = runtime(memo).collector
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def collect_forever(rt: Runtime, index: CollectionIndex) -> None:
    """A pass every interval, on a fixed schedule (a slow pass delays the next, never adds up); a failed pass is
    logged and the next one runs as usual."""
    period = rt.settings.gc_interval_seconds
    next_pass = time.monotonic() + period
    while True:
        await asyncio.sleep(max(0.0, next_pass - time.monotonic()))
        next_pass = max(next_pass + period, time.monotonic())
        try:
            await collector_pass(rt, index)
        except Exception:
            logger.exception("a collector pass failed; the next one runs in %gs", period)


def indexed(index: CollectionIndex) -> Iterator[CollectionInputs]:
    for store in list(index.values()):
        yield from store


async def collector_pass(rt: Runtime, index: CollectionIndex) -> CollectorPass:
    """One pass over every Sandbox in the index, timed from the decision to the last write."""
    started = time.perf_counter()
    sandboxes = list(indexed(index))
    plan = plan_pass(sandboxes, utcnow(), limits=lambda inputs: limits_in_effect(rt, inputs))
    if not plan.empty:
        gate = asyncio.Semaphore(min(MAX_CONCURRENT_WRITES, rt.settings.api_workers))
        await _each(gate, [functools.partial(expire, rt, inputs, due) for inputs, due in plan.expired])
        await _each(gate, [functools.partial(collect_idle, rt, inputs, due) for inputs, due in plan.idle])
        await _each(gate, [functools.partial(mirror_activity, rt, inputs, clock) for inputs, clock in plan.mirror])
    COLLECTOR_PASS_SECONDS.observe(time.perf_counter() - started)
    COLLECTOR_SANDBOXES.set(len(sandboxes))
    return plan


async def _each(gate: asyncio.Semaphore, steps: list[Callable[[], Awaitable[None]]]) -> None:
    """Runs the steps, at most the gate's count at once; one step's failure is logged, the others go on."""

    async def bounded(step: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            await step()

    for outcome in await asyncio.gather(*(bounded(step) for step in steps), return_exceptions=True):
        if isinstance(outcome, Exception):
            logger.error("collector: %s", outcome, exc_info=outcome)


def limits_in_effect(rt: Runtime, inputs: CollectionInputs) -> Limits:
    """A pooled Sandbox runs its pool's template with its own overrides, once this process has read the pool."""
    if not inputs.pooled:
        return inputs.limits
    body = rt.latest((inputs.namespace, inputs.name))
    if body is None:
        return inputs.limits
    sandbox, _invalid = parse_sandbox(body)
    _, idle_seconds, lifetime_seconds = effective_timeouts(rt.run_view(sandbox).spec, rt.settings)
    return idle_seconds, lifetime_seconds


def object_logger(inputs: CollectionInputs) -> logging.LoggerAdapter[logging.Logger]:
    return _Prefixed(logger, f"[{inputs.namespace}/{inputs.name}]")


class _Prefixed(logging.LoggerAdapter[logging.Logger]):
    """Names the Sandbox in each line, as kopf's per-object logger does."""

    def __init__(self, base: logging.Logger, prefix: str) -> None:
        super().__init__(base, {})
        self.prefix = prefix

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.prefix} {msg}", kwargs


def reference(inputs: CollectionInputs) -> JSON:
    """The Sandbox as far as a conditional delete and its Event need it: this very object at this version."""
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"namespace": inputs.namespace, "name": inputs.name, "uid": inputs.uid,
                         "resourceVersion": inputs.resource_version}}


@counted("collector")
async def expire(rt: Runtime, inputs: CollectionInputs, due: Collection) -> None:
    """Expired first (the status says why), then deleted; a Failed Sandbox stays Failed and is deleted as it is."""
    log = object_logger(inputs)
    latest = rt.latest((inputs.namespace, inputs.name))
    if latest is not None and (latest.get("metadata") or {}).get("uid") != inputs.uid:
        return  # a new Sandbox of the same name: the next pass judges it
    updated = await sync_status(rt, inputs.namespace, inputs.name,
                                override=Verdict("Expired", "LifetimeExpired", due.message), log=log)
    if updated is None or updated.status.phase == "Expired":
        return  # gone, or sync_status deleted it
    fresh: JSON | None = await asyncio.to_thread(rt.api.get_sandbox, inputs.namespace, inputs.name)
    if fresh is None or fresh["metadata"].get("deletionTimestamp") or fresh["metadata"].get("uid") != inputs.uid:
        return
    await collect(rt, fresh, due.reason, due.message, log=log)


@counted("collector")
async def collect_idle(rt: Runtime, inputs: CollectionInputs, due: Collection) -> None:
    await collect(rt, reference(inputs), due.reason, due.message, log=object_logger(inputs))


@counted("collector")
async def mirror_activity(rt: Runtime, inputs: CollectionInputs, clock: str) -> None:
    written = await asyncio.to_thread(rt.api.patch_sandbox_status, inputs.namespace, inputs.name,
                                      {"lastActivityTime": clock})
    if written is not None:
        rt.remember(written)

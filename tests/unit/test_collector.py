"""The collector: which Sandboxes one pass deletes or touches (a pure decision over the index), and the pass
itself against the in-memory API server (tests/unit/fake_kube.py): Events, conditional deletes, no API call when
nothing is due, the pass metric, and the loop stopping with the operator."""

from __future__ import annotations

import asyncio
import copy
import datetime
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, cast

import kopf
import pytest
from prometheus_client import REGISTRY

from sandbox_operator import constants
from sandbox_operator.builders.lifecycle import CollectionInputs, collection_inputs, due, plan_pass
from sandbox_operator.handlers import collector
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.settings import OperatorSettings
from tests.unit.fake_kube import World, make_world, sandbox_body, timestamp

T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
SETTINGS = OperatorSettings()


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def inputs(name: str, *, status: dict[str, Any] | None = None, timeouts: dict[str, int] | None = None,
           activity: float | None = None, deleting: bool = False, pooled: bool = False) -> CollectionInputs:
    """A Sandbox created at T0, as the collector's index keeps it."""
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"{name}-uid", "creationTimestamp": iso(0),
                            "annotations": {} if activity is None else
                            {constants.ANNOTATION_LAST_ACTIVITY: iso(activity)}}
    if deleting:
        meta["deletionTimestamp"] = iso(1)
    spec: dict[str, Any] = {"timeouts": timeouts} if timeouts else {}
    if pooled:
        spec["poolRef"] = {"name": "warm"}
    body = {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "metadata": meta, "spec": spec,
            "status": status or {}}
    return collection_inputs(Sandbox.from_body(body), SETTINGS, resource_version="7",
                             mirrored_activity=(status or {}).get("lastActivityTime"))


def names(pairs: Iterable[tuple[CollectionInputs, object]]) -> list[str]:
    return [entry.name for entry, _ in pairs]


# --- the decision ---------------------------------------------------------------------------------------------

def test_nothing_due_plans_nothing() -> None:
    fresh = inputs("fresh", status={"phase": "Ready", "readyTime": iso(5), "lastActivityTime": iso(5)})
    assert plan_pass([fresh], at(60)).empty


def test_expired_come_before_idle_and_each_says_why() -> None:
    plan = plan_pass([
        inputs("idle", timeouts={"idleSeconds": 100}),
        inputs("expired", timeouts={"lifetimeSeconds": 100, "idleSeconds": 100}),
        inputs("kept", timeouts={"idleSeconds": 1000}, status={"lastActivityTime": iso(0)}),
    ], at(150))
    assert names(plan.expired) == ["expired"] and names(plan.idle) == ["idle"] and plan.mirror == []
    [(_, expired)] = plan.expired
    assert expired.reason == "LifetimeExpired" and "lifetime (100s)" in expired.message
    [(_, idle)] = plan.idle
    assert idle.reason == "IdleTimeout" and "idleSeconds=100" in idle.message


def test_a_moved_idle_clock_is_mirrored_once() -> None:
    moved = inputs("moved", activity=30, status={"phase": "Ready", "readyTime": iso(5), "lastActivityTime": iso(5)})
    plan = plan_pass([moved], at(60))
    assert plan.mirror == [(moved, iso(30))] and not plan.expired and not plan.idle
    settled = inputs("settled", activity=30, status={"readyTime": iso(5), "lastActivityTime": iso(30)})
    assert plan_pass([settled], at(60)).empty


def test_deleting_sandboxes_are_left_alone() -> None:
    gone = inputs("gone", deleting=True, activity=30, timeouts={"lifetimeSeconds": 10, "idleSeconds": 10})
    assert plan_pass([gone], at(1000)).empty


def test_the_limits_in_effect_decide() -> None:
    """A pooled Sandbox's limits come from its pool's template, which the caller knows."""
    pooled = inputs("pooled", pooled=True, timeouts={"idleSeconds": 1000})
    assert pooled.pooled and plan_pass([pooled], at(200)).empty
    plan = plan_pass([pooled], at(200), limits=lambda _: (100, 3600))
    assert names(plan.idle) == ["pooled"]


def test_the_decision_matches_the_single_sandbox_rule() -> None:
    """plan_pass and the one-Sandbox rule (what collection_due applies, tested in test_status.py) agree."""
    cases = [inputs("a", timeouts={"idleSeconds": 100}), inputs("b", activity=90, timeouts={"idleSeconds": 100}),
             inputs("c", timeouts={"lifetimeSeconds": 120, "idleSeconds": 100}, activity=119)]
    for seconds in (99, 100, 119, 120, 189, 190):
        plan = plan_pass(cases, at(seconds))
        planned = {entry.name: c.reason for entry, c in [*plan.expired, *plan.idle]}
        expected = {entry.name: found.reason for entry in cases
                    if (found := due(entry, entry.limits, at(seconds))) is not None}
        assert planned == expected, seconds


# --- the pass against the API server --------------------------------------------------------------------------

@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(monkeypatch)


def index_of(world: World, *bodies: kopf.Body) -> dict[tuple[str, str], list[CollectionInputs]]:
    """The collector's index as kopf keeps it (a store of values per key) for these Sandbox versions."""
    entries: dict[tuple[str, str], list[CollectionInputs]] = {}
    for body in bodies:
        for key, value in collector.index_entry(dict(body), world.runtime.settings).items():
            entries[key] = [value]
    return entries


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def idle_sandbox(world: World, name: str = "a") -> None:
    """Ready 20 minutes ago, untouched since, idleSeconds 600 (lifetime an hour from its creation)."""
    world.cluster.add(constants.KIND, {**sandbox_body(name, creationTimestamp=timestamp(1500), spec={
        "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 3600}}),
        "status": {"phase": "Ready", "readyTime": timestamp(1200), "lastActivityTime": timestamp(1200)}})


def pass_count() -> float:
    return REGISTRY.get_sample_value("sandbox_operator_collector_pass_seconds_count") or 0.0


def test_an_idle_sandbox_is_collected_once(world: World) -> None:
    idle_sandbox(world)

    async def scenario() -> None:
        index = index_of(world, world.body())
        passes = pass_count()
        await collector.collector_pass(world.runtime, index)
        assert world.sandbox()["metadata"].get("deletionTimestamp"), "deleted (the finalizer holds it)"
        [(event_type, reason, message)] = world.events
        assert (event_type, reason) == ("Normal", "IdleTimeout") and "idleSeconds=600" in message
        assert pass_count() == passes + 1
        await collector.collector_pass(world.runtime, index)  # a second pass with the old version
        assert len(world.events) == 1, "the Sandbox changed since: its precondition fails, no second Event"

    run(scenario)


def test_a_sandbox_in_use_is_not_collected_and_its_activity_is_mirrored(world: World) -> None:
    idle_sandbox(world)
    active = timestamp(30)
    world.sandbox()["metadata"]["annotations"] = {constants.ANNOTATION_LAST_ACTIVITY: active}

    async def scenario() -> None:
        await collector.collector_pass(world.runtime, index_of(world, world.body()))
        assert not world.sandbox()["metadata"].get("deletionTimestamp") and world.events == []
        assert world.status()["lastActivityTime"] == active
        calls = len(world.cluster.calls)
        await collector.collector_pass(world.runtime, index_of(world, world.body()))
        assert world.cluster.calls[calls:] == [], "nothing due, nothing to mirror: no API call at all"

    run(scenario)


def test_an_expired_sandbox_is_marked_expired_then_deleted(world: World) -> None:
    world.cluster.add(constants.KIND, {**sandbox_body("old", creationTimestamp=timestamp(120), spec={
        "timeouts": {"idleSeconds": 60, "lifetimeSeconds": 100}}),
        "status": {"phase": "Ready", "readyTime": timestamp(110), "lastActivityTime": timestamp(110)}})
    idle_sandbox(world, "idle")

    async def scenario() -> None:
        await collector.collector_pass(world.runtime, index_of(world, world.body("idle"), world.body("old")))
        assert world.sandbox("old")["metadata"].get("deletionTimestamp")
        assert world.status("old")["phase"] == "Expired"
        assert world.sandbox("idle")["metadata"].get("deletionTimestamp")
        reasons = world.reasons()
        assert "LifetimeExpired" in reasons and "IdleTimeout" in reasons
        assert reasons.index("LifetimeExpired") < reasons.index("IdleTimeout"), "expired first"

    run(scenario)


def test_a_failed_sandbox_past_its_lifetime_stays_failed_and_goes(world: World) -> None:
    world.cluster.add(constants.KIND, {**sandbox_body("broken", creationTimestamp=timestamp(120), spec={
        "timeouts": {"idleSeconds": 100, "lifetimeSeconds": 100}}),
        "status": {"phase": "Failed", "reason": "ImageMissing", "message": "no such image"}})

    async def scenario() -> None:
        await collector.collector_pass(world.runtime, index_of(world, world.body("broken")))
        assert world.sandbox("broken")["metadata"].get("deletionTimestamp")
        assert world.status("broken")["phase"] == "Failed"
        assert ("Warning", "LifetimeExpired") in [(t, r) for t, r, _ in world.events]

    run(scenario)


def test_many_due_are_all_collected(world: World) -> None:
    """More due than writes allowed at once: every one goes, each with its Event."""
    count = collector.MAX_CONCURRENT_WRITES * 2 + 3
    for i in range(count):
        idle_sandbox(world, f"s{i}")

    async def scenario() -> None:
        await collector.collector_pass(world.runtime,
                                       index_of(world, *(world.body(f"s{i}") for i in range(count))))
        assert all(world.sandbox(f"s{i}")["metadata"].get("deletionTimestamp") for i in range(count))
        assert world.reasons() == ["IdleTimeout"] * count

    run(scenario)


def test_the_loop_runs_passes_and_stops_with_the_operator(world: World) -> None:
    world.memo.runtime = type(world.runtime)(settings=OperatorSettings(gc_interval_seconds=0.5),
                                             api=world.runtime.api)
    idle_sandbox(world)

    index = index_of(world, world.body())

    async def scenario() -> None:
        keep = cast(Callable[..., Awaitable[None]], collector.keep_collection_index)
        index_fn = cast(Callable[..., Awaitable[object]], collector.sandbox_collection)
        stop = cast(Callable[..., Awaitable[None]], collector.stop_collector)
        await keep(memo=world.memo, sandbox_collection=index)
        assert world.runtime.collector is None, "no loop before a Sandbox is indexed"
        # kopf hands every object a copy of the memo: a loop started for one must be the loop for all.
        await index_fn(body=world.body(), memo=copy.copy(world.memo))
        task = world.runtime.collector
        assert task is not None
        await index_fn(body=world.body(), memo=copy.copy(world.memo))
        assert world.runtime.collector is task, "a second loop"
        for _ in range(40):
            if world.events:
                break
            await asyncio.sleep(0.05)
        assert world.reasons() == ["IdleTimeout"], "the first pass, one interval after the start"
        await stop(memo=world.memo)
        assert task.done()

    run(scenario)
    assert world.sandbox()["metadata"].get("deletionTimestamp")

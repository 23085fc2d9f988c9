"""Activity heartbeats: the patch the operator reads, throttling, and keep-alive while commands run."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox_operator import constants
from sandbox_operator.models.timestamps import parse_time
from sandbox_operator.sdk import errors
from sandbox_operator.sdk.activity import ActivityRecorder, activity_patch, interval_for


class FakeApi:
    def __init__(self, fail: BaseException | None = None) -> None:
        self.patches: list[tuple[str, str, dict[str, Any], float]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def patch_sandbox(self, name: str, namespace: str, patch: dict[str, Any]) -> dict[str, Any]:
        if self.fail is not None:
            raise self.fail
        with self.lock:
            self.patches.append((namespace, name, patch, time.monotonic()))
        return {}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_patch_shape_is_what_the_operator_reads() -> None:
    moment = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    assert activity_patch(moment) == {
        "metadata": {"annotations": {constants.ANNOTATION_LAST_ACTIVITY: "2026-11-28T01:02:03Z"}}}
    written = activity_patch()["metadata"]["annotations"][constants.ANNOTATION_LAST_ACTIVITY]  # type: ignore[index]
    assert abs((parse_time(written) or moment) - datetime.now(UTC)).total_seconds() < 5


@pytest.mark.parametrize(("idle", "expected"), [(None, 10.0), (1800, 10.0), (20, 5.0), (10, 2.5), (2, 1.0)])
def test_interval_for(idle: float | None, expected: float) -> None:
    assert interval_for(idle) == expected


def test_throttled_per_sandbox() -> None:
    api, clock = FakeApi(), Clock()
    rec = ActivityRecorder(api, 10, clock=clock)  # type: ignore[arg-type]
    assert rec.touch("ns", "a") is True
    assert rec.touch("ns", "a") is False
    assert rec.touch("ns", "b") is True
    clock.now += 9.9
    assert rec.touch("ns", "a") is False
    clock.now += 0.1
    assert rec.touch("ns", "a") is True
    assert rec.touch("ns", "a", force=True) is True
    assert [p[1] for p in api.patches] == ["a", "b", "a", "a"]


def test_short_idle_timeout_tightens_interval() -> None:
    api, clock = FakeApi(), Clock()
    rec = ActivityRecorder(api, 10, clock=clock)  # type: ignore[arg-type]
    rec.configure("ns", "a", 20)
    rec.touch("ns", "a")
    clock.now += 5
    assert rec.touch("ns", "a") is True


def test_errors_are_raised_and_do_not_count_as_recorded() -> None:
    api = FakeApi(errors.SandboxNotFound("gone", reason="NotFound"))
    rec = ActivityRecorder(api, 10)  # type: ignore[arg-type]
    with pytest.raises(errors.SandboxNotFound):
        rec.touch("ns", "a")
    api.fail = None
    assert rec.touch("ns", "a") is True


def test_disabled_records_nothing() -> None:
    api = FakeApi()
    rec = ActivityRecorder(api, 10, enabled=False)  # type: ignore[arg-type]
    assert rec.touch("ns", "a") is False
    with rec.hold("ns", "a"):
        pass
    assert api.patches == []


def test_hold_keeps_activity_fresh_while_running() -> None:
    api = FakeApi()
    rec = ActivityRecorder(api, 0.2)  # type: ignore[arg-type]
    try:
        with rec.hold("ns", "long"):
            time.sleep(1.1)
        count = len(api.patches)
        assert count >= 4, api.patches
        times = [p[3] for p in api.patches]
        assert max(b - a for a, b in itertools.pairwise(times)) < 0.5
        time.sleep(0.5)
        assert len(api.patches) == count  # no more heartbeats once the command is done
    finally:
        rec.close()


def test_heartbeat_failures_are_kept_not_fatal() -> None:
    api = FakeApi(errors.SandboxForbidden("no patch", reason="Forbidden"))
    rec = ActivityRecorder(api, 0.1)  # type: ignore[arg-type]
    try:
        with rec.hold("ns", "x"):
            time.sleep(0.4)
        assert isinstance(rec.last_error[("ns", "x")], errors.SandboxForbidden)
    finally:
        rec.close()

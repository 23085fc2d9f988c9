"""The test kit's own pure parts: waiting, percentiles, the command line of a benchmark, the runtimes the
end-to-end suites run under, and the watch thread (against a scripted list-and-watch function, as the API server
would answer it)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.kit import GVISOR, RUNC, WaitTimeoutError, WatchThread, consistently, percentile, pod_overhead, wait_until
from tests.kit.runtimes import RUNTIMES_VARIABLE, selected_runtimes


def test_wait_until_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, {}, {"phase": "Ready"}, {"phase": "later"}])
    assert wait_until(lambda: next(answers), 5, interval=0.001, message="Ready") == {"phase": "Ready"}


def test_wait_until_says_what_it_waited_for_and_the_last_answer() -> None:
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError, match=r"timed out after 0\.2 s waiting for the pod \(last: \[\]\)"):
        wait_until(lambda: [], 0.2, interval=0.05, message="the pod")
    assert 0.2 <= time.monotonic() - started < 2


def test_a_message_function_is_asked_only_on_failure() -> None:
    asked: list[str] = []

    def describe() -> str:
        asked.append("now")
        return "the state now"

    assert wait_until(lambda: True, 1, message=describe)
    assert asked == []
    with pytest.raises(WaitTimeoutError, match="the state now"):
        wait_until(lambda: False, 0, message=describe)
    assert asked == ["now"]


def test_a_predicate_gives_up_early_by_raising() -> None:
    def exited() -> bool:
        raise AssertionError("the operator exited (1)")

    started = time.monotonic()
    with pytest.raises(AssertionError, match="exited"):
        wait_until(exited, 60, message="the operator")
    assert time.monotonic() - started < 1


def test_consistently_fails_at_the_first_poll_that_does_not_hold() -> None:
    answers = iter([True, True, False, True])
    with pytest.raises(AssertionError, match="no replacement pod stopped holding"):
        consistently(lambda: next(answers), 5, interval=0.001, message="no replacement pod")
    consistently(lambda: True, 0.05, interval=0.01, message="fine")


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([3.0], 95, 3.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([4.0, 1.0, 3.0, 2.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([0.0, 10.0], 95, 9.5),
])
def test_percentile_interpolates_between_neighbours(values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == pytest.approx(expected)


@pytest.mark.parametrize(("value", "expected"), [
    (None, [RUNC, GVISOR]), ("", [RUNC, GVISOR]), ("runc", [RUNC]), (" gvisor , runc,gvisor ", [GVISOR, RUNC]),
])
def test_the_e2e_runtimes_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                                     expected: list[object]) -> None:
    if value is None:
        monkeypatch.delenv(RUNTIMES_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(RUNTIMES_VARIABLE, value)
    assert selected_runtimes() == expected


def test_an_unknown_e2e_runtime_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUNTIMES_VARIABLE, "runc,kata")
    with pytest.raises(ValueError, match=r"SANDBOX_E2E_RUNTIMES='runc,kata': unknown runtime kata; choose from runc"):
        selected_runtimes()


def test_only_gvisor_names_a_runtime_class_for_the_operator_and_the_pods() -> None:
    assert (RUNC.operator_settings(), RUNC.pod_fields(), RUNC.kernel_boundary) == ({}, {}, False)
    assert GVISOR.operator_settings() == {"default_runtime_class": "gvisor"}
    assert GVISOR.pod_fields() == {"runtimeClassName": "gvisor"} and GVISOR.kernel_boundary


def test_pod_overhead_is_the_runtime_class_s_or_nothing() -> None:
    assert pod_overhead({"spec": {}}) == (0, 0)
    cpu, memory = pod_overhead({"spec": {"overhead": {"cpu": "50m", "memory": "32Mi"}}})
    assert (str(cpu), memory) == ("0.050", 32 * 1024 * 1024)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


# --- the watch thread -----------------------------------------------------------------------------------------

JSON = dict[str, Any]


@dataclass
class Response:
    """What the client returns for ``_preload_content=False``: a list's body, or a watch's stream of lines."""

    data: bytes = b""
    lines: list[JSON] = field(default_factory=list)
    status: int = 200

    def stream(self, amt: Any = None, decode_content: bool = False) -> Iterator[bytes]:
        for line in self.lines:
            yield json.dumps(line).encode() + b"\n"

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def thing(name: str, version: int, phase: str = "") -> JSON:
    return {"metadata": {"name": name, "resourceVersion": str(version)}, "status": {"phase": phase}}


class ScriptedApi:
    """A ``list_*`` function: a list answer, then one scripted watch answer per call, then quiet watches."""

    def __init__(self, listed: list[JSON], version: int, watches: list[list[JSON]]) -> None:
        self.listed, self.version, self.watches = listed, version, watches
        self.requests: list[tuple[str, str | None]] = []  # ("list" or "watch", resource_version)

    def list_namespaced_thing(self, namespace: str, **kwargs: Any) -> Response:
        if not kwargs.get("watch"):
            self.requests.append(("list", None))
            return Response(json.dumps({"metadata": {"resourceVersion": str(self.version)},
                                        "items": self.listed}).encode())
        self.requests.append(("watch", kwargs.get("resource_version")))
        if self.watches:
            return Response(lines=self.watches.pop(0))
        time.sleep(0.01)  # the API server holds a quiet watch open until its timeout
        return Response()


def test_the_watch_thread_lists_then_watches_from_the_last_version_and_relists_when_it_expired() -> None:
    api = ScriptedApi([thing("a", 10, "Pending")], 10, [
        [{"type": "MODIFIED", "object": thing("a", 11, "Ready")},
         {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}],
        [{"type": "ERROR", "object": {"code": 410, "reason": "Expired", "message": "too old resource version"}}],
        [{"type": "DELETED", "object": thing("a", 20, "Ready")}],
    ])
    seen: list[tuple[str, str, str]] = []
    done = threading.Event()

    def handle(event_type: str, obj: JSON) -> None:
        seen.append((event_type, obj["metadata"]["name"], obj["status"]["phase"]))
        if event_type == "DELETED":
            done.set()

    watch = WatchThread(api.list_namespaced_thing, handle, "ns")
    try:
        watch.wait_ready(5)
        assert done.wait(5), seen
    finally:
        watch.stop()
    assert seen == [("ADDED", "a", "Pending"), ("MODIFIED", "a", "Ready"),  # the bookmark is not an object event
                    ("ADDED", "a", "Pending"),  # listed again after the 410
                    ("DELETED", "a", "Ready")]
    assert api.requests[:5] == [("list", None), ("watch", "10"), ("watch", "12"), ("list", None), ("watch", "10")]

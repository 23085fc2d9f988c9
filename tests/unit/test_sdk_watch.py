"""The SDK's watch (the client's watch.Watch under it): resuming, bookmarks, 410 Gone, errors, stopping.

A fake list function stands for the API: each watch request it gets plays one scripted list of lines (or
raises), the way the API server's chunked watch response would; a plain list answers with a JSON list.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client

from sandbox_operator.sdk import _kube, errors
from sandbox_operator.sdk._kube import KubeApi, WatchStopper


def sbx(name: str, rv: str, phase: str = "Pending") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "status": {"phase": phase}}


def event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": obj}


def bookmark(rv: str) -> dict[str, Any]:
    return event("BOOKMARK", {"metadata": {"resourceVersion": rv}})


def gone() -> dict[str, Any]:
    return event("ERROR", {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})


class Response:
    """A watch (or list) response: its body in chunks; ``broken_after`` lines, the connection drops."""

    def __init__(self, lines: list[dict[str, Any]], *, broken_after: int | None = None,
                 hold: threading.Event | None = None, quiet: float = 0.0) -> None:
        self.lines = lines
        self.broken_after = broken_after
        self.hold = hold
        self.quiet = quiet
        self.status = 200
        self.data = json.dumps(lines[0]).encode() if lines else b""

    def stream(self, amt: object = None, decode_content: bool = False) -> Iterator[bytes]:
        for i, line in enumerate(self.lines):
            if i == self.broken_after:
                raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
            yield (json.dumps(line) + "\n").encode()
        if self.broken_after == len(self.lines):
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        if self.hold is not None:  # a quiet connection, until the test lets it end
            self.hold.wait(10)
            raise urllib3.exceptions.ProtocolError("Connection closed")
        time.sleep(self.quiet)  # nothing happens until the server's timeout ends the request

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeList:
    """The API's list function: ``watches`` answers the watch requests in turn (then nothing happens until each
    request's timeout), ``listing`` a plain list."""

    def __init__(self, watches: list[Response | BaseException], listing: dict[str, Any] | None = None) -> None:
        self.watches = watches
        self.listing = listing
        self.calls: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Response:
        self.calls.append(kwargs)
        if not kwargs.get("watch"):
            return Response([self.listing or {"metadata": {"resourceVersion": "0"}, "items": []}])
        if not self.watches:
            return Response([], quiet=0.25)
        answer = self.watches.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def watch_calls(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c.get("watch")]


def api_with(fake: FakeList) -> KubeApi:
    api = KubeApi(client.ApiClient())
    api.custom.list_namespaced_custom_object = fake  # type: ignore[method-assign]
    return api


def test_events_come_in_order_bookmarks_only_move_the_resume_point() -> None:
    fake = FakeList([Response([event("MODIFIED", sbx("a", "5")), bookmark("9")]),
                     Response([event("MODIFIED", sbx("a", "12", "Ready"))])])
    got = [(e["type"], e["object"]["metadata"]["resourceVersion"])
           for e in api_with(fake).watch_sandboxes("ns", name="a", resource_version="3", timeout_seconds=0.5)]
    assert got == [("MODIFIED", "5"), ("MODIFIED", "12")]
    first, second = fake.watch_calls[:2]
    assert first["resource_version"] == "3" and first["allow_watch_bookmarks"] is True
    assert first["field_selector"] == "metadata.name=a" and first["timeout_seconds"] <= 60
    assert second["resource_version"] == "9"  # the bookmark's, not the last event's


def test_a_broken_connection_resumes_from_the_last_event() -> None:
    fake = FakeList([Response([event("MODIFIED", sbx("a", "5"))], broken_after=1),
                     Response([event("MODIFIED", sbx("a", "6", "Ready"))])])
    got = [e["object"]["metadata"]["resourceVersion"]
           for e in api_with(fake).watch_sandboxes("ns", resource_version="3", timeout_seconds=0.5)]
    assert got == ["5", "6"]
    assert [c["resource_version"] for c in fake.watch_calls][:2] == ["3", "5"]


def test_gone_lists_again_and_yields_what_changed_since_the_known_objects() -> None:
    known = [sbx("same", "4"), sbx("changed", "4"), sbx("vanished", "4")]
    listing = {"metadata": {"resourceVersion": "50"},
               "items": [sbx("same", "4"), sbx("changed", "40", "Ready"), sbx("new", "41")]}
    fake = FakeList([Response([gone()]), Response([event("DELETED", sbx("new", "51"))])], listing)
    got = [(e["type"], e["object"]["metadata"]["name"])
           for e in api_with(fake).watch_sandboxes("ns", name=None, resource_version="4", timeout_seconds=0.5,
                                                   known=known)]
    assert sorted(got[:3]) == [("ADDED", "new"), ("DELETED", "vanished"), ("MODIFIED", "changed")]
    assert got[3:] == [("DELETED", "new")]  # then watching on from the new list
    assert fake.watch_calls[1]["resource_version"] == "50"
    plain_lists = [c for c in fake.calls if not c.get("watch")]
    assert len(plain_lists) == 1 and "resource_version" not in plain_lists[0]


def test_other_watch_errors_raise_the_sdk_error() -> None:
    forbidden = {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "cannot watch sandboxes"}
    fake = FakeList([Response([event("ERROR", forbidden)])])
    with pytest.raises(errors.SandboxForbidden, match="Forbidden"):
        list(api_with(fake).watch_sandboxes("ns", resource_version="1", timeout_seconds=5))


def test_the_timeout_ends_the_watch_and_bounds_each_request() -> None:
    fake = FakeList([])
    started = time.monotonic()
    assert list(api_with(fake).watch_sandboxes("ns", resource_version="1", timeout_seconds=0.2)) == []
    assert time.monotonic() - started < 2
    assert [c["timeout_seconds"] for c in fake.watch_calls] == [1]  # whole seconds, at least one


def test_an_unreachable_api_gives_up_after_a_few_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_kube, "WATCH_RETRY_PAUSE", 0.01)
    refused = urllib3.exceptions.MaxRetryError(None, "/apis", "Connection refused")  # type: ignore[arg-type]
    fake = FakeList([refused] * 10)
    api = api_with(fake)
    with pytest.raises(errors.ApiError, match="cannot reach") as info:
        list(api.watch_sandboxes("ns", resource_version="1", timeout_seconds=30))
    assert info.value.reason == "Unreachable" and len(fake.watch_calls) == 4


def test_stop_ends_a_watch_from_another_thread() -> None:
    hold = threading.Event()
    fake = FakeList([Response([event("ADDED", sbx("a", "2"))], hold=hold)])
    stoppers: list[WatchStopper] = []
    got: list[dict[str, Any]] = []
    thread = threading.Thread(target=lambda: got.extend(
        api_with(fake).watch_sandboxes("ns", resource_version="1", stopper=stoppers)))
    thread.start()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    stoppers[0].stop()
    hold.set()  # the fake connection then breaks, as shutting the socket down does
    thread.join(5)
    assert not thread.is_alive() and [e["type"] for e in got] == ["ADDED"]
    assert len(fake.watch_calls) == 1  # no reconnect after stop

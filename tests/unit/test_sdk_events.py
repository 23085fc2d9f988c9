"""Sandbox state events from watch events, and Kubernetes Events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sandbox_operator import constants
from sandbox_operator.sdk.events import EventStream, event_selector, kube_event, state_event


def sbx(phase: str | None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "s", "namespace": "ns", "creationTimestamp": "2026-11-28T01:00:00Z",
                            "resourceVersion": "5"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T01:05:00Z"
    return {"metadata": meta, "status": {"phase": phase} if phase else {}}


def test_state_transitions() -> None:
    created = state_event("ADDED", sbx(None), None)
    assert created is not None and created.reason == "Created" and created.kind == "state"
    assert state_event("MODIFIED", sbx("Pending"), None).reason == "Pending"  # type: ignore[union-attr]
    assert state_event("MODIFIED", sbx("Pending"), "Pending") is None  # nothing a user cares about
    ready = state_event("MODIFIED", sbx("Ready"), "Pending")
    assert ready is not None and ready.reason == "Ready" and ready.phase == "Ready"
    term = state_event("MODIFIED", sbx("Ready", deleting=True), "Ready")
    assert term is not None and term.reason == "Terminating"
    assert state_event("MODIFIED", sbx("Ready", deleting=True), "Terminating") is None
    deleted = state_event("DELETED", sbx("Ready", deleting=True), "Terminating")
    assert deleted is not None and deleted.reason == "Deleted" and deleted.type == "DELETED"
    existing = state_event("ADDED", sbx("Ready"), None, existing=True)
    assert existing is not None and existing.type == "EXISTING" and existing.reason == "Ready"
    assert deleted.to_dict()["reason"] == "Deleted"


def test_kube_event() -> None:
    ev = kube_event({"type": "Warning", "reason": "Failed", "message": "ErrImageNeverPull",
                     "involvedObject": {"kind": "Pod", "name": "s", "namespace": "ns"},
                     "lastTimestamp": "2026-11-28T01:00:03Z"})
    assert ev.kind == "event" and ev.type == "Warning" and ev.involved_kind == "Pod" and ev.name == "s"
    assert ev.timestamp is not None and ev.timestamp.second == 3


def test_selectors() -> None:
    assert event_selector("s") == "involvedObject.name=s"
    assert event_selector(None) == f"involvedObject.kind={constants.KIND}"


class FakeApi:
    def list_sandboxes(self, namespace: str | None, label_selector: str | None = None) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "5"}, "items": [sbx("Pending")]}

    def list_events(self, namespace: str | None, field_selector: str | None = None) -> dict[str, Any]:
        return {"metadata": {"resourceVersion": "7"}, "items": [
            {"type": "Normal", "reason": "Scheduled", "involvedObject": {"kind": "Pod", "name": "s"},
             "lastTimestamp": "2026-11-28T01:00:01Z"},
            {"type": "Normal", "reason": "Other", "involvedObject": {"kind": "ConfigMap", "name": "s"},
             "lastTimestamp": "2026-11-28T01:00:02Z"},
        ]}

    def watch_sandboxes(self, namespace: str | None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        assert kwargs["resource_version"] == "5"
        yield {"type": "MODIFIED", "object": sbx("Pending")}
        yield {"type": "MODIFIED", "object": sbx("Ready")}
        yield {"type": "DELETED", "object": sbx("Ready", deleting=True)}

    def watch_events(self, namespace: str | None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        assert kwargs["resource_version"] == "7"
        return iter(())


def test_stream_history_then_live() -> None:
    stream = EventStream(FakeApi(), "ns", name="s", follow=True, timeout=2)  # type: ignore[arg-type]
    got = []
    with stream:
        for ev in stream:
            got.append((ev.kind, ev.reason))
            if ev.reason == "Deleted":
                break
    assert got[:2] == [("state", "Pending"), ("event", "Scheduled")]  # history, sorted by time; no ConfigMap
    assert got[2:] == [("state", "Ready"), ("state", "Deleted")]


def test_stream_without_follow_ends() -> None:
    stream = EventStream(FakeApi(), "ns", name="s", follow=False)  # type: ignore[arg-type]
    assert [e.reason for e in stream] == ["Pending", "Scheduled"]

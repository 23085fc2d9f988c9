"""Failing fast when no operator serves the namespace: the decision, and create() acting on it (no cluster)."""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.registry import registry_entry, registry_key
from sandbox_operator.sdk import NamespaceNotServed, SandboxManager, SandboxNotReady, errors
from sandbox_operator.sdk import manager as manager_module
from sandbox_operator.sdk.pickup import Pickup, check_pickup, picked_up

NOW = datetime.datetime(2026, 12, 1, 10, 0, 0, tzinfo=datetime.UTC)


def registry(*operators: tuple[str, list[str], float]) -> dict[str, str]:
    """CRD annotations: (operator name, namespaces it watches, seconds since its heartbeat) each."""
    annotations = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    for name, namespaces, age in operators:
        entry = registry_entry(namespaces, NOW - datetime.timedelta(seconds=age))
        annotations[registry_key("system", name)] = entry.annotation_value()
    return annotations


def check(annotations: dict[str, str] | None, *, waited: float = 3.0, picked: bool = False,
          problem: str | None = None) -> Any:
    return check_pickup(picked=picked, registry=annotations, namespace="default", name="sbx-1", now=NOW,
                        waited=waited, registry_problem=problem)


def test_picked_up_by_status_or_finalizer() -> None:
    assert not picked_up({"metadata": {"name": "x"}})
    assert not picked_up({"metadata": {"finalizers": ["other.io/keep"]}, "status": {}})
    assert picked_up({"metadata": {"finalizers": [constants.FINALIZER]}})
    assert picked_up({"status": {"phase": "Pending"}})
    assert picked_up({"status": {"observedGeneration": 1}})


def test_picked_up_ends_the_check() -> None:
    assert check(registry(), picked=True).outcome is Pickup.PICKED_UP


def test_the_registry_is_not_judged_before_the_grace_period() -> None:
    assert check(registry(), waited=2.9).outcome is Pickup.WAIT


def test_an_operator_serving_the_namespace_means_keep_waiting() -> None:
    assert check(registry(("a", ["sandboxes"], 10), ("b", ["default"], 170))).outcome is Pickup.SERVED
    assert check(registry(("everything", ["*"], 0))).outcome is Pickup.SERVED
    assert check(registry(("all-but", ["!kube-*"], 0))).outcome is Pickup.SERVED


def test_operators_elsewhere_are_named() -> None:
    result = check(registry(("a", ["sandboxes", "team-b"], 10), ("c", ["team-a"], 30), ("old", ["default"], 181)))
    assert result.outcome is Pickup.NOT_SERVED
    assert result.served == ("sandboxes", "team-a", "team-b")  # the stale one serving default does not count
    assert "'default'" in result.message and "sandboxes, team-a, team-b" in result.message
    assert "sbx-1" in result.message


def test_no_fresh_operator_at_all() -> None:
    for crd_annotations in (registry(), registry(("old", ["default"], 600))):
        result = check(crd_annotations)
        assert result.outcome is Pickup.NOT_SERVED and result.served == ()
        assert "no sandbox operator is running" in result.message and "default/sbx-1" in result.message


def test_malformed_entries_serve_nothing() -> None:
    annotations = {registry_key("system", "broken"): '{"namespaces": "default"}',
                   registry_key("system", "junk"): "not json"}
    assert check(annotations).outcome is Pickup.NOT_SERVED


def test_an_unreadable_registry_means_waiting_longer_then_saying_so() -> None:
    assert check(None, waited=9.5, problem="forbidden").outcome is Pickup.WAIT
    result = check(None, waited=10.0, problem="customresourcedefinitions is forbidden")
    assert result.outcome is Pickup.NOT_SERVED
    assert "could not be read" in result.message and "customresourcedefinitions is forbidden" in result.message
    assert "'default'" in result.message and "within 10s" in result.message


# create() and wait_ready() on a fake API ------------------------------------------------------------------------

class FakeApi:
    """A namespace where nothing handles Sandboxes unless ``pick_up_after`` seconds pass; a watch with nothing to
    report lasts its timeout, as the API server's does."""

    def __init__(self, annotations: dict[str, str] | None, pick_up_after: float | None = None) -> None:
        self.annotations = annotations
        self.pick_up_after = pick_up_after
        self.created_at = 0.0
        self.obj: dict[str, Any] = {}
        self.deleted: list[str] = []
        self.registry_reads = 0

    def create_sandbox(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        self.obj = copy.deepcopy(body)
        self.obj["metadata"].update(name="sbx-1", resourceVersion="1")
        self.created_at = time.monotonic()
        return self.obj

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        return self.obj

    def watch_sandboxes(self, namespace: str | None, *, timeout_seconds: float, **_: Any) -> Iterator[dict[str, Any]]:
        end = time.monotonic() + timeout_seconds
        while time.monotonic() < end:
            if self.pick_up_after is not None and time.monotonic() - self.created_at >= self.pick_up_after:
                self.pick_up_after = None
                self.obj = {**self.obj, "status": {"phase": "Ready", "observedGeneration": 1}}
                yield {"type": "MODIFIED", "object": self.obj}
            time.sleep(0.02)

    def operator_registry(self) -> dict[str, str]:
        self.registry_reads += 1
        if self.annotations is None:
            raise errors.SandboxForbidden("customresourcedefinitions is forbidden", reason="Forbidden", status=403)
        return self.annotations

    def get_pod(self, name: str, namespace: str) -> None:
        return None

    def delete_sandbox(self, name: str, namespace: str, **_: Any) -> None:
        self.deleted.append(name)


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manager_module, "PICKUP_GRACE_SECONDS", 0.2)
    monkeypatch.setattr(manager_module, "UNREADABLE_REGISTRY_PATIENCE", 0.6)


def manager(api: FakeApi) -> SandboxManager:
    m = SandboxManager("default", api_client=client.ApiClient(), ready_timeout=5, record_activity=False)
    m.api = api  # type: ignore[assignment]
    return m


def annotations_now(*operators: tuple[str, list[str]]) -> dict[str, str]:
    now = datetime.datetime.now(datetime.UTC)
    return {registry_key("system", name): registry_entry(namespaces, now).annotation_value()
            for name, namespaces in operators}


def test_create_in_a_namespace_nobody_serves_fails_fast_and_deletes_what_it_created(quick: None) -> None:
    api = FakeApi(annotations_now(("demo", ["sandboxes"])))
    started = time.monotonic()
    with pytest.raises(NamespaceNotServed) as info:
        manager(api).create()
    assert time.monotonic() - started < 1.5
    assert info.value.reason == "NoOperator" and info.value.namespace == "default"
    assert info.value.served == ("sandboxes",) and "'default'" in str(info.value) and "sandboxes" in str(info.value)
    assert isinstance(info.value, SandboxNotReady)  # callers catching not-Ready see it too
    assert api.deleted == ["sbx-1"] and api.registry_reads == 1
    assert info.value.to_dict()["servedNamespaces"] == ["sandboxes"]


def test_a_served_namespace_keeps_waiting(quick: None) -> None:
    api = FakeApi(annotations_now(("demo", ["default"])), pick_up_after=0.5)
    sandbox = manager(api).create()
    assert sandbox.phase == "Ready" and api.registry_reads == 1 and api.deleted == []


def test_a_slow_operator_is_not_asked_about_once_it_picked_the_sandbox_up(quick: None) -> None:
    api = FakeApi(annotations_now(), pick_up_after=0.1)
    assert manager(api).create().phase == "Ready"
    assert api.registry_reads == 0


def test_an_unreadable_registry_waits_for_the_patience_then_fails(quick: None) -> None:
    api = FakeApi(None)
    started = time.monotonic()
    with pytest.raises(NamespaceNotServed, match="could not be read") as info:
        manager(api).create()
    assert 0.6 <= time.monotonic() - started < 2
    assert "forbidden" in str(info.value) and api.deleted == ["sbx-1"]


def test_an_unreadable_registry_is_no_error_when_the_operator_comes(quick: None) -> None:
    api = FakeApi(None, pick_up_after=0.4)
    assert manager(api).create().phase == "Ready"


def test_waits_of_one_manager_share_a_registry_reading(quick: None) -> None:
    api = FakeApi(annotations_now(("demo", ["default"])), pick_up_after=0.4)
    m = manager(api)
    assert m.create().phase == "Ready"
    api.pick_up_after = 0.4
    assert m.create().phase == "Ready"
    assert api.registry_reads == 1  # the second slow pick-up reused the first reading


def test_a_cached_reading_that_says_nobody_serves_is_read_again_before_failing(quick: None) -> None:
    api = FakeApi(annotations_now(("demo", ["elsewhere"])))
    m = manager(api)
    with pytest.raises(NamespaceNotServed):
        m.create()
    api.annotations, api.pick_up_after = annotations_now(("demo", ["default"])), 0.4  # an operator came
    assert m.create().phase == "Ready"
    assert api.registry_reads == 2  # the cached "not served" was not trusted

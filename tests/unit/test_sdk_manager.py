"""SandboxManager without a cluster: the objects it sends, and how waiting turns statuses into errors."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.sdk import Progress, SandboxManager, errors
from sandbox_operator.sdk.manager import build_sandbox, build_spec


def test_build_spec_only_sets_what_is_given() -> None:
    assert build_spec() == {}
    spec = build_spec(image="img:1", cpu="500m", memory="1Gi", pids=30, idle_timeout=20, lifetime=600,
                      command_timeout=60, env={"A": "1"}, working_dir="/workspace", pod_labels={"t": "x"},
                      runtime_class_name="gvisor", node_selector={"n": "1"},
                      tolerations=[{"key": "k", "operator": "Exists"}])
    assert spec == {
        "image": "img:1", "env": [{"name": "A", "value": "1"}],
        "resources": {"cpu": "500m", "memory": "1Gi", "pids": 30},
        "timeouts": {"commandSeconds": 60, "idleSeconds": 20, "lifetimeSeconds": 600},
        "workingDir": "/workspace", "podLabels": {"t": "x"}, "runtimeClassName": "gvisor",
        "nodeSelector": {"n": "1"}, "tolerations": [{"key": "k", "operator": "Exists"}],
    }


def test_build_spec_puts_requests_under_resources() -> None:
    assert build_spec(cpu_request="100m") == {"resources": {"requests": {"cpu": "100m"}}}
    spec = build_spec(cpu="1", memory="512Mi", ephemeral_storage="1Gi", cpu_request="1", memory_request="512Mi",
                      ephemeral_storage_request="1Gi")
    assert spec == {"resources": {"cpu": "1", "memory": "512Mi", "ephemeralStorage": "1Gi",
                                  "requests": {"cpu": "1", "memory": "512Mi", "ephemeralStorage": "1Gi"}}}
    merged = build_spec(cpu_request="100m", spec={"resources": {"requests": {"memory": "64Mi"}}})
    assert merged == {"resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}


def test_raw_spec_is_merged_last() -> None:
    spec = build_spec(memory="1Gi", idle_timeout=20, spec={"timeouts": {"lifetimeSeconds": 60},
                                                           "resources": {"memory": "2Gi"}})
    assert spec == {"resources": {"memory": "2Gi"}, "timeouts": {"idleSeconds": 20, "lifetimeSeconds": 60}}


def test_build_sandbox() -> None:
    named = build_sandbox("box", "ns", {"image": "x"}, labels={"team": "a"})
    assert named == {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
                     "metadata": {"namespace": "ns", "name": "box", "labels": {"team": "a"}},
                     "spec": {"image": "x"}}
    generated = build_sandbox(None, "ns", {})
    assert generated["metadata"] == {"namespace": "ns", "generateName": "sbx-"}


def obj(name: str, phase: str | None = None, reason: str | None = None, status: str = "False",
        message: str = "", rv: str = "1") -> dict[str, Any]:
    st: dict[str, Any] = {}
    if phase:
        st["phase"] = phase
    if reason:
        st["conditions"] = [{"type": "Ready", "status": status, "reason": reason, "message": message,
                             "lastTransitionTime": "2026-11-28T01:00:00Z"}]
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv}, "spec": {}, "status": st}


class FakeApi:
    """Plays a scripted sequence of watch events for one sandbox."""

    def __init__(self, first: dict[str, Any], events: list[tuple[str, dict[str, Any]]],
                 pod: dict[str, Any] | None = None) -> None:
        self.first = first
        self.events = events
        self.pod = pod
        self.created: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.watch_calls: list[dict[str, Any]] = []

    def create_sandbox(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        self.created.append(body)
        out = copy.deepcopy(body)
        out["metadata"].setdefault("name", "sbx-abcde")
        out["metadata"]["resourceVersion"] = "0"  # the operator's writes come after the create
        return out

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        if name in self.deleted:
            raise errors.SandboxNotFound("gone", reason="NotFound")
        return self.first

    def watch_sandboxes(self, namespace: str | None, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.watch_calls.append(kwargs)
        if kwargs.get("resource_version") == "0" and self.first.get("status"):
            # Watching from the create's answer: the server first delivers the version the operator wrote.
            name = (kwargs.get("known") or [{}])[0].get("metadata", {}).get("name")
            current = copy.deepcopy(self.first)
            current["metadata"]["name"] = name or current["metadata"]["name"]
            yield {"type": "MODIFIED", "object": current}
        while self.events:
            etype, o = self.events.pop(0)
            yield {"type": etype, "object": o}

    def get_pod(self, name: str, namespace: str) -> dict[str, Any] | None:
        return self.pod

    def delete_sandbox(self, name: str, namespace: str, **kwargs: Any) -> None:
        self.deleted.append(name)

    def patch_sandbox(self, name: str, namespace: str, patch: dict[str, Any]) -> dict[str, Any]:
        return {}


def manager(api: FakeApi) -> SandboxManager:
    m = SandboxManager("ns", api_client=client.ApiClient(), ready_timeout=2)
    m.api = api  # type: ignore[assignment]
    m.activity.api = api  # type: ignore[assignment]
    return m


def test_create_waits_for_ready_and_reports_progress() -> None:
    api = FakeApi(obj("sbx-abcde"), [("MODIFIED", obj("sbx-abcde", "Pending", "PodPending")),
                                     ("MODIFIED", obj("sbx-abcde", "Ready", "PodReady", "True", rv="3"))])
    seen: list[Progress] = []
    sandbox = manager(api).create(memory="1Gi", idle_timeout=30, on_progress=seen.append)
    assert sandbox.name == "sbx-abcde" and sandbox.phase == "Ready"
    assert api.created[0]["metadata"]["generateName"] == "sbx-"
    assert api.created[0]["spec"] == {"resources": {"memory": "1Gi"}, "timeouts": {"idleSeconds": 30}}
    assert [p.phase for p in seen] == [None, "Pending", "Ready"]
    # The watch starts from the create's answer: no read in between.
    assert api.watch_calls[0]["name"] == "sbx-abcde" and api.watch_calls[0]["resource_version"] == "0"


def test_fatal_reason_fails_fast_and_deletes() -> None:
    api = FakeApi(obj("box"), [("MODIFIED", obj("box", "Pending", "ImageMissing",
                                                message="image localhost/nope:1 is not on the node"))])
    with pytest.raises(errors.SandboxFailed) as info:
        manager(api).create("box", image="localhost/nope:1")
    err = info.value
    assert err.reason == "ImageMissing" and err.phase == "Pending" and "localhost/nope:1" in str(err)
    assert api.deleted == ["box"]


def test_failed_phase() -> None:
    api = FakeApi(obj("box", "Failed", "InvalidSpec", message="cpu 100 is above the maximum 4"), [])
    with pytest.raises(errors.SandboxFailed, match="above the maximum"):
        manager(api).create("box", delete_on_failure=False)
    assert api.deleted == []


def test_timeout_reports_why_with_pod_detail() -> None:
    pending = obj("box", "Pending", "PodPending", message="waiting for the pod")
    pod = {"status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                      "message": "0/1 nodes are available: 1 Insufficient memory."}]}}
    api = FakeApi(pending, [], pod=pod)
    with pytest.raises(errors.SandboxNotReady) as info:
        manager(api).wait_ready("box", timeout=1)
    assert not isinstance(info.value, errors.SandboxFailed)
    assert info.value.reason == "Unschedulable" and "Insufficient memory" in str(info.value)


def test_deleted_while_waiting() -> None:
    api = FakeApi(obj("box", "Pending"), [("DELETED", obj("box", "Terminating"))])
    with pytest.raises(errors.SandboxNotFound, match="deleted while waiting"):
        manager(api).wait_ready("box", timeout=5)


def test_already_ready_needs_no_watch() -> None:
    api = FakeApi(obj("box", "Ready", "PodReady", "True"), [])
    assert manager(api).wait_ready("box")["status"]["phase"] == "Ready"
    assert api.watch_calls == []


def test_delete_missing_ok() -> None:
    class Missing(FakeApi):
        def delete_sandbox(self, name: str, namespace: str, **kwargs: Any) -> None:
            raise errors.SandboxNotFound("nope", reason="NotFound")

    m = manager(Missing(obj("x"), []))
    m.delete("x", missing_ok=True)
    with pytest.raises(errors.SandboxNotFound):
        m.delete("x")
    m.destroy_session("x")  # the session API's destroy never fails on an already-gone session


def test_default_namespace_and_labels() -> None:
    api = FakeApi(obj("sbx-abcde", "Ready", "PodReady", "True"), [])
    m = manager(api)
    m.default_labels = {"owner": "agent-7"}
    assert m.create_session(labels={"task": "t1"}) == "sbx-abcde"
    assert api.created[0]["metadata"]["labels"] == {"owner": "agent-7", "task": "t1"}
    assert api.created[0]["metadata"]["namespace"] == "ns"

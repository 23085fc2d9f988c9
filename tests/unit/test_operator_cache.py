"""The operator's memory of the latest Sandbox and pod versions it has seen."""

from __future__ import annotations

from typing import Any

from sandbox_operator.handlers.runtime import Runtime
from sandbox_operator.k8s.api import KubeApi
from sandbox_operator.settings import OperatorSettings


def make_runtime() -> Runtime:
    return Runtime(settings=OperatorSettings(), api=KubeApi.__new__(KubeApi))


def body(version: str, *, uid: str = "uid-a", phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "a", "uid": uid, "resourceVersion": version},
            "status": {"phase": phase} if phase else {}}


def test_an_older_version_never_replaces_a_newer_one() -> None:
    rt = make_runtime()
    rt.remember(body("12", phase="Ready"))
    rt.remember(body("11", phase="Pending"))  # a watch event that arrives after our own write's response
    assert rt.latest(("ns", "a")) == body("12", phase="Ready")
    rt.remember(body("13", phase="Failed"))
    assert (rt.latest(("ns", "a")) or {})["status"] == {"phase": "Failed"}


def test_a_new_sandbox_of_the_same_name_replaces_the_old_one_whatever_its_version() -> None:
    rt = make_runtime()
    rt.remember(body("50", uid="uid-old"))
    rt.remember(body("7", uid="uid-new"))
    assert (rt.latest(("ns", "a")) or {})["metadata"]["uid"] == "uid-new"


def test_forgetting_drops_the_sandbox_its_pod_and_its_children_mark() -> None:
    rt = make_runtime()
    rt.remember(body("1"))
    rt.remember_pod(("ns", "a"), {"metadata": {"uid": "pod-1", "resourceVersion": "3"}})
    rt.note_children_made(("ns", "a"), "uid-a")
    assert rt.children_made(("ns", "a"), "uid-a") and not rt.children_made(("ns", "a"), "uid-other")
    rt.forget(("ns", "a"))
    assert rt.latest(("ns", "a")) is None and rt.latest_pod(("ns", "a")) is None
    assert not rt.children_made(("ns", "a"), "uid-a")


def test_a_pod_seen_gone_is_forgotten() -> None:
    rt = make_runtime()
    rt.remember_pod(("ns", "a"), {"metadata": {"uid": "pod-1", "resourceVersion": "3"}})
    rt.remember_pod(("ns", "a"), None)
    assert rt.latest_pod(("ns", "a")) is None

"""Per-sandbox host UIDs: the pool, the pod index, and the create path that uses them (with a fake API)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, cast

import kopf
import pytest

from sandbox_operator import constants
from sandbox_operator.handlers import reconcile
from sandbox_operator.handlers.children import sandbox_pod_uids
from sandbox_operator.handlers.uids import Key, UidPool, UidRangeExhausted, pod_run_as_users
from tests.unit.fake_kube import JSON, NS, World, make_world, sandbox_body, timestamp

FIRST = constants.SANDBOX_UID_RANGE_FIRST


def test_lowest_free_uid_skips_pods_and_reservations() -> None:
    pool = UidPool(range(FIRST, FIRST + 10))
    index: dict[int, list[Key]] = {FIRST: [("ns", "old")], FIRST + 2: [("ns", "older")]}
    assert pool.allocate(("ns", "a"), index) == FIRST + 1
    assert pool.allocate(("ns", "b"), index) == FIRST + 3
    assert pool.allocate(("ns", "a"), index) == FIRST + 1, "a Sandbox keeps its reservation across retries"
    pool.release(("ns", "a"))
    assert pool.allocate(("ns", "c"), index) == FIRST + 1


def test_a_rerun_keeps_the_uid_of_the_existing_pod() -> None:
    pool = UidPool(range(FIRST, FIRST + 10))
    index: dict[int, list[Key]] = {FIRST + 5: [("ns", "a")], FIRST: [("ns", "b")]}
    assert pool.allocate(("ns", "a"), index) == FIRST + 5, "the index shows the pod made before a restart"
    pool.adopt(("ns", "c"), FIRST + 1)
    assert pool.allocate(("ns", "c"), {}) == FIRST + 1
    assert pool.reserved() == {("ns", "a"): FIRST + 5, ("ns", "c"): FIRST + 1}


def test_uids_outside_the_range_are_not_adopted() -> None:
    pool = UidPool(range(FIRST, FIRST + 10))
    assert pool.allocate(("ns", "a"), {constants.SANDBOX_UID: [("ns", "a")]}) == FIRST


def test_an_exhausted_range_says_so() -> None:
    pool = UidPool(range(FIRST, FIRST + 2))
    pool.allocate(("ns", "a"), {})
    with pytest.raises(UidRangeExhausted, match=f"SANDBOX_OPERATOR_SANDBOX_UID_RANGE \\({FIRST}-{FIRST + 1}\\)"):
        pool.allocate(("ns", "b"), {FIRST + 1: [("ns", "z")]})


def test_concurrent_allocations_never_share_a_uid() -> None:
    pool = UidPool(range(FIRST, FIRST + 1000))
    index: dict[int, list[Key]] = {FIRST + n: [("ns", f"pod-{n}")] for n in range(0, 200, 3)}
    barrier = threading.Barrier(16)
    picked: dict[Key, int] = {}
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(20):
            key = ("ns", f"sbx-{n}-{i}")
            uid = pool.allocate(key, index)
            with lock:
                picked[key] = uid

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(picked) == 320 and len(set(picked.values())) == 320
    assert not set(picked.values()) & set(index)


def test_the_index_records_every_uid_a_pod_runs_as() -> None:
    pod = {"metadata": {"namespace": "ns", "name": "a", "labels": {constants.LABEL_SANDBOX: "a"}},
           "spec": {"securityContext": {"runAsUser": FIRST},
                    "containers": [{"name": "sandbox", "securityContext": {"runAsUser": FIRST + 1}}]}}
    assert pod_run_as_users(pod) == {FIRST, FIRST + 1}
    assert cast(Any, sandbox_pod_uids)(body=pod) == {FIRST: ("ns", "a"), FIRST + 1: ("ns", "a")}
    assert pod_run_as_users({"spec": {}}) == set()


# --------------------------------------------------------------------------------------------------------------
# The create path, against the fake API server of tests/unit/fake_kube.py.


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(monkeypatch)


def run_user(pod: JSON | None) -> int:
    assert pod is not None
    uids = pod_run_as_users(pod)
    assert len(uids) == 1
    return uids.pop()


def test_concurrent_creates_get_distinct_uids(world: World) -> None:
    names = [f"sbx-{n}" for n in range(12)]
    for name in names:
        world.cluster.add(constants.KIND, sandbox_body(name))
    index: dict[int, list[Key]] = {FIRST: [("ns", "someone-else")]}

    async def main() -> None:
        await asyncio.gather(*(world.create(name, index) for name in names))

    asyncio.run(main())
    uids = [run_user(world.cluster.get("Pod", NS, name)) for name in names]
    assert sorted(uids) == list(range(FIRST + 1, FIRST + 13))
    pod = world.cluster.get("Pod", NS, "sbx-0")
    assert pod is not None
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env[constants.ENV_PIDS_LIMIT] == "20"


def test_a_rerun_adopts_the_pods_uid(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a", uid="uid-a"))
    existing = world.cluster.add("Pod", {
        "metadata": {"name": "a", "namespace": NS, "ownerReferences": [
            {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": "a", "uid": "uid-a",
             "controller": True}]},
        "spec": {"securityContext": {"runAsUser": FIRST + 42}}, "status": {"phase": "Pending"}})
    # The restarted operator's index does not show the pod yet: a fresh UID is picked, then the pod's adopted.
    asyncio.run(world.create("a"))
    assert world.runtime.uids.reserved() == {("ns", "a"): FIRST + 42}
    assert world.status("a")["podUID"] == existing["metadata"]["uid"]


def test_user_namespaces_keep_the_images_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch, user_namespaces=True)
    world.cluster.add(constants.KIND, sandbox_body("a"))
    asyncio.run(world.create("a"))
    assert run_user(world.cluster.get("Pod", NS, "a")) == constants.SANDBOX_UID
    assert world.runtime.uids.reserved() == {}


def test_an_exhausted_range_leaves_the_sandbox_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch, sandbox_uid_range=f"{FIRST}-{FIRST}")
    world.cluster.add(constants.KIND, sandbox_body("a"))
    with pytest.raises(kopf.TemporaryError, match="SANDBOX_UID_RANGE"):
        asyncio.run(world.create("a", {FIRST: [("ns", "b")]}))
    status = world.status("a")
    assert (status["phase"], status["reason"]) == ("Pending", "UidRangeExhausted")
    assert world.cluster.names("Pod") == []


def test_placement_outside_the_allow_lists_fails_without_a_pod(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a", spec={
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}))
    with pytest.raises(kopf.PermanentError):
        asyncio.run(world.create("a"))
    status = world.status("a")
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert status["message"] == ('spec.tolerations[0].key "node-role.kubernetes.io/control-plane" is not allowed '
                                 "(allowed toleration keys: none; SANDBOX_OPERATOR_ALLOWED_TOLERATION_KEYS)")
    assert world.cluster.names("Pod") == [] and world.runtime.uids.reserved() == {}
    assert [(t, r) for t, r, _ in world.events] == [("Warning", "InvalidSpec")]


def test_an_eviction_the_pod_does_not_tell_is_read_from_the_kubelets_event(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))
    asyncio.run(world.create("a"))
    pod = world.cluster.get("Pod", NS, "a")
    assert pod is not None
    pod["status"] = {"phase": "Succeeded", "containerStatuses": [
        {"name": constants.CONTAINER_NAME, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}
    message = "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi."
    world.cluster.events.append({"metadata": {"namespace": NS, "name": "a.evicted"}, "reason": "Evicted",
                                 "involvedObject": {"uid": pod["metadata"]["uid"]}, "message": message,
                                 "lastTimestamp": timestamp()})
    asyncio.run(reconcile.sync_status(world.runtime, NS, "a", pod_body=pod))
    status = world.status("a")
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", "Evicted", message)
    assert world.events[-1][:2] == ("Warning", "Evicted") and message in world.events[-1][2]

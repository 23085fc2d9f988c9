"""Per-sandbox host UIDs: the pool, the pod index, and the create path that uses them (with a fake API)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, cast

import kopf
import pytest
from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.handlers import reconcile, sandbox
from sandbox_operator.handlers.children import sandbox_pod_uids
from sandbox_operator.handlers.runtime import Runtime
from sandbox_operator.handlers.uids import Key, UidPool, UidRangeExhausted, pod_run_as_users
from sandbox_operator.k8s.api import JSON, Adoption, ChildResult, KubeApi
from sandbox_operator.settings import OperatorSettings

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
# The create path, with a fake API.


class FakeApi:
    def __init__(self) -> None:
        self.sandboxes: dict[Key, JSON] = {}
        self.pods: dict[Key, JSON] = {}
        self.events: dict[tuple[str, str], str] = {}

    def get_sandbox(self, namespace: str, name: str) -> JSON | None:
        return self.sandboxes.get((namespace, name))

    def patch_sandbox_status(self, namespace: str, name: str, patch: dict[str, Any]) -> JSON | None:
        body = self.sandboxes[(namespace, name)]
        status = {**(body.get("status") or {}), **patch}
        body["status"] = {k: v for k, v in status.items() if v is not None}
        return body

    def get_pod(self, namespace: str, name: str) -> JSON | None:
        return self.pods.get((namespace, name))

    def create_network_policy(self, policy: Any, owner_uid: str) -> ChildResult:
        return ChildResult(Adoption.CREATED, {})

    def create_pod(self, pod: Any, owner_uid: str) -> ChildResult:
        body = _json(pod)
        key = (pod.metadata.namespace, pod.metadata.name)
        if key in self.pods:
            return ChildResult(Adoption.EXISTING, self.pods[key])
        body["metadata"]["uid"] = f"pod-{pod.metadata.name}"
        body["status"] = {"phase": "Pending"}
        self.pods[key] = body
        return ChildResult(Adoption.CREATED, body)

    def delete_pod(self, namespace: str, name: str, uid: str | None, grace_seconds: int) -> None:
        self.pods.pop((namespace, name), None)

    def pod_event_message(self, namespace: str, pod_uid: str, reason: str) -> str | None:
        return self.events.get((pod_uid, reason))


def _json(obj: Any) -> JSON:
    data: JSON = client.ApiClient().sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
    return data


def sandbox_body(name: str) -> JSON:
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {}}


class Memo:
    runtime: Runtime


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    posted: list[tuple[str, str, str]] = []
    monkeypatch.setattr(reconcile, "post_event", lambda body, type_, reason, message: posted.append(
        (type_, reason, message)))
    return posted


def make(settings: OperatorSettings) -> tuple[FakeApi, Memo]:
    api = FakeApi()
    memo = Memo()
    memo.runtime = Runtime(settings=settings, api=cast(KubeApi, api))
    return api, memo


def run_user(pod: JSON) -> int:
    uids = pod_run_as_users(pod)
    assert len(uids) == 1
    return uids.pop()


LOGGER = cast(kopf.Logger, logging.getLogger("test"))


def ensure(memo: Memo, body: JSON, index: dict[int, list[Key]]) -> Any:
    return sandbox.ensure_sandbox(cast(kopf.Body, body), cast(kopf.Memo, memo), LOGGER, index)


def test_concurrent_creates_get_distinct_uids(events: list[tuple[str, str, str]]) -> None:
    api, memo = make(OperatorSettings())
    names = [f"sbx-{n}" for n in range(12)]
    for name in names:
        api.sandboxes[("ns", name)] = sandbox_body(name)
    index: dict[int, list[Key]] = {FIRST: [("ns", "someone-else")]}

    async def main() -> None:
        await asyncio.gather(*(ensure(memo, api.sandboxes[("ns", name)], index) for name in names))

    asyncio.run(main())
    uids = [run_user(api.pods[("ns", name)]) for name in names]
    assert sorted(uids) == list(range(FIRST + 1, FIRST + 13))
    env = {e["name"]: e.get("value") for e in api.pods[("ns", "sbx-0")]["spec"]["containers"][0]["env"]}
    assert env[constants.ENV_PIDS_LIMIT] == "20"


def test_a_rerun_adopts_the_pods_uid(events: list[tuple[str, str, str]]) -> None:
    api, memo = make(OperatorSettings())
    api.sandboxes[("ns", "a")] = sandbox_body("a")
    existing = {"metadata": {"name": "a", "namespace": "ns", "uid": "pod-a",
                             "ownerReferences": [{"uid": "uid-a", "controller": True}]},
                "spec": {"securityContext": {"runAsUser": FIRST + 42}}, "status": {"phase": "Pending"}}
    api.pods[("ns", "a")] = existing
    # The restarted operator's index does not show the pod yet: a fresh UID is picked, then the pod's adopted.
    asyncio.run(ensure(memo, api.sandboxes[("ns", "a")], {}))
    assert memo.runtime.uids.reserved() == {("ns", "a"): FIRST + 42}
    assert api.sandboxes[("ns", "a")]["status"]["podUID"] == "pod-a"


def test_user_namespaces_keep_the_images_uid(events: list[tuple[str, str, str]]) -> None:
    api, memo = make(OperatorSettings(user_namespaces=True))
    api.sandboxes[("ns", "a")] = sandbox_body("a")
    asyncio.run(ensure(memo, api.sandboxes[("ns", "a")], {}))
    assert run_user(api.pods[("ns", "a")]) == constants.SANDBOX_UID
    assert memo.runtime.uids.reserved() == {}


def test_an_exhausted_range_leaves_the_sandbox_pending(events: list[tuple[str, str, str]]) -> None:
    api, memo = make(OperatorSettings(sandbox_uid_range=f"{FIRST}-{FIRST}"))
    api.sandboxes[("ns", "a")] = sandbox_body("a")
    with pytest.raises(kopf.TemporaryError, match="SANDBOX_UID_RANGE"):
        asyncio.run(ensure(memo, api.sandboxes[("ns", "a")], {FIRST: [("ns", "b")]}))
    status = api.sandboxes[("ns", "a")]["status"]
    assert (status["phase"], status["reason"]) == ("Pending", "UidRangeExhausted")
    assert ("ns", "a") not in api.pods


def test_placement_outside_the_allow_lists_fails_without_a_pod(events: list[tuple[str, str, str]]) -> None:
    api, memo = make(OperatorSettings())
    body = sandbox_body("a")
    body["spec"] = {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}
    api.sandboxes[("ns", "a")] = body
    with pytest.raises(kopf.PermanentError):
        asyncio.run(ensure(memo, body, {}))
    status = api.sandboxes[("ns", "a")]["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert status["message"] == ('spec.tolerations[0].key "node-role.kubernetes.io/control-plane" is not allowed '
                                 "(allowed toleration keys: none; SANDBOX_OPERATOR_ALLOWED_TOLERATION_KEYS)")
    assert not api.pods and memo.runtime.uids.reserved() == {}
    assert [(t, r) for t, r, _ in events] == [("Warning", "InvalidSpec")]


def test_an_eviction_the_pod_does_not_tell_is_read_from_the_kubelets_event(
        events: list[tuple[str, str, str]]) -> None:
    api, memo = make(OperatorSettings())
    api.sandboxes[("ns", "a")] = sandbox_body("a")
    asyncio.run(ensure(memo, api.sandboxes[("ns", "a")], {}))
    pod = api.pods[("ns", "a")]
    pod["status"] = {"phase": "Succeeded", "containerStatuses": [
        {"name": constants.CONTAINER_NAME, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}}]}
    message = "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi."
    api.events[("pod-a", "Evicted")] = message
    asyncio.run(reconcile.sync_status(memo.runtime, "ns", "a", pod_body=pod))
    status = api.sandboxes[("ns", "a")]["status"]
    assert (status["phase"], status["reason"], status["message"]) == ("Failed", "Evicted", message)
    assert events[-1][:2] == ("Warning", "Evicted") and message in events[-1][2]

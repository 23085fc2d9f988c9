"""The kopf handlers, called as kopf calls them, against an in-memory API server (tests/unit/fake_kube.py).

Each scenario checks what the handler wrote and in which order, that a conflict (409) converges on exactly one
pod and one NetworkPolicy, that something gone (404) is not an error, and that running a handler again writes
nothing new. The cluster tests then only have to show that the real API server agrees.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable

import kopf
import pytest

from sandbox_operator import constants
from sandbox_operator.handlers import children, sandbox
from sandbox_operator.handlers.runtime import Runtime
from tests.unit.fake_kube import JSON, LOGGER, NS, World, handler, make_world, sandbox_body, timestamp

POD = constants.pod_name("a")
POLICY = constants.network_policy_name("a")
update_fn, delete_fn = handler(sandbox.update_fn), handler(sandbox.delete_fn)
pod_event, policy_event = handler(children.pod_event), handler(children.policy_event)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    return make_world(monkeypatch)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    asyncio.run(main())


# --- create ---------------------------------------------------------------------------------------------------

def test_create_makes_the_policy_then_the_pod_then_the_status(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))
    run(world.create)
    assert world.cluster.writes() == [("create_namespaced_network_policy", POLICY), ("create_namespaced_pod", POD),
                                      ("patch_namespaced_custom_object_status", "a")]
    sandbox_uid = world.sandbox()["metadata"]["uid"]
    pod, policy = world.cluster.get("Pod", NS, POD), world.cluster.get("NetworkPolicy", NS, POLICY)
    assert pod is not None and policy is not None
    for child in (pod, policy):
        [ref] = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == (constants.KIND, sandbox_uid, True)
    status = world.status()
    assert (status["phase"], status["reason"], status["podName"], status["podUID"]) == (
        "Pending", "PodPending", POD, pod["metadata"]["uid"])
    assert [(event_type, reason) for event_type, reason, _ in world.events] == [("Normal", "PodPending")]


def test_under_a_kernel_boundary_runtime_user_namespaces_still_give_each_sandbox_a_host_uid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # gVisor pods keep the host's users (no hostUsers: false), so the UID the pod runs as is the host's: it must
    # come from the range, one per sandbox, or every gVisor sandbox would share UID 1000 and its RLIMIT_NPROC.
    world = make_world(monkeypatch, user_namespaces=True, allowed_runtime_classes=["gvisor"])
    for name in ("a", "b"):
        world.cluster.add(constants.KIND, sandbox_body(name, spec={"runtimeClassName": "gvisor"}))
    run(lambda: world.create("a"))
    run(lambda: world.create("b"))
    pods = [world.cluster.get("Pod", NS, constants.pod_name(name)) for name in ("a", "b")]
    uids = {pod["spec"]["securityContext"]["runAsUser"] for pod in pods if pod is not None}
    assert len(uids) == 2 and constants.SANDBOX_UID not in uids
    assert all(pod is not None and "hostUsers" not in pod["spec"] for pod in pods)


def test_a_second_create_run_writes_nothing_new(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        await world.create()
        before, events = world.snapshot(), list(world.events)
        calls = len(world.cluster.calls)
        await world.create()  # kopf re-runs a handler after an error
        assert world.snapshot() == before
        assert world.events == events
        # The same process made both children and knows the status it wrote: nothing is sent again.
        assert world.writes_after(calls) == []

        # After a restart (resume runs for every Sandbox) the process knows nothing: only the policy's create is
        # sent again (it answers 409 and the policy is adopted); a recorded pod is never created again, and an
        # unchanged status is not written.
        world.memo.runtime = Runtime(settings=world.runtime.settings, api=world.runtime.api)
        calls = len(world.cluster.calls)
        await world.create()
        assert world.snapshot() == before
        assert world.events == events
        assert world.writes_after(calls) == ["create_namespaced_network_policy"]

    run(scenario)


def test_the_first_event_makes_the_children_and_the_create_handler_only_the_status(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        await handler(sandbox.sandbox_event)(type="ADDED", body=world.body(), memo=world.memo, logger=LOGGER,
                                             sandbox_pod_uids={})
        # No status write at the first event: kopf's finalizer patch follows at once and is conditional on it.
        assert world.cluster.writes() == [("create_namespaced_network_policy", POLICY),
                                          ("create_namespaced_pod", POD)]
        calls = len(world.cluster.calls)
        await world.create()
        assert world.writes_after(calls) == ["patch_namespaced_custom_object_status"]
        assert world.status()["podUID"] == world.cluster.get("Pod", NS, POD)["metadata"]["uid"]
        # Reads: none. The Sandbox comes with the event, the pod from its create.
        assert [call.method for call in world.cluster.calls[calls:] if not call.is_write] == []

    run(scenario)


def test_a_rerun_after_a_crash_before_the_status_adopts_the_pod(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        world.cluster.fail_next("patch_namespaced_custom_object_status", 500, "InternalError", "etcd timeout")
        with pytest.raises(Exception, match="Internal"):
            await world.create()
        [pod] = [b for (kind, _ns, _n), b in world.cluster.objects.items() if kind == "Pod"]
        assert "podUID" not in world.status()
        await world.create()  # the body has no status yet: the pod is created again, meets 409, is adopted
        assert world.cluster.names("Pod") == [POD] and world.cluster.names("NetworkPolicy") == [POLICY]
        assert world.status()["podUID"] == pod["metadata"]["uid"]

    run(scenario)


def test_a_foreign_object_with_the_pods_name_fails_the_sandbox_and_stays(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))
    foreign = world.cluster.add("Pod", {"metadata": {"name": POD, "namespace": NS}})
    with pytest.raises(kopf.PermanentError, match="NameConflict"):
        run(world.create)
    status = world.status()
    assert (status["phase"], status["reason"]) == ("Failed", "NameConflict")
    assert f"a Pod named {POD} already exists" in status["message"]
    assert world.cluster.get("Pod", NS, POD) == foreign, "someone else's pod is left alone"
    assert ("Warning", "NameConflict") in [(t, r) for t, r, _ in world.events]


@pytest.mark.parametrize("leftover", ["namesake's pod", "vanished"])
def test_a_pod_of_an_earlier_namesake_is_waited_for(world: World, leftover: str) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))
    if leftover == "vanished":  # deleted between the 409 and the read that follows it
        world.cluster.fail_next("create_namespaced_pod", 409, "AlreadyExists", "pods already exists")
    else:
        world.cluster.add("Pod", {"metadata": {"name": POD, "namespace": NS, "ownerReferences": [
            {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": "a", "uid": "earlier-uid",
             "controller": True}]}})
    with pytest.raises(kopf.TemporaryError, match="earlier Sandbox of this name"):
        run(world.create)
    assert world.status().get("phase") != "Failed"


@pytest.mark.parametrize(("status", "reason"), [(403, "AdmissionRejected"), (422, "InvalidSpec")])
def test_a_pod_the_api_server_refuses_fails_the_sandbox_once(world: World, status: int, reason: str) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))
    message = 'pods "a" is forbidden: exceeded quota: no-pods'
    world.cluster.fail_next("create_namespaced_pod", status, "Forbidden", message)
    with pytest.raises(kopf.PermanentError, match=reason):  # permanent: kopf does not retry
        run(world.create)
    got = world.status()
    assert (got["phase"], got["reason"]) == ("Failed", reason) and message in got["message"]
    assert world.cluster.names("Pod") == []
    assert world.reasons() == [reason]


def test_an_invalid_spec_fails_without_children(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a", spec={"image": "elsewhere.example/evil:1"}))
    with pytest.raises(kopf.PermanentError, match="InvalidSpec"):
        run(world.create)
    assert world.cluster.names("Pod") == [] and world.cluster.names("NetworkPolicy") == []
    assert (world.status()["phase"], world.status()["reason"]) == ("Failed", "InvalidSpec")


def test_create_leaves_a_deleting_sandbox_alone(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a", deletionTimestamp=timestamp()))
    run(world.create)
    assert world.cluster.writes() == []


# --- the pod's state ------------------------------------------------------------------------------------------

def test_pod_events_bring_the_sandbox_to_ready_once(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        await world.create()
        pod = world.cluster.run_pod(NS, POD)
        await pod_event(type="MODIFIED", body=copy.deepcopy(pod), memo=world.memo, logger=LOGGER)
        status = world.status()
        assert (status["phase"], status["nodeName"], status["podIP"]) == ("Ready", "node-1", "10.244.0.7")
        assert world.reasons() == ["PodPending", "PodReady"]
        calls = len(world.cluster.calls)
        await pod_event(type="MODIFIED", body=copy.deepcopy(pod), memo=world.memo, logger=LOGGER)
        assert world.writes_after(calls) == [] and world.reasons() == ["PodPending", "PodReady"]

    run(scenario)


def test_a_pod_deleted_out_of_band_fails_the_sandbox_and_is_not_replaced(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        await world.create()
        pod = world.cluster.run_pod(NS, POD)
        world.cluster.finish_deleting("Pod", NS, POD)
        await pod_event(type="DELETED", body=copy.deepcopy(pod), memo=world.memo, logger=LOGGER)
        assert (world.status()["phase"], world.status()["reason"]) == ("Failed", "PodDeleted")
        await world.create()  # a resume after a restart
        assert world.cluster.names("Pod") == []

    run(scenario)


def test_a_pod_event_for_a_sandbox_that_is_gone_writes_nothing(world: World) -> None:
    pod = world.cluster.add("Pod", {"metadata": {"name": POD, "namespace": NS,
                                                 "labels": {constants.LABEL_SANDBOX: "a"}}})
    run(lambda: pod_event(type="MODIFIED", body=copy.deepcopy(pod), memo=world.memo, logger=LOGGER))
    assert world.cluster.writes() == [] and world.events == []


# --- the NetworkPolicy guard ----------------------------------------------------------------------------------

async def policy_deleted_out_of_band(world: World) -> JSON:
    """A created Sandbox whose NetworkPolicy someone deleted; returns the policy as the DELETED event has it."""
    world.cluster.add(constants.KIND, sandbox_body("a"))
    await world.create()
    policy = copy.deepcopy(world.cluster.get("NetworkPolicy", NS, POLICY))
    assert policy is not None
    world.cluster.finish_deleting("NetworkPolicy", NS, POLICY)
    return policy


def test_a_policy_deleted_out_of_band_is_recreated_once(world: World) -> None:
    async def scenario() -> None:
        policy = await policy_deleted_out_of_band(world)
        await policy_event(type="DELETED", body=policy, memo=world.memo, logger=LOGGER)
        recreated = world.cluster.get("NetworkPolicy", NS, POLICY)
        assert recreated is not None and recreated["metadata"]["uid"] != policy["metadata"]["uid"]
        assert "NetworkPolicyRecreated" in world.reasons()
        before, events, calls = world.snapshot(), list(world.events), len(world.cluster.calls)
        await policy_event(type="DELETED", body=policy, memo=world.memo, logger=LOGGER)  # a late repeat
        assert world.snapshot() == before and world.events == events
        assert world.writes_after(calls) == ["create_namespaced_network_policy"]  # 409: the new one is adopted

    run(scenario)


def test_a_policy_of_a_deleting_or_another_sandbox_is_not_recreated(world: World) -> None:
    async def scenario() -> None:
        policy = await policy_deleted_out_of_band(world)
        namesakes = copy.deepcopy(policy)
        namesakes["metadata"]["ownerReferences"][0]["uid"] = "earlier-uid"
        await policy_event(type="DELETED", body=namesakes, memo=world.memo, logger=LOGGER)
        world.sandbox()["metadata"]["deletionTimestamp"] = timestamp()
        await policy_event(type="DELETED", body=policy, memo=world.memo, logger=LOGGER)
        assert world.cluster.names("NetworkPolicy") == []

    run(scenario)


# --- update ---------------------------------------------------------------------------------------------------

def test_an_update_patches_the_pods_labels_and_lowers_its_deadline(world: World) -> None:
    old_spec = {"podLabels": {"team": "a", "old": "x"}, "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 1200}}
    world.cluster.add(constants.KIND, sandbox_body("a", spec=old_spec))

    async def scenario() -> None:
        await world.create()
        world.cluster.run_pod(NS, POD)
        new_spec = {"podLabels": {"team": "b"}, "timeouts": {"idleSeconds": 600, "lifetimeSeconds": 900}}
        updated = world.sandbox()
        updated["spec"] = new_spec
        updated["metadata"]["generation"] = 2
        deadline_before = world.cluster.get("Pod", NS, POD)["spec"]["activeDeadlineSeconds"]  # type: ignore[index]
        await update_fn(body=world.body(), old=old_spec, new=new_spec, memo=world.memo, logger=LOGGER)
        pod = world.cluster.get("Pod", NS, POD)
        assert pod is not None
        assert pod["metadata"]["labels"]["team"] == "b" and "old" not in pod["metadata"]["labels"]
        assert pod["metadata"]["labels"][constants.LABEL_SANDBOX] == "a"
        assert pod["spec"]["activeDeadlineSeconds"] <= deadline_before - 300
        assert world.status()["observedGeneration"] == 2
        before = world.snapshot()
        await update_fn(body=world.body(), old=old_spec, new=new_spec, memo=world.memo, logger=LOGGER)
        assert world.snapshot() == before, "the same update again changes nothing"

    run(scenario)


# --- delete ---------------------------------------------------------------------------------------------------

def test_delete_removes_the_pod_before_the_policy_and_a_second_run_is_harmless(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        await world.create()
        loop = asyncio.get_running_loop()
        # The pod watch tells the delete handler that the pod is gone.
        def pod_deleted(namespace: str, _name: str) -> None:
            loop.call_soon_threadsafe(world.runtime.notify_pod_gone, (namespace, "a"))

        world.cluster.on_pod_deleted = pod_deleted
        pod_uid = world.status()["podUID"]
        calls = len(world.cluster.calls)
        await delete_fn(body=world.body(), memo=world.memo, logger=LOGGER)
        deletes = [c for c in world.cluster.calls[calls:] if c.method.startswith("delete")]
        assert [c.method for c in deletes] == ["delete_namespaced_pod", "delete_namespaced_network_policy"]
        options = deletes[0].kwargs["body"]
        assert (options.preconditions.uid, options.grace_period_seconds) == (pod_uid, 5)
        assert world.cluster.names("Pod") == [] and world.cluster.names("NetworkPolicy") == []
        await delete_fn(body=world.body(), memo=world.memo, logger=LOGGER)  # nothing left: no error

    run(scenario)


def test_delete_waits_for_a_pod_that_is_still_terminating(monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch, termination_grace_seconds=0)
    monkeypatch.setattr(sandbox, "POD_WAIT_SLACK", 0.1)  # no watch here to say the pod is gone
    world.cluster.pods_linger = True
    world.cluster.add(constants.KIND, sandbox_body("a"))

    async def scenario() -> None:
        await world.create()
        world.cluster.get("Pod", NS, POD)["metadata"]["deletionTimestamp"] = timestamp()  # type: ignore[index]
        with pytest.raises(kopf.TemporaryError, match="still terminating"):
            await delete_fn(body=world.body(), memo=world.memo, logger=LOGGER)
        assert world.cluster.names("NetworkPolicy") == [POLICY], "the policy outlives the pod"
        assert not [c for c in world.cluster.calls if c.method == "delete_namespaced_pod"], "already deleting"
        world.cluster.finish_deleting("Pod", NS, POD)
        await delete_fn(body=world.body(), memo=world.memo, logger=LOGGER)
        assert world.cluster.names("NetworkPolicy") == []

    run(scenario)


def test_delete_leaves_a_pod_of_another_sandbox_alone(world: World) -> None:
    world.cluster.add(constants.KIND, sandbox_body("a"))
    world.cluster.add("Pod", {"metadata": {"name": POD, "namespace": NS, "ownerReferences": [
        {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": "a", "uid": "earlier-uid",
         "controller": True}]}})
    run(lambda: delete_fn(body=world.body(), memo=world.memo, logger=LOGGER))
    assert world.cluster.names("Pod") == [POD]

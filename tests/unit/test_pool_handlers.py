"""The warm-pool handlers (refill, claim, cold fallback, the pool's policy guard), called as kopf calls them,
against the in-memory API server of tests/unit/fake_kube.py and kopf's indexes (:class:`Watch`).

The watch is delivered by the tests, so each scenario says what the operator had seen when it acted: a refill
before its own creations came back, a claim from an index older than the API server, a re-run after a restart.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import kopf
import pytest
from kubernetes.client import ApiException
from prometheus_client import REGISTRY

from sandbox_operator import constants
from sandbox_operator.handlers import pool, sandbox
from sandbox_operator.handlers.runtime import Runtime
from sandbox_operator.models.timestamps import parse_time
from tests.unit.fake_kube import (
    JSON,
    LOGGER,
    NS,
    Call,
    FakeCluster,
    Watch,
    World,
    handler,
    make_world,
    pool_body,
    sandbox_body,
    timestamp,
)

POOL = "python"
POOL_POLICY = constants.pool_network_policy_name(POOL)
POOL_POD_NAME = re.compile(rf"{re.escape(constants.pool_pod_generate_name(POOL))}[a-z0-9]{{5}}")
TEMPLATE: JSON = {"timeouts": {"idleSeconds": 600, "lifetimeSeconds": 3600}, "podLabels": {"team": "a"}}
OVERRIDES: JSON = {"timeouts": {"lifetimeSeconds": 900}, "podLabels": {"run": "42"}}

pool_event, pool_pod_event = handler(pool.pool_event), handler(pool.pool_pod_event)
pool_policy_event, pool_pod_policy_event = handler(pool.pool_policy_event), handler(pool.pool_pod_policy_event)
sandbox_event, create_fn = handler(sandbox.sandbox_event), handler(sandbox.create_fn)
update_fn = handler(sandbox.update_fn)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await scenario()

    asyncio.run(main())


def claims(outcome: str) -> float:
    return REGISTRY.get_sample_value("sandbox_operator_pool_claims_total", {"outcome": outcome}) or 0.0


def controller(body: JSON) -> JSON:
    [owner] = body["metadata"]["ownerReferences"]
    assert owner["controller"] is True
    return dict(owner)


def host_uid(pod: JSON) -> int:
    return int(pod["spec"]["securityContext"]["runAsUser"])


def own_policy(pod_name: str) -> str:
    return constants.pool_pod_network_policy_name(pod_name)


def claim_behind_the_watch(scene: Scene, pod_name: str, sandbox_name: str) -> None:
    """Another claimer takes the pod (as another operator process would): a new version the watch has not
    delivered yet."""
    scene.cluster.change("Pod", NS, pod_name, {"metadata": {
        "labels": {constants.LABEL_SANDBOX: sandbox_name},
        "ownerReferences": [{"apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": sandbox_name,
                             "uid": f"uid-of-{sandbox_name}", "controller": True}]}})


@dataclass
class Scene:
    """The operator's runtime on the fake API server, with kopf's watches."""

    world: World
    watch: Watch

    @property
    def cluster(self) -> FakeCluster:
        return self.world.cluster

    @property
    def runtime(self) -> Runtime:
        return self.world.runtime

    def restart(self) -> None:
        """A new operator process: nothing remembered, the watch's indexes as kopf fills them before handlers."""
        self.world.memo.runtime = Runtime(settings=self.runtime.settings, api=self.runtime.api)
        self.watch.deliver()

    # The pool ------------------------------------------------------------------------------------------------

    def add_pool(self, size: int) -> JSON:
        return dict(self.cluster.add(constants.POOL_KIND, pool_body(POOL, size, TEMPLATE)))

    def stored(self, kind: str, name: str) -> JSON:
        found = self.cluster.get(kind, NS, name)
        assert found is not None, f"{kind} {name} is not there"
        return found

    def pod(self, name: str) -> JSON:
        return self.stored("Pod", name)

    def delete_policy(self, name: str) -> JSON:
        """A NetworkPolicy deleted outside the operator; returns it as its DELETED event carries it."""
        policy = copy.deepcopy(self.stored("NetworkPolicy", name))
        self.cluster.finish_deleting("NetworkPolicy", NS, name)
        return policy

    def pool(self) -> JSON:
        return self.stored(constants.POOL_KIND, POOL)

    def pool_status(self) -> JSON:
        return dict(self.pool().get("status") or {})

    def pool_condition(self) -> tuple[str, str]:
        [ready] = [c for c in self.pool_status()["conditions"] if c["type"] == "Ready"]
        return ready["status"], ready["reason"]

    async def pool_changed(self, type_: str = "MODIFIED") -> None:
        """The pool's watch event, with its current body."""
        await pool_event(type=type_, body=copy.deepcopy(self.pool()), memo=self.world.memo, logger=LOGGER,
                         **self.watch.indexes())

    async def pod_changed(self, name: str) -> None:
        """A pool pod's MODIFIED event: the indexes are updated first, as kopf does before calling handlers."""
        self.watch.deliver()
        await pool_pod_event(type="MODIFIED", body=copy.deepcopy(self.pod(name)),
                             memo=self.world.memo, logger=LOGGER, **self.watch.indexes())

    def pool_pods(self, *, claimed: bool = False) -> list[JSON]:
        """The pool's pods in the API server: unclaimed ones (or claimed ones), oldest first."""
        pods = [dict(body) for (kind, _ns, _name), body in self.cluster.objects.items()
                if kind == "Pod" and (body["metadata"].get("labels") or {}).get(constants.LABEL_POOL) == POOL
                and (constants.LABEL_SANDBOX in body["metadata"]["labels"]) == claimed]
        return sorted(pods, key=lambda pod: (pod["metadata"]["creationTimestamp"], pod["metadata"]["name"]))

    async def fill_pool(self, size: int) -> list[str]:
        """A pool whose ``size`` pods run and are ready; returns their names, oldest first. The oldest has the
        last name, so a choice by name instead of age takes another pod."""
        self.add_pool(size)
        await self.pool_changed("ADDED")
        names = sorted(pod["metadata"]["name"] for pod in self.pool_pods())
        for age, name in enumerate(names, start=1):
            self.cluster.run_pod(NS, name)
            self.cluster.change("Pod", NS, name, {"metadata": {"creationTimestamp": timestamp(60 * age)}})
        for name in names:
            await self.pod_changed(name)
        assert self.pool_condition() == ("True", "PoolFull")
        return names[::-1]

    # Sandboxes -----------------------------------------------------------------------------------------------

    def add_sandbox(self, name: str = "a") -> JSON:
        return dict(self.cluster.add(constants.KIND, sandbox_body(name, spec={"poolRef": {"name": POOL},
                                                                              **OVERRIDES})))

    async def sandbox_added(self, name: str = "a") -> None:
        """The Sandbox's first watch event, which claims its pod (or makes a cold one) at once."""
        await sandbox_event(type="ADDED", body=self.world.body(name), memo=self.world.memo, logger=LOGGER,
                            **self.watch.indexes())

    async def create(self, name: str = "a") -> None:
        """kopf's create (or resume) handler for the Sandbox as it is stored now."""
        await create_fn(body=self.world.body(name), memo=self.world.memo, logger=LOGGER, **self.watch.indexes())

    def pods_of(self, name: str) -> list[JSON]:
        """The pods the Sandbox controls."""
        uid = self.world.sandbox(name)["metadata"]["uid"]
        return [dict(body) for (kind, _ns, _name), body in self.cluster.objects.items()
                if kind == "Pod" and any(ref.get("uid") == uid for ref in body["metadata"].get(
                    "ownerReferences") or [])]

    def calls_since(self, calls: int, method: str) -> list[Call]:
        return [call for call in self.cluster.calls[calls:] if call.method == method]


@pytest.fixture
def scene(monkeypatch: pytest.MonkeyPatch) -> Scene:
    world = make_world(monkeypatch)
    return Scene(world, Watch(world.cluster))


# --- refill ---------------------------------------------------------------------------------------------------

def test_a_new_pool_gets_its_policy_then_its_pods_then_its_status(scene: Scene) -> None:
    pool_uid = scene.add_pool(3)["metadata"]["uid"]

    async def scenario() -> None:
        await scene.pool_changed("ADDED")
        writes = scene.cluster.writes()
        assert writes[0] == ("create_namespaced_network_policy", POOL_POLICY), "the pool's policy before any pod"
        assert writes[-1] == ("patch_namespaced_custom_object_status", POOL)
        policy = scene.stored("NetworkPolicy", POOL_POLICY)
        assert policy["spec"]["podSelector"] == {"matchLabels": {constants.LABEL_POOL: POOL}}
        assert controller(policy)["uid"] == pool_uid

        pods = scene.pool_pods()
        created = [name for method, name in writes if method == "create_namespaced_pod"]
        assert sorted(pod["metadata"]["name"] for pod in pods) == sorted(created) and len(created) == 3
        assert len(writes) == 1 + 2 * 3 + 1, "the pool's policy, each pod and its own policy, the status"
        for pod in pods:
            meta = pod["metadata"]
            assert POOL_POD_NAME.fullmatch(meta["name"]), meta["name"]
            assert meta["labels"][constants.LABEL_POOL] == POOL and meta["labels"]["team"] == "a"
            token = meta["labels"][constants.LABEL_POOL_POD]
            assert meta["name"] == constants.pool_pod_name(POOL, token)
            # Its own policy after it (the pool's covers it until then), controlled by the pod.
            assert writes.index(("create_namespaced_pod", meta["name"])) < writes.index(
                ("create_namespaced_network_policy", own_policy(meta["name"])))
            pod_policy = scene.stored("NetworkPolicy", own_policy(meta["name"]))
            assert pod_policy["spec"]["podSelector"] == {"matchLabels": {constants.LABEL_POOL: POOL,
                                                                         constants.LABEL_POOL_POD: token}}
            assert pod_policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
            assert (controller(pod_policy)["kind"], controller(pod_policy)["uid"]) == ("Pod", meta["uid"])
            assert constants.LABEL_SANDBOX not in meta["labels"]
            assert (controller(pod)["kind"], controller(pod)["uid"]) == (constants.POOL_KIND, pool_uid)
            assert "activeDeadlineSeconds" not in pod["spec"]
            assert host_uid(pod) in scene.runtime.settings.sandbox_uids
        assert len({host_uid(pod) for pod in pods}) == 3, "every pool pod has a host UID of its own"

        status = scene.pool_status()
        assert (status["readyCount"], status["startingCount"], status["claimedCount"]) == (0, 3, 0)
        assert scene.pool_condition() == ("False", "Refilling") and status["observedGeneration"] == 1
        assert [(t, r) for t, r, _ in scene.world.events_about(constants.POOL_KIND, POOL)] == [
            ("Normal", "Refilling")]

        # The status write's own event comes before the watch delivered the new pods: they count as starting.
        calls = len(scene.cluster.calls)
        await scene.pool_changed()
        assert scene.world.writes_after(calls) == [] and len(scene.pool_pods()) == 3

    run(scenario)


def test_a_pool_of_ready_pods_is_full_and_says_so_once(scene: Scene) -> None:
    async def scenario() -> None:
        names = await scene.fill_pool(2)
        status = scene.pool_status()
        assert (status["readyCount"], status["startingCount"]) == (2, 0)
        assert [r for _, r, _ in scene.world.events_about(constants.POOL_KIND, POOL)] == ["Refilling", "PoolFull"]
        calls = len(scene.cluster.calls)
        await scene.pod_changed(names[0])
        await scene.pool_changed()
        assert scene.world.writes_after(calls) == []

    run(scenario)


@pytest.mark.parametrize(("change", "reason"), [
    ({"metadata": {"annotations": {constants.ANNOTATION_POOL_TEMPLATE: "0123456789abcdef"}}}, "Outdated"),
    ({"status": {"phase": "Failed"}}, "Ended"),
])
def test_a_pod_the_pool_cannot_hand_out_is_deleted_conditionally_and_replaced(scene: Scene, change: JSON,
                                                                               reason: str) -> None:
    async def scenario() -> None:
        victim, keeper = await scene.fill_pool(2)
        changed = scene.cluster.change("Pod", NS, victim, change)
        uid, version = changed["metadata"]["uid"], changed["metadata"]["resourceVersion"]
        calls = len(scene.cluster.calls)
        await scene.pod_changed(victim)
        [delete] = scene.calls_since(calls, "delete_namespaced_pod")
        assert delete.args[0] == victim
        preconditions = delete.kwargs["body"].preconditions
        assert (preconditions.uid, preconditions.resource_version) == (uid, version)
        assert scene.cluster.get("Pod", NS, victim) is None
        names = [pod["metadata"]["name"] for pod in scene.pool_pods()]
        assert len(names) == 2 and keeper in names and victim not in names
        replaced = [m for t, r, m in scene.world.events_about(constants.POOL_KIND, POOL) if r == "PodReplaced"]
        assert replaced == [f"replacing pod {victim}: {reason}"]
        assert scene.pool_condition() == ("False", "Refilling")

    run(scenario)


def test_with_user_namespaces_pool_pods_run_as_the_images_user_and_reserve_no_host_uid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch, user_namespaces=True)
    scene = Scene(world, Watch(world.cluster))
    scene.add_pool(2)
    run(lambda: scene.pool_changed("ADDED"))
    pods = scene.pool_pods()
    assert len(pods) == 2 and {host_uid(pod) for pod in pods} == {constants.SANDBOX_UID}
    assert all(pod["spec"]["hostUsers"] is False for pod in pods)
    assert scene.runtime.uids.reserved() == {}


def test_under_a_kernel_boundary_runtime_pool_pods_get_host_uids_of_their_own_even_with_user_namespaces(
        monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_world(monkeypatch, user_namespaces=True, default_runtime_class="gvisor")
    scene = Scene(world, Watch(world.cluster))
    scene.add_pool(2)
    run(lambda: scene.pool_changed("ADDED"))
    pods = scene.pool_pods()
    uids = {host_uid(pod) for pod in pods}
    assert len(uids) == 2 and constants.SANDBOX_UID not in uids
    assert all("hostUsers" not in pod["spec"] for pod in pods)
    assert len(scene.runtime.uids.reserved()) == 2


def test_a_pod_create_the_api_server_refuses_is_reported_once_and_its_host_uid_released(scene: Scene) -> None:
    scene.add_pool(3)
    scene.cluster.fail_next("create_namespaced_pod", 403, "Forbidden", 'pods "x" is forbidden: exceeded quota')
    run(lambda: scene.pool_changed("ADDED"))
    pods = scene.pool_pods()
    assert len(pods) == 2
    [(event_type, message)] = [(t, m) for t, r, m in scene.world.events_about(constants.POOL_KIND, POOL)
                               if r == "PodCreateFailed"]
    assert event_type == "Warning" and "exceeded quota" in message
    assert sorted(scene.runtime.uids.reserved()) == sorted((NS, pod["metadata"]["name"]) for pod in pods)
    assert scene.pool_status()["startingCount"] == 2


def test_a_shrunk_pool_deletes_starting_pods_first_without_a_replaced_event(scene: Scene) -> None:
    async def scenario() -> None:
        ready = await scene.fill_pool(2)
        scene.cluster.change(constants.POOL_KIND, NS, POOL, {"spec": {"size": 3}, "metadata": {"generation": 2}})
        await scene.pool_changed()
        [starting] = [p["metadata"]["name"] for p in scene.pool_pods() if p["metadata"]["name"] not in ready]
        scene.watch.deliver()
        scene.cluster.change(constants.POOL_KIND, NS, POOL, {"spec": {"size": 1}, "metadata": {"generation": 3}})
        calls = len(scene.cluster.calls)
        await scene.pool_changed()
        assert [c.args[0] for c in scene.calls_since(calls, "delete_namespaced_pod")] == [starting, ready[0]]
        assert [p["metadata"]["name"] for p in scene.pool_pods()] == [ready[1]]
        assert "PodReplaced" not in scene.world.reasons()
        assert scene.calls_since(calls, "create_namespaced_pod") == []

    run(scenario)


def test_a_pool_pod_claimed_since_the_watch_saw_it_is_not_deleted_by_the_refill(scene: Scene) -> None:
    async def scenario() -> None:
        victim, _ = await scene.fill_pool(2)
        # The refill sees an outdated pod; before its delete, a claim made it a Sandbox's (a new version).
        scene.cluster.change("Pod", NS, victim, {"metadata": {
            "annotations": {constants.ANNOTATION_POOL_TEMPLATE: "0123456789abcdef"}}})
        scene.watch.deliver()
        seen = copy.deepcopy(scene.pod(victim))
        claim_behind_the_watch(scene, victim, "other")
        await pool_pod_event(type="MODIFIED", body=seen, memo=scene.world.memo, logger=LOGGER,
                             **scene.watch.indexes())
        [pod] = scene.pool_pods(claimed=True)
        assert pod["metadata"]["name"] == victim, "the delete's resourceVersion no longer matched: the pod stays"

    run(scenario)


def test_a_deleted_pool_policy_is_recreated_with_an_event(scene: Scene) -> None:
    async def scenario() -> None:
        await scene.fill_pool(1)
        policy = scene.delete_policy(POOL_POLICY)
        calls = len(scene.cluster.calls)
        await pool_policy_event(type="DELETED", body=policy, memo=scene.world.memo, logger=LOGGER,
                                sandbox_pod_uids=scene.watch.sandbox_pod_uids)
        recreated = scene.cluster.get("NetworkPolicy", NS, POOL_POLICY)
        assert recreated is not None and recreated["metadata"]["uid"] != policy["metadata"]["uid"]
        assert controller(recreated)["uid"] == scene.pool()["metadata"]["uid"]
        assert scene.world.writes_after(calls) == ["create_namespaced_network_policy"], "no pod changed"
        [(event_type, message)] = [(t, m) for t, r, m in scene.world.events_about(constants.POOL_KIND, POOL)
                                   if r == "NetworkPolicyRecreated"]
        assert event_type == "Warning" and "deny-all NetworkPolicy" in message

    run(scenario)


def test_a_policy_of_another_pool_or_a_deleted_pool_is_not_recreated(scene: Scene) -> None:
    async def scenario() -> None:
        await scene.fill_pool(1)
        policy = scene.delete_policy(POOL_POLICY)
        namesakes = copy.deepcopy(policy)
        namesakes["metadata"]["ownerReferences"][0]["uid"] = "earlier-pool-uid"
        await pool_policy_event(type="DELETED", body=namesakes, memo=scene.world.memo, logger=LOGGER)
        assert scene.cluster.get("NetworkPolicy", NS, POOL_POLICY) is None
        pool_gone = scene.pool()
        scene.cluster.finish_deleting(constants.POOL_KIND, NS, POOL)
        await pool_event(type="DELETED", body=pool_gone, memo=scene.world.memo, logger=LOGGER,
                         **scene.watch.indexes())
        await pool_policy_event(type="DELETED", body=policy, memo=scene.world.memo, logger=LOGGER)
        assert scene.cluster.get("NetworkPolicy", NS, POOL_POLICY) is None
        assert "NetworkPolicyRecreated" not in scene.world.reasons()

    run(scenario)


@pytest.mark.parametrize("claimed", [False, True])
def test_a_pool_pods_deleted_policy_is_recreated_and_reported_to_its_owner(scene: Scene, claimed: bool) -> None:
    async def scenario() -> None:
        [only] = await scene.fill_pool(1)
        owner = (constants.POOL_KIND, POOL)
        if claimed:
            scene.add_sandbox("a")
            await scene.sandbox_added("a")
            scene.watch.deliver()
            owner = (constants.KIND, "a")
        policy = scene.delete_policy(own_policy(only))
        await pool_pod_policy_event(type="DELETED", body=policy, memo=scene.world.memo, logger=LOGGER,
                                    **scene.watch.indexes())
        recreated = scene.stored("NetworkPolicy", own_policy(only))
        assert recreated["metadata"]["uid"] != policy["metadata"]["uid"]
        assert controller(recreated)["uid"] == scene.pod(only)["metadata"]["uid"]
        [(event_type, message)] = [(t, m) for t, r, m in scene.world.events_about(*owner)
                                   if r == "NetworkPolicyRecreated"]
        assert event_type == "Warning" and only in message

    run(scenario)


def test_the_policy_of_a_pool_pod_that_is_gone_is_not_recreated(scene: Scene) -> None:
    async def scenario() -> None:
        [only] = await scene.fill_pool(1)
        scene.cluster.finish_deleting("Pod", NS, only)
        policy = scene.delete_policy(own_policy(only))  # by garbage collection
        scene.watch.deliver()
        await pool_pod_policy_event(type="DELETED", body=policy, memo=scene.world.memo, logger=LOGGER,
                                    **scene.watch.indexes())
        assert scene.cluster.get("NetworkPolicy", NS, own_policy(only)) is None
        assert "NetworkPolicyRecreated" not in scene.world.reasons()

    run(scenario)


def test_a_pool_pod_without_its_own_policy_is_not_handed_out_until_the_refill_makes_it(scene: Scene) -> None:
    async def scenario() -> None:
        [only] = await scene.fill_pool(1)
        # As after an operator that stopped between the pod's create and its policy's.
        scene.cluster.finish_deleting("NetworkPolicy", NS, own_policy(only))
        scene.restart()
        scene.add_sandbox("a")
        await scene.sandbox_added("a")
        assert [p["metadata"]["name"] for p in scene.pods_of("a")] == [constants.pod_name("a")], "a cold start"
        assert "PoolEmpty" in scene.world.reasons()
        await scene.pool_changed()
        assert controller(scene.stored("NetworkPolicy", own_policy(only)))["uid"] == scene.pod(only)["metadata"][
            "uid"]
        scene.add_sandbox("b")
        await scene.sandbox_added("b")
        assert [p["metadata"]["name"] for p in scene.pods_of("b")] == [only]

    run(scenario)


# --- the claim ------------------------------------------------------------------------------------------------

def test_a_claim_takes_the_oldest_ready_pod_in_one_conditional_write(scene: Scene) -> None:
    async def scenario() -> None:
        oldest, younger = await scene.fill_pool(2)
        sandbox_uid = scene.add_sandbox("a")["metadata"]["uid"]
        before = copy.deepcopy(scene.pod(oldest))
        warm, calls = claims("warm"), len(scene.cluster.calls)
        await scene.sandbox_added("a")
        # The claim is the only write before Ready: the pod's own policy covers it, and no other policy is made.
        assert scene.cluster.writes()[-2:] == [
            ("patch_namespaced_pod", oldest), ("patch_namespaced_custom_object_status", "a")]
        assert scene.world.writes_after(calls) == ["patch_namespaced_pod", "patch_namespaced_custom_object_status"]
        assert scene.cluster.get("NetworkPolicy", NS, constants.network_policy_name("a")) is None
        assert controller(scene.stored("NetworkPolicy", own_policy(oldest)))["uid"] == before["metadata"]["uid"]
        [claim] = scene.calls_since(calls, "patch_namespaced_pod")
        assert claim.kwargs["_content_type"] == "application/merge-patch+json"
        assert claim.args[2]["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

        pod = scene.pod(oldest)
        assert pod["metadata"]["ownerReferences"] == [{
            "apiVersion": constants.API_VERSION, "kind": constants.KIND, "name": "a", "uid": sandbox_uid,
            "controller": True, "blockOwnerDeletion": True}], "the Sandbox is the only owner"
        labels = pod["metadata"]["labels"]
        assert (labels[constants.LABEL_POOL], labels[constants.LABEL_SANDBOX]) == (POOL, "a")
        assert (labels["team"], labels["run"]) == ("a", "42"), "the template's labels and the Sandbox's"
        assert constants.ANNOTATION_CLAIMED_AT in pod["metadata"]["annotations"]
        assert 900 <= pod["spec"]["activeDeadlineSeconds"] <= 905, "the Sandbox's lifetime from the pod's start"
        assert host_uid(pod) == host_uid(before)

        status = scene.world.status("a")
        assert (status["phase"], status["podName"], status["podUID"]) == (
            "Ready", oldest, pod["metadata"]["uid"])
        expires = parse_time(status["expiresAt"])
        created = parse_time(scene.world.sandbox("a")["metadata"]["creationTimestamp"])
        assert expires is not None and created is not None
        assert expires - created == datetime.timedelta(seconds=900)
        assert [r for _, r, _ in scene.world.events_about(constants.KIND, "a")] == ["PodReady"]
        assert scene.cluster.get("Pod", NS, constants.pod_name("a")) is None, "no cold pod as well"
        assert scene.pods_of("a") == [pod] and claims("warm") == warm + 1
        assert scene.runtime.uids.reserved()[(NS, "a")] == host_uid(pod), "its host UID is the Sandbox's now"

        # kopf's create handler follows: nothing is left to do.
        calls = len(scene.cluster.calls)
        await scene.create("a")
        assert scene.world.writes_after(calls) == []

        # The pool refills behind the claim: the claimed pod is not its own any more.
        await scene.pod_changed(oldest)
        names = [p["metadata"]["name"] for p in scene.pool_pods()]
        assert len(names) == 2 and younger in names and oldest not in names
        pool_status = scene.pool_status()
        assert (pool_status["readyCount"], pool_status["startingCount"], pool_status["claimedCount"]) == (1, 1, 1)
        assert controller(scene.pod(oldest))["uid"] == sandbox_uid

    run(scenario)


def test_a_claim_that_lost_its_pod_to_another_claimer_takes_the_next_one(scene: Scene) -> None:
    async def scenario() -> None:
        oldest, younger = await scene.fill_pool(2)
        claim_behind_the_watch(scene, oldest, "other")
        scene.add_sandbox("a")
        calls = len(scene.cluster.calls)
        await scene.sandbox_added("a")
        pod_calls = [(c.method, c.args[0]) for c in scene.cluster.calls[calls:] if "namespaced_pod" in c.method]
        assert pod_calls == [("patch_namespaced_pod", oldest), ("read_namespaced_pod", oldest),
                             ("patch_namespaced_pod", younger)]
        assert scene.world.status("a")["podName"] == younger
        assert controller(scene.pod(oldest))["uid"] == "uid-of-other", "the winner keeps it"
        assert [p["metadata"]["name"] for p in scene.pods_of("a")] == [younger]
        assert "PoolEmpty" not in scene.world.reasons()

    run(scenario)


def test_a_claim_whose_pod_only_changed_reads_it_again_and_takes_it(scene: Scene) -> None:
    async def scenario() -> None:
        oldest, _ = await scene.fill_pool(2)
        touched = scene.cluster.change("Pod", NS, oldest, {"status": {"podIP": "10.244.0.9"}})  # the kubelet
        scene.add_sandbox("a")
        calls = len(scene.cluster.calls)
        await scene.sandbox_added("a")
        first, second = scene.calls_since(calls, "patch_namespaced_pod")
        assert first.args[2]["metadata"]["resourceVersion"] != touched["metadata"]["resourceVersion"]
        assert second.args[2]["metadata"]["resourceVersion"] == touched["metadata"]["resourceVersion"]
        assert scene.world.status("a")["podName"] == oldest
        assert [p["metadata"]["name"] for p in scene.pods_of("a")] == [oldest]

    run(scenario)


@pytest.mark.parametrize("pool_state", ["every pod taken", "pods still starting"])
def test_without_a_claimable_pod_the_sandbox_starts_cold_with_a_pool_empty_event(scene: Scene,
                                                                                 pool_state: str) -> None:
    async def scenario() -> None:
        if pool_state == "every pod taken":
            [only] = await scene.fill_pool(1)
            claim_behind_the_watch(scene, only, "other")
        else:
            scene.add_pool(1)
            await scene.pool_changed("ADDED")
            scene.watch.deliver()
        scene.add_sandbox("a")
        cold = claims("cold")
        await scene.sandbox_added("a")
        assert scene.cluster.writes()[-2:] == [
            ("create_namespaced_network_policy", constants.network_policy_name("a")),
            ("create_namespaced_pod", constants.pod_name("a"))], "a cold pod's policy before it, as always"
        pod = scene.cluster.get("Pod", NS, constants.pod_name("a"))
        assert pod is not None and scene.pods_of("a") == [pod]
        labels = pod["metadata"]["labels"]
        assert constants.LABEL_POOL not in labels and (labels["team"], labels["run"]) == ("a", "42")
        assert pod["spec"]["activeDeadlineSeconds"] == 900, "the template with the Sandbox's overrides"
        assert "podName" not in scene.world.status("a"), "a cold pod's status waits for kopf's create handler"
        await scene.create("a")
        assert scene.world.status("a")["podName"] == constants.pod_name("a")
        [(event_type, message)] = [(t, m) for t, r, m in scene.world.events_about(constants.KIND, "a")
                                   if r == "PoolEmpty"]
        assert event_type == "Warning" and f"pool {POOL} " in message
        assert claims("cold") == cold + 1
        assert host_uid(pod) not in {host_uid(p) for p in scene.cluster.objects.values() if p is not pod
                                     and p["kind"] == "Pod"}

    run(scenario)


# --- re-runs --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("interruption", ["status write failed", "claim's answer lost"])
def test_a_rerun_after_the_claims_write_adopts_the_claimed_pod(scene: Scene, interruption: str) -> None:
    async def scenario() -> None:
        oldest, _ = await scene.fill_pool(2)
        scene.add_sandbox("a")
        if interruption == "status write failed":
            scene.cluster.fail_next("patch_namespaced_custom_object_status", 500, "InternalError", "etcd timeout")
        else:  # the write went through; the API server's answer did not
            scene.cluster.fail_next_after_writing("patch_namespaced_pod", 504)
        with pytest.raises(ApiException):
            await scene.create("a")
        assert "podUID" not in scene.world.status("a")
        assert [p["metadata"]["name"] for p in scene.pods_of("a")] == [oldest]
        scene.restart()
        before, calls = scene.world.snapshot(), len(scene.cluster.calls)
        await scene.create("a")
        # The claimed pod is found in the index: only the status is written (the pod's own policy covers it).
        assert scene.world.writes_after(calls) == ["patch_namespaced_custom_object_status"]
        assert [p["metadata"]["name"] for p in scene.pods_of("a")] == [oldest]
        assert scene.world.snapshot()[("Pod", NS, oldest)] == before[("Pod", NS, oldest)]
        status = scene.world.status("a")
        assert (status["phase"], status["podName"]) == ("Ready", oldest)

    run(scenario)


def test_a_rerun_after_a_cold_start_adopts_the_cold_pod_and_claims_nothing(scene: Scene) -> None:
    async def scenario() -> None:
        scene.add_pool(1)
        await scene.pool_changed("ADDED")
        scene.add_sandbox("a")
        scene.cluster.fail_next("patch_namespaced_custom_object_status", 500, "InternalError", "etcd timeout")
        with pytest.raises(ApiException):
            await scene.create("a")  # the pool's pod is still starting: a cold start
        cold = scene.cluster.get("Pod", NS, constants.pod_name("a"))
        assert cold is not None
        [pool_pod] = scene.pool_pods()
        scene.cluster.run_pod(NS, pool_pod["metadata"]["name"])  # now there is one to claim
        scene.restart()
        assert (NS, "a") in scene.watch.sandbox_pod_uids[host_uid(cold)]
        events, calls = len(scene.world.events), len(scene.cluster.calls)
        await scene.create("a")
        assert scene.calls_since(calls, "patch_namespaced_pod") == []
        assert scene.pods_of("a") == [cold]
        assert [p["metadata"]["name"] for p in scene.pool_pods()] == [pool_pod["metadata"]["name"]], "unclaimed"
        assert scene.world.status("a")["podUID"] == cold["metadata"]["uid"]
        assert "PoolEmpty" not in scene.world.reasons()[events:], "the re-run made no second choice"

    run(scenario)


# --- a missing pool -------------------------------------------------------------------------------------------

def test_a_sandbox_of_a_missing_pool_fails_naming_the_field(scene: Scene) -> None:
    scene.cluster.add(constants.KIND, sandbox_body("a", spec={"poolRef": {"name": "nope"}}))

    async def scenario() -> None:
        await scene.sandbox_added("a")
        assert scene.cluster.writes() == [], "nothing is made for it"
        with pytest.raises(kopf.PermanentError, match="InvalidSpec"):
            await scene.create("a")
        status = scene.world.status("a")
        assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
        assert "spec.poolRef.name" in status["message"] and "'nope'" in status["message"]
        assert scene.cluster.names("Pod") == [] and scene.cluster.names("NetworkPolicy") == []

    run(scenario)


def test_a_sandbox_with_its_pod_keeps_running_when_its_pool_is_gone(scene: Scene) -> None:
    async def scenario() -> None:
        oldest, _ = await scene.fill_pool(2)
        scene.add_sandbox("a")
        await scene.sandbox_added("a")
        await scene.create("a")
        ready = scene.world.status("a")
        assert ready["podName"] == oldest
        gone = scene.pool()
        scene.cluster.finish_deleting(constants.POOL_KIND, NS, POOL)
        await pool_event(type="DELETED", body=gone, memo=scene.world.memo, logger=LOGGER, **scene.watch.indexes())
        for on_restart in (False, True):
            if on_restart:
                scene.restart()
            await scene.create("a")  # a retry, then the resume after a restart
            assert scene.world.status("a") == ready
        assert [p["metadata"]["name"] for p in scene.pods_of("a")] == [oldest]

    run(scenario)


# --- concurrency ----------------------------------------------------------------------------------------------

def test_concurrent_claims_take_different_pods_and_the_rest_start_cold(scene: Scene) -> None:
    names = [f"s{index}" for index in range(5)]

    async def scenario() -> None:
        pooled = await scene.fill_pool(3)
        for name in names:
            scene.add_sandbox(name)
        warm, cold, calls = claims("warm"), claims("cold"), len(scene.cluster.calls)
        await asyncio.gather(*(scene.sandbox_added(name) for name in names))
        assert len(scene.calls_since(calls, "patch_namespaced_pod")) == 3, "no claim raced another for a pod"
        owned = {name: [p["metadata"]["name"] for p in scene.pods_of(name)] for name in names}
        assert all(len(pods) == 1 for pods in owned.values()), owned
        taken = sorted(pods[0] for pods in owned.values() if pods[0] in pooled)
        assert taken == sorted(pooled), "each pool pod went to exactly one Sandbox"
        started_cold = sorted(name for name, pods in owned.items() if pods == [constants.pod_name(name)])
        assert len(started_cold) == 2
        assert sorted(n for n in names if ("Warning", "PoolEmpty") in [
            (t, r) for t, r, _ in scene.world.events_about(constants.KIND, n)]) == started_cold
        assert (claims("warm"), claims("cold")) == (warm + 3, cold + 2)
        pods = [scene.pods_of(name)[0] for name in names]
        assert len({host_uid(pod) for pod in pods}) == 5, "every sandbox has a host UID of its own"

    run(scenario)


# --- updates of a pooled Sandbox ------------------------------------------------------------------------------

def test_a_lowered_lifetime_of_a_claimed_sandbox_is_applied(scene: Scene) -> None:
    async def scenario() -> None:
        [oldest] = await scene.fill_pool(1)
        scene.add_sandbox("a")
        await scene.sandbox_added("a")
        await scene.create("a")
        deadline = scene.pod(oldest)["spec"]["activeDeadlineSeconds"]
        updated = scene.world.sandbox("a")
        old_spec = copy.deepcopy(updated["spec"])
        new_spec = {**old_spec, "timeouts": {"lifetimeSeconds": 600}}
        updated["spec"] = new_spec
        updated["metadata"]["generation"] = 2
        await update_fn(body=scene.world.body("a"), old=old_spec, new=new_spec, memo=scene.world.memo,
                        logger=LOGGER)
        assert "ImmutableFieldChanged" not in scene.world.reasons()
        expires = parse_time(scene.world.status("a")["expiresAt"])
        created = parse_time(scene.world.sandbox("a")["metadata"]["creationTimestamp"])
        assert expires is not None and created is not None
        lowered_by = deadline - scene.pod(oldest)["spec"]["activeDeadlineSeconds"]
        # The pod's deadline and the status follow the lowered lifetime, as for a Sandbox without a pool.
        assert (lowered_by >= 300, (expires - created).total_seconds()) == (True, 600)

    run(scenario)

"""Warm pools on the real cluster (docs/pools.md): a Sandbox with spec.poolRef takes one of its pool's ready pods
or, with none ready, starts cold with an Event; the pool refills; a pod goes to one Sandbox and only once, whatever
runs at the same time (concurrent claims, an operator killed mid-claim, the pool's deletion); the pod is behind a
deny-all NetworkPolicy at every moment, as a canary pod sees it; what a running pod cannot take is refused at
admission."""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import functools
import json
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.integration.conftest import SandboxEnv
from tests.kit import Cluster, Kube, consistently, or_none_if_missing, wait_until

JSON = dict[str, Any]
SMALL = {"cpu": "20m", "memory": "128Mi", "ephemeralStorage": "256Mi"}
TEMPLATE: JSON = {"resources": SMALL}
POOL_READY_TIMEOUT = 120
CLAIM_READY_TIMEOUT = 60
BURST_READY_TIMEOUT = 240


# --------------------------------------------------------------------------------------------------------------
# Reading pods, policies and events


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def owner_references(pod: JSON) -> list[JSON]:
    return list(pod["metadata"].get("ownerReferences") or [])


def controlled_only_by(pod: JSON, owner: JSON) -> bool:
    """``owner`` is the pod's controller and its only owner."""
    refs = owner_references(pod)
    return len(refs) == 1 and refs[0].get("controller") is True and refs[0]["uid"] == owner["metadata"]["uid"]


def is_ready(pod: JSON) -> bool:
    status = pod.get("status") or {}
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    return (status.get("phase") == "Running" and conditions.get("Ready") == "True"
            and not pod["metadata"].get("deletionTimestamp"))


def unclaimed_ready_pods(kube: Kube, namespace: str, pool: JSON) -> list[JSON]:
    """The pool's ready pods that the pool (by UID) still controls."""
    return [pod for pod in kube.pool_pods(namespace, pool["metadata"]["name"])
            if is_ready(pod) and controlled_only_by(pod, pool)]


def operator_pods(kube: Kube, namespace: str) -> list[JSON]:
    """Every pod of a pool or a Sandbox in the namespace, claimed or not."""
    pods = kube.serialize(kube.core.list_namespaced_pod(namespace).items)
    return [pod for pod in pods if {constants.LABEL_POOL, constants.LABEL_SANDBOX} & set(pod["metadata"]["labels"])]


def pod_uids(pods: Sequence[JSON]) -> set[str]:
    return {pod["metadata"]["uid"] for pod in pods}


def network_policy(kube: Kube, namespace: str, name: str) -> JSON | None:
    found = or_none_if_missing(kube.networking.read_namespaced_network_policy, name, namespace)
    return None if found is None else dict(kube.serialize(found))


def assert_deny_all_selects(policy: JSON | None, pod: JSON) -> None:
    assert policy is not None, "the policy is missing"
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"], policy["spec"]
    assert not policy["spec"].get("ingress") and not policy["spec"].get("egress"), policy["spec"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items(), (selector, pod["metadata"]["labels"])


def event_reasons_by_object(kube: Kube, namespace: str, kind: str) -> dict[str, set[str]]:
    """The reasons of the Events about each object of ``kind`` in the namespace, by the object's name."""
    found: dict[str, set[str]] = collections.defaultdict(set)
    for event in kube.core.list_namespaced_event(namespace, field_selector=f"involvedObject.kind={kind}").items:
        found[str(event.involved_object.name)].add(str(event.reason))
    return found


def api_message(error: ApiException) -> str:
    return str(json.loads(error.body or "{}").get("message", error.body))


# --------------------------------------------------------------------------------------------------------------
# Pools, claims and what must hold of them


def pooled(pool: str, **overrides: Any) -> JSON:
    return {"poolRef": {"name": pool}, **overrides}


def wait_unclaimed_ready(kube: Kube, namespace: str, pool: JSON, count: int) -> list[JSON]:
    """The pool's ready pods that it controls, once there are ``count``."""
    def reached() -> list[JSON] | None:
        pods = unclaimed_ready_pods(kube, namespace, pool)
        return pods if len(pods) == count else None
    return wait_until(reached, 30, message=f"{count} ready pods controlled by pool {pool['metadata']['name']}")


def ready_pool(kube: Kube, namespace: str, name: str, size: int) -> tuple[JSON, list[JSON]]:
    """A pool of ``size`` pods of the small template, once all of them are ready; and those pods."""
    kube.create_pool(namespace, name, size, TEMPLATE)
    kube.wait_pool(namespace, name, ready=size, timeout=POOL_READY_TIMEOUT)
    pool = kube.get_pool(namespace, name)
    assert pool is not None
    return pool, wait_unclaimed_ready(kube, namespace, pool, size)


def at_once(actions: Sequence[Callable[[], Any]]) -> list[Any]:
    """Runs every action in a thread of its own, all released together; their results, in order."""
    barrier = threading.Barrier(len(actions))

    def run(action: Callable[[], Any]) -> Any:
        barrier.wait(timeout=30)
        return action()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(actions)) as executor:
        futures = [executor.submit(run, action) for action in actions]
        return [future.result() for future in futures]


def wait_settled(kube: Kube, namespace: str, names: Sequence[str], phases: Sequence[str],
                 timeout: float) -> dict[str, JSON]:
    """Every named Sandbox's status once each is in one of ``phases``; a Sandbox that ends otherwise fails
    the wait at once."""
    def settled() -> dict[str, JSON] | None:
        statuses = {item["metadata"]["name"]: dict(item.get("status") or {}) for item in kube.sandboxes(namespace)}
        for name in names:
            phase = statuses.get(name, {}).get("phase")
            assert phase not in ("Failed", "Succeeded") or phase in phases, f"{name} ended: {statuses.get(name)}"
        done = all(statuses.get(name, {}).get("phase") in phases for name in names)
        return {name: statuses[name] for name in names} if done else None
    return wait_until(settled, timeout, interval=0.5, message=f"{len(names)} Sandboxes {' or '.join(phases)}")


def assert_one_owner_each(kube: Kube, namespace: str, pool: JSON) -> None:
    """Exactly one owner for every pod and no pod lost: each pod of the pool or of a Sandbox has one owner
    reference, its controller, which is either the pool (and the pod carries no Sandbox label) or one live
    Sandbox (whose label it carries); no Sandbox controls two pods; no two Sandboxes record the same pod, and
    the pod a Sandbox records is the one it controls."""
    sandboxes = {item["metadata"]["uid"]: item for item in kube.sandboxes(namespace)}
    pods = {pod["metadata"]["uid"]: pod for pod in operator_pods(kube, namespace)}
    controlled: collections.Counter[str] = collections.Counter()
    for pod in pods.values():
        meta, refs = pod["metadata"], owner_references(pod)
        assert len(refs) == 1 and refs[0].get("controller") is True, f"pod {meta['name']} has owners {refs}"
        owner = refs[0]["uid"]
        if owner == pool["metadata"]["uid"]:
            assert constants.LABEL_SANDBOX not in meta["labels"], f"the pool's pod {meta['name']}: {meta['labels']}"
            continue
        sandbox = sandboxes.get(owner)
        assert sandbox is not None, f"pod {meta['name']} is controlled by {refs[0]}: neither the pool nor a Sandbox"
        assert meta["labels"].get(constants.LABEL_SANDBOX) == sandbox["metadata"]["name"], meta["labels"]
        controlled[owner] += 1
    assert all(count == 1 for count in controlled.values()), f"a Sandbox controls several pods: {controlled}"
    recorded = [item["status"]["podUID"] for item in sandboxes.values() if (item.get("status") or {}).get("podUID")]
    assert len(recorded) == len(set(recorded)), f"two Sandboxes record the same pod: {sorted(recorded)}"
    for uid, item in sandboxes.items():
        status = item.get("status") or {}
        if status.get("phase") == "Ready":
            assert status.get("podUID") in pods, f"Ready {item['metadata']['name']} records no live pod: {status}"
        if status.get("podUID") in pods:
            pod = pods[status["podUID"]]
            assert owner_references(pod)[0]["uid"] == uid, (
                f"{item['metadata']['name']} records pod {pod['metadata']['name']}, another's")


# --------------------------------------------------------------------------------------------------------------
# 1. warm claim and refill


def test_warm_claim_hands_over_a_ready_pod_and_the_pool_refills(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    pool, ready = ready_pool(kube, ns, "warm", 2)
    lifetime = 600
    kube.create(ns, "taker", pooled("warm", timeouts={"lifetimeSeconds": lifetime}, podLabels={"team": "a"}))

    status = kube.wait_phase(ns, "taker", "Ready", timeout=CLAIM_READY_TIMEOUT)
    sandbox = kube.get(ns, "taker")
    assert sandbox is not None
    pod = kube.pod(ns, status["podName"])
    assert pod is not None, status
    assert status["podName"].startswith(constants.pool_pod_generate_name("warm")), status
    assert pod["metadata"]["uid"] in pod_uids(ready), "not one of the pool's ready pods"
    assert status["podUID"] == pod["metadata"]["uid"]
    assert kube.pod(ns, constants.pod_name("taker")) is None, "a cold pod as well as the claimed one"

    # The hand-over: the Sandbox is the only owner, both labels, the claim's time, the lifetime's deadline.
    assert controlled_only_by(pod, sandbox), owner_references(pod)
    labels = pod["metadata"]["labels"]
    assert (labels[constants.LABEL_POOL], labels[constants.LABEL_SANDBOX], labels["team"]) == ("warm", "taker", "a")
    created = parse_time(sandbox["metadata"]["creationTimestamp"])
    assert parse_time(pod["metadata"]["annotations"][constants.ANNOTATION_CLAIMED_AT]) >= created
    # The kubelet counts the deadline from the pod's start: its time in the pool plus the Sandbox's lifetime.
    expected_deadline = (created + datetime.timedelta(seconds=lifetime) - parse_time(pod["status"]["startTime"]))
    assert abs(pod["spec"]["activeDeadlineSeconds"] - math.ceil(expected_deadline.total_seconds())) <= 1, (
        pod["spec"].get("activeDeadlineSeconds"), expected_deadline)
    assert parse_time(status["expiresAt"]) == created + datetime.timedelta(seconds=lifetime)
    assert parse_time(status["readyTime"]) >= created

    # Reads like a cold start: PodReady, no pool Event. The pod's own deny-all policy, which the pod controls,
    # selects it, as does the pool's; no other policy is made for a claimed pod.
    [condition] = [c for c in status["conditions"] if c["type"] == "Ready"]
    assert (condition["status"], condition["reason"]) == ("True", "PodReady")
    kube.wait_event(ns, "taker", "PodReady")
    assert "PoolEmpty" not in kube.event_reasons(ns, "taker")
    own = network_policy(kube, ns, constants.pool_pod_network_policy_name(pod["metadata"]["name"]))
    assert own is not None, "the claimed pod's own policy"
    assert_deny_all_selects(own, pod)
    assert [(ref["kind"], ref["uid"]) for ref in own["metadata"]["ownerReferences"]] == [
        ("Pod", pod["metadata"]["uid"])]
    assert_deny_all_selects(network_policy(kube, ns, constants.pool_network_policy_name("warm")), pod)
    assert network_policy(kube, ns, constants.network_policy_name("taker")) is None

    # Refill: a new pod, the claimed one counted as claimed and never as ready.
    kube.wait_pool(ns, "warm", ready=2, claimed=1, timeout=POOL_READY_TIMEOUT)
    refilled = pod_uids(wait_unclaimed_ready(kube, ns, pool, 2))
    assert pod["metadata"]["uid"] not in refilled, "the claimed pod is still the pool's"
    assert len(refilled - pod_uids(ready)) == 1, "no new pod"
    wait_until(lambda: {"Refilling", "PoolFull"} <= event_reasons_by_object(kube, ns, constants.POOL_KIND)["warm"],
               30, message=lambda: f"the pool's Events {event_reasons_by_object(kube, ns, constants.POOL_KIND)}")
    header, row = env.cluster.kubectl("get", "sbxpool", "-n", ns).stdout.splitlines()[:2]
    assert header.split() == ["NAME", "SIZE", "READY", "STARTING", "CLAIMED", "AGE"]
    assert row.split()[:5] == ["warm", "2", "2", "0", "1"]


# --------------------------------------------------------------------------------------------------------------
# 2. empty pool


def test_an_empty_pool_starts_the_sandbox_cold_from_its_template_with_an_event(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create_pool(ns, "parched", 0, TEMPLATE)
    kube.wait_pool(ns, "parched", ready=0)
    kube.create(ns, "cold", pooled("parched", podLabels={"team": "b"}))

    status = kube.wait_phase(ns, "cold", "Ready", timeout=120)
    sandbox = kube.get(ns, "cold")
    assert sandbox is not None
    assert status["podName"] == constants.pod_name("cold"), status
    [pod] = kube.pods(ns, "cold")
    assert (pod["metadata"]["name"], pod["metadata"]["uid"]) == (status["podName"], status["podUID"])
    assert controlled_only_by(pod, sandbox), owner_references(pod)
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "20m", "memory": "128Mi", "ephemeral-storage": "256Mi"}, (
        "not built from the pool's template")
    assert pod["metadata"]["labels"]["team"] == "b"
    event = kube.wait_event(ns, "cold", "PoolEmpty")
    assert event["type"] == "Warning" and "parched" in event["message"], event


# --------------------------------------------------------------------------------------------------------------
# 3. a pod is never handed out twice


def test_twenty_concurrent_claims_on_a_pool_of_five_take_each_pod_once(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    pool, ready = ready_pool(kube, ns, "busy", 5)
    names = [f"burst-{i:02d}" for i in range(20)]
    burst_start = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    at_once([functools.partial(kube.create, ns, name, pooled("busy")) for name in names])

    statuses = wait_settled(kube, ns, names, ("Ready",), BURST_READY_TIMEOUT)
    claimed = {name: status["podUID"] for name, status in statuses.items()}
    assert len(set(claimed.values())) == len(names), f"a pod recorded twice: {claimed}"
    assert_one_owner_each(kube, ns, pool)

    pods = {pod["metadata"]["uid"]: pod for pod in operator_pods(kube, ns)}
    warm = {name for name, status in statuses.items()
            if status["podName"].startswith(constants.pool_pod_generate_name("busy"))}
    cold = set(names) - warm
    # The pool's five ready pods went to five Sandboxes (once each: the UIDs are distinct). A further warm claim
    # can only be a pod the refill started during the burst that became ready before its claim.
    assert pod_uids(ready) <= {claimed[name] for name in warm}, "a ready pod of the pool was not handed out"
    for name in warm:
        pod = pods[claimed[name]]
        assert pod["metadata"]["uid"] in pod_uids(ready) or parse_time(
            pod["metadata"]["creationTimestamp"]) >= burst_start, f"{name} took {pod['metadata']['name']}"
    for name in cold:
        assert statuses[name]["podName"] == constants.pod_name(name), statuses[name]
    print(f"{len(warm)} warm claims ({len(warm) - len(ready)} of refill pods), {len(cold)} cold starts")

    def cold_ones_told() -> bool:
        told = {name for name, reasons in event_reasons_by_object(kube, ns, constants.KIND).items()
                if "PoolEmpty" in reasons}
        assert not told & warm, f"a warm claim has a PoolEmpty Event: {sorted(told & warm)}"
        return cold <= told
    wait_until(cold_ones_told, 30, message="a PoolEmpty Event on every cold Sandbox")

    # Deleted, the claimed pods go with their Sandboxes: none returns to the pool, which refills.
    for name in names:
        kube.delete(ns, name)
    wait_until(lambda: not set(claimed.values()) & pod_uids(operator_pods(kube, ns)), 120,
               message="every claimed pod gone with its Sandbox")
    kube.wait_pool(ns, "busy", ready=5, claimed=0, timeout=POOL_READY_TIMEOUT)
    assert not set(claimed.values()) & pod_uids(unclaimed_ready_pods(kube, ns, pool))


# --------------------------------------------------------------------------------------------------------------
# 4. the operator killed between the claim's write and the status


def test_operator_killed_between_claim_and_record_leaves_one_owner_and_no_lost_pod(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    first = env.start(failpoint="after-pod-claim")
    pool, ready = ready_pool(kube, ns, "crashy", 2)
    kube.create(ns, "crash", pooled("crashy"))
    first.wait_for_log("FAILPOINT after-pod-claim reached", timeout=60)

    sandbox = kube.get(ns, "crash")
    assert sandbox is not None
    [claimed] = kube.pods(ns, "crash")
    assert claimed["metadata"]["uid"] in pod_uids(ready), "the claim took no ready pod of the pool"
    assert controlled_only_by(claimed, sandbox), owner_references(claimed)
    assert "podUID" not in kube.status(ns, "crash"), "the status was written before the kill point"
    first.kill()

    env.start()
    status = kube.wait_phase(ns, "crash", "Ready", timeout=120)
    assert (status["podName"], status["podUID"]) == (claimed["metadata"]["name"], claimed["metadata"]["uid"])
    assert pod_uids(kube.pods(ns, "crash")) == {claimed["metadata"]["uid"]}, "not exactly the claimed pod"
    assert kube.pod(ns, constants.pod_name("crash")) is None, "a cold pod besides the claimed one"
    assert "PoolEmpty" not in kube.event_reasons(ns, "crash")

    kube.wait_pool(ns, "crashy", ready=2, claimed=1, timeout=POOL_READY_TIMEOUT)
    assert pod_uids(ready) - {claimed["metadata"]["uid"]} <= pod_uids(unclaimed_ready_pods(kube, ns, pool)), (
        "the pool lost its other pod")
    assert_one_owner_each(kube, ns, pool)


# --------------------------------------------------------------------------------------------------------------
# 5. the pool deleted while claims are in flight


def test_pool_deleted_while_claims_are_in_flight(sbx_env: SandboxEnv) -> None:
    """The pool goes as soon as the first claim's write is seen, the other claims in flight. A claim either won
    (the pod is its Sandbox's and survives the pool) or starts cold; a Sandbox whose pool the operator could no
    longer read at all is Failed with InvalidSpec naming spec.poolRef.name (docs/pools.md)."""
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    pool, _ = ready_pool(kube, ns, "doomed", 3)
    names = [f"inflight-{i}" for i in range(5)]

    def delete_on_first_claim() -> JSON:
        def a_claim() -> JSON | None:
            return next((pod for pod in kube.pool_pods(ns, "doomed")
                         if constants.LABEL_SANDBOX in pod["metadata"]["labels"]), None)
        first = wait_until(a_claim, 60, interval=0.01, message="a first claim")
        kube.delete_pool(ns, "doomed")
        return first
    *_, first_claimed = at_once([*(functools.partial(kube.create, ns, name, pooled("doomed")) for name in names),
                                 delete_on_first_claim])

    statuses = wait_settled(kube, ns, names, ("Ready", "Failed"), BURST_READY_TIMEOUT)
    failed = {name: status for name, status in statuses.items() if status["phase"] == "Failed"}
    for status in failed.values():
        assert status.get("reason") == "InvalidSpec" and "spec.poolRef.name" in status.get("message", ""), status
    first_owner = first_claimed["metadata"]["labels"][constants.LABEL_SANDBOX]
    assert statuses[first_owner].get("podUID") == first_claimed["metadata"]["uid"], statuses[first_owner]
    ready = [name for name in names if name not in failed]
    warm = {name: statuses[name]["podUID"] for name in ready
            if statuses[name]["podName"].startswith(constants.pool_pod_generate_name("doomed"))}
    print(f"{len(warm)} warm, {len(ready) - len(warm)} cold, {len(failed)} without a pool: {sorted(failed)}")

    # The pool's own pods and policy go; the claimed pods and their own policies, and the cold Sandboxes'
    # policies, stay.
    wait_until(lambda: kube.get_pool(ns, "doomed") is None, 60, message="the pool gone")
    wait_until(lambda: all(not controlled_only_by(pod, pool) for pod in kube.pool_pods(ns, "doomed")), 120,
               message="the pool's unclaimed pods gone")
    wait_until(lambda: network_policy(kube, ns, constants.pool_network_policy_name("doomed")) is None, 60,
               message="the pool's policy gone")

    def claimed_pods_stay() -> bool:
        pods = {pod["metadata"]["uid"]: pod for pod in kube.pool_pods(ns, "doomed")}
        sandboxes = {item["metadata"]["name"]: item for item in kube.sandboxes(ns)}
        return all(uid in pods and not pods[uid]["metadata"].get("deletionTimestamp")
                   and controlled_only_by(pods[uid], sandboxes[name])
                   and sandboxes[name]["status"]["phase"] == "Ready" for name, uid in warm.items())
    consistently(claimed_pods_stay, 5, message="every claimed pod kept by its Ready Sandbox")
    for name in ready:
        pod_name = statuses[name]["podName"]
        policy = (constants.pool_pod_network_policy_name(pod_name) if name in warm
                  else constants.network_policy_name(name))
        assert network_policy(kube, ns, policy) is not None, f"{name}'s policy {policy}"
    assert_one_owner_each(kube, ns, pool)


# --------------------------------------------------------------------------------------------------------------
# 6. the NetworkPolicy at every moment, from a canary pod

PROBE_PORT = 8080
STOP_FILE = "/tmp/listener-stop"
NEVER = "/nonexistent/never"
AFTER_READY_SECONDS = 5
# A TCP server that prints every peer it accepts, until the file argv[2] exists.
LISTENER = (
    "import os, socket, sys\n"
    "port, stop = int(sys.argv[1]), sys.argv[2]\n"
    "server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "server.bind(('0.0.0.0', port)); server.listen(128); server.settimeout(0.2)\n"
    "while not os.path.exists(stop):\n"
    "    try:\n"
    "        conn, (host, _) = server.accept()\n"
    "    except TimeoutError:\n"
    "        continue\n"
    "    conn.close()\n"
    "    print('accepted', host, flush=True)\n"
)
CONNECT = "import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()\n"
# Connects to each target (NAME,HOST,PORT,THREADS,PAUSE) in a loop and prints "NAME OUTCOME" for every attempt.
CANARY = (
    "import socket, sys, threading, time\n"
    "lock = threading.Lock()\n"
    "def probe(name, host, port, pause):\n"
    "    while True:\n"
    "        try:\n"
    "            socket.create_connection((host, port), timeout=0.25).close()\n"
    "            outcome = 'connected'\n"
    "        except OSError as error:\n"
    "            outcome = type(error).__name__\n"
    "        with lock:\n"
    "            print(name, outcome, flush=True)\n"
    "        time.sleep(pause)\n"
    "for target in sys.argv[1:]:\n"
    "    name, host, port, threads, pause = target.split(',')\n"
    "    for _ in range(int(threads)):\n"
    "        threading.Thread(target=probe, args=(name, host, int(port), float(pause))).start()\n"
)


def plain_pod(name: str, image: str, argv: Sequence[str]) -> client.V1Pod:
    """A pod that no NetworkPolicy selects (no label of the operator's), from an image already on the node, fit
    for Pod Security "restricted"."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(
            restart_policy="Never", termination_grace_period_seconds=0, automount_service_account_token=False,
            enable_service_links=False,
            containers=[client.V1Container(
                name="main", image=image, image_pull_policy="Never", command=list(argv),
                resources=client.V1ResourceRequirements(limits={"cpu": "200m", "memory": "64Mi"}),
                security_context=client.V1SecurityContext(
                    allow_privilege_escalation=False, run_as_non_root=True, run_as_user=1000,
                    capabilities=client.V1Capabilities(drop=["ALL"]),
                    seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault")))]))


def start_plain_pod(kube: Kube, namespace: str, name: str, image: str, argv: Sequence[str]) -> str:
    """Starts :func:`plain_pod` and returns its IP once it runs."""
    kube.core.create_namespaced_pod(namespace, plain_pod(name, image, argv))

    def running() -> str | None:
        status = (kube.pod(namespace, name) or {}).get("status") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), f"pod {name} ended: {status}"
        return status.get("podIP") if status.get("phase") == "Running" else None
    return wait_until(running, 60, message=f"pod {name} running")


def canary_outcomes(kube: Kube, namespace: str) -> collections.Counter[tuple[str, str]]:
    """How often the canary saw each (target, outcome)."""
    log: str = kube.core.read_namespaced_pod_log("canary", namespace)
    seen: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in log.splitlines():
        match line.split():
            case [target, outcome]:
                seen[(target, outcome)] += 1
    return seen


def attempts(outcomes: collections.Counter[tuple[str, str]], target: str) -> int:
    return sum(count for (name, _), count in outcomes.items() if name == target)


def listening(cluster: Cluster, namespace: str, pod: str) -> bool:
    """Whether the listener in ``pod`` accepts on its loopback (which no NetworkPolicy filters)."""
    return cluster.pod_exec(namespace, pod, "python3", "-c", CONNECT, "127.0.0.1", str(PROBE_PORT)).returncode == 0


def test_the_pod_is_behind_a_deny_all_policy_at_every_moment(sbx_env: SandboxEnv) -> None:
    """A canary pod connects in a loop to a listener in the pool pod, before, during and after the claim, then
    after the pool (and its policy) are gone: it never gets through. It does get through to the same listener in
    a pod no policy selects, so the probe itself works."""
    env, kube, ns, cluster = sbx_env, sbx_env.kube, sbx_env.namespace, sbx_env.cluster
    env.start()
    _, [pod] = ready_pool(kube, ns, "guarded", 1)
    name, address = pod["metadata"]["name"], pod["status"]["podIP"]

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as executor:
        # A raw `kubectl exec` as the cluster's admin: its processes are outside the sandbox's init's reach.
        listener = executor.submit(cluster.pod_exec, ns, name, "python3", "-c", LISTENER, str(PROBE_PORT),
                                   STOP_FILE, timeout=300)
        try:
            wait_until(lambda: listening(cluster, ns, name), 30, message="the listener in the pool pod")
            control = start_plain_pod(kube, ns, "control", env.image,
                                      ["python3", "-c", LISTENER, str(PROBE_PORT), NEVER])
            # Three threads at the pool pod, as tight as a refused connection allows; one at the control.
            start_plain_pod(kube, ns, "canary", env.image, ["python3", "-c", CANARY,
                                                             f"pool,{address},{PROBE_PORT},3,0.02",
                                                             f"control,{control},{PROBE_PORT},1,0.2"])
            wait_until(lambda: (seen := canary_outcomes(kube, ns))[("control", "connected")] >= 1
                       and attempts(seen, "pool") >= 10, 60,
                       message=lambda: f"the canary through to the control listener: {canary_outcomes(kube, ns)}")

            kube.create(ns, "claimer", pooled("guarded"))
            status = kube.wait_phase(ns, "claimer", "Ready", timeout=CLAIM_READY_TIMEOUT)
            assert status["podName"] == name, "not a warm claim of the listener's pod: nothing is proved"
            at_ready = canary_outcomes(kube, ns)
            consistently(lambda: canary_outcomes(kube, ns)[("pool", "connected")] == 0, AFTER_READY_SECONDS,
                         message="no connection to the claimed pod")

            # Without the pool, the pod's own policy covers it alone.
            kube.delete_pool(ns, "guarded")
            wait_until(lambda: network_policy(kube, ns, constants.pool_network_policy_name("guarded")) is None, 60,
                       message="the pool's policy gone")
            consistently(lambda: canary_outcomes(kube, ns)[("pool", "connected")] == 0, AFTER_READY_SECONDS,
                         message="no connection to the claimed pod without the pool's policy")
            assert listening(cluster, ns, name), "the listener died: refused connections would prove nothing"
        finally:
            cluster.pod_exec(ns, name, "touch", STOP_FILE)
        accepted = listener.result(timeout=30)

    peers = [line.split()[1] for line in accepted.stdout.splitlines() if line.startswith("accepted")]
    assert "127.0.0.1" in peers, f"the listener's output: {accepted.stdout!r} {accepted.stderr!r}"
    assert [peer for peer in peers if peer != "127.0.0.1"] == [], "the listener accepted a connection from outside"
    final = canary_outcomes(kube, ns)
    print(f"canary: {dict(final)}")
    assert final[("pool", "connected")] == 0
    assert attempts(final, "pool") > attempts(at_ready, "pool"), "the canary stopped probing the pod"
    assert final[("control", "connected")] > at_ready[("control", "connected")], "the canary stopped working"
    assert kube.status(ns, "claimer")["podUID"] == pod["metadata"]["uid"]


# --------------------------------------------------------------------------------------------------------------
# 7. hostile overrides


@pytest.fixture(scope="module")
def unserved_namespace(cluster: Cluster, kube: Kube, sandbox_crd: None) -> Iterator[str]:
    """A namespace no operator serves: what is stored there stays as it was written."""
    name = cluster.create_namespace("sbxpoolcrd")
    yield name
    kube.drop_namespace(name, operator_running=False)


def refusal(call: Callable[[], Any]) -> str:
    """The API server's message refusing ``call`` with 422."""
    with pytest.raises(ApiException) as error:
        call()
    assert error.value.status == 422, error.value.body
    return api_message(error.value)


@pytest.mark.parametrize(("field", "override"), [
    ("spec.image", {"image": constants.SANDBOX_IMAGE}),
    ("spec.env", {"env": [{"name": "GREETING", "value": "hello"}]}),
    ("spec.resources", {"resources": SMALL}),
    ("spec.timeouts.commandSeconds", {"timeouts": {"commandSeconds": 60}}),
], ids=["image", "env", "resources", "command-seconds"])
def test_overrides_a_running_pod_cannot_take_are_refused(kube: Kube, unserved_namespace: str, field: str,
                                                         override: JSON) -> None:
    message = refusal(lambda: kube.create(unserved_namespace, "hostile", pooled("any", **override), dry_run="All"))
    assert f"{field} cannot be set together with spec.poolRef" in message, message


@pytest.mark.parametrize(("field", "key"), [
    ("podLabels", constants.LABEL_POOL),
    ("podLabels", constants.LABEL_SANDBOX),
    ("podAnnotations", constants.ANNOTATION_CLAIMED_AT),
], ids=["pool-label", "sandbox-label", "claimed-at-annotation"])
def test_reserved_keys_are_refused_on_a_pooled_sandbox(kube: Kube, unserved_namespace: str, field: str,
                                                       key: str) -> None:
    """A tenant cannot put its pod into another pool's or Sandbox's policy selection, nor forge the claim."""
    message = refusal(lambda: kube.create(unserved_namespace, "relabel", pooled("any", **{field: {key: "other"}}),
                                          dry_run="All"))
    assert f"spec.{field}" in message and "reserved" in message, message


def test_pool_ref_cannot_be_changed_added_or_removed(kube: Kube, unserved_namespace: str) -> None:
    kube.create(unserved_namespace, "fixed", pooled("first"))
    kube.create(unserved_namespace, "plain", {})
    for name, patch in (("fixed", {"poolRef": {"name": "second"}}), ("fixed", {"poolRef": None}),
                        ("plain", {"poolRef": {"name": "first"}})):
        message = refusal(functools.partial(kube.patch, unserved_namespace, name, {"spec": patch}))
        assert "spec.poolRef is immutable" in message, (name, patch, message)
    assert (kube.get(unserved_namespace, "fixed") or {})["spec"]["poolRef"] == {"name": "first"}


def test_a_sandbox_of_a_missing_pool_fails_naming_the_field(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create(ns, "orphan", pooled("nowhere"))
    status = kube.wait_phase(ns, "orphan", "Failed", timeout=60)
    assert status["reason"] == "InvalidSpec", status
    assert "spec.poolRef.name" in status["message"] and "nowhere" in status["message"], status
    kube.wait_event(ns, "orphan", "InvalidSpec")
    assert kube.pods(ns) == [] and kube.pod(ns, constants.pod_name("orphan")) is None

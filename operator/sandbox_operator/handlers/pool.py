"""Warm pools: every SandboxPool keeps ``spec.size`` ready, unclaimed pods of its template, and a Sandbox with
``spec.poolRef`` takes one in a single conditional write (docs/pools.md).

A pool has no finalizer: garbage collection removes a deleted pool's unclaimed pods and its policy (the pool is
their controller) and never a claimed pod (its controller is its Sandbox). The refill is level-based, one pass
at a time per pool, driven by the pool's events, its pods' events and a periodic check for what only time
changes (maximum age, pods that never start). A claim never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.builders.pool import (
    build_pool_network_policy,
    build_pool_pod,
    build_pool_pod_network_policy,
    build_pool_status,
    choose_pod,
    claim_patch,
    claimed_pod_of,
    is_claimable,
    is_unclaimed_pod_of,
    plan_refill,
    template_hash,
)
from sandbox_operator.builders.status import status_patch
from sandbox_operator.handlers.errors import counted
from sandbox_operator.handlers.reconcile import post_event
from sandbox_operator.handlers.runtime import PoolRefill, Runtime, failpoint, runtime, utcnow
from sandbox_operator.handlers.uids import Key, PodUids, UidRangeExhausted, pod_run_as_users
from sandbox_operator.k8s.api import JSON, Adoption, api_message, controlled_by, controller_of
from sandbox_operator.metrics import POOL_CLAIMS, POOL_PODS
from sandbox_operator.models.conditions import CONDITION_READY
from sandbox_operator.models.effective import EffectiveSpec, resolve
from sandbox_operator.models.pool import SandboxPool, spec_with_overrides
from sandbox_operator.models.sandbox import InvalidSpecError, Sandbox

logger = logging.getLogger(__name__)

POOL_RESOURCE = (constants.GROUP, constants.VERSION, constants.POOL_PLURAL)
POOL_POD_LABELS: dict[str, Any] = {constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
                                   constants.LABEL_POOL: kopf.PRESENT}
UNSEEN_PATIENCE = 60.0  # seconds a created pod counts before the watch delivers it
# Starting pods is the node's heaviest work (the runtime, the kubelet): a refill that starts right after a claim
# competes with the claims still coming in a burst, so it waits this long after the latest claim (once per pass).
REFILL_AFTER_CLAIM = 0.5
CLAIM_ATTEMPTS = 5
_NAME_ALPHABET = string.ascii_lowercase + string.digits


# --------------------------------------------------------------------------------------------------------------
# The watches


@kopf.index("", "v1", "pods", labels=POOL_POD_LABELS, id="pool_pods")
def pool_pods(body: kopf.Body, **_: Any) -> dict[Key, JSON]:
    """Every pod a pool started, claimed or not, by (namespace, pool): claims choose from it without a read."""
    meta = body.get("metadata") or {}
    return {(str(meta.get("namespace")), str((meta.get("labels") or {})[constants.LABEL_POOL])): dict(body)}


POOL_POD_POLICY_LABELS: dict[str, Any] = {constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
                                          constants.LABEL_POOL_POD: kopf.PRESENT}


@kopf.index("networking.k8s.io", "v1", "networkpolicies", labels=POOL_POD_POLICY_LABELS, id="pool_pod_policies")
def pool_pod_policies(body: kopf.Body, **_: Any) -> dict[str, str]:
    """Pool pods' own deny-all policies, by the UID of the pod that controls them: a pod is claimable only once
    its policy exists."""
    meta = body.get("metadata") or {}
    owner = controller_of(body)
    return {str(owner.get("uid")): str(meta.get("name"))} if owner.get("kind") == "Pod" else {}


def keep_pool_index(rt: Runtime, pods: Any, policies: Any = None) -> None:
    """Keeps kopf's live pool indexes on the runtime (kopf hands indexes only to handlers)."""
    if rt.pool_pods is None and pods is not None:
        rt.pool_pods = pods
    if rt.pool_pod_policies is None and policies is not None:
        rt.pool_pod_policies = policies


@kopf.on.event(*POOL_RESOURCE, id="pool-events")
@counted("pool-events")
async def pool_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                     pool_pods: Any = None, pool_pod_policies: Any = None, sandbox_pod_uids: PodUids | None = None,
                     **_: Any) -> None:
    rt = runtime(memo)
    keep_pool_index(rt, pool_pods, pool_pod_policies)
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    if type == "DELETED":
        rt.forget_pool(key)
        for state in ("ready", "starting"):
            with contextlib.suppress(KeyError):
                POOL_PODS.remove(*key, state)
        return
    rt.remember_pool(dict(body))
    _ensure_ticker(rt, sandbox_pod_uids)
    await refill(rt, key, sandbox_pod_uids or {}, logger)


@kopf.on.event("", "v1", "pods", labels=POOL_POD_LABELS, id="pool-pod-events")
@counted("pool-pod-events")
async def pool_pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                         pool_pods: Any = None, pool_pod_policies: Any = None,
                         sandbox_pod_uids: PodUids | None = None, **_: Any) -> None:
    """Any change of a pool's pod refills the pool (and updates its counts)."""
    rt = runtime(memo)
    keep_pool_index(rt, pool_pods, pool_pod_policies)
    meta = body.get("metadata") or {}
    namespace = str(meta.get("namespace"))
    key = (namespace, str((meta.get("labels") or {})[constants.LABEL_POOL]))
    if type == "DELETED":
        rt.uids.release((namespace, str(meta.get("name"))))
        rt.picked_pool_pods.discard(str(meta.get("uid")))
        rt.covered_pool_pods.discard(str(meta.get("uid")))
    if rt.latest_pool(key) is not None:
        await refill(rt, key, sandbox_pod_uids or {}, logger)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=POOL_POD_LABELS, id="pool-policy-guard")
@counted("pool-policy-guard")
async def pool_policy_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                            sandbox_pod_uids: PodUids | None = None, **_: Any) -> None:
    """A pool's deny-all policy deleted out of band is recreated at once (its pods must never run without it)."""
    if type != "DELETED":
        return
    rt = runtime(memo)
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str((meta.get("labels") or {})[constants.LABEL_POOL]))
    state = rt.refills.get(key)
    if rt.latest_pool(key) is None or state is None:
        return
    # Read the pool again: garbage collection deletes the policy of a pool that is gone, which this process may
    # not have heard of yet.
    pool_body = await asyncio.to_thread(rt.api.get_pool, *key)
    if pool_body is None or (pool_body.get("metadata") or {}).get("deletionTimestamp") \
            or not controlled_by(body, (pool_body.get("metadata") or {}).get("uid")):
        return
    state.policy_for = None
    await refill(rt, key, sandbox_pod_uids or {}, logger)
    if state.policy_for == (pool_body.get("metadata") or {}).get("uid"):
        post_event(pool_body, "Warning", "NetworkPolicyRecreated",
                   "the pool's deny-all NetworkPolicy was deleted outside the operator and has been recreated")


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=POOL_POD_POLICY_LABELS,
               id="pool-pod-policy-guard")
@counted("pool-pod-policy-guard")
async def pool_pod_policy_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                                pool_pods: Any = None, pool_pod_policies: Any = None, **_: Any) -> None:
    """A pool pod's own policy deleted out of band is recreated at once while the pod lives (claimed or not)."""
    if type != "DELETED":
        return
    rt = runtime(memo)
    keep_pool_index(rt, pool_pods, pool_pod_policies)
    meta = body.get("metadata") or {}
    pod_uid = str(controller_of(body).get("uid"))
    rt.covered_pool_pods.discard(pod_uid)
    key = (str(meta.get("namespace")), str((meta.get("labels") or {}).get(constants.LABEL_POOL)))
    pod = next((pod for pod in rt.pods_of_pool(key) if (pod.get("metadata") or {}).get("uid") == pod_uid), None)
    if pod is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return
    if await _ensure_pod_policy(rt, pod, logger):
        logger.warning("recreated the NetworkPolicy of pool pod %s", (pod.get("metadata") or {}).get("name"))
        owner = rt.latest_pool(key)
        sandbox = (pod["metadata"].get("labels") or {}).get(constants.LABEL_SANDBOX)
        if sandbox:
            owner = rt.latest((key[0], str(sandbox)))
        if owner is not None:
            post_event(owner, "Warning", "NetworkPolicyRecreated",
                       f"the deny-all NetworkPolicy of pod {pod['metadata'].get('name')} was deleted outside the "
                       "operator and has been recreated")


async def _ensure_pod_policy(rt: Runtime, pod: Mapping[str, Any], log: logging.Logger | kopf.Logger) -> bool:
    """A pool pod's own deny-all policy (it controls it); True when it exists for this very pod."""
    uid = str((pod.get("metadata") or {}).get("uid"))
    result = await asyncio.to_thread(rt.api.create_network_policy, build_pool_pod_network_policy(pod), uid)
    if result.outcome in (Adoption.CREATED, Adoption.EXISTING):
        rt.covered_pool_pods.add(uid)
        return True
    log.warning("the NetworkPolicy name of pool pod %s is taken (%s); the pod is not handed out",
                (pod.get("metadata") or {}).get("name"), result.outcome.value)
    return False


def _ensure_ticker(rt: Runtime, pod_uids: PodUids | None) -> None:
    if rt.pool_ticker is None or rt.pool_ticker.done():
        rt.pool_ticker = asyncio.get_running_loop().create_task(_tick(rt, pod_uids or {}))


async def _tick(rt: Runtime, pod_uids: PodUids) -> None:
    """Refills every known pool now and then: maximum age and start timeouts change with time alone."""
    while True:
        await asyncio.sleep(rt.settings.pool_check_interval_seconds)
        for key in rt.known_pools():
            try:
                await refill(rt, key, pod_uids, logger)
            except Exception:  # the next tick or event tries again
                logger.exception("the periodic refill of pool %s/%s failed", *key)


# --------------------------------------------------------------------------------------------------------------
# Refill


async def refill(rt: Runtime, key: Key, pod_uids: PodUids, log: logging.Logger | kopf.Logger) -> None:
    """Brings the pool to its size and its status up to date. One pass at a time per pool; news arriving during
    a pass (the pass's own creates, a claim) makes one more pass after it."""
    state = rt.refills.setdefault(key, PoolRefill())
    state.again = True
    if state.running:
        return
    state.running = True
    try:
        while state.again:
            state.again = False
            try:
                await _refill_pass(rt, key, state, pod_uids, log)
            except ApiException as error:
                log.warning("refilling pool %s/%s failed: %s", *key, api_message(error))
    finally:
        state.running = False


def _pool_pods_now(rt: Runtime, key: Key, state: PoolRefill) -> list[JSON]:
    """The pool's pods from the watch, plus those this process created that the watch has not delivered yet."""
    pods = {str((pod.get("metadata") or {}).get("uid")): pod for pod in rt.pods_of_pool(key)}
    now = time.monotonic()
    for uid, (pod, created) in list(state.unseen.items()):
        if uid in pods or now - created > UNSEEN_PATIENCE:
            del state.unseen[uid]
        else:
            pods[uid] = pod
    return list(pods.values())


def pool_template_hash(rt: Runtime, pool: SandboxPool, spec: EffectiveSpec) -> str:
    """The pool's template hash, computed once per pool version."""
    state = rt.refills.setdefault((pool.namespace, pool.name), PoolRefill())
    version = f"{pool.metadata.uid}/{pool.metadata.generation}"
    if state.template is None or state.template[0] != version:
        state.template = (version, template_hash(pool, spec, rt.settings))
    return state.template[1]


async def _refill_pass(rt: Runtime, key: Key, state: PoolRefill, pod_uids: PodUids,
                       log: logging.Logger | kopf.Logger) -> None:
    body = rt.latest_pool(key)
    if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    try:
        pool = SandboxPool.from_body(body)
    except InvalidSpecError as error:
        log.warning("pool %s/%s has an invalid spec: %s", *key, error)
        return
    try:
        spec = resolve(pool.spec.template, rt.settings)
    except InvalidSpecError as error:
        await _write_pool_status(rt, pool, body, None, f"spec.template: {error}")
        return
    pod_hash = pool_template_hash(rt, pool, spec)
    if not await _ensure_pool_policy(rt, pool, body, state, log):
        return
    plan = plan_refill(pool, _pool_pods_now(rt, key, state), pod_template_hash=pod_hash, now=utcnow())
    settle = state.last_claim + REFILL_AFTER_CLAIM - time.monotonic()
    if plan.create and settle > 0:
        await asyncio.sleep(settle)
        plan = plan_refill(pool, _pool_pods_now(rt, key, state), pod_template_hash=pod_hash, now=utcnow())
    for victim in plan.delete:
        deleted = await asyncio.to_thread(rt.api.delete_pod, pool.namespace, victim.name, victim.uid,
                                          rt.settings.termination_grace_seconds, victim.resource_version)
        if deleted and victim.reason != "Excess":
            post_event(body, "Normal", "PodReplaced", f"replacing pod {victim.name}: {victim.reason}")
    if plan.create:
        created = await asyncio.gather(*(_create_pool_pod(rt, pool, spec, pod_hash, pod_uids)
                                         for _ in range(plan.create)), return_exceptions=True)
        for result in created:
            if isinstance(result, BaseException):
                message = api_message(result) if isinstance(result, ApiException) else str(result)
                log.warning("creating a pod of pool %s/%s failed: %s", *key, message)
                post_event(body, "Warning", "PodCreateFailed", f"creating a pod of the pool failed: {message}")
                break
        for result in created:
            if isinstance(result, dict):
                state.unseen[str(result["metadata"]["uid"])] = (result, time.monotonic())
    pods = _pool_pods_now(rt, key, state)
    covered = rt.covered_pods()
    uncovered = [pod for pod in pods if is_unclaimed_pod_of(pool, pod)
                 and str((pod.get("metadata") or {}).get("uid")) not in covered
                 and constants.LABEL_POOL_POD in ((pod.get("metadata") or {}).get("labels") or {})
                 and not (pod.get("metadata") or {}).get("deletionTimestamp")]
    if uncovered:  # a pod whose policy was not made (the operator stopped in between, an error)
        await asyncio.gather(*(_ensure_pod_policy(rt, pod, log) for pod in uncovered))
    await _write_pool_status(rt, pool, body, pod_hash, None, pods=pods)


async def _ensure_pool_policy(rt: Runtime, pool: SandboxPool, body: JSON, state: PoolRefill,
                              log: logging.Logger | kopf.Logger) -> bool:
    """The pool's deny-all policy, before any of its pods; False when it cannot be made now."""
    if state.policy_for == pool.metadata.uid:
        return True
    result = await asyncio.to_thread(rt.api.create_network_policy, build_pool_network_policy(pool),
                                     str(pool.metadata.uid))
    if result.outcome is Adoption.FOREIGN:
        message = (f"a NetworkPolicy named {constants.pool_network_policy_name(pool.name)} already exists and is "
                   "not this pool's; no pod is started until it is removed")
        post_event(body, "Warning", "NameConflict", message)
        log.warning(message)
        return False
    if result.outcome is Adoption.STALE:
        log.info("the policy of an earlier pool %s is still being deleted", pool.name)
        return False
    state.policy_for = pool.metadata.uid
    return True


async def _create_pool_pod(rt: Runtime, pool: SandboxPool, spec: EffectiveSpec, pod_hash: str,
                           pod_uids: PodUids) -> JSON | None:
    """One pod for the pool, with a name picked here so its host UID can be reserved under it first, then the
    pod's own deny-all policy (the pool's covers the pod until then; the pod is not claimable before)."""
    token = "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))
    name = constants.pool_pod_name(pool.name, token)
    reservation = (pool.namespace, name)
    if rt.settings.host_users_off(spec.runtime_class_name):
        run_as_user = constants.SANDBOX_UID
    else:
        try:
            run_as_user = rt.uids.allocate(reservation, pod_uids)
        except UidRangeExhausted:
            rt.uids.release(reservation)
            raise
    pod = build_pool_pod(pool, spec, rt.settings, run_as_user=run_as_user, pod_template_hash=pod_hash,
                         now=utcnow(), token=token)
    try:
        created = await asyncio.to_thread(rt.api.create_pool_pod, pod)
    except BaseException:
        rt.uids.release(reservation)
        raise
    if created is None:
        rt.uids.release(reservation)
        return None
    await _ensure_pod_policy(rt, created, logger)
    return created


async def _write_pool_status(rt: Runtime, pool: SandboxPool, body: JSON, pod_hash: str | None,
                             invalid: str | None, *, pods: list[JSON] | None = None) -> None:
    status = build_pool_status(pool, pods or [], pod_template_hash=pod_hash, now=utcnow(), invalid_spec=invalid)
    for state, count in (("ready", status.ready_count), ("starting", status.starting_count)):
        POOL_PODS.labels(pool.namespace, pool.name, state).set(count)
    old: dict[str, Any] = dict(body.get("status") or {})
    patch = status_patch(old, status.model_dump(mode="json", by_alias=True, exclude_none=True))
    if not patch:
        return
    written = await asyncio.to_thread(rt.api.patch_pool_status, pool.namespace, pool.name, patch)
    if written is None:
        return
    rt.remember_pool(written)
    before, after = pool.status.condition(CONDITION_READY), status.condition(CONDITION_READY)
    if after is not None and (before is None or before.reason != after.reason):
        post_event(body, "Warning" if after.reason == "InvalidSpec" else "Normal", after.reason,
                   after.message or after.reason)


# --------------------------------------------------------------------------------------------------------------
# The claim


async def pooled_spec(rt: Runtime, sandbox: Sandbox) -> tuple[SandboxPool, EffectiveSpec]:
    """The pool a Sandbox names and what the Sandbox runs: the pool's template with its overrides, resolved
    against the operator's settings. Raises :class:`InvalidSpecError` naming the field (a missing pool too)."""
    ref = sandbox.spec.pool_ref
    assert ref is not None
    body = rt.latest_pool((sandbox.namespace, ref.name))
    if body is None:
        body = await asyncio.to_thread(rt.api.get_pool, sandbox.namespace, ref.name)
    if body is None:
        raise InvalidSpecError(f"spec.poolRef.name: there is no SandboxPool named {ref.name!r} in namespace "
                               f"{sandbox.namespace}")
    try:
        pool = SandboxPool.from_body(body)
    except InvalidSpecError as error:
        raise InvalidSpecError(f"spec.poolRef.name: SandboxPool {ref.name!r} is invalid: {error}") from None
    spec = resolve(spec_with_overrides(pool.spec.template, sandbox.spec), rt.settings)
    rt.set_pool_template((sandbox.namespace, sandbox.name), pool.spec.template)
    return pool, spec


def _claim_write(rt: Runtime, namespace: str, pod_name: str, patch: Mapping[str, Any]) -> JSON | None:
    claimed = rt.api.patch_pod(namespace, pod_name, patch)
    if claimed is not None:
        failpoint(rt.settings, "after-pod-claim")
    return claimed


async def claim_pod(rt: Runtime, sandbox: Sandbox, pool: SandboxPool, spec: EffectiveSpec,
                    log: logging.Logger | kopf.Logger) -> JSON | None:
    """Hands one of the pool's ready pods to the Sandbox, or returns None when the pool has none to give.

    A pod an earlier run of this claim already took (the operator stopped after the write) is returned as it is.
    Otherwise the oldest claimable pod is taken with one conditional write; when another writer changed it
    first (409), the pod is read again and taken if still claimable, else the next one is tried."""
    key = (sandbox.namespace, pool.name)
    pods = rt.pods_of_pool(key)
    earlier = claimed_pod_of(sandbox, pods)
    if earlier is not None:
        return dict(earlier)
    pod_hash = pool_template_hash(rt, pool, resolve(pool.spec.template, rt.settings))
    candidate: Mapping[str, Any] | None = None
    for _ in range(CLAIM_ATTEMPTS):
        now = utcnow()
        if candidate is None:
            candidate = choose_pod(pool, pods, pod_template_hash=pod_hash, now=now, taken_uids=rt.picked_pool_pods,
                                   covered_uids=rt.covered_pods())
        if candidate is None:
            return None
        meta = candidate.get("metadata") or {}
        name, uid = str(meta.get("name")), str(meta.get("uid"))
        rt.picked_pool_pods.add(uid)
        patch = claim_patch(sandbox, candidate, spec, now=now)
        candidate = None
        try:
            claimed = await asyncio.to_thread(_claim_write, rt, sandbox.namespace, name, patch)
        except ApiException as error:
            if error.status not in (409, 422):
                rt.picked_pool_pods.discard(uid)
                raise
            log.info("pod %s changed before the claim's write (%s); looking again", name, api_message(error))
            fresh = await asyncio.to_thread(rt.api.get_pod, sandbox.namespace, name)
            if fresh is not None and claimed_pod_of(sandbox, [fresh]) is not None:
                _record_claim(rt, sandbox, fresh)  # this claim's own earlier write got through
                return fresh
            if fresh is not None and is_claimable(pool, fresh, pod_template_hash=pod_hash, now=utcnow()) \
                    and uid in rt.covered_pods():
                candidate = fresh
            continue
        if claimed is None:
            continue
        _record_claim(rt, sandbox, claimed)
        return claimed
    return None


def _record_claim(rt: Runtime, sandbox: Sandbox, pod: JSON) -> None:
    """The claimed pod's host UID now belongs to the Sandbox (it was reserved under the pod's own name)."""
    key = (sandbox.namespace, sandbox.name)
    if not rt.settings.host_users_off(pod["spec"].get("runtimeClassName")):
        for uid in pod_run_as_users(pod):
            rt.uids.adopt(key, uid)
        rt.uids.release((sandbox.namespace, str(pod["metadata"]["name"])))
    POOL_CLAIMS.labels("warm").inc()
    state = rt.refills.get((sandbox.namespace, str((pod["metadata"].get("labels") or {}).get(constants.LABEL_POOL))))
    if state is not None:
        state.last_claim = time.monotonic()

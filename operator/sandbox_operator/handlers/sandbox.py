"""Sandbox lifecycle: create (and resume after a restart), update of mutable fields, delete.

Creation order: the deny-all NetworkPolicy, then the pod, then the status. Every step is idempotent: children
have deterministic names, a 409 means "already there" (adopted when its controller is this Sandbox), so a
handler re-run after a crash at any point converges to exactly one pod and one policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client import ApiException
from pydantic import ValidationError

from sandbox_operator import constants
from sandbox_operator.builders.meta import child_labels
from sandbox_operator.builders.network_policy import build_network_policy
from sandbox_operator.builders.pod import build_pod
from sandbox_operator.builders.pool import claimed_pod_of
from sandbox_operator.builders.status import Verdict
from sandbox_operator.handlers.errors import counted
from sandbox_operator.handlers.pool import claim_pod, keep_pool_index, pooled_spec
from sandbox_operator.handlers.reconcile import post_event, sync_status
from sandbox_operator.handlers.runtime import Runtime, failpoint, runtime, utcnow
from sandbox_operator.handlers.uids import Key, PodUids, UidRangeExhausted, has_pod, pod_run_as_users
from sandbox_operator.k8s.api import JSON, Adoption, ChildResult, api_message, controlled_by
from sandbox_operator.metrics import POOL_CLAIM_SECONDS, POOL_CLAIMS
from sandbox_operator.models.effective import EffectiveSpec, effective_timeouts, resolve
from sandbox_operator.models.pool import SandboxPool
from sandbox_operator.models.sandbox import (
    TERMINAL_PHASES,
    InvalidSpecError,
    Sandbox,
    SandboxSpec,
    immutable_violations,
)

RESOURCE = (constants.GROUP, constants.VERSION, constants.PLURAL)
STALE_CHILD_RETRY = 2.0
UID_RETRY = 30.0
POD_TERMINATION_PATIENCE = 30.0  # seconds past the pod's grace period before deletion stops waiting for it
POD_WAIT_SLACK = 10.0


class _Refused(Exception):  # noqa: N818 - a verdict, not an error
    """A terminal outcome found while creating children (reported after the Sandbox's lock is released)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


async def _fail(rt: Runtime, sandbox: Sandbox, reason: str, message: str, logger: kopf.Logger) -> None:
    """Records a terminal failure, then stops kopf from retrying (no hot loop)."""
    await sync_status(rt, sandbox.namespace, sandbox.name, override=Verdict("Failed", reason, message), log=logger)
    raise kopf.PermanentError(f"{reason}: {message}")


async def _create_child(what: str, create: Callable[[], Awaitable[ChildResult]], logger: kopf.Logger) -> JSON:
    result = await create()
    if result.outcome is Adoption.FOREIGN:
        raise _Refused("NameConflict", f"a {what} named {result.body['metadata']['name']} already exists and is "
                       "not this Sandbox's; delete it or choose another name")
    if result.outcome is Adoption.STALE:
        raise kopf.TemporaryError(f"the {what} of an earlier Sandbox of this name is still being deleted",
                                  delay=STALE_CHILD_RETRY)
    if result.outcome is Adoption.EXISTING:
        logger.info("adopted the existing %s (a re-run after an interruption)", what)
    return result.body


async def ensure_sandbox(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, pod_uids: PodUids | None) -> None:
    """Creates whatever is missing; safe to run any number of times. ``pod_uids`` is the index of the host UIDs
    sandbox pods run as (kopf always passes its indexes; the handlers' default only fits kopf's typed protocol)."""
    if pod_uids is None:
        raise RuntimeError("the sandbox_pod_uids index was not passed to the handler")
    rt = runtime(memo)
    raw: JSON = dict(body)
    rt.remember(raw)
    try:
        sandbox = Sandbox.from_body(raw)
    except InvalidSpecError as error:
        await _fail(rt, Sandbox.shell_from_body(raw), "InvalidSpec", str(error), logger)
        return
    if sandbox.status.phase in TERMINAL_PHASES or sandbox.metadata.deletion_timestamp is not None:
        return
    try:
        pool, spec = await run_spec(rt, sandbox)
    except InvalidSpecError as error:
        await _fail(rt, sandbox, "InvalidSpec", str(error), logger)
        return
    try:
        children = await make_children(rt, sandbox, spec, pool, pod_uids, logger)
    except _Refused as refused:
        await _fail(rt, sandbox, refused.reason, refused.message, logger)
        return
    except UidRangeExhausted as exhausted:
        await sync_status(rt, sandbox.namespace, sandbox.name,
                          override=Verdict("Pending", "UidRangeExhausted", str(exhausted)), log=logger)
        raise kopf.TemporaryError(str(exhausted), delay=UID_RETRY) from None
    await sync_status(rt, sandbox.namespace, sandbox.name, pod_body=children.pod, log=logger)


async def run_spec(rt: Runtime, sandbox: Sandbox) -> tuple[SandboxPool | None, EffectiveSpec]:
    """What the Sandbox runs and, with poolRef, the pool it comes from. A Sandbox that already has its pod keeps
    running if its pool went away since (then it is treated as its own spec). Raises :class:`InvalidSpecError`."""
    if sandbox.spec.pool_ref is None:
        return None, resolve(sandbox.spec, rt.settings)
    try:
        return await pooled_spec(rt, sandbox)
    except InvalidSpecError:
        if sandbox.status.pod_uid:
            return None, resolve(sandbox.spec, rt.settings)
        raise


@dataclass(frozen=True)
class Children:
    pod: JSON | None
    """The pod, if this call made, claimed or adopted it."""
    claimed: bool
    """A pool pod was claimed: it is usually ready, and its status is worth writing at once."""


def claimed_from_pool(pod_name: str | None) -> bool:
    """Whether a Sandbox's recorded pod is a claimed pool pod: a Sandbox's own pod has its name, which has no dot,
    and a pool pod's name always has one."""
    return bool(pod_name) and "." in str(pod_name)


async def make_children(rt: Runtime, sandbox: Sandbox, spec: EffectiveSpec, pool: SandboxPool | None,
                        pod_uids: PodUids, logger: kopf.Logger) -> Children:
    """The deny-all policy, then the pod unless one was recorded; with a pool, a claimed pool pod if there is
    one, else a cold one (policy and pod, as without a pool). Under the Sandbox's lock, so a pod event cannot
    sync the status halfway through; once this process has made the children of this very Sandbox, a second call
    makes no API call.

    A claimed pod needs no policy of the Sandbox's: its own deny-all policy, which the pod controls, existed
    before the claim and lives as long as the pod. So the claim is the only write on the way to Ready."""
    key = (sandbox.namespace, sandbox.name)
    async with rt.lock(key):
        if rt.children_made(key, sandbox.metadata.uid):
            return Children(None, claimed=False)
        if pool is not None and not sandbox.status.pod_uid:
            started = time.monotonic()
            claimed = await _pool_pod(rt, sandbox, pool, spec, pod_uids, logger)
            if claimed is not None:
                POOL_CLAIM_SECONDS.observe(time.monotonic() - started)
                rt.remember_pod(key, claimed)
                rt.note_children_made(key, sandbox.metadata.uid)
                return Children(claimed, claimed=True)
        if claimed_from_pool(sandbox.status.pod_name):
            rt.note_children_made(key, sandbox.metadata.uid)
            return Children(None, claimed=False)
        await _ensure_policy(rt, sandbox, logger)
        pod = None
        if not sandbox.status.pod_uid:
            # Once a pod was recorded it is never created again (a resume after it vanished reports PodDeleted
            # through the status sync).
            pod = await _ensure_pod(rt, sandbox, spec, pod_uids, logger)
            rt.remember_pod(key, pod)
        rt.note_children_made(key, sandbox.metadata.uid)
        return Children(pod, claimed=False)


async def _pool_pod(rt: Runtime, sandbox: Sandbox, pool: SandboxPool, spec: EffectiveSpec, pod_uids: PodUids,
                    logger: kopf.Logger) -> JSON | None:
    """The pool pod this Sandbox claimed earlier or claims now; None for a cold start (an earlier run's cold pod
    is adopted by the caller, never doubled with a claim)."""
    key = (sandbox.namespace, sandbox.name)
    known = rt.latest_pod(key)  # a claim this process made, which the watch may not have shown yet
    earlier = claimed_pod_of(sandbox, [*rt.pods_of_pool((sandbox.namespace, pool.name)), *([known] if known else [])])
    if earlier is not None:
        return dict(earlier)
    if has_pod(pod_uids, key):
        return None
    pod = await claim_pod(rt, sandbox, pool, spec, logger)
    if pod is None:
        POOL_CLAIMS.labels("cold").inc()
        body = rt.latest((sandbox.namespace, sandbox.name))
        if body is not None:
            post_event(body, "Warning", "PoolEmpty",
                       f"pool {pool.name} has no ready pod to hand out; starting cold from its template")
    return pod


def needs_children(rt: Runtime, body: JSON) -> bool:
    """Whether a Sandbox event shows a live Sandbox whose policy and pod this process has not made yet."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    return not (meta.get("deletionTimestamp") or status.get("podUID") or status.get("phase") in TERMINAL_PHASES
                or rt.children_made(key, str(meta.get("uid"))))


async def _ensure_policy(rt: Runtime, sandbox: Sandbox, logger: kopf.Logger) -> None:
    policy = build_network_policy(sandbox)
    await _create_child("NetworkPolicy", lambda: asyncio.to_thread(
        rt.api.create_network_policy, policy, sandbox.metadata.uid), logger)


def _host_uid(rt: Runtime, sandbox: Sandbox, spec: EffectiveSpec, pod_uids: PodUids) -> int:
    """With user namespaces the kubelet maps every pod to host UIDs of its own, and the image's user stays;
    without (or under a runtime with a kernel of its own, whose pods keep the host's users), the sandbox gets a
    host UID of its own from the configured range."""
    if rt.settings.host_users_off(spec.runtime_class_name):
        return constants.SANDBOX_UID
    return rt.uids.allocate((sandbox.namespace, sandbox.name), pod_uids)


async def _ensure_pod(rt: Runtime, sandbox: Sandbox, spec: EffectiveSpec, pod_uids: PodUids,
                      logger: kopf.Logger) -> JSON:
    pod = build_pod(sandbox, spec, rt.settings, run_as_user=_host_uid(rt, sandbox, spec, pod_uids), now=utcnow())

    def create() -> ChildResult:
        result = rt.api.create_pod(pod, sandbox.metadata.uid)
        failpoint(rt.settings, "after-pod-create")
        return result

    try:
        created = await _create_child("Pod", lambda: asyncio.to_thread(create), logger)
    except ApiException as error:
        if error.status == 403:
            # Admission (Pod Security, a ValidatingAdmissionPolicy, quota) said no: retrying will not help.
            raise _Refused("AdmissionRejected", api_message(error)) from error
        if error.status in (400, 422):
            raise _Refused("InvalidSpec", f"the API server rejected the pod: {api_message(error)}") from error
        raise
    if not rt.settings.host_users_off(spec.runtime_class_name):
        # A re-run found the pod of an earlier attempt: its UID is the one in use, whatever was picked now.
        for uid in pod_run_as_users(created):
            rt.uids.adopt((sandbox.namespace, sandbox.name), uid)
    return created


@kopf.on.create(*RESOURCE, id="create")
@counted("create")
async def create_fn(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    sandbox_pod_uids: kopf.Index[int, Key] | None = None, pool_pods: Any = None,
                    pool_pod_policies: Any = None,
                    **_: Any) -> None:
    keep_pool_index(runtime(memo), pool_pods, pool_pod_policies)
    await ensure_sandbox(body, memo, logger, sandbox_pod_uids)


@kopf.on.resume(*RESOURCE, id="resume")
@counted("resume")
async def resume_fn(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    sandbox_pod_uids: kopf.Index[int, Key] | None = None, pool_pods: Any = None,
                    pool_pod_policies: Any = None,
                    **_: Any) -> None:
    keep_pool_index(runtime(memo), pool_pods, pool_pod_policies)
    await ensure_sandbox(body, memo, logger, sandbox_pod_uids)


@kopf.on.update(*RESOURCE, field="spec", id="update")
@counted("update")
async def update_fn(body: kopf.Body, old: Any, new: Any, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    """Applies the mutable fields (pod labels and annotations, a lower lifetime); immutable changes that got
    past admission are reported, not applied."""
    rt = runtime(memo)
    raw: JSON = dict(body)
    rt.remember(raw)
    try:
        sandbox = Sandbox.from_body(raw)
        old_spec = SandboxSpec.model_validate(old or {})
    except (InvalidSpecError, ValidationError) as error:
        post_event(raw, "Warning", "InvalidSpec", f"the spec change is not applied: {error}")
        await sync_status(rt, raw["metadata"]["namespace"], raw["metadata"]["name"], log=logger)
        return
    violations = immutable_violations(old_spec, sandbox.spec)
    if violations:
        post_event(raw, "Warning", "ImmutableFieldChanged",
                   "not applied to the running sandbox: " + "; ".join(violations))
    if sandbox.status.phase not in TERMINAL_PHASES and sandbox.status.pod_uid:
        await _apply_mutable(rt, sandbox, old_spec, logger)
    await sync_status(rt, sandbox.namespace, sandbox.name, log=logger)


async def _apply_mutable(rt: Runtime, sandbox: Sandbox, old_spec: SandboxSpec, logger: kopf.Logger) -> None:
    spec, name = sandbox.spec, sandbox.status.pod_name or constants.pod_name(sandbox.name)
    labels: dict[str, str | None] = {key: None for key in (old_spec.pod_labels or {})}
    labels.update(spec.pod_labels or {})
    labels.update(child_labels(sandbox.name))
    annotations: dict[str, str | None] = {key: None for key in (old_spec.pod_annotations or {})}
    annotations.update(spec.pod_annotations or {})
    patch: dict[str, Any] = {"metadata": {"labels": labels, "annotations": annotations}}
    pod = await asyncio.to_thread(rt.api.get_pod, sandbox.namespace, name)
    if pod is None:
        return
    _, _, lifetime = effective_timeouts(rt.run_view(sandbox).spec, rt.settings)
    start = (pod.get("status") or {}).get("startTime")
    current = (pod.get("spec") or {}).get("activeDeadlineSeconds")
    created = sandbox.metadata.creation_timestamp
    if start and current and created:
        started = datetime.datetime.fromisoformat(start)
        wanted = max(1, math.ceil((created + datetime.timedelta(seconds=lifetime) - started).total_seconds()))
        if wanted < current:  # the API server allows lowering activeDeadlineSeconds, never raising it
            patch["spec"] = {"activeDeadlineSeconds": wanted}
    await asyncio.to_thread(rt.api.patch_pod, sandbox.namespace, name, patch)
    logger.info("applied the mutable spec fields to the pod")


@kopf.on.delete(*RESOURCE, id="delete")
@counted("delete")
async def delete_fn(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Orderly teardown: the pod first (short grace period), the NetworkPolicy only once the pod is gone, so
    the pod is never without its policy. Owner references would remove both anyway; this makes it prompt."""
    rt = runtime(memo)
    rt.remember(body)
    meta = body.get("metadata") or {}
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
    await sync_status(rt, namespace, name, log=logger)
    latest = rt.latest((namespace, name)) or body
    pod_name = str((latest.get("status") or {}).get("podName") or constants.pod_name(name))
    pod = await asyncio.to_thread(rt.api.get_pod, namespace, pod_name)
    if pod is not None and controlled_by(pod, uid):
        gone = rt.pod_gone((namespace, name))  # set by the pod watch on the pod's DELETED event
        if not pod["metadata"].get("deletionTimestamp"):
            await asyncio.to_thread(rt.api.delete_pod, namespace, pod_name, pod["metadata"]["uid"],
                                    rt.settings.termination_grace_seconds)
        # A bounded wait for the watch to report the pod gone (the grace period is a few seconds).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gone.wait(), rt.settings.termination_grace_seconds + POD_WAIT_SLACK)
        pod = await asyncio.to_thread(rt.api.get_pod, namespace, pod_name)
        if pod is not None and controlled_by(pod, uid):
            since = datetime.datetime.fromisoformat(pod["metadata"]["deletionTimestamp"])
            if (utcnow() - since).total_seconds() < POD_TERMINATION_PATIENCE:
                raise kopf.TemporaryError("the sandbox pod is still terminating", delay=5)
            logger.warning("the pod is still terminating long after its grace period; leaving it to garbage "
                           "collection")
    await asyncio.to_thread(rt.api.delete_network_policy, namespace, constants.network_policy_name(name))
    rt.forget((namespace, name))


@kopf.on.event(*RESOURCE, id="sandbox-events")
async def sandbox_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                        sandbox_pod_uids: kopf.Index[int, Key] | None = None, pool_pods: Any = None,
                    pool_pod_policies: Any = None,
                        **_: Any) -> None:
    """Every Sandbox event: keeps the latest body and the phase gauge, and makes the policy and pod of a new
    Sandbox at once. kopf runs the create handler only after another round trip (its finalizer patch and the
    event that follows); that handler stays, writes the status, and makes the children if this did not."""
    rt = runtime(memo)
    keep_pool_index(rt, pool_pods, pool_pod_policies)
    meta = body.get("metadata") or {}
    key = (str(meta.get("namespace")), str(meta.get("name")))
    if type == "DELETED":
        rt.forget(key)
        return
    raw: JSON = dict(body)
    rt.remember(raw)
    rt.phases.set(key, (body.get("status") or {}).get("phase") or "Pending")
    if not needs_children(rt, raw) or sandbox_pod_uids is None:
        return
    try:
        # No status write here: it would change the Sandbox under kopf's finalizer patch, which follows at once
        # and is conditional on this version. The pod's first event writes the status.
        sandbox = Sandbox.from_body(raw)
        pool, spec = await run_spec(rt, sandbox)
        children = await make_children(rt, sandbox, spec, pool, sandbox_pod_uids, logger)
        if children.claimed:
            # A claimed pod is usually ready already: say so now rather than after its next event. This write
            # makes kopf's finalizer patch, conditional on the version, go again on the next event.
            await sync_status(rt, sandbox.namespace, sandbox.name, pod_body=children.pod, log=logger)
    except Exception as error:  # best effort: the create handler retries with backoff
        logger.info("making the policy and pod at first sight did not finish (%s); the create handler retries",
                    error)

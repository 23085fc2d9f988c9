"""Level-based status reconciliation, shared by the Sandbox, pod and collector handlers.

:func:`sync_status` reads the Sandbox and its pod fresh, computes the status with the pure builders, writes it
only when it changed, posts one Event per transition, and carries out the consequences of terminal states.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf

from sandbox_operator import constants
from sandbox_operator.builders.status import (
    KUBELET_REASON_EVICTED,
    PodObservation,
    Verdict,
    build_status,
    decide,
    needs_eviction_lookup,
    status_body,
    status_patch,
    transitions,
    with_eviction,
    worth_writing,
)
from sandbox_operator.handlers.runtime import Runtime, utcnow
from sandbox_operator.k8s.api import JSON, controlled_by
from sandbox_operator.metrics import COLLECTIONS, CREATE_TO_READY
from sandbox_operator.models.effective import effective_timeouts
from sandbox_operator.models.sandbox import TERMINAL_PHASES, InvalidSpecError, Sandbox

logger = logging.getLogger(__name__)


def parse_sandbox(body: JSON) -> tuple[Sandbox, str | None]:
    """The Sandbox and, if its spec is invalid, why (then the spec is empty)."""
    try:
        return Sandbox.from_body(body), None
    except InvalidSpecError as error:
        return Sandbox.shell_from_body(body), str(error)


def post_event(body: JSON, type_: str, reason: str, message: str) -> None:
    kopf.event(cast("kopf.Body", body), type=type_, reason=reason, message=message)


async def sync_status(rt: Runtime, namespace: str, name: str, *, override: Verdict | None = None,
                      pod_body: JSON | None = None, pod_gone: bool = False,
                      log: logging.Logger | kopf.Logger | None = None) -> Sandbox | None:
    """Brings ``status`` in line with the pod; returns the Sandbox as written (None if it is gone).

    The Sandbox and its pod are the latest versions this process has seen (read from the API server only when
    it has seen none): every watch event and every write updates them, and this operator is the only writer of
    the status, so the status it compares against is the one it wrote. ``pod_body`` (from a pod event or a
    create) or ``pod_gone`` (a DELETED event) is news about the pod: kopf delivers one pod's events in order."""
    log = log or logger
    async with rt.lock((namespace, name)):
        body = rt.latest((namespace, name))
        if body is None:
            body = await asyncio.to_thread(rt.api.get_sandbox, namespace, name)
            if body is None:
                return None
        outcome = await _write_status(rt, body, override, pod_body, pod_gone, log)
        if outcome is None:
            return None
        verdict, pod, latest, updated = outcome

    # Consequences, outside the lock (they cause events that sync again).
    if verdict.phase in TERMINAL_PHASES and pod is not None and not pod.deleting \
            and pod.phase in ("Pending", "Running"):
        # A terminal sandbox keeps no running pod (e.g. one stuck pulling a missing image).
        await asyncio.to_thread(rt.api.delete_pod, namespace, pod.name or constants.pod_name(name), pod.uid,
                                rt.settings.termination_grace_seconds)
    if verdict.phase == "Expired" and not (latest.get("metadata") or {}).get("deletionTimestamp"):
        await collect(rt, latest, verdict.reason, verdict.message or "the sandbox's lifetime is over", log=log)
    return updated


async def _write_status(rt: Runtime, body: JSON, override: Verdict | None, pod_body: JSON | None, pod_gone: bool,
                        log: logging.Logger | kopf.Logger) -> tuple[Verdict, PodObservation | None, JSON,
                                                                       Sandbox] | None:
    """One decision and, if anything changed, one write (the caller holds the Sandbox's lock)."""
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    sandbox, invalid = parse_sandbox(body)
    if invalid is not None and override is None:
        override = Verdict("Failed", "InvalidSpec", invalid)
    if pod_gone:
        rt.remember_pod((namespace, name), None)
    elif pod_body is not None:
        rt.remember_pod((namespace, name), pod_body)
    else:
        pod_body = rt.latest_pod((namespace, name))
        if pod_body is None:
            pod_body = await asyncio.to_thread(rt.api.get_pod, namespace,
                                               sandbox.status.pod_name or constants.pod_name(name))
            if pod_body is not None:
                rt.remember_pod((namespace, name), pod_body)
    pod = None
    if pod_body is not None and controlled_by(pod_body, sandbox.metadata.uid):
        pod = PodObservation.from_pod(pod_body)
    if pod is not None and needs_eviction_lookup(sandbox, pod):
        evicted = await asyncio.to_thread(rt.api.pod_event_message, namespace, pod.uid, KUBELET_REASON_EVICTED)
        if evicted is not None:
            pod = with_eviction(pod, evicted)
    verdict = decide(sandbox, pod, override)
    now = utcnow()
    _, _, lifetime = effective_timeouts(rt.run_view(sandbox).spec, rt.settings)
    new_status = build_status(sandbox, verdict, pod, lifetime_seconds=lifetime, now=now)
    old_raw: dict[str, Any] = dict(body.get("status") or {})
    patch = status_patch(old_raw, status_body(new_status))
    latest = body
    if worth_writing(old_raw, patch):
        written = await asyncio.to_thread(rt.api.patch_sandbox_status, namespace, name, patch)
        if written is None:
            return None
        rt.remember(written)
        latest = written
        for change in transitions(sandbox.status, new_status):
            post_event(body, change.type, change.reason, change.message)
        log.info("status: phase=%s reason=%s", new_status.phase, new_status.reason or "-")
        if new_status.ready_time and not sandbox.status.ready_time and sandbox.metadata.creation_timestamp:
            CREATE_TO_READY.observe(max(0.0, (now - sandbox.metadata.creation_timestamp).total_seconds()))
    rt.phases.set((namespace, name), new_status.phase)
    return verdict, pod, latest, sandbox.model_copy(update={"status": new_status})


async def collect(rt: Runtime, body: JSON, reason: str, message: str,
                  *, log: logging.Logger | kopf.Logger | None = None) -> None:
    """Deletes a Sandbox for ``reason`` with an Event saying why.

    The deletion is conditional on the version of ``body``: when two passes race (a pod event and the timer),
    only the one that saw the latest version deletes, so the Event and the metric count once."""
    log = log or logger
    meta = body.get("metadata") or {}
    deleted = await asyncio.to_thread(rt.api.delete_sandbox, meta["namespace"], meta["name"], meta["uid"],
                                      meta.get("resourceVersion"))
    if deleted:
        type_ = "Normal" if reason == "IdleTimeout" else "Warning"
        post_event(body, type_, reason, f"deleting the sandbox: {message}")
        COLLECTIONS.labels(reason).inc()
        log.info("collected (%s): %s", reason, message)

"""A sandbox's health: the Sandbox status plus what its pod says, in one value."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox_operator import constants
from sandbox_operator.models.conditions import (
    CONDITION_READY,
    PHASE_READY,
    PHASE_TERMINATING,
    TERMINAL_PHASES,
    TERMINAL_REASONS,
    Condition,
)
from sandbox_operator.models.timestamps import format_time, parse_time


def conditions_of(obj: dict[str, Any]) -> list[Condition]:
    """The status conditions, each checked as the operator writes it; one that is not is left out."""
    out = []
    for raw in (obj.get("status") or {}).get("conditions") or []:
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def pod_name_of(obj: dict[str, Any] | None) -> str | None:
    """The sandbox's pod as its status records it. A pod taken from a pool keeps the pool's name
    (``python.pool-x7k2p``); a cold-started one is named after the sandbox. None until the operator has recorded
    it."""
    name = ((obj or {}).get("status") or {}).get("podName")
    return str(name) if name else None


def ready_condition(obj: dict[str, Any]) -> Condition | None:
    return next((c for c in conditions_of(obj) if c.type == CONDITION_READY), None)


@dataclass(frozen=True)
class Readiness:
    """Where a Sandbox stands on the way to Ready: ``state`` is ``ready``, ``pending`` or ``failed``."""

    state: str
    phase: str | None
    reason: str | None
    message: str | None


def readiness(obj: dict[str, Any]) -> Readiness:
    """Judges a Sandbox object: Ready, still on its way, or never going to be Ready."""
    status = obj.get("status") or {}
    phase = status.get("phase")
    cond = ready_condition(obj)
    reason = (cond.reason if cond else None) or status.get("reason")
    message = (cond.message if cond else None) or status.get("message")
    if (obj.get("metadata") or {}).get("deletionTimestamp") or phase == PHASE_TERMINATING:
        return Readiness("failed", phase or PHASE_TERMINATING, reason or "Terminating",
                         message or "the sandbox is being deleted")
    if phase in TERMINAL_PHASES:
        return Readiness("failed", phase, reason or phase, message)
    if phase == PHASE_READY and (cond is None or cond.status == "True"):
        return Readiness("ready", phase, reason, message)
    if cond is not None and cond.status == "False" and cond.reason in TERMINAL_REASONS:
        return Readiness("failed", phase, reason, message)
    return Readiness("pending", phase, reason, message)


class Health(BaseModel):
    """Phase, conditions, pod state, restarts, last activity and expiry of one sandbox, read at one moment.

    ``phase`` and ``reason`` are the operator's (see :mod:`sandbox_operator.models.conditions`); times are UTC.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    phase: str | None
    ready: bool
    reason: str | None
    message: str | None
    conditions: list[Condition] = Field(default_factory=list)
    pod_name: str | None = None
    pod_phase: str | None = None
    container_state: str | None = None
    """``running``, ``waiting: Reason`` or ``terminated: Reason (exit N)``."""
    restarts: int = 0
    node_name: str | None = None
    pod_ip: str | None = None
    created: datetime.datetime | None = None
    start_time: datetime.datetime | None = None
    ready_time: datetime.datetime | None = None
    last_activity: datetime.datetime | None = None
    expires_at: datetime.datetime | None = None

    @property
    def healthy(self) -> bool:
        """Ready, with a running container that has not restarted."""
        return self.ready and self.container_state == "running" and self.restarts == 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``sandboxctl get -o json`` prints: camelCase, the pod's facts under ``pod``."""
        return {
            "name": self.name, "namespace": self.namespace, "phase": self.phase, "ready": self.ready,
            "reason": self.reason, "message": self.message,
            "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self.conditions],
            "pod": {"name": self.pod_name, "phase": self.pod_phase, "containerState": self.container_state,
                    "restarts": self.restarts, "nodeName": self.node_name, "podIP": self.pod_ip},
            "created": _time(self.created), "startTime": _time(self.start_time),
            "readyTime": _time(self.ready_time), "lastActivity": _time(self.last_activity),
            "expiresAt": _time(self.expires_at),
        }


def _time(value: datetime.datetime | None) -> str | None:
    return format_time(value) if value else None


def last_activity_of(obj: dict[str, Any]) -> datetime.datetime | None:
    """The later of the SDK's activity annotation and the operator's ``status.lastActivityTime``."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    candidates = [parse_time(annotations.get(constants.ANNOTATION_LAST_ACTIVITY)),
                  parse_time((obj.get("status") or {}).get("lastActivityTime"))]
    present = [c for c in candidates if c is not None]
    return max(present) if present else None


def container_state(pod: dict[str, Any] | None) -> tuple[str | None, int]:
    """``running``, ``waiting: Reason`` or ``terminated: Reason (exit N)`` of the sandbox container, and its
    restart count."""
    if not pod:
        return None, 0
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") != constants.CONTAINER_NAME:
            continue
        restarts = int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        if "running" in state:
            return "running", restarts
        if "waiting" in state:
            return f"waiting: {(state['waiting'] or {}).get('reason', 'Unknown')}", restarts
        if "terminated" in state:
            term = state["terminated"] or {}
            return f"terminated: {term.get('reason', 'Unknown')} (exit {term.get('exitCode')})", restarts
        return None, restarts
    return None, 0


def pod_problem(pod: dict[str, Any] | None) -> tuple[str, str] | None:
    """Why a pod is not running, from its own status (unschedulable, image pull...), if it says."""
    if not pod:
        return None
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return str(waiting.get("reason")), str(waiting.get("message") or "")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return str(cond.get("reason") or "Unschedulable"), str(cond.get("message") or "")
    if status.get("phase") == "Failed":
        return str(status.get("reason") or "PodFailed"), str(status.get("message") or "")
    return None


def health_from(obj: dict[str, Any], pod: dict[str, Any] | None) -> Health:
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    ready = readiness(obj)
    state, restarts = container_state(pod)
    pod_status = (pod or {}).get("status") or {}
    return Health(
        name=str(meta.get("name", "")), namespace=str(meta.get("namespace", "")), phase=ready.phase,
        ready=ready.state == "ready", reason=ready.reason, message=ready.message,
        conditions=conditions_of(obj),
        pod_name=status.get("podName") or ((pod or {}).get("metadata") or {}).get("name"),
        pod_phase=pod_status.get("phase"), container_state=state, restarts=restarts,
        node_name=status.get("nodeName") or ((pod or {}).get("spec") or {}).get("nodeName"),
        pod_ip=status.get("podIP") or pod_status.get("podIP"),
        created=parse_time(meta.get("creationTimestamp")),
        start_time=parse_time(status.get("startTime")),
        ready_time=parse_time(status.get("readyTime")),
        last_activity=last_activity_of(obj),
        expires_at=parse_time(status.get("expiresAt")),
    )

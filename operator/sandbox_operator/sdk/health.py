"""A sandbox's health: the Sandbox status plus what its pod says, in one value."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sandbox_operator import constants
from sandbox_operator.sdk.activity import parse_rfc3339

PHASE_PENDING = "Pending"
PHASE_READY = "Ready"
PHASE_TERMINATING = "Terminating"
PHASE_EXPIRED = "Expired"
PHASE_FAILED = "Failed"
TERMINAL_PHASES = frozenset({PHASE_FAILED, PHASE_EXPIRED})

# Ready=False reasons that waiting will not fix: creation fails fast on these instead of timing out.
FATAL_REASONS = frozenset({
    "ImageMissing", "ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName",
    "InvalidSpec", "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
    "ContainerCannotRun", "AdmissionDenied", "PodForbidden", "Forbidden", "CrashLoopBackOff",
    "DeadlineExceeded", "Expired", "PodFailed", "AdmissionRejected", "StartError", "ProcessExited",
})


@dataclass(frozen=True)
class Condition:
    """A ``metav1.Condition``."""

    type: str
    status: str
    reason: str | None = None
    message: str | None = None
    last_transition_time: datetime | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        return cls(type=str(data.get("type", "")), status=str(data.get("status", "Unknown")),
                   reason=data.get("reason"), message=data.get("message"),
                   last_transition_time=parse_rfc3339(data.get("lastTransitionTime")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "status": self.status}
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        if self.last_transition_time:
            out["lastTransitionTime"] = _iso(self.last_transition_time)
        return out


def conditions_of(obj: dict[str, Any]) -> list[Condition]:
    return [Condition.from_dict(c) for c in ((obj.get("status") or {}).get("conditions") or [])
            if isinstance(c, dict)]


def ready_condition(obj: dict[str, Any]) -> Condition | None:
    return next((c for c in conditions_of(obj) if c.type == "Ready"), None)


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
    if cond is not None and cond.status == "False" and cond.reason in FATAL_REASONS:
        return Readiness("failed", phase, reason, message)
    return Readiness("pending", phase, reason, message)


@dataclass(frozen=True)
class Health:
    """Phase, conditions, pod state, restarts, last activity and expiry of one sandbox."""

    name: str
    namespace: str
    phase: str | None
    ready: bool
    reason: str | None
    message: str | None
    conditions: list[Condition] = field(default_factory=list)
    pod_name: str | None = None
    pod_phase: str | None = None
    container_state: str | None = None
    restarts: int = 0
    node_name: str | None = None
    pod_ip: str | None = None
    created: datetime | None = None
    start_time: datetime | None = None
    ready_time: datetime | None = None
    last_activity: datetime | None = None
    expires_at: datetime | None = None

    @property
    def healthy(self) -> bool:
        """Ready, with a running container that has not restarted."""
        return self.ready and self.container_state == "running" and self.restarts == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "namespace": self.namespace, "phase": self.phase, "ready": self.ready,
            "reason": self.reason, "message": self.message,
            "conditions": [c.to_dict() for c in self.conditions],
            "pod": {"name": self.pod_name, "phase": self.pod_phase, "containerState": self.container_state,
                    "restarts": self.restarts, "nodeName": self.node_name, "podIP": self.pod_ip},
            "created": _iso(self.created), "startTime": _iso(self.start_time),
            "readyTime": _iso(self.ready_time), "lastActivity": _iso(self.last_activity),
            "expiresAt": _iso(self.expires_at),
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def last_activity_of(obj: dict[str, Any]) -> datetime | None:
    """The later of the SDK's activity annotation and the operator's ``status.lastActivityTime``."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    candidates = [parse_rfc3339(annotations.get(constants.ANNOTATION_LAST_ACTIVITY)),
                  parse_rfc3339((obj.get("status") or {}).get("lastActivityTime"))]
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
        created=parse_rfc3339(meta.get("creationTimestamp")),
        start_time=parse_rfc3339(status.get("startTime")),
        ready_time=parse_rfc3339(status.get("readyTime")),
        last_activity=last_activity_of(obj),
        expires_at=parse_rfc3339(status.get("expiresAt")),
    )

"""From observed pod state to Sandbox status: phase, the Ready condition, reason and message.

Phases and reasons (the contract the SDK and CLI read):

==========  ======================================================================================
Pending     Creating (no pod yet), PodPending, ContainerCreating, Unschedulable, NotReady, or the
            kubelet's waiting reason (CreateContainerConfigError, ...)
Ready       PodReady
Terminating Deleting
Expired     LifetimeExpired (the collector), DeadlineExceeded (the kubelet's activeDeadlineSeconds)
Failed      InvalidSpec, AdmissionRejected, NameConflict, ImageMissing, OOMKilled, Evicted, Preempted,
            PodFailed (another kubelet reason: node shutdown, node admission), PodDeleted, ProcessExited,
            StartError
==========  ======================================================================================

A pod that ended (Succeeded or Failed) is judged by the kubelet's pod-level reason before its exit code: the
kubelet stops an evicted pod's container with SIGTERM, and since Kubernetes 1.27 a pod whose main process exits 0
on it ends ``Succeeded`` with the reason lost (kubernetes/kubernetes#118310). The reason is then recovered from
the pod's DisruptionTarget condition or, failing that, from the kubelet's ``Evicted`` Event
(:func:`needs_eviction_lookup`, read by the reconciler).

Expired and Failed are terminal: once there, a sandbox never becomes Ready again.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox_operator import constants
from sandbox_operator.models.conditions import CONDITION_READY, TERMINAL_PHASES, Condition, Phase
from sandbox_operator.models.sandbox import Sandbox, SandboxStatus
from sandbox_operator.models.timestamps import format_time, parse_time, utc_seconds

CONDITION_DISRUPTION_TARGET = "DisruptionTarget"
ENDED_POD_PHASES = frozenset({"Succeeded", "Failed"})
KUBELET_REASON_EVICTED = "Evicted"
IMAGE_MISSING_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"})
# How far in the future an activity timestamp may be (clock skew) before it is ignored as bogus.
ACTIVITY_FUTURE_SKEW = datetime.timedelta(seconds=60)


@dataclass(frozen=True)
class PodObservation:
    """What the status needs to know about the pod, read from its JSON body."""

    uid: str
    phase: str
    name: str | None = None
    reason: str | None = None
    message: str | None = None
    node_name: str | None = None
    pod_ip: str | None = None
    start_time: datetime.datetime | None = None
    active_deadline_seconds: int | None = None
    ready: bool = False
    deleting: bool = False
    unschedulable: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated_reason: str | None = None
    terminated_message: str | None = None
    exit_code: int | None = None
    disruption_reason: str | None = None
    """Reason of a true DisruptionTarget condition (TerminationByKubelet, PreemptionByScheduler, ...)."""
    disruption_message: str | None = None

    @property
    def ended(self) -> bool:
        return self.phase in ENDED_POD_PHASES

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodObservation:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        ready = (conditions.get("Ready") or {}).get("status") == "True"
        scheduled = conditions.get("PodScheduled") or {}
        disruption = conditions.get(CONDITION_DISRUPTION_TARGET) or {}
        if disruption.get("status") != "True":
            disruption = {}
        unschedulable = None
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            unschedulable = scheduled.get("message") or "the pod cannot be scheduled"
        container: Mapping[str, Any] = next(
            (c for c in status.get("containerStatuses") or [] if c.get("name") == constants.CONTAINER_NAME), {})
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        return cls(
            uid=str(meta.get("uid") or ""),
            phase=str(status.get("phase") or "Pending"),
            name=meta.get("name"),
            reason=status.get("reason"),
            message=status.get("message"),
            node_name=spec.get("nodeName"),
            pod_ip=status.get("podIP"),
            start_time=parse_time(status.get("startTime")),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            ready=ready,
            deleting=bool(meta.get("deletionTimestamp")),
            unschedulable=unschedulable,
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
            terminated_reason=terminated.get("reason"),
            terminated_message=terminated.get("message"),
            exit_code=terminated.get("exitCode"),
            disruption_reason=disruption.get("reason"),
            disruption_message=disruption.get("message"),
        )


@dataclass(frozen=True)
class Verdict:
    """The summary the status is built from."""

    phase: Phase
    reason: str
    message: str = ""

    @property
    def ready(self) -> bool:
        return self.phase == "Ready"


def judge_pod(pod: PodObservation | None, *, recorded_pod_uid: str | None) -> Verdict:
    """The verdict for a live (not deleting, not terminal) Sandbox from its pod.

    A pod that was created and then disappeared, or is being deleted while the Sandbox is not, makes the
    Sandbox Failed with PodDeleted: its workspace is gone, and silently handing the agent an empty new pod under
    the same name would be worse than an honest failure (see docs/operator.md)."""
    if pod is None or (recorded_pod_uid and pod.uid != recorded_pod_uid):
        if recorded_pod_uid:
            return Verdict("Failed", "PodDeleted",
                           "the sandbox pod was deleted outside the operator; its workspace is gone")
        return Verdict("Pending", "Creating", "creating the sandbox pod")
    if pod.deleting:
        cause = f" ({pod.disruption_reason}: {pod.disruption_message})" if pod.disruption_reason else ""
        return Verdict("Failed", "PodDeleted",
                       f"the sandbox pod is being deleted outside the operator{cause}; its workspace is gone")
    if pod.ended:
        return _judge_ended(pod)
    if pod.waiting_reason in IMAGE_MISSING_REASONS:
        return Verdict("Failed", "ImageMissing",
                       f"{pod.waiting_reason}: {pod.waiting_message or 'the image is not available on the node'}")
    if pod.phase == "Running":
        if pod.ready:
            return Verdict("Ready", "PodReady", "")
        return Verdict("Pending", "NotReady", "the kubelet has not reported the sandbox container ready yet")
    if pod.unschedulable:
        return Verdict("Pending", "Unschedulable", pod.unschedulable)
    if pod.waiting_reason:
        return Verdict("Pending", pod.waiting_reason, pod.waiting_message or "")
    if pod.phase == "Unknown":
        return Verdict("Pending", "PodUnknown", pod.message or "the node stopped reporting the pod's state")
    return Verdict("Pending", "PodPending", "waiting for the pod to start")


def _judge_ended(pod: PodObservation) -> Verdict:
    """A pod that ended: why the kubelet ended it, if it did, else how the main process ended."""
    if pod.reason == "DeadlineExceeded":
        return Verdict("Expired", "DeadlineExceeded",
                       pod.message or "the pod reached its activeDeadlineSeconds (the sandbox's lifetime)")
    if pod.reason == KUBELET_REASON_EVICTED or (not pod.reason and pod.disruption_reason == "TerminationByKubelet"):
        return Verdict("Failed", "Evicted", pod.message or pod.disruption_message or "the kubelet evicted the pod")
    if pod.reason == "Preempting" or pod.disruption_reason == "PreemptionByScheduler":
        return Verdict("Failed", "Preempted",
                       pod.message or pod.disruption_message or "the pod was preempted by a higher-priority pod")
    if pod.terminated_reason == "OOMKilled":
        return Verdict("Failed", "OOMKilled", "the sandbox's main process exceeded its memory limit")
    if pod.terminated_reason in ("StartError", "ContainerCannotRun"):
        return Verdict("Failed", "StartError", pod.terminated_message or "the container could not start")
    if pod.reason:  # node shutdown ("Terminated"), node admission ("OutOfcpu", "NodeAffinity", ...)
        return Verdict("Failed", "PodFailed", f"{pod.reason}: {pod.message}" if pod.message else pod.reason)
    return Verdict("Failed", "ProcessExited", _exit_message(pod))


def needs_eviction_lookup(sandbox: Sandbox, pod: PodObservation | None) -> bool:
    """Whether the pod ended without saying why, so that only the kubelet's Event can tell an eviction from a
    process that exited (checked once: the verdict is terminal)."""
    return (pod is not None and pod.ended and not pod.reason and not pod.disruption_reason and not pod.deleting
            and sandbox.metadata.deletion_timestamp is None and sandbox.status.phase not in TERMINAL_PHASES)


def with_eviction(pod: PodObservation, message: str) -> PodObservation:
    """The pod as the kubelet's Evicted Event describes it."""
    return dataclasses.replace(pod, reason=KUBELET_REASON_EVICTED, message=message)


def _exit_message(pod: PodObservation) -> str:
    """With the container's termination message: what sandbox-init's start-up check found wrong, or the last
    lines of the log (terminationMessagePolicy FallbackToLogsOnError) of another main process that failed."""
    detail = f" ({pod.terminated_reason})" if pod.terminated_reason else ""
    said = (pod.terminated_message or "").strip()
    return f"the sandbox's main process exited with code {pod.exit_code}{detail}" + (f": {said}" if said else "")


def activity_time(sandbox: Sandbox, now: datetime.datetime) -> datetime.datetime | None:
    """The client's activity record, or None when absent, unparsable or implausibly in the future."""
    return activity_from(sandbox.metadata.annotations.get(constants.ANNOTATION_LAST_ACTIVITY), now)


def activity_from(annotation: str | None, now: datetime.datetime) -> datetime.datetime | None:
    """:func:`activity_time` from the annotation's value."""
    value = parse_time(annotation)
    if value is None or value > now + ACTIVITY_FUTURE_SKEW:
        return None
    return min(value, now).astimezone(datetime.UTC).replace(microsecond=0)


def idle_clock_start(sandbox: Sandbox, ready_time: datetime.datetime | None,
                     now: datetime.datetime) -> datetime.datetime | None:
    """max(activity, readyTime); None if neither exists (then the collector counts from creation)."""
    return idle_clock_from(sandbox.metadata.annotations.get(constants.ANNOTATION_LAST_ACTIVITY), ready_time, now)


def idle_clock_from(annotation: str | None, ready_time: datetime.datetime | None,
                    now: datetime.datetime) -> datetime.datetime | None:
    """:func:`idle_clock_start` from the activity annotation's value."""
    candidates = [t for t in (activity_from(annotation, now), ready_time) if t is not None]
    return max(candidates) if candidates else None


def expires_at(sandbox: Sandbox, lifetime_seconds: int,
               pod: PodObservation | None = None) -> datetime.datetime | None:
    """Creation plus lifetime, or the pod's own deadline if that comes first (a lifetime set after creation
    cannot extend activeDeadlineSeconds)."""
    end = lifetime_end(sandbox.metadata.creation_timestamp, lifetime_seconds)
    if end is not None and pod is not None and pod.start_time and pod.active_deadline_seconds:
        end = min(end, utc_seconds(pod.start_time + datetime.timedelta(seconds=pod.active_deadline_seconds)))
    return end


def lifetime_end(created: datetime.datetime | None, lifetime_seconds: int) -> datetime.datetime | None:
    """Creation plus lifetime, as :func:`expires_at` gives it for a Sandbox without a pod."""
    if created is None:
        return None
    return utc_seconds(created + datetime.timedelta(seconds=lifetime_seconds))


def build_status(sandbox: Sandbox, verdict: Verdict, pod: PodObservation | None, *, lifetime_seconds: int,
                 now: datetime.datetime) -> SandboxStatus:
    """The full status for a verdict; unchanged facts (times, pod identity) are carried over."""
    old = sandbox.status
    now = now.astimezone(datetime.UTC).replace(microsecond=0)
    ready_time = old.ready_time or (now if verdict.ready else None)
    status = "True" if verdict.ready else "False"
    previous = old.condition(CONDITION_READY)
    transition = previous.last_transition_time if previous and previous.status == status else now
    ready = Condition(type=CONDITION_READY, status=status, observed_generation=sandbox.metadata.generation,
                      last_transition_time=transition, reason=verdict.reason, message=verdict.message)
    other_conditions = [c for c in old.conditions if c.type != CONDITION_READY]
    live_pod = pod if pod is not None and (not old.pod_uid or pod.uid == old.pod_uid) else None
    return SandboxStatus(
        phase=verdict.phase,
        conditions=[ready, *other_conditions],
        observed_generation=sandbox.metadata.generation,
        pod_name=old.pod_name or (live_pod.name or constants.pod_name(sandbox.name) if live_pod else None),
        pod_uid=old.pod_uid or (live_pod.uid if live_pod else None),
        node_name=(live_pod.node_name if live_pod else None) or old.node_name,
        pod_ip=(live_pod.pod_ip if live_pod else None) or old.pod_ip,
        start_time=(live_pod.start_time if live_pod else None) or old.start_time,
        ready_time=ready_time,
        last_activity_time=idle_clock_start(sandbox, ready_time, now),
        expires_at=_earliest(expires_at(sandbox, lifetime_seconds, live_pod), old.expires_at),
        reason=None if verdict.ready else verdict.reason,
        message=None if verdict.ready or not verdict.message else verdict.message,
    )


def _earliest(*times: datetime.datetime | None) -> datetime.datetime | None:
    """Expiry only ever moves earlier: a lowered lifetime, or a pod deadline seen once, is not forgotten."""
    known = [t for t in times if t is not None]
    return min(known) if known else None


def current_verdict(status: SandboxStatus) -> Verdict | None:
    if status.phase is None:
        return None
    ready = status.condition(CONDITION_READY)
    reason = status.reason or (ready.reason if ready else status.phase)
    return Verdict(status.phase, reason, status.message or "")


def decide(sandbox: Sandbox, pod: PodObservation | None, override: Verdict | None = None) -> Verdict:
    """Deleting wins; then terminal phases stick; then an explicit verdict from the handler; then the pod."""
    if sandbox.metadata.deletion_timestamp is not None:
        previous = current_verdict(sandbox.status)
        if previous and (previous.phase in TERMINAL_PHASES or previous.phase == "Terminating"):
            return Verdict("Terminating", previous.reason, previous.message)
        return Verdict("Terminating", "Deleting", "the sandbox is being deleted")
    previous = current_verdict(sandbox.status)
    if previous is not None and previous.phase in TERMINAL_PHASES:
        return previous
    if override is not None:
        return override
    return judge_pod(pod, recorded_pod_uid=sandbox.status.pod_uid)


def status_body(status: SandboxStatus) -> dict[str, Any]:
    """The status as JSON, without unset fields."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from ``old`` to ``new`` status; empty when nothing changed (then nothing is written)."""
    patch: dict[str, Any] = {key: value for key, value in new.items() if old.get(key) != value}
    patch.update({key: None for key in old if key not in new})
    return patch


# Facts about the pod that a starting sandbox picks up on the way to Ready; the write that makes it Ready (or
# changes its reason) carries them.
POD_FACTS = frozenset({"nodeName", "podIP", "startTime", "expiresAt"})


def worth_writing(old: Mapping[str, Any], patch: Mapping[str, Any]) -> bool:
    """False for a patch that only adds pod facts to a sandbox that stays Pending for the same reason: at a burst
    start each such write is an API request that tells a user nothing new."""
    if not patch:
        return False
    if old.get("phase") != "Pending" or not old.get("podUID") or "phase" in patch or "reason" in patch:
        return True
    return not set(patch) <= POD_FACTS


@dataclass(frozen=True)
class Transition:
    """A change worth an Event."""

    type: str  # Normal or Warning
    reason: str
    message: str


def transitions(old: SandboxStatus, new: SandboxStatus) -> list[Transition]:
    """One Event per phase change, and per Ready-condition change (status or reason) that is a warning. The
    routine steps of a start (Creating, PodPending, ContainerCreating) are in the status, not worth an Event each:
    at a burst of hundreds of sandboxes every Event is an API write."""
    before, after = old.condition(CONDITION_READY), new.condition(CONDITION_READY)
    if after is None:
        return []
    reason = new.reason or after.reason
    warning = new.phase in TERMINAL_PHASES or reason in ("Unschedulable", *IMAGE_MISSING_REASONS)
    phase_changed = old.phase != new.phase
    condition_changed = before is None or (before.status, before.reason) != (after.status, after.reason)
    if not (phase_changed or (condition_changed and warning)):
        return []
    summary = f"phase {old.phase or '-'} -> {new.phase}, Ready={after.status} ({after.reason})"
    message = f"{summary}: {after.message}" if after.message else summary
    return [Transition("Warning" if warning else "Normal", reason, message[:1024])]


def format_time_or_none(value: datetime.datetime | None) -> str | None:
    return format_time(value) if value is not None else None

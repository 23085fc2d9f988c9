"""A Sandbox's phases, the Ready condition and its reasons: the contract the operator writes and clients read.

The reasons are listed here once, by the phase they come with; the operator's status builders use no others
(a unit test reads them out of its code), and the SDK judges a Sandbox by the same lists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from pydantic import ConfigDict, Field

from sandbox_operator.models.base import CrdModel
from sandbox_operator.models.timestamps import Time

Phase = Literal["Pending", "Ready", "Terminating", "Expired", "Failed"]
PHASE_PENDING: Final = "Pending"
PHASE_READY: Final = "Ready"
PHASE_TERMINATING: Final = "Terminating"
PHASE_EXPIRED: Final = "Expired"
PHASE_FAILED: Final = "Failed"
# Once there, a sandbox never becomes Ready again.
TERMINAL_PHASES: Final[frozenset[str]] = frozenset({PHASE_EXPIRED, PHASE_FAILED})

CONDITION_READY: Final = "Ready"
CONDITION_REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

REASONS_BY_PHASE: Final[Mapping[str, frozenset[str]]] = {
    # Pending also passes on the kubelet's own waiting reason (ContainerCreating, CreateContainerConfigError...).
    PHASE_PENDING: frozenset({"Creating", "PodPending", "NotReady", "Unschedulable", "PodUnknown",
                              "UidRangeExhausted"}),
    PHASE_READY: frozenset({"PodReady"}),
    # Terminating keeps the terminal reason the sandbox had, if any.
    PHASE_TERMINATING: frozenset({"Deleting"}),
    # LifetimeExpired: the collector; DeadlineExceeded: the kubelet's activeDeadlineSeconds.
    PHASE_EXPIRED: frozenset({"LifetimeExpired", "DeadlineExceeded"}),
    PHASE_FAILED: frozenset({"InvalidSpec", "AdmissionRejected", "NameConflict", "ImageMissing", "OOMKilled",
                             "Evicted", "Preempted", "PodFailed", "PodDeleted", "ProcessExited", "StartError"}),
}
TERMINAL_REASONS: Final[frozenset[str]] = REASONS_BY_PHASE[PHASE_EXPIRED] | REASONS_BY_PHASE[PHASE_FAILED]


class Condition(CrdModel):
    """A condition in the shape of metav1.Condition."""

    model_config = ConfigDict(extra="ignore", strict=False)

    type: str = Field(max_length=316, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*"
                                               r"[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$")
    """Condition type in CamelCase; Ready summarises the sandbox."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation this condition was computed from."""
    last_transition_time: Time
    """When the status last changed."""
    reason: str = Field(max_length=1024, min_length=1, pattern=CONDITION_REASON_PATTERN)
    """Machine-readable CamelCase reason of the last transition."""
    message: str = Field("", max_length=32768)
    """Human-readable details."""

"""Pod state to Sandbox status, Events on transitions, and the collector's decisions."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from sandbox_operator import constants
from sandbox_operator.builders.lifecycle import collection_due
from sandbox_operator.builders.status import (
    PodObservation,
    Verdict,
    build_status,
    decide,
    judge_pod,
    needs_eviction_lookup,
    status_body,
    status_patch,
    transitions,
    with_eviction,
    worth_writing,
)
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.settings import OperatorSettings

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SETTINGS = OperatorSettings()


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(phase: str = "Running", *, ready: bool = False, uid: str = "pod-1", reason: str | None = None,
        message: str | None = None, waiting: str | None = None, terminated: str | None = None,
        exit_code: int = 0, termination_message: str | None = None, unschedulable: bool = False,
        deleting: bool = False, disruption: tuple[str, str] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if waiting:
        state["waiting"] = {"reason": waiting, "message": "details"}
    if terminated:
        state["terminated"] = {"reason": terminated, "exitCode": exit_code}
        if termination_message is not None:
            state["terminated"]["message"] = termination_message
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if unschedulable:
        conditions.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": "0/1 nodes are available: 1 Insufficient memory."})
    if disruption:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": disruption[0],
                           "message": disruption[1]})
    status: dict[str, Any] = {"phase": phase, "conditions": conditions, "podIP": "10.1.0.7",
                              "startTime": iso(1),
                              "containerStatuses": [{"name": constants.CONTAINER_NAME, "state": state}]}
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    meta: dict[str, Any] = {"name": "sbx-1", "uid": uid,
                            "ownerReferences": [{"uid": "sbx-uid", "controller": True}]}
    if deleting:
        meta["deletionTimestamp"] = iso(50)
    return {"metadata": meta, "spec": {"nodeName": "node-1", "activeDeadlineSeconds": 3600}, "status": status}


def observe(**kwargs: Any) -> PodObservation:
    return PodObservation.from_pod(pod(**kwargs))


def sandbox(status: dict[str, Any] | None = None, *, spec: dict[str, Any] | None = None,
            annotations: dict[str, str] | None = None, deleting: bool = False) -> Sandbox:
    meta: dict[str, Any] = {"name": "sbx-1", "namespace": "ns", "uid": "sbx-uid", "generation": 2,
                            "creationTimestamp": iso(0), "annotations": annotations or {}}
    if deleting:
        meta["deletionTimestamp"] = iso(100)
    return Sandbox.from_body({"apiVersion": constants.API_VERSION, "kind": constants.KIND, "metadata": meta,
                              "spec": spec or {}, "status": status or {}})


@pytest.mark.parametrize(("observation", "phase", "reason"), [
    (observe(ready=True), "Ready", "PodReady"),
    (observe(), "Pending", "NotReady"),
    (observe(phase="Pending"), "Pending", "PodPending"),
    (observe(phase="Pending", waiting="ContainerCreating"), "Pending", "ContainerCreating"),
    (observe(phase="Pending", unschedulable=True), "Pending", "Unschedulable"),
    (observe(phase="Pending", waiting="ErrImageNeverPull"), "Failed", "ImageMissing"),
    (observe(phase="Pending", waiting="ImagePullBackOff"), "Failed", "ImageMissing"),
    (observe(phase="Pending", waiting="ErrImagePull"), "Failed", "ImageMissing"),
    (observe(phase="Pending", waiting="CreateContainerConfigError"), "Pending", "CreateContainerConfigError"),
    (observe(phase="Failed", terminated="OOMKilled", exit_code=137), "Failed", "OOMKilled"),
    (observe(phase="Failed", reason="DeadlineExceeded", message="Pod was active on the node longer than"),
     "Expired", "DeadlineExceeded"),
    (observe(phase="Failed", reason="Evicted", message="ephemeral local storage usage exceeds"),
     "Failed", "Evicted"),
    (observe(phase="Succeeded", reason="Evicted", terminated="Completed"), "Failed", "Evicted"),
    (observe(phase="Succeeded", terminated="Completed", disruption=("TerminationByKubelet", "low on disk")),
     "Failed", "Evicted"),
    (observe(phase="Failed", reason="Preempting", terminated="Error", exit_code=143), "Failed", "Preempted"),
    (observe(phase="Succeeded", terminated="Completed", disruption=("PreemptionByScheduler", "preempted")),
     "Failed", "Preempted"),
    (observe(phase="Failed", reason="Terminated", message="Pod was terminated in response to imminent node "
             "shutdown.", terminated="Completed"), "Failed", "PodFailed"),
    (observe(phase="Failed", reason="OutOfcpu", message="Node didn't have enough resource: cpu"),
     "Failed", "PodFailed"),
    (observe(phase="Failed", terminated="Error", exit_code=3), "Failed", "ProcessExited"),
    (observe(phase="Failed", terminated="StartError", exit_code=128), "Failed", "StartError"),
    (observe(phase="Succeeded", terminated="Completed"), "Failed", "ProcessExited"),
    (observe(phase="Unknown"), "Pending", "PodUnknown"),
    (observe(ready=True, deleting=True), "Failed", "PodDeleted"),
])
def test_pod_states(observation: PodObservation, phase: str, reason: str) -> None:
    verdict = judge_pod(observation, recorded_pod_uid="pod-1")
    assert (verdict.phase, verdict.reason) == (phase, reason)


def test_messages_carry_the_kubelets_words() -> None:
    assert "Insufficient memory" in judge_pod(observe(phase="Pending", unschedulable=True),
                                              recorded_pod_uid=None).message
    assert "exceeds" in judge_pod(observe(phase="Failed", reason="Evicted", message="usage exceeds"),
                                  recorded_pod_uid=None).message
    assert "code 3" in judge_pod(observe(phase="Failed", terminated="Error", exit_code=3),
                                 recorded_pod_uid=None).message


def test_a_failed_self_check_of_pid_1_is_the_sandboxs_message() -> None:
    """sandbox-init exits 1 naming what is wrong, in the termination log the kubelet reports."""
    said = "sandbox-init: /workspace is not writable: Read-only file system\n"
    verdict = judge_pod(observe(phase="Failed", terminated="Error", exit_code=1, termination_message=said),
                        recorded_pod_uid="pod-1")
    assert verdict == Verdict("Failed", "ProcessExited", "the sandbox's main process exited with code 1 (Error): "
                              "sandbox-init: /workspace is not writable: Read-only file system")
    status = build_status(sandbox(), verdict, observe(phase="Failed"), lifetime_seconds=3600, now=at(10))
    assert (status.phase, status.reason) == ("Failed", "ProcessExited")
    assert status.message is not None and status.message.endswith("/workspace is not writable: Read-only file system")


@pytest.mark.parametrize("said", [None, "", " \n"])
def test_an_exit_without_a_termination_message_says_only_the_code(said: str | None) -> None:
    verdict = judge_pod(observe(phase="Failed", terminated="Error", exit_code=3, termination_message=said),
                        recorded_pod_uid="pod-1")
    assert verdict.message == "the sandbox's main process exited with code 3 (Error)"


def test_running_but_not_yet_reported_ready_is_pending() -> None:
    verdict = judge_pod(observe(phase="Running", ready=False), recorded_pod_uid="pod-1")
    assert (verdict.phase, verdict.reason) == ("Pending", "NotReady")
    assert "readiness check" not in verdict.message


EVICTION_MESSAGE = "Pod ephemeral local storage usage exceeds the total limit of containers 1Gi."


def test_an_evicted_pod_is_reported_with_the_kubelets_message() -> None:
    for phase in ("Failed", "Succeeded"):
        verdict = judge_pod(observe(phase=phase, reason="Evicted", message=EVICTION_MESSAGE, terminated="Completed"),
                            recorded_pod_uid="pod-1")
        assert verdict == Verdict("Failed", "Evicted", EVICTION_MESSAGE)
    by_condition = judge_pod(observe(phase="Succeeded", terminated="Completed",
                                     disruption=("TerminationByKubelet", "The node was low on resource: memory.")),
                             recorded_pod_uid="pod-1")
    assert by_condition == Verdict("Failed", "Evicted", "The node was low on resource: memory.")
    other = judge_pod(observe(phase="Failed", reason="OutOfcpu", message="no cpu"), recorded_pod_uid="pod-1")
    assert other.message == "OutOfcpu: no cpu"


def test_a_pod_that_ended_without_a_reason_is_looked_up_once() -> None:
    """Since Kubernetes 1.27 an evicted pod whose PID 1 exits 0 on SIGTERM ends Succeeded with no reason: only
    the kubelet's Evicted Event tells, and the reconciler reads it before judging."""
    silent = observe(phase="Succeeded", terminated="Completed")
    assert judge_pod(silent, recorded_pod_uid="pod-1").reason == "ProcessExited"
    assert needs_eviction_lookup(sandbox(), silent)
    assert needs_eviction_lookup(sandbox(), observe(phase="Failed", terminated="Error", exit_code=1))
    evicted = with_eviction(silent, EVICTION_MESSAGE)
    assert judge_pod(evicted, recorded_pod_uid="pod-1") == Verdict("Failed", "Evicted", EVICTION_MESSAGE)
    assert judge_pod(with_eviction(silent, ""), recorded_pod_uid="pod-1").message == "the kubelet evicted the pod"
    # Nothing to look up: the pod runs, says why it ended, is being deleted, or the verdict is already final.
    assert not needs_eviction_lookup(sandbox(), observe(ready=True))
    assert not needs_eviction_lookup(sandbox(), observe(phase="Failed", reason="DeadlineExceeded"))
    assert not needs_eviction_lookup(sandbox(), observe(phase="Succeeded", disruption=("TerminationByKubelet", "x")))
    assert not needs_eviction_lookup(sandbox(), observe(phase="Succeeded", deleting=True))
    assert not needs_eviction_lookup(sandbox(deleting=True), silent)
    assert not needs_eviction_lookup(sandbox({"phase": "Failed", "reason": "ProcessExited"}), silent)
    assert not needs_eviction_lookup(sandbox(), None)


def test_an_eviction_makes_a_warning_event() -> None:
    ready = build_status(sandbox(), Verdict("Ready", "PodReady"), observe(ready=True), lifetime_seconds=60,
                         now=at(2))
    verdict = judge_pod(observe(phase="Failed", reason="Evicted", message=EVICTION_MESSAGE), recorded_pod_uid="pod-1")
    evicted = build_status(sandbox(status_body(ready)), verdict, None, lifetime_seconds=60, now=at(3))
    assert (evicted.phase, evicted.reason, evicted.message) == ("Failed", "Evicted", EVICTION_MESSAGE)
    [event] = transitions(ready, evicted)
    assert (event.type, event.reason) == ("Warning", "Evicted") and EVICTION_MESSAGE in event.message


def test_a_disruption_names_the_cause_of_a_deletion() -> None:
    verdict = judge_pod(observe(deleting=True, disruption=("DeletionByTaintManager", "NoExecute taint")),
                        recorded_pod_uid="pod-1")
    assert verdict.reason == "PodDeleted" and "(DeletionByTaintManager: NoExecute taint)" in verdict.message


def test_missing_pod_is_creating_until_one_was_recorded() -> None:
    assert judge_pod(None, recorded_pod_uid=None).reason == "Creating"
    gone = judge_pod(None, recorded_pod_uid="pod-1")
    assert (gone.phase, gone.reason) == ("Failed", "PodDeleted")
    replaced = judge_pod(observe(ready=True, uid="pod-2"), recorded_pod_uid="pod-1")
    assert (replaced.phase, replaced.reason) == ("Failed", "PodDeleted")


def test_ready_status() -> None:
    status = build_status(sandbox(), Verdict("Ready", "PodReady"), observe(ready=True), lifetime_seconds=3600,
                          now=at(3.7))
    body = status_body(status)
    assert body == {
        "phase": "Ready",
        "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 2,
                        "lastTransitionTime": iso(3), "reason": "PodReady", "message": ""}],
        "observedGeneration": 2, "podName": "sbx-1", "podUID": "pod-1", "nodeName": "node-1",
        "podIP": "10.1.0.7", "startTime": iso(1), "readyTime": iso(3), "lastActivityTime": iso(3),
        "expiresAt": iso(3600),
    }


def test_failure_status_has_reason_and_message() -> None:
    verdict = Verdict("Failed", "OOMKilled", "over the limit")
    body = status_body(build_status(sandbox(), verdict, observe(phase="Failed"), lifetime_seconds=60, now=at(5)))
    assert (body["phase"], body["reason"], body["message"]) == ("Failed", "OOMKilled", "over the limit")
    assert body["conditions"][0]["status"] == "False" and body["conditions"][0]["reason"] == "OOMKilled"
    assert body["expiresAt"] == iso(60)


def test_last_transition_time_changes_only_when_the_status_flips() -> None:
    first = status_body(build_status(sandbox(), Verdict("Pending", "Creating"), None, lifetime_seconds=60,
                                     now=at(1)))
    second = build_status(sandbox(first), Verdict("Pending", "PodPending"), observe(phase="Pending"),
                          lifetime_seconds=60, now=at(2))
    assert second.conditions[0].last_transition_time == at(1)
    third = build_status(sandbox(status_body(second)), Verdict("Ready", "PodReady"), observe(ready=True),
                         lifetime_seconds=60, now=at(4))
    assert third.conditions[0].last_transition_time == at(4)
    assert third.ready_time == at(4)
    fourth = build_status(sandbox(status_body(third)), Verdict("Pending", "NotReady"), observe(),
                          lifetime_seconds=60, now=at(9))
    assert fourth.ready_time == at(4), "readyTime records the first Ready"


def test_pod_identity_is_recorded_once() -> None:
    first = status_body(build_status(sandbox(), Verdict("Pending", "PodPending"), observe(phase="Pending"),
                                     lifetime_seconds=60, now=at(1)))
    assert first["podUID"] == "pod-1"
    later = build_status(sandbox(first), Verdict("Failed", "PodDeleted"), observe(uid="pod-2", ready=True),
                         lifetime_seconds=60, now=at(2))
    assert later.pod_uid == "pod-1"


def test_activity_annotation_moves_the_idle_clock() -> None:
    ready = status_body(build_status(sandbox(), Verdict("Ready", "PodReady"), observe(ready=True),
                                     lifetime_seconds=3600, now=at(3)))
    active = sandbox(ready, annotations={constants.ANNOTATION_LAST_ACTIVITY: iso(100)})
    status = build_status(active, Verdict("Ready", "PodReady"), observe(ready=True), lifetime_seconds=3600,
                          now=at(120))
    assert status.last_activity_time == at(100)
    bogus = sandbox(ready, annotations={constants.ANNOTATION_LAST_ACTIVITY: iso(10**6)})
    assert build_status(bogus, Verdict("Ready", "PodReady"), observe(ready=True), lifetime_seconds=3600,
                        now=at(120)).last_activity_time == at(3), "far-future activity is ignored"


def test_pod_deadline_caps_expiry() -> None:
    early = PodObservation.from_pod({**pod(ready=True), "spec": {"activeDeadlineSeconds": 100}})
    status = build_status(sandbox(), Verdict("Ready", "PodReady"), early, lifetime_seconds=3600, now=at(3))
    assert status.expires_at == at(101)
    later = build_status(sandbox(status_body(status)), Verdict("Failed", "PodDeleted"), None, lifetime_seconds=3600,
                         now=at(5))
    assert later.expires_at == at(101), "expiry never moves later once known"
    lowered = build_status(sandbox(status_body(status)), Verdict("Ready", "PodReady"), early, lifetime_seconds=50,
                           now=at(6))
    assert lowered.expires_at == at(50)


def test_decide_precedence() -> None:
    failed = status_body(build_status(sandbox(), Verdict("Failed", "OOMKilled", "boom"), None,
                                      lifetime_seconds=60, now=at(1)))
    # Terminal phases stick, even if a pod looks ready.
    assert decide(sandbox(failed), observe(ready=True)) == Verdict("Failed", "OOMKilled", "boom")
    assert decide(sandbox(failed), None, Verdict("Expired", "LifetimeExpired")).phase == "Failed"
    # Deletion wins and keeps a terminal reason.
    assert decide(sandbox(failed, deleting=True), None) == Verdict("Terminating", "OOMKilled", "boom")
    assert decide(sandbox(deleting=True), observe(ready=True)).reason == "Deleting"
    terminating = status_body(build_status(sandbox(failed, deleting=True), Verdict("Terminating", "OOMKilled", "boom"),
                                           None, lifetime_seconds=60, now=at(2)))
    assert decide(sandbox(terminating, deleting=True), None) == Verdict("Terminating", "OOMKilled", "boom"), \
        "a re-run of the delete handler keeps the reason"
    # An explicit verdict beats the pod for a live sandbox.
    assert decide(sandbox(), observe(ready=True), Verdict("Failed", "InvalidSpec", "x")).reason == "InvalidSpec"
    assert decide(sandbox(), observe(ready=True)).phase == "Ready"


def test_status_patch_writes_only_changes() -> None:
    old = {"phase": "Pending", "reason": "Creating", "podName": "x"}
    assert status_patch(old, dict(old)) == {}
    assert status_patch(old, {"phase": "Ready", "podName": "x"}) == {"phase": "Ready", "reason": None}


def test_transitions_make_one_event_each() -> None:
    pending = build_status(sandbox(), Verdict("Pending", "Creating"), None, lifetime_seconds=60, now=at(1))
    ready = build_status(sandbox(status_body(pending)), Verdict("Ready", "PodReady"), observe(ready=True),
                         lifetime_seconds=60, now=at(2))
    [event] = transitions(pending, ready)
    assert (event.type, event.reason) == ("Normal", "PodReady")
    assert "Pending -> Ready" in event.message
    assert transitions(ready, ready) == []
    oom = build_status(sandbox(status_body(ready)), Verdict("Failed", "OOMKilled", "over"), None,
                       lifetime_seconds=60, now=at(3))
    [event] = transitions(ready, oom)
    assert (event.type, event.reason) == ("Warning", "OOMKilled") and "over" in event.message
    reason_only = build_status(sandbox(status_body(pending)), Verdict("Pending", "Unschedulable", "no node"),
                               None, lifetime_seconds=60, now=at(2))
    [event] = transitions(pending, reason_only)
    assert (event.type, event.reason) == ("Warning", "Unschedulable")



def test_routine_start_steps_make_no_event_but_phase_changes_do() -> None:
    creating = build_status(sandbox(), Verdict("Pending", "Creating"), None, lifetime_seconds=60, now=at(1))
    pod_pending = build_status(sandbox(status_body(creating)), Verdict("Pending", "PodPending", "waiting"), None,
                               lifetime_seconds=60, now=at(2))
    assert transitions(creating, pod_pending) == []
    [first] = transitions(sandbox().status, creating)
    assert (first.type, first.reason) == ("Normal", "Creating") and "- -> Pending" in first.message


def test_pod_facts_alone_are_not_written_while_starting() -> None:
    starting = {"phase": "Pending", "reason": "PodPending", "podUID": "pod-1"}
    assert not worth_writing(starting, {})
    assert not worth_writing(starting, {"nodeName": "node-a", "startTime": iso(1)})
    assert worth_writing(starting, {"nodeName": "node-a", "reason": "ContainerCreating"})
    assert worth_writing(starting, {"phase": "Ready", "reason": None, "nodeName": "node-a"})
    assert worth_writing({"phase": "Pending", "reason": "Creating"}, {"podUID": "pod-1", "nodeName": "node-a"})
    assert worth_writing({"phase": "Ready", "podUID": "pod-1"}, {"podIP": "10.0.0.9"})
    assert worth_writing(starting, {"nodeName": "node-a", "lastActivityTime": iso(2)})


# --------------------------------------------------------------------------------------------------------------
# Collection


def ready_sandbox(ready_at: float = 5, **kwargs: Any) -> Sandbox:
    status = status_body(build_status(sandbox(), Verdict("Ready", "PodReady"), observe(ready=True),
                                      lifetime_seconds=kwargs.pop("lifetime", 3600), now=at(ready_at)))
    return sandbox(status, **kwargs)


def test_fresh_sandbox_is_kept() -> None:
    assert collection_due(ready_sandbox(), SETTINGS, at(60)) is None


def test_idle_sandbox_is_collected_after_idle_seconds() -> None:
    box = ready_sandbox(spec={"timeouts": {"idleSeconds": 100}})
    assert collection_due(box, SETTINGS, at(104)) is None
    due = collection_due(box, SETTINGS, at(105))
    assert due is not None and due.reason == "IdleTimeout" and "idleSeconds=100" in due.message


def test_recent_activity_keeps_a_sandbox() -> None:
    box = ready_sandbox(spec={"timeouts": {"idleSeconds": 100}},
                        annotations={constants.ANNOTATION_LAST_ACTIVITY: iso(90)})
    assert collection_due(box, SETTINGS, at(180)) is None
    assert collection_due(box, SETTINGS, at(190)) is not None


def test_future_activity_cannot_pin_a_sandbox() -> None:
    box = ready_sandbox(spec={"timeouts": {"idleSeconds": 100}},
                        annotations={constants.ANNOTATION_LAST_ACTIVITY: iso(10**7)})
    assert collection_due(box, SETTINGS, at(200)) is not None


def test_never_ready_sandbox_idles_from_creation() -> None:
    box = sandbox({"phase": "Failed", "reason": "ImageMissing"}, spec={"timeouts": {"idleSeconds": 100}})
    assert collection_due(box, SETTINGS, at(99)) is None
    assert collection_due(box, SETTINGS, at(100)) is not None


def test_lifetime_applies_regardless_of_activity() -> None:
    box = ready_sandbox(lifetime=200, spec={"timeouts": {"lifetimeSeconds": 200, "idleSeconds": 100}},
                        annotations={constants.ANNOTATION_LAST_ACTIVITY: iso(199)})
    assert collection_due(box, SETTINGS, at(199)) is None
    due = collection_due(box, SETTINGS, at(200))
    assert due is not None and due.reason == "LifetimeExpired"


def test_lifetime_without_status_counts_from_creation() -> None:
    box = sandbox(spec={"timeouts": {"lifetimeSeconds": 50, "idleSeconds": 50}})
    due = collection_due(box, SETTINGS, at(50))
    assert due is not None and due.reason == "LifetimeExpired"


def test_deleting_sandbox_is_not_collected_again() -> None:
    assert collection_due(sandbox(deleting=True, spec={"timeouts": {"lifetimeSeconds": 10, "idleSeconds": 10}}),
                          SETTINGS, at(1000)) is None

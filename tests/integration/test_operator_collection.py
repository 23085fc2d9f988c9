"""Collection: idle sandboxes go within idleSeconds plus one collection interval while active ones stay;
lifetime expiry gives Expired and clean-up, whether the collector or the kubelet's deadline gets there first."""

from __future__ import annotations

import datetime

from tests.integration.conftest import TEST_GC_INTERVAL, SandboxEnv
from tests.kit import Heartbeat, PhaseRecorder, consistently, wait_until

SMALL = {"cpu": "20m", "memory": "128Mi", "ephemeralStorage": "256Mi"}
IDLE = 12
SLACK = 3.0  # API round trips and second-granularity timestamps


def test_idle_sandbox_collected_active_one_kept(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    spec = {"resources": SMALL, "timeouts": {"idleSeconds": IDLE, "lifetimeSeconds": 600}}
    kube.create(ns, "idle", spec)
    kube.create(ns, "busy", spec)
    heartbeat = Heartbeat(kube, ns, "busy", period=2.0)
    try:
        idle_status = kube.wait_phase(ns, "idle", "Ready")
        kube.wait_phase(ns, "busy", "Ready")
        ready_at = datetime.datetime.fromisoformat(idle_status["readyTime"])

        kube.wait_gone(ns, "idle", timeout=IDLE + 60)
        gone_at = datetime.datetime.now(datetime.UTC)
        budget = IDLE + float(TEST_GC_INTERVAL) + SLACK
        assert (gone_at - ready_at).total_seconds() <= budget, (gone_at - ready_at)
        event = kube.wait_event(ns, "idle", "IdleTimeout")
        assert f"idleSeconds={IDLE}" in event["message"]
        wait_until(lambda: not kube.pods(ns, "idle"), 30, message="the idle sandbox's pod to be gone")

        # The active one outlives its own idle window by two more collection passes.
        consistently(lambda: kube.get(ns, "busy") is not None, 2 * float(TEST_GC_INTERVAL) + SLACK,
                     message="the active sandbox kept")
        status = kube.status(ns, "busy")
        assert status["phase"] == "Ready"
        mirrored = datetime.datetime.fromisoformat(status["lastActivityTime"])
        assert mirrored > datetime.datetime.fromisoformat(status["readyTime"]), "activity mirrored into status"
    finally:
        heartbeat.stop()
    # Once the client stops, it is collected too.
    kube.wait_gone(ns, "busy", timeout=IDLE + 60)


def test_lifetime_expiry_by_the_collector(sbx_env: SandboxEnv) -> None:
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start()
    kube.create(ns, "mortal", {"resources": SMALL, "timeouts": {"idleSeconds": 10, "lifetimeSeconds": 15}})
    recorder = PhaseRecorder(env.cluster.api, ns, "mortal")
    heartbeat = Heartbeat(kube, ns, "mortal", period=2.0)  # activity does not extend a lifetime
    try:
        kube.wait_phase(ns, "mortal", "Ready")
        kube.wait_gone(ns, "mortal", timeout=90)
    finally:
        heartbeat.stop()
        recorder.stop()
    assert "Expired" in recorder.phases, recorder.phases
    assert recorder.phases.index("Ready") < recorder.phases.index("Expired")
    reasons = kube.event_reasons(ns, "mortal")
    assert "LifetimeExpired" in reasons or "DeadlineExceeded" in reasons, reasons
    wait_until(lambda: not kube.pods(ns) and not kube.policies(ns), 30, message="the pod and policy to be gone")


def test_deadline_exceeded_becomes_expired(sbx_env: SandboxEnv) -> None:
    """With the collector far away, the pod's activeDeadlineSeconds (the kubelet) ends the sandbox."""
    env, kube, ns = sbx_env, sbx_env.kube, sbx_env.namespace
    env.start(gc_interval_seconds="600")
    kube.create(ns, "deadline", {"resources": SMALL, "timeouts": {"idleSeconds": 10, "lifetimeSeconds": 12}})
    recorder = PhaseRecorder(env.cluster.api, ns, "deadline")
    try:
        kube.wait_phase(ns, "deadline", "Ready")
        kube.wait_gone(ns, "deadline", timeout=120)
    finally:
        recorder.stop()
    assert "Expired" in recorder.phases, recorder.phases
    assert "DeadlineExceeded" in kube.event_reasons(ns, "deadline")
    wait_until(lambda: not kube.pods(ns), 30, message="the pod to be gone")

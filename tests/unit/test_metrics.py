"""The phase gauge: kept equal to the phases of the Sandboxes seen, one change at a time."""

from __future__ import annotations

from prometheus_client import REGISTRY

from sandbox_operator.metrics import PhaseTracker


def gauge(phase: str) -> float | None:
    return REGISTRY.get_sample_value("sandbox_operator_sandboxes", {"phase": phase})


def test_the_gauge_follows_each_sandbox_between_phases_and_out() -> None:
    tracker = PhaseTracker()
    for name in ("a", "b", "c"):
        tracker.set(("ns", name), "Pending")
    assert (gauge("Pending"), gauge("Ready")) == (3, 0)
    tracker.set(("ns", "a"), "Ready")
    tracker.set(("ns", "a"), "Ready")  # an unchanged phase counts once
    tracker.set(("ns", "b"), "Ready")
    assert (gauge("Pending"), gauge("Ready")) == (1, 2)
    tracker.set(("ns", "b"), None)
    tracker.set(("ns", "b"), None)  # a Sandbox already gone
    tracker.set(("ns", "c"), "Failed")
    assert (gauge("Pending"), gauge("Ready"), gauge("Failed")) == (0, 1, 1)
    assert tracker.count() == 2

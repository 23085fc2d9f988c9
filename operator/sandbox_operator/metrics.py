"""Prometheus metrics of the operator, served on ``SANDBOX_OPERATOR_METRICS_PORT`` at ``/metrics``."""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Ready", "Terminating", "Expired", "Failed")

SANDBOXES = Gauge("sandbox_operator_sandboxes", "Sandboxes known to the operator, by status phase", ["phase"])
CREATE_TO_READY = Histogram(
    "sandbox_operator_create_to_ready_seconds",
    "Time from a Sandbox's creation to its first Ready status",
    buckets=(0.5, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300),
)
COLLECTIONS = Counter("sandbox_operator_collections_total", "Sandboxes deleted by the collector, by reason",
                      ["reason"])
COLLECTOR_PASS_SECONDS = Histogram(
    "sandbox_operator_collector_pass_seconds",
    "Duration of one collector pass over every Sandbox: the decision, then its deletions and status writes",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
COLLECTOR_SANDBOXES = Gauge("sandbox_operator_collector_sandboxes", "Sandboxes the latest collector pass looked at")
RECONCILE_ERRORS = Counter("sandbox_operator_reconcile_errors_total",
                           "Handler runs that ended in an error, by handler and error kind",
                           ["handler", "kind"])
POOL_PODS = Gauge("sandbox_operator_pool_pods", "Unclaimed pods of each SandboxPool, by state (ready or starting)",
                  ["namespace", "pool", "state"])
POOL_CLAIMS = Counter("sandbox_operator_pool_claims_total",
                      "Sandboxes with spec.poolRef, by outcome: warm (a pool pod was claimed) or cold (started "
                      "from the template)", ["outcome"])
POOL_CLAIM_SECONDS = Histogram(
    "sandbox_operator_pool_claim_seconds",
    "Time the operator takes to hand a Sandbox a warm pod: its NetworkPolicy, the pick and the claim's write",
    buckets=(0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5),
)
LEADER = Gauge("sandbox_operator_leader",
               "1 while this process runs the handlers (it holds the leader Lease, or election is off), "
               "0 while it waits as a standby")

for _reason in ("LifetimeExpired", "IdleTimeout"):
    COLLECTIONS.labels(_reason)

for _outcome in ("warm", "cold"):
    POOL_CLAIMS.labels(_outcome)


class PhaseTracker:
    """Keeps the phase gauge equal to the phases of the Sandboxes currently seen (thread-safe). A change moves one
    Sandbox between two counts: constant time, whatever the number of Sandboxes."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = dict.fromkeys(PHASES, 0)
        self._lock = threading.Lock()
        for phase in PHASES:  # a new tracker knows no Sandbox yet
            SANDBOXES.labels(phase).set(0)

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        with self._lock:
            old = self._phases.pop(key, None) if phase is None else self._phases.get(key)
            if phase is not None:
                self._phases[key] = phase
            if old == phase:
                return
            for name, step in ((old, -1), (phase, 1)):
                if name is not None:
                    self._counts[name] = self._counts.get(name, 0) + step
                    SANDBOXES.labels(name).set(self._counts[name])

    def count(self) -> int:
        with self._lock:
            return len(self._phases)


_started: set[int] = set()


def serve(port: int, address: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Starts the HTTP endpoint once per port (0 disables it)."""
    if port and port not in _started:
        start_http_server(port, addr=address, registry=registry)
        _started.add(port)

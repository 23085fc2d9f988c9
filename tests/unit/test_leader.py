"""Leader election: the pure decision and specs, and the elector against an in-memory Lease API."""

from __future__ import annotations

import datetime
import http.client
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException
from prometheus_client import REGISTRY

from sandbox_operator import metrics
from sandbox_operator.leader import (
    EXIT_LEADERSHIP_LOST,
    Action,
    LeaderElector,
    LeaseRecord,
    Observer,
    claimed_spec,
    decide,
    micro_time,
    released_spec,
    run_as_leader,
    standby_health,
)
from sandbox_operator.settings import OperatorSettings
from tests.unit.fake_kube import Response, api_error

JSON = dict[str, Any]
NS, NAME = "ops", "sandbox-operator"
WHERE = f"{NS}/{NAME}"
T0 = datetime.datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=datetime.UTC)
_SERIALIZER = client.ApiClient()
# What Go's time.Parse(RFC3339Micro) accepts for a MicroTime: exactly six fractional digits.
MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")
REPO = Path(__file__).resolve().parents[2]


class FakeLeases:
    """CoordinationV1Api's three Lease calls, answering as the API server does: 404 for a missing Lease, 409 for
    a create of an existing one or a replace whose resourceVersion is not the stored one, 400 for a MicroTime
    without six fractional digits, a new resourceVersion on every write. Bodies go through the real client's
    model and serializer first, as on the wire. ``failing`` makes every call fail with that status."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, str], JSON] = {}
        self.versions = itertools.count(1)
        self.failing: int | None = None
        self.writes = 0
        self.reads = 0
        self.on_read: Callable[[int], object] = lambda count: None

    def _check(self) -> None:
        if self.failing is not None:
            raise api_error(self.failing, "ServiceUnavailable", "the API server is away")

    def _store(self, namespace: str, name: str, body: Any) -> Response:
        sent: JSON = _SERIALIZER.sanitize_for_serialization(client.V1Lease.model_validate(body))
        for key in ("acquireTime", "renewTime"):
            value = (sent.get("spec") or {}).get(key)
            if value is not None and not MICRO_TIME.fullmatch(value):
                raise api_error(400, "BadRequest", f"spec.{key}: {value!r} is not a MicroTime")
        sent["metadata"] = {**sent.get("metadata", {}), "name": name, "namespace": namespace,
                            "resourceVersion": str(next(self.versions))}
        self.stored[namespace, name] = sent
        self.writes += 1
        return Response(json.dumps(sent).encode())

    def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> Response:
        self.reads += 1
        self.on_read(self.reads)
        self._check()
        if (namespace, name) not in self.stored:
            raise api_error(404, "NotFound", f"leases {name!r} not found")
        return Response(json.dumps(self.stored[namespace, name]).encode())

    def create_namespaced_lease(self, namespace: str, body: Any, **_: Any) -> Response:
        self._check()
        if (namespace, body["metadata"]["name"]) in self.stored:
            raise api_error(409, "AlreadyExists", "already exists")
        return self._store(namespace, body["metadata"]["name"], body)

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, **_: Any) -> Response:
        self._check()
        stored = self.stored.get((namespace, name))
        if stored is None:
            raise api_error(404, "NotFound", f"leases {name!r} not found")
        if body["metadata"].get("resourceVersion") != stored["metadata"]["resourceVersion"]:
            raise api_error(409, "Conflict", "the object has been modified")
        return self._store(namespace, name, body)

    def spec(self) -> JSON:
        spec: JSON = self.stored[NS, NAME]["spec"]
        return spec


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def elector(leases: FakeLeases, identity: str, clock: Any = time.monotonic, **timing: Any) -> LeaderElector:
    durations = {"lease_duration": 8, "renew_deadline": 6.0, "retry_period": 1.0, **timing}
    return LeaderElector(leases=leases, namespace=NS, name=NAME, identity=identity, clock=clock,
                         wall_clock=lambda: T0, **durations)


def record(holder: str = "other", duration: int | None = 8, renew_time: str = "t1", version: str = "1") -> LeaseRecord:
    return LeaseRecord(holder=holder, duration_seconds=duration, renew_time=renew_time, transitions=0,
                       resource_version=version)


# The decision ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("lease", "observed_for", "expected"), [
    (None, 0.0, Action.CREATE),
    (record(holder="me"), 0.0, Action.RENEW),
    (record(holder="me"), 100.0, Action.RENEW),
    (record(holder=""), 0.0, Action.TAKE_OVER),
    (record(), 7.9, Action.WAIT),
    (record(), 8.0, Action.TAKE_OVER),
    (record(duration=1), 1.0, Action.TAKE_OVER),  # the holder's duration counts (a released one: 1 s)
    (record(duration=30), 29.0, Action.WAIT),
    (record(duration=None), 4.9, Action.WAIT),  # no duration: ours (5 s here)
    (record(duration=None), 5.0, Action.TAKE_OVER),
])
def test_decide(lease: LeaseRecord | None, observed_for: float, expected: Action) -> None:
    assert decide(lease, observed_at=50.0, now=50.0 + observed_for, identity="me", default_duration=5) is expected


def test_the_observer_restarts_its_timing_whenever_the_record_changes() -> None:
    observer = Observer()
    assert observer.since(None, 1.0) == 1.0
    assert observer.since(record(), 2.0) == 2.0
    assert observer.since(record(), 9.0) == 2.0
    assert observer.since(record(renew_time="t2"), 10.0) == 10.0  # the holder renewed
    assert observer.since(record(renew_time="t2", version="2"), 11.0) == 11.0  # someone wrote
    assert observer.since(record(holder="third", renew_time="t2", version="2"), 12.0) == 12.0
    assert observer.since(record(holder="third", renew_time="t2", version="2"), 30.0) == 12.0


def test_lease_record_reads_a_lease_and_a_released_one() -> None:
    lease = {"metadata": {"resourceVersion": "42"},
             "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 8, "renewTime": "x", "leaseTransitions": 3}}
    assert LeaseRecord.from_lease(lease) == LeaseRecord("pod-a", 8, "x", 3, "42")
    assert LeaseRecord.from_lease({"metadata": {"resourceVersion": "1"}, "spec": {}}) == LeaseRecord(
        "", None, None, 0, "1")


def test_micro_time_has_six_fraction_digits_that_survive_the_client() -> None:
    assert micro_time(T0) == "2026-12-01T12:00:00.250000Z"
    whole = datetime.datetime(2026, 12, 1, 13, 0, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert micro_time(whole) == "2026-12-01T12:00:00.000001Z"  # UTC, and a zero fraction would be dropped
    for stamp in (micro_time(T0), micro_time(whole)):
        lease = client.V1Lease.model_validate({"spec": {"renewTime": stamp}})
        assert MICRO_TIME.fullmatch(_SERIALIZER.sanitize_for_serialization(lease)["spec"]["renewTime"])


def test_claimed_specs() -> None:
    previous = {"holderIdentity": "old", "leaseDurationSeconds": 15, "acquireTime": "a", "renewTime": "r",
                "leaseTransitions": 4, "strategy": "OldestEmulationVersion"}
    stamp = micro_time(T0)
    assert claimed_spec(Action.CREATE, None, "me", 8, T0) == {
        "holderIdentity": "me", "leaseDurationSeconds": 8, "acquireTime": stamp, "renewTime": stamp,
        "leaseTransitions": 0}
    assert claimed_spec(Action.TAKE_OVER, previous, "me", 8, T0) == {
        **previous, "holderIdentity": "me", "leaseDurationSeconds": 8, "acquireTime": stamp, "renewTime": stamp,
        "leaseTransitions": 5}
    assert claimed_spec(Action.RENEW, {**previous, "holderIdentity": "me"}, "me", 8, T0) == {
        **previous, "holderIdentity": "me", "leaseDurationSeconds": 8, "renewTime": stamp}
    released = released_spec({**previous, "holderIdentity": "me"}, T0)
    assert "holderIdentity" not in released
    assert released["leaseDurationSeconds"] == 1 and released["leaseTransitions"] == 4
    assert released["renewTime"] == stamp and released["acquireTime"] == "a"


# The elector ----------------------------------------------------------------------------------------------------

def test_one_creates_the_other_waits_until_the_lease_expires_on_its_own_clock() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "pod-a", clock), elector(leases, "pod-b", clock)
    assert a.attempt(leading=False, timeout=1)
    assert leases.spec()["holderIdentity"] == "pod-a" and leases.spec()["leaseTransitions"] == 0
    assert not b.attempt(leading=False, timeout=1)
    for _ in range(20):  # a keeps renewing: b never gets it
        clock.now += 1
        assert a.attempt(leading=True, timeout=1)
        assert not b.attempt(leading=False, timeout=1)
    clock.now += 7.9  # a stopped renewing; b has seen its last record for under 8 s
    assert not b.attempt(leading=False, timeout=1)
    clock.now += 0.1
    assert b.attempt(leading=False, timeout=1)
    assert leases.spec()["holderIdentity"] == "pod-b" and leases.spec()["leaseTransitions"] == 1
    assert b.transitions == 1
    assert not a.attempt(leading=True, timeout=1) and a.lost  # a renews no more: it must exit


def test_the_wall_clock_in_the_lease_does_not_matter() -> None:
    """A holder whose clock is far ahead or behind expires after the lease duration as the standby sees it."""
    leases, clock = FakeLeases(), Clock()
    ahead = elector(leases, "pod-a", clock)
    ahead.wall_clock = lambda: T0 + datetime.timedelta(days=365)
    assert ahead.attempt(leading=False, timeout=1)
    standby = elector(leases, "pod-b", clock)
    standby.wall_clock = lambda: T0 - datetime.timedelta(days=365)
    assert not standby.attempt(leading=False, timeout=1)
    clock.now += 8
    assert standby.attempt(leading=False, timeout=1)


def test_the_renewal_time_is_taken_before_the_round() -> None:
    """The leader's deadline runs from before its request, the standby's wait from after it saw the result: the
    leader always gives up first."""
    ticks = itertools.count(10.0)
    leader = elector(FakeLeases(), "pod-a", clock=lambda: next(ticks))
    assert leader.attempt(leading=False, timeout=1)
    assert leader.renewed_at == 10.0


def test_of_two_racing_replicas_only_one_wins() -> None:
    leases = FakeLeases()
    a, b = elector(leases, "pod-a"), elector(leases, "pod-b")
    first, second = a._read(1), b._read(1)  # both see no Lease
    assert first is None and second is None
    assert a.attempt(leading=False, timeout=1)
    assert b._create(claimed_spec(Action.CREATE, None, "pod-b", 8, T0), 1) is None  # 409: a won
    clock = Clock()
    a.clock = b.clock = clock
    a.attempt(leading=True, timeout=1)
    stale = b._read(1)
    assert stale is not None
    a.attempt(leading=True, timeout=1)
    assert b._replace({**stale, "spec": claimed_spec(Action.TAKE_OVER, stale["spec"], "pod-b", 8, T0)}, 1) is None
    assert leases.spec()["holderIdentity"] == "pod-a"


def test_a_replica_restarted_under_the_same_identity_takes_its_lease_back_at_once() -> None:
    leases = FakeLeases()
    assert elector(leases, "pod-a").attempt(leading=False, timeout=1)
    again = elector(leases, "pod-a")
    assert again.attempt(leading=False, timeout=1) and not again.lost
    assert leases.spec()["leaseTransitions"] == 0


def test_release_hands_over_at_the_next_retry() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "pod-a", clock), elector(leases, "pod-b", clock)
    assert a.attempt(leading=False, timeout=1)
    assert not b.attempt(leading=False, timeout=1)
    a.release()
    spec = leases.spec()
    assert "holderIdentity" not in spec and spec["leaseDurationSeconds"] == 1 and spec["leaseTransitions"] == 0
    assert b.attempt(leading=False, timeout=1)  # no wait: nobody holds it
    assert leases.spec()["holderIdentity"] == "pod-b" and leases.spec()["leaseTransitions"] == 1
    writes = leases.writes
    a.release()  # already released: nothing to write
    assert leases.writes == writes


def test_release_leaves_a_lease_someone_else_holds_or_nobody_has() -> None:
    leases, clock = FakeLeases(), Clock()
    a, b = elector(leases, "pod-a", clock), elector(leases, "pod-b", clock)
    assert a.attempt(leading=False, timeout=1)
    assert not b.attempt(leading=False, timeout=1)
    clock.now += 8
    assert b.attempt(leading=False, timeout=1)
    a.release()  # 409: b's now
    assert leases.spec()["holderIdentity"] == "pod-b"
    del leases.stored[NS, NAME]
    b.release()  # 404: ignored
    assert not leases.stored


def test_acquire_logs_the_holder_once_and_each_problem_once(caplog: pytest.LogCaptureFixture) -> None:
    leases = FakeLeases()
    assert elector(leases, "pod-a").attempt(leading=False, timeout=1)
    standby = elector(leases, "pod-b", retry_period=0.01)
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="sandbox_operator.leader")

    def script(reads: int) -> None:
        if reads == 5:
            leases.failing = 403
        if reads == 10:
            stop.set()

    leases.on_read = script
    assert not standby.acquire(stop)
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(f"standby: lease {WHERE} held by pod-a") == 1
    problems = [m for m in messages if m.startswith(f"leader election: lease {WHERE}: HTTP 403")]
    assert len(problems) == 1, messages


def test_acquire_takes_a_released_lease_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    leases = FakeLeases()
    holder = elector(leases, "pod-a")
    assert holder.attempt(leading=False, timeout=1)
    holder.release()
    caplog.set_level(logging.INFO, logger="sandbox_operator.leader")
    assert elector(leases, "pod-b", retry_period=0.01).acquire(threading.Event())
    assert f"leading: acquired lease {WHERE} as pod-b (transitions 1)" in caplog.messages


def test_renewal_gives_up_within_the_renew_deadline_when_the_api_is_away() -> None:
    leases = FakeLeases()
    leader = elector(leases, "pod-a", lease_duration=2, renew_deadline=0.3, retry_period=0.05)
    assert leader.attempt(leading=False, timeout=1)
    leases.failing = 503
    started = time.monotonic()
    reason = leader.keep_renewing(threading.Event())
    assert reason == f"no renewal of lease {WHERE} succeeded for 0.3 s"
    assert 0.2 <= time.monotonic() - started < 1.0


def test_renewal_gives_up_at_once_when_the_lease_is_someone_elses_or_gone() -> None:
    leases = FakeLeases()
    leader = elector(leases, "pod-a", lease_duration=60, renew_deadline=30, retry_period=0.01)
    assert leader.attempt(leading=False, timeout=1)
    leases.stored[NS, NAME]["spec"]["holderIdentity"] = "intruder"
    assert leader.keep_renewing(threading.Event()) == f"lease {WHERE} is held by intruder"
    del leases.stored[NS, NAME]
    assert leader.keep_renewing(threading.Event()) == f"lease {WHERE} is gone"
    assert not leases.stored  # a leader never re-creates a Lease it lost


def test_renewal_renews_until_stopped() -> None:
    leases = FakeLeases()
    leader = elector(leases, "pod-a", lease_duration=2, renew_deadline=0.5, retry_period=0.01)
    assert leader.attempt(leading=False, timeout=1)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert leader.keep_renewing(stop) is None
    assert leases.writes >= 5 and leases.spec()["holderIdentity"] == "pod-a"


# The process ----------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_standby_health_answers_and_frees_its_port() -> None:
    port = _free_port()
    with standby_health("127.0.0.1", port) as bound:
        assert bound == port
        assert _get(port, "/healthz") == (200, b"standby")
        assert _get(port, "/healthz?verbose=1")[0] == 200
        assert _get(port, "/metrics")[0] == 404
    with socket.socket() as again:  # kopf binds the same port next
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
    with standby_health("127.0.0.1", 0) as none:
        assert none == 0


def leader_gauge() -> float | None:
    return REGISTRY.get_sample_value("sandbox_operator_leader")


@pytest.fixture
def quiet_settings() -> OperatorSettings:
    return OperatorSettings(health_port=0, metrics_port=0)


def test_run_as_leader_runs_while_holding_and_releases_after(quiet_settings: OperatorSettings) -> None:
    leases = FakeLeases()
    seen: list[tuple[str, float]] = []

    def run() -> None:
        seen.append((leases.spec()["holderIdentity"], leader_gauge()))

    assert run_as_leader(quiet_settings, run, elector(leases, "pod-a", retry_period=0.01)) == 0
    assert seen == [("pod-a", 1.0)]
    assert "holderIdentity" not in leases.spec() and leader_gauge() == 0


def test_run_as_leader_releases_when_run_fails(quiet_settings: OperatorSettings) -> None:
    leases = FakeLeases()

    def run() -> None:
        raise RuntimeError("kopf crashed")

    with pytest.raises(RuntimeError, match="kopf crashed"):
        run_as_leader(quiet_settings, run, elector(leases, "pod-a", retry_period=0.01))
    assert "holderIdentity" not in leases.spec()


def test_sigterm_while_standby_ends_the_wait(quiet_settings: OperatorSettings) -> None:
    leases = FakeLeases()
    assert elector(leases, "pod-a").attempt(leading=False, timeout=1)
    ran: list[bool] = []
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert run_as_leader(quiet_settings, lambda: ran.append(True), elector(leases, "pod-b", retry_period=0.01)) == 0
    assert ran == [] and leases.spec()["holderIdentity"] == "pod-a"
    assert signal.getsignal(signal.SIGTERM) is before


def test_standby_metrics_say_zero(quiet_settings: OperatorSettings) -> None:
    leases = FakeLeases()
    assert elector(leases, "pod-a").attempt(leading=False, timeout=1)
    metrics.LEADER.set(1)
    observed: list[float] = []

    def script(reads: int) -> None:
        if reads == 3:
            observed.append(leader_gauge())
            os.kill(os.getpid(), signal.SIGTERM)

    leases.on_read = script
    run_as_leader(quiet_settings, lambda: None, elector(leases, "pod-b", retry_period=0.01))
    assert observed == [0.0]


LOSING_LEADER = f"""
import time
from sandbox_operator.settings import OperatorSettings
from sandbox_operator.leader import LeaderElector, run_as_leader
from tests.unit.test_leader import FakeLeases

leases = FakeLeases()
elector = LeaderElector(leases=leases, namespace="{NS}", name="{NAME}", identity="pod-a", lease_duration=2,
                        renew_deadline=0.5, retry_period=0.05)

def run():
    leases.failing = 503
    time.sleep(30)
    print("still running")

run_as_leader(OperatorSettings(health_port=0, metrics_port=0), run, elector)
"""


def test_a_leader_that_cannot_renew_exits_with_status_3() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_OPERATOR_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", LOSING_LEADER], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode == EXIT_LEADERSHIP_LOST, result.stderr
    assert time.monotonic() - started < 15
    assert "still running" not in result.stdout
    assert f"lost leadership: no renewal of lease {WHERE} succeeded for 0.5 s; exiting with status 3" in result.stderr


@pytest.fixture(autouse=True)
def _leader_gauge_reset() -> Iterator[None]:
    yield
    metrics.LEADER.set(0)


def test_api_errors_other_than_conflict_propagate_from_an_attempt() -> None:
    leases = FakeLeases()
    leases.failing = 500
    with pytest.raises(ApiException):
        elector(leases, "pod-a").attempt(leading=False, timeout=1)

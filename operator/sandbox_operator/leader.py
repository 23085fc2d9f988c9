"""Leader election through a ``coordination.k8s.io/v1`` Lease: one replica runs the handlers, the others wait.

The algorithm is client-go's. A replica reads the Lease each retry period; it creates it when there is none,
takes it over when it is released (no holder) or when its record has not changed for the holder's
``leaseDurationSeconds`` as observed on this replica's own monotonic clock (so wall-clock skew between nodes
does not matter), and otherwise waits. Every write carries the resourceVersion it read (create: the name), so
of two replicas racing only one wins; the other gets 409 and tries again next period.

Never two leaders: the leader counts its renewal time from *before* the round that renewed, and exits the process
(status :data:`EXIT_LEADERSHIP_LOST`) once ``renew_deadline`` passes without another; a standby counts from when it
*saw* that renewal, which is later, and waits the longer ``lease_duration``. So the old leader is gone before a
standby may write. A leader that finds the Lease gone or held by someone else exits at once.

The decision (:func:`decide`) and the new spec (:func:`claimed_spec`) are pure; :class:`LeaderElector` does the
I/O with the official client's ``CoordinationV1Api`` on a client of its own, so that renewals never queue
behind the handlers' connections.
"""

from __future__ import annotations

import contextlib
import datetime
import enum
import http.server
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Protocol

import urllib3
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants, metrics
from sandbox_operator.k8s.api import JSON, api_message, make_api_client
from sandbox_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

# The process's exit status when it stops leading without being asked to (the Deployment restarts it, as a
# standby): a renewal did not succeed within the renew deadline, or the Lease is gone or someone else's.
EXIT_LEADERSHIP_LOST = 3
# Released: a standby takes over at its next retry; client-go releases with the same 1 s.
RELEASED_DURATION_SECONDS = 1
STANDBY_BODY = b"standby"
HEALTH_PATH = "/healthz"
# A renewal round never waits less than this for the API server, even right at the deadline.
MIN_REQUEST_SECONDS = 0.1
LeaseError = (ApiException, urllib3.exceptions.HTTPError)


class Action(enum.Enum):
    CREATE = "create"
    TAKE_OVER = "take over"
    RENEW = "renew"
    WAIT = "wait"


@dataclass(frozen=True)
class LeaseRecord:
    """What election reads from a Lease."""

    holder: str  # "" when released
    duration_seconds: int | None
    renew_time: str | None
    transitions: int
    resource_version: str

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or "", duration_seconds=spec.get("leaseDurationSeconds"),
                   renew_time=spec.get("renewTime"), transitions=int(spec.get("leaseTransitions") or 0),
                   resource_version=str((lease.get("metadata") or {}).get("resourceVersion") or ""))

    @property
    def key(self) -> tuple[str, str | None, str]:
        """Changes whenever the holder renews (or anyone writes): what a standby times."""
        return self.holder, self.renew_time, self.resource_version


def decide(record: LeaseRecord | None, observed_at: float, now: float, identity: str,
           default_duration: int) -> Action:
    """What this replica does about the Lease ``record`` (None: there is none), which it first saw unchanged at
    ``observed_at`` (monotonic seconds; ``now`` on the same clock). A record without a duration counts with
    ``default_duration``, ours."""
    if record is None:
        return Action.CREATE
    if record.holder == identity:
        return Action.RENEW
    if not record.holder:
        return Action.TAKE_OVER
    if now - observed_at >= (record.duration_seconds or default_duration):
        return Action.TAKE_OVER
    return Action.WAIT


class Observer:
    """Remembers when this replica first saw the Lease's current record (client-go's observedTime)."""

    def __init__(self) -> None:
        self._key: tuple[str, str | None, str] | None = None
        self._since: float | None = None

    def since(self, record: LeaseRecord | None, now: float) -> float:
        key = record.key if record is not None else None
        if self._since is None or key != self._key:
            self._key, self._since = key, now
        return self._since


def micro_time(moment: datetime.datetime) -> str:
    """A Lease's MicroTime: RFC 3339 in UTC with six fractional digits, never all zero. The client parses it
    and sends ``isoformat()``, which drops a zero fraction, and the API server requires one: 1 µs is harmless."""
    utc = moment.astimezone(datetime.UTC)
    return utc.replace(microsecond=utc.microsecond or 1).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed_spec(action: Action, previous: Mapping[str, Any] | None, identity: str, duration_seconds: int,
                 now: datetime.datetime) -> JSON:
    """The Lease spec after ``action`` (create, take over or renew) by ``identity`` at ``now``. Fields election
    does not use are kept; the transition count goes up when the holder changes."""
    stamp = micro_time(now)
    spec: JSON = dict(previous or {}) if action is not Action.CREATE else {}
    if action is Action.RENEW:
        spec.setdefault("acquireTime", stamp)
    else:
        spec["acquireTime"] = stamp
        taken_over = action is Action.TAKE_OVER
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if taken_over else 0)
    spec.update(holderIdentity=identity, leaseDurationSeconds=duration_seconds, renewTime=stamp)
    return spec


def released_spec(previous: Mapping[str, Any], now: datetime.datetime) -> JSON:
    """The spec that hands the Lease back: no holder, a duration of 1 s, the transition count kept."""
    spec: JSON = {key: value for key, value in previous.items() if key != "holderIdentity"}
    spec.update(leaseDurationSeconds=RELEASED_DURATION_SECONDS, renewTime=micro_time(now))
    return spec


class LeaseApi(Protocol):
    """The calls election makes: ``kubernetes.client.CoordinationV1Api`` has them."""

    def read_namespaced_lease(self, name: str, namespace: str, *, _preload_content: bool = ...,
                              _request_timeout: float | None = ...) -> Any: ...

    def create_namespaced_lease(self, namespace: str, body: Any, *, field_manager: str | None = ...,
                                _preload_content: bool = ..., _request_timeout: float | None = ...) -> Any: ...

    def replace_namespaced_lease(self, name: str, namespace: str, body: Any, *, field_manager: str | None = ...,
                                 _preload_content: bool = ..., _request_timeout: float | None = ...) -> Any: ...


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status}: {api_message(error)}"
    return str(error) or type(error).__name__


@dataclass
class LeaderElector:
    """Acquires, renews and releases the Lease ``namespace/name`` as ``identity``."""

    leases: LeaseApi
    namespace: str
    name: str
    identity: str
    lease_duration: int
    renew_deadline: float
    retry_period: float
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime.datetime] = _utcnow
    renewed_at: float = 0.0
    """Monotonic time at which the round that last acquired or renewed began."""
    _lease: JSON | None = field(default=None, repr=False)
    _holder: str | None = field(default=None, repr=False)
    _problem: str = field(default="", repr=False)
    _observer: Observer = field(default_factory=Observer, repr=False)

    @property
    def where(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def transitions(self) -> int:
        return int(((self._lease or {}).get("spec") or {}).get("leaseTransitions") or 0)

    # One round ---------------------------------------------------------------------------------------------

    def attempt(self, *, leading: bool, timeout: float) -> bool:
        """Reads the Lease and, if :func:`decide` says so, writes it: True when this replica now holds it.
        A leader only renews: a Lease that is gone or someone else's means it has lost it (see :attr:`lost`)."""
        started = self.clock()
        current = self._read(timeout)
        record = LeaseRecord.from_lease(current) if current is not None else None
        self._holder = record.holder if record is not None else None
        seen = self.clock()
        action = decide(record, self._observer.since(record, seen), seen, self.identity, self.lease_duration)
        if action is Action.WAIT or (leading and action is not Action.RENEW):
            return False
        spec = claimed_spec(action, (current or {}).get("spec"), self.identity, self.lease_duration,
                            self.wall_clock())
        written = (self._create(spec, timeout) if current is None
                   else self._replace({**current, "spec": spec}, timeout))
        if written is None:
            return False
        self._lease, self._holder, self.renewed_at = written, self.identity, started
        return True

    @property
    def lost(self) -> bool:
        """Whether the last read found the Lease gone or held by another replica."""
        return self._holder != self.identity

    def _whose(self) -> str:
        if self._holder is None:
            return "gone"
        return f"held by {self._holder}" if self._holder else "released by someone else"

    def _read(self, timeout: float) -> JSON | None:
        try:
            response = self.leases.read_namespaced_lease(self.name, self.namespace, _preload_content=False,
                                                         _request_timeout=timeout)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        lease: JSON = json.loads(response.data)
        return lease

    def _create(self, spec: JSON, timeout: float) -> JSON | None:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec}
        return self._unless_conflict(lambda: self.leases.create_namespaced_lease(
            self.namespace, body, field_manager=constants.MANAGER_NAME, _preload_content=False,
            _request_timeout=timeout))

    def _replace(self, lease: JSON, timeout: float) -> JSON | None:
        """Writes ``lease`` if its resourceVersion is still current; None (409) if someone wrote first."""
        return self._unless_conflict(lambda: self.leases.replace_namespaced_lease(
            self.name, self.namespace, lease, field_manager=constants.MANAGER_NAME, _preload_content=False,
            _request_timeout=timeout))

    @staticmethod
    def _unless_conflict(call: Callable[[], Any]) -> JSON | None:
        try:
            written: JSON = json.loads(call().data)
        except ApiException as error:
            if error.status == 409:
                return None
            raise
        return written

    # Standby -----------------------------------------------------------------------------------------------

    def acquire(self, stop: threading.Event) -> bool:
        """Blocks until this replica holds the Lease (True) or ``stop`` is set (False)."""
        reported_holder: str | None = None
        while not stop.is_set():
            try:
                if self.attempt(leading=False, timeout=self.renew_deadline):
                    logger.info("leading: acquired lease %s as %s (transitions %d)", self.where, self.identity,
                                self.transitions)
                    return True
                self._problem = ""
                if self._holder and self._holder != reported_holder:
                    logger.info("standby: lease %s held by %s", self.where, self._holder)
                    reported_holder = self._holder
            except LeaseError as error:
                self._report(f"leader election: lease {self.where}: {_describe(error)}")
            stop.wait(self.retry_period)
        return False

    def _report(self, problem: str) -> None:
        """Warns once per distinct problem: a standby retries every period and would repeat it."""
        if problem != self._problem:
            logger.warning("%s", problem)
            self._problem = problem

    # Leading -----------------------------------------------------------------------------------------------

    def keep_renewing(self, stop: threading.Event) -> str | None:
        """Renews every retry period until ``stop`` is set (None) or leadership is lost: then returns why.
        Each request waits at most until the renew deadline."""
        while True:
            deadline = self.renewed_at + self.renew_deadline
            if stop.wait(max(0.0, min(self.retry_period, deadline - self.clock()))):
                return None
            if self.clock() >= deadline:
                return f"no renewal of lease {self.where} succeeded for {self.renew_deadline:g} s"
            try:
                if self.attempt(leading=True, timeout=max(MIN_REQUEST_SECONDS, deadline - self.clock())):
                    continue
                if self.lost:
                    return f"lease {self.where} is {self._whose()}"
            except Exception as error:  # any failure is a missed renewal: the deadline decides
                logger.warning("renewing lease %s failed: %s", self.where, _describe(error))

    def release(self) -> None:
        """Hands the Lease back (holder cleared, duration 1 s) if this replica's last write is still current;
        409 or 404 mean someone else has it now, or nobody: nothing to do."""
        if self._lease is None:
            return
        body = {**self._lease, "spec": released_spec(self._lease.get("spec") or {}, self.wall_clock())}
        try:
            released = self._replace(body, self.renew_deadline)
        except ApiException as error:
            if error.status != 404:
                logger.warning("releasing lease %s failed: %s", self.where, _describe(error))
            return
        except urllib3.exceptions.HTTPError as error:
            logger.warning("releasing lease %s failed: %s", self.where, _describe(error))
            return
        if released is not None:
            logger.info("released lease %s", self.where)
        self._lease = None


def elector_for(settings: OperatorSettings) -> LeaderElector:
    leases = client.CoordinationV1Api(make_api_client(workers=1))
    return LeaderElector(leases=leases, namespace=settings.lease_namespace, name=settings.lease_name,
                         identity=settings.leader_identity, lease_duration=settings.lease_duration_seconds,
                         renew_deadline=settings.renew_deadline_seconds,
                         retry_period=settings.retry_period_seconds)


class _StandbyHealth(http.server.BaseHTTPRequestHandler):
    """``/healthz`` while waiting: the process is alive and doing its job, so liveness probes pass."""

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(STANDBY_BODY)))
        self.end_headers()
        self.wfile.write(STANDBY_BODY)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a probe every few seconds would fill the log."""


@contextlib.contextmanager
def standby_health(address: str, port: int) -> Iterator[int]:
    """Serves the standby ``/healthz`` on ``address:port`` (0: nothing) until the block ends, then closes the
    socket, so that kopf's liveness endpoint can bind the same port. Yields the bound port."""
    if not port:
        yield 0
        return
    server = http.server.ThreadingHTTPServer((address, port), _StandbyHealth)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _exit_lost(reason: str) -> None:
    """Stops the whole process at once: kopf must not write another thing once another replica may lead."""
    logger.error("lost leadership: %s; exiting with status %d", reason, EXIT_LEADERSHIP_LOST)
    os._exit(EXIT_LEADERSHIP_LOST)


def run_as_leader(settings: OperatorSettings, run: Callable[[], None],
                  elector: LeaderElector | None = None) -> int:
    """Waits (standby) until this replica holds the Lease, then calls ``run`` (kopf.run) while a daemon thread
    renews it, and releases it when ``run`` returns. SIGTERM or SIGINT while waiting ends the wait: exit 0."""
    elector = elector or elector_for(settings)
    metrics.LEADER.set(0)
    metrics.serve(settings.metrics_port, settings.bind_address)
    stop_waiting = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_waiting.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        with standby_health(settings.bind_address, settings.health_port):
            acquired = elector.acquire(stop_waiting)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not acquired or stop_waiting.is_set():
        elector.release()
        return 0
    metrics.LEADER.set(1)
    stop_renewing = threading.Event()

    def renew() -> None:
        reason = elector.keep_renewing(stop_renewing)
        if reason is not None:
            _exit_lost(reason)

    renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        run()
    finally:
        stop_renewing.set()
        renewer.join()
        metrics.LEADER.set(0)
        elector.release()
    return 0

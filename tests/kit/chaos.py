"""Chaos on the local cluster: a burst of Sandbox creates and commands with a disruption in its middle, and what
must hold once it is over.

    burst = Burst(manager, kube, "chaos-apiserver")
    burst.run(lambda: restart_component("kube-apiserver"))
    burst.check()

:class:`Burst` creates ``size`` Sandboxes through the SDK, one every ``CREATE_INTERVAL`` seconds, each from a
thread of its own; once a Sandbox is Ready its thread runs commands in it that each append a unique id to
``IDS_FILE``, and records an id only when the client was told its command succeeded (exit code 0). A create or a
command that fails while the cluster is disrupted is simply not acknowledged; creates are retried (a 409 means an
earlier attempt got through). The disruption starts once half the Sandboxes are created and some command was
acknowledged, and the burst goes on until every Sandbox that is not Failed has run a command again after it.

:meth:`Burst.check` then asserts: every Sandbox is Ready, or Failed with one of the operator's documented reasons;
each has exactly one pod (a Failed one at most one: a deleted pod is why it failed) and one NetworkPolicy, both
controlled by it; no sandbox pod or policy lacks a live owner; every acknowledged id is in its Ready sandbox's file;
and deleting them all leaves nothing behind (no Sandbox held by its finalizer, no pod, no policy) within bounds.

The disruptions: :func:`restart_component` (hack/cluster-restart.sh) and :func:`kill_leader` (SIGKILL to the
operator processes of the pod holding the release's Lease, found on this machine by ``tests.kit.ha``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import urllib3
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.models.conditions import PHASE_FAILED, PHASE_READY, REASONS_BY_PHASE
from sandbox_operator.sdk import Sandbox, SandboxAlreadyExists, SandboxError, SandboxManager
from tests.kit.ha import controller_uid, operator_pids
from tests.kit.helm import Release
from tests.kit.kube import JSON, Kube
from tests.kit.repo import REPO_ROOT
from tests.kit.wait import wait_until

BURST_SIZE = 30
CREATE_INTERVAL = 0.5       # 30 creates over 15 s: the disruption lands among them
CREATE_DEADLINE = 150.0     # a create is retried this long after the burst starts
COMMAND_TIMEOUT = 20.0
COMMAND_PAUSE = 2.0         # per sandbox: 30 sandboxes make about 15 commands a second
POLL_INTERVAL = 1.0
IDS_FILE = f"{constants.WORKSPACE_DIR}/chaos-ids"
# How long, after the disruption ended, every sandbox has to become Ready (or Failed) and run a command again.
RECOVERY_TIMEOUT = 180.0
DELETE_TIMEOUT = 120.0      # every Sandbox gone, finalizer run, after deleting them all
RESTART_TIMEOUT = 420.0
TERMINAL_SETTLED = (PHASE_READY, PHASE_FAILED)
# What the Kubernetes client raises while the API server is away or answers with an error.
API_DOWN = (ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclass
class SandboxRecord:
    """What the client saw of one Sandbox of the burst."""

    name: str
    created: bool = False
    create_error: str = ""
    acknowledged: list[str] = field(default_factory=list)
    # Whether a command started after the disruption ended was acknowledged: commands work again.
    acknowledged_after_recovery: bool = False
    transient_errors: list[str] = field(default_factory=list)

    def note(self, error: BaseException) -> None:
        self.transient_errors = [*self.transient_errors[-4:], f"{type(error).__name__}: {error}"[:300]]


@dataclass
class Burst:
    manager: SandboxManager
    kube: Kube
    prefix: str
    size: int = BURST_SIZE
    records: dict[str, SandboxRecord] = field(init=False)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _phases: dict[str, str] = field(init=False, default_factory=dict)
    _recovered_at: float | None = field(init=False, default=None)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.records = {f"{self.prefix}-{i:02d}": SandboxRecord(f"{self.prefix}-{i:02d}") for i in range(self.size)}

    @property
    def namespace(self) -> str:
        return self.manager.namespace

    # The burst --------------------------------------------------------------------------------------------

    def run(self, disrupt: Callable[[], None]) -> None:
        """The burst, ``disrupt()`` in its middle, then commands until every sandbox has recovered."""
        started = time.monotonic()
        threads = [threading.Thread(target=self._poll_phases, name="phases", daemon=True)]
        threads += [threading.Thread(target=self._work, args=(record, started + i * CREATE_INTERVAL),
                                     name=record.name, daemon=True)
                    for i, record in enumerate(self.records.values())]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: (sum(r.created for r in self.records.values()) >= self.size // 2
                                and any(r.acknowledged for r in self.records.values())),
                       120, interval=0.1, message=lambda: f"half the burst created and a command acknowledged: "
                                                          f"{self.describe()}")
            disrupt()
            self._recovered_at = time.monotonic()
            wait_until(self._recovered, RECOVERY_TIMEOUT, interval=POLL_INTERVAL,
                       message=lambda: f"every Sandbox Ready (or Failed) and running commands again after the "
                                       f"disruption: {self.describe()}")
        finally:
            self._stop.set()
            # A command in flight ends within its timeout; a client blocked longer than that is a finding.
            join_deadline = time.monotonic() + COMMAND_TIMEOUT + 30
            for thread in threads:
                thread.join(timeout=max(0.0, join_deadline - time.monotonic()))
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"client threads still blocked {COMMAND_TIMEOUT + 30:g} s after the burst ended: {hung}"

    def _recovered(self) -> bool:
        phases = self.phases()
        return all(r.created and (phases.get(r.name) == PHASE_FAILED or r.acknowledged_after_recovery)
                   for r in self.records.values())

    def phases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._phases)

    def _poll_phases(self) -> None:
        """One list a second for all the workers (the API server may be down: then the last answer stands)."""
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                listed = {item["metadata"]["name"]: str((item.get("status") or {}).get("phase") or "")
                          for item in self.kube.sandboxes(self.namespace)}
                with self._lock:
                    self._phases = listed
            self._stop.wait(POLL_INTERVAL)

    def _work(self, record: SandboxRecord, start_at: float) -> None:
        self._stop.wait(max(0.0, start_at - time.monotonic()))
        if not self._create(record, start_at + CREATE_DEADLINE):
            return
        handle: Sandbox | None = None
        serial = 0
        while not self._stop.is_set():
            phase = self.phases().get(record.name)
            if phase == PHASE_FAILED:
                return
            if phase != PHASE_READY:
                self._stop.wait(POLL_INTERVAL)
                continue
            try:
                if handle is None:
                    handle = self.manager.get(record.name)
                command_id = f"{record.name}.{serial}"
                serial += 1
                issued = time.monotonic()
                result = handle.run(f"echo {command_id} >> {IDS_FILE}", timeout=COMMAND_TIMEOUT)
                if result.exit_code == 0:
                    record.acknowledged.append(command_id)
                    recovered_at = self._recovered_at
                    if recovered_at is not None and issued >= recovered_at:
                        record.acknowledged_after_recovery = True
                else:
                    record.transient_errors.append(f"exit {result.exit_code}: {result.stderr[:200]}")
            except Exception as error:  # anything during a disruption; only the acknowledged ids count
                record.note(error)
            self._stop.wait(COMMAND_PAUSE)

    def _create(self, record: SandboxRecord, deadline: float) -> bool:
        while not self._stop.is_set():
            try:
                self.manager.create(record.name, wait=False, labels={"chaos": self.prefix})
            except SandboxAlreadyExists:
                pass  # an earlier attempt reached the API server before its answer was lost
            except Exception as error:  # the API server may be down; try again until the deadline
                record.note(error)
                if time.monotonic() >= deadline:
                    record.create_error = str(error)[:300]
                    return False
                self._stop.wait(1)
                continue
            record.created = True
            return True
        return False

    def describe(self) -> str:
        phases = self.phases()
        lines = [f"{r.name}: created={r.created} phase={phases.get(r.name)} acked={len(r.acknowledged)} "
                 f"after-recovery={r.acknowledged_after_recovery} {r.create_error or ''} {r.transient_errors[-2:]}"
                 for r in self.records.values()]
        return "\n" + "\n".join(lines)

    # What must hold afterwards ----------------------------------------------------------------------------

    def check(self) -> None:
        """Every assertion of the module docstring, then every Sandbox deleted (also when one fails)."""
        try:
            assert all(r.created for r in self.records.values()), f"creates that never got through: {self.describe()}"
            sandboxes = wait_until(self._settled, RECOVERY_TIMEOUT, interval=POLL_INTERVAL,
                                   message=lambda: f"every Sandbox Ready or Failed: {self._phase_summary()}")
            check_failed_reasons(sandboxes)
            check_children(self.kube, self.namespace, sandboxes)
            ready = {s["metadata"]["name"] for s in sandboxes if s["status"]["phase"] == PHASE_READY}
            for record in self.records.values():
                if record.name in ready and record.acknowledged:
                    self._check_ids(record)
        finally:
            delete_all_and_wait(self.kube, self.namespace)

    def _settled(self) -> list[JSON] | None:
        try:
            sandboxes = self.kube.sandboxes(self.namespace)
        except API_DOWN:
            return None
        settled = all((s.get("status") or {}).get("phase") in TERMINAL_SETTLED for s in sandboxes)
        return sandboxes if sandboxes and settled else None

    def _phase_summary(self) -> str:
        return ", ".join(f"{s['metadata']['name']}={(s.get('status') or {}).get('phase')}/"
                         f"{(s.get('status') or {}).get('reason')}" for s in self.kube.sandboxes(self.namespace))

    def _check_ids(self, record: SandboxRecord) -> None:
        """The file read through the SDK, retried a bounded time (the transport may still be reconnecting)."""
        def read() -> set[str] | None:
            try:
                return set(self.manager.get(record.name).files.read_text(IDS_FILE).split())
            except SandboxError:
                return None
        written = wait_until(read, 60, interval=2, message=f"{IDS_FILE} of {record.name} readable")
        lost = [command_id for command_id in record.acknowledged if command_id not in written]
        assert not lost, (f"{record.name}: {len(lost)} of {len(record.acknowledged)} acknowledged commands left no "
                          f"trace in {IDS_FILE}: {lost[:10]}")


def check_failed_reasons(sandboxes: list[JSON]) -> None:
    documented = REASONS_BY_PHASE[PHASE_FAILED]
    wrong = {s["metadata"]["name"]: s["status"].get("reason") for s in sandboxes
             if s["status"]["phase"] == PHASE_FAILED and s["status"].get("reason") not in documented}
    assert not wrong, f"Failed Sandboxes without one of the documented reasons {sorted(documented)}: {wrong}"


def check_children(kube: Kube, namespace: str, sandboxes: list[JSON]) -> None:
    """One pod and one NetworkPolicy per Sandbox, controlled by it; every pod of the namespace and every sandbox
    policy has a live Sandbox as its controller."""
    pods = [p for p in kube.serialize(kube.core.list_namespaced_pod(namespace).items)
            if not p["metadata"].get("deletionTimestamp")]
    policies = kube.policies(namespace)
    live = {s["metadata"]["uid"]: s for s in sandboxes}
    orphans = [f"pod {p['metadata']['name']}" for p in pods if controller_uid(p) not in live]
    orphans += [f"networkpolicy {p['metadata']['name']}" for p in policies if controller_uid(p) not in live]
    assert not orphans, f"children without a live Sandbox controlling them: {orphans}"
    wrong: dict[str, str] = {}
    for uid, sandbox in live.items():
        own_pods = [p["metadata"]["name"] for p in pods if controller_uid(p) == uid]
        own_policies = [p["metadata"]["name"] for p in policies if controller_uid(p) == uid]
        status = sandbox["status"]
        pods_ok = (own_pods == [status.get("podName")] if status["phase"] == PHASE_READY
                   else len(own_pods) <= 1)  # a Failed sandbox's pod may be the one that went (PodDeleted)
        if not pods_ok or len(own_policies) != 1:
            wrong[sandbox["metadata"]["name"]] = (f"{status['phase']}/{status.get('reason')}: pods {own_pods}, "
                                                  f"policies {own_policies}")
    assert not wrong, f"Sandboxes without exactly one pod and one NetworkPolicy: {wrong}"


def delete_all_and_wait(kube: Kube, namespace: str) -> None:
    """Deletes every Sandbox of the namespace; the operator's finalizer must let each go, and their pods and
    policies must follow, within bounds."""
    for sandbox in kube.sandboxes(namespace):
        kube.delete(namespace, sandbox["metadata"]["name"])

    def stuck() -> str:
        return ", ".join(f"{s['metadata']['name']} finalizers={s['metadata'].get('finalizers')} "
                         f"phase={(s.get('status') or {}).get('phase')}" for s in kube.sandboxes(namespace))

    wait_until(lambda: not kube.sandboxes(namespace), DELETE_TIMEOUT, interval=POLL_INTERVAL,
               message=lambda: f"every Sandbox gone after its deletion (held: {stuck()})")
    wait_until(lambda: not kube.pods(namespace) and not kube.policies(namespace), 60, interval=POLL_INTERVAL,
               message=lambda: f"the deleted Sandboxes' pods and policies gone: "
                               f"{[p['metadata']['name'] for p in kube.pods(namespace) + kube.policies(namespace)]}")


# Disruptions ------------------------------------------------------------------------------------------------

def restart_component(component: str, *, kill: bool = False) -> None:
    """hack/cluster-restart.sh: the component stopped (``kill``: SIGKILLed), started again and healthy."""
    argv = ["bash", str(REPO_ROOT / "hack" / "cluster-restart.sh"), component, *(["--kill"] if kill else [])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=RESTART_TIMEOUT, check=False)
    assert result.returncode == 0, f"restarting {component} failed:\n{result.stderr[-3000:]}"


def ready_leader(release: Release) -> str | None:
    """The name of the pod holding the release's Lease when it is running and ready; None otherwise, also while
    the API server does not answer."""
    try:
        pod = release.running_operator()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return None if pod is None else str(pod["metadata"]["name"])


def wait_for_leader(release: Release, timeout: float = 120) -> str:
    return wait_until(lambda: ready_leader(release), timeout, interval=1,
                      message=f"a ready pod holding the Lease {release.namespace}/{release.fullname}")


@dataclass(frozen=True)
class KilledLeader:
    pod: str
    pids: frozenset[int]


def kill_leader(release: Release) -> KilledLeader:
    """SIGKILL to the operator processes of the pod holding the Lease: no clean shutdown, no Lease release."""
    holder = wait_for_leader(release, timeout=30)
    pids = operator_pids(holder)
    assert pids, f"no process of the leader {holder} on this machine (environ POD_NAME={holder})"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return KilledLeader(holder, frozenset(pids))


def wait_for_new_leader(release: Release, killed: KilledLeader, timeout: float = 90) -> str:
    """A ready leader again, in a process other than the killed ones: the standby that took the Lease over, or
    the killed pod's restarted container (it has the same identity)."""
    def new_leader() -> str | None:
        holder = ready_leader(release)
        return holder if holder is not None and set(operator_pids(holder)) - killed.pids else None
    return wait_until(new_leader, timeout, interval=0.5,
                      message=lambda: f"a leader other than the killed process of {killed.pod}")


def container_ids(pod: Any) -> dict[str, str]:
    """A pod's containers by name -> container ID: a restarted container gets a new one."""
    return {s["name"]: s.get("containerID", "") for s in pod["status"].get("containerStatuses") or []}

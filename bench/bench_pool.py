"""Warm pools: a sandbox claimed from a SandboxPool as the client sees it, next to a cold create, in one run.

    python -m bench.bench_pool [--serial 20] [--parallel 20] [--rate 20] [--duration 60] [--pool-size 40]
        [--skip-sustained] [--kubeconfig PATH]

Starts the operator from this checkout for a fresh namespace (as bench_density does). The pool's template and the
cold sandboxes' spec are both ``{}``: the operator's defaults (10m CPU and 64Mi requested), what a new user gets.
Through the SDK (``SandboxManager``, one API client shared by every thread):

1. cold creates, no pool yet: ``--serial`` of them one at a time, create -> Ready, then the first command;
2. a SandboxPool of ``--pool-size`` pods, awaited until it is full;
3. serial claims: ``--serial`` times ``manager.create(pool=...)`` -> Ready, then the first command right after,
   then the sandbox is deleted and the pool awaited until it is full again, so that every claim finds a ready pod;
4. parallel: ``--parallel`` claims at once from as many threads, on the full pool;
5. sustained (unless ``--skip-sustained``): ``--rate`` claims a second for ``--duration`` seconds on the full pool,
   each fired on a fixed schedule from a thread pool and deleted as soon as it is Ready: how many got a pool's pod
   and how many fell back to a cold start, and the rate at which they got Ready.

A claim is warm when its pod is one of the pool's (``<pool>.pool-xxxxx``), cold otherwise. Each time runs from the
create call to the SDK reporting Ready: the create request, the SDK's wait (a watch from its answer) and all the
operator does in between. The first command is ``true`` over the channel (the SDK starts the channel's agent while
it hands over the handle). The client's connections to the API server are open before the timers start, as in a
client that has been running. The parallel and sustained claims go through a manager of transport ``exec``: they
run no command, and a channel manager would start an agent in each of them, load the node, and measure that too.

Prints the command line, a table of each figure next to its goal, the figures of each phase, and what bounds them:
- each claim of the parallel and sustained phases in two parts: the create request alone (the POST, timed by
  wrapping the manager's ``api.create_sandbox``) and from its answer to Ready (the SDK's watch);
- the node's CPU during those two phases by component, in seconds and as a share of the phase's wall time, with the
  node's busy share (see bench/node_profile.py, as bench_density prints it), and the API requests every client made
  during them, by verb and resource (the API server's own /metrics);
- the API server's round trip, the operator's own share (its ``sandbox_operator_pool_*`` metrics) and, from the
  sustained phase, the rate the node refilled the pool at (pods that became Ready in it per second): how long a pool
  of a given size sustains the claims.

Nothing but the cluster's API server, the operator's metrics port and this machine's /proc is read: the node is this
machine (the project's local cluster). Exits 1 when a goal is missed or a claim failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import math
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from tests.kit import (
    Cluster,
    Kube,
    OperatorProcess,
    WaitTimeoutError,
    default_kubeconfig,
    invocation,
    percentile,
    served_namespace,
    wait_until,
)

from bench.bench_density import api_metrics, node_sample
from bench.bench_exec import timed
from bench.node_profile import CLOCK_TICKS, COMPONENTS, LABEL, ApiUse, api_use, cpu_by_component, process_times
from sandbox_operator import constants
from sandbox_operator.models import limits
from sandbox_operator.sdk import Sandbox, SandboxManager

JSON = dict[str, Any]
T = TypeVar("T")
# The operator's defaults, as bench_density's sandboxes: what a new user gets.
TEMPLATE: JSON = {}
POOL_NAME = "bench"

# The goals (the acceptance), and the run each one is stated for.
SERIAL_CLAIM_P50_GOAL = 0.030
PARALLEL_CLAIM_P95_GOAL = 0.100
PARALLEL_GOAL_CLAIMS = 20
FIRST_COMMAND_P50_GOAL = 0.050
SUSTAINED_GOAL_RATE = 20.0
SUSTAINED_GOAL_SECONDS = 60.0
# The last claims' own latency stretches the window the rate is counted over (first create call to last Ready), so a
# rate within this share of the goal meets it.
SUSTAINED_RATE_SHARE = 0.95

MAX_CLAIM_THREADS = 256
DELETE_THREADS = 8
TEARDOWN_SECONDS = 600.0
ROUND_TRIPS = 20
POLL_SECONDS = 0.05
CLAIMS_METRIC = "sandbox_operator_pool_claims_total"
CLAIM_SECONDS_METRIC = "sandbox_operator_pool_claim_seconds"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")


# Bookkeeping (pure) ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One create as the client saw it (a claim from the pool, or a cold create)."""

    started: float
    """``time.perf_counter()`` at the create call."""
    seconds: float | None
    """From the create call to the SDK reporting Ready; None when it never got Ready."""
    warm: bool
    """Its pod is one of the pool's."""
    first_command: float | None = None
    """Seconds of the first command right after Ready, when it was timed and ran."""
    late: float = 0.0
    """Sustained: how long after its place in the schedule the create call went out."""
    error: str | None = None
    create_call: float | None = None
    """Seconds of the create request alone (the POST, to its answer), when it was timed."""

    @property
    def after_create_call(self) -> float | None:
        """From the create request's answer to the SDK reporting Ready: its watch of the Sandbox, and the operator's
        work it waits for."""
        if self.seconds is None or self.create_call is None:
            return None
        return self.seconds - self.create_call


@dataclass(frozen=True)
class OperatorView:
    """What the operator's metrics say about a phase: claims by outcome, and its own time from a Sandbox's creation
    to the write that hands it a pod (mean over the warm claims; NaN without one)."""

    warm: int
    cold: int
    claim_seconds_mean: float


@dataclass(frozen=True)
class Phase:
    label: str
    claims: list[Claim]
    operator: OperatorView | None = None

    @property
    def ready(self) -> list[float]:
        return [claim.seconds for claim in self.claims if claim.seconds is not None]

    @property
    def warm(self) -> int:
        return sum(1 for claim in self.claims if claim.seconds is not None and claim.warm)

    @property
    def cold(self) -> int:
        return len(self.ready) - self.warm

    @property
    def failed(self) -> int:
        return len(self.claims) - len(self.ready)

    @property
    def first_commands(self) -> list[float]:
        return [claim.first_command for claim in self.claims if claim.first_command is not None]

    @property
    def errors(self) -> list[str]:
        return [claim.error for claim in self.claims if claim.error]

    @property
    def create_calls(self) -> list[float]:
        """The timed create requests of the claims that got Ready."""
        return [claim.create_call for claim in self.claims if claim.seconds is not None
                and claim.create_call is not None]

    @property
    def after_create_calls(self) -> list[float]:
        return [seconds for claim in self.claims if (seconds := claim.after_create_call) is not None]

    def latency(self, pct: float) -> float:
        return quantile(self.ready, pct)


def quantile(values: Sequence[float], pct: float) -> float:
    """:func:`percentile`, NaN for no samples (a phase where nothing got Ready still prints)."""
    return percentile(values, pct) if values else math.nan


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def from_pool(pod_name: str, pool: str) -> bool:
    """Whether a sandbox's pod is one the pool started (generated names ``<pool>.pool-xxxxx``); a cold-started pod is
    named after its sandbox, and sandbox names have no dots."""
    return pod_name.startswith(constants.pool_pod_generate_name(pool))


def claimable_pods(pods: Iterable[JSON]) -> int:
    """How many of a pool's pods (as JSON) a claim could take now: unclaimed (no Sandbox's label), Ready, and not
    being deleted."""
    def claimable(pod: JSON) -> bool:
        meta, status = pod.get("metadata") or {}, pod.get("status") or {}
        ready = any(condition.get("type") == "Ready" and condition.get("status") == "True"
                    for condition in status.get("conditions") or [])
        return ready and constants.LABEL_SANDBOX not in (meta.get("labels") or {}) and not meta.get(
            "deletionTimestamp")
    return sum(1 for pod in pods if claimable(pod))


def fire_times(rate: float, duration: float) -> list[float]:
    """When each sustained claim is due, in seconds from the phase's start: evenly spaced, ``rate`` a second, for
    ``duration`` seconds."""
    return [index / rate for index in range(round(rate * duration))]


def claim_threads(rate: float, timeout: float) -> int:
    """Threads enough for every sustained claim in flight when each takes up to ``timeout``, at most
    ``MAX_CLAIM_THREADS``: when claims are that slow, later ones start late, and the report says by how much."""
    return max(1, min(MAX_CLAIM_THREADS, math.ceil(rate * timeout)))


def ready_rate(claims: Sequence[Claim]) -> float:
    """Claims that got Ready per second, from the first create call to the last Ready."""
    ends = [claim.started + claim.seconds for claim in claims if claim.seconds is not None]
    if not ends:
        return 0.0
    window = max(ends) - min(claim.started for claim in claims)
    return len(ends) / window if window > 0 else math.inf


def metric_total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``, from a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        if labels.items() <= dict(LABEL.findall(match.group(2) or "")).items():
            total += float(match.group(3))
    return total


def operator_view(before: str, after: str) -> OperatorView:
    """The operator's counts between two scrapes of its metrics."""
    def grown(name: str, **labels: str) -> float:
        return metric_total(after, name, **labels) - metric_total(before, name, **labels)
    measured = grown(f"{CLAIM_SECONDS_METRIC}_count")
    return OperatorView(round(grown(CLAIMS_METRIC, outcome="warm")), round(grown(CLAIMS_METRIC, outcome="cold")),
                        grown(f"{CLAIM_SECONDS_METRIC}_sum") / measured if measured else math.nan)


@dataclass(frozen=True)
class Figure:
    measure: str
    measured: str
    goal: str
    met: bool | None  # None: no goal, or not measured in this run


def goal_figures(serial: Phase, parallel: Phase, sustained: Phase | None, cold: Phase, *, parallel_claims: int,
                 rate: float, duration: float) -> list[Figure]:
    """Each figure next to its goal. A goal stated for a run (20 in parallel, 20/s for 60 s) is missed by a smaller
    run; a phase with a failed claim misses its goal."""
    serial_p50, parallel_p95 = serial.latency(50), parallel.latency(95)
    first_p50 = quantile(serial.first_commands, 50)
    figures = [
        Figure(f"claim -> Ready, serial, p50 (warm {serial.warm} of {len(serial.claims)})", ms(serial_p50),
               f"<= {SERIAL_CLAIM_P50_GOAL * 1000:.0f} ms", serial.failed == 0 and serial_p50 <= SERIAL_CLAIM_P50_GOAL),
        Figure(f"claim -> Ready, {parallel_claims} at once, p95 (warm {parallel.warm} of {len(parallel.claims)})",
               ms(parallel_p95), f"<= {PARALLEL_CLAIM_P95_GOAL * 1000:.0f} ms at {PARALLEL_GOAL_CLAIMS} at once",
               parallel.failed == 0 and parallel_claims >= PARALLEL_GOAL_CLAIMS
               and parallel_p95 <= PARALLEL_CLAIM_P95_GOAL),
        Figure("first command after the claim (`true`, channel), p50", ms(first_p50),
               f"<= {FIRST_COMMAND_P50_GOAL * 1000:.0f} ms", first_p50 <= FIRST_COMMAND_P50_GOAL),
    ]
    sustained_goal = f"{SUSTAINED_GOAL_RATE:g}/s for {SUSTAINED_GOAL_SECONDS:g} s, cold fallbacks counted"
    if sustained is None:
        figures.append(Figure("sustained claims", "not run (--skip-sustained)", sustained_goal, None))
    else:
        achieved = ready_rate(sustained.claims)
        figures.append(Figure(
            f"sustained {rate:g} claims/s for {duration:g} s: Ready per second (warm / cold fallbacks / failed)",
            f"{achieved:.1f} ({sustained.warm} / {sustained.cold} / {sustained.failed})", sustained_goal,
            sustained.failed == 0 and duration >= SUSTAINED_GOAL_SECONDS
            and achieved >= SUSTAINED_RATE_SHARE * SUSTAINED_GOAL_RATE))
    ratio = cold.latency(50) / serial_p50
    figures.append(Figure("cold create -> Ready p50 / serial claim p50",
                          "-" if math.isnan(ratio) else f"{ratio:.0f}x ({ms(cold.latency(50))} / {ms(serial_p50)})",
                          "-", None))
    return figures


def goals_table(figures: Sequence[Figure]) -> list[str]:
    lines = ["| measure | measured | goal | met |", "|---|---|---|---|"]
    for figure in figures:
        verdict = "-" if figure.met is None else ("yes" if figure.met else "NO")
        lines.append(f"| {figure.measure} | {figure.measured} | {figure.goal} | {verdict} |")
    return lines


def phases_table(phases: Sequence[Phase]) -> list[str]:
    lines = ["| phase | n | warm | cold | failed | p50 | p95 | max | first command p50 | first command p95 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for phase in phases:
        first = phase.first_commands
        lines.append(f"| {phase.label} | {len(phase.claims)} | {phase.warm} | {phase.cold} | {phase.failed} | "
                     f"{ms(phase.latency(50))} | {ms(phase.latency(95))} | {ms(phase.latency(100))} | "
                     f"{ms(quantile(first, 50))} | {ms(quantile(first, 95))} |")
    return lines


def split_table(phases: Sequence[Phase]) -> list[str]:
    """The two parts of each claim that got Ready, for the phases whose create requests were timed."""
    lines = ["| phase | n | create request p50 | p95 | max | its answer -> Ready p50 | p95 | max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for phase in phases:
        posts, waits = phase.create_calls, phase.after_create_calls
        if posts:
            lines.append(f"| {phase.label} | {len(posts)} | " + " | ".join(
                ms(quantile(values, pct)) for values in (posts, waits) for pct in (50, 95, 100)) + " |")
    return lines


BENCH_PROCESS = "bench"
PROFILE_LABELS = {
    "operator": "the operator (Python, kopf)",
    BENCH_PROCESS: "this benchmark (the SDK's client threads)",
    "other": "everything else",
}


@dataclass(frozen=True)
class NodeProfile:
    """What a phase cost the node: CPU seconds by component (bench/node_profile.py), the node's busy CPUs on
    average (/proc/stat), and the API requests every client made."""

    label: str
    seconds: float
    """Wall time of the phase."""
    claims: int
    cpu: dict[str, float]
    busy_cores: float
    api: list[ApiUse]


def share_of_wall(cpu_seconds: float, wall_seconds: float) -> str:
    """CPU time as a share of wall time: 100% is one CPU busy for the whole phase."""
    return f"{cpu_seconds / wall_seconds * 100:.0f}%" if wall_seconds > 0 else "-"


def cpu_table(profiles: Sequence[NodeProfile], cpus: int) -> list[str]:
    """A row per component, a pair of columns per phase (CPU seconds, share of its wall time), the busiest first;
    then the total and the node's own busy share, next to what the node has."""
    head = " | ".join(f"{profile.label}: CPU s | {profile.label}: share of wall" for profile in profiles)
    lines = [f"| component | {head} |", "|---|" + "---:|---:|" * len(profiles)]

    def row(label: str, seconds: Sequence[float]) -> str:
        return f"| {label} | " + " | ".join(f"{spent:.2f} | {share_of_wall(spent, profile.seconds)}"
                                            for spent, profile in zip(seconds, profiles, strict=True)) + " |"

    def busiest(name: str) -> tuple[float, str]:
        return -max(profile.cpu.get(name, 0.0) / profile.seconds if profile.seconds > 0 else 0.0
                    for profile in profiles), name
    for name in sorted({name for profile in profiles for name in profile.cpu}, key=busiest):
        lines.append(row(PROFILE_LABELS.get(name) or COMPONENTS.get(name, name),
                         [profile.cpu.get(name, 0.0) for profile in profiles]))
    lines.append(row("total", [sum(profile.cpu.values()) for profile in profiles]))
    lines.append(row(f"the node busy (/proc/stat; it has {cpus} CPUs: {cpus * 100}%)",
                     [profile.busy_cores * profile.seconds for profile in profiles]))
    return lines


def api_table(profiles: Sequence[NodeProfile]) -> list[str]:
    """A row per request (verb, resource, code), three columns per phase: how many, per claim, and the API server's
    mean latency for it; the most frequent per claim first. A dash: fewer than the phase's threshold."""
    head = " | ".join(f"{profile.label}: count | per claim | server mean" for profile in profiles)
    lines = [f"| request | code | {head} |", "|---|---|" + "---:|---:|---:|" * len(profiles)]
    phases = [{(use.verb, use.resource, use.code): use for use in profile.api} for profile in profiles]

    def most(key: tuple[str, str, str]) -> tuple[float, tuple[str, str, str]]:
        return -max(uses[key].requests / max(1, profile.claims) if key in uses else 0.0
                    for uses, profile in zip(phases, profiles, strict=True)), key
    for key in sorted({key for uses in phases for key in uses}, key=most):
        cells = []
        for uses, profile in zip(phases, profiles, strict=True):
            use = uses.get(key)
            cells.append("- | - | -" if use is None else
                         f"{use.requests} | {use.requests / max(1, profile.claims):.1f} | {ms(use.mean_seconds)}")
        verb, resource, code = key
        lines.append(f"| {verb} {resource} | {code} | " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Refill:
    """The pool's claimable pods over the sustained phase, and the pods its claims took: how fast the node started
    pool pods (Ready, in the pool) meanwhile."""

    claimable_before: int
    claimable_after: int
    taken: int
    seconds: float

    @property
    def started(self) -> int:
        """Pool pods that became Ready during the phase: the claimable ones at its end, less those at its start, plus
        those taken."""
        return self.claimable_after - self.claimable_before + self.taken

    @property
    def rate(self) -> float:
        return self.started / self.seconds if self.seconds > 0 else math.nan


def pods_taken(phase: Phase) -> int:
    """The pool pods a phase's claims took: the operator's count, which includes claims the client gave up on; the
    client's own when the operator's metrics showed no claim."""
    view = phase.operator
    return view.warm if view is not None and (view.warm or view.cold) else phase.warm


def pool_lasts(pool_size: int, rate: float, refill: float) -> float:
    """Seconds a full pool of ``pool_size`` gives every claim a ready pod, at ``rate`` claims a second while the node
    refills it at ``refill`` pods a second; infinite when the refill keeps up."""
    return pool_size / (rate - refill) if rate > refill else math.inf


def refill_note(refill: Refill, *, pool_size: int, rate: float, duration: float) -> str:
    """The node's pod start rate seen while the pool refilled, and what it makes of a pool's size."""
    seen = (f"pool refill during the sustained phase: {refill.started} pool pods became Ready in {refill.seconds:.1f} "
            f"s ({refill.claimable_after} claimable at its end - {refill.claimable_before} at its start + "
            f"{refill.taken} taken by claims): {refill.rate:.1f} pods/s, the node's pod start rate under this load")
    lasts = pool_lasts(pool_size, rate, refill.rate)
    if math.isinf(lasts):
        return (f"{seen}; the refill kept up with {rate:g} claims/s, so this is a lower bound of what the node can "
                f"start")
    return (f"{seen}; a full pool of K lasts K / ({rate:g} - {refill.rate:.1f}) s at {rate:g} claims/s: "
            f"{lasts:.0f} s for --pool-size {pool_size}; {duration:g} s needs a pool of "
            f"{math.ceil(round((rate - refill.rate) * duration, 6))}")  # rounded: 335.0000001 pods is 335


# Measuring ---------------------------------------------------------------------------------------------------------

def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


class CreateCallTimer:
    """Times the create request (the POST) of every create a manager makes, for the thread that made it: the SDK's
    create sends it and then waits for Ready, and from outside only the whole is seen."""

    def __init__(self, manager: SandboxManager) -> None:
        self._local = threading.local()
        post = manager.api.create_sandbox

        def timed_post(body: JSON, namespace: str) -> JSON:
            started = time.perf_counter()
            try:
                return post(body, namespace)
            finally:
                self._local.seconds = time.perf_counter() - started

        manager.api.create_sandbox = timed_post  # type: ignore[method-assign]

    def take(self) -> float | None:
        """The seconds of this thread's last create request, once; None when it sent none since."""
        seconds: float | None = getattr(self._local, "seconds", None)
        self._local.seconds = None
        return seconds


def timed_create(create: Callable[[], Sandbox], pool: str, *, first_command: bool = False,
                 due: float | None = None, create_calls: CreateCallTimer | None = None) -> tuple[Claim, Sandbox | None]:
    """Times ``create`` (a claim, or a cold create) to Ready and, with ``first_command``, ``true`` right after; with
    ``create_calls`` (the timer of the manager ``create`` uses), its create request too. A failure is recorded, not
    raised: the run goes on and reports it."""
    started = time.perf_counter()
    late = 0.0 if due is None else started - due
    try:
        sandbox = create()
    except Exception as error:
        return Claim(started, None, warm=False, late=late, error=describe(error),
                     create_call=create_calls.take() if create_calls else None), None
    seconds = time.perf_counter() - started
    create_call = create_calls.take() if create_calls else None
    command: float | None = None
    error_text: str | None = None
    if first_command:
        command_started = time.perf_counter()
        try:
            sandbox.run(["true"]).check()
            command = time.perf_counter() - command_started
        except Exception as error:
            error_text = f"first command: {describe(error)}"
    return Claim(started, seconds, from_pool(sandbox.pod_name, pool), command, late, error_text,
                 create_call), sandbox


def one_at_a_time(create: Callable[[], Sandbox], count: int, pool: str, *,
                  before_each: Callable[[], object] = lambda: None,
                  create_calls: CreateCallTimer | None = None) -> list[Claim]:
    """``count`` creates in turn, each with its first command, each deleted (and gone) before the next."""
    claims = []
    for _ in range(count):
        before_each()
        claim, sandbox = timed_create(create, pool, first_command=True, create_calls=create_calls)
        claims.append(claim)
        if sandbox is not None:
            sandbox.delete(wait=True, missing_ok=True)
    return claims


def released_together(call: Callable[[], T], count: int) -> list[T]:
    """``call`` from ``count`` threads, released at once, and what each returned."""
    start = threading.Barrier(count)

    def one(_: int) -> T:
        start.wait()
        return call()

    with concurrent.futures.ThreadPoolExecutor(count) as threads:
        return list(threads.map(one, range(count)))


def at_once(create: Callable[[], Sandbox], count: int, pool: str, *, create_calls: CreateCallTimer | None = None,
            window: contextlib.AbstractContextManager[object] | None = None) -> list[Claim]:
    """``count`` creates from as many threads, released together; each deleted once all are done. ``window`` is
    entered before they start and left once they are all done, before the deletes."""
    with window or contextlib.nullcontext():
        results = released_together(lambda: timed_create(create, pool, create_calls=create_calls), count)
    for _, sandbox in results:
        if sandbox is not None:
            sandbox.delete(missing_ok=True)
    return [claim for claim, _ in results]


def on_schedule(create: Callable[[], Sandbox], pool: str, rate: float, duration: float, threads: int, *,
                create_calls: CreateCallTimer | None = None) -> list[Claim]:
    """``rate`` creates a second for ``duration`` seconds, each fired at its time from a pool of ``threads`` and
    deleted in the background as soon as it is Ready."""
    with concurrent.futures.ThreadPoolExecutor(DELETE_THREADS, "delete") as deleters, \
            concurrent.futures.ThreadPoolExecutor(threads, "claim") as claimers:
        def one(due: float) -> Claim:
            claim, sandbox = timed_create(create, pool, due=due, create_calls=create_calls)
            if sandbox is not None:
                deleters.submit(sandbox.delete, missing_ok=True)
            return claim

        begin = time.perf_counter()
        fired = []
        for offset in fire_times(rate, duration):
            pause = begin + offset - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            fired.append(claimers.submit(one, begin + offset))
        # Every claim has ended (and submitted its delete) before the claimers, then the deleters, shut down.
        return [future.result() for future in fired]


def api_client(kubeconfig: Path, connections: int) -> client.ApiClient:
    """An API client that keeps up to ``connections`` connections open (the client's default is 5 per CPU), so that
    threads claiming at once reuse theirs instead of opening one per request."""
    configuration = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=configuration)
    configuration.connection_pool_maxsize = connections
    return client.ApiClient(configuration)


def operator_metrics(operator: OperatorProcess) -> str:
    status, text = operator.metrics()
    return text if status == 200 else ""


class NodeWindow:
    """The node's CPU by component and its busy share, and the API server's request counts, from entering to
    leaving: what a phase cost, as bench_density measures its burst. The scrapes (a kubectl each) are outside the
    timed window."""

    def __init__(self, cluster: Cluster, named: Mapping[int, str]) -> None:
        self.cluster = cluster
        self.named = named

    def __enter__(self) -> NodeWindow:
        self.metrics_before = api_metrics(self.cluster)
        self.node_before, self.cpu_before = node_sample(), process_times()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.cpu_after, self.node_after = process_times(), node_sample()
        self.metrics_after = api_metrics(self.cluster)

    def profile(self, label: str, claims: int) -> NodeProfile:
        """The window as a phase's profile; requests fewer than one in ten claims are left out, as bench_density
        does."""
        busy = self.node_after.busy_jiffies - self.node_before.busy_jiffies
        total = self.node_after.total_jiffies - self.node_before.total_jiffies
        return NodeProfile(label, self.seconds, claims, cpu_by_component(self.cpu_before, self.cpu_after, self.named),
                           busy / max(1, total) * (os.cpu_count() or 1),
                           api_use(self.metrics_before, self.metrics_after, minimum=max(1, claims // 10)))


def say(message: str) -> None:
    """Progress, on stderr: the tables on stdout stay clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Results:
    cold: Phase
    serial: Phase
    parallel: Phase
    sustained: Phase | None
    round_trips: list[float]
    sustained_threads: int
    profiles: list[NodeProfile]
    refill: Refill | None


class PoolBench:
    """The phases, on one namespace served by the operator, with one pool."""

    def __init__(self, cluster: Cluster, namespace: str, operator: OperatorProcess, args: argparse.Namespace) -> None:
        self.kube = Kube(cluster)
        self.namespace = namespace
        self.operator = operator
        self.args = args
        self.sustained_threads = claim_threads(args.rate, args.sustained_timeout)
        # One client for every manager: one pool of connections, as large as the most threads that claim at once.
        self.api = api_client(cluster.kubeconfig, max(args.parallel, self.sustained_threads) + DELETE_THREADS + 2)
        self.channel = SandboxManager(namespace, api_client=self.api, transport="channel")
        self.claims_only = SandboxManager(namespace, api_client=self.api, transport="exec")
        self.create_calls = CreateCallTimer(self.claims_only)
        self.serial_calls = CreateCallTimer(self.channel)
        self.cluster = cluster
        self.named_processes = {operator.pid: "operator", os.getpid(): BENCH_PROCESS}

    def close(self) -> None:
        self.channel.close()
        self.claims_only.close()
        self.api.close()  # type: ignore[no-untyped-call]

    @staticmethod
    def claim(manager: SandboxManager, timeout: float) -> Callable[[], Sandbox]:
        return lambda: manager.create(pool=POOL_NAME, timeout=timeout)

    def with_operator_view(self, label: str, run: Callable[[], list[Claim]]) -> Phase:
        before = operator_metrics(self.operator)
        claims = run()
        return Phase(label, claims, operator_view(before, operator_metrics(self.operator)))

    def wait_pool_full(self) -> None:
        """Until the operator counts the pool full and as many unclaimed pods are Ready: the status alone may still
        be the one written before the last claim."""
        size = self.args.pool_size

        def full() -> bool:
            status = (self.kube.get_pool(self.namespace, POOL_NAME) or {}).get("status") or {}
            return bool(status.get("readyCount", 0) >= size
                        and claimable_pods(self.kube.pool_pods(self.namespace, POOL_NAME)) >= size)
        wait_until(full, self.args.timeout, interval=POLL_SECONDS, message=lambda: (
            f"SandboxPool {self.namespace}/{POOL_NAME} full ({size} ready); its status: "
            f"{(self.kube.get_pool(self.namespace, POOL_NAME) or {}).get('status')}"))

    def reopen_connection(self) -> None:
        """One request before a timed create: the SDK's last wait was a watch, which closed its connection, and the
        next request would otherwise open it again inside the timer."""
        self.channel.list()

    def before_claim(self) -> None:
        self.wait_pool_full()
        self.reopen_connection()

    def claimable(self) -> int:
        return claimable_pods(self.kube.pool_pods(self.namespace, POOL_NAME))

    def window(self) -> NodeWindow:
        return NodeWindow(self.cluster, self.named_processes)

    def wait_sandboxes_gone(self, timeout: float) -> None:
        wait_until(lambda: not self.kube.sandboxes(self.namespace), timeout, interval=0.2,
                   message=f"the Sandboxes of {self.namespace} gone")

    def run(self) -> Results:
        a = self.args
        say(f"cold creates: {a.serial}, one at a time")
        cold = Phase("cold creates, one at a time, no pool",
                     one_at_a_time(lambda: self.channel.create(spec=TEMPLATE, timeout=a.timeout), a.serial,
                                   POOL_NAME, before_each=self.reopen_connection))
        self.kube.create_pool(self.namespace, POOL_NAME, a.pool_size, TEMPLATE)
        say(f"SandboxPool {POOL_NAME} of {a.pool_size}: filling")
        self.wait_pool_full()
        round_trips = timed(lambda: self.channel.get_pool(POOL_NAME), ROUND_TRIPS)

        say(f"serial claims: {a.serial}, the pool full before each")
        serial = self.with_operator_view("claims, one at a time", lambda: one_at_a_time(
            self.claim(self.channel, a.timeout), a.serial, POOL_NAME, before_each=self.before_claim,
            create_calls=self.serial_calls))

        self.wait_pool_full()
        # As many connections open and pooled as threads claim at once: the timers do not include opening them.
        released_together(lambda: self.claims_only.get_pool(POOL_NAME), a.parallel)
        say(f"parallel claims: {a.parallel} at once")
        parallel_window = self.window()
        parallel = self.with_operator_view(f"claims, {a.parallel} at once", lambda: at_once(
            self.claim(self.claims_only, a.timeout), a.parallel, POOL_NAME, create_calls=self.create_calls,
            window=parallel_window))
        profiles = [parallel_window.profile(f"{a.parallel} at once", a.parallel)]
        self.wait_sandboxes_gone(a.timeout)

        sustained, refill = None, None
        if not a.skip_sustained:
            sustained, profile, refill = self.run_sustained()
            profiles.append(profile)
        return Results(cold, serial, parallel, sustained, round_trips, self.sustained_threads, profiles, refill)

    def run_sustained(self) -> tuple[Phase, NodeProfile, Refill]:
        """The sustained claims on the full pool, their cost to the node, and the pool's refill meanwhile."""
        a = self.args
        self.wait_pool_full()
        claimable_before = self.claimable()
        say(f"sustained claims: {a.rate:g}/s for {a.duration:g} s from {self.sustained_threads} threads")
        window = self.window()
        operator_before = operator_metrics(self.operator)
        with window:
            claims = on_schedule(self.claim(self.claims_only, a.sustained_timeout), POOL_NAME, a.rate, a.duration,
                                 self.sustained_threads, create_calls=self.create_calls)
            # Counted within the window: the refill goes on after it.
            claimable_after = self.claimable()
        sustained = Phase(f"claims, {a.rate:g}/s for {a.duration:g} s", claims,
                          operator_view(operator_before, operator_metrics(self.operator)))
        refill = Refill(claimable_before, claimable_after, pods_taken(sustained), window.seconds)
        return sustained, window.profile(f"{a.rate:g}/s", len(sustained.claims)), refill

    def clean_up(self) -> list[str]:
        """Every Sandbox, then the pool, deleted and awaited until gone; what did not go, for the report. The last
        sustained claims may still be going."""
        problems = []
        for sandbox in self.kube.sandboxes(self.namespace):
            self.kube.delete(self.namespace, sandbox["metadata"]["name"])
        try:
            self.wait_sandboxes_gone(TEARDOWN_SECONDS)
        except WaitTimeoutError as error:
            problems.append(str(error))
        with contextlib.suppress(client.ApiException):
            self.kube.delete_pool(self.namespace, POOL_NAME)
        try:
            wait_until(lambda: self.kube.get_pool(self.namespace, POOL_NAME) is None, TEARDOWN_SECONDS,
                       message=f"SandboxPool {self.namespace}/{POOL_NAME} gone")
        except WaitTimeoutError as error:
            problems.append(str(error))
        return problems


# Output ------------------------------------------------------------------------------------------------------------

def bounds_notes(results: Results) -> list[str]:
    """What bounds the figures: the API server's round trip, and the operator's own count and time per phase."""
    trips = results.round_trips
    notes = [f"API server round trip (a GET of the SandboxPool through the SDK), p50 / p95 of {len(trips)}: "
             f"{ms(quantile(trips, 50))} / {ms(quantile(trips, 95))}; a claim as the client sees it is the create "
             f"request and a watch from its answer, around the operator's handling"]
    claim_phases = [phase for phase in (results.serial, results.parallel, results.sustained) if phase is not None]
    views = [(phase.label, phase.operator) for phase in claim_phases if phase.operator is not None]
    if views and any(view.warm or view.cold for _, view in views):
        notes.append("the operator's own figures (sandbox_operator_pool_*): warm / cold claims, and the mean time from "
                     "a Sandbox's creation to the write that hands it a pod: " + "; ".join(
                         f"{label}: {view.warm} / {view.cold}, {ms(view.claim_seconds_mean)}" for label, view in views))
    else:
        notes.append("the operator's metrics port showed no claims (sandbox_operator_pool_claims_total)")
    if results.sustained is not None:
        lateness = [claim.late for claim in results.sustained.claims]
        notes.append(f"sustained: {len(lateness)} claims fired from {results.sustained_threads} threads; the latest "
                     f"started {ms(max(lateness, default=0.0))} after its time (the client kept up while that is "
                     f"small)")
    return notes


def print_profiles(results: Results) -> None:
    """The claims' two parts, and what the parallel and sustained phases cost the node, under the phases' table."""
    print("\nEach claim in two parts: its create request (the POST, to its answer), then from the answer to the SDK "
          "reporting Ready (its watch of the Sandbox, and the operator's work it waits for):\n")
    print("\n".join(split_table([phase for phase in (results.serial, results.parallel, results.sustained)
                                  if phase is not None])))
    wall = ", ".join(f"{profile.label}: {profile.seconds:.2f} s" for profile in results.profiles)
    print(f"\nNode CPU during the phases ({wall}), by component (own + reaped children, /proc/PID/stat, in ticks of "
          f"{1000 / CLOCK_TICKS:.0f} ms); a share of wall time of 100% is one CPU busy for the whole phase:\n")
    print("\n".join(cpu_table(results.profiles, os.cpu_count() or 1)))
    print("\nAPI requests during the phases, every client (from the API server's /metrics; WATCH left out):\n")
    print("\n".join(api_table(results.profiles)))


def print_report(results: Results, cleanup_problems: Sequence[str], args: argparse.Namespace,
                 log_path: Path) -> bool:
    phases = [results.cold, results.serial, results.parallel]
    if results.sustained is not None:
        phases.append(results.sustained)
    figures = goal_figures(results.serial, results.parallel, results.sustained, results.cold,
                           parallel_claims=args.parallel, rate=args.rate, duration=args.duration)
    print()
    print("\n".join(goals_table(figures)))
    print("\nEach phase: create call -> the SDK reporting Ready, then (one at a time) the first command:\n")
    print("\n".join(phases_table(phases)))
    print_profiles(results)
    print()
    for note in bounds_notes(results):
        print(f"- {note}")
    if results.refill is not None:
        print(f"- {refill_note(results.refill, pool_size=args.pool_size, rate=args.rate, duration=args.duration)}")
    for phase in phases:
        if phase.errors:
            print(f"- {phase.label}: {len(phase.errors)} failed: " + "; ".join(phase.errors[:5]))
    for problem in cleanup_problems:
        print(f"- clean-up: {problem}")
    print(f"\noperator log: {log_path}")
    return all(figure.met is not False for figure in figures) and not any(phase.failed for phase in phases)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serial", type=int, default=20, help="claims one at a time, and cold creates (default 20)")
    parser.add_argument("--parallel", type=int, default=20, help="claims at once, one thread each (default 20)")
    parser.add_argument("--rate", type=float, default=20.0, help="sustained claims per second (default 20)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of sustained claims (default 60)")
    parser.add_argument("--pool-size", type=int, default=40,
                        help="the SandboxPool's size, at least --parallel (default 40)")
    parser.add_argument("--skip-sustained", action="store_true", help="leave out the sustained claims")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds for a claim or cold create to be Ready, the pool to fill, sandboxes to go "
                             "(default 120)")
    parser.add_argument("--sustained-timeout", type=float, default=30.0,
                        help="seconds for a sustained claim to be Ready, else it counts as failed (default 30)")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    args = parser.parse_args(argv)
    for flag, value in (("--serial", args.serial), ("--parallel", args.parallel), ("--pool-size", args.pool_size)):
        if value < 1:
            parser.error(f"{flag} must be at least 1, got {value}")
    for flag, number, unit in (("--rate", args.rate, "claims per second"), ("--duration", args.duration, "seconds"),
                               ("--timeout", args.timeout, "seconds"),
                               ("--sustained-timeout", args.sustained_timeout, "seconds")):
        if not number > 0:
            parser.error(f"{flag} must be a positive number of {unit}, got {number:g}")
    if args.pool_size > limits.POOL_SIZE_MAX:
        parser.error(f"--pool-size must be at most {limits.POOL_SIZE_MAX} (the SandboxPool's limit), "
                     f"got {args.pool_size}")
    if args.pool_size < args.parallel:
        parser.error(f"--pool-size ({args.pool_size}) must be at least --parallel ({args.parallel}), so that every "
                     f"parallel claim can find a ready pod")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"$ {invocation()}")
    cluster = Cluster.connect(args.kubeconfig or default_kubeconfig())
    version = client.VersionApi(cluster.api).get_code().git_version
    nodes = client.CoreV1Api(cluster.api).list_node().items
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, {len(nodes)} node(s), "
          f"{os.cpu_count()} CPUs; SandboxPool of {args.pool_size}, template and cold spec {{}} (the operator's "
          f"defaults)")
    with served_namespace(cluster, "bench-pool", Path(tempfile.gettempdir())) as served:
        assert served.operator is not None
        bench = PoolBench(cluster, served.name, served.operator, args)
        try:
            results = bench.run()
        finally:
            # While the operator still runs: it finishes the sandboxes' and the pool's teardown.
            cleanup_problems = bench.clean_up()
            bench.close()
        log_path = served.operator.log_path
    return 0 if print_report(results, cleanup_problems, args, log_path) else 1


if __name__ == "__main__":
    raise SystemExit(main())

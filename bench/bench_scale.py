"""Scale on simulated nodes: thousands of Sandboxes through the real operator and the real API server.

    python -m bench.bench_scale [--count 2000] [--rate 20] [--sustained-seconds 60] [--idle-seconds 300]

Needs fake nodes (``hack/kwok-up.sh``: kwok keeps them Ready and makes their pods Running/Ready without running
anything). Starts the operator from this checkout for a fresh namespace, allowed to tolerate and select the fake
nodes, then, with Sandboxes that do both:

1. a burst: ``--count`` minus what the sustained phase creates, from 20 client threads at once;
2. sustained: ``--rate`` creates per second for ``--sustained-seconds`` (paced by the clock, 20 threads);
3. all Ready and idle: the operator's CPU over three collector intervals (``--gc-interval``);
4. collection: each Sandbox becomes due ``--idle-seconds`` after it was Ready; the lag from due to gone.

Throughout, the operator's own /metrics are scraped every half second: each new observation of
``sandbox_operator_collector_pass_seconds`` is one collector pass (the decision over every Sandbox, then its
deletions and status writes), so the table has the duration of every pass of the run.

Figures (one table, goals from the scale issue, the command line on top):

* operator RSS (peak, VmHWM) and CPU seconds (utime + stime) over the run;
* create -> pod created (the bench's own watch sees the pod), p50/p95, at the sustained rate;
* writes per Sandbox from create to Ready: the writes to the Sandbox itself up to its Ready version, counted
  exactly from the bench's watch (resourceVersions, the bench's create excluded), plus the operator's POST/PATCH
  of pods, NetworkPolicies and core Events during the burst, from the API server's /metrics;
* API requests per Sandbox over the whole lifecycle (create to gone), by verb and resource, from the API
  server's ``apiserver_request_total`` (it has no user-agent label, so each line says who makes such requests:
  the scheduler binds, kwok writes pod status, the benchmark creates the Sandboxes);
* the collector pass, p50 and max over the run (and p50 and max of the passes that deleted nothing), with the most
  Sandboxes one pass looked at;
* watch relists: LIST requests on Sandboxes during the run (only the operator's kopf lists them: one per
  restarted watch) and watchers the API server terminated.

Nothing but the cluster's API server is contacted. ``--count 100 --idle-seconds 20 --gc-interval 2`` is the
small run of tests/integration/test_scale_small.py.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import os
import re
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from tests.kit import Cluster, CreationTimes, Kube, default_kubeconfig, invocation, percentile, served_namespace
from tests.kit.wait import WaitTimeoutError, wait_until

from bench.node_profile import CLOCK_TICKS, LABEL, parse_stat
from sandbox_operator import constants

JSON = dict[str, Any]
# The label and taint of hack/kwok-up.sh's fake nodes (KWOK_NODE_KEY/KWOK_NODE_VALUE in hack/kwok-lib.sh).
KWOK_NODE_KEY, KWOK_NODE_VALUE = "kwok.x-k8s.io/node", "fake"
CLIENT_THREADS = 20
PASS_WINDOW_INTERVALS = 3
KIB, MB = 1024, 1_000_000
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
# resource[/subresource] the operator creates or changes for a starting Sandbox, besides the Sandbox itself.
OPERATOR_CHILD_WRITES = (("", "pods"), ("networking.k8s.io", "networkpolicies"), ("", "events"))
REQUESTS = re.compile(r"^apiserver_request_total\{(.*)\} (\S+)$")
TERMINATED_WATCHERS = re.compile(r"^apiserver_terminated_watchers_total\{(.*)\} (\S+)$")
OPERATOR_SAMPLE = re.compile(r"^(sandbox_operator_collector_pass_seconds_(?:sum|count)|"
                             r"sandbox_operator_collector_sandboxes|"
                             r"sandbox_operator_collections_total)(?:\{.*\})? (\S+)$")
SCRAPE_PERIOD = 0.5

# Goals at 2,000 Sandboxes.
GOAL_RSS_MB = 250
GOAL_POD_P95_SECONDS = 0.2
GOAL_WRITES_TO_READY = 6
GOAL_PASS_SECONDS = 2.0
# kopf lists Sandboxes in one request (no chunk size set) when its watch restarts: now and then, never a storm.
GOAL_SANDBOX_RELISTS = 2


@dataclass(frozen=True)
class Plan:
    count: int
    rate: float
    sustained_seconds: float
    idle_seconds: int
    gc_interval: float
    timeout: float

    @property
    def sustained(self) -> int:
        """Sandboxes of the sustained phase: rate x seconds, but at least a quarter of all come in the burst."""
        return min(int(self.rate * self.sustained_seconds), self.count - self.count // 4)

    @property
    def burst(self) -> int:
        return self.count - self.sustained


@dataclass(frozen=True)
class RequestKey:
    verb: str
    group: str
    resource: str
    subresource: str

    @property
    def label(self) -> str:
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{resource} ({self.group})" if self.group and self.resource != "sandboxes" else resource


def api_requests(metrics: str) -> tuple[Counter[RequestKey], Counter[str]]:
    """Requests (every verb, watches included, all codes) by verb, group, resource and subresource; and watchers
    the API server terminated (it could not keep up with their events), by resource."""
    requests: Counter[RequestKey] = Counter()
    terminated: Counter[str] = Counter()
    for line in metrics.splitlines():
        if match := REQUESTS.match(line):
            labels = dict(LABEL.findall(match.group(1)))
            key = RequestKey(labels.get("verb", ""), labels.get("group", ""), labels.get("resource", ""),
                             labels.get("subresource", ""))
            requests[key] += int(float(match.group(2)))
        elif match := TERMINATED_WATCHERS.match(line):
            terminated[dict(LABEL.findall(match.group(1))).get("resource", "")] += int(float(match.group(2)))
    return requests, terminated


@dataclass(frozen=True)
class ApiWindow:
    """What the API server served between two /metrics scrapes."""

    requests: Counter[RequestKey]
    terminated_watchers: Counter[str]

    @classmethod
    def between(cls, before: str, after: str) -> ApiWindow:
        requests_before, terminated_before = api_requests(before)
        requests_after, terminated_after = api_requests(after)
        requests_after.subtract(requests_before)
        terminated_after.subtract(terminated_before)
        return cls(+requests_after, +terminated_after)

    def count(self, verbs: Iterable[str], group: str, resource: str, subresource: str = "") -> int:
        return sum(self.requests[RequestKey(verb, group, resource, subresource)] for verb in verbs)


def made_by(key: RequestKey) -> str:
    """Who makes such requests in this run (the API server's metrics do not say)."""
    if key.verb == "WATCH" and key.resource in ("sandboxes", "pods"):
        return "operator, this benchmark (it watches again every 5 s)"
    if key.verb == "LIST" and key.resource in ("pods", "networkpolicies"):
        return "this benchmark (checks), kwok, controllers, relists"
    if key.resource == "sandboxes":
        return "this benchmark" if key.verb == "POST" and not key.subresource else "operator (kopf)"
    if key.resource == "pods":
        return {"binding": "kube-scheduler", "status": "kwok"}.get(key.subresource) or {
            "POST": "operator", "DELETE": "operator or garbage collector, then kwok",
        }.get(key.verb, "operator, kwok, controllers")
    if key.resource == "networkpolicies":
        return "operator" if key.verb == "POST" else "operator, garbage collector, kube-router"
    if key.resource == "events":
        return "operator (kopf)" if not key.group else "kube-scheduler, controllers"
    if key.resource == "leases":
        return "kwok (node leases), control plane"
    return "-"


@dataclass(frozen=True)
class CollectorSample:
    """The operator's collector figures in one /metrics scrape."""

    passes: int = 0
    seconds: float = 0.0
    sandboxes: int = 0
    collected: int = 0

    @classmethod
    def parse(cls, metrics: str) -> CollectorSample:
        values: dict[str, float] = {}
        for line in metrics.splitlines():
            if match := OPERATOR_SAMPLE.match(line):  # collections_total: summed over its reasons
                values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
        return cls(int(values.get("sandbox_operator_collector_pass_seconds_count", 0)),
                   values.get("sandbox_operator_collector_pass_seconds_sum", 0.0),
                   int(values.get("sandbox_operator_collector_sandboxes", 0)),
                   int(values.get("sandbox_operator_collections_total", 0)))


@dataclass(frozen=True)
class CollectorPass:
    seconds: float
    sandboxes: int
    collected: int
    """Sandboxes this pass deleted (0: it only decided, and perhaps mirrored activity)."""


def passes_between(before: CollectorSample, after: CollectorSample) -> list[CollectorPass]:
    """The passes between two scrapes: one each when scraped often enough, else their mean, once per pass."""
    count = after.passes - before.passes
    if count <= 0:
        return []
    mean = (after.seconds - before.seconds) / count
    collected = max(0, after.collected - before.collected)
    return [CollectorPass(mean, after.sandboxes, collected // count)] * count


class CollectorWatch:
    """Scrapes the operator's /metrics in a thread and keeps every collector pass it saw."""

    def __init__(self, scrape: Callable[[], tuple[int, str]]) -> None:
        self.passes: list[CollectorPass] = []
        self._scrape = scrape
        self._stop = threading.Event()
        self._last = self._sample() or CollectorSample()
        self._thread = threading.Thread(target=self._run, name="collector-watch", daemon=True)
        self._thread.start()

    def _sample(self) -> CollectorSample | None:
        try:
            code, text = self._scrape()
        except OSError:
            return None
        return CollectorSample.parse(text) if code == 200 else None

    def _run(self) -> None:
        while not self._stop.wait(SCRAPE_PERIOD):
            self.take()

    def take(self) -> None:
        sample = self._sample()
        if sample is not None:
            self.passes.extend(passes_between(self._last, sample))
            self._last = sample

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.take()


def operator_cpu_seconds(pid: int) -> float:
    """utime + stime of the operator process (it runs no children)."""
    times = parse_stat(Path(f"/proc/{pid}/stat").read_text())
    return times.own_ticks / CLOCK_TICKS


def scale_spec(idle_seconds: int) -> JSON:
    """A Sandbox that lands on a fake node only: it selects them and tolerates their taint."""
    return {"nodeSelector": {KWOK_NODE_KEY: KWOK_NODE_VALUE},
            "tolerations": [{"key": KWOK_NODE_KEY, "operator": "Equal", "value": KWOK_NODE_VALUE,
                             "effect": "NoSchedule"}],
            "timeouts": {"idleSeconds": idle_seconds}}


def fake_node_room(kube: Kube) -> tuple[int, int]:
    """Ready fake nodes, and how many pods they take together."""
    nodes = kube.serialize(kube.core.list_node(label_selector=f"{KWOK_NODE_KEY}={KWOK_NODE_VALUE}").items)
    ready = [node for node in nodes if any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in node.get("status", {}).get("conditions", []))]
    return len(ready), sum(int(node["status"].get("allocatable", {}).get("pods", "0")) for node in ready)


class ScaleTimes(CreationTimes):
    """:class:`CreationTimes`, plus per Sandbox the writes to it up to its Ready version and when it was gone."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self._versions: dict[str, set[str]] = {}
        self.writes_to_ready: dict[str, int] = {}
        self.gone_seen: dict[str, float] = {}
        super().__init__(api, namespace)

    def _sandbox(self, event_type: str, obj: JSON) -> None:
        super()._sandbox(event_type, obj)
        name = obj["metadata"]["name"]
        if name not in self.writes_to_ready:
            self._versions.setdefault(name, set()).add(obj["metadata"]["resourceVersion"])
            if name in self.ready_seen:  # every version but the create's was a write on the way to Ready
                self.writes_to_ready[name] = len(self._versions.pop(name)) - 1
        if event_type == "DELETED":
            self.gone_seen[name] = time.monotonic()


@dataclass
class Census:
    """Children of every Sandbox once all were Ready: pods and NetworkPolicies by the sandbox label."""

    pods: Counter[str]
    policies: Counter[str]

    def wrong(self, names: Iterable[str]) -> list[str]:
        return [f"{name}: {self.pods[name]} pods, {self.policies[name]} policies" for name in names
                if self.pods[name] != 1 or self.policies[name] != 1]


@dataclass
class Outcome:
    """Everything a run measured; :func:`report` turns it into the table."""

    plan: Plan
    names: list[str]
    times: ScaleTimes
    census: Census | None = None
    burst_seconds: float = float("nan")
    sustained_rate: float = float("nan")
    pass_cpu_seconds: float | None = None
    pass_alive: int = 0
    passes: list[CollectorPass] = field(default_factory=list)
    burst_api: ApiWindow | None = None
    lifecycle_api: ApiWindow | None = None
    leftover_children: tuple[int, int] = (0, 0)
    rss_peak_kib: int = 0
    cpu_seconds: float = 0.0
    log_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def burst_names(self) -> list[str]:
        return self.names[:self.plan.burst]

    @property
    def sustained_names(self) -> list[str]:
        return self.names[self.plan.burst:]

    @property
    def all_ready(self) -> bool:
        return all(name in self.times.ready_seen for name in self.names)

    @property
    def all_gone(self) -> bool:
        return all(name in self.times.gone_seen for name in self.names)


def create_paced(times: CreationTimes, names: list[str], spec: JSON, rate: float) -> float:
    """Creates ``names`` at ``rate`` per second (by the clock, so a slow create does not slow the rest);
    returns the rate achieved."""
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
        futures = []
        for index, name in enumerate(names):
            delay = start + index / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(times.create, name, spec))
        for future in futures:
            future.result()
    elapsed = time.monotonic() - start
    return len(names) / elapsed if elapsed > 0 else float("nan")


def census(kube: Kube, namespace: str) -> Census:
    def by_sandbox(items: list[JSON]) -> Counter[str]:
        return Counter(str(item["metadata"]["labels"][constants.LABEL_SANDBOX]) for item in items)

    return Census(by_sandbox(kube.pods(namespace)), by_sandbox(kube.policies(namespace)))


def run(cluster: Cluster, plan: Plan, log_dir: Path, progress: Callable[[str], None] = print) -> Outcome:
    """The whole scenario in a fresh namespace served by an operator from this checkout; the namespace goes
    afterwards. Raises nothing for slow or failed Sandboxes: the outcome says what happened."""
    kube = Kube(cluster)
    spec = scale_spec(plan.idle_seconds)
    names = [f"sbx-{i:05d}" for i in range(plan.count)]
    # The operator may let Sandboxes tolerate and select the fake nodes (nothing else does).
    with served_namespace(cluster, "bench-scale", log_dir, allowed_toleration_keys=KWOK_NODE_KEY,
                          allowed_node_selector_keys=KWOK_NODE_KEY,
                          gc_interval_seconds=f"{plan.gc_interval:g}") as served:
        operator = served.operator
        assert operator is not None
        times = ScaleTimes(cluster.api, served.name)
        outcome = Outcome(plan, names, times, log_path=operator.log_path)
        cpu_start = operator_cpu_seconds(operator.pid)
        collector = CollectorWatch(operator.metrics)
        try:
            metrics_start = api_metrics(cluster)
            started = time.monotonic()
            progress(f"burst: {plan.burst} Sandboxes from {CLIENT_THREADS} threads")
            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(lambda name: times.create(name, spec), outcome.burst_names))
            times.wait_settled(outcome.burst_names, plan.timeout)
            outcome.burst_seconds = time.monotonic() - started
            outcome.burst_api = ApiWindow.between(metrics_start, api_metrics(cluster))

            progress(f"sustained: {plan.sustained} Sandboxes at {plan.rate:g}/s")
            outcome.sustained_rate = create_paced(times, outcome.sustained_names, spec, plan.rate)
            if times.wait_settled(names, plan.timeout):
                outcome.census = census(kube, served.name)
            measure_pass(outcome, operator.pid, progress)

            progress(f"collection: each Sandbox is due {plan.idle_seconds} s after it was Ready")
            last_due = max(times.ready_seen.values(), default=time.monotonic()) + plan.idle_seconds
            with noting_timeout(outcome, "not every Sandbox was collected"):
                wait_until(lambda: outcome.all_gone, last_due - time.monotonic() + plan.timeout, interval=0.5,
                           message="every Sandbox collected")
            with noting_timeout(outcome, "pods or NetworkPolicies outlived their Sandboxes"):
                wait_until(lambda: not any(children_left(kube, served.name)), plan.timeout, interval=0.5,
                           message="no pods or NetworkPolicies left")
            outcome.leftover_children = children_left(kube, served.name)
            outcome.lifecycle_api = ApiWindow.between(metrics_start, api_metrics(cluster))
        finally:
            times.stop()
            collector.stop()
            outcome.passes = collector.passes
            outcome.cpu_seconds = operator_cpu_seconds(operator.pid) - cpu_start if operator.running else float(
                "nan")
            outcome.rss_peak_kib = operator.peak_rss_kib() if operator.running else 0
    return outcome


def measure_pass(outcome: Outcome, pid: int, progress: Callable[[str], None]) -> None:
    """The operator's CPU per collector interval with every Sandbox Ready and none due yet, after one interval
    in which each timer mirrors the idle clock into the status once."""
    plan, times = outcome.plan, outcome.times
    window = PASS_WINDOW_INTERVALS * plan.gc_interval
    first_due = min(times.ready_seen.values(), default=time.monotonic()) + plan.idle_seconds
    if time.monotonic() + plan.gc_interval + window > first_due - plan.gc_interval:
        outcome.notes.append(f"collector pass not measured: the first Sandbox is due before a "
                             f"{window:g} s window would end (raise --idle-seconds)")
        return
    time.sleep(plan.gc_interval)
    progress(f"idle: the operator's CPU over {PASS_WINDOW_INTERVALS} collector intervals")
    before = operator_cpu_seconds(pid)
    time.sleep(window)
    outcome.pass_cpu_seconds = (operator_cpu_seconds(pid) - before) / PASS_WINDOW_INTERVALS
    outcome.pass_alive = sum(1 for name in outcome.names if name not in times.gone_seen)


@contextlib.contextmanager
def noting_timeout(outcome: Outcome, note: str) -> Iterator[None]:
    """Turns a wait's timeout into a note on the outcome: the figures of what did happen still count."""
    try:
        yield
    except WaitTimeoutError as error:
        outcome.notes.append(f"{note}: {error}")


def children_left(kube: Kube, namespace: str) -> tuple[int, int]:
    return len(kube.pods(namespace)), len(kube.policies(namespace))


def api_metrics(cluster: Cluster) -> str:
    return cluster.kubectl("get", "--raw", "/metrics").stdout


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return percentile(values, 50), percentile(values, 95)


def writes_to_ready(outcome: Outcome) -> tuple[float, dict[str, float]]:
    """Writes per Sandbox from create to Ready over the burst: on the Sandbox (from the watch) and, per kind,
    the operator's writes of its children (from the API server)."""
    burst = [outcome.times.writes_to_ready[name] for name in outcome.burst_names
             if name in outcome.times.writes_to_ready]
    count = max(1, len(burst))
    parts = {"Sandbox (metadata and status)": sum(burst) / count}
    api = outcome.burst_api
    if api is not None:
        for group, resource in OPERATOR_CHILD_WRITES:
            parts[resource] = api.count(("POST", "PUT", "PATCH", "APPLY"), group, resource) / count
    return sum(parts.values()), parts


def report(outcome: Outcome) -> bool:
    """Prints the table (and the request breakdown under it); True if every goal is met and nothing failed."""
    plan, times = outcome.plan, outcome.times
    sustained_pod = times.to_pod(outcome.sustained_names)
    p50_pod, p95_pod = percentiles(sustained_pod)
    writes, parts = writes_to_ready(outcome)
    lag = [times.gone_seen[name] - times.ready_seen[name] - plan.idle_seconds for name in outcome.names
           if name in times.gone_seen and name in times.ready_seen]
    p50_lag, p95_lag = percentiles(lag)
    rss_mb = outcome.rss_peak_kib * KIB / MB
    lifecycle = outcome.lifecycle_api
    sandbox_lists = lifecycle.count(("LIST",), "sandbox-operator.io", "sandboxes") if lifecycle else -1
    terminated = sum(lifecycle.terminated_watchers.values()) if lifecycle else -1
    ready = sum(1 for name in outcome.names if name in times.ready_seen)
    wrong = outcome.census.wrong(outcome.names) if outcome.census else ["no census: not all Ready"]
    cpu_value = ("not measured" if outcome.pass_cpu_seconds is None else
                 f"{outcome.pass_cpu_seconds:.2f} s CPU per {plan.gc_interval:g} s interval "
                 f"({outcome.pass_alive} Sandboxes)")
    pass_seconds = [one.seconds for one in outcome.passes]
    pass_max = max(pass_seconds, default=float("nan"))
    pass_value = pass_summary(outcome.passes)
    rows: list[tuple[str, str, str, bool | None]] = [
        (f"{plan.count} Sandboxes Ready, each with one pod and one NetworkPolicy",
         f"{ready} Ready, {len(wrong)} wrong", "all", ready == plan.count and not wrong),
        (f"burst of {plan.burst}: all Ready", f"{outcome.burst_seconds:.1f} s", "-", None),
        ("operator RSS, peak (VmHWM)", f"{rss_mb:.0f} MB", f"<= {GOAL_RSS_MB} MB", rss_mb <= GOAL_RSS_MB),
        ("operator CPU over the run", f"{outcome.cpu_seconds:.1f} s", "-", None),
        (f"create -> pod at {outcome.sustained_rate:.1f}/s sustained, p50 / p95",
         f"{p50_pod * 1000:.0f} / {p95_pod * 1000:.0f} ms", f"p95 <= {GOAL_POD_P95_SECONDS * 1000:.0f} ms",
         p95_pod <= GOAL_POD_P95_SECONDS),
        ("API writes per Sandbox, create -> Ready (burst)", f"{writes:.1f} (" + ", ".join(
            f"{name} {value:.1f}" for name, value in parts.items()) + ")", f"<= {GOAL_WRITES_TO_READY}",
         writes <= GOAL_WRITES_TO_READY),
        ("collector: one pass over all, p50 / max", pass_value, f"<= {GOAL_PASS_SECONDS:g} s",
         pass_max <= GOAL_PASS_SECONDS if pass_seconds else None),
        ("operator CPU per collector interval, all Ready and idle", cpu_value, "-", None),
        ("collector: due -> gone, p50 / p95 / max", f"{p50_lag:.1f} / {p95_lag:.1f} / "
         f"{max(lag, default=float('nan')):.1f} s ({len(lag)} collected)", "-", None),
        ("pods, NetworkPolicies left after collection",
         f"{outcome.leftover_children[0]} / {outcome.leftover_children[1]}", "0 / 0",
         outcome.leftover_children == (0, 0)),
        ("watch relists: LIST Sandboxes; watchers terminated by the API server",
         f"{sandbox_lists}; {terminated}", f"<= {GOAL_SANDBOX_RELISTS}; 0",
         0 <= sandbox_lists <= GOAL_SANDBOX_RELISTS and terminated == 0),
    ]
    print()
    print("| measure | measured | goal | met |")
    print("|---|---|---|---|")
    ok = not times.failed
    for measure, value, goal, met in rows:
        verdict = "-" if met is None else ("yes" if met else "NO")
        print(f"| {measure} | {value} | {goal} | {verdict} |")
        ok = ok and met is not False
    if lifecycle is not None:
        print_requests(lifecycle, plan.count)
    for line in [*outcome.notes, *wrong[:5]]:
        print(f"\n{line}")
    if times.failed:
        print(f"\n{len(times.failed)} failed: " + "; ".join(
            f"{k}: {v}" for k, v in sorted(times.failed.items())[:5]))
    print(f"\noperator log: {outcome.log_path}")
    return ok


def pass_summary(passes: list[CollectorPass]) -> str:
    """p50 / max of every pass, then of the passes that deleted nothing, in ms; the most Sandboxes in a pass."""
    if not passes:
        return "no pass seen"

    def p50_max(seconds: list[float]) -> str:
        if not seconds:
            return "none"
        return f"{percentile(seconds, 50) * 1000:.0f} / {max(seconds) * 1000:.0f} ms"

    quiet = [one.seconds for one in passes if not one.collected]
    return (f"{p50_max([one.seconds for one in passes])} over {len(passes)} passes (those deleting nothing: "
            f"{p50_max(quiet)}); up to {max(one.sandboxes for one in passes)} Sandboxes")


def print_requests(api: ApiWindow, count: int) -> None:
    """Requests over the whole lifecycle, per Sandbox: totals by verb, then each kind made at least once per
    ten Sandboxes."""
    print(f"\nAPI requests over the lifecycle (create to gone), per Sandbox, every client ({count} Sandboxes):\n")
    by_verb: Counter[str] = Counter()
    for key, requests in api.requests.items():
        by_verb[key.verb] += requests
    print("| verb | per Sandbox |")
    print("|---|---:|")
    for verb, requests in by_verb.most_common():
        print(f"| {verb} | {requests / count:.2f} |")
    print("\n| verb | resource | requests | per Sandbox | made by |")
    print("|---|---|---:|---:|---|")
    for key, requests in api.requests.most_common():
        if requests * 10 >= count:
            print(f"| {key.verb} | {key.label} | {requests} | {requests / count:.2f} | {made_by(key)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000, help="Sandboxes in all (default 2000)")
    parser.add_argument("--rate", type=float, default=20.0, help="creates per second when sustained (default 20)")
    parser.add_argument("--sustained-seconds", type=float, default=60.0,
                        help="length of the sustained phase (default 60; at least a quarter of --count is the burst)")
    parser.add_argument("--idle-seconds", type=int, default=300,
                        help="Sandboxes' spec.timeouts.idleSeconds: when the collector deletes them (default 300)")
    parser.add_argument("--gc-interval", type=float, default=10.0,
                        help="the operator's collector interval, seconds (default 10)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each phase to settle")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    args = parser.parse_args(argv)
    if args.count < 2:
        parser.error("--count must be at least 2")
    if args.rate <= 0 or args.sustained_seconds <= 0:
        parser.error("--rate and --sustained-seconds must be positive")
    if not 10 <= args.idle_seconds <= 2_592_000:
        parser.error("--idle-seconds must be from 10 to 2592000 (the CRD's bounds)")
    if not 0.5 <= args.gc_interval <= 3600:
        parser.error("--gc-interval must be from 0.5 to 3600 (the operator's bounds)")
    plan = Plan(args.count, args.rate, args.sustained_seconds, args.idle_seconds, args.gc_interval, args.timeout)

    print(f"$ {invocation()}")
    cluster = Cluster.connect(args.kubeconfig or default_kubeconfig())
    nodes, room = fake_node_room(Kube(cluster))
    if room < plan.count:
        print(f"{nodes} Ready fake nodes take {room} pods, fewer than {plan.count}: run hack/kwok-up.sh "
              f"(KWOK_NODES, KWOK_NODE_PODS)")
        return 2
    version = client.VersionApi(cluster.api).get_code().git_version
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, {nodes} fake nodes "
          f"(kwok, {room} pods), {os.cpu_count()} CPUs here; {plan.burst} at once, then {plan.sustained} at "
          f"{plan.rate:g}/s; idleSeconds {plan.idle_seconds}, collector every {plan.gc_interval:g} s")
    outcome = run(cluster, plan, Path(tempfile.gettempdir()), progress=lambda text: print(f"# {text}", flush=True))
    return 0 if report(outcome) else 1


if __name__ == "__main__":
    raise SystemExit(main())

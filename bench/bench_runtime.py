"""What the gVisor kernel boundary costs: Sandboxes with no RuntimeClass (runc, the node's default) and with
``runtimeClassName: gvisor`` measured side by side in one run, on one namespace served by one operator.

    python -m bench.bench_runtime --namespace sandbox-bench --start-operator [--kubeconfig PATH]

With ``--start-operator`` the operator from this checkout serves the namespace, told to allow the RuntimeClass
``gvisor`` (``allowed_runtime_classes``) while its default stays the node's runtime, so each Sandbox picks its
runtime by its own ``runtimeClassName``; without it, the operator that serves the namespace must allow ``gvisor``.
Measured per runtime, one runtime after the other:

* a single Sandbox create -> Ready (``--serial`` of them, p50), and ``--at-once`` created at once: all Ready;
* on one sandbox (1Gi memory) through the SDK's channel: ``true`` p50/p95 (``--iterations``), commands per second,
  1 MB and 50 MB written and read back, a trivial code cell p50/p95 (``--cells``) and a fresh code context;
* work inside that sandbox, timed inside it: a CPU-bound Python loop, 20,000 small files created, stat'ed and
  removed in /tmp (an emptyDir: under gVisor each call goes to the Sentry and the file system ones to the gofer),
  and fork + exec + wait of /bin/true 200 times;
* ``--idle`` idle Sandboxes: node memory per sandbox (MemTotal - MemAvailable, baseline taken just before),
  the pods' memory cgroups (``memory.usage_in_bytes`` of cgroup v1 under /sys/fs/cgroup/memory/kubepods), and
  the node's CPU over ``--idle-seconds`` (/proc/stat), baseline subtracted.

Next to them, the RuntimeClass's configured pod overhead (``overhead.podFixed``) and what gVisor adds per idle
sandbox over runc, so that the overhead can be checked: the pod cgroup's extra is what the overhead must cover (the
scheduler and the pod's limits add it), the node's extra also counts what lives outside the pod (the shim). The
goals are the issue's: a gVisor start within 1.5x of runc's, and at most 30 MB more node memory per idle sandbox.

The node is this machine (the project's local cluster): /proc and the cgroups are the node's. Nothing but the
cluster's API server is contacted. Prints one table (``--output json`` for machines) under the command line that
produced it; exits 1 when a goal is missed and 2 when the cluster has no RuntimeClass ``gvisor``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client import ApiException
from tests.kit import GVISOR, RUNC, Cluster, CreationTimes, Kube, Runtime, percentile, running_operator, wait_until

from bench import bench_code, bench_exec
from bench.bench_code import figure, ratio
from bench.bench_density import CLIENT_THREADS, KIB, MB, busy_cores
from bench.bench_exec import bench_sandbox, prepare_cluster, print_results, text_table
from sandbox_operator import constants
from sandbox_operator.models.quantity import parse_quantity
from sandbox_operator.sdk import Sandbox, SandboxManager

RUNTIMES = (RUNC, GVISOR)
Metrics = dict[str, float | None]

READY_P50, AT_ONCE = "ready_p50_s", "all_ready_s"
CPU_LOOP, FILES, SPAWN_P50 = "cpu_loop_s", "files_s", "spawn_p50_ms"
NODE_MEMORY, POD_MEMORY, IDLE_CPU = "node_memory_mb", "pod_memory_mb", "idle_cpu_millicores"
OVERHEAD_MEMORY, OVERHEAD_CPU = "overhead_memory_mb", "overhead_cpu_millicores"
EXTRA_POD_MEMORY, EXTRA_NODE_MEMORY, EXTRA_IDLE_CPU = (
    "extra_pod_memory_mb", "extra_node_memory_mb", "extra_idle_cpu_millicores")

START_RATIO_GOAL = 1.5
EXTRA_MEMORY_GOAL_MB = 30.0
LOOP_ADDITIONS = 10**7
SMALL_FILES = 20_000
# bench_exec's and bench_code's SDK halves, run as they are; the rate and the payloads as in bench_exec's defaults.
RATE_THREADS, RATE_SECONDS, SMALL_MB, LARGE_MB = 8, 3.0, 1, 50
FRESH_CONTEXTS, BIG_RUNS = 3, 3

MEMORY_CGROUP_ROOT = Path("/sys/fs/cgroup/memory/kubepods")
QOS_DIRECTORIES = ("", "burstable", "besteffort")  # the kubelet's cgroupfs layout: guaranteed pods at the top


# Work inside the sandbox, each timed by the sandbox itself (so the channel's round trip is left out) -----------

def cpu_loop_script(additions: int) -> str:
    return textwrap.dedent(f"""
        import time
        started = time.perf_counter()
        total = 0
        for i in range({additions}):
            total += i
        print(time.perf_counter() - started)
    """)


def files_script(count: int, parent: str) -> str:
    """Creates, stats and removes ``count`` one-byte files one after the other in a new directory of ``parent``."""
    return textwrap.dedent(f"""
        import os, tempfile, time
        directory = tempfile.mkdtemp(dir={parent!r})
        started = time.perf_counter()
        for i in range({count}):
            path = os.path.join(directory, str(i))
            with open(path, "w") as f:
                f.write("x")
            os.stat(path)
            os.unlink(path)
        print(time.perf_counter() - started)
        os.rmdir(directory)
    """)


def python_inside(sbx: Sandbox, script: str) -> Any:
    return json.loads(sbx.run(["python3", "-c", script], check=True).stdout)


def work_inside(sbx: Sandbox, runs: int) -> Metrics:
    loops = [float(python_inside(sbx, cpu_loop_script(LOOP_ADDITIONS))) for _ in range(runs)]
    files = [float(python_inside(sbx, files_script(SMALL_FILES, constants.TMP_DIR))) for _ in range(runs)]
    spawn_p50_ms, _ = python_inside(sbx, bench_exec.SPAWN_TRUE)
    return {CPU_LOOP: percentile(loops, 50), FILES: percentile(files, 50), SPAWN_P50: float(spawn_p50_ms)}


def sdk_figures(namespace: str, kubeconfig: str, runtime: Runtime, a: argparse.Namespace,
                notes: list[str]) -> Metrics:
    """bench_exec's and bench_code's SDK figures and the work inside, on one new sandbox of ``runtime``."""
    exec_args = argparse.Namespace(iterations=a.iterations, threads=RATE_THREADS, seconds=RATE_SECONDS,
                                   small_mb=SMALL_MB, large_mb=LARGE_MB)
    code_args = argparse.Namespace(cells=a.cells, fresh_contexts=FRESH_CONTEXTS, big_runs=BIG_RUNS, burst=a.cells)
    # The Sandbox spec's field has the pod's name, so the runtime's pod fields are its spec.
    with SandboxManager(namespace, kubeconfig=kubeconfig, transport="channel",
                        default_spec=runtime.pod_fields()) as manager, \
            bench_sandbox(manager, None, f"runtime-{runtime.name}", notes) as (sbx, _):
        sbx.run(["true"]).check()  # the channel open before the timers start
        return bench_exec.bench_sdk(sbx, exec_args) | bench_code.bench_sdk(sbx, code_args) | work_inside(
            sbx, a.work_runs)


# Sandboxes created and timed through the API, and what idle ones cost the node --------------------------------

@dataclass
class Fleet:
    """Sandboxes of this run in one namespace: created, timed (:class:`CreationTimes`) and deleted by name, so that
    nothing else in the namespace is touched."""

    kube: Kube
    namespace: str
    times: CreationTimes
    run_id: str
    timeout: float

    def start(self, runtime: Runtime, kind: str, count: int) -> list[str]:
        """``count`` Sandboxes of ``runtime`` created at once; their names once each is Ready or failed."""
        names = [f"rt-{self.run_id}-{runtime.name}-{kind}-{i:02d}" for i in range(count)]
        with concurrent.futures.ThreadPoolExecutor(min(count, CLIENT_THREADS)) as pool:
            list(pool.map(lambda name: self.times.create(name, runtime.pod_fields()), names))
        self.times.wait_settled(names, self.timeout)
        return names

    def delete(self, names: Sequence[str]) -> None:
        """Deletes them and waits until the Sandboxes and their pods are gone, so the next figure starts clean."""
        for name in names:
            self.kube.delete(self.namespace, name)
        wanted = set(names)
        wait_until(lambda: not any(self.kube.get(self.namespace, name) for name in names)
                   and not [pod for pod in self.kube.pods(self.namespace)
                            if pod["metadata"]["labels"].get(constants.LABEL_SANDBOX) in wanted],
                   self.timeout, interval=1, message=f"{len(names)} Sandboxes and their pods gone")

    def failures(self, names: Sequence[str]) -> list[str]:
        return [f"{name}: {self.times.failed[name]}" for name in names if name in self.times.failed]


def start_figures(fleet: Fleet, runtime: Runtime, serial: int, at_once: int, notes: list[str]) -> Metrics:
    singles: list[str] = []
    for _ in range(serial):
        single = fleet.start(runtime, f"single{len(singles)}", 1)
        fleet.delete(single)
        singles += single
    burst = fleet.start(runtime, "burst", at_once)
    fleet.delete(burst)
    notes += fleet.failures([*singles, *burst])
    single_times, burst_times = fleet.times.to_ready(singles), fleet.times.to_ready(burst)
    return {READY_P50: percentile(single_times, 50) if single_times else None,
            AT_ONCE: max(burst_times) if len(burst_times) == at_once else None}


def pod_memory_cgroup(pod_uid: str, root: Path = MEMORY_CGROUP_ROOT) -> Path:
    """The pod's memory cgroup (cgroup v1, the kubelet's cgroupfs driver) on this machine, the node."""
    for qos in QOS_DIRECTORIES:
        path = root.joinpath(qos, f"pod{pod_uid}")
        if path.is_dir():
            return path
    raise LookupError(f"no memory cgroup of pod {pod_uid} under {root}/{{,burstable/,besteffort/}}: the benchmark "
                      f"reads the node's cgroups (v1, cgroupfs driver), so it must run on the cluster's node")


def pods_memory_bytes(kube: Kube, namespace: str, sandboxes: Sequence[str], root: Path = MEMORY_CGROUP_ROOT) -> int:
    """The memory charged to the sandboxes' pod cgroups (``memory.usage_in_bytes``, hierarchical: every container,
    and under gVisor the Sentry, the gofer and the stubs)."""
    wanted = set(sandboxes)
    pods = [pod for pod in kube.pods(namespace) if pod["metadata"]["labels"].get(constants.LABEL_SANDBOX) in wanted]
    return sum(int((pod_memory_cgroup(pod["metadata"]["uid"], root) / "memory.usage_in_bytes").read_text())
               for pod in pods)


def idle_figures(fleet: Fleet, runtime: Runtime, count: int, seconds: float, settle: float,
                 notes: list[str]) -> Metrics:
    """Node CPU and memory with ``count`` idle sandboxes of ``runtime``, per sandbox, over a baseline taken just
    before they start."""
    baseline_cores, baseline_kib = busy_cores(seconds)
    names = fleet.start(runtime, "idle", count)
    try:
        ready = len(fleet.times.to_ready(names))
        notes += fleet.failures(names)
        if not ready:
            return {}
        time.sleep(settle)  # let the start-up work settle before sampling the idle cost
        cores, used_kib = busy_cores(seconds)
        pods_bytes = pods_memory_bytes(fleet.kube, fleet.namespace, names)
    finally:
        fleet.delete(names)
    return {NODE_MEMORY: (used_kib - baseline_kib) * KIB / MB / ready, POD_MEMORY: pods_bytes / MB / ready,
            IDLE_CPU: (cores - baseline_cores) * 1000 / ready}


# The RuntimeClass ------------------------------------------------------------------------------------------------

def configured_overhead(node_api: client.NodeV1Api, name: str) -> Metrics | None:
    """The RuntimeClass's ``overhead.podFixed`` as MB and millicores (0 when it sets none); None without it."""
    try:
        runtime_class = node_api.read_runtime_class(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    pod_fixed: Mapping[str, str] = (runtime_class.overhead.pod_fixed if runtime_class.overhead else None) or {}
    return {OVERHEAD_MEMORY: float(parse_quantity(pod_fixed.get("memory", "0"))) / MB,
            OVERHEAD_CPU: float(parse_quantity(pod_fixed.get("cpu", "0"))) * 1000}


def with_extras(runc: Metrics, gvisor: Metrics) -> Metrics:
    """gVisor's figures plus what it adds per idle sandbox over runc (missing where either figure is)."""
    def extra(metric: str) -> float | None:
        theirs, ours = runc.get(metric), gvisor.get(metric)
        return None if theirs is None or ours is None else ours - theirs

    return {**gvisor, EXTRA_POD_MEMORY: extra(POD_MEMORY), EXTRA_NODE_MEMORY: extra(NODE_MEMORY),
            EXTRA_IDLE_CPU: extra(IDLE_CPU)}


# Output --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    goal: str = ""
    met: Callable[[float, float | None], bool] | None = None  # (gVisor's value, runc's) -> met
    compared: bool = True  # a gVisor / runc ratio makes sense (not for gVisor-only rows)


def rows(a: argparse.Namespace) -> tuple[Row, ...]:
    idle = f"{a.idle} idle"
    return (
        Row(READY_P50, f"single sandbox create -> Ready, p50 of {a.serial} (s)", f"gvisor <= {START_RATIO_GOAL:g}x",
            lambda ours, theirs: theirs is not None and ours <= START_RATIO_GOAL * theirs),
        Row(AT_ONCE, f"{a.at_once} at once: all Ready (s)"),
        Row(bench_exec.TRUE_P50, f"`true` over the channel, p50 of {a.iterations} (ms)"),
        Row(bench_exec.TRUE_P95, f"`true` over the channel, p95 of {a.iterations} (ms)"),
        Row(bench_exec.RATE, f"commands per second, one client, {RATE_THREADS} threads"),
        Row(bench_exec.SMALL, f"{SMALL_MB} MB file write+read, p50 (ms)"),
        Row(bench_exec.LARGE, f"{LARGE_MB} MB file write+read (MB/s)"),
        Row(bench_code.CELL_P50, f"code cell `{bench_code.TRIVIAL_CELL}`, p50 of {a.cells} (ms)"),
        Row(bench_code.CELL_P95, f"code cell `{bench_code.TRIVIAL_CELL}`, p95 of {a.cells} (ms)"),
        Row(bench_code.FRESH, f"fresh code context: start + first cell, p50 of {FRESH_CONTEXTS} (ms)"),
        Row(CPU_LOOP, f"CPU: Python loop of {LOOP_ADDITIONS:,} additions, p50 of {a.work_runs} (s)"),
        Row(FILES, f"syscalls: {SMALL_FILES:,} files created+stat'ed+removed in /tmp, p50 of {a.work_runs} (s)"),
        Row(SPAWN_P50, "processes: fork+exec+wait of /bin/true, p50 of 200 (ms)"),
        Row(NODE_MEMORY, f"node memory per idle sandbox, {idle} (MB)"),
        Row(POD_MEMORY, f"pod memory cgroup per idle sandbox, {idle} (MB)"),
        Row(IDLE_CPU, f"node CPU per idle sandbox, {idle} over {a.idle_seconds:g} s, baseline subtracted (millicores)"),
        Row(OVERHEAD_MEMORY, "RuntimeClass overhead.podFixed memory, configured (MB)", compared=False),
        Row(EXTRA_POD_MEMORY, "pod memory cgroup per idle sandbox, gvisor - runc (MB)", compared=False),
        Row(EXTRA_NODE_MEMORY, "node memory per idle sandbox, gvisor - runc (MB)", f"<= {EXTRA_MEMORY_GOAL_MB:g}",
            lambda ours, _: ours <= EXTRA_MEMORY_GOAL_MB, compared=False),
        Row(OVERHEAD_CPU, "RuntimeClass overhead.podFixed cpu, configured (millicores)", compared=False),
        Row(EXTRA_IDLE_CPU, "node CPU per idle sandbox, gvisor - runc (millicores)", compared=False),
    )


def format_table(results: Mapping[str, Mapping[str, float | None]], table_rows: Sequence[Row]) -> str:
    runc, gvisor = results.get(RUNC.name, {}), results.get(GVISOR.name, {})
    lines = []
    for row in table_rows:
        theirs, ours = runc.get(row.metric), gvisor.get(row.metric)
        verdict = "" if ours is None or row.met is None else ("  met" if row.met(ours, theirs) else "  MISSED")
        lines.append((row.label, figure(theirs), figure(ours),
                      ratio(ours, theirs) if row.compared else "-", (row.goal + verdict) or "-"))
    return text_table(("metric", RUNC.name, GVISOR.name, "gvisor / runc", "goal"), lines)


def goals_met(results: Mapping[str, Mapping[str, float | None]], table_rows: Sequence[Row]) -> bool:
    """Every goal has its figure and is met."""
    runc, gvisor = results.get(RUNC.name, {}), results.get(GVISOR.name, {})
    return all((ours := gvisor.get(row.metric)) is not None and row.met(ours, runc.get(row.metric))
               for row in table_rows if row.met is not None)


def overhead_note(gvisor: Mapping[str, float | None]) -> str:
    configured, measured = gvisor.get(OVERHEAD_MEMORY), gvisor.get(EXTRA_POD_MEMORY)
    if configured is None or measured is None:
        return "pod overhead check: no figure (a runtime's idle sandboxes did not get Ready)"
    verdict = "covers it" if configured >= measured else "does NOT cover it: raise GVISOR_OVERHEAD_MEMORY"
    return (f"pod overhead check: the RuntimeClass adds {configured:.1f} MB per pod; gVisor's idle pod cgroup holds "
            f"{measured:.1f} MB more than runc's, so the overhead {verdict}")


# Running -------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    p.add_argument("--namespace", default="sandbox-bench")
    p.add_argument("--kubectl", help="kubectl binary (default: the cluster's, else PATH)")
    p.add_argument("--start-operator", action="store_true",
                   help="run the operator from this checkout meanwhile, allowing the RuntimeClass gvisor")
    p.add_argument("--serial", type=int, default=5, help="single sandboxes created one at a time (default 5)")
    p.add_argument("--at-once", type=int, default=20, help="sandboxes created at once (default 20)")
    p.add_argument("--iterations", type=int, default=100, help="runs of `true` (default 100)")
    p.add_argument("--cells", type=int, default=100, help="trivial code cells (default 100)")
    p.add_argument("--work-runs", type=int, default=3, help="runs of each piece of work inside (default 3)")
    p.add_argument("--idle", type=int, default=10, help="idle sandboxes per runtime (default 10)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="node sampling window (default 30)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for sandboxes to get Ready or go")
    p.add_argument("--output", choices=("table", "json"), default="table")
    a = p.parse_args(argv)
    for flag in ("serial", "at_once", "iterations", "cells", "work_runs", "idle", "idle_seconds"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(a, flag)}")
    return a


def operator_allowing_gvisor(kubeconfig: str, namespace: str,
                             enabled: bool) -> contextlib.AbstractContextManager[object]:
    """The operator from this checkout for ``namespace``, allowing gVisor, while the block runs; else none."""
    if not enabled:
        return contextlib.nullcontext()
    log_path = Path(tempfile.gettempdir()) / f"bench-operator-{namespace}.log"
    return running_operator(kubeconfig, namespace, log_path, allowed_runtime_classes=str(GVISOR.runtime_class))


def measure(cluster: Cluster, a: argparse.Namespace, notes: list[str]) -> dict[str, Metrics]:
    results: dict[str, Metrics] = {}
    times = CreationTimes(cluster.api, a.namespace)
    fleet = Fleet(Kube(cluster), a.namespace, times, f"{int(time.time()) % 100_000:05d}", a.timeout)
    try:
        for runtime in RUNTIMES:
            own: list[str] = []
            results[runtime.name] = (start_figures(fleet, runtime, a.serial, a.at_once, own)
                                     | sdk_figures(a.namespace, a.kubeconfig, runtime, a, own)
                                     | idle_figures(fleet, runtime, a.idle, a.idle_seconds, settle=10, notes=own))
            notes += [f"{runtime.name}: {note}" for note in own]
    finally:
        times.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    prepare_cluster(a)
    cluster = Cluster.connect(Path(a.kubeconfig))
    overhead = configured_overhead(client.NodeV1Api(cluster.api), str(GVISOR.runtime_class))
    if overhead is None:
        print(f"error: the cluster ({a.kubeconfig}) has no RuntimeClass {GVISOR.runtime_class}: bring it up with "
              f"gVisor (make cluster-up, SANDBOX_GVISOR unset; docs/gvisor.md)", file=sys.stderr)
        return 2
    if not MEMORY_CGROUP_ROOT.is_dir():
        print(f"error: no {MEMORY_CGROUP_ROOT}: the benchmark reads the node's cgroups (v1), so it runs on the "
              f"cluster's node", file=sys.stderr)
        return 2
    notes: list[str] = []
    with operator_allowing_gvisor(a.kubeconfig, a.namespace, a.start_operator):
        results = measure(cluster, a, notes)
    results[GVISOR.name] = with_extras(results[RUNC.name], results[GVISOR.name] | overhead)
    table_rows = rows(a)
    notes.append(overhead_note(results[GVISOR.name]))
    print_results(a.output, results, notes, {row.metric: row.goal for row in table_rows if row.goal},
                  format_table(results, table_rows),
                  "work inside is timed by the sandbox itself; the memory and CPU baselines are taken just before "
                  "each runtime's idle sandboxes start; MB = 10^6 bytes")
    return 0 if goals_met(results, table_rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Density, idle cost and burst start of default sandboxes on one node, measured side by side in one run.

    python -m bench.bench_density [--count 100] [--serial 5] [--idle-seconds 60] [--kubeconfig PATH]

Starts the operator from this checkout for a fresh namespace, then, with Sandboxes of ``spec: {}`` (the
operator's defaults, exactly what a new user gets):

1. a single sandbox at a time (``--serial`` of them): create -> Ready;
2. the node's CPU (from /proc/stat) and memory (MemTotal - MemAvailable) over ``--idle-seconds`` with no
   sandbox: the baseline;
3. ``--count`` Sandboxes created at once (20 client threads): create -> pod created (the operator's latency) and
   the time until all of them are Ready;
4. the same node figures with all of them Ready and idle: CPU cores and memory per idle sandbox, baseline
   subtracted; the operator's RSS with them all.

Under the table, the profile of the burst (see bench/node_profile.py): CPU seconds by cluster component, and the
API requests made, by kind, per sandbox, with the API server's own mean latency for each.

It prints one table with each figure next to its goal and the command line on top. The node is this machine
(the project's local cluster), so /proc is the node's. Nothing but the cluster's API server is contacted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client
from tests.kit import Cluster, CreationTimes, default_kubeconfig, invocation, percentile, served_namespace

from bench.node_profile import COMPONENTS, ApiUse, api_use, cpu_by_component, process_times

CLIENT_THREADS = 20
# The goals are in MB (10^6 bytes); /proc reports KiB.
KIB, MB = 1024, 1_000_000


@dataclass(frozen=True)
class NodeSample:
    busy_jiffies: int
    total_jiffies: int
    used_memory_kib: int


def node_sample() -> NodeSample:
    """CPU jiffies (all CPUs) and used memory of this machine, which is the test cluster's node."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    meminfo = {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}
    return NodeSample(sum(fields) - idle, sum(fields), meminfo["MemTotal"] - meminfo["MemAvailable"])


def busy_cores(seconds: float) -> tuple[float, int]:
    """Average busy cores over ``seconds``, and the used memory at the end (KiB)."""
    first = node_sample()
    time.sleep(seconds)
    last = node_sample()
    cpus = os.cpu_count() or 1
    share = (last.busy_jiffies - first.busy_jiffies) / max(1, last.total_jiffies - first.total_jiffies)
    return share * cpus, last.used_memory_kib


def row(measure: str, value: str, goal: str, met: bool | None) -> str:
    verdict = "-" if met is None else ("yes" if met else "NO")
    return f"| {measure} | {value} | {goal} | {verdict} |"


def api_metrics(cluster: Cluster) -> str:
    return cluster.kubectl("get", "--raw", "/metrics").stdout


def component_label(name: str) -> str:
    return {"operator": "the operator (Python, kopf)"}.get(name) or COMPONENTS.get(
        name, "everything else (this benchmark, other processes of the machine)")


def print_profile(count: int, cpu: dict[str, float], api: list[ApiUse], idle_cpu: dict[str, float],
                  idle_seconds: float) -> None:
    print("\nNode CPU during the burst and while idle, by component (own + reaped children, /proc/PID/stat):\n")
    print(f"| component | burst: CPU s | burst: per sandbox | idle: millicores, {count} idle (baseline included) |")
    print("|---|---:|---:|---:|")
    for name in sorted({*cpu, *idle_cpu}, key=lambda key: -cpu.get(key, 0.0)):
        seconds = cpu.get(name, 0.0)
        print(f"| {component_label(name)} | {seconds:.1f} | {seconds / max(1, count) * 1000:.0f} ms | "
              f"{idle_cpu.get(name, 0.0) / idle_seconds * 1000:.0f} |")
    total, idle_total = sum(cpu.values()), sum(idle_cpu.values())
    print(f"| total | {total:.1f} | {total / max(1, count) * 1000:.0f} ms | {idle_total / idle_seconds * 1000:.0f} |")
    print("\nAPI requests during the burst, every client (from the API server's /metrics):\n")
    print("| request | code | count | per sandbox | server mean latency |")
    print("|---|---|---:|---:|---:|")
    for use in api:
        print(f"| {use.verb} {use.resource} | {use.code} | {use.requests} | {use.requests / max(1, count):.1f} | "
              f"{use.mean_seconds * 1000:.0f} ms |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="Sandboxes created at once (default 100)")
    parser.add_argument("--serial", type=int, default=5, help="single sandboxes created one at a time (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="CPU sampling window (default 60)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the burst to be Ready")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    args = parser.parse_args(argv)

    print(f"$ {invocation()}")
    cluster = Cluster.connect(args.kubeconfig or default_kubeconfig())
    core = client.CoreV1Api(cluster.api)
    version = client.VersionApi(cluster.api).get_code().git_version
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, "
          f"{len(core.list_node().items)} node(s), {os.cpu_count()} CPUs; Sandboxes with spec: {{}}")

    ok = True
    with served_namespace(cluster, "bench-density", Path(tempfile.gettempdir())) as served:
        operator = served.operator
        assert operator is not None
        times = CreationTimes(cluster.api, served.name)
        try:
            serial = [f"single-{i}" for i in range(args.serial)]
            for name in serial:
                times.create(name, {})
                times.wait_settled([name], 120)
                times.delete_all()
            single = times.to_ready(serial)

            baseline_cores, baseline_memory = busy_cores(args.idle_seconds)

            burst = [f"sbx-{i:03d}" for i in range(args.count)]
            metrics_before, cpu_before = api_metrics(cluster), process_times()
            with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(lambda name: times.create(name, {}), burst))
            all_ready = times.wait_settled(burst, args.timeout)
            burst_cpu = cpu_by_component(cpu_before, process_times(), {operator.pid: "operator"})
            burst_api = api_use(metrics_before, api_metrics(cluster), minimum=max(1, args.count // 10))
            burst_seconds = max(times.to_ready(burst), default=float("nan")) if all_ready else float("nan")
            ready_count = len(times.to_ready(burst))

            time.sleep(10)  # let the start-up work settle before sampling the idle cost
            idle_before = process_times()
            idle_cores, idle_memory = busy_cores(args.idle_seconds)
            idle_cpu = cpu_by_component(idle_before, process_times(), {operator.pid: "operator"})
            operator_rss = operator.rss_kib()
        finally:
            times.stop()
            times.delete_all()
            operator_peak = operator.peak_rss_kib()
        log_path = operator.log_path

    to_pod = times.to_pod(burst)
    per_sandbox_cores = idle_cores - baseline_cores
    per_sandbox_memory_mb = (idle_memory - baseline_memory) * KIB / MB / max(1, ready_count)
    p50_pod = percentile(to_pod, 50) if to_pod else float("nan")
    p95_pod = percentile(to_pod, 95) if to_pod else float("nan")
    p50_single = percentile(single, 50) if single else float("nan")
    figures = [
        (f"{args.count} default Sandboxes at once: all Ready", f"{burst_seconds:.1f} s ({ready_count} Ready)",
         "<= 15 s", all_ready and burst_seconds <= 15),
        ("create -> pod created during the burst, p50", f"{p50_pod * 1000:.0f} ms", "<= 50 ms", p50_pod <= 0.05),
        ("create -> pod created during the burst, p95", f"{p95_pod * 1000:.0f} ms", "<= 200 ms", p95_pod <= 0.2),
        (f"single sandbox create -> Ready, p50 of {len(single)}", f"{p50_single:.2f} s", "<= 0.7 s",
         p50_single <= 0.7),
        (f"{ready_count} idle sandboxes: node CPU over {args.idle_seconds:.0f} s, baseline subtracted",
         f"{per_sandbox_cores:.3f} cores (baseline {baseline_cores:.3f})", "<= 0.1 cores",
         per_sandbox_cores <= 0.1),
        ("node memory per idle sandbox", f"{per_sandbox_memory_mb:.1f} MB", "<= 10 MB", per_sandbox_memory_mb <= 10),
        (f"operator RSS with {ready_count} sandboxes (peak over the run)",
         f"{operator_rss * KIB / MB:.0f} MB ({operator_peak * KIB / MB:.0f} MB)", "<= 150 MB",
         operator_peak * KIB / MB <= 150),
    ]
    print()
    print("| measure | measured | goal | met |")
    print("|---|---|---|---|")
    for measure, value, goal, met in figures:
        print(row(measure, value, goal, met))
        ok = ok and bool(met)
    print_profile(args.count, burst_cpu, burst_api, idle_cpu, args.idle_seconds)
    if times.failed:
        print(f"\n{len(times.failed)} failed: " + "; ".join(
            f"{k}: {v}" for k, v in sorted(times.failed.items())[:5]))
    print(f"\noperator log: {log_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

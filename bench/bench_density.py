"""Density, idle cost and burst start of default sandboxes on one node, measured side by side in one run.

    python bench/bench_density.py [--count 100] [--serial 5] [--idle-seconds 60] [--kubeconfig PATH]

Starts the operator from this checkout for a fresh namespace, then, with Sandboxes of ``spec: {}`` (the
operator's defaults, exactly what a new user gets):

1. a single sandbox at a time (``--serial`` of them): create -> Ready;
2. the node's CPU (from /proc/stat) and memory (MemTotal - MemAvailable) over ``--idle-seconds`` with no
   sandbox: the baseline;
3. ``--count`` Sandboxes created at once (20 client threads): create -> pod created (the operator's latency) and
   the time until all of them are Ready;
4. the same node figures with all of them Ready and idle: CPU cores and memory per idle sandbox, baseline
   subtracted; the operator's RSS with them all.

It prints one table with each figure next to its goal and the command line on top. The node is this machine
(the project's local cluster), so /proc is the node's. Nothing but the cluster's API server is contacted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from bench_create import DEFAULT_KUBECONFIG, Recorder, peak_rss_kib, percentile, start_operator, status_kib
from sandbox_operator import constants

CLIENT_THREADS = 20


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


class Bench:
    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.recorder = Recorder(api, namespace)
        self.started: dict[str, float] = {}

    def create(self, name: str) -> None:
        body = {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
                "metadata": {"name": name, "namespace": self.namespace}, "spec": {}}
        self.started[name] = time.monotonic()
        self.custom.create_namespaced_custom_object(constants.GROUP, constants.VERSION, self.namespace,
                                                    constants.PLURAL, body)

    def wait(self, names: list[str], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n in self.recorder.ready_seen or n in self.recorder.failed for n in names):
                return all(n in self.recorder.ready_seen for n in names)
            time.sleep(0.05)
        return False

    def delete_all(self, timeout: float = 180) -> None:
        self.custom.delete_collection_namespaced_custom_object(constants.GROUP, constants.VERSION, self.namespace,
                                                               constants.PLURAL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.custom.list_namespaced_custom_object(
                constants.GROUP, constants.VERSION, self.namespace, constants.PLURAL)["items"]:
            time.sleep(0.5)

    def to_ready(self, names: list[str]) -> list[float]:
        return [self.recorder.ready_seen[n] - self.started[n] for n in names if n in self.recorder.ready_seen]

    def to_pod(self, names: list[str]) -> list[float]:
        return [self.recorder.pod_seen[n] - self.started[n] for n in names if n in self.recorder.pod_seen]


def row(measure: str, value: str, goal: str, met: bool | None) -> str:
    verdict = "-" if met is None else ("yes" if met else "NO")
    return f"| {measure} | {value} | {goal} | {verdict} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100, help="Sandboxes created at once (default 100)")
    parser.add_argument("--serial", type=int, default=5, help="single sandboxes created one at a time (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="CPU sampling window (default 60)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the burst to be Ready")
    parser.add_argument("--kubeconfig", default=os.environ.get("SANDBOX_KUBECONFIG")
                        or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG)
    args = parser.parse_args(argv)

    print("$ " + shlex.join(["python", "bench/bench_density.py", *(sys.argv[1:] if argv is None else argv)]))
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core = client.CoreV1Api(api)
    version = client.VersionApi(api).get_code().git_version
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, "
          f"{len(core.list_node().items)} node(s), {os.cpu_count()} CPUs; Sandboxes with spec: {{}}")

    namespace = f"bench-density-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={
        "pod-security.kubernetes.io/enforce": "restricted"})))
    log_path = Path(tempfile.gettempdir()) / f"{namespace}-operator.log"
    proc, _health = start_operator(args.kubeconfig, namespace, log_path)
    bench = Bench(api, namespace)
    ok = True
    try:
        time.sleep(1.0)  # let the recorder's watches open before the first create
        serial = [f"single-{i}" for i in range(args.serial)]
        for name in serial:
            bench.create(name)
            bench.wait([name], 120)
            bench.delete_all()
        single = bench.to_ready(serial)

        baseline_cores, baseline_memory = busy_cores(args.idle_seconds)

        burst = [f"sbx-{i:03d}" for i in range(args.count)]
        with concurrent.futures.ThreadPoolExecutor(CLIENT_THREADS) as pool:
            list(pool.map(bench.create, burst))
        all_ready = bench.wait(burst, args.timeout)
        burst_seconds = max(bench.to_ready(burst), default=float("nan")) if all_ready else float("nan")
        ready_count = len(bench.to_ready(burst))

        time.sleep(10)  # let the start-up work settle before sampling the idle cost
        idle_cores, idle_memory = busy_cores(args.idle_seconds)
        operator_rss = status_kib(proc.pid, "VmRSS")
    finally:
        bench.recorder.stop()
        bench.delete_all()
        operator_peak = peak_rss_kib(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        core.delete_namespace(namespace)

    to_pod = bench.to_pod(burst)
    per_sandbox_cores = idle_cores - baseline_cores
    per_sandbox_memory_mb = (idle_memory - baseline_memory) / 1024 / max(1, ready_count)
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
         f"{operator_rss / 1024:.0f} MiB ({operator_peak / 1024:.0f} MiB)", "<= 150 MB",
         operator_peak / 1024 <= 150),
    ]
    print()
    print("| measure | measured | goal | met |")
    print("|---|---|---|---|")
    for measure, value, goal, met in figures:
        print(row(measure, value, goal, met))
        ok = ok and bool(met)
    if bench.recorder.failed:
        print(f"\n{len(bench.recorder.failed)} failed: " + "; ".join(
            f"{k}: {v}" for k, v in sorted(bench.recorder.failed.items())[:5]))
    print(f"\noperator log: {log_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

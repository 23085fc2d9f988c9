"""Sandbox creation latency and operator memory: create N Sandboxes at once and time them.

    python -m bench.bench_create [--count 50] [--kubeconfig PATH] [--concurrency 10]

Starts the operator from this checkout (``python -m sandbox_operator``, watching only a fresh namespace), then
creates ``--count`` Sandboxes from ``--concurrency`` client threads and measures, per Sandbox, from just before
its create request:

* create -> pod created: until the bench's own watch sees the pod (the operator's latency: watch event,
  kopf finalizer, NetworkPolicy, pod),
* create -> Ready: until the Sandbox's status says Ready (adds scheduling, container start, the readiness
  probe and the status write),

prints p50/p95/max of both and the operator's peak RSS (VmHWM from /proc), with the command line on top, then
deletes everything. Sandboxes are small (``--cpu``, ``--memory``) so that many fit on one node; nothing but the
cluster's API server is contacted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import tempfile
from pathlib import Path

from kubernetes import client
from tests.kit import Cluster, CreationTimes, default_kubeconfig, invocation, percentile, served_namespace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50, help="Sandboxes to create (default 50)")
    parser.add_argument("--concurrency", type=int, default=10, help="client threads creating them (default 10)")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    parser.add_argument("--cpu", default="20m", help="per Sandbox (requests = limits)")
    parser.add_argument("--memory", default="64Mi", help="per Sandbox")
    parser.add_argument("--ephemeral-storage", default="64Mi", help="per Sandbox")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for all to be Ready")
    args = parser.parse_args(argv)

    print(f"$ {invocation()}")
    cluster = Cluster.connect(args.kubeconfig or default_kubeconfig())
    core = client.CoreV1Api(cluster.api)
    version = client.VersionApi(cluster.api).get_code().git_version
    nodes = core.list_node().items
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, {len(nodes)} node(s), "
          f"{os.cpu_count()} CPUs here; {args.count} Sandboxes of cpu={args.cpu} memory={args.memory} "
          f"ephemeral-storage={args.ephemeral_storage}, {args.concurrency} client threads")

    names = [f"sbx-{i:03d}" for i in range(args.count)]
    spec = {"resources": {"cpu": args.cpu, "memory": args.memory, "ephemeralStorage": args.ephemeral_storage}}
    log_dir = Path(tempfile.gettempdir())
    with served_namespace(cluster, "bench-create", log_dir) as served:
        assert served.operator is not None
        times = CreationTimes(cluster.api, served.name)
        try:
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda name: times.create(name, spec), names))
            times.wait_settled(names, args.timeout)
        finally:
            times.stop()
            times.delete_all(timeout=120)
            rss_kib = served.operator.peak_rss_kib()  # the high-water mark over creation and deletion
        log_path = served.operator.log_path

    to_pod, to_ready = times.to_pod(names), times.to_ready(names)
    print()
    print("| measure | n | p50 | p95 | max |")
    print("|---|---:|---:|---:|---:|")
    for label, values in (("create -> pod created (operator)", to_pod), ("create -> Ready", to_ready)):
        if values:
            print(f"| {label} | {len(values)} | {percentile(values, 50):.2f} s | {percentile(values, 95):.2f} s "
                  f"| {max(values):.2f} s |")
        else:
            print(f"| {label} | 0 | - | - | - |")
    print(f"| operator peak RSS (VmHWM) | | {rss_kib / 1024:.1f} MiB | | |")
    if times.failed:
        print(f"\n{len(times.failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in
                                                              sorted(times.failed.items())[:5]))
    missing = args.count - len(to_ready)
    if missing:
        print(f"\n{missing} of {args.count} did not become Ready within {args.timeout:.0f} s "
              f"(operator log: {log_path})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Sandbox creation latency and operator memory: create N Sandboxes at once and time them.

    python bench/bench_create.py [--count 50] [--kubeconfig PATH] [--concurrency 10]

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
import contextlib
import datetime
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "operator"))

from kubernetes import client, config, watch  # noqa: E402
from kubernetes.client import ApiException  # noqa: E402

from sandbox_operator import constants  # noqa: E402

DEFAULT_KUBECONFIG = "/var/lib/sandbox-operator-cluster/admin.kubeconfig"


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * pct / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def status_kib(pid: int, field: str) -> int:
    """A size field of /proc/PID/status in KiB: ``VmRSS`` now, ``VmHWM`` the high-water mark."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def peak_rss_kib(pid: int) -> int:
    return status_kib(pid, "VmHWM")


class Recorder:
    """Watches pods and Sandboxes in the namespace and notes the first time each milestone is seen."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.pod_seen: dict[str, float] = {}
        self.ready_seen: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._pods, daemon=True),
                         threading.Thread(target=self._sandboxes, daemon=True)]
        for thread in self._threads:
            thread.start()

    def _loop(self, list_fn: Any, handle: Any, *args: Any, **kwargs: Any) -> None:
        while not self._stop.is_set():
            stream = watch.Watch()
            try:
                for event in stream.stream(list_fn, *args, timeout_seconds=5, **kwargs):
                    handle(event)
                    if self._stop.is_set():
                        break
            except ApiException:
                time.sleep(0.1)
            finally:
                stream.stop()

    def _pods(self) -> None:
        def handle(event: dict[str, Any]) -> None:
            labels = event["object"].metadata.labels or {}
            name = labels.get(constants.LABEL_SANDBOX)
            if name and name not in self.pod_seen:
                self.pod_seen[name] = time.monotonic()
        self._loop(self.core.list_namespaced_pod, handle, self.namespace, label_selector=constants.LABEL_SANDBOX)

    def _sandboxes(self) -> None:
        def handle(event: dict[str, Any]) -> None:
            obj = event["object"]
            name = obj["metadata"]["name"]
            status = obj.get("status") or {}
            if status.get("phase") == "Ready" and name not in self.ready_seen:
                self.ready_seen[name] = time.monotonic()
            elif status.get("phase") in ("Failed", "Expired"):
                self.failed[name] = f"{status.get('phase')}: {status.get('reason')} {status.get('message')}"
        self._loop(self.custom.list_namespaced_custom_object, handle, constants.GROUP, constants.VERSION,
                   self.namespace, constants.PLURAL)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)


def start_operator(kubeconfig: str, namespace: str, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    health = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_OPERATOR_")}
    env.update({"KUBECONFIG": kubeconfig, "SANDBOX_OPERATOR_NAMESPACES": namespace,
                "SANDBOX_OPERATOR_HEALTH_PORT": str(health), "SANDBOX_OPERATOR_METRICS_PORT": "0",
                "SANDBOX_OPERATOR_BIND_ADDRESS": "127.0.0.1", "PYTHONUNBUFFERED": "1"})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sandbox_operator"], cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the operator exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), \
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as response:
            if response.status == 200:
                return proc, health
        time.sleep(0.2)
    raise SystemExit("the operator did not become healthy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=50, help="Sandboxes to create (default 50)")
    parser.add_argument("--concurrency", type=int, default=10, help="client threads creating them (default 10)")
    parser.add_argument("--kubeconfig", default=os.environ.get("SANDBOX_KUBECONFIG")
                        or os.environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG)
    parser.add_argument("--cpu", default="20m", help="per Sandbox (requests = limits)")
    parser.add_argument("--memory", default="64Mi", help="per Sandbox")
    parser.add_argument("--ephemeral-storage", default="64Mi", help="per Sandbox")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for all to be Ready")
    args = parser.parse_args(argv)

    print("$ " + shlex.join(["python", "bench/bench_create.py", *(sys.argv[1:] if argv is None else argv)]))
    api = config.new_client_from_config(config_file=args.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    version = client.VersionApi(api).get_code().git_version
    nodes = core.list_node().items
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, {len(nodes)} node(s), "
          f"{os.cpu_count()} CPUs here; {args.count} Sandboxes of cpu={args.cpu} memory={args.memory} "
          f"ephemeral-storage={args.ephemeral_storage}, {args.concurrency} client threads")

    namespace = f"bench-create-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace, labels={
        "pod-security.kubernetes.io/enforce": "restricted"})))
    log_path = Path(tempfile.gettempdir()) / f"{namespace}-operator.log"
    proc, _health = start_operator(args.kubeconfig, namespace, log_path)
    recorder = Recorder(api, namespace)
    started: dict[str, float] = {}
    names = [f"sbx-{i:03d}" for i in range(args.count)]
    spec = {"resources": {"cpu": args.cpu, "memory": args.memory, "ephemeralStorage": args.ephemeral_storage}}

    def create(name: str) -> None:
        body = {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        started[name] = time.monotonic()
        custom.create_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace, constants.PLURAL,
                                               body)

    try:
        time.sleep(1.0)  # let the recorder's watches open before the first create
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(create, names))
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and len(recorder.ready_seen) + len(recorder.failed) < args.count:
            time.sleep(0.2)
    finally:
        recorder.stop()
        custom.delete_collection_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                          constants.PLURAL)
        cleanup_deadline = time.monotonic() + 120
        while time.monotonic() < cleanup_deadline and custom.list_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL)["items"]:
            time.sleep(0.5)
        rss_kib = peak_rss_kib(proc.pid)  # the high-water mark over creation and deletion
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        core.delete_namespace(namespace)

    to_pod = [recorder.pod_seen[n] - started[n] for n in names if n in recorder.pod_seen]
    to_ready = [recorder.ready_seen[n] - started[n] for n in names if n in recorder.ready_seen]
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
    if recorder.failed:
        print(f"\n{len(recorder.failed)} failed: " + "; ".join(f"{k}: {v}" for k, v in
                                                              sorted(recorder.failed.items())[:5]))
    missing = args.count - len(to_ready)
    if missing:
        print(f"\n{missing} of {args.count} did not become Ready within {args.timeout:.0f} s "
              f"(operator log: {log_path})")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

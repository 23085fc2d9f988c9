"""Exec round-trip latency and file throughput: the sandbox SDK next to plain ``kubectl exec`` (and
llm-sandbox's Kubernetes backend when it is installed), in the same run, on the same cluster and node.

    python -m bench.bench_exec --kubeconfig /var/lib/sandbox-operator-cluster/admin.kubeconfig \\
        --namespace bench --start-operator [--llm-sandbox-python /path/to/venv/bin/python]

Measured:

* exec round trip of ``true``, p50/p95 over ``--iterations`` runs: the SDK (through the in-image exec wrapper,
  as every SDK command is), ``kubectl exec`` straight to ``true``, and ``kubectl exec`` through the wrapper;
* write then read back a file of 1 MB and 50 MB (random bytes, checked byte-exact): the SDK file API, and
  ``kubectl exec -i ... cat > FILE`` / ``kubectl exec ... cat FILE``.

Nothing here talks to anything but the cluster's API server. Prints a table (``--output json`` for machines) under
the command line that produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.kit import invocation, kubectl_binary, percentile, running_operator

from sandbox_operator import constants
from sandbox_operator.sdk import Sandbox, SandboxManager

MB = 1_000_000


@dataclass
class Row:
    case: str
    client: str
    n: int
    p50_ms: float
    p95_ms: float
    mb_per_s: float | None = None
    note: str = ""


def timed(fn: Callable[[], object], n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def row(case: str, client: str, samples: list[float], size: int | None = None, note: str = "") -> Row:
    p50 = percentile(samples, 50)
    rate = (2 * size / MB) / p50 if size else None  # written and read back
    return Row(case, client, len(samples), p50 * 1000, percentile(samples, 95) * 1000, rate, note)


class Kubectl:
    def __init__(self, binary: str, kubeconfig: str, namespace: str, pod: str) -> None:
        self.base = [binary, "--kubeconfig", kubeconfig, "-n", namespace]
        self.pod = pod

    def exec(self, *argv: str, stdin: bytes | None = None) -> bytes:
        cmd = [*self.base, "exec", *(["-i"] if stdin is not None else []), self.pod, "-c",
               constants.CONTAINER_NAME, "--", *argv]
        out = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"kubectl exec failed ({out.returncode}): {out.stderr.decode(errors='replace')}")
        return out.stdout


def operator_for(namespace: str, kubeconfig: str, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """The operator from this checkout for ``namespace`` while the block runs (``--start-operator``), else none."""
    if not enabled:
        return contextlib.nullcontext()
    log_path = Path(tempfile.gettempdir()) / f"bench-operator-{namespace}.log"
    return running_operator(kubeconfig, namespace, log_path)


def bench_sdk_and_kubectl(sbx: Sandbox, kubectl: Kubectl, iterations: int, sizes_mb: list[int]) -> list[Row]:
    rows = [
        row("exec `true` round trip", "sandbox SDK", timed(lambda: sbx.run(["true"]).check(), iterations),
            note="pods/exec websocket + sandbox-exec wrapper"),
        row("exec `true` round trip", "kubectl exec", timed(lambda: kubectl.exec("true"), iterations),
            note="new kubectl process each time, no wrapper"),
        row("exec `true` round trip", "kubectl exec + wrapper",
            timed(lambda: kubectl.exec(constants.EXEC_WRAPPER, "--", "true"), iterations)),
    ]
    for size_mb in sizes_mb:
        size = size_mb * MB
        data = os.urandom(size)
        runs = 5 if size_mb <= 5 else 3

        def sdk_round_trip(data: bytes = data) -> None:
            sbx.files.write("/workspace/bench.bin", data)
            if sbx.files.read_bytes("/workspace/bench.bin") != data:
                raise AssertionError("SDK round trip changed the bytes")

        def kubectl_round_trip(data: bytes = data) -> None:
            kubectl.exec("sh", "-c", "cat > /workspace/bench-kubectl.bin", stdin=data)
            if kubectl.exec("cat", "/workspace/bench-kubectl.bin") != data:
                raise AssertionError("kubectl round trip changed the bytes")

        rows.append(row(f"write+read {size_mb} MB", "sandbox SDK", timed(sdk_round_trip, runs, 1), size))
        rows.append(row(f"write+read {size_mb} MB", "kubectl exec", timed(kubectl_round_trip, runs, 1), size))
    sbx.run("rm -f /workspace/bench.bin /workspace/bench-kubectl.bin")
    return rows


LLM_SANDBOX_SCRIPT = textwrap.dedent('''
    import json, os, statistics, sys, time
    from kubernetes import client, config
    from llm_sandbox import SandboxSession

    kubeconfig, namespace, image, iterations, sizes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), \\
        [int(s) for s in sys.argv[5].split(",") if s]
    config.load_kube_config(kubeconfig)
    name = "llm-sandbox-bench-" + os.urandom(3).hex()
    manifest = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "llm-sandbox-bench"}},
        "spec": {"containers": [{"name": "sandbox-container", "image": image, "imagePullPolicy": "Never",
                                 "command": ["/usr/local/bin/sandbox-init"],
                                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}],
                 "restartPolicy": "Never"},
    }
    out = []
    def pct(v, p):
        v = sorted(v); k = (len(v) - 1) * p / 100; lo = int(k); hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (k - lo)
    def timed(fn, n, warm=2):
        for _ in range(warm): fn()
        s = []
        for _ in range(n):
            t = time.perf_counter(); fn(); s.append(time.perf_counter() - t)
        return s
    with SandboxSession(backend="kubernetes", lang="python", image=image, kube_namespace=namespace,
                        pod_manifest=manifest, client=client.CoreV1Api(), workdir="/workspace",
                        skip_environment_setup=True) as session:
        s = timed(lambda: session.execute_command("true"), iterations)
        out.append({"case": "exec `true` round trip", "n": len(s), "p50": pct(s, 50), "p95": pct(s, 95)})
        for mb in sizes:
            data = os.urandom(mb * 1000000)
            src = f"/tmp/llm-bench-{mb}.bin"; back = src + ".back"
            open(src, "wb").write(data)
            def rt():
                session.copy_to_runtime(src, f"/workspace/llm-bench-{mb}.bin")
                session.copy_from_runtime(f"/workspace/llm-bench-{mb}.bin", back)
                if open(back, "rb").read() != data:
                    raise AssertionError("the bytes read back differ from those written")
            try:
                s = timed(rt, 5 if mb <= 5 else 3, 1)
                out.append({"case": f"write+read {mb} MB", "n": len(s), "p50": pct(s, 50), "p95": pct(s, 95),
                            "size": mb * 1000000})
            except Exception as exc:
                out.append({"case": f"write+read {mb} MB", "error": f"{type(exc).__name__}: {exc}"[:200]})
    print(json.dumps(out))
''')


def bench_llm_sandbox(python: str, kubeconfig: str, namespace: str, iterations: int,
                      sizes_mb: list[int]) -> tuple[list[Row], str | None]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(LLM_SANDBOX_SCRIPT)
    proc = subprocess.run([python, f.name, kubeconfig, namespace, constants.SANDBOX_IMAGE, str(iterations),
                           ",".join(map(str, sizes_mb))], capture_output=True, text=True, timeout=1800, check=False)
    Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        return [], (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]
    rows = []
    for item in json.loads(proc.stdout.strip().splitlines()[-1]):
        if "error" in item:
            rows.append(Row(item["case"], "llm-sandbox (k8s)", 0, float("nan"), float("nan"), None,
                            f"FAILED: {item['error']}"))
            continue
        samples_ms = (item["p50"] * 1000, item["p95"] * 1000)
        rate = (2 * item["size"] / MB) / item["p50"] if item.get("size") else None
        rows.append(Row(item["case"], "llm-sandbox (k8s)", item["n"], samples_ms[0], samples_ms[1], rate,
                        "pods/exec; files via tar"))
    return rows, None


def format_rows(rows: list[Row]) -> str:
    headers = ("case", "client", "n", "p50 ms", "p95 ms", "MB/s", "note")
    def ms(value: float, n: int) -> str:
        return "-" if n == 0 else f"{value:.1f}"

    table = [(r.case, r.client, str(r.n), ms(r.p50_ms, r.n), ms(r.p95_ms, r.n),
              "-" if r.mb_per_s is None else f"{r.mb_per_s:.1f}", r.note) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(t)).rstrip() for t in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), required=not os.environ.get("KUBECONFIG"))
    p.add_argument("--namespace", default="sandbox-bench")
    p.add_argument("--kubectl", help="kubectl binary (default: the cluster's, else PATH)")
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--sizes", default="1,50", help="file sizes in MB, comma-separated")
    p.add_argument("--sandbox", help="use this existing Ready sandbox instead of creating one")
    p.add_argument("--start-operator", action="store_true", help="run the operator from this checkout meanwhile")
    p.add_argument("--llm-sandbox-python", help="a python with llm-sandbox[k8s] installed, to compare with it")
    p.add_argument("--output", choices=("table", "json"), default="table")
    a = p.parse_args(argv)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    kubectl_bin = kubectl_binary(a.kubectl)
    subprocess.run([kubectl_bin, "--kubeconfig", a.kubeconfig, "create", "namespace", a.namespace],
                   capture_output=True, check=False)
    notes: list[str] = []
    with operator_for(a.namespace, a.kubeconfig, a.start_operator), \
            SandboxManager(a.namespace, kubeconfig=a.kubeconfig) as manager:
        created = None
        if a.sandbox:
            sbx = manager.get(a.sandbox)
        else:
            started = time.perf_counter()
            created = sbx = manager.create(f"bench-{uuid.uuid4().hex[:6]}", memory="1Gi",
                                           ephemeral_storage="2Gi", labels={"bench": "exec"})
            notes.append(f"sandbox create -> Ready: {time.perf_counter() - started:.2f} s")
        try:
            kubectl = Kubectl(kubectl_bin, a.kubeconfig, a.namespace, sbx.pod_name)
            rows = bench_sdk_and_kubectl(sbx, kubectl, a.iterations, sizes)
        finally:
            if created is not None:
                # Wait while the operator still runs: it removes its finalizer from the Sandbox.
                created.delete(wait=True, timeout=120)
    if a.llm_sandbox_python:
        llm_rows, error = bench_llm_sandbox(a.llm_sandbox_python, a.kubeconfig, a.namespace, a.iterations, sizes)
        rows += llm_rows
        if error:
            notes.append(f"llm-sandbox: {error}")
    else:
        notes.append("llm-sandbox: not run (pass --llm-sandbox-python)")
    rows.sort(key=lambda r: (r.case.startswith("write"), r.case, r.client))
    if a.output == "json":
        print(json.dumps({"command": invocation(), "rows": [asdict(r) for r in rows], "notes": notes}, indent=2))
    else:
        print(f"# {invocation()}")
        print(format_rows(rows))
        for note in notes:
            print(f"# {note}")
        print(f"# median of runs; MB/s counts the bytes written plus read back; p50 of {a.iterations} exec runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

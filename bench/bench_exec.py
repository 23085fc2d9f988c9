"""Commands and files through the sandbox SDK over its channel, the SDK forced to one exec per command, plain
``kubectl exec``, and llm-sandbox's Kubernetes backend: in one run, on one sandbox (llm-sandbox on a pod of its
own with the same image), next to the goals of the channel.

    python -m bench.bench_exec --kubeconfig /var/lib/sandbox-operator-cluster/admin.kubeconfig \\
        --namespace sandbox-bench --start-operator [--llm-sandbox-python /path/to/venv/bin/python]

Measured, per client:

* ``true``, p50 and p95 of ``--iterations`` runs;
* writing a file of 1 MB and reading it back (p50, byte-exact), and the same with 50 MB as MB/s (bytes written
  plus read back over the p50);
* commands per second from one client: ``--threads`` threads running ``true`` for ``--seconds`` (llm-sandbox: one
  thread, since its client patches the shared Kubernetes API client while it opens a stream);
* the first command after Ready: the SDK's right after ``create()`` returned (which starts the channel's agent while
  it hands over the handle), and a new client's first command on a Ready sandbox (which opens the channel).

Two more figures say what bounds the channel: one line echoed by ``cat`` through an open ``pods/exec`` stream (the
API server's and kubelet's round trip), and a Python process in the sandbox forking, executing and waiting for
``true`` (the agent's own work per command). llm-sandbox's pod runs in a namespace of its own, without Pod Security
``restricted``. Nothing here talks to anything but the cluster's API server. Prints a table (``--output json`` for
machines) under the command line that produced it.
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit import Cluster, default_kubeconfig, invocation, kubectl_binary, percentile, running_operator

from bench.peer import PEER_NAMESPACE_LABEL, run_peer
from sandbox_operator import constants
from sandbox_operator.sdk import Sandbox, SandboxManager
from sandbox_operator.sdk.channel import pod_exec_transport

MB = 1_000_000
CHANNEL, EXEC, KUBECTL, LLM = "SDK, channel", "SDK, exec per command", "kubectl exec", "llm-sandbox"
CLIENTS = (CHANNEL, EXEC, KUBECTL, LLM)
TRUE_P50, TRUE_P95, SMALL, LARGE, RATE, FIRST, FIRST_NEW = (
    "true_p50_ms", "true_p95_ms", "small_p50_ms", "large_mb_per_s", "commands_per_s", "first_after_ready_ms",
    "first_new_client_ms")
Metrics = dict[str, float | None]


@dataclass(frozen=True)
class Goal:
    metric: str
    label: str
    goal: str
    met: Callable[[float, Metrics], bool]  # (the channel's value, llm-sandbox's metrics) -> met


def goals(small_mb: int, large_mb: int) -> list[Goal]:
    def tenth_of_llm(value: float, llm: Metrics) -> bool:
        theirs = llm.get(TRUE_P50)
        return value <= 5 and (theirs is None or value <= 0.1 * theirs)

    return [
        Goal(TRUE_P50, "`true` p50 (ms)", "<= 5 and <= 0.1x llm-sandbox", tenth_of_llm),
        Goal(TRUE_P95, "`true` p95 (ms)", "<= 15", lambda v, _: v <= 15),
        Goal(SMALL, f"{small_mb} MB write+read p50 (ms)", "<= 15", lambda v, _: v <= 15),
        Goal(LARGE, f"{large_mb} MB write+read (MB/s)", ">= 200", lambda v, _: v >= 200),
        Goal(RATE, "commands per second, one client", ">= 300", lambda v, _: v >= 300),
        Goal(FIRST, "first command after Ready (ms)", "<= 150", lambda v, _: v <= 150),
        Goal(FIRST_NEW, "first command, new client (ms)", "", lambda v, _: True),
    ]


# Measuring ---------------------------------------------------------------------------------------------------------

def timed(call: Callable[[], object], n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def once(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def per_second(call: Callable[[], object], threads: int, seconds: float) -> float:
    """Calls completed per second by ``threads`` threads calling in a loop for ``seconds``."""
    done = [0] * threads
    failures: list[BaseException] = []
    stop = time.monotonic() + seconds

    def loop(slot: int) -> None:
        try:
            while time.monotonic() < stop:
                call()
                done[slot] += 1
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if failures:
        raise failures[0]
    return sum(done) / (time.monotonic() - started)


def round_trips(write: Callable[[bytes], object], read: Callable[[], bytes], size: int, runs: int) -> list[float]:
    data = os.urandom(size)

    def write_and_read_back() -> None:
        write(data)
        if read() != data:
            raise AssertionError(f"the {size} bytes read back differ from those written")

    return timed(write_and_read_back, runs, warmup=1)


def file_metrics(write: Callable[[bytes], object], read: Callable[[], bytes], small_mb: int,
                 large_mb: int) -> Metrics:
    small = round_trips(write, read, small_mb * MB, 10)
    large = round_trips(write, read, large_mb * MB, 3)
    return {SMALL: percentile(small, 50) * 1000, LARGE: 2 * large_mb / percentile(large, 50)}


def command_metrics(run_true: Callable[[], object], iterations: int, threads: int, seconds: float,
                    thread_safe: bool = True) -> Metrics:
    samples = timed(run_true, iterations)
    return {TRUE_P50: percentile(samples, 50) * 1000, TRUE_P95: percentile(samples, 95) * 1000,
            RATE: per_second(run_true, threads if thread_safe else 1, seconds)}


def bench_sdk(sbx: Sandbox, a: argparse.Namespace) -> Metrics:
    path = f"/workspace/bench-{sbx.manager.transport}.bin"
    metrics = command_metrics(lambda: sbx.run(["true"]).check(), a.iterations, a.threads, a.seconds)
    metrics |= file_metrics(lambda data: sbx.files.write(path, data), lambda: sbx.files.read_bytes(path),
                            a.small_mb, a.large_mb)
    sbx.files.remove(path)
    return metrics


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


def bench_kubectl(kubectl: Kubectl, a: argparse.Namespace) -> Metrics:
    path = "/workspace/bench-kubectl.bin"
    first = once(lambda: kubectl.exec("true"))
    metrics = command_metrics(lambda: kubectl.exec("true"), a.iterations, a.threads, a.seconds)
    metrics |= file_metrics(lambda data: kubectl.exec("sh", "-c", f"cat > {path}", stdin=data),
                            lambda: kubectl.exec("cat", path), a.small_mb, a.large_mb)
    kubectl.exec("rm", "-f", path)
    return metrics | {FIRST_NEW: first * 1000}


def floor_note(sbx: Sandbox, iterations: int) -> str:
    p50, p95 = stream_floor(sbx, iterations)
    return f"floor: 16 bytes echoed by cat through one open pods/exec stream: p50 {p50:.2f} ms, p95 {p95:.2f} ms"


def stream_floor(sbx: Sandbox, iterations: int) -> tuple[float, float]:
    """p50 and p95 (ms) of 16 bytes echoed by ``cat`` through one open pods/exec stream."""
    transport = pod_exec_transport(sbx.manager.api.api_client, sbx.namespace, sbx.pod_name,
                                   container=constants.CONTAINER_NAME, program="/bin/cat", sandbox=sbx.name)
    line = b"0123456789abcde\n"

    def echo() -> None:
        transport.write(line)
        got = b""
        while len(got) < len(line):
            data = transport.read(len(line) - len(got))
            if not data:
                raise RuntimeError(f"cat ended the stream: {transport.diagnostic()}")
            got += data

    try:
        samples = timed(echo, iterations, warmup=5)
    finally:
        transport.close()
    return percentile(samples, 50) * 1000, percentile(samples, 95) * 1000


SPAWN_TRUE = textwrap.dedent("""
    import json, os, time
    samples = []
    for _ in range(200):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/true", ["true"])
        os.waitpid(pid, 0)
        samples.append(time.perf_counter() - start)
    samples.sort()
    print(json.dumps([samples[100] * 1000, samples[190] * 1000]))
""")


# llm-sandbox, in an interpreter of its own --------------------------------------------------------------------------

LLM_SANDBOX_SCRIPT = textwrap.dedent('''
    from llm_sandbox import SandboxSession

    iterations, small_mb, large_mb, seconds = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
    out, errors = {}, {}
    with SandboxSession(backend="kubernetes", lang="python", image=image, kube_namespace=namespace,
                        pod_manifest=pod_manifest(), client=client.CoreV1Api(), workdir="/workspace",
                        skip_environment_setup=True) as session:
        t = time.perf_counter(); session.execute_command("true")
        out["first_after_ready_ms"] = (time.perf_counter() - t) * 1000
        s = timed(lambda: session.execute_command("true"), iterations)
        out["true_p50_ms"], out["true_p95_ms"] = pct(s, 50) * 1000, pct(s, 95) * 1000
        stop, count = time.monotonic() + seconds, 0
        start = time.monotonic()
        while time.monotonic() < stop:
            session.execute_command("true"); count += 1
        out["commands_per_s"] = count / (time.monotonic() - start)
        for mb, key, runs in ((small_mb, "small_p50_ms", 10), (large_mb, "large_mb_per_s", 3)):
            data = os.urandom(mb * 1000000)
            src = f"/tmp/llm-bench-{mb}.bin"; back = src + ".back"
            open(src, "wb").write(data)
            def rt():
                session.copy_to_runtime(src, f"/workspace/llm-bench-{mb}.bin")
                session.copy_from_runtime(f"/workspace/llm-bench-{mb}.bin", back)
                if open(back, "rb").read() != data:
                    raise AssertionError("the bytes read back differ from those written")
            try:
                p50 = pct(timed(rt, runs, 1), 50)
                out[key] = p50 * 1000 if key == "small_p50_ms" else 2 * mb / p50
            except Exception as exc:
                errors[key] = f"{type(exc).__name__}: {exc}"[:200]
    report(out, errors)
''')


def bench_llm_sandbox(python: str, kubeconfig: str, namespace: str, a: argparse.Namespace) -> tuple[Metrics, list[str]]:
    return run_peer(python, LLM_SANDBOX_SCRIPT, kubeconfig, namespace, str(a.iterations), str(a.small_mb),
                    str(a.large_mb), str(a.seconds))


# Output ---------------------------------------------------------------------------------------------------------------

def format_table(results: dict[str, Metrics], goal_list: list[Goal]) -> str:
    llm = results.get(LLM, {})
    headers = ("metric", "goal (SDK, channel)", *CLIENTS)
    rows = []
    for goal in goal_list:
        cells = []
        for client in CLIENTS:
            value = results.get(client, {}).get(goal.metric)
            if value is None:
                cells.append("-")
                continue
            cell = f"{value:.1f}" if value < 1000 else f"{value:.0f}"
            if client == CHANNEL and goal.goal:
                cell += "  met" if goal.met(value, llm) else "  MISSED"
            cells.append(cell)
        rows.append((goal.label, goal.goal or "-", *cells))
    return text_table(headers, rows)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned with spaces, a rule under the headers."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def kubectl_namespace(kubectl_bin: str, kubeconfig: str, namespace: str, *labels: str) -> None:
    base = [kubectl_bin, "--kubeconfig", kubeconfig]
    subprocess.run([*base, "create", "namespace", namespace], capture_output=True, check=False)
    if labels:
        subprocess.run([*base, "label", "namespace", namespace, "--overwrite", *labels], capture_output=True,
                       check=True)


@contextlib.contextmanager
def bench_sandbox(manager: SandboxManager, name: str | None, bench: str,
                  notes: list[str]) -> Iterator[tuple[Sandbox, bool]]:
    """The sandbox ``name`` (``--sandbox``), else a new one (its create -> Ready time in ``notes``), deleted at the
    end; and whether it was created here."""
    if name:
        yield manager.get(name), False
        return
    started = time.perf_counter()
    created = manager.create(f"bench-{uuid.uuid4().hex[:6]}", memory="1Gi", ephemeral_storage="2Gi",
                             labels={"bench": bench})
    notes.append(f"sandbox create -> Ready: {time.perf_counter() - started:.2f} s")
    try:
        yield created, True
    finally:
        # Wait while the operator still runs (the block is within it): it removes its finalizer from the Sandbox.
        created.delete(wait=True, timeout=120)


def operator_for(namespace: str, kubeconfig: str, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """The operator from this checkout for ``namespace`` while the block runs (``--start-operator``), else none."""
    if not enabled:
        return contextlib.nullcontext()
    log_path = Path(tempfile.gettempdir()) / f"bench-operator-{namespace}.log"
    return running_operator(kubeconfig, namespace, log_path)


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a benchmark on one sandbox next to llm-sandbox: the cluster, the sandbox, the operator, the peer,
    the output. ``--kubeconfig`` stays None when not given: :func:`default_kubeconfig` asks make, so ask it late."""
    p.add_argument("--kubeconfig", help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    p.add_argument("--namespace", default="sandbox-bench")
    p.add_argument("--kubectl", help="kubectl binary (default: the cluster's, else PATH)")
    p.add_argument("--sandbox", help="use this existing Ready sandbox instead of creating one")
    p.add_argument("--start-operator", action="store_true", help="run the operator from this checkout meanwhile")
    p.add_argument("--llm-sandbox-python", help="a python with llm-sandbox[k8s] installed, to compare with it")
    p.add_argument("--llm-sandbox-namespace", help="its namespace (default: NAMESPACE-llm, made without Pod "
                                                   "Security restricted)")
    p.add_argument("--output", choices=("table", "json"), default="table")


def prepare_cluster(a: argparse.Namespace) -> str:
    """Settles ``--kubeconfig`` (its default asks make) and makes the benchmark's namespace; the kubectl binary.
    With ``--start-operator`` it applies this checkout's CRDs first, as the operator expects (a new cluster has
    none)."""
    a.kubeconfig = a.kubeconfig or str(default_kubeconfig())
    if a.start_operator:
        Cluster.connect(Path(a.kubeconfig)).apply_crd()
    kubectl_bin = kubectl_binary(a.kubectl)
    kubectl_namespace(kubectl_bin, a.kubeconfig, a.namespace)
    return kubectl_bin


def peer_namespace(kubectl_bin: str, a: argparse.Namespace) -> str:
    """llm-sandbox's namespace (``--llm-sandbox-namespace``, else NAMESPACE-llm), made without Pod Security
    ``restricted``."""
    name: str = a.llm_sandbox_namespace or f"{a.namespace}-llm"
    kubectl_namespace(kubectl_bin, a.kubeconfig, name, PEER_NAMESPACE_LABEL)
    return name


def print_results(output: str, results: Mapping[str, Mapping[str, float | None]], notes: Sequence[str],
                  goals: Mapping[str, str], table: str, footer: str) -> None:
    """JSON for ``--output json``; else the command line, the table, then the notes and the footer as comments."""
    if output == "json":
        print(json.dumps({"command": invocation(), "results": results, "notes": list(notes), "goals": goals},
                         indent=2))
        return
    print(f"# {invocation()}")
    print(table)
    for note in [*notes, footer]:
        print(f"# {note}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--iterations", type=int, default=100, help="runs of `true` per client (default 100)")
    p.add_argument("--threads", type=int, default=8, help="threads for commands per second (default 8)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long to count commands per second (default 3)")
    p.add_argument("--small-mb", type=int, default=1, help="the small file, in MB (default 1)")
    p.add_argument("--large-mb", type=int, default=50, help="the large file, in MB (default 50)")
    a = p.parse_args(argv)
    kubectl_bin = prepare_cluster(a)
    results: dict[str, Metrics] = {}
    notes: list[str] = []
    with operator_for(a.namespace, a.kubeconfig, a.start_operator), \
            SandboxManager(a.namespace, kubeconfig=a.kubeconfig, transport="channel") as channel_manager, \
            SandboxManager(a.namespace, kubeconfig=a.kubeconfig, transport="exec") as exec_manager, \
            bench_sandbox(channel_manager, a.sandbox, "exec", notes) as (sbx, created):
        first_after_ready = once(lambda: sbx.run(["true"]).check()) * 1000 if created else None
        with SandboxManager(a.namespace, kubeconfig=a.kubeconfig, transport="channel") as fresh:
            newcomer = fresh.get(sbx.name)
            first_new = once(lambda: newcomer.run(["true"]).check()) * 1000
        results[CHANNEL] = bench_sdk(sbx, a) | {FIRST: first_after_ready, FIRST_NEW: first_new}
        by_exec = exec_manager.get(sbx.name)
        first_exec = once(lambda: by_exec.run(["true"]).check()) * 1000
        results[EXEC] = bench_sdk(by_exec, a) | {FIRST_NEW: first_exec}
        results[KUBECTL] = bench_kubectl(Kubectl(kubectl_bin, a.kubeconfig, a.namespace, sbx.pod_name), a)
        notes.append(floor_note(sbx, a.iterations))
        spawn = json.loads(sbx.run(["python3", "-c", SPAWN_TRUE], check=True).stdout)
        notes.append(f"in the sandbox: a Python process forks, executes and waits for /bin/true: p50 "
                     f"{spawn[0]:.2f} ms, p95 {spawn[1]:.2f} ms (the agent's own work per command, "
                     f"without its limits)")
    if a.llm_sandbox_python:
        results[LLM], llm_notes = bench_llm_sandbox(a.llm_sandbox_python, a.kubeconfig,
                                                    peer_namespace(kubectl_bin, a), a)
        notes += llm_notes
    else:
        notes.append("llm-sandbox: not run (pass --llm-sandbox-python)")
    goal_list = goals(a.small_mb, a.large_mb)
    print_results(a.output, results, notes, {g.metric: g.goal for g in goal_list if g.goal},
                  format_table(results, goal_list),
                  f"`true`: {a.iterations} runs per client; files: p50 of 10 ({a.small_mb} MB) and 3 ({a.large_mb} MB) "
                  f"round trips, MB/s counts the bytes written plus read back; commands per second: {a.threads} "
                  f"threads for {a.seconds:g} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

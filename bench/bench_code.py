"""Code cells (docs/code.md) through the SDK's code contexts next to llm-sandbox's interactive session, in one run:
the SDK on one sandbox, llm-sandbox on a pod of its own with the same image.

    python -m bench.bench_code --kubeconfig /var/lib/sandbox-operator-cluster/admin.kubeconfig \\
        --namespace sandbox-bench --start-operator \\
        [--llm-sandbox-python /path/to/venv/bin/python --llm-sandbox-ipython /path/to/ipython-target-dir]

Measured, per client:

* a trivial cell, ``x += 1``, in one context: p50 and p95 of ``--cells`` cells (the goal: p50 <= 15 ms);
* a fresh context's start and first cell, ``x = 0``: the SDK's p50 over ``--fresh-contexts`` new contexts (the
  agent starts an interpreter); llm-sandbox's session runtime start (uploading its runner, starting it, polling for
  its ready file) plus its first cell, once;
* a cell printing 1 MB on stdout, p50 of ``--big-runs``, the bytes counted on arrival;
* cells per second in a row: ``--burst`` trivial cells (llm-sandbox: ``--peer-burst``, its cells take far longer).

llm-sandbox's ``InteractiveSandboxSession`` runs on its Kubernetes backend as shipped, but for one step: its runtime
``pip install``s IPython in the sandbox, and no pod here reaches a package index. So IPython
(``--llm-sandbox-ipython``: a ``pip install --target`` directory, which ``make bench-code`` fills with the version
that install would take) is copied into its pod beforehand and put on ``PYTHONPATH``, and its runner runs on the
image's ``python3`` (no venv: ``skip_environment_setup``); that copy is timed apart and left out of its context start.
Its runner starts detached (``nohup ... &``), an orphan of the pod's PID 1, and the image's ``sandbox-init`` SIGKILLs
orphans every second (docs/image.md): its pod turns that sweep off (``SANDBOX_ORPHAN_SWEEP_SECONDS=0``).
Each of its cells is a command file copied in, a result file polled for (``test -f`` every 0.1 s, while its runner
polls for commands every 0.1 s), copied out and removed: several ``pods/exec`` round trips. Ours is one frame each
way on the sandbox's channel. Its pod runs in a namespace of its own, without Pod Security ``restricted``.

A floor is printed too: one line echoed by ``cat`` through an open ``pods/exec`` stream (the API server's and the
kubelet's round trip, which every cell pays). Nothing here talks to anything but the cluster's API server. Prints a
table (``--output json`` for machines) under the command line that produced it; exits 1 when the goal is missed.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from tests.kit import percentile

from bench.bench_exec import (
    add_common_flags,
    bench_sandbox,
    floor_note,
    once,
    operator_for,
    peer_namespace,
    prepare_cluster,
    print_results,
    text_table,
    timed,
)
from bench.peer import run_peer
from sandbox_operator.sdk import CodeResult, Sandbox, SandboxManager

MB = 1_000_000
SDK, LLM = "SDK, code context", "llm-sandbox, interactive session"
CLIENTS = (SDK, LLM)
CELL_P50, CELL_P95, FRESH, BIG, RATE = (
    "cell_p50_ms", "cell_p95_ms", "fresh_context_ms", "stdout_1mb_p50_ms", "cells_per_s")
TRIVIAL_CELL, FIRST_CELL, BIG_CELL = "x += 1", "x = 0", f"print('x' * {MB - 1})"
CELL_P50_GOAL_MS = 15.0
Metrics = dict[str, float | None]


@dataclass(frozen=True)
class Row:
    metric: str
    label: str
    goal: str = ""
    met: Callable[[float], bool] | None = None  # the SDK's value -> met


ROWS = (
    Row(CELL_P50, f"trivial cell `{TRIVIAL_CELL}` p50 (ms)", f"<= {CELL_P50_GOAL_MS:g}",
        lambda value: value <= CELL_P50_GOAL_MS),
    Row(CELL_P95, f"trivial cell `{TRIVIAL_CELL}` p95 (ms)"),
    Row(FRESH, "fresh context: start + first cell (ms)"),
    Row(BIG, "cell printing 1 MB to stdout, p50 (ms)"),
    Row(RATE, "cells per second, in a row"),
)


# Measuring ---------------------------------------------------------------------------------------------------------

def checked(result: CodeResult) -> CodeResult:
    if not result.ok:
        raise RuntimeError(f"a cell of the benchmark failed: {result.status}, {result.error}")
    return result


def bench_sdk(sbx: Sandbox, a: argparse.Namespace) -> Metrics:
    """The SDK's figures, on ``sbx``'s channel (already open: the sandbox ran a command)."""
    fresh = []
    for _ in range(a.fresh_contexts):
        with sbx.code_context() as fresh_context:
            fresh.append(once(lambda: checked(fresh_context.run(FIRST_CELL))))

    with sbx.code_context() as context:
        def big_cell() -> None:
            stdout = checked(context.run(BIG_CELL, max_output=2 * MB)).stdout_bytes
            if len(stdout) != MB:
                raise AssertionError(f"the 1 MB cell's stdout arrived as {len(stdout)} bytes")

        checked(context.run(FIRST_CELL))
        cells = timed(lambda: checked(context.run(TRIVIAL_CELL)), a.cells)
        big = timed(big_cell, a.big_runs, warmup=1)
        started = time.perf_counter()
        for _ in range(a.burst):
            checked(context.run(TRIVIAL_CELL))
        rate = a.burst / (time.perf_counter() - started)
        ran = 2 + a.cells + a.burst  # timed() runs two cells first
        kept = checked(context.run("x")).text
        if kept != str(ran):
            raise AssertionError(f"the context lost its state: x is {kept}, not {ran}")
    return {CELL_P50: percentile(cells, 50) * 1000, CELL_P95: percentile(cells, 95) * 1000,
            FRESH: percentile(fresh, 50) * 1000, BIG: percentile(big, 50) * 1000, RATE: rate}


# llm-sandbox's interactive session, in an interpreter of its own, after bench.peer's prelude -------------------------

LLM_SANDBOX_SCRIPT = textwrap.dedent('''
    import importlib.metadata, tarfile, tempfile
    from llm_sandbox.interactive import InteractiveSandboxSession

    ipython_site, cells, big_runs, burst = sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    TRIVIAL, FIRST, BIG, MB = sys.argv[8], sys.argv[9], sys.argv[10], int(sys.argv[11])
    SITE = "/workspace/.ipython-site"
    # Its runner is started detached (nohup ... &): an orphan of the image's PID 1, which SIGKILLs orphans every
    # second unless its sweep is off (as in the images llm-sandbox is made for, where nothing does).
    PEER_ENV = {"PYTHONPATH": SITE, "SANDBOX_ORPHAN_SWEEP_SECONDS": "0"}

    class PreinstalledIPython(InteractiveSandboxSession):
        """The session as shipped but for its one step that needs a package index, pip installing IPython in the
        sandbox: IPython is copied in (onto the pod's PYTHONPATH) and the image's python3 runs the runner."""

        def __init__(self, archive, **kwargs):
            super().__init__(**kwargs)
            self._python_exec_path = "python3"  # no venv: skip_environment_setup
            self.archive = archive
            self.seconds = {}

        def _bootstrap_runtime(self):
            started = time.perf_counter()
            super()._bootstrap_runtime()
            self.seconds["bootstrap"] = time.perf_counter() - started

        def _ensure_runtime_dependencies(self):
            started = time.perf_counter()
            self.copy_to_runtime(self.archive, SITE + ".tar.gz")
            unpacked = self.execute_command(f"python3 -m tarfile -e {SITE}.tar.gz {SITE} && rm -f {SITE}.tar.gz")
            if unpacked.exit_code:
                raise RuntimeError(f"unpacking IPython in the pod failed: {unpacked.stderr or unpacked.stdout}")
            self.seconds["ipython_copy"] = time.perf_counter() - started
            self.execute_commands([(f"mkdir -p {self._commands_dir}", None), (f"mkdir -p {self._results_dir}", None)])

    versions = {dist.metadata["Name"].lower(): dist.version
                for dist in importlib.metadata.distributions(path=[ipython_site])}
    out, errors = {}, {}
    notes = [f"llm-sandbox {importlib.metadata.version('llm-sandbox')}, IPython {versions.get('ipython', '?')}"]
    with tempfile.TemporaryDirectory() as scratch:
        archive = os.path.join(scratch, "ipython-site.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(ipython_site, arcname=".")
        with PreinstalledIPython(archive, backend="kubernetes", lang="python", image=image, kube_namespace=namespace,
                                 pod_manifest=pod_manifest(PEER_ENV), client=client.CoreV1Api(),
                                 workdir="/workspace", skip_environment_setup=True) as session:
            def run(code):
                result = session.run(code)
                if result.exit_code:
                    raise RuntimeError(f"the cell {code[:40]!r} failed: {(result.stderr or result.stdout)[-300:]}")
                return result
            def big_cell():
                stdout = run(BIG).stdout
                if len(stdout.encode()) != MB:
                    raise AssertionError(f"the 1 MB cell's stdout arrived as {len(stdout.encode())} bytes")

            started = time.perf_counter(); run(FIRST); first = time.perf_counter() - started
            out["fresh_context_ms"] = (session.seconds["bootstrap"] - session.seconds["ipython_copy"] + first) * 1000
            notes.append(f"copying IPython into its pod beforehand (not counted): "
                         f"{session.seconds['ipython_copy']:.1f} s, {os.path.getsize(archive) / 1e6:.1f} MB gzipped")
            s = timed(lambda: run(TRIVIAL), cells)
            out["cell_p50_ms"], out["cell_p95_ms"] = pct(s, 50) * 1000, pct(s, 95) * 1000
            try:
                out["stdout_1mb_p50_ms"] = pct(timed(big_cell, big_runs, 1), 50) * 1000
            except Exception as exc:
                errors["stdout_1mb_p50_ms"] = f"{type(exc).__name__}: {exc}"[:200]
            started = time.perf_counter()
            for _ in range(burst):
                run(TRIVIAL)
            out["cells_per_s"] = burst / (time.perf_counter() - started)
            kept = run("print(x)").stdout.strip()
            if kept != str(2 + cells + burst):
                errors["state"] = f"x is {kept}, not {2 + cells + burst}: its runner lost the session's state"
    report(out, errors, notes)
''')


LLM_SANDBOX_HOW = (
    "llm-sandbox: InteractiveSandboxSession on its Kubernetes backend, as shipped but for IPython, copied into its pod "
    "beforehand (its runtime pip-installs it; no pod here reaches a package index) and run by the image's python3, "
    "with the image's orphan sweep off in its pod (SANDBOX_ORPHAN_SWEEP_SECONDS=0: its runner runs detached, "
    "nohup ... &, and sandbox-init would SIGKILL it within a second); "
    "each of its cells copies a command file in (tar over exec, with mkdir, id and chown execs), polls for the result "
    "file (test -f every 0.1 s; its runner polls for commands every 0.1 s), copies it out and removes it")


def bench_llm_sandbox(python: str, ipython_site: str, kubeconfig: str, namespace: str,
                      a: argparse.Namespace) -> tuple[Metrics, list[str]]:
    return run_peer(python, LLM_SANDBOX_SCRIPT, kubeconfig, namespace, ipython_site, str(a.cells), str(a.big_runs),
                    str(a.peer_burst), TRIVIAL_CELL, FIRST_CELL, BIG_CELL, str(MB))


# Output ------------------------------------------------------------------------------------------------------------

def figure(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:.0f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    """Ours over the peer's, as ``0.05x``: below 1 the SDK takes less time (or, for a rate, does less)."""
    if ours is None or not theirs:
        return "-"
    quotient = ours / theirs
    return f"{quotient:.3f}x" if quotient < 0.1 else f"{quotient:.2f}x"


def format_table(results: Mapping[str, Mapping[str, float | None]], rows: Sequence[Row] = ROWS) -> str:
    headers = ("metric", "goal (SDK)", *CLIENTS, "SDK / llm-sandbox")
    lines = []
    for row in rows:
        ours, theirs = results.get(SDK, {}).get(row.metric), results.get(LLM, {}).get(row.metric)
        cell = figure(ours)
        if ours is not None and row.met is not None:
            cell += "  met" if row.met(ours) else "  MISSED"
        lines.append((row.label, row.goal or "-", cell, figure(theirs), ratio(ours, theirs)))
    return text_table(headers, lines)


def goal_met(results: Mapping[str, Mapping[str, float | None]], rows: Sequence[Row] = ROWS) -> bool:
    """Every goal the SDK has a figure for is met, and it has the goal's figures at all."""
    ours = results.get(SDK, {})
    return all((value := ours.get(row.metric)) is not None and row.met(value) for row in rows if row.met is not None)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    p.add_argument("--cells", type=int, default=200, help="timed trivial cells per client (default 200)")
    p.add_argument("--fresh-contexts", type=int, default=5, help="fresh SDK contexts timed (default 5)")
    p.add_argument("--big-runs", type=int, default=5, help="runs of the 1 MB cell per client (default 5)")
    p.add_argument("--burst", type=int, default=1000, help="cells in a row for the SDK's rate (default 1000)")
    p.add_argument("--peer-burst", type=int, default=100, help="cells in a row for llm-sandbox's rate (default 100)")
    p.add_argument("--llm-sandbox-ipython", help="a directory with IPython installed (pip install --target) for the "
                                                 "sandbox's python3, copied into llm-sandbox's pod")
    a = p.parse_args(argv)
    for flag in ("cells", "fresh_contexts", "big_runs", "burst", "peer_burst"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(a, flag)}")
    if bool(a.llm_sandbox_python) != bool(a.llm_sandbox_ipython):
        p.error("--llm-sandbox-python and --llm-sandbox-ipython go together: its interactive session needs IPython, "
                "which no pod here can download")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    kubectl_bin = prepare_cluster(a)
    results: dict[str, Metrics] = {}
    notes: list[str] = []
    with operator_for(a.namespace, a.kubeconfig, a.start_operator), \
            SandboxManager(a.namespace, kubeconfig=a.kubeconfig, transport="channel") as manager, \
            bench_sandbox(manager, a.sandbox, "code", notes) as (sbx, _):
        sbx.run(["true"]).check()  # the channel open before the timers start
        results[SDK] = bench_sdk(sbx, a)
        notes.append(floor_note(sbx, a.cells))
    if a.llm_sandbox_python:
        results[LLM], llm_notes = bench_llm_sandbox(a.llm_sandbox_python, a.llm_sandbox_ipython, a.kubeconfig,
                                                    peer_namespace(kubectl_bin, a), a)
        notes += [*llm_notes, LLM_SANDBOX_HOW]
    else:
        notes.append("llm-sandbox: not run (pass --llm-sandbox-python and --llm-sandbox-ipython)")
    print_results(a.output, results, notes, {row.metric: row.goal for row in ROWS if row.goal}, format_table(results),
                  f"cells: `{TRIVIAL_CELL}` {a.cells} times per client in one context, after two untimed; fresh "
                  f"context: `{FIRST_CELL}` in {a.fresh_contexts} new SDK contexts, llm-sandbox's one session; 1 MB: "
                  f"p50 of {a.big_runs}; rate: {a.burst} cells in a row (llm-sandbox: {a.peer_burst})")
    return 0 if goal_met(results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of the client while a sandbox floods it with output: ``run()``, ``stream()`` and ``sandboxctl exec``.

    python -m bench.bench_client_rss --kubeconfig /var/lib/sandbox-operator-cluster/admin.kubeconfig \\
        --namespace bench --start-operator [--bytes 2000M]

A sandbox is created (or ``--sandbox`` names a Ready one), then ``head -c BYTES /dev/zero`` runs in it three
times, each received by its own child process so that each peak RSS belongs to one path alone (read from
``os.wait4``, the kernel's ``ru_maxrss`` of exactly that child):

* ``run()`` keeps the head of the output up to its cap (16 MiB by default) and counts the rest;
* ``stream()`` passes every chunk through and keeps nothing;
* ``sandboxctl exec`` writes the output straight to its stdout (here ``/dev/null``).

The goal is a peak of at most 300 MB on every path, whatever the size of the output. This is a benchmark,
not a test: it needs a running cluster. Prints a table with the command line behind each row.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from tests.kit import REPO_ROOT, invocation, kubectl_binary

from bench.bench_exec import operator_for
from sandbox_operator.sdk import SandboxManager

GOAL_MB = 300
PATHS = ("run", "stream", "sandboxctl")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


@dataclass
class Row:
    path: str
    received_bytes: int | None
    peak_rss_mb: float
    seconds: float
    exit_code: int
    command: str

    @property
    def within_goal(self) -> bool:
        return self.exit_code == 0 and self.peak_rss_mb <= GOAL_MB


def parse_size(text: str) -> int:
    """``2000M`` -> bytes, with head's binary suffixes (K, M, G)."""
    text = text.strip().upper().removesuffix("B")
    unit = text[-1] if text and text[-1] in _UNITS else ""
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2000M, 2G)")
    return int(number) * _UNITS[unit]


def flood_command(size: int) -> list[str]:
    return ["head", "-c", str(size), "/dev/zero"]


def child_receive(a: argparse.Namespace) -> int:
    """In the child: receive the flood through one SDK path and print what arrived (JSON)."""
    command = flood_command(a.bytes)
    with SandboxManager(a.namespace, kubeconfig=a.kubeconfig) as manager:
        sandbox = manager.get(a.sandbox)
        if a.child == "run":
            result = sandbox.run(command, timeout=a.command_timeout)
            received = len(result.stdout_bytes) + result.stdout_dropped
        else:
            received = 0
            with sandbox.stream(command, timeout=a.command_timeout) as stream:
                for chunk in stream:
                    received += len(chunk.data)
                result = stream.wait()
    print(json.dumps({"received": received, "exit_code": result.exit_code}))
    return 0 if result.exit_code == 0 else 1


def measure(argv: list[str], path: str, shown: str, *, parse_output: bool) -> Row:
    """Runs one child, waits for it with wait4 and reads its own peak RSS (KiB on Linux)."""
    started = time.monotonic()
    stdout = subprocess.PIPE if parse_output else subprocess.DEVNULL
    proc = subprocess.Popen(argv, stdout=stdout, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")})
    out = proc.stdout.read() if proc.stdout is not None else b""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    received: int | None = None
    if parse_output and out.strip():
        received = int(json.loads(out.strip().splitlines()[-1])["received"])
    return Row(path, received, usage.ru_maxrss / 1024, seconds, proc.returncode, shown)


def bench(a: argparse.Namespace, sandbox: str) -> list[Row]:
    common = ["--kubeconfig", a.kubeconfig, "--namespace", a.namespace, "--sandbox", sandbox,
              "--bytes", str(a.bytes), "--command-timeout", str(a.command_timeout)]
    rows = []
    for path in a.paths:
        if path == "sandboxctl":
            argv = [sys.executable, "-m", "sandbox_operator.cli", "--kubeconfig", a.kubeconfig, "-n", a.namespace,
                    "exec", sandbox, "-t", str(a.command_timeout), "--", *flood_command(a.bytes)]
            shown = f"{shlex.join(['sandboxctl', *argv[3:]])} > /dev/null"
            rows.append(measure(argv, path, shown, parse_output=False))
        else:
            argv = [sys.executable, "-m", "bench.bench_client_rss", "--child", path, *common]
            shown = f"sandbox.{path}({flood_command(a.bytes)!r}, timeout={a.command_timeout})"
            rows.append(measure(argv, path, shown, parse_output=True))
    return rows


def format_rows(rows: list[Row], size: int) -> str:
    headers = ("path", "received MB", "peak RSS MB", f"<= {GOAL_MB} MB", "seconds", "command")
    table = [(r.path, "-" if r.received_bytes is None else f"{r.received_bytes / 1024**2:.0f}",
              f"{r.peak_rss_mb:.0f}", ("yes" if r.within_goal else "NO") + ("" if r.exit_code == 0 else
                                                                          f" (exit {r.exit_code})"),
              f"{r.seconds:.1f}", r.command) for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    lines = [f"# {invocation()}",
             f"# {size / 1024**2:.0f} MiB of output per path; peak RSS of the receiving process alone",
             "  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(widths[i]) for i, v in enumerate(t)).rstrip() for t in table]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                   help="kubeconfig of the cluster (default: $KUBECONFIG)")
    p.add_argument("--namespace", default="sandbox-bench")
    p.add_argument("--bytes", type=parse_size, default=parse_size("2000M"),
                   help="output size per path, head -c style (default 2000M)")
    p.add_argument("--paths", default=",".join(PATHS), type=lambda v: [x for x in v.split(",") if x],
                   help=f"which paths to measure (default {','.join(PATHS)})")
    p.add_argument("--command-timeout", type=int, default=900, metavar="SECONDS",
                   help="the sandbox's command limit and each flood's timeout (default 900)")
    p.add_argument("--sandbox", help="use this existing Ready sandbox instead of creating one")
    p.add_argument("--start-operator", action="store_true", help="run the operator from this checkout meanwhile")
    p.add_argument("--kubectl", help="kubectl binary, to create the namespace (default: the cluster's, else PATH)")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.add_argument("--child", choices=("run", "stream"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child_receive(a)
    if not a.kubeconfig:
        p.error("--kubeconfig is required (or set $KUBECONFIG)")
    unknown = set(a.paths) - set(PATHS)
    if unknown:
        p.error(f"unknown paths {sorted(unknown)}; choose from {', '.join(PATHS)}")
    subprocess.run([kubectl_binary(a.kubectl), "--kubeconfig", a.kubeconfig, "create", "namespace", a.namespace],
                   capture_output=True, check=False)
    with operator_for(a.namespace, a.kubeconfig, a.start_operator), \
            SandboxManager(a.namespace, kubeconfig=a.kubeconfig) as manager:
        created = None
        if a.sandbox:
            name = a.sandbox
        else:
            created = manager.create(f"bench-rss-{uuid.uuid4().hex[:6]}", memory="512Mi",
                                     command_timeout=a.command_timeout, labels={"bench": "client-rss"})
            name = created.name
        try:
            rows = bench(a, name)
        finally:
            if created is not None:
                created.delete(wait=True, timeout=120)
    if a.output == "json":
        print(json.dumps({"command": invocation(), "bytes": a.bytes, "goal_mb": GOAL_MB,
                          "rows": [{**asdict(r), "within_goal": r.within_goal} for r in rows]}, indent=2))
    else:
        print(format_rows(rows, a.bytes))
    return 0 if all(r.within_goal for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The operator from this checkout as a local process (``python -m sandbox_operator``), watching one namespace.

:func:`start_operator` returns only once the operator's ``/healthz`` answers, which kopf serves after its
start-up handlers ran: from then on a Sandbox created in the namespace is handled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.kit.net import free_port, http_get
from tests.kit.repo import REPO_ROOT
from tests.kit.stats import proc_status_kib
from tests.kit.wait import wait_until

SETTINGS_PREFIX = "SANDBOX_OPERATOR_"
HEALTHY_WITHIN = 60.0
STOP_WITHIN = 30.0
LOG_TAIL = 4000


@dataclass
class OperatorProcess:
    """A running operator process, its log file and its local ports."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    health_port: int
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        """Raises with the log's tail when the process has exited."""
        if not self.running:
            raise AssertionError(f"the operator exited ({self.proc.returncode}); {self.log_path}:\n"
                                 f"{self.log()[-LOG_TAIL:]}")

    def healthy(self) -> bool:
        self.check_running()
        return http_get(self.health_port, "/healthz")[0] == 200

    def metrics(self) -> tuple[int, str]:
        return http_get(self.metrics_port, "/metrics")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            self.check_running()
            return text in self.log()
        wait_until(seen, timeout, message=f"{text!r} in the operator's log")

    def peak_rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def kill(self) -> None:
        """SIGKILL: no clean-up, as a crash or an OOM kill would do."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=STOP_WITHIN)

    def stop(self) -> None:
        """SIGTERM (kopf's graceful shutdown), SIGKILL if it is not gone within 30 s."""
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a process stopped at a failpoint handles SIGTERM only then
            try:
                self.proc.wait(timeout=STOP_WITHIN)
            except subprocess.TimeoutExpired:
                self.kill()


def operator_environment(kubeconfig: Path | str, namespace: str, health_port: int, metrics_port: int,
                         images: Sequence[str] = (), **settings: str) -> dict[str, str]:
    """The process environment: this machine's, minus any SANDBOX_OPERATOR_* of the caller's (the test decides
    every setting), this checkout's package first on the path, and ``settings`` by their lower-case names."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(SETTINGS_PREFIX)}
    env.update({
        "KUBECONFIG": str(kubeconfig),
        "PYTHONPATH": str(REPO_ROOT / "operator"),
        "PYTHONUNBUFFERED": "1",
        f"{SETTINGS_PREFIX}NAMESPACES": namespace,
        f"{SETTINGS_PREFIX}HEALTH_PORT": str(health_port),
        f"{SETTINGS_PREFIX}METRICS_PORT": str(metrics_port),
        f"{SETTINGS_PREFIX}BIND_ADDRESS": "127.0.0.1",
        f"{SETTINGS_PREFIX}LOG_FORMAT": "full",
    })
    if images:
        env[f"{SETTINGS_PREFIX}ALLOWED_IMAGES"] = ",".join(images)
    env.update({f"{SETTINGS_PREFIX}{key.upper()}": value for key, value in settings.items()})
    return env


def start_operator(kubeconfig: Path | str, namespace: str, log_path: Path, *, images: Sequence[str] = (),
                   **settings: str) -> OperatorProcess:
    """Starts the operator watching ``namespace`` (``settings``: operator settings by name, such as
    ``gc_interval_seconds="2"``) and returns once it is healthy; raises with its log if it exits first."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    health_port, metrics_port = free_port(), free_port()
    env = operator_environment(kubeconfig, namespace, health_port, metrics_port, images, **settings)
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sandbox_operator"], cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    operator = OperatorProcess(proc, log_path, health_port, metrics_port)
    try:
        wait_until(operator.healthy, HEALTHY_WITHIN, message=f"the operator's /healthz (log: {log_path})")
    except BaseException:
        operator.stop()
        raise
    return operator


@contextlib.contextmanager
def running_operator(kubeconfig: Path | str, namespace: str, log_path: Path, *, images: Sequence[str] = (),
                     **settings: str) -> Iterator[OperatorProcess]:
    """:func:`start_operator`, stopped on leaving the block."""
    operator = start_operator(kubeconfig, namespace, log_path, images=images, **settings)
    try:
        yield operator
    finally:
        operator.stop()

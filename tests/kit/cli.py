"""``sandboxctl`` from this checkout, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.kit.repo import REPO_ROOT


class Sandboxctl:
    """Runs ``python -m sandbox_operator.cli`` (this checkout's) against one cluster and namespace."""

    def __init__(self, kubeconfig: Path | str, namespace: str) -> None:
        self.base = [sys.executable, "-m", "sandbox_operator.cli", "--kubeconfig", str(kubeconfig), "-n", namespace]
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "operator")}

    def __call__(self, *args: str, input: bytes | None = None, timeout: float = 240,
                 check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Runs ``sandboxctl ARGS``; with ``check`` a non-zero exit raises with its stderr."""
        out = subprocess.run([*self.base, *args], input=input, capture_output=True, timeout=timeout,
                             env=self.env, check=False)
        if check and out.returncode != 0:
            raise AssertionError(f"sandboxctl {' '.join(args)} exited {out.returncode}: "
                                 f"{out.stderr.decode(errors='replace')}")
        return out

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        """``sandboxctl ARGS`` in the background, stdout and stderr piped."""
        return subprocess.Popen([*self.base, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=self.env)

"""Where the checkout is, and the values its Makefile and hack/lib.sh define (one source for paths and versions)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def make_var(target: str) -> str:
    """The last line ``make -s TARGET`` prints: the Makefile's print targets (``kubeconfig``, ``bin-dir``)."""
    out = subprocess.run(["make", "-s", "--no-print-directory", target], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def hack_vars(*names: str) -> dict[str, str]:
    """Variables of hack/lib.sh, as bash sees them after sourcing it (nothing is built or started)."""
    script = "source hack/lib.sh; " + "; ".join(f'printf "%s\\0" "${{{name}}}"' for name in names)
    out = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return dict(zip(names, out.decode().split("\0")[:-1], strict=True))


def hack_var(name: str) -> str:
    return hack_vars(name)[name]


def invocation() -> str:
    """How this program was run, as a command to paste: ``python -m MODULE ARGS`` (or ``python SCRIPT ARGS``)."""
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    program = ["-m", spec.name] if spec is not None else [sys.argv[0]]
    return shlex.join(["python", *program, *sys.argv[1:]])

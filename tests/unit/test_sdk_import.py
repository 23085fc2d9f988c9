"""Importing the package must not start, load or need the operator, kopf or a cluster."""

from __future__ import annotations

import subprocess
import sys

import sandbox_operator


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={"KUBECONFIG": "/nonexistent/kubeconfig", "PATH": "/usr/bin:/bin"})
    return out.stdout.strip()


def test_import_loads_nothing_heavy() -> None:
    code = ("import sys, sandbox_operator; "
            "print(sorted(m for m in ('kopf', 'kubernetes', 'sandbox_operator.sdk', 'sandbox_operator.handlers') "
            "if m in sys.modules))")
    assert run(code) == "[]"


def test_names_resolve_lazily_without_kopf_or_cluster() -> None:
    code = ("import sys; from sandbox_operator import SandboxManager, Sandbox, CommandTimeout, SandboxNotFound, "
            "AsyncSandboxManager; print(SandboxManager.__module__, 'kopf' in sys.modules)")
    assert run(code) == "sandbox_operator.sdk.manager False"


def test_public_names() -> None:
    for name in sandbox_operator.__all__:
        assert getattr(sandbox_operator, name) is not None
    assert "SandboxManager" in dir(sandbox_operator)


def test_unknown_name() -> None:
    try:
        sandbox_operator.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_manager_without_config_says_why() -> None:
    code = ("from sandbox_operator import SandboxManager, SandboxError\n"
            "try:\n    SandboxManager()\nexcept SandboxError as e:\n    print(type(e).__name__, e)")
    out = run(code)
    assert out.startswith("ConfigError") and "/nonexistent/kubeconfig" in out

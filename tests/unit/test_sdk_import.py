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


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_one_name_per_action() -> None:
    """The object API has no second name for anything (no exec for run, no destroy for delete, no connect for
    get, no files.delete for remove); the session methods are the manager's only other names."""
    from sandbox_operator.sdk import Files, Sandbox, SandboxManager
    from sandbox_operator.sdk.aio import AsyncFiles, AsyncSandbox, AsyncSandboxManager
    from sandbox_operator.sdk.sessions import AsyncSessionApi, SessionApi

    assert public(Sandbox) == {
        "code_context", "delete", "events", "health", "is_ready", "obj", "phase", "pod_name", "refresh", "run",
        "run_code", "spec", "start", "status", "stream", "subscribe", "touch", "wait_ready"}
    assert public(Files) == {"exists", "list", "mkdir", "read_bytes", "read_text", "remove", "stat", "upload",
                             "download", "write"}
    sessions = public(SessionApi)
    assert sessions == {"create_session", "destroy_session", "list_sessions", "execute_command", "read_file",
                        "write_file", "delete_file", "list_files", "get_health"}
    assert public(SandboxManager) - sessions == {
        "close", "create", "delete", "events", "get", "get_pool", "list", "pools", "subscribe", "wait_deleted",
        "wait_ready"}
    assert public(AsyncSandbox) - {"name", "namespace", "phase"} <= public(Sandbox)
    assert public(AsyncFiles) - {"sync"} <= public(Files)
    assert public(AsyncSandboxManager) - public(AsyncSessionApi) - {"namespace"} <= public(SandboxManager)

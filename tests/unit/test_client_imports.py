"""The client (SDK and sandboxctl) runs without the operator's dependencies, which are the `operator` extra.

Each test runs a fresh interpreter in which importing kopf, prometheus_client or pydantic_settings fails, as in a
plain `pip install sandbox-operator`. tests/e2e/test_client_install.py proves the same with a real install.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

OPERATOR_ONLY = ("kopf", "prometheus_client", "pydantic_settings")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc
    import sys

    class OperatorOnly(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.partition(".")[0] in {OPERATOR_ONLY!r}:
                raise ImportError(f"No module named {{name!r}} (blocked: not in the client install)", name=name)
            return None

    sys.meta_path.insert(0, OperatorOnly())
""")


def run_without_operator_deps(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env={"KUBECONFIG": "/nonexistent/kubeconfig", "PATH": "/usr/bin:/bin"})


def test_the_blocker_blocks() -> None:
    result = run_without_operator_deps("import sandbox_operator.settings")
    assert result.returncode != 0 and "pydantic_settings" in result.stderr and "blocked" in result.stderr


def test_every_client_module_and_name_imports_without_operator_deps() -> None:
    result = run_without_operator_deps("""
        import pkgutil
        import sandbox_operator
        import sandbox_operator.cli
        import sandbox_operator.registry
        import sandbox_operator.sdk

        modules = [m.name for m in pkgutil.walk_packages(sandbox_operator.sdk.__path__, "sandbox_operator.sdk.")]
        for name in modules:
            __import__(name)
        for name in sandbox_operator.__all__:
            getattr(sandbox_operator, name)
        from sandbox_operator import SandboxManager, SandboxError
        try:
            SandboxManager()
        except SandboxError as error:
            print(type(error).__name__)
        print(len(modules), sorted(m for m in sys.modules if m.partition(".")[0] in {"kopf", "prometheus_client",
                                                                                      "pydantic_settings"}))
    """)
    assert result.returncode == 0, result.stderr
    error_name, counts = result.stdout.splitlines()
    assert error_name == "ConfigError"  # the SDK works: it reports the missing kubeconfig
    count, loaded = counts.split(" ", 1)
    assert int(count) >= 5 and loaded == "[]"


def test_sandboxctl_help_runs_without_operator_deps() -> None:
    result = run_without_operator_deps("""
        from sandbox_operator.cli import main
        for argv in (["--help"], ["create", "--help"], ["exec", "--help"]):
            try:
                main(argv)
            except SystemExit as exit:
                assert exit.code == 0, (argv, exit.code)
            else:
                raise AssertionError(f"{argv}: help did not exit")
    """)
    assert result.returncode == 0, result.stderr
    assert "usage: sandboxctl" in result.stdout and "create" in result.stdout


def test_the_operator_command_says_which_extra_it_needs() -> None:
    result = run_without_operator_deps("""
        import runpy
        runpy.run_module("sandbox_operator", run_name="__main__")
    """)
    assert result.returncode == 2, result.stderr
    assert "sandbox-operator[operator]" in result.stderr and "Traceback" not in result.stderr

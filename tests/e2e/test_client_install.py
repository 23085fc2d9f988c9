"""A plain `pip install sandbox-operator` into a fresh virtual environment is the client only: the SDK and
sandboxctl work, and none of the operator's dependencies (the `operator` extra) is installed.

Needs no cluster, but pip needs the package index as this machine configures it (its own settings and
environment are passed through untouched). The wheels the operator image build caches are offered as extra
find-links, so a warm machine downloads little.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.kit.repo import REPO_ROOT, hack_var

# (aiohttp is not among them: the kubernetes client itself requires it.)
OPERATOR_ONLY = ("kopf", "prometheus_client", "pydantic_settings")
CLIENT_REQUIREMENTS = {"kubernetes", "pydantic", "pyyaml"}
INSTALL_TIMEOUT = 900


def copy_sources(destination: Path) -> Path:
    """The files a source install reads, away from the checkout (pip would otherwise build inside it)."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO_ROOT / name).exists():
            shutil.copy2(REPO_ROOT / name, destination / name)
    shutil.copytree(REPO_ROOT / "operator" / "sandbox_operator", destination / "operator" / "sandbox_operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return destination


def pip_environment() -> dict[str, str]:
    """This machine's environment (its pip configuration included), with the cached wheels as find-links too."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    cached = sorted(glob.glob(f"{hack_var('CACHE_ROOT')}/wheels/operator-deps-*"))
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [env.get("PIP_FIND_LINKS", ""), *cached]))
    return env


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("client-install")
    source = root / "source"
    source.mkdir()
    copy_sources(source)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                             str(source)], capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                            env=pip_environment(), cwd=root)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return venv


def run_in(venv: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    """A command of the venv, away from the checkout and without a cluster configuration."""
    command = [str(venv / "bin" / "python"), "-c", textwrap.dedent(code)] if code is not None else list(args)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "KUBECONFIG": "/nonexistent/kubeconfig", "HOME": str(venv)}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=venv)


def test_plain_install_has_no_operator_dependencies(client_venv: Path) -> None:
    result = run_in(client_venv, code=f"""
        import importlib.metadata, importlib.util, re
        print([name for name in {OPERATOR_ONLY!r} if importlib.util.find_spec(name) is not None])
        base = [r for r in importlib.metadata.requires("sandbox-operator") if "extra ==" not in r]
        print(sorted(re.split(r"[<>=!~; \\[]", r, maxsplit=1)[0].lower() for r in base))
    """)
    assert result.returncode == 0, result.stderr
    present, requirements = result.stdout.splitlines()
    assert present == "[]", f"operator dependencies installed by a plain install: {present}"
    assert requirements == repr(sorted(CLIENT_REQUIREMENTS))


def test_the_example_imports_work_from_the_installed_package(client_venv: Path) -> None:
    result = run_in(client_venv, code="""
        import sandbox_operator
        from sandbox_operator import SandboxManager, SandboxError, Sandbox, AsyncSandboxManager
        print(sandbox_operator.__file__)
        try:
            SandboxManager()
        except SandboxError as error:
            print(type(error).__name__)
    """)
    assert result.returncode == 0, result.stderr
    location, error_name = result.stdout.splitlines()
    assert location.startswith(str(client_venv)), f"imported from {location}, not the fresh install"
    assert error_name == "ConfigError"  # the SDK loaded the Kubernetes client and looked for a configuration


def test_sandboxctl_help_runs(client_venv: Path) -> None:
    result = run_in(client_venv, str(client_venv / "bin" / "sandboxctl"), "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: sandboxctl" in result.stdout


def test_the_operator_command_names_the_extra(client_venv: Path) -> None:
    result = run_in(client_venv, str(client_venv / "bin" / "sandbox-operator"))
    assert result.returncode == 2
    assert "sandbox-operator[operator]" in result.stderr and "Traceback" not in result.stderr

"""The image sources agree with the shared contract and follow the Dockerfile rules (issue 4, acceptance 4)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from sandbox_operator import constants

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES = REPO_ROOT / "images"
SANDBOX_DOCKERFILE = IMAGES / "sandbox" / "Dockerfile"
BIN = IMAGES / "sandbox" / "bin"


def lib_sh(*names: str) -> dict[str, str]:
    """Variables of hack/lib.sh, as bash sees them."""
    script = "source hack/lib.sh; " + "; ".join(f'printf "%s\\0" "${{{n}}}"' for n in names)
    out = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    return dict(zip(names, out.decode().split("\0")[:-1], strict=True))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_image_names_match_the_shared_constants() -> None:
    v = lib_sh("SANDBOX_IMAGE", "PAUSE_IMAGE", "BASE_IMAGE", "PAUSE_VERSION", "BASE_IMAGE_VERSION")
    assert v["SANDBOX_IMAGE"] == constants.SANDBOX_IMAGE
    assert v["PAUSE_IMAGE"] == f"localhost/sandbox-operator/pause:{v['PAUSE_VERSION']}"
    assert v["BASE_IMAGE"] == f"localhost/sandbox-operator/base:{v['BASE_IMAGE_VERSION']}"
    for ref in v["SANDBOX_IMAGE"], v["PAUSE_IMAGE"], v["BASE_IMAGE"]:
        assert re.fullmatch(r"localhost/[a-z0-9/-]+:[A-Za-z0-9._-]+", ref)
        assert not ref.endswith(":latest")


def test_tools_in_the_image_are_the_constants_paths() -> None:
    tools = {p.name for p in BIN.iterdir()}
    for path in (constants.EXEC_WRAPPER, constants.FILES_TOOL, constants.READY_PROGRAM):
        assert path.startswith("/usr/local/bin/")
        assert Path(path).name in tools
    copies = [args for kw, args in instructions(SANDBOX_DOCKERFILE) if kw == "COPY"]
    assert any(args.endswith(f" {constants.INIT_PROGRAM}") and "--from=pause" in args for args in copies)
    assert any(args.endswith(" bin/ /usr/local/bin/") and "--chmod=0755" in args for args in copies)
    for tool in BIN.iterdir():
        assert tool.stat().st_mode & 0o755 == 0o755, f"{tool} must be executable"


def test_tools_read_the_shared_environment_names() -> None:
    exec_source = (BIN / "sandbox-exec").read_text()
    for name in (constants.ENV_PIDS_LIMIT, constants.ENV_COMMAND_TIMEOUT, constants.ENV_FILE_SIZE_LIMIT):
        assert f'"{name}"' in exec_source
    files_source = (BIN / "sandbox-files").read_text()
    assert f'DEFAULT_ROOTS = ("{constants.WORKSPACE_DIR}", "{constants.TMP_DIR}")' in files_source


def test_dockerfile_hygiene() -> None:
    text = SANDBOX_DOCKERFILE.read_text()
    steps = instructions(SANDBOX_DOCKERFILE)
    assert "latest" not in text.lower()
    args = dict(a.split("=", 1) for kw, a in steps if kw == "ARG" and "=" in a)
    # every base, after build-argument defaults are applied, is pinned by tag (or digest)
    for kw, rest in steps:
        if kw == "FROM":
            image = rest.split()[0]
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            assert re.search(r":[A-Za-z0-9._-]+$|@sha256:[0-9a-f]{64}$", image), image
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"
    users = [rest for kw, rest in steps if kw == "USER"]
    assert users == [f"{constants.SANDBOX_UID}:{constants.SANDBOX_GID}"]  # numeric, and the last word
    assert [kw for kw, _ in steps][-2:] == ["USER", "ENTRYPOINT"]
    assert not any(kw == "ADD" for kw, _ in steps)
    assert f'"{constants.INIT_PROGRAM}"' in dict(steps)["ENTRYPOINT"]
    assert ("WORKDIR", constants.WORKSPACE_DIR) in steps
    # no setuid/setgid left, package lists removed
    runs = [rest for kw, rest in steps if kw == "RUN"]
    assert any("-perm /6000" in r and "chmod ug-s" in r for r in runs)
    assert any("rm -rf /var/lib/apt/lists/*" in r for r in runs)


def test_pause_dockerfile_is_a_scratch_image_running_unprivileged() -> None:
    steps = instructions(IMAGES / "pause" / "Dockerfile")
    assert steps[0] == ("FROM", "scratch")
    assert ("USER", "65535:65535") in steps


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")
def test_pause_exits_cleanly_on_sigterm_and_sigint(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    subprocess.run(["gcc", "-Os", "-Wall", "-Wextra", "-Werror", '-DVERSION="test"', "-o", str(binary),
                    str(IMAGES / "pause" / "pause.c")], check=True)
    assert subprocess.run([str(binary), "--version"], capture_output=True, check=True).stdout.startswith(b"pause")
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen([str(binary)])
        time.sleep(0.1)
        assert proc.poll() is None
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0


@pytest.mark.skipif(not (REPO_ROOT / ".venv" / "bin" / "ruff").exists(), reason="no ruff in .venv")
def test_python_tools_pass_ruff() -> None:
    """The tools have no .py suffix (they are installed as commands), so `ruff check .` skips them."""
    result = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "ruff"), "check", "--no-cache",
                             str(BIN / "sandbox-exec"), str(BIN / "sandbox-files")],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck")
def test_shell_scripts_pass_shellcheck() -> None:
    scripts = ["hack/build-images.sh", "hack/image-lib.sh", "images/base/mkrootfs.sh",
               "images/sandbox/bin/sandbox-ready"]
    result = subprocess.run(["shellcheck", "-x", *scripts], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout


def test_build_script_help_lists_the_entry_points() -> None:
    result = subprocess.run(["bash", "hack/build-images.sh", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0
    for word in ("build", "import", "size", "--force", "pause", "base", "sandbox"):
        assert word in result.stderr

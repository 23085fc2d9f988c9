"""The image sources agree with the shared contract and follow the Dockerfile rules."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from sandbox_operator import constants
from tests.kit import REPO_ROOT, consistently, hack_vars, wait_until
from tests.kit.dockerfile import instructions

IMAGES = REPO_ROOT / "images"
SANDBOX_DOCKERFILE = IMAGES / "sandbox" / "Dockerfile"
BIN = IMAGES / "sandbox" / "bin"
SANDBOX_INIT_SOURCE = IMAGES / "sandbox" / "init" / "sandbox-init.c"
SANDBOX_PYTHON = "/usr/local/libexec/sandbox-python"


def test_image_names_match_the_shared_constants() -> None:
    v = hack_vars("SANDBOX_IMAGE", "SANDBOX_DATA_IMAGE", "PAUSE_IMAGE", "BASE_IMAGE", "PAUSE_VERSION",
                  "BASE_IMAGE_VERSION")
    assert v["SANDBOX_IMAGE"] == constants.SANDBOX_IMAGE
    assert v["SANDBOX_DATA_IMAGE"] == constants.SANDBOX_DATA_IMAGE
    assert v["PAUSE_IMAGE"] == f"localhost/sandbox-operator/pause:{v['PAUSE_VERSION']}"
    assert v["BASE_IMAGE"] == f"localhost/sandbox-operator/base:{v['BASE_IMAGE_VERSION']}"
    for ref in v["SANDBOX_IMAGE"], v["SANDBOX_DATA_IMAGE"], v["PAUSE_IMAGE"], v["BASE_IMAGE"]:
        assert re.fullmatch(r"localhost/[a-z0-9/-]+:[A-Za-z0-9._-]+", ref)
        assert not ref.endswith(":latest")


def test_tools_in_the_image_are_the_constants_paths() -> None:
    tools = {p.name for p in BIN.iterdir()}
    for path in (constants.EXEC_WRAPPER, constants.FILES_TOOL, constants.READY_PROGRAM):
        assert path.startswith("/usr/local/bin/")
        assert Path(path).name in tools
    copies = [args for kw, args in instructions(SANDBOX_DOCKERFILE) if kw == "COPY"]
    assert f"--chown=0:0 --chmod=0711 init/sandbox-init {constants.INIT_PROGRAM}" in copies  # execute-only
    assert any(args.endswith(" bin/ /usr/local/bin/") and "--chmod=0755" in args for args in copies)
    for tool in BIN.iterdir():
        assert tool.stat().st_mode & 0o755 == 0o755, f"{tool} must be executable"


def test_python_tools_run_under_the_execute_only_interpreter() -> None:
    """The kernel makes a process that executes a file it cannot read non-dumpable: the tools' interpreter is a
    root-owned 0711 copy of python3, so no other process of the sandbox can open their /proc/PID/fd or trace them."""
    runs = [args for kw, args in instructions(SANDBOX_DOCKERFILE) if kw == "RUN"]
    assert any(f'install -o 0 -g 0 -m 0711 "$(readlink -f "$(command -v python3)")" {SANDBOX_PYTHON}' in r
               for r in runs)
    for name in ("sandbox-exec", "sandbox-files", "sandbox-agent"):
        assert (BIN / name).read_text().splitlines()[0] == f"#!{SANDBOX_PYTHON} -I"


def shell_function(script: str, name: str) -> str:
    """The text of a bash function of a script, up to its closing brace at the start of a line."""
    start = script.index(f"\n{name}() {{")
    return script[start:script.index("\n}\n", start)]


def test_the_sandbox_and_data_image_keys_cover_their_whole_build_context() -> None:
    """A change to sandbox-init.c (or any file under images/sandbox) or to its compiler flags rebuilds both images;
    the data image's key also covers its root filesystem's (the script that makes it, its packages, its config)."""
    script = (REPO_ROOT / "hack" / "build-images.sh").read_text()
    build_key = shell_function(script, "sandbox_build_key")
    assert 'find "$REPO_ROOT/images/sandbox" -type f' in build_key
    assert "${INIT_CFLAGS[*]}" in build_key
    keys = shell_function(script, "key_of")
    assert 'KEY[sandbox]="$(sandbox_build_key "$deps")"' in keys
    assert 'KEY[data]="$(sandbox_build_key "$(key_of data-base)")"' in keys
    data_base = keys[keys.index("      data-base)"):keys.index(";;", keys.index("      data-base)"))]
    for word in ("$DATA_PACKAGES", "${DATA_BASE_CONFIG[*]}", '"$REPO_ROOT/images/base/mkrootfs.sh"'):
        assert word in data_base
    assert '"$ctx/init/sandbox-init.c" "$ctx/init/sandbox-init" "${INIT_CFLAGS[@]}"' in script


def test_the_data_image_adds_the_python_data_packages_and_draws_without_a_display() -> None:
    """numpy, pandas and matplotlib from Debian; matplotlib on Agg (Debian's matplotlibrc asks for TkAgg, which needs
    a display) with its cache in a writable root (the root file system is read-only)."""
    script = (REPO_ROOT / "hack" / "build-images.sh").read_text()
    packages = re.search(r'^DATA_PACKAGES="([^"]*)"$', script, re.MULTILINE)
    assert packages is not None
    assert packages.group(1).split(",")[:3] == ["python3-numpy", "python3-pandas", "python3-matplotlib"]
    assert "python3-scipy" not in packages.group(1)
    config = re.search(r'^DATA_BASE_CONFIG=\((.*)\)$', script, re.MULTILINE)
    assert config is not None
    words = shlex.split(config.group(1))
    assert words[0] == "${BASE_CONFIG[@]}"  # the base image's environment and labels, and then
    env = dict(words[i + 1].split("=", 1) for i, word in enumerate(words) if word == "--env")
    assert env["MPLBACKEND"] == "Agg"
    assert Path(env["MPLCONFIGDIR"]).parent == Path(constants.TMP_DIR)
    build = shell_function(script, "build_data")
    assert '--build-arg "BASE_IMAGE=$DATA_BASE_IMAGE"' in build and "sandbox_bud " in build  # the same Dockerfile
    assert "images=(pause base sandbox data)" in script  # built by default: cluster-up imports it


@pytest.mark.parametrize("packages", ["python3-numpy;rm", "python3-numpy, python3-pandas", "-x", "Python3-numpy"])
def test_mkrootfs_refuses_extra_packages_that_are_not_debian_names(packages: str, tmp_path: Path) -> None:
    """Refused before anything is built (so this runs without root or debootstrap)."""
    result = subprocess.run(["bash", str(IMAGES / "base" / "mkrootfs.sh"), str(tmp_path / "out.tar"), "bookworm",
                             "unused-mirror", "", packages], capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.returncode == 2, result
    assert "EXTRA_PACKAGES must be comma-separated Debian package names" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_tools_read_the_shared_environment_names() -> None:
    """sandbox-exec and sandbox-agent take their limits from sandbox_process, sandbox-files and sandbox-agent their
    roots from sandbox_fileops."""
    shared = BIN.parent / "lib" / "sandbox-tools"
    process_source = (shared / "sandbox_process.py").read_text()
    for name in (constants.ENV_PIDS_LIMIT, constants.ENV_COMMAND_TIMEOUT, constants.ENV_FILE_SIZE_LIMIT):
        assert f'"{name}"' in process_source
    files_source = (shared / "sandbox_fileops.py").read_text()
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
    # the passwd entries of the image cover the operator's default range of per-sandbox UIDs
    assert int(args["SANDBOX_UID_RANGE_FIRST"]) == constants.SANDBOX_UID_RANGE_FIRST
    assert int(args["SANDBOX_UID_RANGE_LAST"]) == constants.SANDBOX_UID_RANGE_LAST
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
        wait_until(partial(takes_signal, proc.pid, sig), 5, interval=0.01, message=f"pause to handle {sig.name}")
        proc.send_signal(sig)
        assert proc.wait(timeout=5) == 0


def init_cflags() -> list[str]:
    """The compiler flags hack/build-images.sh builds sandbox-init with."""
    script = (REPO_ROOT / "hack" / "build-images.sh").read_text()
    flags = re.search(r"^INIT_CFLAGS=\((.*)\)$", script, re.MULTILINE)
    assert flags is not None
    words = shlex.split(flags.group(1).replace("$SANDBOX_IMAGE_VERSION", "test"))
    assert {"-static", "-Werror", "-Wall", "-Wextra"} <= set(words)
    return words


@dataclass(frozen=True)
class InitBuild:
    """sandbox-init compiled as the image build does, except that the programs it checks at start and its
    termination log are files in its own directory (the host has no /usr/local/bin/sandbox-exec)."""

    binary: Path
    writable_roots: str
    exec_wrapper: Path
    python: Path
    termination_log: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {"PATH": os.environ["PATH"], "SANDBOX_WRITABLE_ROOTS": self.writable_roots, **extra}


def build_init(directory: Path) -> InitBuild:
    """In a directory any user may enter, with world-writable roots (for the tests that run it as nobody)."""
    directory.chmod(0o755)
    exec_wrapper, python = directory / "sandbox-exec", directory / "sandbox-python"
    for program in (exec_wrapper, python):
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    roots = [directory / "workspace", directory / "tmp"]
    for root in roots:
        root.mkdir()
        root.chmod(0o1777)
    log = directory / "termination-log"
    log.touch()
    log.chmod(0o666)
    binary = directory / "sandbox-init"
    paths = [f'-DSANDBOX_EXEC_PATH="{exec_wrapper}"', f'-DSANDBOX_PYTHON_PATH="{python}"',
             f'-DTERMINATION_LOG_PATH="{log}"']
    subprocess.run(["gcc", *init_cflags(), *paths, "-o", str(binary), str(SANDBOX_INIT_SOURCE)], check=True)
    return InitBuild(binary, ":".join(map(str, roots)), exec_wrapper, python, log)


needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def sandbox_init() -> Iterator[InitBuild]:
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    with tempfile.TemporaryDirectory(prefix="sandbox-init-") as directory:
        yield build_init(Path(directory))


def start_init(init: InitBuild, setup: str, sweep: str | None = None, **popen: Any) -> subprocess.Popen[bytes]:
    """sandbox-init in place of a shell that first runs `setup` (so what setup started are its children, as the
    orphans re-parented to PID 1 are in a container); not PID 1 here, it sweeps its own children the same way."""
    env = init.env()
    if sweep is not None:
        env["SANDBOX_ORPHAN_SWEEP_SECONDS"] = sweep
    return subprocess.Popen(["sh", "-c", f'{setup}\nexec "$0"', str(init.binary)], env=env, **popen)


def gone(pid: int) -> bool:
    """Reaped: no zombie left either."""
    return not Path(f"/proc/{pid}").exists()


def takes_signal(pid: int, sig: signal.Signals) -> bool:
    """The process is past its start-up, so ``sig`` now reaches its own handling rather than the default action:
    it catches or blocks the signal, or waits for signals in sigtimedwait (which unblocks what it waits for while
    it waits, so the blocked mask then shows nothing)."""
    proc = Path(f"/proc/{pid}")
    fields = dict(line.split(":", 1) for line in (proc / "status").read_text().splitlines())
    if any(int(fields[mask], 16) & (1 << (sig - 1)) for mask in ("SigCgt", "SigBlk")):
        return True
    return (proc / "wchan").read_text().startswith("do_sigtimedwait")


def test_sandbox_init_version_and_usage(sandbox_init: InitBuild) -> None:
    binary = str(sandbox_init.binary)
    assert subprocess.run([binary, "--version"], capture_output=True, check=True).stdout \
        == b"sandbox-init (sandbox-operator) test\n"
    assert subprocess.run([binary, "extra"], capture_output=True, check=False).returncode == 2
    bad = subprocess.run([binary], env=sandbox_init.env(SANDBOX_ORPHAN_SWEEP_SECONDS="soon"), capture_output=True,
                         check=False)
    assert bad.returncode == 2
    assert b"SANDBOX_ORPHAN_SWEEP_SECONDS" in bad.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sandbox_init_exits_cleanly_on_sigterm_and_sigint(sandbox_init: InitBuild, sig: signal.Signals) -> None:
    proc = subprocess.Popen([str(sandbox_init.binary)], env=sandbox_init.env(), stderr=subprocess.PIPE)
    wait_until(lambda: takes_signal(proc.pid, sig), 5, interval=0.01, message=f"sandbox-init to handle {sig.name}")
    proc.send_signal(sig)
    assert proc.wait(timeout=5) == 0
    assert proc.stderr is not None and proc.stderr.read() == b""
    assert sandbox_init.termination_log.read_text() == "", "a passing self-check wrote a termination message"


def test_sandbox_init_kills_and_reaps_its_orphans_every_sweep(sandbox_init: InitBuild, tmp_path: Path) -> None:
    """Including one whose name holds ") Z 1 (": /proc/PID/stat is parsed from the last parenthesis."""
    pids = tmp_path / "pids"
    odd = tmp_path / "x) Z 1 (y"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", odd)
    init = start_init(sandbox_init, f"sleep 60 & echo $! > {pids}; '{odd}' 60 & echo $! >> {pids}", sweep="1")
    try:
        wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 5, interval=0.05,
                   message="both orphans started")
        orphans = [int(p) for p in pids.read_text().split()]
        assert not any(gone(pid) for pid in orphans)
        wait_until(lambda: all(gone(pid) for pid in orphans), 4, interval=0.05,
                   message="the sweep to end the orphans")
        assert init.poll() is None
    finally:
        init.terminate()
        assert init.wait(timeout=5) == 0


def test_sandbox_init_sweep_can_be_turned_off(sandbox_init: InitBuild, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    init = start_init(sandbox_init, f"sleep 60 & echo $! > {pid_file}", sweep="0")
    try:
        wait_until(pid_file.exists, 5, interval=0.05, message="the child started")
        consistently(lambda: not gone(int(pid_file.read_text())), 1.6, interval=0.1,
                     message="the child alive for longer than a sweep period")
    finally:
        init.terminate()
        init.wait(timeout=5)
        os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_sandbox_init_reaps_children_that_exit(sandbox_init: InitBuild, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    init = start_init(sandbox_init, f"sleep 0.3 & echo $! > {pid_file}", sweep="0")
    try:
        wait_until(pid_file.exists, 5, interval=0.05, message="the child started")
        wait_until(lambda: gone(int(pid_file.read_text())), 5, interval=0.05, message="the exited child reaped")
    finally:
        init.terminate()
        init.wait(timeout=5)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run it as another user")
def test_sandbox_init_is_not_dumpable(sandbox_init: InitBuild) -> None:
    """Run as an ordinary user from a readable file: prctl(PR_SET_DUMPABLE, 0) alone makes /proc/PID root's."""
    proc = subprocess.Popen([str(sandbox_init.binary)], env=sandbox_init.env(), user=65534, group=65534,
                            extra_groups=[])
    try:
        wait_until(lambda: takes_signal(proc.pid, signal.SIGTERM), 5, interval=0.01, message="sandbox-init started")
        assert "\t65534\t" in next(line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                                   if line.startswith("Uid:"))
        assert os.stat(f"/proc/{proc.pid}/fd").st_uid == 0
        assert os.stat(f"/proc/{proc.pid}/environ").st_uid == 0
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


# --- sandbox-init's start-up self-check ----------------------------------------------------------------------

def run_failing_init(init: InitBuild, **popen: Any) -> str:
    """Runs sandbox-init expecting the self-check to fail: exit 1 at once, one line on stderr, the same line in
    the termination log (when that exists). Returns the line."""
    if init.termination_log.exists():
        init.termination_log.write_text("")
    started = time.monotonic()
    result = subprocess.run([str(init.binary)], capture_output=True, text=True, timeout=5, check=False, **popen)
    assert result.returncode == 1, result
    assert time.monotonic() - started < 2, "the self-check must not wait for anything"
    stderr: str = result.stderr
    assert stderr.count("\n") == 1 and stderr.startswith("sandbox-init: "), stderr
    if init.termination_log.exists():
        assert init.termination_log.read_text() == stderr
    return stderr.strip()


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_sandbox_init_fails_when_a_writable_root_is_not_a_directory(sandbox_init: InitBuild, tmp_path: Path,
                                                                     kind: str) -> None:
    root = tmp_path / "workspace"
    if kind == "file":
        root.write_text("")
    line = run_failing_init(sandbox_init, env=sandbox_init.env(SANDBOX_WRITABLE_ROOTS=f"{tmp_path}::{root}"))
    expected = "is not a directory" if kind == "file" else "is not a writable directory: No such file or directory"
    assert line == f"sandbox-init: {root} {expected}"


def test_sandbox_init_fails_when_a_writable_root_is_read_only(sandbox_init: InitBuild) -> None:
    """As root, access(W_OK) ignores the mode bits: the check then runs as nobody, for whom the directory is
    read-only, as a missing emptyDir leaves /workspace on the read-only root file system. (Not under pytest's
    tmp_path, whose parents nobody may not enter.)"""
    as_nobody: dict[str, Any] = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    with tempfile.TemporaryDirectory(prefix="sandbox-init-root-") as directory:
        Path(directory).chmod(0o755)
        root = Path(directory) / "workspace"
        root.mkdir(mode=0o555)
        roots = f"{sandbox_init.writable_roots}:{root}"
        line = run_failing_init(sandbox_init, env=sandbox_init.env(SANDBOX_WRITABLE_ROOTS=roots), **as_nobody)
    assert line == f"sandbox-init: {root} is not writable: Permission denied"


@needs_gcc
def test_sandbox_init_fails_when_a_tool_cannot_run_and_names_every_problem(tmp_path: Path) -> None:
    """Its own build, since the test breaks the checked programs. No termination log is created where the kubelet
    provided none."""
    init = build_init(tmp_path)
    init.exec_wrapper.chmod(0o644)
    init.python.unlink()
    init.termination_log.unlink()
    missing = tmp_path / "gone"
    line = run_failing_init(init, env=init.env(SANDBOX_WRITABLE_ROOTS=f"{init.writable_roots}:{missing}"))
    assert line == (f"sandbox-init: {missing} is not a writable directory: No such file or directory; "
                    f"{init.exec_wrapper} is not executable: Permission denied; "
                    f"{init.python} is missing: No such file or directory")
    assert not init.termination_log.exists()


def test_sandbox_init_checks_the_images_paths_by_default() -> None:
    """Without the tests' -D overrides it checks what the image installs and writes where the kubelet reads."""
    source = SANDBOX_INIT_SOURCE.read_text()
    defines = dict(re.findall(r'^#define (\w+) "([^"]*)"$', source, re.MULTILINE))
    assert defines["SANDBOX_EXEC_PATH"] == constants.EXEC_WRAPPER
    assert defines["SANDBOX_PYTHON_PATH"] == SANDBOX_PYTHON
    assert defines["DEFAULT_WRITABLE_ROOTS"] == ":".join(constants.WRITABLE_ROOTS)
    assert defines["TERMINATION_LOG_PATH"] == "/dev/termination-log"  # the pod's terminationMessagePath default


@pytest.mark.skipif(not (REPO_ROOT / ".venv" / "bin" / "ruff").exists(), reason="no ruff in .venv")
def test_python_tools_pass_ruff() -> None:
    """The tools have no .py suffix (they are installed as commands), so `ruff check .` skips them."""
    result = subprocess.run([str(REPO_ROOT / ".venv" / "bin" / "ruff"), "check", "--no-cache",
                             str(BIN / "sandbox-exec"), str(BIN / "sandbox-files"), str(BIN / "sandbox-agent"),
                             str(BIN / "sandbox-code"),
                             str(BIN.parent / "lib" / "sandbox-tools")],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_script_help_lists_the_entry_points() -> None:
    result = subprocess.run(["bash", "hack/build-images.sh", "--help"], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0
    for word in ("build", "import", "size", "--force", "pause", "base", "sandbox", "data"):
        assert word in result.stderr

"""The sandbox image's tools (images/sandbox/bin), run directly on this machine.

sandbox-exec and sandbox-files are stdlib Python, so they run here as they run in the image (with `-S`: they
need no site-packages, and it saves interpreter start-up time); the writable roots are pointed at a temporary
directory with SANDBOX_WRITABLE_ROOTS. The in-cluster behaviour (non-root UID, read-only root, cgroup limits) is
covered by tests/e2e/test_sandbox_image.py. No real fork bomb here: as root on this machine nothing would bound it.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = REPO_ROOT / "images" / "sandbox"
BIN = IMAGE / "bin"
SHARED_MODULES = sorted((IMAGE / "lib" / "sandbox-tools").glob("*.py"))
SANDBOX_EXEC = BIN / "sandbox-exec"
SANDBOX_FILES = BIN / "sandbox-files"
SANDBOX_AGENT = BIN / "sandbox-agent"
SANDBOX_READY = BIN / "sandbox-ready"

pytestmark = pytest.mark.timeout(60)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    env.update(extra)
    return env


def sandbox_exec(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
                 timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-I", "-S", str(SANDBOX_EXEC), *args], input=input, capture_output=True,
                          env=env if env is not None else clean_env(), timeout=timeout, check=False)


def gone(pid: int) -> bool:
    """The process no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return fields[0] in ("Z", "X")


def wait_gone(pid: int, within: float = 3.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if gone(pid):
            return True
        time.sleep(0.02)
    return gone(pid)


# --- sandbox-exec ------------------------------------------------------------------------------------------

def test_exit_code_and_output_pass_through_untouched() -> None:
    result = sandbox_exec("--", "sh", "-c", r"printf 'out\000\377'; printf 'err\n' >&2; exit 7")
    assert result.returncode == 7
    assert result.stdout == b"out\x00\xff"
    assert result.stderr == b"err\n"


def test_stdin_passes_through() -> None:
    payload = bytes(range(256)) * 4096
    result = sandbox_exec("cat", input=payload)
    assert result.returncode == 0
    assert result.stdout == payload
    assert result.stderr == b""


def test_options_after_the_command_belong_to_the_command() -> None:
    result = sandbox_exec("echo", "--timeout", "x")
    assert result.returncode == 0
    assert result.stdout == b"--timeout x\n"


def test_timeout_kills_the_whole_process_group_and_exits_124(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; sh -c 'echo $$ >> {pids}; sleep 60' & wait"
    start = time.monotonic()
    result = sandbox_exec("--timeout", "0.5", "--kill-after", "0.5", "--", "sh", "-c", script)
    elapsed = time.monotonic() - start
    assert result.returncode == 124
    assert result.stdout == b""
    assert result.stderr.startswith(b"sandbox-exec: ") and b"timed out" in result.stderr
    assert elapsed < 5
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 2
    assert all(wait_gone(pid) for pid in children), children


def times_out(script: str, *, timeout: str, kill_after: str, within: float) -> None:
    """Runs ``sh -c script`` under sandbox-exec's timeout: it must end with 124 well within ``within`` seconds."""
    start = time.monotonic()
    result = sandbox_exec("--timeout", timeout, "--kill-after", kill_after, "--", "sh", "-c", script)
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - start < within


def test_timeout_sends_sigkill_to_commands_that_ignore_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done"
    times_out(script, timeout="0.3", kill_after="0.3", within=5)
    assert wait_gone(int(pid_file.read_text()))


def test_timeout_kills_job_control_groups_of_the_session(tmp_path: Path) -> None:
    """`set -m` puts background jobs into process groups of their own; they are still the command's."""
    pid_file = tmp_path / "pid"
    result = sandbox_exec("--timeout", "0.5", "--kill-after", "0.3", "--", "bash", "-c",
                          f"set -m; sleep 60 & echo $! > {pid_file}; wait")
    assert result.returncode == 124
    assert wait_gone(int(pid_file.read_text()))


def test_waits_for_background_processes_that_hold_the_output() -> None:
    start = time.monotonic()
    result = sandbox_exec("sh", "-c", "(sleep 0.7; echo late) & echo early; exit 3")
    assert result.returncode == 3
    assert result.stdout == b"early\nlate\n"
    assert time.monotonic() - start >= 0.7


def test_background_processes_holding_the_output_past_the_timeout_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    result = sandbox_exec("--timeout", "0.5", "--kill-after", "0.3", "--", "sh", "-c",
                          f"sleep 60 & echo $! > {pid_file}; exit 0")
    assert result.returncode == 124
    assert b"background" in result.stderr
    assert time.monotonic() - start < 5
    assert wait_gone(int(pid_file.read_text()))


def test_detached_background_processes_end_with_the_command(tmp_path: Path) -> None:
    """`nohup server >log 2>&1 &` returns at once, and the server ends with the command: background work outlives
    a command only as a command of its own (the SDK's start())."""
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    result = sandbox_exec("--timeout", "5", "--", "sh", "-c",
                          f"sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pid_file}; exit 0")
    assert result.returncode == 0
    assert time.monotonic() - start < 3
    assert wait_gone(int(pid_file.read_text()))


def escapes(tmp_path: Path, *, detached_output: bool) -> tuple[str, Path]:
    """A shell script that leaves five processes behind, each escaping the command's session or process group in
    its own way (setsid, double fork, both, a cleared environment, nohup), and waits until all have written their
    pid to the returned file."""
    pids = tmp_path / "pids"
    leftover = tmp_path / "leftover.sh"
    leftover.write_text('#!/bin/sh\necho $$ >> "$1"\nexec sleep 60\n')
    out = " </dev/null >/dev/null 2>&1" if detached_output else ""
    run = f"sh {leftover} {pids}{out}"
    script = (f"setsid {run} & ({run} &); (setsid {run} &); env -i setsid {run} & nohup {run} & "
              f"while [ \"$(cat {pids} 2>/dev/null | wc -l)\" -lt 5 ]; do sleep 0.05; done; ")
    return script, pids


def read_pids(pids: Path) -> list[int]:
    found = [int(p) for p in pids.read_text().split()]
    assert len(found) == 5, found
    return found


@pytest.mark.skipif(shutil.which("setsid") is None, reason="no setsid")
def test_processes_that_escape_the_session_end_when_the_command_ends(tmp_path: Path) -> None:
    script, pids = escapes(tmp_path, detached_output=True)
    start = time.monotonic()
    result = sandbox_exec("--timeout", "20", "--kill-after", "0.5", "--", "sh", "-c", script + "exit 4")
    assert result.returncode == 4, result.stderr
    assert time.monotonic() - start < 8
    assert all(wait_gone(pid) for pid in read_pids(pids))


@pytest.mark.skipif(shutil.which("setsid") is None, reason="no setsid")
def test_processes_that_escape_the_session_end_at_the_timeout(tmp_path: Path) -> None:
    script, pids = escapes(tmp_path, detached_output=False)
    start = time.monotonic()
    result = sandbox_exec("--timeout", "2", "--kill-after", "0.3", "--", "sh", "-c", script + "sleep 60")
    assert result.returncode == 124
    assert result.stderr.startswith(b"sandbox-exec: command timed out after 2s")
    assert time.monotonic() - start < 8
    assert all(wait_gone(pid) for pid in read_pids(pids))


def test_a_process_that_left_the_session_does_not_hold_the_command(tmp_path: Path) -> None:
    """Only processes still in the command's session are waited for while they hold its output; one that called
    setsid() detached itself (it still ends with the command)."""
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    code = ("import os, time\n"
            "pid = os.fork()\n"
            "if pid == 0:\n    os.setsid(); time.sleep(60)\n"
            f"open({str(pid_file)!r}, 'w').write(str(pid))\n")
    result = sandbox_exec("--timeout", "20", "--kill-after", "0.3", "--", sys.executable, "-I", "-c", code)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - start < 5
    assert wait_gone(int(pid_file.read_text()))


def test_orphans_are_reaped_without_losing_the_exit_status() -> None:
    """Adopted orphans exit (and are reaped by the wrapper) before the command does: its status still counts."""
    result = sandbox_exec("sh", "-c", "for i in 1 2 3 4 5; do (true &); done; sleep 0.3; exit 9")
    assert result.returncode == 9


def test_a_tree_left_behind_is_killed_completely_at_the_timeout(tmp_path: Path) -> None:
    """What a fork bomb leaves (its top-level shell exits at once, the rest keeps the output open), but bounded.
    A real fork bomb only ever runs inside a pod (tests/e2e), where the pids cgroup caps it: on this machine,
    as root, nothing would."""
    pids = tmp_path / "pids"
    tree = f"for i in 1 2 3 4 5; do (for j in 1 2 3; do sleep 60 & echo $! >> {pids}; done; wait) & done; exit 0"
    times_out(tree, timeout="0.5", kill_after="0.2", within=10)
    sleeps = [int(p) for p in pids.read_text().split()]
    assert len(sleeps) == 15
    assert all(wait_gone(pid) for pid in sleeps)


def test_timeout_default_comes_from_the_environment() -> None:
    result = sandbox_exec("sleep", "30", env=clean_env(SANDBOX_COMMAND_TIMEOUT="0.3"))
    assert result.returncode == 124


def test_zero_timeout_means_none() -> None:
    result = sandbox_exec("--timeout", "0", "--", "sh", "-c", "sleep 0.2; exit 3")
    assert result.returncode == 3


def test_a_huge_timeout_is_fine() -> None:
    assert sandbox_exec("--timeout", "1e12", "--", "sh", "-c", "exit 3").returncode == 3


def test_killed_by_a_signal_exits_128_plus_n() -> None:
    result = sandbox_exec("sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + signal.SIGTERM


def test_command_not_found_is_127() -> None:
    result = sandbox_exec("no-such-command-here")
    assert result.returncode == 127
    assert result.stdout == b""
    assert result.stderr.startswith(b"sandbox-exec: ")


def test_command_not_executable_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = sandbox_exec(str(script))
    assert result.returncode == 126
    assert result.stderr.startswith(b"sandbox-exec: ")


@pytest.mark.parametrize("args", [
    [],
    ["--"],
    ["--bogus", "true"],
    ["--timeout", "soon", "true"],
    ["--timeout", "-1", "true"],
    ["--nproc", "0", "true"],
    ["--fsize", "lots", "true"],
    ["--env", "NOEQUALS", "true"],
    ["--cwd", "/no/such/dir", "true"],
    ["--timeout"],
    ["--id", "bad/id", "true"],
    ["--id", "x" * 65, "true"],
    ["--kill"],
    ["--kill", "bad id"],
    ["--kill", "abc", "--", "true"],
    ["--kill", "abc", "--timeout", "5"],
    ["--kill", "abc", "--signal", "BOGUS"],
    ["--kill", "abc", "--signal", "0"],
    ["--signal", "TERM", "true"],
])
def test_usage_errors_are_125(args: list[str]) -> None:
    result = sandbox_exec(*args)
    assert result.returncode == 125
    assert result.stdout == b""
    assert result.stderr.startswith(b"sandbox-exec: ")


def test_invalid_environment_default_is_a_usage_error() -> None:
    result = sandbox_exec("true", env=clean_env(SANDBOX_PIDS_LIMIT="many"))
    assert result.returncode == 125
    assert b"SANDBOX_PIDS_LIMIT" in result.stderr


def test_env_and_cwd(tmp_path: Path) -> None:
    result = sandbox_exec("--cwd", str(tmp_path), "--env", "FOO=a=b", "--env=BAR=", "--",
                          "sh", "-c", 'printf "%s|%s|%s" "$FOO" "${BAR-unset}" "$(pwd)"')
    assert result.returncode == 0
    assert result.stdout.decode() == f"a=b||{tmp_path}"


def read_limits(*args: str, env: dict[str, str] | None = None) -> dict[str, list[int]]:
    code = ("import json, resource as r; print(json.dumps({n: r.getrlimit(getattr(r, 'RLIMIT_' + n)) "
            "for n in ('CORE', 'FSIZE', 'NPROC')}))")
    result = sandbox_exec(*args, "--", sys.executable, "-I", "-c", code, env=env)
    assert result.returncode == 0, result.stderr
    limits: dict[str, list[int]] = json.loads(result.stdout)
    return limits


def test_default_limits_core_off_and_one_gib_file_size() -> None:
    import resource

    limits = read_limits()
    assert limits["CORE"] == [0, 0]
    assert limits["FSIZE"] == [1 << 30, 1 << 30]
    assert limits["NPROC"] == list(resource.getrlimit(resource.RLIMIT_NPROC))  # unchanged without a setting


def test_limits_from_the_environment() -> None:
    limits = read_limits(env=clean_env(SANDBOX_FILE_SIZE_LIMIT="1Mi", SANDBOX_PIDS_LIMIT="50"))
    assert limits["FSIZE"] == [1 << 20, 1 << 20]
    assert limits["NPROC"] == [50, 50]


def test_options_override_the_environment() -> None:
    limits = read_limits("--fsize", "4096", "--nproc", "30",
                         env=clean_env(SANDBOX_FILE_SIZE_LIMIT="1Mi", SANDBOX_PIDS_LIMIT="50"))
    assert limits["FSIZE"] == [4096, 4096]
    assert limits["NPROC"] == [30, 30]


def test_file_size_limit_stops_a_write(tmp_path: Path) -> None:
    target = tmp_path / "big"
    result = sandbox_exec("--fsize", "1000", "--", "dd", "if=/dev/zero", f"of={target}", "bs=4000", "count=1")
    assert result.returncode == 128 + signal.SIGXFSZ  # SIGXFSZ back at its default in the command
    assert target.stat().st_size == 1000


def test_signals_are_forwarded_to_the_command(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap 'echo got-term; exit 3' TERM; touch {ready}; while :; do sleep 0.05; done"
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(SANDBOX_EXEC), "sh", "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        out, _err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 3
    assert out == b"got-term\n"


def test_a_command_that_ignores_a_forwarded_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = f"trap '' TERM; touch {ready}; while :; do sleep 0.05; done"
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(SANDBOX_EXEC), "--kill-after", "0.5", "--", "sh", "-c",
                             script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGKILL
        assert 0.4 < time.monotonic() - start < 5
    finally:
        proc.kill()
        proc.communicate()


def test_command_is_the_likelier_oom_victim() -> None:
    own = int(Path("/proc/self/oom_score_adj").read_text())
    result = sandbox_exec("cat", "/proc/self/oom_score_adj")
    assert int(result.stdout) == max(own, min(1000, own + 500), 500)


def test_command_runs_in_its_own_session() -> None:
    result = sandbox_exec(sys.executable, "-I", "-c", "import os; print(os.getsid(0) == os.getpid())")
    assert result.stdout == b"True\n"


def wait_for_lines(path: Path, count: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().split()) >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{path} never had {count} lines")


def stop(wrapper: subprocess.Popen[bytes]) -> None:
    """Ends a wrapper started by a test and its command (SIGTERM: the wrapper ends its subtree)."""
    if wrapper.poll() is None:
        wrapper.terminate()
    wrapper.communicate(timeout=15)


@pytest.mark.skipif(shutil.which("setsid") is None, reason="no setsid")
def test_kill_reaches_every_descendant_and_prints_the_count(tmp_path: Path) -> None:
    command_id = uuid.uuid4().hex
    script, pids = escapes(tmp_path, detached_output=False)
    wrapper = subprocess.Popen([sys.executable, "-I", "-S", str(SANDBOX_EXEC), "--id", command_id, "--timeout", "30",
                                "--", "sh", "-c", script + "sleep 60"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        wait_for_lines(pids, 5)
        killed = sandbox_exec("--kill", command_id, env={})
        assert killed.returncode == 0, killed.stderr
        assert re.fullmatch(rb"[0-9]+\n", killed.stdout)
        # The five that escaped and the shell (its final sleep may not have started yet on a busy machine).
        assert int(killed.stdout) >= 6
        assert killed.stderr == b""
        assert all(wait_gone(pid) for pid in read_pids(pids))
        assert wrapper.wait(timeout=10) == 128 + signal.SIGKILL  # the wrapper itself lives on to report it
    finally:
        stop(wrapper)
    again = sandbox_exec("--kill", command_id)
    assert (again.returncode, again.stdout) == (3, b"0\n")


def test_kill_sends_the_signal_asked_for() -> None:
    command_id = uuid.uuid4().hex
    wrapper = subprocess.Popen([sys.executable, "-I", "-S", str(SANDBOX_EXEC), f"--id={command_id}", "--",
                                "sleep", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        deadline = time.monotonic() + 10
        killed = sandbox_exec("--kill", command_id, "--signal", "SIGTERM")
        while killed.stdout == b"0\n" and time.monotonic() < deadline:  # until sleep has started
            time.sleep(0.02)
            killed = sandbox_exec("--kill", command_id, "--signal", "TERM")
        assert (killed.returncode, killed.stdout) == (0, b"1\n")
        assert wrapper.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        stop(wrapper)


def test_kill_matches_only_the_wrappers_own_id_option() -> None:
    """`--id X` among the command's arguments does not make the wrapper (or the command) one labelled X."""
    command_id = uuid.uuid4().hex
    wrapper = subprocess.Popen([sys.executable, "-I", "-S", str(SANDBOX_EXEC), "--", "sh", "-c", "sleep 60", "--id",
                                command_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env())
    try:
        time.sleep(0.3)
        missed = sandbox_exec("--kill", command_id)
        assert (missed.returncode, missed.stdout) == (3, b"0\n")
        assert wrapper.poll() is None
    finally:
        stop(wrapper)


LIMITS_ENV = {"SANDBOX_COMMAND_TIMEOUT": "5", "SANDBOX_PIDS_LIMIT": "50", "SANDBOX_FILE_SIZE_LIMIT": "1Mi"}


@pytest.mark.parametrize(("option", "value", "line"), [
    ("--timeout", "10", "--timeout 10 is above this sandbox's limit of 5 seconds (SANDBOX_COMMAND_TIMEOUT)"),
    ("--timeout", "0", "--timeout 0 (none) is above this sandbox's limit of 5 seconds (SANDBOX_COMMAND_TIMEOUT)"),
    ("--nproc", "51", "--nproc 51 is above this sandbox's limit of 50 processes (SANDBOX_PIDS_LIMIT)"),
    ("--nproc", "unlimited",
     "--nproc unlimited is above this sandbox's limit of 50 processes (SANDBOX_PIDS_LIMIT)"),
    ("--fsize", "2Mi", "--fsize 2097152 is above this sandbox's limit of 1048576 bytes (SANDBOX_FILE_SIZE_LIMIT)"),
    ("--fsize", "unlimited",
     "--fsize unlimited is above this sandbox's limit of 1048576 bytes (SANDBOX_FILE_SIZE_LIMIT)"),
])
def test_limits_above_the_sandboxes_own_are_refused(option: str, value: str, line: str) -> None:
    result = sandbox_exec(option, value, "--", "true", env=clean_env(**LIMITS_ENV))
    assert result.returncode == 125
    assert result.stdout == b""
    assert result.stderr.decode() == f"sandbox-exec: {line}\n"


def test_env_option_does_not_raise_the_sandboxes_limits() -> None:
    result = sandbox_exec("--env", "SANDBOX_COMMAND_TIMEOUT=1000", "--timeout", "10", "--", "true",
                          env=clean_env(**LIMITS_ENV))
    assert result.returncode == 125
    assert b"SANDBOX_COMMAND_TIMEOUT" in result.stderr


def test_limits_at_the_sandboxes_own_are_accepted() -> None:
    limits = read_limits("--timeout", "5", "--nproc", "50", "--fsize", "1048576", env=clean_env(**LIMITS_ENV))
    assert limits["FSIZE"] == [1 << 20, 1 << 20]
    assert limits["NPROC"] == [50, 50]
    lower = read_limits("--timeout", "0.5", "--nproc", "7", "--fsize", "1Ki", env=clean_env(**LIMITS_ENV))
    assert lower["FSIZE"] == [1024, 1024]
    assert lower["NPROC"] == [7, 7]


def test_without_sandbox_limits_any_limit_is_accepted() -> None:
    assert sandbox_exec("--timeout", "0", "--nproc", "unlimited", "--fsize", "unlimited", "--", "true",
                        env=clean_env(SANDBOX_COMMAND_TIMEOUT="0")).returncode == 0


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text(errors="replace").rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def execute_only_tools() -> Iterator[Path]:
    """The tools as the image installs them: run by an execute-only (root, 0711) copy of this machine's python3,
    for an ordinary user."""
    system_python = Path("/usr/bin/python3")
    if os.geteuid() != 0 or not system_python.exists():
        pytest.skip("needs root and /usr/bin/python3")
    with tempfile.TemporaryDirectory(prefix="sandbox-python-") as directory:
        prefix = Path(directory)  # laid out as /usr/local is in the image: bin/ and lib/sandbox-tools/
        root = prefix / "bin"
        shared = prefix / "lib" / "sandbox-tools"
        shared.mkdir(parents=True)
        root.mkdir()
        for path in (prefix, prefix / "lib", shared, root):
            path.chmod(0o755)
        for module in SHARED_MODULES:
            shutil.copy(module, shared)
            (shared / module.name).chmod(0o644)
        interpreter = root / "sandbox-python"
        shutil.copy(system_python.resolve(), interpreter)
        interpreter.chmod(0o711)
        for tool in (SANDBOX_EXEC, SANDBOX_FILES, SANDBOX_AGENT):
            _shebang, body = tool.read_text().split("\n", 1)
            (root / tool.name).write_text(f"#!{interpreter} -I\n{body}")
            (root / tool.name).chmod(0o755)
        yield root


def test_tools_run_non_dumpable_and_the_command_still_gets_its_oom_score(execute_only_tools: Path) -> None:
    """No other process of the same user can open the wrapper's /proc/PID/fd (its output) or trace it; the
    command it starts is an ordinary process again, with its oom_score_adj raised."""
    wrapper = subprocess.Popen([str(execute_only_tools / "sandbox-exec"), "--", "sh", "-c",
                                "echo $$; cat /proc/self/oom_score_adj; exec sleep 30"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=clean_env(),
                               cwd=execute_only_tools, user=65534, group=65534, extra_groups=[])
    try:
        assert wrapper.stdout is not None
        command = int(wrapper.stdout.readline())
        assert int(wrapper.stdout.readline()) >= 500
        assert "\t65534\t" in Path(f"/proc/{wrapper.pid}/status").read_text()
        assert os.stat(f"/proc/{wrapper.pid}/fd").st_uid == 0  # non-dumpable: root's, whoever runs it
        assert os.stat(f"/proc/{command}/fd").st_uid == 65534
    finally:
        stop(wrapper)
    listing = subprocess.run([str(execute_only_tools / "sandbox-files"), "stat", str(execute_only_tools)],
                             env=clean_env(SANDBOX_WRITABLE_ROOTS=str(execute_only_tools)), capture_output=True,
                             user=65534, group=65534, extra_groups=[], check=False)
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout)["type"] == "dir"


def test_a_non_dumpable_tool_started_by_the_wrapper_is_never_dumpable(execute_only_tools: Path) -> None:
    """`sandbox-exec -- sandbox-files ...` (how the SDK moves files): the child must not turn dumpable to raise its
    OOM score before it becomes sandbox-files, or another process could grab its stdout meanwhile."""
    uploads = execute_only_tools / uuid.uuid4().hex
    uploads.mkdir()
    os.chown(uploads, 65534, 65534)
    target = uploads / "upload"
    wrapper = subprocess.Popen([str(execute_only_tools / "sandbox-exec"), "--",
                                str(execute_only_tools / "sandbox-files"), "write", str(target), "--size", "10"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=clean_env(SANDBOX_WRITABLE_ROOTS=str(uploads)),
                               cwd=execute_only_tools, user=65534, group=65534, extra_groups=[])
    try:
        deadline = time.monotonic() + 10
        while not (children := children_of(wrapper.pid)) and time.monotonic() < deadline:
            time.sleep(0.02)
        [tool] = children  # it waits for its 10 bytes of stdin
        time.sleep(0.2)  # past its exec
        assert os.stat(f"/proc/{tool}/fd").st_uid == 0
        own = Path(f"/proc/{wrapper.pid}/oom_score_adj").read_text()
        assert Path(f"/proc/{tool}/oom_score_adj").read_text() == own  # left as it was: no dumpable moment
        assert wrapper.stdin is not None
        wrapper.stdin.write(b"0123456789")
        wrapper.stdin.flush()
        assert wrapper.wait(timeout=10) == 0
        assert target.read_bytes() == b"0123456789"
    finally:
        stop(wrapper)


# --- sandbox-files -----------------------------------------------------------------------------------------

@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    ws = tmp_path / "workspace"
    tmp = tmp_path / "tmp"
    outside = tmp_path / "outside"
    for d in (ws, tmp, outside):
        d.mkdir()
    (outside / "secret").write_text("secret")
    return {"ws": ws, "tmp": tmp, "outside": outside}


def files(roots: dict[str, Path], *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = clean_env(SANDBOX_WRITABLE_ROOTS=f"{roots['ws']}:{roots['tmp']}")
    return subprocess.run([sys.executable, "-I", "-S", str(SANDBOX_FILES), *args], input=input, capture_output=True,
                          env=env, timeout=30, check=False)


def error_of(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode != 0
    assert result.stdout == b""
    report: dict[str, Any] = json.loads(result.stderr.decode().strip().splitlines()[-1])
    assert set(report) >= {"error", "message", "path"}
    return report


def test_ls_lists_entries_with_types(roots: dict[str, Path]) -> None:
    ws = roots["ws"]
    (ws / "b.txt").write_bytes(b"12345")
    (ws / "b.txt").chmod(0o640)
    (ws / "a-dir").mkdir()
    (ws / "link").symlink_to("b.txt")
    os.mkfifo(ws / "fifo")
    result = files(roots, "ls", str(ws))
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [e["name"] for e in entries] == ["a-dir", "b.txt", "fifo", "link"]
    by_name = {e["name"]: e for e in entries}
    assert by_name["b.txt"] == {"name": "b.txt", "path": str(ws / "b.txt"), "type": "file", "size": 5,
                                "mode": 0o640, "mtime": (ws / "b.txt").stat().st_mtime}
    assert by_name["a-dir"]["type"] == "dir"
    assert by_name["link"]["type"] == "symlink"
    assert by_name["fifo"]["type"] == "other"
    assert all(isinstance(e["mtime"], float) and isinstance(e["mode"], int) for e in entries)


def test_ls_of_a_file_lists_the_file_and_stat_is_one_entry(roots: dict[str, Path]) -> None:
    f = roots["tmp"] / "f"
    f.write_bytes(b"abc")
    listed = json.loads(files(roots, "ls", str(f)).stdout)
    assert [e["name"] for e in listed] == ["f"]
    info = json.loads(files(roots, "stat", str(f)).stdout)
    assert info["type"] == "file" and info["size"] == 3 and info["path"] == str(f)


def test_write_and_read_are_binary_safe(roots: dict[str, Path]) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7) + bytes(range(256))
    target = roots["ws"] / "data.bin"
    assert files(roots, "write", str(target), input=payload).returncode == 0
    assert target.read_bytes() == payload
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    result = files(roots, "read", str(target))
    assert result.returncode == 0
    assert result.stdout == payload
    assert result.stderr == b""


def test_write_is_atomic_and_keeps_the_mode(roots: dict[str, Path]) -> None:
    target = roots["ws"] / "script.sh"
    assert files(roots, "write", str(target), "--mode", "0750", input=b"v1").returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    inode = target.stat().st_ino
    assert files(roots, "write", str(target), input=b"v2").returncode == 0
    assert target.read_bytes() == b"v2"
    assert target.stat().st_ino != inode  # replaced by rename, never truncated in place
    assert stat.S_IMODE(target.stat().st_mode) == 0o750
    assert sorted(p.name for p in roots["ws"].iterdir()) == ["script.sh"]  # no temporary files left


def test_write_mode_never_sets_setuid(roots: dict[str, Path]) -> None:
    target = roots["ws"] / "x"
    assert files(roots, "write", str(target), "--mode", "4755", input=b"x").returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


def test_write_needs_parents_flag_for_missing_directories(roots: dict[str, Path]) -> None:
    target = roots["ws"] / "a" / "b" / "c.txt"
    report = error_of(files(roots, "write", str(target), input=b"x"))
    assert report["error"] == "FileNotFoundError"
    assert files(roots, "write", str(target), "--parents", input=b"x").returncode == 0
    assert target.read_bytes() == b"x"


def test_write_with_size_reads_exactly_that_many_bytes_without_eof(roots: dict[str, Path]) -> None:
    target = roots["ws"] / "sized"
    env = clean_env(SANDBOX_WRITABLE_ROOTS=str(roots["ws"]))
    proc = subprocess.Popen([sys.executable, "-I", "-S", str(SANDBOX_FILES), "write", str(target), "--size", "5"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"hello")
        proc.stdin.flush()  # stdin stays open, as over a WebSocket v4 exec stream
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        if proc.stdin:
            proc.stdin.close()
    assert target.read_bytes() == b"hello"


def test_sizes_are_read_as_sandbox_exec_reads_them(roots: dict[str, Path]) -> None:
    """One parser for both tools: --size takes the suffixes --fsize takes, and refuses the same words."""
    target = roots["ws"] / "kib"
    assert files(roots, "write", str(target), "--size", "1Ki", input=b"x" * 1024).returncode == 0
    assert target.stat().st_size == 1024
    report = error_of(files(roots, "write", str(roots["ws"] / "no"), "--size", "unlimited", input=b""))
    assert report["error"] == "UsageError" and "--size" in report["message"] and "1Gi" in report["message"]


def test_the_image_installs_the_shared_modules_where_the_tools_look() -> None:
    """The tools add ../lib/sandbox-tools (from their own directory) to sys.path; the Dockerfile must put every
    module there, and nowhere a sandbox user can write."""
    copies = [line.split()[1:] for line in (IMAGE / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ")]
    tools_dir = next(args[-1] for args in copies if args[-2] == "bin/")
    looked_in = posixpath.normpath(posixpath.join(tools_dir, "..", "lib", "sandbox-tools"))
    assert SHARED_MODULES
    for module in SHARED_MODULES:
        [module_copy] = [args for args in copies if args[-2] == f"lib/sandbox-tools/{module.name}"]
        assert module_copy[-1] == posixpath.join(looked_in, module.name)
        assert "--chown=0:0" in module_copy and "--chmod=0644" in module_copy
    for tool in (SANDBOX_EXEC, SANDBOX_FILES, SANDBOX_AGENT):
        source = tool.read_text()
        assert '"lib", "sandbox-tools"' in source and "from sandbox_" in source


def test_write_with_size_fails_on_short_input(roots: dict[str, Path]) -> None:
    target = roots["ws"] / "short"
    report = error_of(files(roots, "write", str(target), "--size", "10", input=b"abc"))
    assert report["error"] == "IncompleteInput"
    assert not target.exists()


def test_write_over_the_file_size_limit_reports_efbig(roots: dict[str, Path]) -> None:
    env = clean_env(SANDBOX_WRITABLE_ROOTS=str(roots["ws"]), SANDBOX_FILE_SIZE_LIMIT="1000")
    result = subprocess.run([sys.executable, "-I", "-S", str(SANDBOX_FILES), "write", str(roots["ws"] / "big")],
                            input=b"x" * 5000, capture_output=True, env=env, timeout=30, check=False)
    report = error_of(result)
    assert report["errno"] == "EFBIG"
    assert list(roots["ws"].iterdir()) == []


def test_write_through_a_symlink_inside_the_roots_replaces_the_target(roots: dict[str, Path]) -> None:
    real = roots["tmp"] / "real"
    real.write_text("old")
    (roots["ws"] / "alias").symlink_to(real)
    assert files(roots, "write", str(roots["ws"] / "alias"), input=b"new").returncode == 0
    assert real.read_text() == "new"
    assert (roots["ws"] / "alias").is_symlink()


def test_rm_mkdir_exists(roots: dict[str, Path]) -> None:
    ws = roots["ws"]
    assert files(roots, "mkdir", str(ws / "d")).returncode == 0
    assert error_of(files(roots, "mkdir", str(ws / "d")))["error"] == "FileExistsError"
    assert files(roots, "mkdir", str(ws / "p" / "q"), "--parents", "--mode", "0700").returncode == 0
    assert stat.S_IMODE((ws / "p" / "q").stat().st_mode) == 0o700
    assert files(roots, "exists", str(ws / "p" / "q")).returncode == 0
    assert files(roots, "exists", str(ws / "nope")).returncode == 1
    (ws / "p" / "q" / "f").write_text("x")
    assert error_of(files(roots, "rm", str(ws / "p")))["error"] == "OSError"  # not empty
    assert files(roots, "rm", str(ws / "p"), "--recursive").returncode == 0
    assert not (ws / "p").exists()
    assert files(roots, "rm", str(ws / "d")).returncode == 0
    assert error_of(files(roots, "rm", str(ws / "d")))["error"] == "FileNotFoundError"


def test_rm_of_a_symlink_removes_the_link_not_the_target(roots: dict[str, Path]) -> None:
    (roots["ws"] / "to-secret").symlink_to(roots["outside"] / "secret")
    assert files(roots, "rm", str(roots["ws"] / "to-secret")).returncode == 0
    assert not (roots["ws"] / "to-secret").is_symlink()
    assert (roots["outside"] / "secret").read_text() == "secret"


def test_a_writable_root_itself_cannot_be_removed(roots: dict[str, Path]) -> None:
    report = error_of(files(roots, "rm", str(roots["ws"]), "--recursive"))
    assert report["error"] == "PathOutsideSandbox"
    assert roots["ws"].is_dir()


@pytest.mark.parametrize("verb", ["ls", "stat", "read", "exists", "tar-out", "mkdir", "rm"])
def test_paths_outside_the_roots_are_refused_with_exit_2(roots: dict[str, Path], verb: str) -> None:
    for path in (str(roots["outside"] / "secret"), f"{roots['ws']}/../outside/secret", "/etc/passwd"):
        result = files(roots, verb, path)
        assert result.returncode == 2, (verb, path, result.stderr)
        report = error_of(result)
        assert report["error"] == "PathOutsideSandbox"
        assert report["path"] == path


def test_write_outside_the_roots_is_refused(roots: dict[str, Path]) -> None:
    result = files(roots, "write", str(roots["outside"] / "new"), input=b"x")
    assert result.returncode == 2
    assert not (roots["outside"] / "new").exists()


def test_symlink_escapes_are_refused(roots: dict[str, Path]) -> None:
    ws = roots["ws"]
    (ws / "escape").symlink_to(roots["outside"])
    (ws / "escape-file").symlink_to(roots["outside"] / "secret")
    for args in (["read", str(ws / "escape-file")], ["ls", str(ws / "escape")],
                 ["read", str(ws / "escape" / "secret")], ["tar-out", str(ws / "escape")]):
        assert files(roots, *args).returncode == 2, args
    result = files(roots, "write", str(ws / "escape" / "planted"), input=b"x")
    assert result.returncode == 2
    assert error_of(result)["error"] == "PathOutsideSandbox"
    assert not (roots["outside"] / "planted").exists()
    # the listing of the directory itself shows the links as links (without following them)
    entries = {e["name"]: e["type"] for e in json.loads(files(roots, "ls", str(ws)).stdout)}
    assert entries == {"escape": "symlink", "escape-file": "symlink"}


def test_unknown_verbs_and_options_are_usage_errors(roots: dict[str, Path]) -> None:
    assert error_of(files(roots, "chmod", "x"))["error"] == "UsageError"
    assert files(roots, "chmod", "x").returncode == 64
    assert files(roots, "ls").returncode == 64
    assert files(roots, "rm", str(roots["ws"] / "x"), "--force").returncode == 64


def test_tar_out_streams_a_tree(roots: dict[str, Path]) -> None:
    src = roots["ws"] / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.bin").write_bytes(b"\x00\x01")
    (src / "link").symlink_to("sub/f.bin")
    result = files(roots, "tar-out", str(src))
    assert result.returncode == 0, result.stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {"proj", "proj/sub", "proj/sub/f.bin", "proj/link"}
        assert members["proj/link"].issym() and members["proj/link"].linkname == "sub/f.bin"
        data = tar.extractfile("proj/sub/f.bin")
        assert data is not None and data.read() == b"\x00\x01"
    dotted = files(roots, "tar-out", str(src), "--arcname", ".")
    with tarfile.open(fileobj=io.BytesIO(dotted.stdout)) as tar:
        assert "./sub/f.bin" in tar.getnames()


def test_tar_out_skips_fifos_and_sockets_and_never_follows_links(roots: dict[str, Path]) -> None:
    src = roots["ws"] / "tree"
    (src / "sub").mkdir(parents=True)
    (src / "a").write_text("a")
    (src / "sub" / "b").write_text("b")
    os.mkfifo(src / "pipe")
    os.mkfifo(src / "sub" / "deep-pipe")
    (src / "to-pipe").symlink_to("pipe")
    (src / "to-outside").symlink_to(roots["outside"])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(src / "sub" / "sock"))
        result = files(roots, "tar-out", str(src))
    assert result.returncode == 0, result.stderr
    assert result.stdout[:512].rstrip(b"\0")  # a plain tar: a header block, no compression magic
    with tarfile.open(fileobj=io.BytesIO(result.stdout), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert sorted(members) == ["tree", "tree/a", "tree/sub", "tree/sub/b", "tree/to-outside", "tree/to-pipe"]
    assert members["tree/to-pipe"].issym() and members["tree/to-pipe"].linkname == "pipe"
    assert members["tree/to-outside"].issym()


def test_tar_out_keeps_hard_links(roots: dict[str, Path]) -> None:
    src = roots["ws"] / "linked"
    src.mkdir()
    (src / "one").write_bytes(b"data")
    os.link(src / "one", src / "two")
    result = files(roots, "tar-out", str(src))
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["linked/one"].isreg() and members["linked/one"].size == 4
    assert members["linked/two"].islnk() and members["linked/two"].linkname == "linked/one"


def test_read_of_a_fifo_fails_at_once(roots: dict[str, Path]) -> None:
    os.mkfifo(roots["ws"] / "pipe")
    report = error_of(files(roots, "read", str(roots["ws"] / "pipe")))
    assert report["errno"] == "EINVAL"


def test_ls_and_stat_print_exactly_one_json_document(roots: dict[str, Path]) -> None:
    (roots["ws"] / "f").write_text("x")
    (roots["ws"] / "odd\nname\x1b").write_text("y")
    for args in (["ls", str(roots["ws"])], ["stat", str(roots["ws"] / "f")], ["ls", str(roots["ws"] / "f")]):
        result = files(roots, *args)
        assert result.returncode == 0
        assert result.stderr == b""
        assert result.stdout.endswith(b"\n") and result.stdout.count(b"\n") == 1, result.stdout
        document = json.loads(result.stdout)
        assert isinstance(document, dict if args[0] == "stat" else list)


@pytest.mark.parametrize("args", [["chmod", "x"], [], ["read", "/no/such/file"], ["stat", "{ws}/missing"]])
def test_failures_print_one_json_line_on_stderr_and_nothing_on_stdout(roots: dict[str, Path],
                                                                      args: list[str]) -> None:
    result = files(roots, *[a.format(ws=roots["ws"]) for a in args])
    assert result.returncode in (1, 2, 64)
    assert result.stdout == b""
    assert result.stderr.endswith(b"\n") and result.stderr.count(b"\n") == 1, result.stderr
    assert set(json.loads(result.stderr)) >= {"error", "message", "path"}


def make_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def reg(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755
    return info, None


def test_tar_in_extracts_files_dirs_and_links(roots: dict[str, Path]) -> None:
    archive = make_tar(special("pkg", tarfile.DIRTYPE), reg("pkg/run.sh", b"#!/bin/sh\n", 0o4755),
                       reg("pkg/data/x.bin", b"\x00\xff"), special("pkg/alias", tarfile.SYMTYPE, "run.sh"),
                       special("pkg/hard", tarfile.LNKTYPE, "pkg/run.sh"))
    dest = roots["ws"] / "dest"
    result = files(roots, "tar-in", str(dest), "--parents", input=archive)
    assert result.returncode == 0, result.stderr
    assert (dest / "pkg" / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((dest / "pkg" / "run.sh").stat().st_mode) == 0o755  # setuid dropped
    assert (dest / "pkg" / "data" / "x.bin").read_bytes() == b"\x00\xff"
    assert os.readlink(dest / "pkg" / "alias") == "run.sh"
    assert (dest / "pkg" / "hard").stat().st_ino == (dest / "pkg" / "run.sh").stat().st_ino


def test_tar_in_round_trips_tar_out(roots: dict[str, Path]) -> None:
    src = roots["ws"] / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(100_000))
    stream = files(roots, "tar-out", str(src), "--arcname", ".").stdout
    dest = roots["tmp"] / "copy"
    assert files(roots, "tar-in", str(dest), "--parents", "--size", str(len(stream)), input=stream).returncode == 0
    assert (dest / "d" / "f").read_bytes() == (src / "d" / "f").read_bytes()


@pytest.mark.parametrize("member", [
    reg("/abs/evil", b"x"),
    reg("../evil", b"x"),
    reg("ok/../../evil", b"x"),
    special("link-out", tarfile.SYMTYPE, "/etc"),
    special("link-up", tarfile.SYMTYPE, "../../outside"),
    special("hard-out", tarfile.LNKTYPE, "../outside/secret"),
    special("hard-abs", tarfile.LNKTYPE, "/etc/passwd"),
    special("dev", tarfile.CHRTYPE),
    special("fifo", tarfile.FIFOTYPE),
], ids=lambda m: m[0].name)
def test_tar_in_rejects_unsafe_members(roots: dict[str, Path], member: tuple[tarfile.TarInfo, bytes | None]) -> None:
    before = sorted(p.name for p in roots["outside"].iterdir())
    result = files(roots, "tar-in", str(roots["ws"]), input=make_tar(member))
    assert result.returncode == 2, result.stderr
    assert error_of(result)["error"] == "UnsafeTarMember"
    assert sorted(p.name for p in roots["outside"].iterdir()) == before
    assert not (roots["ws"].parent / "evil").exists()


def test_tar_in_does_not_write_through_a_link_it_planted(roots: dict[str, Path]) -> None:
    # a link that stays inside is fine, but a later member must not be written through a link leading out
    archive = make_tar(special("inner", tarfile.SYMTYPE, "."), reg("inner/ok", b"1"),
                       special("out", tarfile.SYMTYPE, str(roots["outside"])), reg("out/planted", b"x"))
    result = files(roots, "tar-in", str(roots["ws"]), input=archive)
    assert result.returncode == 2
    assert (roots["ws"] / "ok").read_bytes() == b"1"
    assert not (roots["outside"] / "planted").exists()


def test_tar_in_does_not_follow_an_existing_link_out(roots: dict[str, Path]) -> None:
    (roots["ws"] / "evil").symlink_to(roots["outside"])
    result = files(roots, "tar-in", str(roots["ws"]), input=make_tar(reg("evil/planted", b"x")))
    assert result.returncode == 2
    assert error_of(result)["error"] == "UnsafeTarMember"
    assert not (roots["outside"] / "planted").exists()


def test_tar_in_replaces_an_existing_link_instead_of_writing_through_it(roots: dict[str, Path]) -> None:
    (roots["ws"] / "f").symlink_to(roots["outside"] / "secret")
    result = files(roots, "tar-in", str(roots["ws"]), input=make_tar(reg("f", b"mine")))
    assert result.returncode == 0, result.stderr
    assert not (roots["ws"] / "f").is_symlink()
    assert (roots["ws"] / "f").read_bytes() == b"mine"
    assert (roots["outside"] / "secret").read_text() == "secret"


def test_tar_in_outside_the_roots_is_refused(roots: dict[str, Path]) -> None:
    result = files(roots, "tar-in", str(roots["outside"]), input=make_tar(reg("x", b"x")))
    assert result.returncode == 2
    assert error_of(result)["error"] == "PathOutsideSandbox"
    assert not (roots["outside"] / "x").exists()


def test_tar_in_with_garbage_input_fails_cleanly(roots: dict[str, Path]) -> None:
    report = error_of(files(roots, "tar-in", str(roots["ws"]), input=b"not a tar archive" * 100))
    assert report["error"] in ("ReadError", "TarError", "CompressionError")


# --- sandbox-ready -----------------------------------------------------------------------------------------

def test_sandbox_ready(tmp_path: Path) -> None:
    ok = subprocess.run([str(SANDBOX_READY)], env=clean_env(SANDBOX_WRITABLE_ROOTS=str(tmp_path)),
                        capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run([str(SANDBOX_READY)],
                             env=clean_env(SANDBOX_WRITABLE_ROOTS=f"{tmp_path}:{tmp_path}/missing"),
                             capture_output=True, check=False)
    assert missing.returncode == 1
    assert b"missing" in missing.stderr

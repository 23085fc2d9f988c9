"""How the sandbox image's tools (sandbox-exec, sandbox-agent) start, bound and end commands: stdlib only.

The limits of one command come from the sandbox's own environment ($SANDBOX_COMMAND_TIMEOUT, $SANDBOX_PIDS_LIMIT,
$SANDBOX_FILE_SIZE_LIMIT); a request above them is refused (LimitAboveSandbox). A command starts in a new session
with its limits set (soft and hard alike), SIGPIPE and SIGXFSZ at their defaults and its oom_score_adj raised, or
reports why it could not (exec_command, start_failure). Its processes are found in /proc (scan_processes,
descendants) and signalled by pid.
"""

# /proc and $PATH are read with os on purpose (string paths, no pathlib import time):
# ruff: noqa: PTH113, PTH116, PTH118, PTH123, PTH208

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import time
from collections.abc import Callable, Iterable

from sandbox_tools import UNLIMITED, parse_bytes

EXIT_TIMEOUT = 124
EXIT_USAGE = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

ENV_PIDS_LIMIT = "SANDBOX_PIDS_LIMIT"
ENV_COMMAND_TIMEOUT = "SANDBOX_COMMAND_TIMEOUT"
ENV_FILE_SIZE_LIMIT = "SANDBOX_FILE_SIZE_LIMIT"
DEFAULT_TIMEOUT = 300.0
DEFAULT_FILE_SIZE = 1 << 30
DEFAULT_KILL_AFTER = 2.0
KILL_SWEEP_SECONDS = 10.0  # how long SIGKILL is repeated on a subtree that keeps forking

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36

KILL_SIGNAL_NAMES = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "CONT", "STOP")


class UsageError(Exception):
    pass


class LimitAboveSandbox(Exception):  # noqa: N818 - reported as one line, without the usage text
    pass


# --- limits -----------------------------------------------------------------------------------------------------

def parse_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"invalid {what} {text!r}: expected seconds") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"invalid {what} {text!r}: expected a finite number of seconds >= 0")
    return value


def parse_limit_bytes(text: str, what: str) -> int:
    """A file-size limit: bytes (1Gi, 500M) or "unlimited"."""
    try:
        return parse_bytes(text, what, unlimited=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def parse_count(text: str, what: str) -> int:
    if text == UNLIMITED:
        return resource.RLIM_INFINITY
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"invalid {what} {text!r}: expected a whole number >= 1 or 'unlimited'")
    return int(text)


def parse_signal(text: str, what: str) -> int:
    """A signal by name (TERM, SIGKILL, ...) or number."""
    if text.isdigit() and text.isascii():
        number = int(text)
        if 1 <= number < signal.NSIG:
            return number
    else:
        name = text.upper().removeprefix("SIG")
        if name in KILL_SIGNAL_NAMES:
            return int(getattr(signal, "SIG" + name))
    raise UsageError(f"invalid {what} {text!r}: expected one of {', '.join(KILL_SIGNAL_NAMES)} or a number")


def refuse_above(option: str, value: int, maximum: int | None, unit: str, variable: str) -> None:
    """LimitAboveSandbox when `value` (RLIM_INFINITY = unlimited) is above the sandbox's own `maximum`."""
    if maximum is None or maximum == resource.RLIM_INFINITY:
        return
    if value == resource.RLIM_INFINITY or value > maximum:
        shown = "unlimited" if value == resource.RLIM_INFINITY else str(value)
        raise LimitAboveSandbox(f"{option} {shown} is above this sandbox's limit of {maximum} {unit} ({variable})")


def _sandbox_limit(environ: dict[str, str], name: str) -> str | None:
    value = environ.get(name, "")
    return value if value.strip() else None


class Limits:
    """A command's limits: `timeout` seconds (0 = none), `nproc` processes (None = unchanged), `fsize` bytes
    (RLIM_INFINITY = unlimited)."""

    def __init__(self, timeout: float, nproc: int | None, fsize: int) -> None:
        self.timeout = timeout
        self.nproc = nproc
        self.fsize = fsize


def command_limits(environ: dict[str, str], *, timeout: float | None, nproc: int | None, fsize: int | None,
                   option_prefix: str = "--") -> Limits:
    """The limits of one command: the ones asked for (None = the sandbox's own, from `environ`), refused
    (LimitAboveSandbox, naming `option_prefix` + the option) when above the sandbox's own; UsageError when the
    sandbox's own setting is invalid."""
    timeout_limit = _sandbox_limit(environ, ENV_COMMAND_TIMEOUT)
    max_timeout = parse_seconds(timeout_limit, ENV_COMMAND_TIMEOUT) if timeout_limit is not None else None
    if timeout is not None:
        if max_timeout and (timeout == 0 or timeout > max_timeout):
            shown = "0 (none)" if timeout == 0 else f"{timeout:g}"
            raise LimitAboveSandbox(f"{option_prefix}timeout {shown} is above this sandbox's limit of "
                                    f"{max_timeout:g} seconds ({ENV_COMMAND_TIMEOUT})")
    else:
        timeout = max_timeout if max_timeout is not None else DEFAULT_TIMEOUT

    fsize = _bounded(environ, ENV_FILE_SIZE_LIMIT, parse_limit_bytes, fsize, option_prefix + "fsize", "bytes")
    nproc = _bounded(environ, ENV_PIDS_LIMIT, parse_count, nproc, option_prefix + "nproc", "processes")
    return Limits(timeout, nproc, DEFAULT_FILE_SIZE if fsize is None else fsize)


def _bounded(environ: dict[str, str], variable: str, parse: Callable[[str, str], int], requested: int | None,
             option: str, unit: str) -> int | None:
    """`requested`, refused when above the sandbox's own limit in `variable`; without one, that limit (None
    when the sandbox sets none)."""
    own = _sandbox_limit(environ, variable)
    maximum = parse(own, variable) if own is not None else None
    if requested is None:
        return maximum
    refuse_above(option, requested, maximum, unit, variable)
    return requested


# --- processes --------------------------------------------------------------------------------------------------

class ProcessInfo:
    __slots__ = ("ppid", "sid", "zombie")

    def __init__(self, ppid: int, sid: int, zombie: bool) -> None:
        self.ppid = ppid
        self.sid = sid
        self.zombie = zombie


def read_stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name: state ppid pgrp session ... (OSError when gone)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def scan_processes(until: float | None = None) -> dict[int, ProcessInfo] | None:
    """Every process of /proc; None if the scan ran past `until` (a huge process table)."""
    found: dict[int, ProcessInfo] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for i, name in enumerate(names):
        if name.isdigit():
            try:
                fields = read_stat_fields(int(name))
                found[int(name)] = ProcessInfo(int(fields[1]), int(fields[3]), fields[0] in (b"Z", b"X"))
            except (OSError, ValueError, IndexError):
                pass  # gone meanwhile
        if until is not None and i % 256 == 0 and time.monotonic() > until:
            return None
    return found


def descendants(processes: dict[int, ProcessInfo], roots: Iterable[int]) -> list[int]:
    """The pids below `roots` (the roots themselves excluded), walking parent links."""
    children: dict[int, list[int]] = {}
    for pid, info in processes.items():
        children.setdefault(info.ppid, []).append(pid)
    found: list[int] = []
    pending = list(roots)
    seen = set(pending)
    while pending:
        for child in children.get(pending.pop(), ()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                pending.append(child)
    return found


def signal_pid(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def holds_stream(pid: int, streams: set[tuple[int, int]]) -> bool:
    """Whether process `pid` has a file open whose (st_dev, st_ino) is in `streams` (pipes, sockets)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in streams:
            return True
    return False


def exit_status(returncode: int) -> int:
    """A shell-style exit status: 128+N for a process that signal N ended."""
    return 128 - returncode if returncode < 0 else returncode


# --- starting a command -----------------------------------------------------------------------------------------

def prctl(option: int, value: int) -> None:
    import ctypes  # only here: sandbox-exec --kill does without it

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(option, value, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def lower_limit(which: int, value: int) -> None:
    """Sets soft and hard limit to `value`, but never above the current hard limit (non-root cannot raise)."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY and (value == resource.RLIM_INFINITY or value > hard):
        value = hard
    resource.setrlimit(which, (value, value))


def raise_oom_score() -> None:
    """Makes the command (and what it starts) a likelier OOM victim than the tool that runs it and PID 1: when a
    fork bomb or a memory hog fills the container's memory, the kernel kills a command, never the tool that has
    to enforce the timeout. Raising one's own oom_score_adj needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "r+b", buffering=0) as f:
            current = int(f.read().strip() or 0)
            target = max(current, min(1000, current + 500), 500)
            if target != current:
                f.seek(0)
                f.write(str(target).encode())
    except (OSError, ValueError):
        pass


def find_program(name: str, env: dict[str, str]) -> str:
    """The file execvp() would run for `name`: searched in the command's $PATH unless it holds a "/"."""
    if "/" in name:
        return name
    refused: str | None = None
    for directory in os.get_exec_path(env):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            refused = refused or candidate
    if refused is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), refused)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def leaves_dumpable(program: str) -> bool:
    """Whether execve(program) leaves the process dumpable: the kernel makes it non-dumpable when the file or
    the interpreter of a script is one it cannot read (the tools run by sandbox-python)."""
    for _ in range(5):  # the kernel follows at most 4 interpreters
        try:
            fd = os.open(program, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            head = os.read(fd, 256)
        except OSError:
            return False
        finally:
            os.close(fd)
        if not head.startswith(b"#!"):
            return True
        words = head[2:].split(b"\n", 1)[0].split()
        if not words:
            return False
        program = os.fsdecode(words[0])
    return False


def exec_command(argv: list[str], env: dict[str, str], cwd: str | None, limits: Limits,
                 mask: set[signal.Signals], report_fd: int, default_signals: Iterable[int] = ()) -> None:
    """In the forked child, never returning: `default_signals` (unless ignored), SIGPIPE and SIGXFSZ back at their
    defaults, signal mask `mask`, a new session, the limits, then execve(). A failure is reported on `report_fd`
    as "stage NUL errno NUL message" (the pipe closes on a successful exec).
    (typing.NoReturn would cost its import time on every command.)"""
    stage = "setup"
    try:
        for sig in (*default_signals, signal.SIGPIPE, signal.SIGXFSZ):
            if sig in (signal.SIGPIPE, signal.SIGXFSZ) or signal.getsignal(sig) != signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)  # Python ignores SIGPIPE and SIGXFSZ; commands expect them
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setsid()
        stage = "limits"
        lower_limit(resource.RLIMIT_CORE, 0)
        lower_limit(resource.RLIMIT_FSIZE, limits.fsize)
        if limits.nproc is not None:
            lower_limit(resource.RLIMIT_NPROC, limits.nproc)
        if cwd is not None:
            stage = "cwd"
            os.chdir(cwd)
        stage = "exec"
        program = find_program(argv[0], env)
        # Non-dumpable like the tool that starts it, the child cannot write its /proc/self/oom_score_adj (root's
        # then). It may turn dumpable first only when execve() will leave it dumpable anyway: otherwise another
        # process could open its /proc/PID/fd/1 meanwhile and later forge the output of the non-dumpable tool it
        # becomes.
        if leaves_dumpable(program):
            prctl(PR_SET_DUMPABLE, 1)
            raise_oom_score()
        os.execve(program, argv, env)  # noqa: S606 - ARGV is the command, no shell
    except BaseException as exc:  # whatever it is, the parent reports it
        code = 0
        message = str(exc)
        if isinstance(exc, OSError):
            code = exc.errno or 0
            message = exc.strerror or message
        elif isinstance(exc, ValueError):
            stage = "invalid"
        with contextlib.suppress(OSError):
            os.write(report_fd, f"{stage}\0{code}\0{message}".encode(errors="replace"))
    os._exit(EXIT_CANNOT_EXECUTE)


def start_failure(argv: list[str], cwd: str | None, report: bytes) -> tuple[int, str]:
    """The exit status and diagnostic for a child that could not exec (its report from exec_command)."""
    stage, _, rest = report.decode(errors="replace").partition("\0")
    code_text, _, message = rest.partition("\0")
    code = int(code_text) if code_text.isdigit() else 0
    name = argv[0]
    if stage == "invalid":
        return EXIT_USAGE, f"invalid command or environment: {message}"
    if stage == "cwd":
        return EXIT_USAGE, f"cannot change directory to {cwd!r}: {message}"
    if stage == "limits":
        return EXIT_USAGE, f"cannot set resource limits: {message}"
    if stage != "exec" or code in (errno.EAGAIN, errno.ENOMEM):
        return EXIT_USAGE, f"cannot start {name!r}: {message}"
    if code == errno.ENOENT:
        return EXIT_NOT_FOUND, f"{name}: command not found" if "/" not in name else f"{name}: No such file or directory"
    return EXIT_CANNOT_EXECUTE, f"cannot execute {name!r}: {message}"


def has_null_byte(argv: list[str], env: dict[str, str]) -> str | None:
    """The first argument, name or value holding a NUL byte (execve cannot pass it), or None."""
    for text in (*argv, *env, *env.values()):
        if "\0" in text:
            return text
    return None


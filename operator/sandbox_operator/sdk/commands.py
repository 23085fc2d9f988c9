"""Command results, streaming output and background commands."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.exec import (
    EXIT_TIMEOUT,
    STDERR,
    STDOUT,
    WRAPPER_DIAGNOSTIC_PREFIX,
    DeadlineExceeded,
    ExecConnection,
    StdinPipe,
    status_error,
)

StreamName = Literal["stdout", "stderr"]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class OutputChunk:
    """A piece of output as it arrived."""

    stream: StreamName
    data: bytes

    @property
    def text(self) -> str:
        return _decode(self.data)


@dataclass(frozen=True)
class CommandResult:
    """What a finished command produced.

    ``exit_code`` is the command's own (124 when the exec wrapper killed it for running past its timeout,
    128+N when a signal N ended it). ``timed_out`` says the wrapper's timeout fired. ``stdout``/``stderr`` are
    text (UTF-8, undecodable bytes replaced); ``stdout_bytes``/``stderr_bytes`` are exact.
    """

    command: list[str]
    exit_code: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    duration: float = 0.0
    timed_out: bool = False
    sandbox: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def stdout(self) -> str:
        return _decode(self.stdout_bytes)

    @property
    def stderr(self) -> str:
        return _decode(self.stderr_bytes)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    # Seed-compatible spelling (``result.exitCode`` in the TypeScript SandboxManager).
    @property
    def exitCode(self) -> int:  # noqa: N802
        return self.exit_code

    def check(self) -> CommandResult:
        """Returns self when the command succeeded; raises :class:`CommandTimeout` or :class:`CommandError`."""
        if self.timed_out:
            raise errors.CommandTimeout(
                f"command timed out after {self.duration:.1f}s and was killed: {_shown(self.command)}",
                result=self, reason="CommandTimeout", name=self.sandbox)
        if self.exit_code != 0:
            tail = self.stderr.strip().splitlines()[-1:] or [""]
            raise errors.CommandError(
                f"command exited with code {self.exit_code}: {_shown(self.command)}"
                + (f": {tail[0]}" if tail[0] else ""),
                result=self, reason="NonZeroExitCode", name=self.sandbox)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "exitCode": self.exit_code, "stdout": self.stdout, "stderr": self.stderr,
            "durationSeconds": round(self.duration, 6), "timedOut": self.timed_out,
        }


def _shown(command: Sequence[str]) -> str:
    text = " ".join(command)
    return text if len(text) <= 200 else text[:197] + "..."


def is_wrapper_timeout(exit_code: int | None, stderr: bytes) -> bool:
    """Whether an exit is the wrapper's timeout: code 124 plus the wrapper's own diagnostic line."""
    if exit_code != EXIT_TIMEOUT:
        return False
    for line in _decode(stderr).splitlines():
        low = line.lower()
        if line.startswith(WRAPPER_DIAGNOSTIC_PREFIX) and ("timed out" in low or "timeout" in low):
            return True
    return False


class CommandStream:
    """A running command whose output is consumed as it arrives.

    Iterate it for :class:`OutputChunk` objects; when iteration ends, :attr:`result` is set (output in the
    result is everything that was yielded). Use it as a context manager, or call :meth:`close`, to drop the
    connection early.
    """

    def __init__(
        self,
        open_connection: Callable[[], ExecConnection],
        command: list[str],
        *,
        client_deadline: float | None,
        hold: Callable[[], Any],
        sandbox: str,
        namespace: str,
        timeout_for_message: float | None,
    ) -> None:
        self.command = command
        self.sandbox = sandbox
        self.namespace = namespace
        self.result: CommandResult | None = None
        self._hold_cm = hold()
        self._hold_cm.__enter__()
        self._started = time.monotonic()
        self._deadline = None if client_deadline is None else self._started + client_deadline
        self._timeout = timeout_for_message
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._cancel = threading.Event()
        self._iterating = False
        try:
            self._conn = open_connection()
        except BaseException:
            self._release()
            raise
        self._iter: Generator[OutputChunk, None, None] = self._run()

    def __iter__(self) -> Iterator[OutputChunk]:
        return self

    def __next__(self) -> OutputChunk:
        return next(self._iter)

    def __enter__(self) -> CommandStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _release(self) -> None:
        cm, self._hold_cm = self._hold_cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def close(self) -> None:
        """Stops reading and closes the connection (the command itself is not killed by this)."""
        self._cancel.set()
        self._conn.close()
        self._iter.close()
        self._release()

    def wait(self) -> CommandResult:
        """Reads the rest of the output and returns the result."""
        for _ in self:
            pass
        if self.result is None:
            raise errors.ExecError("the command stream was closed before the command finished",
                                   reason="StreamClosed", name=self.sandbox, namespace=self.namespace)
        return self.result

    def _run(self) -> Generator[OutputChunk, None, None]:
        try:
            try:
                for channel, data in self._conn.frames(self._deadline, self._cancel):
                    if channel == STDOUT:
                        self._stdout += data
                        yield OutputChunk("stdout", data)
                    elif channel == STDERR:
                        self._stderr += data
                        yield OutputChunk("stderr", data)
            except DeadlineExceeded:
                partial = self._make_result(exit_code=-1, timed_out=True)
                raise errors.CommandTimeout(
                    f"no exit status within {self._deadline_seconds():.0f}s (the command's timeout plus a "
                    f"grace period); the connection was closed: {_shown(self.command)}",
                    result=partial, reason="ClientDeadlineExceeded", name=self.sandbox,
                    namespace=self.namespace) from None
            if self._cancel.is_set():
                return
            status = self._conn.status
            if status is None or status.exit_code is None:
                assert status is not None
                raise status_error(status, name=self.sandbox, namespace=self.namespace)
            self.result = self._make_result(
                exit_code=status.exit_code,
                timed_out=is_wrapper_timeout(status.exit_code, bytes(self._stderr)))
        finally:
            self._release()

    def _deadline_seconds(self) -> float:
        return 0.0 if self._deadline is None else self._deadline - self._started

    def _make_result(self, *, exit_code: int, timed_out: bool) -> CommandResult:
        return CommandResult(
            command=self.command, exit_code=exit_code, stdout_bytes=bytes(self._stdout),
            stderr_bytes=bytes(self._stderr), duration=time.monotonic() - self._started, timed_out=timed_out,
            sandbox=self.sandbox)


class CommandHandle:
    """A command running in the background.

    Output is collected as it arrives (:attr:`stdout`, :attr:`stderr` so far; :meth:`chunks` to follow it).
    :meth:`wait` returns the :class:`CommandResult`; :meth:`kill` signals the command's processes in the
    sandbox. With ``stdin=True`` at start, :meth:`send_stdin`/:meth:`close_stdin` feed it.
    """

    def __init__(self, stream: CommandStream, *, kill: Callable[[str], object],
                 stdin: StdinPipe | None = None,
                 on_stdout: Callable[[str], None] | None = None,
                 on_stderr: Callable[[str], None] | None = None) -> None:
        self._stream = stream
        self._kill = kill
        self._stdin = stdin
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._chunks: queue.Queue[OutputChunk | None] = queue.Queue()
        self._error: BaseException | None = None
        self._done = threading.Event()
        self.command = stream.command
        self._thread = threading.Thread(target=self._pump, name=f"command-{stream.sandbox}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for chunk in self._stream:
                if chunk.stream == "stdout":
                    self._stdout += chunk.data
                    if self._on_stdout:
                        self._on_stdout(chunk.text)
                else:
                    self._stderr += chunk.data
                    if self._on_stderr:
                        self._on_stderr(chunk.text)
                self._chunks.put(chunk)
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()
            self._chunks.put(None)

    @property
    def stdout(self) -> str:
        return _decode(bytes(self._stdout))

    @property
    def stderr(self) -> str:
        return _decode(bytes(self._stderr))

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def chunks(self) -> Iterator[OutputChunk]:
        """Output chunks as they arrive (each chunk is delivered once, to one consumer)."""
        while True:
            chunk = self._chunks.get()
            if chunk is None:
                self._chunks.put(None)
                return
            yield chunk

    def send_stdin(self, data: bytes | str) -> None:
        if self._stdin is None:
            raise errors.SandboxError("this command was started without stdin=True", reason="NoStdin")
        self._stdin.write(data)

    def close_stdin(self) -> None:
        if self._stdin is not None:
            self._stdin.close()

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Waits for the command to end; raises :class:`WaitTimeout` if it is still running after
        ``timeout`` seconds (the command keeps running), or the error that ended the stream."""
        if not self._done.wait(timeout):
            raise errors.WaitTimeout(f"command still running after {timeout}s: {_shown(self.command)}",
                                     reason="StillRunning", name=self._stream.sandbox)
        self._thread.join()
        if self._error is not None:
            raise self._error
        result = self._stream.result
        if result is None:
            raise errors.ExecError("the command stream ended without a result", reason="StreamClosed",
                                   name=self._stream.sandbox)
        return result

    def kill(self, signal: str = "KILL", *, wait: float | None = 30) -> CommandResult | None:
        """Sends ``signal`` to every process of this command in the sandbox, then waits up to ``wait``
        seconds for the result (None when ``wait`` is 0)."""
        if self._done.is_set():
            return self.wait() if wait != 0 else None
        self._kill(signal)
        if wait == 0:
            return None
        return self.wait(wait)

    def disconnect(self) -> None:
        """Stops following the command; it keeps running in the sandbox until it ends or times out."""
        self._stream.close()

"""Command results, streaming output and background commands."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Self

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.exec import (
    EXIT_TIMEOUT,
    EXIT_WRAPPER_USAGE,
    STDERR,
    STDOUT,
    WRAPPER_DIAGNOSTIC_PREFIX,
    DeadlineExceeded,
    ExecConnection,
    StdinPipe,
    StdinSource,
    status_error,
)
from sandbox_operator.sdk.text import escape_control

StreamName = Literal["stdout", "stderr"]

DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 * 1024
# The wrapper's own diagnostics are its first (a refusal) or last (a timeout) stderr lines; these many bytes
# of each end of stderr are kept for them even when the output itself is not.
DIAGNOSTIC_BYTES = 4096
LIMIT_REFUSAL = "above this sandbox's limit"


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
    text (UTF-8, undecodable bytes replaced); ``stdout_bytes``/``stderr_bytes`` are exact, and are the head of
    the output when it was longer than the cap: ``stdout_truncated``/``stderr_truncated`` then say so and
    ``stdout_dropped``/``stderr_dropped`` count the bytes that were received and not kept. ``cpu_seconds`` (user
    plus system) and ``peak_rss_bytes`` are the command's resource use from ``wait4()``, when the command ran over
    the channel (None otherwise).
    """

    command: list[str]
    exit_code: int
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    duration: float = 0.0
    timed_out: bool = False
    sandbox: str | None = None
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def stdout(self) -> str:
        return _decode(self.stdout_bytes)

    @property
    def stderr(self) -> str:
        return _decode(self.stderr_bytes)

    @property
    def truncated(self) -> bool:
        """Whether stdout or stderr is only the head of what the command wrote."""
        return self.stdout_truncated or self.stderr_truncated

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

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
                + (f": {escape_control(tail[0], limit=200)}" if tail[0] else ""),
                result=self, reason="NonZeroExitCode", name=self.sandbox)
        return self

    def to_dict(self) -> dict[str, Any]:
        out = {
            "command": self.command, "exitCode": self.exit_code, "stdout": self.stdout, "stderr": self.stderr,
            "durationSeconds": round(self.duration, 6), "timedOut": self.timed_out,
            "stdoutTruncated": self.stdout_truncated, "stderrTruncated": self.stderr_truncated,
            "stdoutDropped": self.stdout_dropped, "stderrDropped": self.stderr_dropped,
        }
        if self.cpu_seconds is not None:
            out["cpuSeconds"] = self.cpu_seconds
        if self.peak_rss_bytes is not None:
            out["peakRssBytes"] = self.peak_rss_bytes
        return out


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


def wrapper_refusal(exit_code: int | None, stderr: bytes) -> str | None:
    """The wrapper's refusal of a limit above the sandbox's own (exit 125, its first stderr line), or None."""
    if exit_code != EXIT_WRAPPER_USAGE:
        return None
    first = _decode(stderr).split("\n", 1)[0]
    if first.startswith(WRAPPER_DIAGNOSTIC_PREFIX + " ") and LIMIT_REFUSAL in first:
        return escape_control(first, limit=500)
    return None


class FollowedCommand(Protocol):
    """What :func:`follow` reads: a command's output chunks, then its result (CommandStream, ChannelCommand)."""

    @property
    def sandbox(self) -> str: ...

    @property
    def namespace(self) -> str | None: ...

    @property
    def result(self) -> CommandResult | None: ...

    def __iter__(self) -> Iterator[OutputChunk]: ...


class RunningCommand(FollowedCommand, Protocol):
    """A command whose output is read as it arrives: :class:`CommandStream` (one exec of its own) or
    :class:`~sandbox_operator.sdk.channel.ChannelCommand` (over the sandbox's channel). What ``Sandbox.stream``
    returns and what :class:`CommandHandle` follows."""

    @property
    def command(self) -> list[str]: ...

    @property
    def command_id(self) -> str | None: ...

    def kept_output(self) -> tuple[bytes, bytes]:
        """The stdout and stderr kept so far (up to the caps)."""
        ...

    def kill(self, signal: str | int = "KILL") -> int: ...

    def close(self) -> None: ...

    def wait(self) -> CommandResult: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def follow(stream: FollowedCommand, on_stdout: Callable[[str], None] | None = None,
           on_stderr: Callable[[str], None] | None = None) -> CommandResult:
    """Reads a command's output to its end, passing each chunk to the callback of its stream, and returns the
    command's result."""
    for chunk in stream:
        if chunk.stream == "stdout" and on_stdout is not None:
            on_stdout(chunk.text)
        elif chunk.stream == "stderr" and on_stderr is not None:
            on_stderr(chunk.text)
    if stream.result is None:
        raise errors.ExecError("the command stream was closed before the command finished",
                               reason="StreamClosed", name=stream.sandbox, namespace=stream.namespace)
    return stream.result


def start_stdin(stdin: bool | StdinSource) -> tuple[StdinPipe | None, StdinSource | None]:
    """``start()``'s stdin: True opens a pipe (fed by ``send_stdin``), False means none, anything else is the
    command's whole input. Returns the pipe (or None) and the source to send."""
    if stdin is True:
        pipe = StdinPipe()
        return pipe, pipe
    if stdin is False:
        return None, None
    return None, stdin


class _Kept:
    """The first ``limit`` bytes of one output stream, and how many bytes past them were dropped."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"an output cap cannot be negative, got {limit}")
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.limit - len(self.data)
        if room >= len(chunk):
            self.data += chunk
            return
        if room > 0:
            self.data += chunk[:room]
        self.dropped += len(chunk) - max(room, 0)

    def release(self) -> None:
        self.data = bytearray()


class CommandStream:
    """A running command whose output is consumed as it arrives.

    Iterate it for :class:`OutputChunk` objects; when iteration ends, :attr:`result` is set. A stream passes
    output through and keeps none of it (the result's output is empty and its ``*_dropped`` counts say how
    much went by) unless it was opened with a cap (``run()`` does), then it keeps the head up to the cap.
    Use it as a context manager, or call :meth:`close`, to drop the connection early; :meth:`kill` signals
    the command's processes in the sandbox.
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
        max_output: int = 0,
        max_stderr: int | None = None,
        command_id: str | None = None,
        kill: Callable[[str | int], int] | None = None,
    ) -> None:
        self.command = command
        self.command_id = command_id
        self.sandbox = sandbox
        self.namespace = namespace
        self.result: CommandResult | None = None
        self._kill = kill
        self._stdout = _Kept(max_output)
        self._stderr = _Kept(max_output if max_stderr is None else max_stderr)
        self._stderr_head = bytearray()
        self._stderr_tail = b""
        self._hold_cm = hold()
        self._hold_cm.__enter__()
        self._started = time.monotonic()
        self._deadline = None if client_deadline is None else self._started + client_deadline
        self._timeout = timeout_for_message
        self._cancel = threading.Event()
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

    def kill(self, signal: str | int = "KILL") -> int:
        """Sends ``signal`` to every process of this command in the sandbox; returns how many were signalled
        (0 when the command had already ended). Output keeps arriving until the command ends."""
        if self._kill is None:
            raise errors.SandboxError("this command was started without a command id and cannot be killed",
                                      reason="NotKillable", name=self.sandbox, namespace=self.namespace)
        return self._kill(signal)

    def wait(self) -> CommandResult:
        """Reads the rest of the output and returns the result."""
        return follow(self)

    def kept_output(self) -> tuple[bytes, bytes]:
        return bytes(self._stdout.data), bytes(self._stderr.data)

    def _note_stderr(self, data: bytes) -> None:
        if len(self._stderr_head) < DIAGNOSTIC_BYTES:
            self._stderr_head += data[:DIAGNOSTIC_BYTES - len(self._stderr_head)]
        self._stderr_tail = (self._stderr_tail + data[-DIAGNOSTIC_BYTES:])[-DIAGNOSTIC_BYTES:]

    def _run(self) -> Generator[OutputChunk, None, None]:
        try:
            try:
                for channel, data in self._conn.frames(self._deadline, self._cancel):
                    if channel == STDOUT:
                        self._stdout.add(data)
                        yield OutputChunk("stdout", data)
                    elif channel == STDERR:
                        self._stderr.add(data)
                        self._note_stderr(data)
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
            refusal = wrapper_refusal(status.exit_code, bytes(self._stderr_head))
            if refusal is not None:
                raise errors.ExecError(refusal, reason="LimitAboveSandbox", name=self.sandbox,
                                       namespace=self.namespace)
            self.result = self._make_result(
                exit_code=status.exit_code, timed_out=is_wrapper_timeout(status.exit_code, self._stderr_tail))
            # The result holds the output now; keeping the buffers too would hold it twice.
            self._stdout.release()
            self._stderr.release()
        finally:
            self._release()

    def _deadline_seconds(self) -> float:
        return 0.0 if self._deadline is None else self._deadline - self._started

    def _make_result(self, *, exit_code: int, timed_out: bool) -> CommandResult:
        return CommandResult(
            command=self.command, exit_code=exit_code, stdout_bytes=bytes(self._stdout.data),
            stderr_bytes=bytes(self._stderr.data), duration=time.monotonic() - self._started, timed_out=timed_out,
            sandbox=self.sandbox, stdout_truncated=self._stdout.dropped > 0,
            stderr_truncated=self._stderr.dropped > 0, stdout_dropped=self._stdout.dropped,
            stderr_dropped=self._stderr.dropped)


class _ChunkQueue:
    """Chunks waiting for :meth:`CommandHandle.chunks`, at most ``max_bytes`` of them.

    Past the bound the OLDEST chunks are dropped (and counted), so output nobody reads cannot grow memory and
    a reader who comes late follows the most recent output. ``None`` marks the end and is never dropped.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.dropped_chunks = 0
        self.dropped_bytes = 0
        self._items: deque[OutputChunk | None] = deque()
        self._bytes = 0
        self._ready = threading.Condition()

    def put(self, chunk: OutputChunk) -> None:
        with self._ready:
            self._items.append(chunk)
            self._bytes += len(chunk.data)
            while self._bytes > self.max_bytes and self._items and self._items[0] is not None:
                old = self._items.popleft()
                assert old is not None
                self._bytes -= len(old.data)
                self.dropped_chunks += 1
                self.dropped_bytes += len(old.data)
            self._ready.notify()

    def end(self) -> None:
        with self._ready:
            self._items.append(None)
            self._ready.notify_all()

    def get(self) -> OutputChunk | None:
        """The next chunk, waiting for one; None (and again None) once the output has ended."""
        with self._ready:
            self._ready.wait_for(lambda: bool(self._items))
            chunk = self._items[0]
            if chunk is not None:
                self._items.popleft()
                self._bytes -= len(chunk.data)
            return chunk


class CommandHandle:
    """A command running in the background.

    :attr:`stdout`/:attr:`stderr` are the output so far, kept up to the command's output cap (the head, as in
    :class:`CommandResult`). :meth:`chunks` follows the output; chunks not yet taken are held up to the same
    cap, past which the oldest are dropped and counted in :attr:`dropped_chunks`/:attr:`dropped_chunk_bytes`.
    :meth:`wait` returns the :class:`CommandResult`; :meth:`kill` signals the command's processes in the
    sandbox. With ``stdin=True`` at start, :meth:`send_stdin`/:meth:`close_stdin` feed it.
    """

    def __init__(self, stream: RunningCommand, *, max_queued_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                 stdin: StdinPipe | None = None,
                 on_stdout: Callable[[str], None] | None = None,
                 on_stderr: Callable[[str], None] | None = None) -> None:
        self._stream = stream
        self._stdin = stdin
        self._on_stdout = on_stdout
        self._on_stderr = on_stderr
        self._chunks = _ChunkQueue(max_queued_bytes)
        self._error: BaseException | None = None
        self._done = threading.Event()
        self.command = stream.command
        self.command_id = stream.command_id
        self._thread = threading.Thread(target=self._pump, name=f"command-{stream.sandbox}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for chunk in self._stream:
                if chunk.stream == "stdout":
                    if self._on_stdout:
                        self._on_stdout(chunk.text)
                elif self._on_stderr:
                    self._on_stderr(chunk.text)
                self._chunks.put(chunk)
        except BaseException as exc:
            self._error = exc
        finally:
            self._done.set()
            self._chunks.end()

    @property
    def stdout(self) -> str:
        result = self._stream.result
        return result.stdout if result is not None else _decode(self._stream.kept_output()[0])

    @property
    def stderr(self) -> str:
        result = self._stream.result
        return result.stderr if result is not None else _decode(self._stream.kept_output()[1])

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def dropped_chunks(self) -> int:
        """Chunks :meth:`chunks` will never deliver because nobody took them in time."""
        return self._chunks.dropped_chunks

    @property
    def dropped_chunk_bytes(self) -> int:
        return self._chunks.dropped_bytes

    def chunks(self) -> Iterator[OutputChunk]:
        """Output chunks as they arrive (each chunk is delivered once, to one consumer)."""
        while (chunk := self._chunks.get()) is not None:
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

    def kill(self, signal: str | int = "KILL", *, wait: float | None = 30) -> CommandResult | None:
        """Sends ``signal`` to every process of this command in the sandbox, then waits up to ``wait``
        seconds for the result (None when ``wait`` is 0)."""
        if self._done.is_set():
            return self.wait() if wait != 0 else None
        self._stream.kill(signal)
        if wait == 0:
            return None
        return self.wait(wait)

    def disconnect(self) -> None:
        """Stops following the command; it keeps running in the sandbox until it ends or times out."""
        self._stream.close()

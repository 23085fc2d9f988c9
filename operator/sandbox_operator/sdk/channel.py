"""A persistent channel to a sandbox: many commands and file operations in flight over one byte stream.

The in-image agent (``/usr/local/bin/sandbox-agent``) is started once per channel through one long-lived
``pods/exec`` stream and speaks the framed protocol of :mod:`sandbox_operator.sdk.protocol` on that stream's
stdin and stdout (docs/channel.md). :class:`Channel` is the client side; it works over any :class:`Transport`
(``write``/``read``/``close``): :class:`PodExecTransport` is one ``pods/exec`` WebSocket (opened with the official
client's WebSocket helpers), and the unit tests use a local process's pipes. The SDK's ``Sandbox`` keeps one channel
per sandbox and falls back to one exec per command where there is no agent (:mod:`sandbox_operator.sdk.transport`).

Every frame from the agent is treated as hostile: sizes are bounded, the output on each stream is flow-controlled
(the agent may send at most a window of bytes beyond what the client has taken), JSON answers are parsed
strictly, and any violation breaks the channel. A dead or stopped agent is noticed by end of stream or by the ping
timeout; every call in flight then raises :class:`~sandbox_operator.sdk.errors.ChannelBroken`, and
:attr:`Channel.usable` turns False so the caller opens a new channel. An image without the agent makes the
constructor raise :class:`~sandbox_operator.sdk.errors.AgentUnavailable`: use one exec per command instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import IO, Any, Protocol

import websocket

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk import protocol as p
from sandbox_operator.sdk.code import CodeError, CodeResult, MimeBundle, check_context_name, decode_bundle
from sandbox_operator.sdk.commands import (
    DEFAULT_MAX_OUTPUT_BYTES,
    CommandHandle,
    CommandResult,
    OutputChunk,
    _Kept,
    _shown,
    follow,
    start_stdin,
)
from sandbox_operator.sdk.exec import ERROR as EXEC_STATUS
from sandbox_operator.sdk.exec import STDERR as EXEC_STDERR
from sandbox_operator.sdk.exec import STDIN as EXEC_STDIN
from sandbox_operator.sdk.exec import STDOUT as EXEC_STDOUT
from sandbox_operator.sdk.exec import (
    StdinSource,
    _checked_signal,
    _stdin_chunks,
    open_exec_websocket,
    parse_exec_status,
    shell_argv,
    wrapper_argv,
)
from sandbox_operator.sdk.files import MAX_LISTING_BYTES, FileInfo, parse_listing, report_error
from sandbox_operator.sdk.text import escape_control

log = logging.getLogger(__name__)

DEFAULT_PING_INTERVAL = 5.0
DEFAULT_PING_TIMEOUT = 15.0
DEFAULT_HELLO_TIMEOUT = 30.0
INPUT_CHUNK = 256 * 1024  # one INPUT frame
CREDIT_BATCH = p.WINDOW // 4  # output credit is granted back in pieces at least this big
MAX_DIAGNOSTIC = 64 * 1024  # what a transport keeps of the agent's stderr and exec status
SIGNAL_TIMEOUT = 30.0  # a SIGNAL request is answered after one sweep of /proc
AGENT_NAME = "sandbox-agent"  # the prefix of the diagnostics on a command's stderr, as "sandbox-exec:" without it


class Transport(Protocol):
    """A byte stream to the agent: ``write`` sends everything (blocking), ``read`` returns 1 to ``n`` bytes or
    b"" at the end of the stream, ``close`` ends it (and unblocks a ``read``). ``diagnostic`` is what the other
    end said besides the protocol (the agent's stderr, the exec's status), for error messages."""

    def write(self, data: bytes) -> None: ...

    def read(self, n: int) -> bytes: ...

    def close(self) -> None: ...

    def diagnostic(self) -> str: ...


# Streams -----------------------------------------------------------------------------------------------------

class _Stream:
    """The client's side of one stream. The channel's reader thread feeds it (:meth:`feed`); the caller's thread
    takes output (:meth:`take`), sends input (:meth:`send_input`) and waits for the answer (:meth:`answer`)."""

    accepts: frozenset[int] = frozenset({p.RESULT, p.ERROR})
    data_kinds: frozenset[int] = frozenset({p.STDOUT, p.STDERR})  # counted against the window
    max_final = p.MAX_CONTROL  # the size of the final frame's JSON

    def __init__(self, channel: Channel, what: str) -> None:
        self.channel = channel
        self.what = what
        self.id = 0
        self.cond = threading.Condition()
        self.inbox: deque[tuple[int, bytes]] = deque()
        self.recv_window = p.WINDOW  # output bytes the agent may still send
        self.unreturned = 0  # output taken and not yet granted back
        self.send_credit = p.WINDOW  # input bytes the client may still send
        self.ended = False
        self.final: p.Frame | None = None  # EXIT, RESULT or ERROR
        self.error: errors.SandboxError | None = None
        self.discarding = False  # nobody takes the output any more: it is dropped as it arrives

    # Reader thread ---------------------------------------------------------------------------------------

    def feed(self, frame: p.Frame) -> None:
        """Takes one frame for this stream; ProtocolError when the agent may not send it here."""
        kind = frame.kind
        if kind not in self.accepts:
            raise p.ProtocolError(f"{p.frame_name(kind)} on {self.what} stream {self.id}")
        if kind == p.CREDIT:
            if len(frame.payload) != 4:
                raise p.ProtocolError(f"a CREDIT frame of {len(frame.payload)} bytes")
            with self.cond:
                self.send_credit += int.from_bytes(frame.payload, "big")
                self.cond.notify_all()
            return
        if kind in self.data_kinds:
            size = len(frame.payload)
            with self.cond:
                if size > self.recv_window:
                    raise p.ProtocolError(f"{size} bytes of output on stream {self.id} with a window of "
                                          f"{self.recv_window}")
                self.recv_window -= size
            self.check_data(frame)  # within the window: nothing beyond it is ever parsed
            with self.cond:
                if not self.discarding:
                    self.inbox.append((kind, frame.payload))
                    self.cond.notify_all()
            if self.discarding:
                self.taken(size)
            return
        self.check_final(frame)
        with self.cond:
            self.final = frame
            self.ended = True
            self.cond.notify_all()

    def check_data(self, frame: p.Frame) -> None:
        """Validates a data frame (in the reader thread, so a malformed one breaks the channel)."""

    def check_final(self, frame: p.Frame) -> None:
        """Validates the final frame (in the reader thread, so a malformed one breaks the channel)."""
        if len(frame.payload) > self.max_final:
            raise p.ProtocolError(f"a {p.frame_name(frame.kind)} frame of {len(frame.payload)} bytes on {self.what} "
                                  f"stream {self.id} (at most {self.max_final})")
        if frame.kind == p.ERROR:
            p.parse_error(frame.payload)

    def fail(self, error: errors.SandboxError) -> None:
        with self.cond:
            if not self.ended:
                self.error = error
                self.ended = True
            self.cond.notify_all()

    # Caller's thread -------------------------------------------------------------------------------------

    def take(self, deadline: float | None = None) -> tuple[int, bytes] | None:
        """The next output (STDOUT or STDERR, bytes), waiting for it; None once the stream has ended or its
        output is discarded. TimeoutError when ``deadline`` (a ``time.monotonic()`` value) passes first."""
        with self.cond:
            while not self.inbox and not self.ended and not self.discarding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self.cond.wait(remaining)
            if not self.inbox:
                return None
            return self.inbox.popleft()

    def taken(self, size: int) -> None:
        """Grants ``size`` bytes of output back to the agent (in batches)."""
        with self.cond:
            if self.ended or size <= 0:
                return
            self.unreturned += size
            if self.unreturned < CREDIT_BATCH:
                return
            amount, self.unreturned = self.unreturned, 0
            self.recv_window += amount  # before the agent can use it
        with contextlib.suppress(errors.ChannelBroken):  # the stream fails with the channel
            self.channel._send(p.encode_credit(self.id, amount))

    def discard(self) -> None:
        """Stops taking output: what is queued and what arrives later is dropped (and granted back)."""
        with self.cond:
            self.discarding = True
            queued = sum(len(data) for _kind, data in self.inbox)
            self.inbox.clear()
            self.cond.notify_all()
        self.taken(queued)

    def send_input(self, data: bytes) -> None:
        """Sends input within the credit the agent granted, waiting for more when it is used up. Once the stream
        has ended the rest is not needed and is dropped."""
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            with self.cond:
                while self.send_credit <= 0 and not self.ended:
                    self.cond.wait()
                if self.ended:
                    if self.error is not None:
                        raise self.error
                    return
                size = min(self.send_credit, INPUT_CHUNK, len(view) - offset)
                self.send_credit -= size
            self.channel._send(p.encode(p.INPUT, self.id, bytes(view[offset:offset + size])))
            offset += size

    def end_input(self) -> None:
        with self.cond:
            if self.ended:
                return
        self.channel._send(p.encode(p.INPUT_END, self.id))

    def answer(self) -> p.Frame:
        """Waits for the final frame; raises the channel's error when it broke first."""
        with self.cond:
            while not self.ended:
                self.cond.wait()
        if self.error is not None:
            raise self.error
        assert self.final is not None
        return self.final


class ChannelCommand(_Stream):
    """A command running over the channel, shaped like :class:`~sandbox_operator.sdk.commands.CommandStream`.

    Iterate it for :class:`OutputChunk` objects as they arrive (the agent sends more only as they are taken);
    when iteration ends, :attr:`result` holds the :class:`CommandResult` with the command's CPU seconds and peak
    RSS. :meth:`close` stops reading (the command runs on); :meth:`kill` signals all of its processes.
    """

    accepts = frozenset({p.STDOUT, p.STDERR, p.CREDIT, p.EXIT, p.ERROR})

    def __init__(self, channel: Channel, command: list[str], *, max_output: int, max_stderr: int | None,
                 client_deadline: float | None, hold: Callable[[], Any] | None = None,
                 timeout: float | None = None) -> None:
        super().__init__(channel, "command")
        self.command = command
        self.timeout = timeout
        self.command_id: str | None = None
        self.sandbox = channel.sandbox
        self.namespace = channel.namespace
        self.result: CommandResult | None = None
        self._stdout = _Kept(max_output)
        self._stderr = _Kept(max_output if max_stderr is None else max_stderr)
        self._started = time.monotonic()
        self._client_deadline = client_deadline
        self._deadline = None if client_deadline is None else self._started + client_deadline
        self._closed = False
        self._done = False
        self._stdin_error: BaseException | None = None
        self._hold = hold() if hold is not None else None
        if self._hold is not None:
            self._hold.__enter__()

    def _release(self) -> None:
        held, self._hold = self._hold, None
        if held is not None:
            held.__exit__(None, None, None)

    def check_final(self, frame: p.Frame) -> None:
        if frame.kind == p.EXIT:
            p.parse_payload(p.ExitReport, frame.payload, "EXIT")
        else:
            super().check_final(frame)

    def __iter__(self) -> Iterator[OutputChunk]:
        return self

    def __next__(self) -> OutputChunk:
        if self._done or self._closed:
            raise StopIteration
        try:
            item = self.take(self._deadline)
        except TimeoutError:
            self._done = True
            self._release()
            raise self._gave_up() from None
        if item is None:
            self._done = True
            self._release()
            if not self._closed and (note := self._finish()):
                return OutputChunk("stderr", note)
            raise StopIteration
        kind, data = item
        self.taken(len(data))
        if kind == p.STDOUT:
            self._stdout.add(data)
            return OutputChunk("stdout", data)
        self._stderr.add(data)
        return OutputChunk("stderr", data)

    def __enter__(self) -> ChannelCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gave_up(self) -> errors.CommandTimeout:
        """The client's own deadline passed (the agent should have ended the command long before): the command
        is killed and its output dropped."""
        try:
            self.kill("KILL")
        except errors.SandboxError:
            log.debug("killing command %s after the client deadline failed", self.id, exc_info=True)
        self.discard()
        partial = self._result(exit_code=-1, timed_out=True, report=None)
        return errors.CommandTimeout(
            f"no exit status within {self._client_deadline or 0:.0f}s (the command's timeout plus a grace "
            f"period); the command was killed: {_shown(self.command)}", result=partial,
            reason="ClientDeadlineExceeded", name=self.sandbox, namespace=self.namespace)

    def _finish(self) -> bytes:
        """Sets the result from the final frame, or raises what ended the stream. Returns the line that says the
        command timed out (also added to its stderr), as sandbox-exec prints it, or b"" when it did not."""
        if isinstance(self.error, errors.ChannelBroken):
            raise errors.ChannelBroken(
                f"{self.error.message}; the command was cut off and is not retried (it may have run in part): "
                f"{_shown(self.command)}", reason=self.error.reason, name=self.sandbox, namespace=self.namespace)
        if self.error is not None:
            raise self.error
        assert self.final is not None
        if self.final.kind == p.ERROR:
            report = p.parse_error(self.final.payload)
            raise errors.ExecError(escape_control(report.message, limit=500), reason=escape_control(
                report.error, limit=100), name=self.sandbox, namespace=self.namespace)
        exit_report = p.parse_payload(p.ExitReport, self.final.payload, "EXIT")
        note = b""
        if exit_report.timed_out:
            limit = "its timeout" if self.timeout is None else f"{self.timeout:g}s"
            note = f"{AGENT_NAME}: command timed out after {limit}; its processes were killed\n".encode()
            self._stderr.add(note)
        self.result = self._result(exit_code=exit_report.exit_code, timed_out=exit_report.timed_out,
                                   report=exit_report)
        # The result holds the output now; keeping the buffers too would hold it twice.
        self._stdout.release()
        self._stderr.release()
        return note

    def _result(self, *, exit_code: int, timed_out: bool, report: p.ExitReport | None) -> CommandResult:
        return CommandResult(
            command=self.command, exit_code=exit_code, stdout_bytes=bytes(self._stdout.data),
            stderr_bytes=bytes(self._stderr.data), duration=time.monotonic() - self._started, timed_out=timed_out,
            sandbox=self.sandbox, stdout_truncated=self._stdout.dropped > 0,
            stderr_truncated=self._stderr.dropped > 0, stdout_dropped=self._stdout.dropped,
            stderr_dropped=self._stderr.dropped,
            cpu_seconds=None if report is None else report.cpu_seconds,
            peak_rss_bytes=None if report is None else report.peak_rss_bytes)

    def close(self) -> None:
        """Stops reading; the command itself runs on (to its end or timeout), its output dropped."""
        self._closed = True
        self._release()
        self.discard()

    def kill(self, signal: str | int = "KILL") -> int:
        """Sends ``signal`` to every process of this command; returns how many were signalled (0 when it had
        already ended). Output keeps arriving until the command ends."""
        with self.cond:
            if self.ended:
                return 0
        return self.channel._signal(self.id, signal)

    def wait(self) -> CommandResult:
        """Reads the rest of the output and returns the result."""
        return follow(self)

    def kept_output(self) -> tuple[bytes, bytes]:
        return bytes(self._stdout.data), bytes(self._stderr.data)

    def feed_stdin(self, source: StdinSource) -> None:
        """Sends ``source`` as the command's whole input, then its end (for a :class:`StdinPipe`: what is
        written to it until it is closed)."""
        try:
            for chunk in _stdin_chunks(source):
                self.send_input(chunk)
            self.end_input()
        except BaseException as exc:
            self._stdin_error = exc
            log.debug("feeding stdin of command %s failed", self.id, exc_info=True)


class _Request(_Stream):
    """A file operation or a signal: output (for read, ls, tar-out), input (write, tar-in), then its answer."""

    def __init__(self, channel: Channel, what: str, accepts: frozenset[int]) -> None:
        super().__init__(channel, what)
        self.accepts = accepts


class ChannelCodeRun(_Stream):
    """A cell running in a code context: its output and display outputs as they arrive (each counted against the
    stream's window, like a command's output), then its RESULT. :meth:`follow` reads it to the end."""

    accepts = frozenset({p.STDOUT, p.STDERR, p.DISPLAY, p.RESULT, p.ERROR})
    data_kinds = frozenset({p.STDOUT, p.STDERR, p.DISPLAY})
    max_final = p.MAX_PAYLOAD  # the last expression's bundle may be large (a table's HTML, a PNG)

    def __init__(self, channel: Channel, context: str, *, max_output: int, client_deadline: float | None,
                 turn: threading.Lock) -> None:
        super().__init__(channel, "code")
        self.context = context
        # The context's turn, held until the stream ends (not until the caller stops reading: after an interrupt
        # the agent still runs the cell for a moment, and the next cell must wait for it).
        self._turn: threading.Lock | None = turn
        self._max_output = max_output
        self._stdout = _Kept(max_output)
        self._stderr = _Kept(max_output)
        self._displays: list[MimeBundle] = []
        self._display_bytes = 0
        self._displays_dropped = 0
        self._started = time.monotonic()
        self._client_deadline = client_deadline
        self._deadline = None if client_deadline is None else self._started + client_deadline

    def feed(self, frame: p.Frame) -> None:
        super().feed(frame)
        if self.ended:
            self.end_turn()

    def fail(self, error: errors.SandboxError) -> None:
        super().fail(error)
        self.end_turn()

    def end_turn(self) -> None:
        with self.cond:
            turn, self._turn = self._turn, None
        if turn is not None:
            turn.release()

    def check_data(self, frame: p.Frame) -> None:
        if frame.kind == p.DISPLAY:
            decode_bundle(p.parse_payload(p.DisplayReport, frame.payload, "DISPLAY").data)

    def check_final(self, frame: p.Frame) -> None:
        if frame.kind == p.RESULT:
            super().check_final(frame)  # its size
            p.parse_payload(p.CodeRunReport, frame.payload, "RESULT")
        else:
            super().check_final(frame)

    def take(self, deadline: float | None = None) -> tuple[int, bytes] | None:
        # A display output is sent only whole, once the credit covers it: everything taken goes back before
        # waiting, or a large one could wait for credit held back in a batch.
        with self.cond:
            idle = not self.inbox and not self.ended and self.unreturned > 0
            amount = self.unreturned if idle else 0
            if idle:
                self.unreturned = 0
                self.recv_window += amount
        if amount:
            with contextlib.suppress(errors.ChannelBroken):  # the stream fails with the channel
                self.channel._send(p.encode_credit(self.id, amount))
        return super().take(deadline)

    def follow(self, on_stdout: Callable[[str], None] | None, on_stderr: Callable[[str], None] | None,
               on_display: Callable[[MimeBundle], None] | None) -> CodeResult:
        """Reads the cell to its end, passing each piece to its callback as it arrives; its result. Whatever ends
        the reading early (a KeyboardInterrupt, a callback's exception) interrupts the cell (CANCEL) and drops the
        rest of its output on its way out: nobody would read it, and the cell would block on it."""
        try:
            while (item := self._next()) is not None:
                kind, data = item
                self.taken(len(data))
                if kind == p.DISPLAY:
                    bundle = decode_bundle(p.parse_payload(p.DisplayReport, data, "DISPLAY").data)
                    self._keep_display(bundle)
                    if on_display is not None:
                        on_display(bundle)
                    continue
                kept, callback = (self._stdout, on_stdout) if kind == p.STDOUT else (self._stderr, on_stderr)
                kept.add(data)
                if callback is not None:
                    callback(data.decode("utf-8", "replace"))
        except BaseException:
            self.cancel()
            raise
        return self._finish()

    def _next(self) -> tuple[int, bytes] | None:
        try:
            return self.take(self._deadline)
        except TimeoutError:
            self.cancel()
            raise errors.ExecError(
                f"no result within {self._client_deadline or 0:.0f}s (the cell's timeout plus a grace period) in "
                f"context {self.context!r} of sandbox {self.channel.sandbox}; the cell was interrupted",
                reason="ClientDeadlineExceeded", name=self.channel.sandbox,
                namespace=self.channel.namespace) from None

    def cancel(self) -> None:
        """Interrupts the cell (KeyboardInterrupt in it; killed after a grace) and drops what else it sends."""
        self.discard()
        with self.cond:
            if self.ended:
                return
        with contextlib.suppress(errors.ChannelBroken):
            self.channel._send(p.encode(p.CANCEL, self.id))

    def _keep_display(self, bundle: MimeBundle) -> None:
        size = sum(len(entry) for entry in bundle.values())
        if self._display_bytes + size > self._max_output:
            self._displays_dropped += 1
            return
        self._display_bytes += size
        self._displays.append(bundle)

    def _finish(self) -> CodeResult:
        sandbox, namespace = self.channel.sandbox, self.channel.namespace
        if isinstance(self.error, errors.ChannelBroken):
            raise errors.ChannelBroken(
                f"{self.error.message}; the cell was cut off and is not retried (it may have run in part)",
                reason=self.error.reason, name=sandbox, namespace=namespace)
        if self.error is not None:
            raise self.error
        assert self.final is not None
        if self.final.kind == p.ERROR:
            report = p.parse_error(self.final.payload)
            if report.error == "NoSuchContext":
                self.channel._forget_code_context(self.context)
            raise errors.ExecError(escape_control(report.message, limit=500),
                                   reason=escape_control(report.error, limit=100), name=sandbox, namespace=namespace)
        answer = p.parse_payload(p.CodeRunReport, self.final.payload, "RESULT")
        error = None if answer.error is None else CodeError(answer.error.ename, answer.error.evalue,
                                                            list(answer.error.traceback))
        result = CodeResult(
            status=answer.status, execution_count=answer.execution_count, text=answer.text,
            data=decode_bundle(answer.data), displays=self._displays, error=error,
            stdout_bytes=bytes(self._stdout.data), stderr_bytes=bytes(self._stderr.data), state=answer.state,
            context=self.context, duration=time.monotonic() - self._started, sandbox=sandbox,
            stdout_dropped=self._stdout.dropped, stderr_dropped=self._stderr.dropped,
            displays_dropped=self._displays_dropped)
        self._stdout.release()
        self._stderr.release()
        return result


# The channel --------------------------------------------------------------------------------------------------

class Channel:
    """The client side of a channel to a sandbox's agent. Thread-safe: any number of threads may run commands
    and file operations on it at once.

    The constructor waits for the agent's HELLO: :class:`AgentUnavailable` when the stream ended before it (no
    agent in the image: the transport's diagnostic says why) or when the agent speaks another protocol version;
    :class:`ChannelBroken` when none came within ``hello_timeout``. A ping is sent when nothing has arrived for
    ``ping_interval`` seconds; when nothing arrives for ``ping_timeout`` seconds after it, the channel breaks.
    """

    def __init__(self, transport: Transport, *, sandbox: str | None = None, namespace: str | None = None,
                 shell: str = "/bin/bash", ping_interval: float = DEFAULT_PING_INTERVAL,
                 ping_timeout: float = DEFAULT_PING_TIMEOUT, hello_timeout: float = DEFAULT_HELLO_TIMEOUT) -> None:
        if ping_interval <= 0 or ping_timeout <= 0 or hello_timeout <= 0:
            raise ValueError("ping_interval, ping_timeout and hello_timeout must be positive")
        self.sandbox = sandbox or "sandbox"
        self.namespace = namespace
        self.shell = shell
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.hello: p.Hello | None = None
        self._transport = transport
        self._frames = p.FrameReader(transport.read)
        self._lock = threading.Lock()  # the streams and the channel's state
        self._write_lock = threading.Lock()  # one frame at a time on the transport
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._broken: errors.ExecError | None = None
        self._last_received = time.monotonic()
        self._probe_since: float | None = None  # when a ping was wanted and nothing has arrived since
        self._stopped = threading.Event()
        self._greeted = threading.Event()
        # The code contexts opened on this channel (its agent's), each with the lock its cells take in turn.
        self._code_contexts: dict[str, threading.Lock] = {}
        self._code_contexts_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, name=f"channel-read-{self.sandbox}", daemon=True)
        self._reader.start()
        if not self._greeted.wait(hello_timeout):
            self._fail(errors.ChannelBroken(f"the agent of sandbox {self.sandbox} did not say HELLO within "
                                            f"{hello_timeout:g}s", reason="HelloTimeout", name=self.sandbox,
                                            namespace=namespace))
        if self._broken is not None:
            raise self._broken
        self._keepalive = threading.Thread(target=self._keepalive_loop, name=f"channel-ping-{self.sandbox}",
                                           daemon=True)
        self._keepalive.start()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "usable" if self.usable else f"broken ({self._broken})"
        return f"Channel(sandbox={self.sandbox!r}, {state})"

    @property
    def usable(self) -> bool:
        """False once the channel broke or was closed: open a new one for the next call."""
        return self._broken is None

    @property
    def broken(self) -> errors.ExecError | None:
        """Why the channel is unusable (None while it is usable)."""
        return self._broken

    def close(self) -> None:
        """Ends the channel: calls in flight raise :class:`ChannelBroken` (reason ``Closed``). The agent kills
        the commands that were not started as background ones."""
        self._fail(errors.ChannelBroken("the channel was closed", reason="Closed", name=self.sandbox,
                                        namespace=self.namespace))

    # Reading -----------------------------------------------------------------------------------------------

    def _read_loop(self) -> None:
        error: errors.ExecError
        try:
            self._greet()
            while True:
                frame = self._frames.next()
                if frame is None:
                    raise errors.ChannelBroken(self._ended_message("the agent ended the channel"),
                                               reason="AgentExited", name=self.sandbox, namespace=self.namespace)
                self._last_received = time.monotonic()
                self._probe_since = None
                self._dispatch(frame)
        except errors.ExecError as exc:
            error = exc
        except p.ProtocolError as exc:
            error = errors.ChannelBroken(f"the agent of sandbox {self.sandbox} broke the channel protocol: {exc}",
                                         reason="ProtocolError", name=self.sandbox, namespace=self.namespace)
        except Exception as exc:  # the transport failed: the stream was cut
            error = errors.ChannelBroken(f"the channel to sandbox {self.sandbox} broke: {exc}",
                                         reason="StreamBroken", name=self.sandbox, namespace=self.namespace)
        self._fail(error)

    def _greet(self) -> None:
        """Reads HELLO; AgentUnavailable when the stream does not start with one this client speaks."""
        try:
            frame = self._frames.next()
        except p.ProtocolError as exc:
            raise errors.AgentUnavailable(f"what sandbox {self.sandbox} sent is not the channel protocol: {exc}",
                                          reason="NotAnAgent", name=self.sandbox, namespace=self.namespace) from None
        if frame is None:
            reason = "AgentMissing" if not self._frames.received_any else "NotAnAgent"
            raise errors.AgentUnavailable(self._ended_message(f"{constants.AGENT_PROGRAM} did not start"),
                                          reason=reason, name=self.sandbox, namespace=self.namespace)
        if frame.kind != p.HELLO or frame.stream != 0:
            raise errors.AgentUnavailable(f"sandbox {self.sandbox} began with {p.frame_name(frame.kind)}, not HELLO",
                                          reason="NotAnAgent", name=self.sandbox, namespace=self.namespace)
        try:
            version = json.loads(frame.payload).get("protocol")
        except (ValueError, AttributeError):
            version = None
        if version != p.PROTOCOL_VERSION:
            raise errors.AgentUnavailable(
                f"the agent of sandbox {self.sandbox} speaks channel protocol {escape_control(str(version), limit=20)}"
                f"; this client speaks {p.PROTOCOL_VERSION}", reason="UnsupportedProtocol", name=self.sandbox,
                namespace=self.namespace)
        try:
            self.hello = p.parse_payload(p.Hello, frame.payload, "HELLO")
        except p.ProtocolError as exc:
            raise errors.AgentUnavailable(str(exc), reason="NotAnAgent", name=self.sandbox,
                                          namespace=self.namespace) from None
        if self.hello.window != p.WINDOW or self.hello.max_payload != p.MAX_PAYLOAD:
            raise errors.AgentUnavailable(
                f"the agent of sandbox {self.sandbox} uses a window of {self.hello.window} and frames of up to "
                f"{self.hello.max_payload} bytes; protocol {p.PROTOCOL_VERSION} has {p.WINDOW} and {p.MAX_PAYLOAD}",
                reason="UnsupportedProtocol", name=self.sandbox, namespace=self.namespace)
        self._greeted.set()

    def _ended_message(self, what: str) -> str:
        said = ""
        try:
            said = self._transport.diagnostic()
        except Exception:
            log.debug("reading the transport's diagnostic failed", exc_info=True)
        said = escape_control(said.strip(), limit=500)
        return f"{what} (sandbox {self.sandbox})" + (f": {said}" if said else "")

    def _dispatch(self, frame: p.Frame) -> None:
        if frame.stream == 0:
            if frame.kind == p.PONG and len(frame.payload) <= p.MAX_PING:
                return
            if frame.kind == p.ERROR:
                report = p.parse_error(frame.payload)
                raise errors.ChannelBroken(f"the agent of sandbox {self.sandbox} gave up the channel: "
                                           f"{escape_control(report.message, limit=500)}", reason="AgentError",
                                           name=self.sandbox, namespace=self.namespace)
            raise p.ProtocolError(f"{p.frame_name(frame.kind)} on stream 0")
        with self._lock:
            stream = self._streams.get(frame.stream)
        if stream is None:
            raise p.ProtocolError(f"{p.frame_name(frame.kind)} for stream {frame.stream}, which is not open")
        stream.feed(frame)
        if stream.ended:
            with self._lock:
                self._streams.pop(frame.stream, None)

    # Writing, keep-alive, failure ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._copy(self._broken)
        with self._write_lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Writes one frame (the caller holds the write lock)."""
        try:
            self._transport.write(data)
        except Exception as exc:
            error = errors.ChannelBroken(f"writing to the channel of sandbox {self.sandbox} failed: {exc}",
                                        reason="StreamBroken", name=self.sandbox, namespace=self.namespace)
            self._fail(error)
            raise self._copy(self._broken or error) from exc

    def _keepalive_loop(self) -> None:
        tick = min(self.ping_interval, self.ping_timeout) / 4
        count = 0
        while not self._stopped.wait(tick):
            now = time.monotonic()
            probe = self._probe_since
            if probe is not None and now - probe > self.ping_timeout:
                self._fail(errors.ChannelBroken(
                    f"the agent of sandbox {self.sandbox} has not answered for {now - probe:.1f}s (ping timeout "
                    f"{self.ping_timeout:g}s): it was stopped or killed, or the stream is stuck",
                    reason="PingTimeout", name=self.sandbox, namespace=self.namespace))
                return
            if probe is None and now - self._last_received >= self.ping_interval:
                self._probe_since = now
                # A writer stuck on a full stream holds the lock: the probe stands, and times out.
                if self._write_lock.acquire(timeout=tick):
                    count += 1
                    try:
                        self._transport.write(p.encode(p.PING, 0, count.to_bytes(8, "big")))
                    except Exception:
                        log.debug("sending a ping failed", exc_info=True)
                    finally:
                        self._write_lock.release()

    def _fail(self, error: errors.ExecError) -> None:
        with self._lock:
            if self._broken is None:
                self._broken = error
            streams = list(self._streams.values())
            self._streams.clear()
        self._stopped.set()
        self._greeted.set()
        for stream in streams:
            stream.fail(self._copy(self._broken))
        try:
            self._transport.close()
        except Exception:
            log.debug("closing the channel's transport failed", exc_info=True)

    @staticmethod
    def _copy(error: errors.ExecError) -> errors.ExecError:
        """A fresh exception per caller (one instance raised in many threads would share its traceback)."""
        return type(error)(error.message, reason=error.reason, name=error.name, namespace=error.namespace)

    def _open(self, stream: _Stream, kind: int, request: dict[str, Any]) -> None:
        payload = json.dumps(request, separators=(",", ":")).encode()
        if len(payload) > p.MAX_PAYLOAD:
            raise ValueError(f"the request is {len(payload)} bytes of JSON; at most {p.MAX_PAYLOAD} fit a frame")
        # The agent takes only ever higher stream ids: numbering and sending are one step.
        with self._write_lock:
            with self._lock:
                if self._broken is not None:
                    unsent = self._copy(self._broken)
                    if isinstance(unsent, errors.ChannelBroken):
                        unsent.request_sent = False  # nothing of this request was written: safe to retry
                    raise unsent
                stream.id = self._next_id
                self._next_id += 1
                self._streams[stream.id] = stream
            self._write(p.encode(kind, stream.id, payload))

    # Commands ----------------------------------------------------------------------------------------------

    def _argv(self, command: str | Sequence[str], shell: str | None) -> list[str]:
        if isinstance(command, str):
            return shell_argv(command, shell or self.shell)
        argv = list(command)
        if not argv:
            raise ValueError("empty command")
        return argv

    def stream(self, command: str | Sequence[str], *, timeout: float | None = None,
               env: Mapping[str, str] | None = None, cwd: str | None = None, stdin: StdinSource | None = None,
               shell: str | None = None, nproc: int | None = None, fsize: int | None = None,
               background: bool = False, max_output: int = 0, max_stderr: int | None = None,
               client_deadline: float | None = None, hold: Callable[[], Any] | None = None) -> ChannelCommand:
        """Starts a command; iterate the returned :class:`ChannelCommand` for its output.

        A string runs under ``shell -c``; a list is an argv. ``timeout``, ``nproc`` and ``fsize`` (bytes) are
        enforced in the sandbox and may not be above the sandbox's own limits (``ExecError`` reason
        ``LimitAboveSandbox`` when they are). ``stdin`` is the command's whole input (bytes, text, a binary file,
        an iterable of chunks, or a :class:`StdinPipe` written to later); without it the command reads
        /dev/null. ``background=True`` lets the command outlive the channel. ``max_output`` bytes of stdout and
        of stderr are kept for the result (``max_stderr`` overrides for stderr); ``client_deadline`` seconds
        bound the wait on the client side (the agent ends the command at its timeout long before). ``hold``
        makes a context manager entered now and left when the command's stream ends (the SDK's activity
        hold)."""
        argv = self._argv(command, shell)
        wrapper_argv(argv, timeout=timeout, cwd=cwd, env=env, nproc=nproc, fsize=fsize)  # the same checks
        request: dict[str, Any] = {"argv": argv, "stdin": stdin is not None, "background": background}
        for key, value in (("timeout", timeout), ("cwd", cwd), ("env", dict(env) if env else None),
                           ("nproc", nproc), ("fsize", fsize)):
            if value is not None:
                request[key] = value
        stream = ChannelCommand(self, argv, max_output=max_output, max_stderr=max_stderr,
                                client_deadline=client_deadline, hold=hold, timeout=timeout)
        try:
            self._open(stream, p.RUN, request)
        except BaseException:
            stream._release()
            raise
        stream.command_id = str(stream.id)
        if stdin is not None:
            if isinstance(stdin, str):
                stdin = stdin.encode()
            if isinstance(stdin, bytes) and len(stdin) <= p.WINDOW:
                stream.feed_stdin(stdin)  # within the first window: never waits for credit
            else:
                threading.Thread(target=stream.feed_stdin, args=(stdin,), name=f"channel-stdin-{stream.id}",
                                 daemon=True).start()
        return stream

    def run(self, command: str | Sequence[str], *, timeout: float | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None, stdin: StdinSource | None = None,
            check: bool = False, shell: str | None = None, nproc: int | None = None, fsize: int | None = None,
            on_stdout: Callable[[str], None] | None = None, on_stderr: Callable[[str], None] | None = None,
            max_output: int = DEFAULT_MAX_OUTPUT_BYTES, client_deadline: float | None = None) -> CommandResult:
        """Runs a command to completion: the head of stdout and of stderr (``max_output`` bytes each), exit code,
        duration, timed-out flag, CPU seconds and peak RSS. Callbacks see all output as it arrives, in this
        thread. A non-zero exit or a timeout raises only with ``check=True``."""
        with self.stream(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin, shell=shell, nproc=nproc,
                         fsize=fsize, max_output=max_output, client_deadline=client_deadline) as stream:
            result = follow(stream, on_stdout, on_stderr)
        return result.check() if check else result

    def start(self, command: str | Sequence[str], *, timeout: float | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None, stdin: bool | StdinSource = False,
              shell: str | None = None, nproc: int | None = None, fsize: int | None = None,
              background: bool = True, on_stdout: Callable[[str], None] | None = None,
              on_stderr: Callable[[str], None] | None = None,
              max_output: int = DEFAULT_MAX_OUTPUT_BYTES) -> CommandHandle:
        """Starts a command in the background and returns the same :class:`CommandHandle` as
        ``Sandbox.start``: ``wait``, ``chunks``, ``kill``, and with ``stdin=True`` ``send_stdin``/
        ``close_stdin``. By default it outlives the channel (``background=True``)."""
        pipe, source = start_stdin(stdin)
        stream = self.stream(command, timeout=timeout, env=env, cwd=cwd, stdin=source, shell=shell, nproc=nproc,
                             fsize=fsize, background=background, max_output=max_output)
        return CommandHandle(stream, max_queued_bytes=max_output, stdin=pipe, on_stdout=on_stdout,
                             on_stderr=on_stderr)

    def _signal(self, target: int, signal: str | int) -> int:
        name = _checked_signal(signal)
        request = _Request(self, "signal", frozenset({p.RESULT, p.ERROR}))
        self._open(request, p.SIGNAL, {"target": target, "signal": name})
        answer = request.answer()
        if answer.kind == p.ERROR:
            report = p.parse_error(answer.payload)
            raise errors.ExecError(f"killing command {target} failed: {escape_control(report.message, limit=300)}",
                                   reason="KillFailed", name=self.sandbox, namespace=self.namespace)
        return p.parse_payload(p.SignalResult, answer.payload, "RESULT").signalled

    # Code contexts -----------------------------------------------------------------------------------------
    # Each is an interpreter of the agent's (sandbox-code): it lives as long as this channel, so a context is
    # opened on the channel the first time it is used there.

    def run_code(self, context: str, code: str, *, timeout: float | None = None, cwd: str | None = None,
                 env: Mapping[str, str] | None = None, on_stdout: Callable[[str], None] | None = None,
                 on_stderr: Callable[[str], None] | None = None,
                 on_display: Callable[[MimeBundle], None] | None = None,
                 max_output: int = DEFAULT_MAX_OUTPUT_BYTES, client_deadline: float | None = None) -> CodeResult:
        """Runs one cell in the code context (opened first, with ``cwd`` and ``env``, when this channel has not
        opened it). Cells of one context run one at a time; other contexts run at once.

        ``timeout`` (default and maximum: the sandbox's command timeout) interrupts the cell with a
        KeyboardInterrupt, and 2 s later kills the interpreter (the result says ``state`` ``lost``). Callbacks see the
        output and display outputs as they arrive, in this thread; ``max_output`` bytes of stdout, of stderr and of
        display outputs are kept for the result. A refusal (a timeout above the sandbox's limit, an interpreter that
        cannot start) is :class:`ExecError` naming the reason. A KeyboardInterrupt here, or an exception of a
        callback, interrupts the cell too."""
        check_context_name(context)
        if not isinstance(code, str):
            raise TypeError(f"code must be a string, not {type(code).__name__}")
        if timeout is not None and not 0 <= timeout < float("inf"):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, not {timeout!r}")
        request: dict[str, Any] = {"context": context, "code": code}
        if timeout is not None:
            request["timeout"] = timeout
        turn = self._code_context(context, cwd, env)
        turn.acquire()
        stream = ChannelCodeRun(self, context, max_output=max_output, client_deadline=client_deadline, turn=turn)
        try:
            self._open(stream, p.CODE_RUN, request)
        except BaseException:
            stream.end_turn()
            raise
        return stream.follow(on_stdout, on_stderr, on_display)

    def restart_code_context(self, context: str, *, cwd: str | None = None,
                             env: Mapping[str, str] | None = None) -> None:
        """A fresh interpreter for the context (opened with ``cwd`` and ``env`` if this channel has not opened it);
        a cell running in it ends with status ``lost``."""
        with self._code_contexts_lock:
            if context in self._code_contexts:
                self._code_request(p.CODE_RESTART, "restarting", {"context": check_context_name(context)})
            else:
                self._open_code_context(context, cwd, env)

    def close_code_context(self, context: str) -> None:
        """Ends the context's interpreter and its processes (nothing to do when this channel has not opened it)."""
        with self._code_contexts_lock:
            if self._code_contexts.pop(context, None) is not None:
                self._code_request(p.CODE_CLOSE, "closing", {"context": context})

    def _code_context(self, context: str, cwd: str | None, env: Mapping[str, str] | None) -> threading.Lock:
        """The lock of the context's cells; the context is opened first when this channel has not opened it."""
        with self._code_contexts_lock:
            lock = self._code_contexts.get(context)
            return lock if lock is not None else self._open_code_context(context, cwd, env)

    def _open_code_context(self, context: str, cwd: str | None, env: Mapping[str, str] | None) -> threading.Lock:
        """Opens it (the caller holds the contexts' lock); the lock of its cells."""
        body: dict[str, Any] = {"context": check_context_name(context)}
        if cwd is not None:
            body["cwd"] = cwd
        if env:
            body["env"] = dict(env)
        try:
            self._code_request(p.CODE_OPEN, "opening", body)
        except errors.ExecError as exc:
            if exc.reason != "ContextExists":  # open already (an answer this client missed): the same outcome
                raise
        lock = self._code_contexts[context] = threading.Lock()
        return lock

    def _forget_code_context(self, context: str) -> None:
        """The agent does not know the context (any more): the next call opens it again."""
        with self._code_contexts_lock:
            self._code_contexts.pop(context, None)

    def _code_request(self, kind: int, verb: str, body: dict[str, Any]) -> None:
        request = _Request(self, f"code {verb}", frozenset({p.RESULT, p.ERROR}))
        self._open(request, kind, body)
        answer = request.answer()
        if answer.kind == p.ERROR:
            report = p.parse_error(answer.payload)
            raise errors.ExecError(f"{verb} code context {body['context']!r} failed: "
                                   f"{escape_control(report.message, limit=500)}",
                                   reason=escape_control(report.error, limit=100), name=self.sandbox,
                                   namespace=self.namespace)
        p.parse_payload(p.EmptyResult, answer.payload, "RESULT")

    # Files -------------------------------------------------------------------------------------------------
    # Paths are the caller's (the SDK's Files checks them first); the agent resolves each one and refuses any
    # outside the writable roots. Errors are those of Files: FileError and its subclasses.

    def _file_request(self, op: str, path: str, *, receives: bool = False, sends: bool = False,
                      timeout: float | None = None, **fields: Any) -> _Request:
        accepts = {p.RESULT, p.ERROR} | ({p.STDOUT} if receives else set()) | ({p.CREDIT} if sends else set())
        request = _Request(self, f"file {op}", frozenset(accepts))
        body = {"op": op, "path": path, **{k: v for k, v in fields.items() if v is not None}}
        if timeout is not None:
            body["timeout"] = timeout
        self._open(request, p.FILE, body)
        return request

    def _file_answer(self, request: _Request, path: str) -> p.Frame:
        answer = request.answer()
        if answer.kind == p.ERROR:
            raise report_error(p.parse_error(answer.payload), path=path, sandbox=self.sandbox)
        return answer

    def _receive(self, request: _Request, path: str, max_bytes: int, sink: Callable[[bytes], object]) -> int:
        """Passes the operation's output to ``sink``; FileTooLarge (and the operation cancelled) past
        ``max_bytes``. Returns the number of bytes."""
        size = 0
        while (item := request.take()) is not None:
            data = item[1]
            size += len(data)
            if size > max_bytes:
                request.discard()
                with contextlib.suppress(errors.ChannelBroken):
                    self._send(p.encode(p.CANCEL, request.id))
                raise errors.FileTooLarge(f"{path} is over the cap of {max_bytes} bytes", path=path,
                                          reason="FileTooLarge", name=self.sandbox, namespace=self.namespace)
            sink(data)
            request.taken(len(data))
        self._file_answer(request, path)
        return size

    def read_file(self, path: str, *, max_bytes: int, sink: IO[bytes] | None = None,
                  timeout: float | None = None) -> bytes:
        """The file's bytes (b"" when they went to ``sink``); FileTooLarge past ``max_bytes``."""
        request = self._file_request("read", path, receives=True, max_bytes=max_bytes, timeout=timeout)
        chunks: list[bytes] = []
        self._receive(request, path, max_bytes, chunks.append if sink is None else sink.write)
        return b"".join(chunks)

    def write_file(self, path: str, data: bytes | IO[bytes], *, mode: int | None = 0o644, parents: bool = True,
                   timeout: float | None = None) -> None:
        """Writes atomically (a temporary file renamed into place). ``mode`` None keeps an existing file's."""
        size = len(data) if isinstance(data, bytes) else None
        request = self._file_request("write", path, sends=True, mode=mode, parents=parents, size=size,
                                     timeout=timeout)
        self._send_all(request, data)
        self._file_answer(request, path)

    def _send_all(self, request: _Request, data: bytes | IO[bytes]) -> None:
        if isinstance(data, bytes):
            request.send_input(data)
        else:
            while chunk := data.read(INPUT_CHUNK):
                request.send_input(chunk)
        request.end_input()

    def stat(self, path: str) -> FileInfo:
        answer = self._file_answer(self._file_request("stat", path), path)
        return p.parse_payload(p.StatResult, answer.payload, "RESULT").entry

    def exists(self, path: str) -> bool:
        answer = self._file_answer(self._file_request("exists", path), path)
        return p.parse_payload(p.ExistsResult, answer.payload, "RESULT").exists

    def list_dir(self, path: str) -> list[FileInfo]:
        """The entries of a directory (a file lists itself), sorted by name."""
        request = self._file_request("ls", path, receives=True)
        chunks: list[bytes] = []
        self._receive(request, path, MAX_LISTING_BYTES, chunks.append)
        return sorted(parse_listing(b"".join(chunks), path=path, sandbox=self.sandbox), key=lambda f: f.name)

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> None:
        self._file_answer(self._file_request("mkdir", path, parents=parents, mode=mode), path)

    def remove(self, path: str, *, recursive: bool = False, timeout: float | None = None) -> None:
        self._file_answer(self._file_request("rm", path, recursive=recursive, timeout=timeout), path)

    def tar_out(self, path: str, sink: IO[bytes], *, max_bytes: int, arcname: str | None = None,
                timeout: float | None = None) -> int:
        """Writes a plain tar of ``path`` to ``sink`` (symlinks as symlinks; FIFOs, sockets, devices skipped);
        returns its size. FileTooLarge past ``max_bytes``."""
        request = self._file_request("tar-out", path, receives=True, arcname=arcname, timeout=timeout)
        return self._receive(request, path, max_bytes, sink.write)

    def tar_in(self, directory: str, source: bytes | IO[bytes], *, parents: bool = True,
               timeout: float | None = None) -> None:
        """Extracts a tar into ``directory``; a member that would land outside it is refused
        (PathOutsideSandbox)."""
        request = self._file_request("tar-in", directory, sends=True, parents=parents, timeout=timeout)
        self._send_all(request, source)
        self._file_answer(request, directory)


# The exec stream as a transport -------------------------------------------------------------------------------

class PodExecTransport:
    """The stdin and stdout of one ``pods/exec`` WebSocket (:func:`~sandbox_operator.sdk.exec.open_exec_websocket`)
    as a :class:`Transport`: exec channel 0 carries what is written, channel 1 what is read; the agent's stderr
    (channel 2) and the exec's status (channel 3) are kept, bounded, for :meth:`diagnostic`.

    One thread reads while others write (the channel serializes its writes): the WebSocket's sending and receiving
    sides are independent. :meth:`close` shuts the socket down, which wakes a blocked reader and a writer stuck on a
    full stream at once; the agent then sees the end of its stdin. The socket's descriptor is closed only once no
    thread is in a read or a write: OpenSSL keeps the descriptor's number while it reads or writes without the
    GIL, and a number closed under it can meanwhile belong to another file of the process (a subprocess's pipe
    once received TLS records that way)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._buffer = bytearray()
        self._stderr = bytearray()
        self._status = bytearray()
        self._failure = ""
        self._ended = False
        self._closed = False
        self._lock = threading.Lock()
        self._in_use = 0
        self._released = False

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        """Around each use of the socket: the last user out after :meth:`close` closes it."""
        with self._lock:
            self._in_use += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_use -= 1
                release = self._closed and self._in_use == 0
            if release:
                self._release()

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        try:
            self._ws.shutdown()
        except Exception:
            log.debug("closing the exec stream failed", exc_info=True)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise OSError("the exec stream is closed")
        try:
            with self._using():
                self._ws.send(bytes((EXEC_STDIN,)) + data, opcode=websocket.ABNF.OPCODE_BINARY)
        except (OSError, websocket.WebSocketException) as exc:
            raise OSError(f"the exec stream broke: {exc}") from exc

    def read(self, n: int) -> bytes:
        while not self._buffer:
            if self._ended or self._closed:
                return b""
            payload = self._next_stdout()
            if payload is not None and len(payload) <= n:
                return payload  # the common case: no copy through the buffer
            if payload is not None:
                self._buffer += payload
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _next_stdout(self) -> bytes | None:
        """Receives one WebSocket message: the agent's stdout, or None (another channel, or the end)."""
        try:
            with self._using():
                opcode, frame = self._ws.recv_data_frame(True)
        except websocket.WebSocketConnectionClosedException:
            self._ended = True
            return None
        except (OSError, websocket.WebSocketException) as exc:
            if not self._closed:
                self._failure = f"the exec stream broke: {exc}"
            self._ended = True
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self._ended = True
            return None
        data: bytes = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
        if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT) or len(data) < 2:
            return None
        channel, payload = data[0], data[1:]
        if channel == EXEC_STDOUT:
            return payload
        if channel in (EXEC_STDERR, EXEC_STATUS):
            kept = self._stderr if channel == EXEC_STDERR else self._status
            kept += payload[:max(0, MAX_DIAGNOSTIC - len(kept))]
        return None  # a v5 CLOSE of one of the server's channels, or a resize echo

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            idle = self._in_use == 0
        try:
            self._ws.abort()  # shutdown(SHUT_RDWR): wakes a reader and a stuck writer, who then close it
        except Exception:
            log.debug("shutting the exec stream down failed", exc_info=True)
        if idle:
            self._release()

    def diagnostic(self) -> str:
        parts = []
        if self._status:
            status = parse_exec_status(bytes(self._status))
            if status.exit_code != 0 and status.message:
                parts.append(status.message)
        if self._stderr:
            parts.append(self._stderr.decode("utf-8", "replace"))
        if self._failure:
            parts.append(self._failure)
        return "; ".join(part.strip() for part in parts if part.strip())


AGENT_CONNECT_ATTEMPTS = 3
AGENT_CONNECT_BACKOFF = 0.2


def _open_agent_websocket(api_client: Any, namespace: str, pod: str, program: str, *, container: str,
                          sandbox: str) -> Any:
    """Opens the agent's stream, trying again when the connection itself fails (the API server may drop a fresh
    connection, for example while it is busy). Retrying is safe here as it is not for a user's command: an agent
    whose client went away reads end of input and exits, having run nothing."""
    for attempt in range(1, AGENT_CONNECT_ATTEMPTS + 1):
        try:
            return open_exec_websocket(api_client, namespace, pod, [program], container=container, stdin=True,
                                       sandbox=sandbox)
        except errors.ExecError as exc:
            if exc.reason != "ConnectionFailed" or attempt == AGENT_CONNECT_ATTEMPTS:
                raise
            log.debug("opening the agent's stream failed (attempt %d): %s", attempt, exc.message)
            time.sleep(AGENT_CONNECT_BACKOFF * attempt)
    raise AssertionError("unreachable")


def pod_exec_transport(api_client: Any, namespace: str, pod: str, *, container: str,
                       program: str = constants.AGENT_PROGRAM, sandbox: str | None = None) -> PodExecTransport:
    """Starts the agent in the pod's container through one ``pods/exec`` WebSocket and returns that stream as a
    transport; pass it to :class:`Channel`. ``api_client`` is a ``kubernetes.client.ApiClient`` (only its
    configuration and URL building are used: other threads may go on using it).

    Refusals are the SDK's errors (:class:`SandboxNotFound` for a missing pod, :class:`SandboxForbidden`,
    :class:`ExecError`), and :class:`AgentUnavailable` (reason ``AgentMissing``) when the exec is refused because
    the program is not in the image. Usually a missing program shows later, as a stream that ends before any byte
    with the runtime's complaint in the exec status: :class:`Channel` tells that apart."""
    try:
        ws = _open_agent_websocket(api_client, namespace, pod, program, container=container, sandbox=sandbox or pod)
    except errors.ExecError as exc:
        lowered = exc.message.lower()
        if program in exc.message and ("no such file" in lowered or "not found" in lowered):
            raise errors.AgentUnavailable(f"the image of pod {pod} has no {program}: {exc.message}",
                                          reason="AgentMissing", name=sandbox, namespace=namespace) from exc
        raise
    # Read by one thread for as long as the channel lives: the keep-alive, not a socket timeout, tells a silent
    # stream from a stuck one.
    ws.settimeout(None)
    return PodExecTransport(ws)


__all__ = ["Channel", "ChannelCodeRun", "ChannelCommand", "PodExecTransport", "Transport", "pod_exec_transport"]

"""The exec transport: one Kubernetes ``pods/exec`` WebSocket per command, binary-safe.

Channels (``v5.channel.k8s.io``/``v4.channel.k8s.io``): 0 stdin, 1 stdout, 2 stderr, 3 error (a
``metav1.Status`` carrying the exit code), 4 resize; on v5 a frame ``[255, n]`` closes channel ``n``, which is
how stdin reaches EOF. Frames are read raw off the socket, so bytes are never decoded as text.

Every command is wrapped by the image's exec wrapper (:data:`sandbox_operator.constants.EXEC_WRAPPER`), so the
per-command timeout and limits always apply; :func:`wrapper_argv` builds that argv.
"""

from __future__ import annotations

import logging
import queue
import re
import select
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Final

import websocket
from kubernetes import client
from kubernetes.stream import ws_client as _ws_client

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk._kube import error_from_status, status_from_body

log = logging.getLogger(__name__)
ws_client: Any = _ws_client  # untyped module

STDIN: Final = 0
STDOUT: Final = 1
STDERR: Final = 2
ERROR: Final = 3
RESIZE: Final = 4
CLOSE: Final = 255
V5_PROTOCOL: Final = "v5.channel.k8s.io"
V4_PROTOCOL: Final = "v4.channel.k8s.io"

STDIN_CHUNK = 256 * 1024
SOCKET_STALL_TIMEOUT = 300.0  # a frame that starts but never finishes
POLL_INTERVAL = 0.5

# Exit codes of the exec wrapper (see images/sandbox): 124 timeout, 125 usage error, 126 cannot execute,
# 127 not found, 128+N killed by signal N.
EXIT_TIMEOUT: Final = 124
EXIT_WRAPPER_USAGE: Final = 125
EXIT_CANNOT_EXECUTE: Final = 126
EXIT_NOT_FOUND: Final = 127
WRAPPER_DIAGNOSTIC_PREFIX: Final = "sandbox-exec:"
# ``sandbox-exec --kill ID``: 3 when no command with that ID runs (it already ended).
EXIT_KILL_NO_COMMAND: Final = 3
MAX_STATUS_BYTES = 64 * 1024  # channel 3 carries one small metav1.Status

COMMAND_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SIGNAL_NAMES = frozenset({"TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "CONT", "STOP"})

@dataclass(frozen=True)
class ExecStatus:
    """What channel 3 said: the exit code, or why there is none."""

    exit_code: int | None
    reason: str | None = None
    message: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def parse_exec_status(raw: bytes | str | Mapping[str, Any] | None) -> ExecStatus:
    """Turns the error channel's ``metav1.Status`` into an exit code.

    ``Success`` is 0; ``Failure`` with reason ``NonZeroExitCode`` carries the code in the ``ExitCode`` cause;
    any other failure (the runtime could not start the process, the container is gone...) has no exit code.
    """
    if raw is None or raw in (b"", ""):
        return ExecStatus(None, "NoStatus", "the exec stream ended without reporting an exit status")
    if isinstance(raw, Mapping):
        status: dict[str, Any] = dict(raw)
    else:
        status = status_from_body(raw)
    if status.get("status") == "Success":
        return ExecStatus(0, raw=status)
    reason = status.get("reason")
    message = status.get("message")
    causes = (status.get("details") or {}).get("causes") or []
    if reason == "NonZeroExitCode":
        for cause in causes:
            if cause.get("reason") == "ExitCode":
                try:
                    return ExecStatus(int(cause.get("message", "")), reason, message, status)
                except ValueError:
                    break
    return ExecStatus(None, reason or "ExecFailed", message or "exec failed", status)


def shell_argv(command: str, shell: str = "/bin/bash") -> list[str]:
    """The argv that runs a command string: ``[shell, "-c", command]``."""
    return [shell, "-c", command]


def wrapper_argv(
    argv: Sequence[str],
    *,
    command_id: str | None = None,
    timeout: float | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    nproc: int | None = None,
    fsize: int | None = None,
) -> list[str]:
    """``sandbox-exec [--id ID] [--timeout S] [--cwd DIR] [--env K=V]... [--nproc N] [--fsize B] -- ARGV...``.

    ``command_id`` labels the wrapper so :func:`kill_argv` can find it later. Values are checked here so a bad
    one fails with a clear message instead of a wrapper usage error.
    """
    if not argv:
        raise ValueError("empty command")
    out = [constants.EXEC_WRAPPER]
    if command_id is not None:
        out += ["--id", _checked_command_id(command_id)]
    if timeout is not None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        secs = float(timeout)
        out += ["--timeout", str(int(secs)) if secs.is_integer() else f"{secs:g}"]
    if cwd is not None:
        _check_text("cwd", cwd)
        out += ["--cwd", cwd]
    for key, value in (env or {}).items():
        if not key or "=" in key or "\x00" in key or not _is_env_name(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        _check_text(f"env {key}", value)
        out += ["--env", f"{key}={value}"]
    if nproc is not None:
        out += ["--nproc", str(int(nproc))]
    if fsize is not None:
        out += ["--fsize", str(int(fsize))]
    for arg in argv:
        _check_text("argument", arg)
    return [*out, "--", *argv]


def kill_argv(command_id: str, signal: str | int = "KILL") -> list[str]:
    """``sandbox-exec --kill ID --signal SIG``, run without a wrapper around it: it signals every descendant of
    the wrapper labelled ``ID`` without forking, so it works when a fork bomb fills the process table.

    ``signal`` is a name (``TERM``, ``SIGTERM``, ...) or a number.
    """
    return [constants.EXEC_WRAPPER, "--kill", _checked_command_id(command_id), "--signal", _checked_signal(signal)]


def _checked_command_id(command_id: str) -> str:
    # A leading '-' would read as an option of the wrapper.
    if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id) or command_id.startswith("-"):
        raise ValueError(f"invalid command id {command_id!r}: 1 to 64 letters, digits, '_' or '-', "
                         "not starting with '-'")
    return command_id


def _checked_signal(signal: str | int) -> str:
    if isinstance(signal, int) and not isinstance(signal, bool):
        if not 1 <= signal <= 64:
            raise ValueError(f"invalid signal number {signal}")
        return str(signal)
    text = str(signal).strip().upper()
    if text.isdigit():
        return _checked_signal(int(text))
    name = text.removeprefix("SIG")
    if name not in SIGNAL_NAMES:
        raise ValueError(f"invalid signal {signal!r}: one of {', '.join(sorted(SIGNAL_NAMES))} or a number")
    return name


def _is_env_name(key: str) -> bool:
    return all(c.isalnum() or c in "_.-" for c in key) and not key[0].isdigit()


def _check_text(what: str, value: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    if "\x00" in value:
        raise ValueError(f"{what} contains a NUL byte")


class StdinPipe:
    """Stdin fed while the command runs: ``write()`` bytes, then ``close()`` for EOF."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self.closed = False

    def write(self, data: bytes | str) -> None:
        if self.closed:
            raise ValueError("stdin is closed")
        if isinstance(data, str):
            data = data.encode()
        if data:
            self._queue.put(bytes(data))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put(None)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            yield item


StdinSource = bytes | str | IO[bytes] | Iterable[bytes] | StdinPipe
"""What a command's stdin can be: bytes or text, a binary file, an iterable of byte chunks, or a pipe."""


def _stdin_chunks(source: Any) -> Iterator[bytes]:
    if isinstance(source, str):
        source = source.encode()
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for i in range(0, len(view), STDIN_CHUNK):
            yield bytes(view[i:i + STDIN_CHUNK])
        return
    if hasattr(source, "read"):
        # read1 returns what is available (a pipe or terminal) instead of waiting for a full chunk.
        read = getattr(source, "read1", None) or source.read
        while True:
            data = read(STDIN_CHUNK)
            if not data:
                return
            if isinstance(data, str):
                data = data.encode()
            yield data
    for data in source:
        if isinstance(data, str):
            data = data.encode()
        for i in range(0, len(data), STDIN_CHUNK):
            yield data[i:i + STDIN_CHUNK]


class DeadlineExceeded(Exception):  # noqa: N818 - internal signal, not an error
    """The client-side deadline passed before the command ended (the connection is then closed)."""


def open_exec_websocket(api_client: client.ApiClient, namespace: str, pod: str, argv: Sequence[str], *,
                        container: str, stdin: bool, sandbox: str) -> Any:
    """Opens one ``pods/exec`` WebSocket running ``argv`` (``v5.channel.k8s.io``, else ``v4``), with the official
    client's URL and WebSocket helpers but none of its shared state, so any number of threads may call it while
    others use ``api_client``. A refusal is the SDK's error: :class:`SandboxNotFound` (404),
    :class:`SandboxForbidden` (403), :class:`ExecError` (the container is not running, the connection failed)."""
    query: list[tuple[str, Any]] = [
        ("command", list(argv)), ("container", container),
        ("stdin", "true" if stdin else "false"), ("stdout", "true"), ("stderr", "true"),
        ("tty", "false"),
    ]
    _method, url, headers, _body, _post = api_client.param_serialize(
        method="GET",
        resource_path="/api/v1/namespaces/{namespace}/pods/{name}/exec",
        path_params={"namespace": namespace, "name": pod},
        query_params=query,
        header_params={"Accept": "*/*"},
        auth_settings=["BearerToken"],
        collection_formats={"command": "multi"},
    )
    ws_url = ws_client.get_websocket_url(url)
    headers = {k.lower(): v for k, v in (headers or {}).items()}
    headers["sec-websocket-protocol"] = f"{V5_PROTOCOL},{V4_PROTOCOL}"
    try:
        ws = ws_client.create_websocket(api_client.configuration, ws_url, headers)
    except websocket.WebSocketBadStatusException as exc:
        status = status_from_body(exc.resp_body or b"")
        if not status.get("message"):
            status["message"] = str(exc)
        err = error_from_status(exc.status_code, status, name=sandbox, namespace=namespace, fallback="exec failed")
        if isinstance(err, errors.ApiError) and exc.status_code in (400, 500):
            # e.g. "container not found", "pod does not have a running container"
            err = errors.ExecError(err.message, reason=err.reason or "ExecRejected", status=err.status,
                                   name=sandbox, namespace=namespace, details=err.details)
        raise err from exc
    except (OSError, websocket.WebSocketException) as exc:
        raise errors.ExecError(f"cannot open the exec connection: {exc}", reason="ConnectionFailed", name=sandbox,
                               namespace=namespace) from exc
    ws.settimeout(SOCKET_STALL_TIMEOUT)
    return ws


class ExecConnection:
    """One command over one ``pods/exec`` WebSocket.

    Iterate :meth:`frames` for ``(channel, bytes)`` as they arrive; afterwards :attr:`status` holds the exit
    status. Stdin, when given, is written by a helper thread so output is read while input is sent.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        pod: str,
        argv: Sequence[str],
        *,
        container: str = constants.CONTAINER_NAME,
        stdin: StdinSource | None = None,
        sandbox: str | None = None,
    ) -> None:
        self.namespace = namespace
        self.pod = pod
        self.sandbox = sandbox or pod
        self.argv = list(argv)
        self.status: ExecStatus | None = None
        self._error = bytearray()
        self._stdin = stdin
        self._closed = threading.Event()
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._ws = self._connect(api_client, container, want_stdin=stdin is not None)
        self.protocol = negotiated_protocol(self._ws)
        if stdin is not None:
            if self.protocol != V5_PROTOCOL:
                self.close()
                raise errors.ExecError(
                    f"the API server negotiated {self.protocol or 'an old protocol'}; sending stdin needs "
                    f"{V5_PROTOCOL} (Kubernetes 1.30 or later) to signal end of input",
                    reason="StdinUnsupported", name=self.sandbox, namespace=namespace)
            self._writer = threading.Thread(target=self._write_stdin, name=f"exec-stdin-{pod}", daemon=True)
            self._writer.start()

    # Connection ----------------------------------------------------------------------------------------

    def _connect(self, api_client: client.ApiClient, container: str, *, want_stdin: bool) -> Any:
        return open_exec_websocket(api_client, self.namespace, self.pod, self.argv, container=container,
                                   stdin=want_stdin, sandbox=self.sandbox)

    def close(self) -> None:
        """Closes the connection (idempotent). The process in the sandbox is not signalled by this."""
        if self._closed.is_set():
            return
        self._closed.set()
        if isinstance(self._stdin, StdinPipe):
            self._stdin.close()
        try:
            self._ws.close(timeout=1)
        except Exception:
            log.debug("closing the exec websocket failed", exc_info=True)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # Stdin -------------------------------------------------------------------------------------------

    def _write_stdin(self) -> None:
        try:
            for chunk in _stdin_chunks(self._stdin):
                if self._closed.is_set():
                    return
                if chunk:
                    self._ws.send(bytes([STDIN]) + chunk, opcode=websocket.ABNF.OPCODE_BINARY)
            if not self._closed.is_set():
                self._ws.send(bytes([CLOSE, STDIN]), opcode=websocket.ABNF.OPCODE_BINARY)
        except Exception as exc:
            self._writer_error = exc

    # Output ------------------------------------------------------------------------------------------

    def frames(self, deadline: float | None = None,
               cancelled: threading.Event | None = None) -> Iterator[tuple[int, bytes]]:
        """Yields ``(channel, data)`` for stdout and stderr until the server closes the stream.

        ``deadline`` is a ``time.monotonic()`` value; past it the connection is closed and
        :class:`DeadlineExceeded` raised. Setting ``cancelled`` ends the iteration early (no status then).
        """
        try:
            while True:
                if cancelled is not None and cancelled.is_set():
                    return
                wait = POLL_INTERVAL
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise DeadlineExceeded
                    wait = min(wait, remaining)
                if not self._readable(wait):
                    continue
                try:
                    opcode, frame = self._ws.recv_data_frame(True)
                except websocket.WebSocketConnectionClosedException:
                    break
                except (OSError, websocket.WebSocketException) as exc:
                    if self._closed.is_set():
                        return
                    raise errors.ExecError(f"the exec stream broke: {exc}", reason="StreamBroken",
                                           name=self.sandbox, namespace=self.namespace) from exc
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode not in (websocket.ABNF.OPCODE_BINARY, websocket.ABNF.OPCODE_TEXT):
                    continue
                data: bytes = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
                if not data:
                    continue
                channel = data[0]
                payload = data[1:]
                if channel == CLOSE:
                    continue  # the server closing one of its channels
                if channel == ERROR:
                    self._error += payload[:max(0, MAX_STATUS_BYTES - len(self._error))]
                elif channel in (STDOUT, STDERR) and payload:
                    yield channel, payload
        finally:
            if self.status is None and self._error:
                self.status = parse_exec_status(bytes(self._error))
            self.close()
        if self.status is None:
            self.status = parse_exec_status(bytes(self._error) if self._error else None)
        if self._writer is not None:
            self._writer.join(timeout=5)
            if self._writer_error is not None and self.status.exit_code is None:
                raise errors.ExecError(f"sending stdin failed: {self._writer_error}", reason="StdinFailed",
                                       name=self.sandbox, namespace=self.namespace)

    def _readable(self, wait: float) -> bool:
        sock = self._ws.sock
        if sock is None:
            return True  # let recv raise the "closed" error
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            r, _, _ = select.select([sock], [], [], max(0.0, wait))
        except (OSError, ValueError):
            return True
        return bool(r)


def negotiated_protocol(ws: Any) -> str | None:
    """The channel protocol the API server chose (the handshake's Sec-WebSocket-Protocol header)."""
    protocol = getattr(ws, "subprotocol", None)
    if protocol:
        return str(protocol)
    getheaders = getattr(ws, "getheaders", None)
    headers = (getheaders() if callable(getheaders) else None) or {}
    for key, value in headers.items():
        if key.lower() == "sec-websocket-protocol":
            return str(value).strip()
    return None


def status_error(status: ExecStatus, *, name: str, namespace: str) -> errors.ExecError:
    """The error for an exec that ended with no exit code (the process never ran, or the stream broke)."""
    message = status.message or "exec failed"
    if constants.EXEC_WRAPPER in message and ("no such file" in message.lower() or "not found" in message):
        message = f"the sandbox image has no exec wrapper {constants.EXEC_WRAPPER}: {message}"
    return errors.ExecError(message, reason=status.reason, name=name, namespace=namespace,
                            details=status.raw or None)


__all__ = [
    "CLOSE", "ERROR", "STDERR", "STDIN", "STDOUT", "DeadlineExceeded", "ExecConnection", "ExecStatus",
    "StdinPipe", "StdinSource", "kill_argv", "open_exec_websocket", "parse_exec_status", "shell_argv", "status_error",
    "wrapper_argv",
]

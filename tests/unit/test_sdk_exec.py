"""The exec transport without a cluster: status parsing, wrapper argv, and the frame loop over a fake socket."""

from __future__ import annotations

import io
import json
import threading
import time
from typing import Any

import pytest
import websocket

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk.commands import CommandResult, CommandStream, is_wrapper_timeout
from sandbox_operator.sdk.exec import (
    CLOSE,
    ERROR,
    STDERR,
    STDIN,
    STDOUT,
    V4_PROTOCOL,
    V5_PROTOCOL,
    DeadlineExceeded,
    ExecConnection,
    StdinPipe,
    _stdin_chunks,
    kill_argv,
    parse_exec_status,
    shell_argv,
    status_error,
    wrapper_argv,
)

SUCCESS = {"metadata": {}, "status": "Success"}


def nonzero(code: int) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure",
            "message": f"command terminated with non-zero exit code: exit status {code}",
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}


# Status ----------------------------------------------------------------------------------------------------

def test_success_is_zero() -> None:
    assert parse_exec_status(json.dumps(SUCCESS).encode()).exit_code == 0


@pytest.mark.parametrize("code", [1, 2, 124, 125, 126, 127, 137, 255])
def test_nonzero_exit_codes(code: int) -> None:
    status = parse_exec_status(json.dumps(nonzero(code)))
    assert status.exit_code == code
    assert status.reason == "NonZeroExitCode"


def test_failure_without_exit_code() -> None:
    raw = {"status": "Failure", "reason": "InternalError",
           "message": 'OCI runtime exec failed: exec: "/usr/local/bin/sandbox-exec": stat: no such file or directory'}
    status = parse_exec_status(raw)
    assert status.exit_code is None
    assert status.reason == "InternalError"
    err = status_error(status, name="s", namespace="ns")
    assert isinstance(err, errors.ExecError)
    assert "no exec wrapper" in str(err)


def test_missing_status() -> None:
    status = parse_exec_status(None)
    assert status.exit_code is None
    assert status.reason == "NoStatus"


def test_garbage_exit_code_is_not_trusted() -> None:
    raw = nonzero(1)
    raw["details"]["causes"][0]["message"] = "one"
    assert parse_exec_status(raw).exit_code is None


# Argv ------------------------------------------------------------------------------------------------------

def test_wrapper_argv_full() -> None:
    argv = wrapper_argv(["python3", "-c", "print(1)"], command_id="0123abcd", timeout=5, cwd="/tmp",
                        env={"A": "1", "B_2": "x=y"}, nproc=20, fsize=1024)
    assert argv == [constants.EXEC_WRAPPER, "--id", "0123abcd", "--timeout", "5", "--cwd", "/tmp", "--env", "A=1",
                    "--env", "B_2=x=y", "--nproc", "20", "--fsize", "1024", "--", "python3", "-c", "print(1)"]


@pytest.mark.parametrize("command_id", ["", "a b", "x" * 65, "id;rm", "--kill", "é"])
def test_wrapper_argv_rejects_bad_ids(command_id: str) -> None:
    with pytest.raises(ValueError, match="command id"):
        wrapper_argv(["true"], command_id=command_id)


@pytest.mark.parametrize(("signal", "sent"), [
    ("KILL", "KILL"), ("term", "TERM"), ("SIGINT", "INT"), ("sigusr1", "USR1"), (15, "15"), ("9", "9"),
])
def test_kill_argv(signal: str | int, sent: str) -> None:
    assert kill_argv("abc_DEF-1", signal) == [constants.EXEC_WRAPPER, "--kill", "abc_DEF-1", "--signal", sent]


@pytest.mark.parametrize("signal", ["BOGUS", "SIGSEGV; rm -rf /", "", 0, 65, "-9", True])
def test_kill_argv_rejects_bad_signals(signal: str | int) -> None:
    with pytest.raises(ValueError):
        kill_argv("abc", signal)


def test_wrapper_argv_minimal_and_fractional_timeout() -> None:
    assert wrapper_argv(["true"]) == [constants.EXEC_WRAPPER, "--", "true"]
    assert wrapper_argv(["true"], timeout=1.5)[1:3] == ["--timeout", "1.5"]


@pytest.mark.parametrize("kwargs", [
    {"timeout": 0}, {"timeout": -1}, {"env": {"A=B": "x"}}, {"env": {"": "x"}}, {"env": {"1X": "x"}},
    {"env": {"A": "x\x00y"}}, {"cwd": "/tmp\x00"},
])
def test_wrapper_argv_rejects(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        wrapper_argv(["true"], **kwargs)


def test_wrapper_argv_rejects_nul_and_empty() -> None:
    with pytest.raises(ValueError):
        wrapper_argv(["echo", "a\x00b"])
    with pytest.raises(ValueError):
        wrapper_argv([])


def test_shell_argv() -> None:
    assert shell_argv("echo hi | wc") == ["/bin/bash", "-c", "echo hi | wc"]
    assert shell_argv("x", "/bin/sh") == ["/bin/sh", "-c", "x"]


def test_wrapper_timeout_detection() -> None:
    diag = b"sandbox-exec: command timed out after 2s; killing its process group\n"
    assert is_wrapper_timeout(124, b"partial output\n" + diag)
    assert not is_wrapper_timeout(124, b"my own exit 124\n")  # the command itself exited 124
    assert not is_wrapper_timeout(0, diag)


# Stdin -----------------------------------------------------------------------------------------------------

def test_stdin_chunks_from_bytes_text_file_and_iterable() -> None:
    data = bytes(range(256)) * 3000  # 768000 bytes
    assert b"".join(_stdin_chunks(data)) == data
    assert all(len(c) <= 256 * 1024 for c in _stdin_chunks(data))
    assert b"".join(_stdin_chunks("héllo")) == "héllo".encode()
    assert b"".join(_stdin_chunks(io.BytesIO(data))) == data
    assert b"".join(_stdin_chunks([b"a", b"bc"])) == b"abc"


def test_stdin_pipe() -> None:
    pipe = StdinPipe()
    pipe.write(b"a")
    pipe.write("b")
    pipe.close()
    assert b"".join(pipe) == b"ab"
    with pytest.raises(ValueError):
        pipe.write(b"c")


# The frame loop --------------------------------------------------------------------------------------------

class _Frame:
    def __init__(self, data: bytes) -> None:
        self.data = data


class ScriptedWebSocket:
    """Serves scripted frames; records what the client sends."""

    def __init__(self, frames: list[tuple[int, bytes]], protocol: str = V5_PROTOCOL,
                 delay: float = 0.0) -> None:
        self.frames = list(frames)
        self.subprotocol = protocol
        self.sent: list[bytes] = []
        self.sock = None
        self.closed = False
        self.delay = delay
        self.stdin_closed = threading.Event()

    def recv_data_frame(self, control: bool) -> tuple[int, _Frame]:
        if self.delay:
            time.sleep(self.delay)
        if not self.frames:
            raise websocket.WebSocketConnectionClosedException("closed")
        opcode, data = self.frames.pop(0)
        return opcode, _Frame(data)

    def send(self, payload: bytes, opcode: int = 0) -> None:
        self.sent.append(payload)
        if payload == bytes([CLOSE, STDIN]):
            self.stdin_closed.set()

    def close(self, **kwargs: Any) -> None:
        self.closed = True


B = websocket.ABNF.OPCODE_BINARY


def frames_for(stdout: bytes = b"", stderr: bytes = b"",
               status: dict[str, Any] | None = None) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    if stdout:
        out.append((B, bytes([STDOUT]) + stdout))
    if stderr:
        out.append((B, bytes([STDERR]) + stderr))
    out.append((B, bytes([ERROR]) + json.dumps(status or SUCCESS).encode()))
    out.append((websocket.ABNF.OPCODE_CLOSE, b""))
    return out


class FakeConnection(ExecConnection):
    def __init__(self, ws: ScriptedWebSocket, stdin: Any = None) -> None:
        self._fake = ws
        super().__init__(None, "ns", "pod", ["x"], stdin=stdin, sandbox="sbx")  # type: ignore[arg-type]

    def _connect(self, api_client: Any, container: str, *, want_stdin: bool) -> Any:
        self.want_stdin = want_stdin
        return self._fake


def test_frames_are_binary_exact_and_in_order() -> None:
    payload = bytes(range(256)) * 4
    ws = ScriptedWebSocket([(B, bytes([STDOUT]) + payload[:500]), (B, bytes([STDERR]) + b"\xff\xfe err"),
                            (B, bytes([STDOUT]) + payload[500:]), (B, bytes([STDOUT])),
                            *frames_for(status=nonzero(3))])
    conn = FakeConnection(ws)
    got = list(conn.frames())
    assert [c for c, _ in got] == [STDOUT, STDERR, STDOUT]
    assert b"".join(d for c, d in got if c == STDOUT) == payload
    assert got[1][1] == b"\xff\xfe err"
    assert conn.status is not None and conn.status.exit_code == 3
    assert ws.closed
    assert conn.want_stdin is False


def test_stdin_is_sent_then_closed_on_v5() -> None:
    ws = ScriptedWebSocket(frames_for(stdout=b"ok"), delay=0.01)
    conn = FakeConnection(ws, stdin=b"x" * (300 * 1024))
    assert conn.want_stdin is True
    list(conn.frames())
    assert ws.stdin_closed.wait(2)
    data = b"".join(p[1:] for p in ws.sent if p[0] == STDIN)
    assert data == b"x" * (300 * 1024)
    assert ws.sent[-1] == bytes([CLOSE, STDIN])


def test_stdin_needs_v5() -> None:
    ws = ScriptedWebSocket(frames_for(), protocol=V4_PROTOCOL)
    with pytest.raises(errors.ExecError) as info:
        FakeConnection(ws, stdin=b"data")
    assert info.value.reason == "StdinUnsupported"
    assert ws.closed


def test_v4_without_stdin_works() -> None:
    ws = ScriptedWebSocket(frames_for(stdout=b"hi\n"), protocol=V4_PROTOCOL)
    conn = FakeConnection(ws)
    assert list(conn.frames()) == [(STDOUT, b"hi\n")]
    assert conn.status is not None and conn.status.exit_code == 0


def test_deadline() -> None:
    ws = ScriptedWebSocket([(B, bytes([STDOUT]) + b"x")] * 100, delay=0.02)
    conn = FakeConnection(ws)
    with pytest.raises(DeadlineExceeded):
        list(conn.frames(deadline=time.monotonic() + 0.1))
    assert ws.closed


def test_broken_stream_is_an_exec_error() -> None:
    class Broken(ScriptedWebSocket):
        def recv_data_frame(self, control: bool) -> tuple[int, _Frame]:
            raise ConnectionResetError("reset by peer")

    conn = FakeConnection(Broken([]))
    with pytest.raises(errors.ExecError) as info:
        list(conn.frames())
    assert info.value.reason == "StreamBroken"


def test_stream_without_status_is_an_exec_error() -> None:
    ws = ScriptedWebSocket([(B, bytes([STDOUT]) + b"partial")])
    stream = CommandStream(lambda: FakeConnection(ws), ["x"], client_deadline=None,
                           hold=_null_hold, sandbox="sbx", namespace="ns", timeout_for_message=None)
    with pytest.raises(errors.ExecError) as info:
        stream.wait()
    assert info.value.reason == "NoStatus"


class _NullHold:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _null_hold() -> _NullHold:
    return _NullHold()


def test_command_stream_result_and_chunks() -> None:
    ws = ScriptedWebSocket(frames_for(stdout=b"Hello\n", stderr=b"warn\n", status=nonzero(2)))
    stream = CommandStream(lambda: FakeConnection(ws), ["python3", "-c", "x"], client_deadline=10,
                           hold=_null_hold, sandbox="sbx", namespace="ns", timeout_for_message=None,
                           max_output=1024)
    chunks = list(stream)
    assert [(c.stream, c.text) for c in chunks] == [("stdout", "Hello\n"), ("stderr", "warn\n")]
    result = stream.wait()
    assert result.exit_code == 2 and result.stdout == "Hello\n" and result.stderr == "warn\n"
    assert not result.timed_out and not result.ok and result.duration >= 0
    with pytest.raises(errors.CommandError) as info:
        result.check()
    assert info.value.result is result
    assert "warn" in str(info.value)


def test_command_stream_timeout_flag() -> None:
    diag = b"sandbox-exec: command timed out after 1s; killing its process group\n"
    ws = ScriptedWebSocket(frames_for(stdout=b"started\n", stderr=diag, status=nonzero(124)))
    stream = CommandStream(lambda: FakeConnection(ws), ["sleep", "10"], client_deadline=10,
                           hold=_null_hold, sandbox="sbx", namespace="ns", timeout_for_message=1,
                           max_output=1024)
    result = stream.wait()
    assert result.timed_out and result.exit_code == 124 and result.stdout == "started\n"
    with pytest.raises(errors.CommandTimeout):
        result.check()


def test_command_stream_client_deadline_raises_command_timeout() -> None:
    ws = ScriptedWebSocket([(B, bytes([STDOUT]) + b"x")] * 100, delay=0.02)
    stream = CommandStream(lambda: FakeConnection(ws), ["sleep", "100"], client_deadline=0.1,
                           hold=_null_hold, sandbox="sbx", namespace="ns", timeout_for_message=None,
                           max_output=1024)
    with pytest.raises(errors.CommandTimeout) as info:
        stream.wait()
    assert info.value.reason == "ClientDeadlineExceeded"
    assert info.value.result.stdout.startswith("x")


def test_result_text_and_dict() -> None:
    result = CommandResult(command=["true"], exit_code=0, stdout_bytes=b"\xe2\x9c\x93", duration=0.5)
    assert result.ok and result.stdout == "✓"
    assert result.check() is result
    assert result.to_dict()["exitCode"] == 0
    assert not result.truncated
    assert {k: result.to_dict()[k] for k in ("stdoutTruncated", "stderrTruncated", "stdoutDropped",
                                             "stderrDropped")} == {"stdoutTruncated": False,
                                                                    "stderrTruncated": False,
                                                                    "stdoutDropped": 0, "stderrDropped": 0}


def test_negotiated_protocol_from_handshake_headers() -> None:
    from sandbox_operator.sdk.exec import negotiated_protocol

    class Headers:
        subprotocol = None

        def getheaders(self) -> dict[str, str]:
            return {"Sec-WebSocket-Protocol": "v5.channel.k8s.io"}

    class Nothing:
        subprotocol = None

        def getheaders(self) -> None:
            return None

    assert negotiated_protocol(Headers()) == V5_PROTOCOL
    assert negotiated_protocol(Nothing()) is None
    assert negotiated_protocol(ScriptedWebSocket([], protocol=V4_PROTOCOL)) == V4_PROTOCOL

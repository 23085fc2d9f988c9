"""``sandboxctl exec`` without a cluster: output written through raw and not kept, Ctrl-C kills by command id."""

from __future__ import annotations

import json
from typing import Any

import pytest
import websocket

from sandbox_operator import cli, constants
from sandbox_operator.sdk.sandbox import Sandbox
from tests.unit.test_sdk_commands import kill_answer, output_frames, sandbox_with
from tests.unit.test_sdk_exec import _Frame


def use(monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox) -> None:
    monkeypatch.setattr(cli.Context, "sandbox", lambda self, name: sandbox)


def test_exec_writes_output_through_raw(monkeypatch: pytest.MonkeyPatch,
                                        capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    chunks = [b"\x1b[1m", b"x" * 100_000]
    sandbox, fake = sandbox_with(lambda argv: output_frames(chunks, [b"err\x1b\n"]), max_output_bytes=10)
    use(monkeypatch, sandbox)
    assert cli.main(["exec", "box", "--", "printf", "x"]) == 0
    out = capsysbinary.readouterr()
    assert out.out == b"".join(chunks) and out.err == b"err\x1b\n"  # like kubectl exec: bytes as they are
    assert fake.argvs[0][1] == "--id"


def test_exec_json_reports_what_went_through(monkeypatch: pytest.MonkeyPatch,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([b"abc"]))
    use(monkeypatch, sandbox)
    assert cli.main(["exec", "-o", "json", "box", "--", "true"]) == 0
    printed = capsysbinary.readouterr().out
    report = json.loads(printed.removeprefix(b"abc"))
    assert report["exitCode"] == 0 and report["stdout"] == "" and report["stdoutDropped"] == 3


class Interrupted:
    """A connection that delivers one chunk, then the user presses Ctrl-C."""

    def __init__(self) -> None:
        self.frames = output_frames([b"partial"])[:1]
        self.subprotocol = "v5.channel.k8s.io"
        self.sock = None

    def recv_data_frame(self, control: bool) -> tuple[int, _Frame]:
        if self.frames:
            opcode, data = self.frames.pop(0)
            return opcode, _Frame(data)
        raise KeyboardInterrupt

    def send(self, payload: bytes, opcode: int = 0) -> None:
        raise websocket.WebSocketConnectionClosedException("closed")

    def close(self, **kwargs: Any) -> None:
        return None


def test_ctrl_c_kills_the_command_by_its_id(monkeypatch: pytest.MonkeyPatch,
                                            capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sandbox, fake = sandbox_with(kill_answer(0, b"4\n"))
    real_open = fake.__call__

    def open_exec(argv: list[str], stdin: Any) -> Any:
        conn = real_open(argv, stdin)
        if "--kill" not in argv:
            conn._ws = Interrupted()
        return conn

    sandbox._open = open_exec  # type: ignore[method-assign,assignment]
    use(monkeypatch, sandbox)
    assert cli.main(["exec", "box", "--", "sleep", "100"]) == cli.EXIT_INTERRUPTED
    assert capsysbinary.readouterr().out == b"partial"
    command_id = fake.argvs[0][2]
    assert fake.argvs[1] == [constants.EXEC_WRAPPER, "--kill", command_id, "--signal", "TERM"]

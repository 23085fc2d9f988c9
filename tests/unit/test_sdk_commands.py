"""Commands through a Sandbox without a cluster: output caps, streams that keep nothing, bounded background
handles, command ids, kill without a wrapper, and the wrapper's refusals."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk.manager import SandboxManager
from sandbox_operator.sdk.sandbox import TOOL_STDERR_BYTES, Sandbox
from tests.unit.test_sdk_exec import B, FakeConnection, ScriptedWebSocket, frames_for, nonzero

STDOUT, STDERR = 1, 2
Frames = list[tuple[int, bytes]]


def output_frames(stdout: list[bytes] = (), stderr: list[bytes] = (),  # type: ignore[assignment]
                  status: dict[str, Any] | None = None) -> Frames:
    out: Frames = [(B, bytes([STDOUT]) + chunk) for chunk in stdout]
    out += [(B, bytes([STDERR]) + chunk) for chunk in stderr]
    return out + frames_for(status=status)


class Exec:
    """Stands in for pods/exec: records each argv and answers from ``answer(argv)``."""

    def __init__(self, answer: Callable[[list[str]], Frames], delay: float = 0.0) -> None:
        self.answer = answer
        self.delay = delay
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], stdin: Any) -> FakeConnection:
        self.argvs.append(list(argv))
        return FakeConnection(ScriptedWebSocket(self.answer(list(argv)), delay=self.delay), stdin=stdin)


def sandbox_with(answer: Callable[[list[str]], Frames], *, delay: float = 0.0, max_output_bytes: int = 1 << 20,
                 spec: dict[str, Any] | None = None) -> tuple[Sandbox, Exec]:
    manager = SandboxManager("ns", api_client=client.ApiClient(), record_activity=False,
                             max_output_bytes=max_output_bytes, transport="exec")
    sandbox = Sandbox(manager, "box", "ns", {"metadata": {"name": "box"}, "spec": spec or {}, "status": {}})
    fake = Exec(answer, delay)
    sandbox._open = fake  # type: ignore[method-assign,assignment]
    return sandbox, fake


def user_argv(wrapped: list[str]) -> list[str]:
    return wrapped[wrapped.index("--") + 1:]


# Output caps -----------------------------------------------------------------------------------------------

def test_run_keeps_the_head_of_each_stream_up_to_the_cap_and_counts_the_rest() -> None:
    out_chunks = [bytes([i]) * 1000 for i in range(10)]
    err_chunks = [b"e" * 700] * 3
    sandbox, _ = sandbox_with(lambda argv: output_frames(out_chunks, err_chunks))
    seen: list[str] = []
    result = sandbox.run(["flood"], max_output=2500, on_stdout=seen.append)
    assert result.stdout_bytes == b"".join(out_chunks)[:2500]
    assert result.stdout_truncated and result.stdout_dropped == 7500
    assert result.stderr_bytes == b"e" * 2100 and not result.stderr_truncated and result.stderr_dropped == 0
    assert result.truncated and result.exit_code == 0
    assert len("".join(seen)) == 10000  # callbacks see everything
    as_dict = result.to_dict()
    assert (as_dict["stdoutTruncated"], as_dict["stdoutDropped"], as_dict["stderrTruncated"],
            as_dict["stderrDropped"]) == (True, 7500, False, 0)


def test_stderr_has_its_own_cap() -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([b"o" * 10], [b"x" * 5000]))
    result = sandbox.run(["x"], max_output=1000)
    assert result.stdout_bytes == b"o" * 10 and not result.stdout_truncated
    assert result.stderr_bytes == b"x" * 1000 and result.stderr_dropped == 4000 and result.stderr_truncated


def test_the_manager_sets_the_default_cap() -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([b"y" * 300]), max_output_bytes=100)
    result = sandbox.run(["x"])
    assert result.stdout_bytes == b"y" * 100 and result.stdout_dropped == 200
    with pytest.raises(ValueError, match="max_output_bytes"):
        SandboxManager("ns", api_client=client.ApiClient(), max_output_bytes=-1)


def test_a_zero_cap_keeps_nothing() -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([b"abc"], [b"def"]))
    result = sandbox.run(["x"], max_output=0)
    assert result.stdout_bytes == b"" and result.stdout_dropped == 3 and result.stderr_dropped == 3


def test_stream_passes_everything_through_and_keeps_nothing() -> None:
    chunks = [b"z" * 4096] * 50
    sandbox, _ = sandbox_with(lambda argv: output_frames(chunks, [b"warn\n"], nonzero(3)))
    with sandbox.stream(["x"]) as stream:
        got = b"".join(c.data for c in stream if c.stream == "stdout")
        result = stream.wait()
    assert got == b"".join(chunks)
    assert result.stdout_bytes == b"" and result.stderr_bytes == b""
    assert result.stdout_dropped == 50 * 4096 and result.stderr_dropped == 5 and result.exit_code == 3
    assert stream.kept_output() == (b"", b"")


def test_run_builds_the_result_once_and_lets_go_of_its_buffers() -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([b"a" * 100]))
    with sandbox._command(["x"], timeout=None, env=None, cwd=None, stdin=None, shell=None,
                          max_output=1000) as stream:
        result = stream.wait()
    assert result.stdout_bytes == b"a" * 100
    assert stream.kept_output() == (b"", b"")


def test_the_wrapper_timeout_is_seen_after_a_flood_of_stderr() -> None:
    diag = b"sandbox-exec: command timed out after 1s; killing its processes\n"
    sandbox, _ = sandbox_with(lambda argv: output_frames([], [b"junk" * 10_000 + b"\n", diag], nonzero(124)))
    result = sandbox.run(["x"], max_output=100)
    assert result.timed_out and result.stderr_truncated


# Background commands -----------------------------------------------------------------------------------------

def test_start_bounds_its_output_and_its_chunk_queue_dropping_the_oldest() -> None:
    chunks = [bytes([i]) * 1000 for i in range(100)]
    sandbox, _ = sandbox_with(lambda argv: output_frames(chunks))
    handle = sandbox.start(["x"], max_output=5000)
    result = handle.wait(timeout=10)
    assert result.stdout_bytes == b"".join(chunks)[:5000] and result.stdout_dropped == 95_000
    assert len(handle.stdout) == 5000
    assert handle.dropped_chunks == 95 and handle.dropped_chunk_bytes == 95_000
    assert [c.data for c in handle.chunks()] == chunks[95:]  # the most recent ones are kept
    assert list(handle.chunks()) == []


def test_a_reader_that_keeps_up_loses_nothing() -> None:
    chunks = [bytes([i]) * 100 for i in range(30)]
    sandbox, _ = sandbox_with(lambda argv: output_frames(chunks), delay=0.01)
    handle = sandbox.start(["x"], max_output=1000)  # room for ten chunks: the reader may lag 100 ms
    got = [c.data for c in handle.chunks()]
    assert got == chunks and handle.dropped_chunks == 0
    assert len(handle.wait().stdout_bytes) == 1000


# Command ids and kill ----------------------------------------------------------------------------------------

def kill_answer(exit_code: int, stdout: bytes = b"", stderr: bytes = b"",
                command: Frames | None = None) -> Callable[[list[str]], Frames]:
    def answer(argv: list[str]) -> Frames:
        if "--kill" in argv:
            status = None if exit_code == 0 else nonzero(exit_code)
            return output_frames([stdout] if stdout else [], [stderr] if stderr else [], status)
        return command if command is not None else output_frames([b"x"] * 40)
    return answer


def test_every_command_gets_a_fresh_id_in_its_wrapper_argv() -> None:
    sandbox, fake = sandbox_with(lambda argv: output_frames([b"ok"]))
    sandbox.run(["true"])
    sandbox.run("echo hi")
    first, second = fake.argvs
    assert first[:2] == [constants.EXEC_WRAPPER, "--id"] and second[1] == "--id"
    assert len(first[2]) == 32 and int(first[2], 16) >= 0 and first[2] != second[2]
    assert user_argv(first) == ["true"] and user_argv(second) == ["/bin/bash", "-c", "echo hi"]
    assert not any("SANDBOX_COMMAND_ID" in arg for arg in first + second)


def test_kill_runs_the_wrapper_kill_without_a_wrapper_around_it() -> None:
    sandbox, fake = sandbox_with(kill_answer(0, b"7\n"), delay=0.01)
    handle = sandbox.start(["sleep", "100"])
    assert handle.kill("TERM", wait=0) is None
    command_id = fake.argvs[0][2]
    assert handle.command_id == command_id
    assert fake.argvs[1] == [constants.EXEC_WRAPPER, "--kill", command_id, "--signal", "TERM"]
    handle.wait(timeout=10)


@pytest.mark.parametrize(("exit_code", "stdout", "count"), [(0, b"7\n", 7), (0, b"0", 0), (3, b"", 0)])
def test_kill_exit_codes(exit_code: int, stdout: bytes, count: int) -> None:
    sandbox, _ = sandbox_with(kill_answer(exit_code, stdout))
    assert sandbox._kill("abc123", "KILL") == count


@pytest.mark.parametrize(("exit_code", "stdout", "stderr"), [
    (125, b"", b"sandbox-exec: unknown option --kill\n"),
    (1, b"", b"boom \x1b[2J\n"),
    (0, b"seven\n", b""),
    (0, b"1\n2\n", b""),
    (137, b"", b""),
])
def test_kill_failures(exit_code: int, stdout: bytes, stderr: bytes) -> None:
    sandbox, _ = sandbox_with(kill_answer(exit_code, stdout, stderr))
    with pytest.raises(errors.ExecError) as info:
        sandbox._kill("abc123", "KILL")
    assert info.value.reason == "KillFailed"
    assert "\x1b" not in info.value.message and f"exit code {exit_code}" in info.value.message


def test_kill_of_a_finished_handle_needs_no_exec() -> None:
    sandbox, fake = sandbox_with(lambda argv: output_frames([b"done"]))
    handle = sandbox.start(["true"])
    handle.wait(timeout=10)
    assert handle.kill() is not None
    assert len(fake.argvs) == 1


def test_a_stream_can_be_killed_by_its_id() -> None:
    sandbox, fake = sandbox_with(kill_answer(0, b"2\n"))
    with sandbox.stream(["sleep", "9"]) as stream:
        assert stream.kill(9) == 2
    assert fake.argvs[1][-2:] == ["--signal", "9"]


# Wrapper refusals --------------------------------------------------------------------------------------------

REFUSAL = (b"sandbox-exec: --timeout 900 is above this sandbox's limit of 300 seconds "
           b"(SANDBOX_COMMAND_TIMEOUT)\n")


def test_a_limit_above_the_sandboxes_is_an_exec_error() -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([], [REFUSAL], nonzero(125)))
    for call in (lambda: sandbox.run(["true"], timeout=900), lambda: sandbox.stream(["true"], timeout=900).wait()):
        with pytest.raises(errors.ExecError) as info:
            call()
        assert info.value.reason == "LimitAboveSandbox"
        assert info.value.message == REFUSAL.decode().strip()


@pytest.mark.parametrize("stderr", [
    b"sandbox-exec: unknown option --frobnicate\n",
    b"my own output\n" + REFUSAL,
    REFUSAL.replace(b"sandbox-exec: ", b"sandbox-exec:"),
])
def test_other_125_exits_stay_results(stderr: bytes) -> None:
    sandbox, _ = sandbox_with(lambda argv: output_frames([], [stderr], nonzero(125)))
    assert sandbox.run(["true"]).exit_code == 125


# The file tool -------------------------------------------------------------------------------------------------

def test_run_tool_streams_to_a_sink_and_stops_past_the_cap() -> None:
    data = [b"d" * 1000] * 5
    sandbox, fake = sandbox_with(lambda argv: output_frames(data, [b"e" * (TOOL_STDERR_BYTES + 10)]))
    sink = io.BytesIO()
    result = sandbox._run_tool(["read", "/workspace/f"], max_output=5000, sink=sink)
    assert sink.getvalue() == b"".join(data) and result.stdout_bytes == b""
    assert len(result.stderr_bytes) == TOOL_STDERR_BYTES and result.stderr_truncated
    assert user_argv(fake.argvs[0]) == [constants.FILES_TOOL, "read", "/workspace/f"]
    with pytest.raises(errors.FileTooLarge):
        sandbox._run_tool(["read", "/workspace/f"], max_output=4999, sink=io.BytesIO())
    with pytest.raises(errors.FileTooLarge):
        sandbox._run_tool(["read", "/workspace/f"], max_output=4999)
    assert sandbox._run_tool(["read", "/workspace/f"], max_output=5000).stdout_bytes == b"".join(data)


def test_file_operations_take_the_sandboxes_own_time_limit_by_default() -> None:
    """No --timeout unless one is configured: the wrapper then applies the sandbox's own command limit, which a
    longer client-chosen one would exceed (and be refused)."""
    sandbox, fake = sandbox_with(lambda argv: output_frames([b"{}"]), spec={"timeouts": {"commandSeconds": 60}})
    sandbox._run_tool(["stat", "/workspace"], max_output=100)
    sandbox._run_tool(["stat", "/workspace"], timeout=30, max_output=100)
    assert "--timeout" not in fake.argvs[0] and fake.argvs[1][3:5] == ["--timeout", "30"]

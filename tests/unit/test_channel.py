"""The channel: the real in-image agent (images/sandbox/bin/sandbox-agent) run on this machine over pipes, driven
through :class:`Channel`; and scripted hostile agents for what a real one never sends.

The agent is stdlib Python and runs here as in the image (with ``-S``; its writable roots pointed at a temporary
directory). The pods/exec transport is tested against a fake WebSocket; over a real pods/exec stream the channel
is exercised by the cluster tests.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any, cast

import pytest
import websocket
from kubernetes.client import ApiClient, Configuration

from sandbox_operator import constants
from sandbox_operator.sdk import channel as channel_module
from sandbox_operator.sdk import errors
from sandbox_operator.sdk import exec as exec_module
from sandbox_operator.sdk import protocol as p
from sandbox_operator.sdk.channel import Channel, PodExecTransport, pod_exec_transport
from sandbox_operator.sdk.exec import StdinPipe
from tests.unit.test_image_tools import (
    clean_env,
    escapes,
    execute_only_tools,  # noqa: F401 - a fixture, asked for by name below
    read_pids,
    wait_gone,
)

AGENT = Path(__file__).resolve().parents[2] / "images" / "sandbox" / "bin" / "sandbox-agent"

pytestmark = pytest.mark.timeout(60)


class LocalAgent:
    """The agent as a local process; its stdin and stdout are the channel's transport."""

    def __init__(self, env: dict[str, str], argv: list[str] | None = None, **popen: Any) -> None:
        self.proc = subprocess.Popen(argv or [sys.executable, "-I", "-S", str(AGENT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, bufsize=0, **popen)
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self.stdin, self.stdout = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.stderr = b""
        self._stderr_reader = threading.Thread(target=self._collect_stderr, daemon=True)
        self._stderr_reader.start()

    def _collect_stderr(self) -> None:
        assert self.proc.stderr is not None
        while data := self.proc.stderr.read(4096):
            self.stderr = (self.stderr + data)[-65536:]

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.stdin, view):]

    def read(self, n: int) -> bytes:
        data = os.read(self.stdout, n)
        if not data:
            # Like an exec stream, whose end comes with the runtime's status: what the process said on stderr is
            # all there by the time its stdout ends.
            self._stderr_reader.join(timeout=5)
        return data

    def close(self) -> None:
        """End of stdin for the agent (as when the exec stream closes)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def diagnostic(self) -> str:
        return self.stderr.decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=10)


def in_background(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Runs ``call`` in a thread of its own; the list gets what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, raised


def from_threads(work: Callable[[int], object], count: int = 10, within: float = 60) -> list[BaseException]:
    """Runs ``work(0)`` ... ``work(count - 1)`` at once, each in a thread; returns what they raised."""
    started = [in_background(lambda n=n: work(n)) for n in range(count)]
    for thread, _raised in started:
        thread.join(within)
    return [exc for _thread, raised in started for exc in raised]


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    ws, tmp, outside = tmp_path / "workspace", tmp_path / "tmp", tmp_path / "outside"
    for directory in (ws, tmp, outside):
        directory.mkdir()
    (outside / "secret").write_text("secret")
    return {"ws": ws, "tmp": tmp, "outside": outside}


@pytest.fixture
def agent_env(roots: dict[str, Path]) -> dict[str, str]:
    return clean_env(SANDBOX_WRITABLE_ROOTS=f"{roots['ws']}:{roots['tmp']}", SANDBOX_COMMAND_TIMEOUT="30")


@pytest.fixture
def open_channel(agent_env: dict[str, str]) -> Iterator[Callable[..., tuple[Channel, LocalAgent]]]:
    started: list[tuple[Channel, LocalAgent]] = []

    def start(env: dict[str, str] | None = None, **options: Any) -> tuple[Channel, LocalAgent]:
        agent = LocalAgent({**agent_env, **(env or {})})
        try:
            channel = Channel(agent, sandbox="local", shell="/bin/sh", **options)
        except BaseException:
            agent.stop()
            raise
        started.append((channel, agent))
        return channel, agent

    yield start
    for channel, agent in started:
        channel.close()
        agent.stop()


@pytest.fixture
def channel(open_channel: Callable[..., tuple[Channel, LocalAgent]]) -> Channel:
    return open_channel()[0]


# --- the protocol's numbers ---------------------------------------------------------------------------------------

def test_the_agent_and_the_client_use_the_same_protocol_numbers() -> None:
    loader = SourceFileLoader("sandbox_agent_under_test", str(AGENT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    agent = importlib.util.module_from_spec(spec)
    loader.exec_module(agent)
    names = ["PROTOCOL_VERSION", "MAGIC", "MAX_PAYLOAD", "WINDOW", "MAX_PING", *p.FRAME_NAMES.values()]
    assert {name: getattr(agent, name) for name in names} == {name: getattr(p, name) for name in names}
    assert agent.HEADER.format == p.HEADER.format
    assert set(p.FRAME_NAMES) == {getattr(agent, name) for name in p.FRAME_NAMES.values()}


def test_frames_are_parsed_across_any_read_boundaries() -> None:
    frames = p.encode(p.HELLO, 0, b"{}") + p.encode(p.STDOUT, 7, bytes(range(256)) * 10) + p.encode(p.PONG, 0)
    data = io.BytesIO(frames)
    reader = p.FrameReader(lambda n: data.read(1))  # one byte per read
    assert reader.next() == p.Frame(p.HELLO, 0, b"{}")
    assert reader.next() == p.Frame(p.STDOUT, 7, bytes(range(256)) * 10)
    assert reader.next() == p.Frame(p.PONG, 0, b"")
    assert reader.next() is None


@pytest.mark.parametrize(("data", "problem"), [
    (b"\x00" * 10, "bad magic"),
    (struct.pack(">BBII", p.MAGIC, 0x7F, 1, 0), "unknown"),
    (struct.pack(">BBII", p.MAGIC, p.RUN, 1, 0), "misdirected"),
    (struct.pack(">BBII", p.MAGIC, p.STDOUT, 1, p.MAX_PAYLOAD + 1), "at most"),
    (struct.pack(">BBII", p.MAGIC, p.EXIT, 1, p.MAX_CONTROL + 1), "at most"),
    (struct.pack(">BBII", p.MAGIC, p.STDOUT, 1, 100) + b"x" * 99, "ended inside"),
    (struct.pack(">BBII", p.MAGIC, p.STDOUT, 1, 100)[:5], "ended inside"),
])
def test_bad_frames_are_refused_before_their_payload_is_read(data: bytes, problem: str) -> None:
    source = io.BytesIO(data)
    asked: list[int] = []

    def read(n: int) -> bytes:
        asked.append(n)
        return source.read(min(n, 4096))

    with pytest.raises(p.ProtocolError, match=problem):
        p.FrameReader(read).next()
    assert sum(asked) < 2 * 1024 * 1024  # never an attempt to buffer what the header announced


# --- commands -------------------------------------------------------------------------------------------------------

def test_output_exit_code_and_resource_use(channel: Channel) -> None:
    assert channel.hello is not None and channel.hello.agent == "sandbox-agent"
    result = channel.run(["sh", "-c", r"printf 'out\000\377'; printf 'err\n' >&2; exit 7"])
    assert (result.exit_code, result.stdout_bytes, result.stderr_bytes) == (7, b"out\x00\xff", b"err\n")
    assert not result.timed_out and result.cpu_seconds is not None and result.peak_rss_bytes
    assert channel.run("echo $((6 * 7))").stdout == "42\n"  # a string runs under the shell
    assert channel.run(["sh", "-c", "kill -TERM $$"]).exit_code == 128 + signal.SIGTERM


def test_a_hold_is_kept_while_the_command_runs(channel: Channel) -> None:
    events: list[str] = []

    class Hold:
        def __enter__(self) -> None:
            events.append("enter")

        def __exit__(self, *exc: object) -> None:
            events.append("exit")

    with channel.stream(["sh", "-c", "echo a; sleep 0.2"], hold=Hold) as stream:
        assert next(iter(stream)).data == b"a\n"
        assert events == ["enter"]
        stream.wait()
        assert events == ["enter", "exit"]
    closed = channel.stream(["sleep", "5"], hold=Hold)
    closed.close()
    assert events == ["enter", "exit", "enter", "exit"]
    closed.kill()


def test_cpu_seconds_and_peak_memory_come_from_wait4(channel: Channel) -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    result = channel.run([sys.executable, "-I", "-S", "-c", burn])
    assert result.exit_code == 0
    assert result.cpu_seconds is not None and 0.25 <= result.cpu_seconds < 5
    hog = channel.run([sys.executable, "-I", "-S", "-c", "x = bytearray(150 * 1024 * 1024)"])
    assert hog.peak_rss_bytes is not None and hog.peak_rss_bytes >= 150 * 1024 * 1024
    assert hog.to_dict()["peakRssBytes"] == hog.peak_rss_bytes


def test_env_cwd_and_start_failures(channel: Channel, roots: dict[str, Path]) -> None:
    result = channel.run(["sh", "-c", 'printf "%s|%s" "$FOO" "$(pwd)"'], env={"FOO": "a=b"}, cwd=str(roots["ws"]))
    assert result.stdout == f"a=b|{roots['ws']}"
    missing = channel.run(["no-such-command-here"])
    assert missing.exit_code == 127 and missing.stderr.startswith("sandbox-agent: ")
    assert channel.run(["true"], cwd=str(roots["ws"] / "nope")).exit_code == 125
    with pytest.raises(ValueError, match="environment variable name"):
        channel.run(["true"], env={"A=B": "x"})


def test_limits_above_the_sandboxes_own_are_refused(open_channel: Callable[..., tuple[Channel, LocalAgent]]) -> None:
    channel, _ = open_channel({"SANDBOX_COMMAND_TIMEOUT": "5", "SANDBOX_PIDS_LIMIT": "50"})
    with pytest.raises(errors.ExecError, match="timeout 10 is above this sandbox's limit of 5") as refused:
        channel.run(["true"], timeout=10)
    assert refused.value.reason == "LimitAboveSandbox"
    with pytest.raises(errors.ExecError, match="nproc 51") as refused:
        channel.run(["true"], nproc=51)
    limits = channel.run([sys.executable, "-I", "-S", "-c",
                          "import resource as r; print(r.getrlimit(r.RLIMIT_NPROC), r.getrlimit(r.RLIMIT_CORE))"],
                         nproc=20)
    assert limits.stdout == "(20, 20) (0, 0)\n"
    assert channel.run(["true"], timeout=5).exit_code == 0


def test_a_timeout_is_124_and_ends_every_process_the_command_started(channel: Channel, tmp_path: Path) -> None:
    script, pids = escapes(tmp_path, detached_output=False)
    start = time.monotonic()
    chunks: list[str] = []
    result = channel.run(["sh", "-c", script + "sleep 60"], timeout=1.5, on_stderr=chunks.append)
    assert result.exit_code == 124 and result.timed_out
    assert time.monotonic() - start < 6
    # Said on stderr as sandbox-exec says it, for whoever follows the output (sandboxctl exec) and in the result.
    assert chunks[-1] == "sandbox-agent: command timed out after 1.5s; its processes were killed\n"
    assert result.stderr.endswith(chunks[-1])
    assert all(wait_gone(pid) for pid in read_pids(pids))  # setsid, double forks, env -i: all gone


def test_a_finished_command_leaves_nothing_behind_but_its_output_is_waited_for(channel: Channel,
                                                                               tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    result = channel.run(["sh", "-c", f"sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {pid_file}; exit 3"])
    assert result.exit_code == 3
    assert wait_gone(int(pid_file.read_text()))
    late = channel.run(["sh", "-c", "(sleep 0.4; echo late) & echo early"])
    assert late.stdout == "early\nlate\n"


def test_kill_signals_every_process_of_a_background_command(channel: Channel, tmp_path: Path) -> None:
    script, pids = escapes(tmp_path, detached_output=False)
    handle = channel.start(["sh", "-c", script + "sleep 60"])
    deadline = time.monotonic() + 10
    while not (pids.exists() and len(pids.read_text().split()) == 5) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handle.running
    result = handle.kill("KILL")
    assert result is not None and result.exit_code == 128 + signal.SIGKILL
    assert all(wait_gone(pid) for pid in read_pids(pids))
    assert handle.kill() is not None  # already over: nothing to signal
    term = channel.start(["sleep", "60"])
    time.sleep(0.1)
    assert term.kill("TERM", wait=10) is not None
    assert term.wait().exit_code == 128 + signal.SIGTERM


def test_stdin_bytes_big_streams_and_a_pipe(channel: Channel) -> None:
    payload = os.urandom(3 * p.WINDOW + 12345)  # more than the window: sent as credit comes back
    assert channel.run(["cat"], stdin=payload).stdout_bytes == payload
    assert channel.run(["cat"], stdin=iter([b"a", b"b"])).stdout == "ab"
    cat = channel.start(["cat"], stdin=True)
    cat.send_stdin(b"hello ")
    cat.send_stdin("world")
    cat.close_stdin()
    assert cat.wait(10).stdout == "hello world"
    assert channel.run(["true"], stdin=b"x" * 100_000).exit_code == 0  # input nobody reads is dropped


def test_output_is_capped_and_counted(channel: Channel) -> None:
    result = channel.run(["sh", "-c", "head -c 3000000 /dev/zero; head -c 100 /dev/zero >&2"], max_output=1000)
    assert result.stdout_bytes == b"\0" * 1000 and result.stdout_dropped == 2_999_000 and result.stdout_truncated
    assert result.stderr_dropped == 0 and len(result.stderr_bytes) == 100
    seen: list[int] = []
    with channel.stream(["head", "-c", "2000000", "/dev/urandom"]) as stream:
        for chunk in stream:
            seen.append(len(chunk.data))
        final = stream.wait()
    assert sum(seen) == 2_000_000 and final.stdout_bytes == b"" and final.stdout_dropped == 2_000_000


def test_one_hundred_commands_from_ten_threads(channel: Channel) -> None:
    outputs: list[str] = []

    def worker(n: int) -> None:
        for i in range(10):
            result = channel.run(["sh", "-c", f"echo {n}-{i}; exit {i}"])
            assert result.exit_code == i
            outputs.append(result.stdout)

    failures = from_threads(worker)
    assert not failures, failures[0]
    assert sorted(outputs) == sorted(f"{n}-{i}\n" for n in range(10) for i in range(10))


def test_a_flooding_command_does_not_hold_up_another(channel: Channel) -> None:
    flood = channel.start(["cat", "/dev/zero"], max_output=1024)  # read as fast as it comes, kept capped
    unread = channel.stream(["cat", "/dev/zero"])  # nobody reads it: the agent stops reading its pipe
    time.sleep(0.3)
    start = time.monotonic()
    for _ in range(5):
        assert channel.run(["echo", "hi"]).stdout == "hi\n"
    assert time.monotonic() - start < 2.5
    assert len(flood.stdout) == 1024
    assert unread.kill() == 1 and flood.kill() is not None
    unread.close()
    assert channel.usable


# --- failures -----------------------------------------------------------------------------------------------------

def test_an_agent_killed_mid_command_breaks_the_calls_in_flight(
        open_channel: Callable[..., tuple[Channel, LocalAgent]]) -> None:
    channel, agent = open_channel()
    caller, raised = in_background(lambda: channel.run(["sleep", "30"]))
    time.sleep(0.3)
    agent.proc.kill()
    caller.join(10)
    assert len(raised) == 1 and isinstance(raised[0], errors.ChannelBroken), raised
    assert raised[0].reason == "AgentExited"
    assert not channel.usable
    with pytest.raises(errors.ChannelBroken):
        channel.run(["true"])


def test_a_stopped_agent_breaks_the_channel_after_the_ping_timeout(
        open_channel: Callable[..., tuple[Channel, LocalAgent]]) -> None:
    channel, agent = open_channel(ping_interval=0.2, ping_timeout=1.0)
    time.sleep(0.5)
    assert channel.usable  # pings answered meanwhile
    os.kill(agent.proc.pid, signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(errors.ChannelBroken) as broken:
        channel.run(["true"])
    assert broken.value.reason == "PingTimeout"
    assert time.monotonic() - start < 3
    assert not channel.usable


def test_closing_the_channel_ends_foreground_commands_but_not_background_ones(
        open_channel: Callable[..., tuple[Channel, LocalAgent]], tmp_path: Path) -> None:
    channel, agent = open_channel()
    marker, pid_file = tmp_path / "marker", tmp_path / "pid"
    channel.start(["sh", "-c", f"sleep 0.5; touch {marker}"])
    channel.start(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"], background=False)
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    channel.close()
    assert wait_gone(int(pid_file.read_text()), within=5)
    assert agent.proc.wait(timeout=10) == 0  # once the background command is over
    assert marker.exists()


def test_sigterm_to_the_agent_ends_every_command_and_the_agent(
        open_channel: Callable[..., tuple[Channel, LocalAgent]], tmp_path: Path) -> None:
    channel, agent = open_channel()
    pid_file = tmp_path / "pid"
    handle = channel.start(["sh", "-c", f"echo $$ > {pid_file}; exec sleep 60"])  # background, too
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    agent.proc.terminate()
    assert agent.proc.wait(timeout=10) == 0
    assert wait_gone(int(pid_file.read_text()))
    with pytest.raises(errors.ChannelBroken):
        handle.wait(10)


def test_the_agent_is_non_dumpable_and_its_commands_get_their_oom_score(request: pytest.FixtureRequest) -> None:
    """Run as the image runs it (an execute-only interpreter, another user): no process of the sandbox can open
    the agent's /proc/PID/fd (its stdout is the channel) or trace it; its commands are ordinary processes."""
    tools: Path = request.getfixturevalue("execute_only_tools")
    writable = tools / "writable-agent"
    writable.mkdir()
    os.chown(writable, 65534, 65534)
    agent = LocalAgent(clean_env(SANDBOX_WRITABLE_ROOTS=str(writable)), [str(tools / "sandbox-agent")],
                       cwd=tools, user=65534, group=65534, extra_groups=[])
    try:
        channel = Channel(agent, hello_timeout=10)
        assert os.stat(f"/proc/{agent.proc.pid}/fd").st_uid == 0  # non-dumpable: root's, whoever runs it
        assert int(channel.run(["cat", "/proc/self/oom_score_adj"]).stdout) >= 500
        channel.write_file(f"{writable}/f", b"data")
        assert channel.read_file(f"{writable}/f", max_bytes=10) == b"data"
        channel.close()
    finally:
        agent.stop()


def test_an_image_without_the_agent_is_told_apart(agent_env: dict[str, str]) -> None:
    missing = LocalAgent(agent_env, ["sh", "-c", "echo 'exec: sandbox-agent: not found' >&2; exit 127"])
    try:
        with pytest.raises(errors.AgentUnavailable, match="not found") as unavailable:
            Channel(missing, hello_timeout=10)
        assert unavailable.value.reason == "AgentMissing"
    finally:
        missing.stop()


def test_the_agent_refuses_a_client_that_breaks_the_protocol(agent_env: dict[str, str]) -> None:
    agent = LocalAgent(agent_env)
    try:
        reader = p.FrameReader(agent.read)
        hello = reader.next()
        assert hello is not None and hello.kind == p.HELLO
        agent.write(p.encode(p.RUN, 1, b"{not json"))
        refused = reader.next()
        assert refused is not None and (refused.kind, refused.stream) == (p.ERROR, 1)
        agent.write(p.encode(p.FILE, 2, json.dumps({"op": "stat", "path": "/tmp", "mode": "x"}).encode()))
        refused = reader.next()
        assert refused is not None and (refused.kind, refused.stream) == (p.ERROR, 2)
        assert json.loads(refused.payload)["error"] == "InvalidRequest" and b"'mode'" in refused.payload
        agent.write(p.encode(p.RUN, 1, json.dumps({"argv": ["true"]}).encode()))  # a stream id used before
        fatal = reader.next()
        assert fatal is not None and (fatal.kind, fatal.stream) == (p.ERROR, 0)
        assert b"not above the last one" in fatal.payload
        assert agent.proc.wait(timeout=10) == 0
    finally:
        agent.stop()


# --- hostile agents -------------------------------------------------------------------------------------------------

HELLO = p.encode(p.HELLO, 0, json.dumps({"protocol": 1, "agent": "fake", "pid": 1, "window": p.WINDOW,
                                         "max_payload": p.MAX_PAYLOAD}).encode())


class ScriptedAgent:
    """A transport whose agent is a function: each frame the client sends gets ``respond(frame)``'s bytes."""

    def __init__(self, respond: Callable[[p.Frame], bytes], first: bytes = HELLO) -> None:
        self.respond = respond
        self.incoming: queue.Queue[bytes | None] = queue.Queue()
        self.sent: list[p.Frame] = []
        self._pending = bytearray()
        self._leftover = b""
        if first:
            self.incoming.put(first)

    def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) >= p.HEADER.size:
            _magic, kind, stream, length = p.HEADER.unpack_from(self._pending)
            if len(self._pending) < p.HEADER.size + length:
                return
            frame = p.Frame(kind, stream, bytes(self._pending[p.HEADER.size:p.HEADER.size + length]))
            del self._pending[:p.HEADER.size + length]
            self.sent.append(frame)
            if frame.kind != p.PING and (answer := self.respond(frame)):
                self.incoming.put(answer)

    def read(self, n: int) -> bytes:
        if not self._leftover:
            self._leftover = self.incoming.get() or b""
        data, self._leftover = self._leftover[:n], self._leftover[n:]
        return data

    def close(self) -> None:
        self.incoming.put(None)

    def diagnostic(self) -> str:
        return ""


def exit_frame(stream: int, **report: Any) -> bytes:
    body = {"exit_code": 0, "timed_out": False, "cpu_seconds": 0.0, "peak_rss_bytes": 0, **report}
    return p.encode(p.EXIT, stream, json.dumps(body).encode())


@pytest.mark.parametrize(("answer", "problem"), [
    (lambda s: p.encode(p.STDOUT, s + 1, b"x"), "not open"),
    (lambda s: p.encode(p.RESULT, s, b"{}"), "RESULT on command stream"),
    (lambda s: exit_frame(s, exit_code=300), "EXIT"),
    (lambda s: exit_frame(s, surprise=1), "EXIT"),
    (lambda s: p.encode(p.EXIT, s, b'{"exit_code": 0, "exit_code": 1}'), "EXIT"),
    (lambda s: p.encode(p.EXIT, s, b"[]"), "EXIT"),
    (lambda s: b"\x00" * 10, "bad magic"),
    (lambda s: struct.pack(">BBII", p.MAGIC, p.STDOUT, s, 0xFFFFFFFF), "at most"),
    (lambda s: p.encode(p.PONG, 0, b"x" * 100), "PONG on stream 0"),
    (lambda s: p.encode(p.ERROR, 0, b'{"error": "Boom", "message": "gave up"}'), "gave up"),
], ids=["unknown-stream", "wrong-frame", "exit-code", "extra-field", "duplicate-key", "not-object",
        "bad-magic", "oversized", "long-pong", "agent-error"])
def test_a_hostile_agent_breaks_the_channel(answer: Callable[[int], bytes], problem: str) -> None:
    def respond(frame: p.Frame) -> bytes:
        return answer(frame.stream) if frame.kind == p.RUN else b""

    channel = Channel(ScriptedAgent(respond), ping_interval=5)
    with pytest.raises(errors.ChannelBroken, match=problem):
        channel.run(["true"])
    assert not channel.usable


def test_output_beyond_the_window_is_a_protocol_error() -> None:
    # On the stream itself, in one thread: through a channel the caller may take the first frame and grant its
    # credit back before the reader sees the second, which then fits.
    stream = channel_module._Stream(cast(Channel, None), "command")
    stream.accepts = frozenset({p.STDOUT, p.STDERR, p.EXIT})
    stream.feed(p.Frame(p.STDOUT, 1, b"x" * p.WINDOW))
    with pytest.raises(p.ProtocolError, match="window"):
        stream.feed(p.Frame(p.STDERR, 1, b"x"))


def test_a_scripted_answer_in_order_is_a_result() -> None:
    def respond(frame: p.Frame) -> bytes:
        if frame.kind != p.RUN:
            return b""
        return p.encode(p.STDOUT, frame.stream, b"out") + exit_frame(frame.stream, exit_code=3, cpu_seconds=1.5)

    result = Channel(ScriptedAgent(respond)).run(["x"])
    assert (result.stdout, result.exit_code, result.cpu_seconds) == ("out", 3, 1.5)


@pytest.mark.parametrize(("first", "reason"), [
    (b"", "AgentMissing"),
    (b"bash: sandbox-agent: command not found\n", "NotAnAgent"),
    (p.encode(p.STDOUT, 0, b"x"), "NotAnAgent"),
    (p.encode(p.HELLO, 0, b'{"protocol": 2}'), "UnsupportedProtocol"),
    (p.encode(p.HELLO, 0, b'{"protocol": 1}'), "NotAnAgent"),
])
def test_a_stream_that_does_not_start_with_a_hello_we_speak_is_no_agent(first: bytes, reason: str) -> None:
    transport = ScriptedAgent(lambda frame: b"", first=first)
    if not first:
        transport.close()
    with pytest.raises(errors.AgentUnavailable) as unavailable:
        Channel(transport, hello_timeout=5)
    assert unavailable.value.reason == reason


# --- files ----------------------------------------------------------------------------------------------------------

def test_file_operations_round_trip(channel: Channel, roots: dict[str, Path]) -> None:
    ws = str(roots["ws"])
    data = os.urandom(2 * p.WINDOW + 777)
    channel.write_file(f"{ws}/a/b/data.bin", data, mode=0o600)
    assert (roots["ws"] / "a" / "b" / "data.bin").read_bytes() == data
    assert channel.read_file(f"{ws}/a/b/data.bin", max_bytes=len(data)) == data
    sink = io.BytesIO()
    assert channel.read_file(f"{ws}/a/b/data.bin", max_bytes=len(data), sink=sink) == b""
    assert sink.getvalue() == data
    info = channel.stat(f"{ws}/a/b/data.bin")
    assert (info.type, info.size, info.mode) == ("file", len(data), 0o600)
    channel.write_file(f"{ws}/stream.txt", io.BytesIO(b"from a file object"))
    assert channel.read_file(f"{ws}/stream.txt", max_bytes=100) == b"from a file object"
    assert [f.name for f in channel.list_dir(ws)] == ["a", "stream.txt"]
    assert channel.exists(f"{ws}/a") and not channel.exists(f"{ws}/nope")
    channel.mkdir(f"{ws}/x/y")
    assert channel.stat(f"{ws}/x/y").is_dir
    channel.remove(f"{ws}/stream.txt")
    channel.remove(f"{ws}/x", recursive=True)
    assert sorted(os.listdir(ws)) == ["a"]


def test_file_errors_are_the_sdks(channel: Channel, roots: dict[str, Path]) -> None:
    ws = str(roots["ws"])
    with pytest.raises(errors.SandboxFileNotFound):
        channel.read_file(f"{ws}/missing", max_bytes=10)
    with pytest.raises(errors.PathOutsideSandbox):
        channel.read_file(str(roots["outside"] / "secret"), max_bytes=10)
    with pytest.raises(errors.PathOutsideSandbox):
        channel.write_file(str(roots["outside"] / "planted"), b"x")
    assert not (roots["outside"] / "planted").exists()
    (roots["ws"] / "big").write_bytes(b"x" * 5000)
    with pytest.raises(errors.FileTooLarge):
        channel.read_file(f"{ws}/big", max_bytes=4999)
    (roots["ws"] / "d" / "e").mkdir(parents=True)
    with pytest.raises(errors.FileError, match="not empty"):
        channel.remove(f"{ws}/d")
    assert channel.run(["true"]).exit_code == 0  # the channel is fine after all of them


def test_archives_round_trip(channel: Channel, roots: dict[str, Path]) -> None:
    src = roots["ws"] / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(3 * p.WINDOW))
    (src / "link").symlink_to("d/f")
    archive = io.BytesIO()
    size = channel.tar_out(str(src), archive, max_bytes=10 * p.WINDOW, arcname=".")
    assert size == len(archive.getvalue())
    with tarfile.open(fileobj=io.BytesIO(archive.getvalue())) as tar:
        assert {"./d/f", "./link"} <= set(tar.getnames())
    channel.tar_in(str(roots["tmp"] / "copy"), archive.getvalue())
    assert (roots["tmp"] / "copy" / "d" / "f").read_bytes() == (src / "d" / "f").read_bytes()
    assert os.readlink(roots["tmp"] / "copy" / "link") == "d/f"
    with pytest.raises(errors.FileTooLarge):
        channel.tar_out(str(src), io.BytesIO(), max_bytes=p.WINDOW)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("../escape"), io.BytesIO(b""))
    with pytest.raises(errors.PathOutsideSandbox):
        channel.tar_in(str(roots["ws"]), evil.getvalue())
    assert channel.usable


# --- the kubernetes transport -------------------------------------------------------------------------------------

class _Message:
    def __init__(self, data: bytes) -> None:
        self.data = data


class FakeWebSocket:
    """What PodExecTransport uses of a websocket-client WebSocket. ``messages`` are (exec channel, bytes), one per
    receive; ``respond`` turns what the client sends on stdin into more. A receive with nothing to give waits, as a
    socket does, until ``abort()`` shuts it down; ``None`` among the messages is the server closing."""

    def __init__(self, messages: list[tuple[int, bytes] | None],
                 respond: Callable[[bytes], list[tuple[int, bytes]]] | None = None) -> None:
        self.messages: queue.Queue[tuple[int, bytes] | None] = queue.Queue()
        for message in messages:
            self.messages.put(message)
        self.respond = respond
        self.sent: list[bytes] = []
        self.aborted = threading.Event()
        self.shut = False

    def recv_data_frame(self, control_frame: bool) -> tuple[int, _Message]:
        while not self.aborted.is_set():
            try:
                message = self.messages.get(timeout=0.01)
            except queue.Empty:
                continue
            if message is None:
                return websocket.ABNF.OPCODE_CLOSE, _Message(b"")
            channel, data = message
            return websocket.ABNF.OPCODE_BINARY, _Message(bytes([channel]) + data)
        raise OSError("the socket was shut down")

    def send(self, payload: bytes, opcode: int = websocket.ABNF.OPCODE_TEXT) -> None:
        assert opcode == websocket.ABNF.OPCODE_BINARY and payload[0] == 0  # exec channel 0: stdin
        self.sent.append(payload[1:])
        if self.respond is not None:
            for message in self.respond(payload[1:]):
                self.messages.put(message)

    def abort(self) -> None:
        self.aborted.set()

    def shutdown(self) -> None:
        self.shut = True


def test_the_pod_exec_transport_reads_stdout_and_keeps_the_rest_for_diagnostics() -> None:
    status = json.dumps({"status": "Failure", "reason": "InternalError", "message": "exec: no such file"})
    ws = FakeWebSocket([(1, b"abc"), (2, b"agent says hi\n"), (1, b"def"), (3, status.encode()), None])
    transport = PodExecTransport(ws)
    assert transport.read(2) == b"ab"
    assert transport.read(100) == b"c"
    assert transport.read(100) == b"def"
    assert transport.read(100) == b""
    assert transport.diagnostic() == "exec: no such file; agent says hi"
    transport.write(b"frame")
    assert ws.sent == [b"frame"]
    transport.close()
    assert ws.aborted.is_set() and ws.shut
    with pytest.raises(OSError, match="closed"):
        transport.write(b"more")


def test_the_socket_is_closed_only_after_the_reader_left_it() -> None:
    # OpenSSL reads and writes by the descriptor's number without the GIL: closed under a reader, the number can
    # meanwhile be another file's (a subprocess's pipe once received TLS records that way).
    ws = FakeWebSocket([])
    left = threading.Event()
    shut_while_reading: list[bool] = []
    receive = ws.recv_data_frame

    def slow_receive(control_frame: bool) -> tuple[int, _Message]:
        try:
            return receive(control_frame)
        finally:
            time.sleep(0.2)  # still inside the read after the shutdown woke it
            shut_while_reading.append(ws.shut)
            left.set()

    ws.recv_data_frame = slow_receive  # type: ignore[method-assign]
    transport = PodExecTransport(ws)
    reader = threading.Thread(target=transport.read, args=(10,))
    reader.start()
    time.sleep(0.1)
    transport.close()
    assert ws.aborted.is_set() and not ws.shut, "closed while a thread was in a read"
    assert left.wait(5)
    reader.join(5)
    assert shut_while_reading == [False] and ws.shut


def test_closing_the_pod_exec_transport_wakes_a_blocked_reader() -> None:
    transport = PodExecTransport(FakeWebSocket([]))
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(transport.read(10)))
    reader.start()
    time.sleep(0.1)
    assert reader.is_alive()
    transport.close()
    reader.join(5)
    assert got == [b""]
    assert transport.diagnostic() == ""  # a close of our own is no failure


def test_a_missing_agent_over_pods_exec_is_agent_unavailable() -> None:
    status = json.dumps({"status": "Failure", "reason": "InternalError",
                         "message": 'exec: "/usr/local/bin/sandbox-agent": stat: no such file or directory'})
    transport = PodExecTransport(FakeWebSocket([(3, status.encode()), None]))
    with pytest.raises(errors.AgentUnavailable, match="no such file") as unavailable:
        Channel(transport, hello_timeout=5)
    assert unavailable.value.reason == "AgentMissing"


def client_frame(data: bytes) -> p.Frame:
    """One frame the client wrote (FrameReader takes only the agent's frame types)."""
    _magic, kind, stream, length = p.HEADER.unpack_from(data)
    assert len(data) == p.HEADER.size + length
    return p.Frame(kind, stream, data[p.HEADER.size:])


class FakeSocket:
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def settimeout(self, timeout: float | None) -> None:
        self.timeouts.append(timeout)


def test_pod_exec_transport_starts_the_agent_with_stdin_and_no_socket_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[Any, ...]] = []
    ws = FakeSocket()

    def create_websocket(configuration: Any, url: str, headers: dict[str, str]) -> FakeSocket:
        opened.append((url, headers))
        return ws

    monkeypatch.setattr(exec_module.ws_client, "create_websocket", create_websocket)
    api = ApiClient(Configuration(host="https://cluster.example:6443"))
    transport = pod_exec_transport(api, "ns", "pod-1", container="sandbox", sandbox="box")
    assert isinstance(transport, PodExecTransport)
    [(url, headers)] = opened
    assert url.startswith("wss://cluster.example:6443/api/v1/namespaces/ns/pods/pod-1/exec?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query == {"command": [constants.AGENT_PROGRAM], "container": ["sandbox"], "stdin": ["true"],
                     "stdout": ["true"], "stderr": ["true"], "tty": ["false"]}
    assert headers["sec-websocket-protocol"] == "v5.channel.k8s.io,v4.channel.k8s.io"
    assert ws.timeouts[-1] is None  # the keep-alive, not the socket, tells a quiet stream from a dead one


@pytest.mark.parametrize(("failures", "opens"), [(2, True), (3, False)])
def test_a_dropped_connection_to_the_agent_is_tried_again_a_bounded_number_of_times(
        monkeypatch: pytest.MonkeyPatch, failures: int, opens: bool) -> None:
    attempts: list[str] = []

    def create_websocket(configuration: Any, url: str, headers: dict[str, str]) -> FakeSocket:
        attempts.append(url)
        if len(attempts) <= failures:
            raise websocket.WebSocketConnectionClosedException("socket is already closed.")
        return FakeSocket()

    monkeypatch.setattr(exec_module.ws_client, "create_websocket", create_websocket)
    monkeypatch.setattr(channel_module, "AGENT_CONNECT_BACKOFF", 0.0)
    api = ApiClient(Configuration(host="https://h"))
    if opens:
        assert isinstance(pod_exec_transport(api, "ns", "pod-1", container="sandbox"), PodExecTransport)
    else:
        with pytest.raises(errors.ExecError) as failed:
            pod_exec_transport(api, "ns", "pod-1", container="sandbox")
        assert failed.value.reason == "ConnectionFailed"
    assert len(attempts) == min(failures + 1, channel_module.AGENT_CONNECT_ATTEMPTS)


@pytest.mark.parametrize(("status", "body", "error", "reason"), [
    (500, {"message": 'exec: "/usr/local/bin/sandbox-agent": stat /usr/local/bin/sandbox-agent: no such file or '
                      "directory"}, errors.AgentUnavailable, "AgentMissing"),
    (403, {"reason": "Forbidden", "message": "pods/exec is forbidden"}, errors.SandboxForbidden, "Forbidden"),
    (404, {"reason": "NotFound", "message": 'pods "pod-1" not found'}, errors.SandboxNotFound, "NotFound"),
    (400, {"message": "container sandbox is not valid"}, errors.ExecError, "ExecRejected"),
])
def test_pod_exec_transport_tells_a_missing_agent_from_other_refusals(
        monkeypatch: pytest.MonkeyPatch, status: int, body: dict[str, str], error: type[errors.SandboxError],
        reason: str) -> None:
    def create_websocket(*args: Any) -> None:
        raise websocket.WebSocketBadStatusException(f"Handshake status {status}", status,
                                                    resp_body=json.dumps(body).encode())

    monkeypatch.setattr(exec_module.ws_client, "create_websocket", create_websocket)
    with pytest.raises(error) as refused:
        pod_exec_transport(ApiClient(Configuration(host="https://h")), "ns", "pod-1", container="sandbox")
    assert type(refused.value) is error and refused.value.reason == reason


def test_a_channel_over_the_pod_exec_transport() -> None:
    def respond(data: bytes) -> list[tuple[int, bytes]]:
        frame = client_frame(data)
        if frame.kind != p.RUN:
            return []
        answer = p.encode(p.STDOUT, frame.stream, b"hi\n") + exit_frame(frame.stream)
        return [(1, answer[:5]), (2, b"noise on stderr"), (1, answer[5:])]  # frames split across messages

    ws = FakeWebSocket([(1, HELLO)], respond)
    channel = Channel(PodExecTransport(ws))
    assert channel.hello is not None
    assert channel.run(["echo", "hi"]).stdout == "hi\n"
    sent = client_frame(ws.sent[0])
    assert sent.kind == p.RUN and json.loads(sent.payload)["argv"] == ["echo", "hi"]
    channel.close()
    assert ws.aborted.is_set()


def test_disconnecting_stops_following_and_leaves_the_command_running(channel: Channel, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    handle = channel.start(["sh", "-c", f"sleep 0.5; touch {marker}; sleep 0.2"])
    start = time.monotonic()
    handle.disconnect()
    with pytest.raises(errors.ExecError) as closed:
        handle.wait(5)
    assert closed.value.reason == "StreamClosed"
    assert time.monotonic() - start < 0.4
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists()
    assert channel.run(["true"]).exit_code == 0  # its later frames are taken and dropped


def test_stdin_pipe_and_kill_of_a_stream(channel: Channel) -> None:
    pipe = StdinPipe()
    with channel.stream(["cat"], stdin=pipe, max_output=100) as stream:
        pipe.write(b"line\n")
        chunk = next(iter(stream))
        assert chunk.data == b"line\n"
        assert stream.kill("TERM") == 1
        assert stream.wait().exit_code == 128 + signal.SIGTERM
    assert channel.usable

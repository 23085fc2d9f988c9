"""How a Sandbox reaches its sandbox, without a cluster: the transport setting, one channel per sandbox shared by its
handles, the fallback to one exec per command where there is no agent, a new channel after one broke, a retry only
when nothing of the request went out, activity, and closing.

The channels here are real: the image's agent as a local process (``LocalAgent``), or a scripted one for what a real
agent does not do on cue. Per-command exec is the scripted WebSocket of ``test_sdk_commands``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from sandbox_operator import cli
from sandbox_operator.sdk import errors
from sandbox_operator.sdk import protocol as p
from sandbox_operator.sdk.aio import AsyncSandbox
from sandbox_operator.sdk.channel import Channel, Transport
from sandbox_operator.sdk.manager import SandboxManager
from sandbox_operator.sdk.sandbox import Sandbox
from sandbox_operator.sdk.transport import ENV_TRANSPORT, ChannelPool, ChannelSlot, transport_from
from tests.unit.test_channel import HELLO, LocalAgent, ScriptedAgent, exit_frame, from_threads
from tests.unit.test_image_tools import clean_env
from tests.unit.test_sdk_commands import Exec, output_frames

pytestmark = pytest.mark.timeout(60)


# The setting -------------------------------------------------------------------------------------------------------

def test_the_transport_is_the_argument_else_the_environment_else_auto() -> None:
    assert transport_from(None, {}) == "auto"
    assert transport_from(None, {ENV_TRANSPORT: " exec "}) == "exec"
    assert transport_from(None, {ENV_TRANSPORT: ""}) == "auto"
    assert transport_from("channel", {ENV_TRANSPORT: "exec"}) == "channel"
    with pytest.raises(ValueError, match=r"^transport must be one of auto, channel, exec, not 'ssh'$"):
        transport_from("ssh", {})
    with pytest.raises(ValueError, match=r"^\$SANDBOX_EXEC_TRANSPORT must be one of auto, channel, exec, not 'Exec'"):
        transport_from(None, {ENV_TRANSPORT: "Exec"})


def test_the_manager_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_TRANSPORT, "exec")
    assert SandboxManager("ns", api_client=client.ApiClient()).transport == "exec"
    assert SandboxManager("ns", api_client=client.ApiClient(), transport="auto").transport == "auto"
    monkeypatch.setenv(ENV_TRANSPORT, "nope")
    with pytest.raises(ValueError, match="SANDBOX_EXEC_TRANSPORT"):
        SandboxManager("ns", api_client=client.ApiClient())


def test_sandboxctl_passes_its_transport_to_the_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict[str, Any]] = []

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            made.append(kwargs)

    monkeypatch.setattr("sandbox_operator.sdk.SandboxManager", Recorder)
    for argv, expected in ((["list"], None), (["--transport", "exec", "list"], "exec"),
                           (["list", "--transport", "channel"], "channel")):
        _ = cli.Context(cli.parse_args(cli.build_parser(), argv)).manager
        assert made[-1]["transport"] == expected
    with pytest.raises(SystemExit):
        cli.parse_args(cli.build_parser(), ["--transport", "ssh", "list"])


# One sandbox's channel --------------------------------------------------------------------------------------------

class Opener:
    """Opens channels to local agents (or raises what it is told to), counting the openings."""

    def __init__(self, env: dict[str, str], *, fail: BaseException | None = None, delay: float = 0.0,
                 make: Callable[[], Transport] | None = None) -> None:
        self.env = env
        self.fail = fail
        self.delay = delay
        self.make = make
        self.count = 0
        self.agents: list[LocalAgent] = []
        self.channels: list[Channel] = []

    def __call__(self, namespace: str = "ns", name: str = "box", pod: str = "box") -> Channel:
        self.count += 1
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        transport: Transport
        if self.make is not None:
            transport = self.make()
        else:
            agent = LocalAgent(self.env)
            self.agents.append(agent)
            transport = agent
        channel = Channel(transport, sandbox=name, namespace=namespace, shell="/bin/sh")
        self.channels.append(channel)
        return channel

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        for agent in self.agents:
            agent.stop()


@pytest.fixture
def agent_env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ws").mkdir()
    return clean_env(SANDBOX_WRITABLE_ROOTS=str(tmp_path / "ws"), SANDBOX_COMMAND_TIMEOUT="30")


@pytest.fixture
def opener(agent_env: dict[str, str]) -> Iterator[Opener]:
    made = Opener(agent_env)
    yield made
    made.stop()


def test_threads_that_need_the_channel_at_once_share_one_opening(agent_env: dict[str, str]) -> None:
    opener = Opener(agent_env, delay=0.3)
    try:
        slot = ChannelSlot(opener, fallback=True)
        got: list[Channel | None] = []
        assert not from_threads(lambda _n: got.append(slot.get()), count=5)
        assert opener.count == 1 and len(set(map(id, got))) == 1
    finally:
        opener.stop()


def test_a_broken_channel_is_replaced_on_the_next_get(opener: Opener) -> None:
    slot = ChannelSlot(opener, fallback=True)
    first = slot.get()
    assert first is not None
    opener.agents[0].stop()  # the agent is killed
    deadline = time.monotonic() + 10
    while first.usable and time.monotonic() < deadline:
        time.sleep(0.01)
    second = slot.get()
    assert second is not None and second is not first and opener.count == 2


def test_no_agent_is_remembered_with_fallback_and_raised_without(agent_env: dict[str, str]) -> None:
    missing = errors.AgentUnavailable("no /usr/local/bin/sandbox-agent", reason="AgentMissing")
    opener = Opener(agent_env, fail=missing)
    slot = ChannelSlot(opener, fallback=True)
    assert slot.get() is None and slot.get() is None
    assert opener.count == 1 and slot.no_agent is missing
    strict = ChannelSlot(opener, fallback=False)
    with pytest.raises(errors.AgentUnavailable):
        strict.get()
    with pytest.raises(errors.AgentUnavailable):
        strict.get()  # nothing remembered: it is not this transport's to fall back
    assert opener.count == 3


def test_other_failures_to_open_are_raised_and_not_remembered(agent_env: dict[str, str]) -> None:
    opener = Opener(agent_env, fail=errors.SandboxNotFound("pods \"box\" not found", reason="NotFound"))
    slot = ChannelSlot(opener, fallback=True)
    for _ in range(2):
        with pytest.raises(errors.SandboxNotFound):
            slot.get()
    assert opener.count == 2 and slot.no_agent is None


def test_a_slot_closed_while_opening_closes_what_it_opened(agent_env: dict[str, str]) -> None:
    opener = Opener(agent_env, delay=0.3)
    try:
        slot = ChannelSlot(opener, fallback=True)

        def get() -> None:
            with contextlib.suppress(errors.ChannelBroken):
                slot.get()

        thread = threading.Thread(target=get)
        thread.start()
        time.sleep(0.1)
        slot.close()
        thread.join(10)
        assert opener.count == 1 and not opener.channels[0].usable  # nobody was left holding an open channel
        with pytest.raises(errors.ChannelBroken) as closed:
            slot.get()
        assert closed.value.reason == "Closed"
    finally:
        opener.stop()


def test_the_pool_opens_ahead_of_use_and_closes_everything(opener: Opener) -> None:
    pool = ChannelPool(opener, fallback=True)
    then: list[int] = []
    pool.prepare("ns", "box", "box", then=lambda: then.append(opener.count)).join(10)
    assert opener.count == 1 and then == [1]  # called once the channel is open
    assert pool.slot("ns", "box", "box").get() is opener.channels[0]
    assert opener.count == 1
    other = pool.slot("ns", "other", "other").get()
    assert other is not None and opener.count == 2
    pool.forget("ns", "box")
    assert not opener.channels[0].usable and other.usable
    pool.close()
    assert not other.usable


# A Sandbox over its channel ---------------------------------------------------------------------------------------

class FakeActivity:
    """What the Sandbox asks of the activity recorder, recorded."""

    def __init__(self) -> None:
        self.touches = 0
        self.holds = 0
        self.held = 0

    def touch(self, namespace: str, name: str, *, force: bool = False) -> bool:
        self.touches += 1
        return True

    @contextlib.contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        self.holds += 1
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1

    def configure(self, namespace: str, name: str, idle_seconds: float | None) -> None:
        pass

    def forget(self, namespace: str, name: str) -> None:
        pass

    def close(self) -> None:
        pass


def make_sandbox(opener: Callable[[str, str, str], Channel], *, transport: str = "auto",
                 exec_answer: Callable[[list[str]], Any] | None = None) -> tuple[Sandbox, FakeActivity, Exec]:
    manager = SandboxManager("ns", api_client=client.ApiClient(), transport=transport)
    manager._channels = ChannelPool(opener, fallback=manager.transport == "auto")
    activity = FakeActivity()
    manager.activity = activity  # type: ignore[assignment]  # a stand-in of another class
    sandbox = Sandbox(manager, "box", "ns", {"metadata": {"name": "box"}, "spec": {}, "status": {}})
    exec_path = Exec(exec_answer or (lambda argv: output_frames([b"over exec\n"])))
    sandbox._open = exec_path  # type: ignore[method-assign]
    sandbox._diagnose = lambda exc: exc  # type: ignore[method-assign]  # no API server to ask
    return sandbox, activity, exec_path


def test_commands_and_files_go_over_the_channel_with_their_resource_use(opener: Opener, tmp_path: Path) -> None:
    sandbox, activity, exec_path = make_sandbox(opener)
    result = sandbox.run(["sh", "-c", "echo hi; echo err >&2; exit 3"])
    assert (result.stdout, result.stderr, result.exit_code) == ("hi\n", "err\n", 3)
    assert result.cpu_seconds is not None and result.peak_rss_bytes
    assert result.to_dict()["cpuSeconds"] == result.cpu_seconds
    workspace = tmp_path / "ws"
    sandbox.files.write(str(workspace / "a.bin"), b"\0\1\2")
    assert sandbox.files.read_bytes(str(workspace / "a.bin")) == b"\0\1\2"
    assert [e.name for e in sandbox.files.list(str(workspace))] == ["a.bin"]
    handle = sandbox.start(["cat"], stdin=True)
    handle.send_stdin(b"piped\n")
    handle.close_stdin()
    assert handle.wait(10).stdout == "piped\n"
    assert opener.count == 1 and exec_path.argvs == []  # one channel for all of it, not one exec
    assert activity.touches == 5 and activity.holds == 5 and activity.held == 0


def test_every_handle_on_a_sandbox_shares_its_channel(opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(opener)
    again = Sandbox(sandbox.manager, "box", "ns")  # what the session methods do on every call
    again._diagnose = sandbox._diagnose  # type: ignore[method-assign]
    assert sandbox.run(["true"]).exit_code == 0 and again.run(["true"]).exit_code == 0
    assert opener.count == 1


def test_commands_from_many_threads_and_from_asyncio_share_one_channel(opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(opener)

    def work(n: int) -> None:
        for i in range(5):
            assert sandbox.run(["echo", f"{n}-{i}"]).stdout == f"{n}-{i}\n"

    assert not from_threads(work, count=8)

    async def from_tasks() -> list[str]:
        box = AsyncSandbox(sandbox)
        results = await asyncio.gather(*(box.run(["echo", str(n)]) for n in range(10)))
        return [r.stdout for r in results]

    assert asyncio.run(from_tasks()) == [f"{n}\n" for n in range(10)]
    assert opener.count == 1


def test_an_image_without_the_agent_gets_one_exec_per_command(agent_env: dict[str, str]) -> None:
    opener = Opener(agent_env, fail=errors.AgentUnavailable("no agent", reason="AgentMissing"))
    sandbox, _, exec_path = make_sandbox(opener)
    assert sandbox.run(["echo", "x"]).stdout == "over exec\n"
    assert sandbox.run(["echo", "y"]).stdout == "over exec\n"
    assert opener.count == 1 and len(exec_path.argvs) == 2  # asked once, then remembered
    assert sandbox.run(["echo", "z"]).cpu_seconds is None  # no resource use without the agent

    strict, _, _ = make_sandbox(opener, transport="channel")
    with pytest.raises(errors.AgentUnavailable):
        strict.run(["true"])


def test_the_exec_transport_never_opens_a_channel(opener: Opener) -> None:
    sandbox, _, exec_path = make_sandbox(opener, transport="exec")
    assert sandbox.run(["true"]).stdout == "over exec\n"
    exec_path.answer = lambda argv: output_frames([b"[]"])
    assert sandbox.files.list("/workspace") == []
    assert opener.count == 0 and exec_path.argvs[1][-3:] == ["/usr/local/bin/sandbox-files", "ls", "/workspace"]


def test_a_channel_that_broke_between_calls_is_replaced(opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(opener)
    assert sandbox.run(["true"]).exit_code == 0
    opener.agents[0].stop()
    deadline = time.monotonic() + 10
    while opener.channels[0].usable and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sandbox.run(["echo", "again"]).stdout == "again\n"
    assert opener.count == 2


class BreaksBeforeSending(Channel):
    """A channel that breaks in the instant between the Sandbox finding it usable and sending its request."""

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        self.close()
        return super().stream(*args, **kwargs)


def test_a_call_that_sent_nothing_is_retried_once_on_a_new_channel(agent_env: dict[str, str]) -> None:
    agents: list[LocalAgent] = []

    def open_channel(namespace: str, name: str, pod: str) -> Channel:
        agents.append(LocalAgent(agent_env))
        kind = BreaksBeforeSending if len(agents) == 1 else Channel
        return kind(agents[-1], sandbox=name, namespace=namespace)

    try:
        sandbox, _, _ = make_sandbox(open_channel)
        assert sandbox.run(["echo", "once"]).stdout == "once\n"
        assert len(agents) == 2
    finally:
        for agent in agents:
            agent.stop()


def test_a_call_whose_request_went_out_is_not_retried() -> None:
    runs: list[p.Frame] = []
    transports: list[ScriptedAgent] = []

    def answer(frame: p.Frame) -> bytes:
        if frame.kind == p.RUN:
            runs.append(frame)
            if len(transports) == 1:
                transports[0].close()  # the agent dies with the command running
                return b""
            return exit_frame(frame.stream)
        return b""

    def make() -> Transport:
        transports.append(ScriptedAgent(answer, first=HELLO))
        return transports[-1]

    opener = Opener({}, make=make)
    sandbox, _, _ = make_sandbox(opener)
    with pytest.raises(errors.ChannelBroken) as broken:
        sandbox.run(["touch", "/workspace/once"])
    assert broken.value.reason == "AgentExited" and broken.value.request_sent
    assert "cut off and is not retried" in broken.value.message and "touch /workspace/once" in broken.value.message
    assert len(runs) == 1 and opener.count == 1  # not run a second time
    assert sandbox.run(["true"]).exit_code == 0  # the next call gets a new channel
    assert opener.count == 2 and json.loads(runs[-1].payload)["argv"] == ["true"]
    sandbox.manager.close()


def test_keepalives_are_not_activity(agent_env: dict[str, str]) -> None:
    def open_channel(namespace: str, name: str, pod: str) -> Channel:
        agent = LocalAgent(agent_env)
        opened.append(agent)
        return Channel(agent, sandbox=name, namespace=namespace, ping_interval=0.05, ping_timeout=5)

    opened: list[LocalAgent] = []
    sandbox, activity, _ = make_sandbox(open_channel)
    try:
        assert sandbox.run(["true"]).exit_code == 0
        before = activity.touches
        time.sleep(0.5)  # about ten pings
        assert activity.touches == before
    finally:
        sandbox.manager.close()
        for agent in opened:
            agent.stop()


def test_deleting_the_sandbox_and_closing_the_manager_close_its_channels(opener: Opener,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox, _, _ = make_sandbox(opener)
    deleted: list[str] = []
    monkeypatch.setattr(sandbox.manager.api, "delete_sandbox", lambda name, namespace: deleted.append(name))
    assert sandbox.run(["true"]).exit_code == 0
    sandbox.delete()
    assert deleted == ["box"] and not opener.channels[0].usable
    assert sandbox.run(["true"]).exit_code == 0  # a handle used after delete() opens a new one
    sandbox.manager.close()
    assert not opener.channels[1].usable
    for agent in opener.agents:
        assert agent.proc.wait(timeout=10) == 0  # each agent saw the end of its stdin and exited
    for channel in opener.channels:  # and nothing of the channels is left running here
        channel._reader.join(10)
        channel._keepalive.join(10)
        assert not channel._reader.is_alive() and not channel._keepalive.is_alive()


def test_sandboxctl_exec_json_shows_the_resource_use(opener: Opener, monkeypatch: pytest.MonkeyPatch,
                                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    sandbox, _, _ = make_sandbox(opener)
    monkeypatch.setattr(cli.Context, "sandbox", lambda self, name: sandbox)
    assert cli.main(["exec", "-o", "json", "box", "--", "sh", "-c", "printf out; exit 4"]) == 4
    printed = capsysbinary.readouterr().out
    report = json.loads(printed.removeprefix(b"out"))
    assert report["exitCode"] == 4 and report["cpuSeconds"] >= 0 and report["peakRssBytes"] > 0

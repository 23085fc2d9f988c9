"""The channel over a real pods/exec stream: the image's sandbox-agent, the official client's WebSocket.

Needs the sandbox image with /usr/local/bin/sandbox-agent. The channel is opened directly (Channel over
pod_exec_transport), next to the SDK's per-command path (a manager with transport "exec"), which the tests use to
act on the agent from inside the sandbox (kill it, stop it, look for processes). The last tests are the SDK's
choice of transport: the fallback where the image has no agent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk import Sandbox, SandboxManager, errors
from sandbox_operator.sdk.channel import Channel, pod_exec_transport
from tests.kit import READY_TIMEOUT, SMALL_SPEC, Cluster, namespace_fixture
from tests.unit.test_channel import from_threads, in_background

namespace = namespace_fixture("channel-e2e")


@pytest.fixture(scope="module")
def sandbox(cluster: Cluster, namespace: str) -> Iterator[Sandbox]:
    """A sandbox whose own commands go one exec each: they act on the channels under test without using one."""
    with SandboxManager(namespace, kubeconfig=cluster.kubeconfig, ready_timeout=READY_TIMEOUT,
                        default_spec=SMALL_SPEC, transport="exec") as manager, \
            manager.create(labels={"e2e": "channel"}) as sbx:
        yield sbx


def open_channel(sandbox: Sandbox, **options: float) -> Channel:
    transport = pod_exec_transport(sandbox.manager.api.api_client, sandbox.namespace, sandbox.pod_name,
                                   container=constants.CONTAINER_NAME)
    return Channel(transport, sandbox=sandbox.name, namespace=sandbox.namespace, **options)


def alive(sandbox: Sandbox, pid: int) -> bool:
    return sandbox.run(["sh", "-c", f"kill -0 {pid} 2>/dev/null"]).exit_code == 0


def test_commands_and_files_over_one_stream(sandbox: Sandbox) -> None:
    with open_channel(sandbox) as channel:
        result = channel.run(["sh", "-c", r"printf 'out\000\377'; echo err >&2; exit 7"])
        assert (result.exit_code, result.stdout_bytes, result.stderr) == (7, b"out\x00\xff", "err\n")
        assert result.cpu_seconds is not None and result.peak_rss_bytes
        assert channel.run("sleep 5", timeout=1).exit_code == 124
        data = os.urandom(1024 * 1024)
        channel.write_file("/workspace/channel.bin", data)
        assert channel.read_file("/workspace/channel.bin", max_bytes=len(data)) == data
        assert channel.stat("/workspace/channel.bin").size == len(data)
        with pytest.raises(errors.PathOutsideSandbox):
            channel.read_file("/etc/passwd", max_bytes=1000)


def test_one_hundred_commands_from_ten_threads(sandbox: Sandbox) -> None:
    with open_channel(sandbox) as channel:
        def worker(n: int) -> None:
            for i in range(10):
                assert channel.run(["sh", "-c", f"echo {n}-{i}"]).stdout == f"{n}-{i}\n"

        failures = from_threads(worker, within=120)
    assert not failures, failures[0]


def test_a_flooding_command_does_not_hold_up_another(sandbox: Sandbox) -> None:
    with open_channel(sandbox) as channel:
        baseline = time.monotonic()
        channel.run(["true"])
        normal = time.monotonic() - baseline
        flood = channel.start(["cat", "/dev/zero"], max_output=1024)
        time.sleep(1)
        start = time.monotonic()
        assert channel.run(["echo", "hi"]).stdout == "hi\n"
        assert time.monotonic() - start < max(0.5, 20 * normal)
        assert flood.kill() is not None


def test_an_agent_killed_mid_command_breaks_the_channel(sandbox: Sandbox) -> None:
    channel = open_channel(sandbox)
    assert channel.hello is not None
    caller, raised = in_background(lambda: channel.run(["sleep", "60"]))
    time.sleep(1)
    assert sandbox.run(["kill", "-KILL", str(channel.hello.pid)]).exit_code == 0
    caller.join(30)
    assert len(raised) == 1 and isinstance(raised[0], errors.ChannelBroken), raised
    assert not channel.usable
    with open_channel(sandbox) as fresh:
        assert fresh.run(["echo", "again"]).stdout == "again\n"


def test_a_stopped_agent_is_noticed_by_the_ping(sandbox: Sandbox) -> None:
    channel = open_channel(sandbox, ping_interval=0.5, ping_timeout=3)
    assert channel.hello is not None
    pid = channel.hello.pid
    try:
        assert sandbox.run(["kill", "-STOP", str(pid)]).exit_code == 0
        start = time.monotonic()
        with pytest.raises(errors.ChannelBroken) as broken:
            channel.run(["true"])
        assert broken.value.reason == "PingTimeout"
        assert time.monotonic() - start < 10
    finally:
        sandbox.run(["kill", "-KILL", str(pid)])


def test_a_cut_stream_ends_the_commands_in_flight(sandbox: Sandbox) -> None:
    channel = open_channel(sandbox)
    stream = channel.stream(["sh", "-c", "echo $$; exec sleep 60"])
    pid = int(next(iter(stream)).data)
    channel.close()  # the client's end of the stream goes away: the agent sees end of input
    with pytest.raises(errors.ChannelBroken):
        stream.wait()
    deadline = time.monotonic() + 15
    while alive(sandbox, pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(sandbox, pid)


def test_a_missing_agent_is_agent_unavailable(sandbox: Sandbox) -> None:
    with pytest.raises(errors.AgentUnavailable) as unavailable:
        transport = pod_exec_transport(sandbox.manager.api.api_client, sandbox.namespace, sandbox.pod_name,
                                       container=constants.CONTAINER_NAME, program="/usr/local/bin/no-such-agent")
        Channel(transport, sandbox=sandbox.name, hello_timeout=30)
    assert unavailable.value.reason == "AgentMissing"


def test_without_the_agent_auto_falls_back_to_one_exec_per_command(sandbox: Sandbox,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "AGENT_PROGRAM", "/usr/local/bin/no-such-agent")  # an image without it
    api_client = sandbox.manager.api.api_client
    with SandboxManager(sandbox.namespace, api_client=api_client, transport="auto") as manager:
        box = manager.get(sandbox.name)
        result = box.run(["sh", "-c", "echo fell back"])
        assert result.stdout == "fell back\n" and result.cpu_seconds is None  # no agent, no wait4 report
        box.files.write("fallback.txt", "via the file tool\n")
        assert box.files.read_text("fallback.txt") == "via the file tool\n"
        slot = manager._channels.slot(sandbox.namespace, sandbox.name, sandbox.pod_name)
        assert slot.no_agent is not None and slot.no_agent.reason == "AgentMissing"
    with SandboxManager(sandbox.namespace, api_client=api_client, transport="channel") as manager, \
            pytest.raises(errors.AgentUnavailable):
        manager.get(sandbox.name).run(["true"])


def test_the_sdk_over_the_channel_reports_resource_use_and_records_activity(sandbox: Sandbox) -> None:
    with SandboxManager(sandbox.namespace, api_client=sandbox.manager.api.api_client, transport="channel",
                        activity_interval=1) as manager:
        box = manager.get(sandbox.name)
        def last_activity() -> str:
            return str((box.refresh().obj["metadata"].get("annotations") or {}).get(
                constants.ANNOTATION_LAST_ACTIVITY, ""))

        before = last_activity()
        time.sleep(1.1)  # the annotation has whole seconds
        result = box.run(["python3", "-c", "sum(range(3 * 10**6))"])
        assert result.exit_code == 0 and result.cpu_seconds is not None and result.cpu_seconds > 0
        assert last_activity() > before

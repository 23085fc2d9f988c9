"""The Python SDK against the real cluster, with the real operator.

A module-scoped fixture applies the CRD, makes a fresh namespace, and runs the operator from this checkout as
a subprocess (``python -m sandbox_operator``) watching only that namespace, with a 2-second collection pass
(``tests.kit.operator_namespace``; SANDBOX_E2E_EXTERNAL_OPERATOR=1 uses an operator that already runs).

Commands, files, kill, timeouts, background commands, stdin and events run twice (the ``sandbox`` and
``by_transport`` fixtures): over the sandbox's channel (``[channel]``) and with one exec per command, the fallback
for images without the agent (``[exec]``). The other tests use the default transport (``auto``: the channel;
``SANDBOX_EXEC_TRANSPORT=exec`` runs them with the fallback too).

The module runs once per runtime (``[runc]``, ``[gvisor]``: tests/e2e/conftest.py), its operator making every
sandbox and pool pod on that runtime.
"""

from __future__ import annotations

import asyncio
import filecmp
import hashlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk import (
    ChannelBroken,
    CommandTimeout,
    FileTooLarge,
    InvalidSandboxSpec,
    PathOutsideSandbox,
    Sandbox,
    SandboxEvent,
    SandboxFailed,
    SandboxFileNotFound,
    SandboxManager,
    SandboxNotFound,
    build_sandbox,
)
from sandbox_operator.sdk.aio import AsyncSandbox, AsyncSandboxManager
from tests.kit import READY_TIMEOUT, SMALL_SPEC, Cluster, Kube, Runtime, namespace_fixture, wait_until

MiB = 1024 * 1024


namespace = namespace_fixture("sdk-e2e", per_runtime=True)


@pytest.fixture(scope="module")
def manager(cluster: Cluster, namespace: str) -> Iterator[SandboxManager]:
    with SandboxManager(namespace, kubeconfig=cluster.kubeconfig, ready_timeout=READY_TIMEOUT,
                        default_spec=SMALL_SPEC) as m:
        yield m


@pytest.fixture(scope="module")
def shared(manager: SandboxManager) -> Iterator[Sandbox]:
    """The sandbox most tests share, through the default manager."""
    with manager.create(labels={"e2e": "shared"}) as sbx:
        yield sbx


@pytest.fixture(scope="module", params=["channel", "exec"])
def by_transport(request: pytest.FixtureRequest, cluster: Cluster, namespace: str) -> Iterator[SandboxManager]:
    """A manager that uses one transport (explicitly: ``channel`` fails rather than fall back)."""
    with SandboxManager(namespace, kubeconfig=cluster.kubeconfig, ready_timeout=READY_TIMEOUT,
                        default_spec=SMALL_SPEC, transport=request.param) as m:
        yield m


@pytest.fixture(scope="module")
def sandbox(by_transport: SandboxManager, shared: Sandbox) -> Sandbox:
    """The shared sandbox, through ``by_transport``."""
    return by_transport.get(shared.name)


def over_channel(sbx: Sandbox) -> bool:
    return sbx.manager.transport == "channel"


# The session API example of the README -------------------------------------------------------------------

SESSION_EXAMPLE = """
from sandbox_operator import SandboxManager

manager = SandboxManager()
session_id = manager.create_session()
result = manager.execute_command(session_id, "python3 -c 'print(\\"Hello\\")'")
print(result.stdout)  # Hello
manager.destroy_session(session_id)
"""


def test_the_session_example_prints_hello(cluster: Cluster, namespace: str, manager: SandboxManager) -> None:
    def live() -> set[str]:
        return {s.name for s in manager.list() if not s.obj["metadata"].get("deletionTimestamp")}

    before = live()  # the module's shared sandboxes, when earlier tests of this runtime made them
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "SANDBOX_NAMESPACE": namespace}
    out = subprocess.run([sys.executable, "-c", SESSION_EXAMPLE], env=env, capture_output=True, text=True,
                         timeout=240, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "Hello\n\n"  # print(result.stdout) adds a newline to python's own
    # destroy_session deleted the session: no live sandbox is left behind.
    assert live() - before == set()


# Commands --------------------------------------------------------------------------------------------------

def test_exit_codes_and_stderr(sandbox: Sandbox) -> None:
    r = sandbox.run("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out) == (3, "out\n", "err\n", False)
    # Resource use comes from the agent's wait4(): over the channel only.
    assert (r.cpu_seconds is not None, r.peak_rss_bytes is not None) == (over_channel(sandbox),) * 2
    if over_channel(sandbox):
        big = sandbox.run(["python3", "-c", "b = bytearray(100 * 1024 * 1024); sum(range(10**7))"])
        assert big.peak_rss_bytes is not None and big.peak_rss_bytes > 100 * MiB
        assert big.cpu_seconds is not None and big.cpu_seconds > 0.1
    assert sandbox.run(["false"]).exit_code == 1
    assert sandbox.run(["true"]).exit_code == 0
    missing = sandbox.run(["no-such-command-xyz"])
    assert missing.exit_code == 127 and "no-such-command-xyz" in missing.stderr
    assert sandbox.run("kill -TERM $$").exit_code == 128 + 15
    with pytest.raises(Exception, match="exited with code 3"):
        sandbox.run("exit 3", check=True)


def test_stdin_env_cwd(sandbox: Sandbox) -> None:
    assert sandbox.run(["cat"], stdin=b"from stdin\n").stdout == "from stdin\n"
    big = os.urandom(MiB)
    r = sandbox.run(["sha256sum"], stdin=big)
    assert r.stdout.split()[0] == hashlib.sha256(big).hexdigest()
    assert sandbox.run(["cat"]).stdout == ""  # no stdin given: EOF at once, never a hang
    assert sandbox.run("echo $GREETING-$OTHER", env={"GREETING": "hi", "OTHER": "x y"}).stdout == "hi-x y\n"
    assert sandbox.run(["pwd"]).stdout == "/workspace\n"
    assert sandbox.run(["pwd"], cwd="/tmp").stdout == "/tmp\n"
    # Without user namespaces (this operator's default) each sandbox runs as its own host UID from the range.
    uid = int(sandbox.run(["id", "-u"]).stdout)
    assert constants.SANDBOX_UID_RANGE_FIRST <= uid <= constants.SANDBOX_UID_RANGE_LAST
    assert sandbox.run(["id", "-g"]).stdout == f"{constants.SANDBOX_GID}\n"
    assert sandbox.run(["whoami"]).stdout == "sandbox\n"  # the image's passwd names every UID of the range


def test_timeout_kills_the_process_group(sandbox: Sandbox) -> None:
    started = time.monotonic()
    r = sandbox.run("sleep 300 & sleep 300; echo never", timeout=2)
    elapsed = time.monotonic() - started
    assert r.timed_out and r.exit_code == 124 and "never" not in r.stdout
    assert "timed out" in r.stderr and elapsed < 20
    with pytest.raises(CommandTimeout):
        r.check()
    left = sandbox.run(["ps", "-eo", "args"]).stdout
    assert "sleep 300" not in left, left


def test_streaming_delivers_first_chunk_before_the_end(sandbox: Sandbox) -> None:
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    with sandbox.stream("echo first; sleep 4; echo second") as stream:
        for chunk in stream:
            arrivals.append((time.monotonic() - started, chunk.text))
        result = stream.wait()
    ended = time.monotonic() - started
    assert result.exit_code == 0 and "".join(text for _, text in arrivals) == "first\nsecond\n"
    assert result.stdout == "" and result.stdout_dropped == len("first\nsecond\n")  # a stream keeps nothing
    assert arrivals[0][1] == "first\n"
    assert arrivals[0][0] < ended - 3, arrivals  # the first chunk came about 4 s before the end


def test_background_commands_wait_kill_and_stdin(sandbox: Sandbox) -> None:
    handle = sandbox.start("for i in 1 2 3; do echo $i; sleep 0.3; done")
    result = handle.wait(30)
    assert result.stdout == "1\n2\n3\n" and not handle.running

    long = sandbox.start("sleep 600 & sleep 600")
    wait_until(lambda: sandbox.run(["ps", "-eo", "args="]).stdout.split("\n").count("sleep 600") == 2, 30,
               message="both sleeps running")
    assert long.running
    killed = long.kill()
    assert killed is not None and killed.exit_code == 128 + 9
    assert "sleep 600" not in sandbox.run(["ps", "-eo", "args"]).stdout

    interactive = sandbox.start(["cat"], stdin=True)
    interactive.send_stdin(b"line 1\n")
    interactive.send_stdin("line 2\n")
    interactive.close_stdin()
    assert interactive.wait(30).stdout == "line 1\nline 2\n"


# Files -----------------------------------------------------------------------------------------------------

def test_binary_file_round_trip(sandbox: Sandbox) -> None:
    data = os.urandom(MiB)
    assert sandbox.files.write("bin/data.bin", data, mode=0o600) == "/workspace/bin/data.bin"
    assert sandbox.files.read_bytes("/workspace/bin/data.bin") == data
    info = sandbox.files.stat("bin/data.bin")
    assert (info.type, info.size, info.mode) == ("file", MiB, 0o600)
    sandbox.files.write("/tmp/t.txt", "héllo\n")
    assert sandbox.files.read_text("/tmp/t.txt") == "héllo\n"
    assert sandbox.files.exists("bin/data.bin") and not sandbox.files.exists("bin/nope")
    names = [(e.name, e.type) for e in sandbox.files.list("/workspace/bin")]
    assert names == [("data.bin", "file")]
    sandbox.files.remove("bin", recursive=True)
    assert not sandbox.files.exists("bin")
    with pytest.raises(SandboxFileNotFound):
        sandbox.files.read_bytes("bin/data.bin")


def test_directories_upload_and_download(sandbox: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "README.md").write_text("hello\n")
    (src / "pkg" / "mod.py").write_text("print('x')\n")
    (src / "pkg" / "deep" / "blob.bin").write_bytes(os.urandom(200_000))
    (src / "pkg" / "link.md").symlink_to("../README.md")
    sandbox.files.upload(src, "/workspace/project")
    assert sandbox.run(["python3", "pkg/mod.py"], cwd="/workspace/project").stdout == "x\n"
    assert sandbox.run(["readlink", "/workspace/project/pkg/link.md"]).stdout == "../README.md\n"

    dest = tmp_path / "back"
    sandbox.files.download("/workspace/project", dest)
    cmp = filecmp.dircmp(src, dest)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert (dest / "pkg" / "deep" / "blob.bin").read_bytes() == (src / "pkg" / "deep" / "blob.bin").read_bytes()
    assert (dest / "pkg" / "link.md").is_symlink()


def test_traversal_symlinks_and_oversize_are_rejected(sandbox: Sandbox) -> None:
    manager = sandbox.manager
    for bad in ("../etc/passwd", "/etc/passwd", "/workspace/../etc/shadow", "/proc/self/environ"):
        with pytest.raises(PathOutsideSandbox):
            sandbox.files.read_bytes(bad)
    with pytest.raises(PathOutsideSandbox):
        sandbox.files.write("/usr/local/bin/sandbox-exec", b"evil")
    # A symlink made inside the sandbox cannot lead the file tool outside.
    sandbox.run(["ln", "-sfn", "/etc", "/workspace/etc-link"], check=True)
    with pytest.raises(PathOutsideSandbox):
        sandbox.files.read_bytes("etc-link/passwd")
    with pytest.raises(PathOutsideSandbox):
        sandbox.files.write("etc-link/evil", b"x")

    small = SandboxManager(manager.namespace, api_client=manager.api.api_client, max_file_bytes=MiB,
                           default_spec=SMALL_SPEC, transport=manager.transport)
    capped = small.get(sandbox.name)
    with pytest.raises(FileTooLarge):
        capped.files.write("big.bin", b"\0" * (MiB + 1))
    sandbox.run(f"head -c {2 * MiB} /dev/zero > /workspace/big.bin", check=True)
    with pytest.raises(FileTooLarge):
        capped.files.read_bytes("big.bin")
    assert len(sandbox.files.read_bytes("big.bin")) == 2 * MiB  # under the default cap
    small.close()


# Health, sessions, errors -----------------------------------------------------------------------------------

def test_health(shared: Sandbox) -> None:
    sandbox = shared
    sandbox.run(["true"])
    sandbox.touch()
    health = sandbox.health()
    assert health.ready and health.phase == "Ready" and health.healthy
    assert health.container_state == "running" and health.restarts == 0
    assert health.pod_name == constants.pod_name(sandbox.name) and health.node_name
    assert health.last_activity is not None and health.expires_at is not None
    assert any(c.type == "Ready" and c.status == "True" for c in health.conditions)


def test_the_sandbox_runs_on_its_runtime(cluster: Cluster, shared: Sandbox, runtime: Runtime) -> None:
    pod = cluster.kubectl_json("get", "pod", shared.pod_name, "-n", shared.namespace)
    assert pod["spec"].get("runtimeClassName") == runtime.runtime_class
    version = shared.run(["cat", "/proc/version"]).stdout
    assert ("gvisor" in version.lower()) == runtime.kernel_boundary, version


def test_get_list_and_errors(manager: SandboxManager, shared: Sandbox) -> None:
    sandbox = shared
    assert manager.get(sandbox.name).phase == "Ready"
    assert sandbox.name in [s.name for s in manager.list({"e2e": "shared"})]
    assert sandbox.name not in [s.name for s in manager.list("e2e=other")]
    with pytest.raises(SandboxNotFound):
        manager.get("no-such-sandbox")
    with pytest.raises(SandboxNotFound):
        manager.delete("no-such-sandbox")


def test_missing_image_says_why(manager: SandboxManager) -> None:
    image = constants.SANDBOX_IMAGE.rpartition(":")[0] + ":does-not-exist"
    started = time.monotonic()
    with pytest.raises(SandboxFailed) as info:
        manager.create(image=image, timeout=200)
    assert info.value.reason == "ImageMissing", info.value
    assert time.monotonic() - started < 180  # failed fast, not by timing out


def test_context_manager_destroys_and_exec_after_delete_fails(manager: SandboxManager) -> None:
    with manager.create() as sbx:
        name = sbx.name
        assert sbx.run("echo ok").stdout == "ok\n"
    manager.wait_deleted(name, timeout=90)
    with pytest.raises(SandboxNotFound):
        manager.get(name)
    with pytest.raises(SandboxNotFound):
        sbx.run("echo too late")


def test_events_create_ready_delete(by_transport: SandboxManager) -> None:
    manager = by_transport
    seen: list[SandboxEvent] = []
    lock = threading.Lock()

    def collect(event: SandboxEvent) -> None:
        with lock:
            seen.append(event)

    def deleted_seen() -> bool:
        with lock:
            return any(e.name == sbx.name and e.reason == "Deleted" for e in seen)

    sub = manager.subscribe(collect)
    try:
        # The subscription lists the namespace before it watches, and says nothing when it has: a sandbox created
        # before that list would arrive as history, not as Created.
        time.sleep(1)
        sbx = manager.create(labels={"e2e": "events"})
        sbx.delete(wait=True, timeout=90)
        wait_until(deleted_seen, 20, message="the sandbox's Deleted event")
    finally:
        sub.stop()
    assert sub.error is None
    mine = [e for e in seen if e.name == sbx.name]
    reasons = [e.reason for e in mine if e.kind == "state"]
    assert reasons[0] == "Created" and "Ready" in reasons and reasons[-1] == "Deleted", reasons
    assert reasons.index("Created") < reasons.index("Ready") < reasons.index("Deleted")
    assert any(e.kind == "event" for e in mine), "no Kubernetes Events about the sandbox were seen"

    history = [e.reason for e in manager.events(sbx.name, follow=False)]
    assert isinstance(history, list)  # the object is gone; its Events may remain


def test_async_twin(cluster: Cluster, namespace: str) -> None:
    async def scenario() -> tuple[str, list[str], bytes]:
        async with AsyncSandboxManager(namespace, kubeconfig=cluster.kubeconfig, default_spec=SMALL_SPEC,
                                       ready_timeout=READY_TIMEOUT) as am:
            sbx: AsyncSandbox = await am.create()
            async with sbx:
                result = await sbx.run("echo async")
                chunks = [c.text async for c in sbx.stream("echo a; sleep 1; echo b")]
                await sbx.files.write("a.bin", b"\0\1\2")
                data = await sbx.files.read_bytes("a.bin")
            return result.stdout, chunks, data

    stdout, chunks, data = asyncio.run(scenario())
    assert stdout == "async\n" and "".join(chunks) == "a\nb\n" and data == b"\0\1\2"


# The channel under load and after its agent dies --------------------------------------------------------------

def test_one_hundred_commands_from_ten_threads_share_the_channel(shared: Sandbox) -> None:
    sandbox = shared
    failures: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                assert sandbox.run(["echo", f"{n}-{i}"]).stdout == f"{n}-{i}\n"
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures[0]
    assert time.monotonic() - started < 60


def test_a_command_cut_off_by_the_agents_death_raises_and_the_next_call_reopens(shared: Sandbox) -> None:
    # Over the channel whatever $SANDBOX_EXEC_TRANSPORT says: this is about the channel's failure handling.
    with SandboxManager(shared.namespace, api_client=shared.manager.api.api_client, transport="channel") as on_channel:
        check_the_agents_death_is_survived(on_channel.get(shared.name))


def check_the_agents_death_is_survived(sandbox: Sandbox) -> None:
    channel = sandbox._channel()
    assert channel is not None and channel.hello is not None
    raised: list[BaseException] = []

    def run() -> None:
        try:
            sandbox.run(["sleep", "60"])
        except BaseException as exc:
            raised.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    time.sleep(1)
    killer = SandboxManager(sandbox.namespace, api_client=sandbox.manager.api.api_client, transport="exec")
    assert killer.get(sandbox.name).run(["kill", "-KILL", str(channel.hello.pid)]).exit_code == 0
    caller.join(30)
    assert len(raised) == 1 and isinstance(raised[0], ChannelBroken), raised
    assert "not retried" in str(raised[0])
    assert sandbox.run(["echo", "again"]).stdout == "again\n"
    fresh = sandbox._channel()
    assert fresh is not None and fresh is not channel and fresh.hello is not None
    assert fresh.hello.pid != channel.hello.pid


# Acceptance 2: activity keeps a busy sandbox; an untouched one is collected ---------------------------------

def test_idle_collection_spares_a_busy_sandbox(manager: SandboxManager) -> None:
    # The untouched one first, so that the busy one's command starts right after it is Ready.
    idle = manager.create(idle_timeout=20, labels={"e2e": "idle"})
    busy = manager.create(idle_timeout=20, labels={"e2e": "idle"})
    started = time.monotonic()
    result = busy.run("sleep 60; echo survived", timeout=90)
    history = [(e.kind, e.reason, e.message) for e in busy.events(follow=False)]
    assert result.exit_code == 0 and result.stdout == "survived\n", (result, history)
    assert time.monotonic() - started >= 60
    assert manager.get(busy.name).phase == "Ready", history  # not collected while its command ran
    with pytest.raises(SandboxNotFound):
        manager.get(idle.name)  # collected: untouched for over 60 s with idleSeconds 20
    busy.delete()


# Warm pools -----------------------------------------------------------------------------------------------------

POOL_SIZE = 2


@pytest.fixture(scope="module")
def warm_pool(cluster: Cluster, namespace: str, manager: SandboxManager) -> Iterator[str]:
    """A SandboxPool of the tests' small sandboxes in the module's namespace, once one of its pods is ready."""
    kube = Kube(cluster)
    name = "python"
    kube.create_pool(namespace, name, POOL_SIZE, SMALL_SPEC)
    try:
        wait_until(lambda: manager.get_pool(name).ready_count >= 1, READY_TIMEOUT,
                   message=lambda: f"a ready pod in pool {name}: {manager.get_pool(name)}")
        yield name
    finally:
        kube.delete_pool(namespace, name)


def test_a_sandbox_from_a_warm_pool(cluster: Cluster, namespace: str, manager: SandboxManager,
                                    warm_pool: str) -> None:
    listed = {p.name: p for p in manager.pools()}
    assert listed[warm_pool].size == POOL_SIZE and listed[warm_pool].ready_count >= 1
    # The manager's default_spec (SMALL_SPEC) is not sent: the API server would refuse resources next to poolRef.
    with manager.create(pool=warm_pool, lifetime=900, pod_labels={"e2e": "pool"}) as sbx:
        assert sbx.phase == "Ready"
        # A warm pod, not a cold one: it keeps the pool's generated name.
        assert sbx.pod_name.startswith(constants.pool_pod_generate_name(warm_pool)), sbx.status
        assert sbx.run("echo warm").stdout == "warm\n"
        health = sbx.health()
        assert health.ready and health.pod_name == sbx.pod_name and health.container_state == "running"
        # A session call in another process knows neither the object nor the pod: it finds the pod, over exec too.
        with SandboxManager(namespace, kubeconfig=cluster.kubeconfig, transport="exec") as elsewhere:
            assert elsewhere.execute_command(sbx.name, "echo session").stdout == "session\n"
        wait_until(lambda: manager.get_pool(warm_pool).claimed_count >= 1, 60,
                   message=lambda: f"the claim counted: {manager.get_pool(warm_pool)}")


def test_a_pooled_sandbox_may_override_only_what_a_running_pod_takes(namespace: str,
                                                                      manager: SandboxManager) -> None:
    with pytest.raises(InvalidSandboxSpec, match=r"spec\.image cannot be set together with a pool"):
        manager.create(pool="python", image=constants.SANDBOX_IMAGE)
    # A client that sends it anyway meets the API server's own rule.
    body = build_sandbox("pool-hostile", namespace, {"poolRef": {"name": "python"}, "resources": {"memory": "1Gi"}})
    with pytest.raises(InvalidSandboxSpec) as info:
        manager.api.create_sandbox(body, namespace)
    assert info.value.status == 422, info.value
    assert "spec.resources cannot be set together with spec.poolRef" in str(info.value)
    assert "pool-hostile" not in [s.name for s in manager.list()]


def test_a_missing_pool_fails_the_sandbox_naming_it(manager: SandboxManager) -> None:
    with pytest.raises(SandboxFailed) as info:
        manager.create(pool="no-such-pool", timeout=120)
    assert info.value.reason == "InvalidSpec" and "spec.poolRef.name" in str(info.value), info.value


def test_cli_and_sdk_share_one_spec_shape() -> None:
    # The SDK sends plain dicts; the operator's model must accept exactly what build_spec makes.
    from sandbox_operator.models.sandbox import SandboxSpec
    from sandbox_operator.sdk.manager import build_spec

    spec = build_spec(image=constants.SANDBOX_IMAGE, cpu="500m", memory="1Gi", ephemeral_storage="1Gi", pids=30,
                      command_timeout=60, idle_timeout=20, lifetime=600, env={"A": "1"}, working_dir="/workspace",
                      pod_labels={"team": "a"}, node_selector={"kubernetes.io/os": "linux"})
    SandboxSpec.model_validate(spec)

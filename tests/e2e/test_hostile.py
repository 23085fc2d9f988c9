"""A hostile sandbox against its client, its commands' boundaries and its limits, on the real cluster.

Every test runs the attack: from inside a sandbox (code the agent was told to run), through the SDK or
``sandboxctl`` as an agent platform would, or as a Sandbox a tenant applies. docs/security.md maps each threat
to its defence and to the test here that shows the attack fail.

The operator runs from this checkout, once with user namespaces off (the default, every cluster) and, where the
node supports them, once with them on; the limit tests run under both. The whole module runs once per runtime
(``[runc]``, ``[gvisor]``: tests/e2e/conftest.py). Under gVisor the operator never sets ``hostUsers: false`` (the
Sentry is the sandbox's kernel), so there ``userns-on`` means every sandbox runs as UID 1000 and the limit tests
show that the sandboxes' own kernels keep them apart anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk import ChannelBroken, ExecError, PathOutsideSandbox, Sandbox, SandboxManager
from tests.kit import (
    READY_TIMEOUT,
    SMALL_SPEC,
    Cluster,
    Runtime,
    Sandboxctl,
    operator_namespace,
    sandbox_manifest,
    wait_until,
)

pytestmark = pytest.mark.timeout(900)

MB = 1000 * 1000
CLIENT_RSS_LIMIT_MB = 300
COMMAND_SECONDS = 120  # the sandboxes' own per-command limit; the wrapper refuses more
SPEC = {**SMALL_SPEC, "timeouts": {"commandSeconds": COMMAND_SECONDS}}


@dataclass(frozen=True)
class Env:
    cluster: Cluster
    namespace: str
    manager: SandboxManager
    user_namespaces: bool
    runtime: Runtime

    def ctl(self) -> Sandboxctl:
        return Sandboxctl(self.cluster.kubeconfig, self.namespace)


def _environment(cluster: Cluster, tmp: Path, user_namespaces: bool, runtime: Runtime) -> Iterator[Env]:
    prefix = "hostile-userns" if user_namespaces else "hostile"
    with operator_namespace(cluster, prefix, tmp, user_namespaces=str(user_namespaces).lower(),
                            **runtime.operator_settings()) as namespace, \
            SandboxManager(namespace, kubeconfig=cluster.kubeconfig, ready_timeout=READY_TIMEOUT,
                           default_spec=SPEC) as manager:
        yield Env(cluster, namespace, manager, user_namespaces, runtime)


@pytest.fixture(scope="module")
def env(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Iterator[Env]:
    """User namespaces off: the default, and all that containerd 1.x offers."""
    yield from _environment(cluster, tmp_path_factory.mktemp("logs"), user_namespaces=False, runtime=runtime)


@pytest.fixture(scope="module", params=["userns-off", "userns-on"])
def any_env(request: pytest.FixtureRequest, cluster: Cluster, env: Env,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if request.param == "userns-off":
        yield env
        return
    if not cluster.supports_user_namespaces():
        pytest.skip("the node's runtime reports no user-namespace support (containerd 1.x): nothing to prove")
    yield from _environment(cluster, tmp_path_factory.mktemp("logs-userns"), user_namespaces=True,
                            runtime=env.runtime)


@pytest.fixture(scope="module")
def box(env: Env) -> Iterator[Sandbox]:
    with env.manager.create(labels={"e2e": "hostile"}) as sandbox:
        yield sandbox


# One process, no fork: under a fork bomb a shell pipeline here would fail to fork and report nothing.
PROCESS_LISTER = """
import os, sys  # process-lister
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\\0", b" ").decode(errors="replace").strip()
    except (OSError, IndexError):
        continue
    if state != b"Z" and sys.argv[1] in cmdline and "process-lister" not in cmdline:
        print(cmdline.replace("\\n", " "))
"""


def processes(sandbox: Sandbox, pattern: str) -> list[str]:
    """Command lines of the sandbox's live processes that contain ``pattern`` (zombies excluded)."""
    result = sandbox.run(["python3", "-c", PROCESS_LISTER, pattern], timeout=60)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def wait_until_gone(sandbox: Sandbox, pattern: str, timeout: float = 20) -> None:
    wait_until(lambda: not processes(sandbox, pattern), timeout, interval=0.5,
               message=lambda: f"every process matching {pattern!r} to end; left: {processes(sandbox, pattern)}")


# --- 1. output size -------------------------------------------------------------------------------------------

def test_run_keeps_a_bounded_output_and_says_what_it_dropped(box: Sandbox) -> None:
    cap = 4 * 1024 * 1024
    result = box.run(["bash", "-c", "head -c 40M /dev/zero; head -c 30M /dev/zero >&2"], max_output=cap)
    assert result.exit_code == 0
    assert len(result.stdout_bytes) == cap and result.stdout_truncated
    assert result.stdout_dropped == 40 * 1024 * 1024 - cap
    assert len(result.stderr_bytes) == cap and result.stderr_truncated
    assert result.stderr_dropped == 30 * 1024 * 1024 - cap
    assert result.to_dict()["stdoutDropped"] == result.stdout_dropped


CLIENT_PROBE = textwrap.dedent("""
    import resource, subprocess, sys
    from sandbox_operator.sdk import SandboxManager
    kubeconfig, namespace, name, path, size = sys.argv[1:6]
    command = ["bash", "-c", f"head -c {size} /dev/zero"]
    if path == "sandboxctl":
        subprocess.run([sys.executable, "-m", "sandbox_operator.cli", "--kubeconfig", kubeconfig, "-n", namespace,
                        "exec", name, "--", *command], stdout=subprocess.DEVNULL, check=True)
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    else:
        with SandboxManager(namespace, kubeconfig=kubeconfig) as manager:
            sandbox = manager.get(name)
            if path == "run":
                result = sandbox.run(command)
                assert result.stdout_truncated
                received = len(result.stdout_bytes) + result.stdout_dropped
            else:
                with sandbox.stream(command) as stream:
                    received = sum(len(chunk.data) for chunk in stream)
            assert received > 0
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak_kib // 1024)
""")


@pytest.mark.client_side(reason="the client bounds what it keeps, whatever runs the sandbox")
@pytest.mark.parametrize("path", ["run", "stream", "sandboxctl"])
def test_client_memory_stays_bounded_while_a_sandbox_floods_it(env: Env, box: Sandbox, path: str) -> None:
    """600 MB of output: a client that kept it (twice, as before) would peak above 1.2 GB."""
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_PROBE, str(env.cluster.kubeconfig), env.namespace, box.name, path, "600M"],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env.ctl().env}, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    peak_mb = int(out.stdout.split()[-1])
    print(f"client peak RSS through {path} for 600 MB of output: {peak_mb} MB")
    assert peak_mb <= CLIENT_RSS_LIMIT_MB


# --- 2. downloads -----------------------------------------------------------------------------------------------

def test_download_name_comes_from_the_requested_path(env: Env, box: Sandbox, tmp_path: Path) -> None:
    box.run(["bash", "-c", "echo secret-rc > /workspace/.bashrc; ln -sf .bashrc /workspace/report.txt"]).check()
    sdk_dest = tmp_path / "sdk"
    sdk_dest.mkdir()
    written = box.files.download("/workspace/report.txt", sdk_dest)
    assert written == sdk_dest / "report.txt"
    assert sorted(p.name for p in sdk_dest.iterdir()) == ["report.txt"]

    cli_dest = tmp_path / "cli"
    cli_dest.mkdir()
    env.ctl()("cp", f"{box.name}:/workspace/report.txt", f"{cli_dest}/")
    assert sorted(p.name for p in cli_dest.iterdir()) == ["report.txt"]
    assert (cli_dest / "report.txt").read_text() == "secret-rc\n"


def test_directory_download_skips_fifos_and_sockets_and_refuses_links_outside(box: Sandbox, tmp_path: Path) -> None:
    box.run(["bash", "-c", "mkdir -p /workspace/tree/sub && echo a > /workspace/tree/a && echo b > "
             "/workspace/tree/sub/b && mkfifo /workspace/tree/pipe && python3 -c \"import socket; "
             "socket.socket(socket.AF_UNIX).bind('/workspace/tree/sock')\""]).check()
    dest = tmp_path / "tree"
    box.files.download("/workspace/tree", dest)
    assert (dest / "a").read_text() == "a\n" and (dest / "sub" / "b").read_text() == "b\n"
    assert not (dest / "pipe").exists() and not (dest / "sock").exists()

    box.run(["bash", "-c", "mkdir -p /workspace/evil && echo x > /workspace/evil/x && "
             "ln -s /etc/passwd /workspace/evil/passwd && ln -s ../../../../../../tmp /workspace/evil/up"]).check()
    evil_dest = tmp_path / "evil"
    with pytest.raises(PathOutsideSandbox):
        box.files.download("/workspace/evil", evil_dest)
    assert not evil_dest.exists() or not any(evil_dest.iterdir()), "something was written before the refusal"


# --- 3. integrity of the tools' output --------------------------------------------------------------------------

ATTACKER = textwrap.dedent("""
    import ctypes, os, time
    libc = ctypes.CDLL(None, use_errno=True)
    PTRACE_ATTACH = 16
    forged = b'{"name":"x","path":"/root/.ssh/authorized_keys","type":"file","size":1,"mode":420,"mtime":0}\\n'
    seen, attempts, opened, traced = set(), 0, 0, 0
    end = time.monotonic() + float(os.environ["ATTACK_SECONDS"])
    me = os.getpid()
    while time.monotonic() < end:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == me:
                continue
            try:
                cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            tools = (b"sandbox-files", b"sandbox-exec", b"sandbox-agent")
            if pid != "1" and not any(tool in cmdline for tool in tools):
                continue
            if b"ATTACK_SECONDS" in cmdline or (pid, cmdline) in seen:
                continue
            seen.add((pid, cmdline))
            for fd in ("1", "2", "0"):
                attempts += 1
                try:
                    handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                opened += 1
                try:
                    os.write(handle, forged)
                except OSError:
                    pass
            if libc.ptrace(PTRACE_ATTACH, int(pid), None, None) == 0:
                traced += 1
    print(f"attempts={attempts} opened={opened} traced={traced} targets={len(seen)}", flush=True)
""")


def test_a_leftover_process_cannot_forge_or_read_the_tools_output(env: Env, box: Sandbox, tmp_path: Path) -> None:
    """A process left running in the sandbox watches for the file tool, the exec wrapper and the channel's agent and
    tries to write a forged answer into their stdout (the hole that let a sandbox write anywhere on the client) or to
    ptrace them."""
    box.run(["bash", "-c", "mkdir -p /workspace/dl && echo real > /workspace/dl/x.py"]).check()
    box.files.write("/workspace/attacker.py", ATTACKER)
    attacker = box.start(["python3", "/workspace/attacker.py"], env={"ATTACK_SECONDS": "25"})
    wait_until(lambda: processes(box, "attacker.py"), 30, message="the attacker running")
    dest = tmp_path / "dl"
    dest.mkdir()
    deadline = time.monotonic() + 20
    rounds = 0
    while time.monotonic() < deadline:
        info = box.files.stat("/workspace/dl/x.py")
        assert (info.path, info.type, info.size) == ("/workspace/dl/x.py", "file", 5)
        assert [f.name for f in box.files.list("/workspace/dl")] == ["x.py"]
        env.ctl()("cp", f"{box.name}:/workspace/dl/x.py", f"{dest}/")
        assert sorted(p.name for p in dest.iterdir()) == ["x.py"]
        rounds += 1
    report = attacker.wait(timeout=60).stdout
    print(f"{rounds} rounds; attacker: {report.strip()}")
    counts = dict(item.split("=") for item in report.split())
    assert int(counts["targets"]) > 5, "the attacker never saw a tool process: the test proves nothing"
    assert int(counts["opened"]) == 0 and int(counts["traced"]) == 0


def test_pid_1_cannot_be_written_to_or_traced(box: Sandbox) -> None:
    probe = ("import ctypes, os\n"
             "try:\n    os.open('/proc/1/fd/1', os.O_WRONLY); print('opened')\n"
             "except PermissionError:\n    print('refused')\n"
             "libc = ctypes.CDLL(None, use_errno=True)\n"
             "print('traced' if libc.ptrace(16, 1, None, None) == 0 else 'untraceable')\n")
    assert box.run(["python3", "-c", probe]).stdout.split() == ["refused", "untraceable"]


# --- 4. terminal safety -------------------------------------------------------------------------------------------

def test_sandboxctl_escapes_control_characters_it_prints(env: Env, box: Sandbox) -> None:
    box.run(["python3", "-c", "open('/workspace/\\x1b[2Jevil\\nname', 'w').write('x')"]).check()
    ctl = env.ctl()
    listing = ctl("ls", f"{box.name}:/workspace").stdout
    assert b"\x1b" not in listing
    assert b"\\x1b[2Jevil\\nname" in listing
    missing = ctl("cat", f"{box.name}:/workspace/\x1b]0;pwned\x07", check=False)
    assert missing.returncode != 0
    assert b"\x1b" not in missing.stderr and b"\x07" not in missing.stderr
    raw = ctl("exec", box.name, "--", "printf", "\\033[1m")
    assert raw.stdout == b"\x1b[1m"  # exec output stays raw, as with kubectl exec


# --- 5. commands end when they should ---------------------------------------------------------------------------

ESCAPES = ("setsid sleep 1001 & (setsid sleep 1002 &) ; env -i setsid sh -c 'sleep 1003 & sleep 1004' & "
           "nohup sleep 1005 >/dev/null 2>&1 &")


def test_a_timeout_ends_every_descendant(box: Sandbox) -> None:
    result = box.run(["bash", "-c", ESCAPES + " sleep 1000"], timeout=3)
    assert result.timed_out and result.exit_code == 124
    wait_until_gone(box, "sleep 100", timeout=10)


def test_a_finished_command_leaves_nothing_behind(box: Sandbox) -> None:
    result = box.run(["bash", "-c", ESCAPES + " exit 0"])
    assert result.exit_code == 0
    wait_until_gone(box, "sleep 100", timeout=10)


def test_a_command_that_kills_its_own_wrapper_leaves_nothing_behind(box: Sandbox) -> None:
    """The wrapper runs as the same UID, so a command can SIGKILL it; what it started then ends anyway. Over the
    channel the command's parent is the agent: killing it breaks the channel, and the next call opens another."""
    with contextlib.suppress(ChannelBroken):
        box.run(["bash", "-c", "setsid sleep 1006 & (setsid sleep 1007 &); kill -9 $PPID; sleep 5"])
    wait_until_gone(box, "sleep 100", timeout=15)


def test_kill_reaches_every_descendant_of_a_background_command(box: Sandbox) -> None:
    handle = box.start(["bash", "-c", ESCAPES + " sleep 1000"])
    wait_until(lambda: len(processes(box, "sleep 100")) >= 5, 30, message="the escaped sleeps running")
    handle.kill()
    wait_until_gone(box, "sleep 100", timeout=15)
    assert not handle.running


def test_the_wrapper_refuses_limits_above_the_sandboxes_own(env: Env, box: Sandbox) -> None:
    with pytest.raises(ExecError) as refused:
        box.run(["true"], timeout=COMMAND_SECONDS + 1)
    assert refused.value.reason == "LimitAboveSandbox"
    assert "SANDBOX_COMMAND_TIMEOUT" in refused.value.message
    assert box.run(["true"], timeout=COMMAND_SECONDS).exit_code == 0
    for option, value, variable in (("--timeout", "0", constants.ENV_COMMAND_TIMEOUT),
                                    ("--nproc", "100000", constants.ENV_PIDS_LIMIT),
                                    ("--fsize", str(1 << 40), constants.ENV_FILE_SIZE_LIMIT)):
        raw = env.cluster.pod_exec(env.namespace, box.pod_name, constants.EXEC_WRAPPER, option, value, "--", "true")
        assert raw.returncode == 125, (option, raw.stderr)
        assert variable in raw.stderr


# --- 6, 7. limits that hold on every cluster ----------------------------------------------------------------------

FORK_BOMB = ":(){ :|:& };:"


def test_kill_works_under_a_fork_bomb(any_env: Env) -> None:
    with any_env.manager.create(labels={"e2e": "bomb"}) as victim:
        bomb = victim.start(["bash", "-c", FORK_BOMB])
        time.sleep(5)  # the bomb at its process limit (nothing inside can be asked: every fork fails)
        bomb.kill()
        wait_until_gone(victim, "bash -c", timeout=60)  # the bomb, all of it
        assert victim.run(["echo", "alive"]).stdout == "alive\n"


def test_the_process_limit_holds_per_sandbox(any_env: Env) -> None:
    with any_env.manager.create(labels={"e2e": "nproc-a"}) as first, \
            any_env.manager.create(labels={"e2e": "nproc-b"}) as second:
        uids = {first.run(["id", "-u"]).stdout.strip(), second.run(["id", "-u"]).stdout.strip()}
        if not any_env.user_namespaces:
            assert len(uids) == 2, f"two sandboxes share a host UID: {uids}"
            assert all(constants.SANDBOX_UID_RANGE_FIRST <= int(uid) <= constants.SANDBOX_UID_RANGE_LAST
                       for uid in uids)
        over = first.run(["bash", "-c", "for i in $(seq 25); do sleep 20 & done; wait"], timeout=60)
        assert "fork" in over.stderr.lower() or "resource temporarily unavailable" in over.stderr.lower(), over
        bomb = first.start(["bash", "-c", FORK_BOMB])
        try:
            time.sleep(3)  # the bomb at its process limit (nothing inside can be asked: every fork fails)
            fine = second.run(["bash", "-c", "for i in $(seq 15); do sleep 2 & done; wait; echo done"], timeout=60)
            assert fine.exit_code == 0 and fine.stdout == "done\n", fine
        finally:
            bomb.kill()


# Bounded by 65536 open files: far above the host kernel's per-user inotify limit (fs.inotify.max_user_instances),
# which is what the hog exhausts under runc; gVisor's kernel has no such limit, and unbounded the hog would only
# grow the Sentry's memory until RLIMIT_NOFILE (a million) or the OOM killer.
INOTIFY_HOG = ("import ctypes, resource, time\nlibc = ctypes.CDLL(None)\nfds = []\n"
               "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
               "soft = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)\n"
               "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))\n"
               "while True:\n    fd = libc.inotify_init()\n    if fd < 0:\n        break\n    fds.append(fd)\n"
               "print(len(fds), flush=True)\ntime.sleep(120)\n")


def test_per_user_kernel_counters_are_per_sandbox(any_env: Env) -> None:
    """inotify instances are counted per user: with one UID for all sandboxes, one could take them all."""
    with any_env.manager.create(labels={"e2e": "inotify-a"}) as hog, \
            any_env.manager.create(labels={"e2e": "inotify-b"}) as neighbour:
        handle = hog.start(["python3", "-c", INOTIFY_HOG])
        try:
            wait_until(lambda: handle.stdout.strip(), 60, message="the hog's count of inotify instances")
            assert int(handle.stdout.split()[0]) > 0
            check = neighbour.run(["python3", "-c", "import ctypes; print(ctypes.CDLL(None).inotify_init())"])
            assert int(check.stdout) >= 0, "the neighbour got no inotify instance: the counter is shared"
        finally:
            handle.kill()


# --- 8. disk --------------------------------------------------------------------------------------------------------

def test_filling_the_disk_is_reported_as_an_eviction(env: Env) -> None:
    resources = {**SMALL_SPEC["resources"], "ephemeralStorage": "200Mi"}
    sandbox = env.manager.create(labels={"e2e": "disk"}, spec={"resources": resources})
    try:
        script = ("for i in $(seq 8); do dd if=/dev/zero of=/workspace/fill$i bs=1M count=40 status=none; done; "
                  "sleep 300")
        handle = sandbox.start(["sh", "-c", script])
        start = time.monotonic()

        def failed() -> dict[str, Any] | None:
            status: dict[str, Any] = sandbox.refresh().status
            return status if status.get("phase") == "Failed" else None

        status = wait_until(failed, 240, interval=2, message=lambda: f"the sandbox Failed: {sandbox.refresh().status}")
        print(f"evicted {time.monotonic() - start:.0f}s after the writes began: {status.get('reason')}: "
              f"{status.get('message')}")
        assert status.get("reason") == "Evicted", status
        assert "ephemeral" in str(status.get("message")).lower() or "exceeds" in str(status.get("message")), status
        handle.disconnect()
    finally:
        sandbox.delete(missing_ok=True)


# --- 9. tenant placement --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "spec", "names"), [
    ("tolerations", {"tolerations": [{"operator": "Exists"}]}, "spec.tolerations[0]"),
    ("control-plane", {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}, "spec.nodeSelector"),
    ("hostname", {"nodeSelector": {"kubernetes.io/hostname": "victim"}}, "spec.nodeSelector"),
    ("runtime-class", {"runtimeClassName": "anything-goes"}, "spec.runtimeClassName"),
])
def test_tenant_placement_outside_the_allow_lists_is_refused(env: Env, field: str, spec: dict[str, Any],
                                                              names: str) -> None:
    name = f"place-{field}-{uuid.uuid4().hex[:4]}"
    body = sandbox_manifest(env.namespace, name, {**SMALL_SPEC, **spec})
    env.cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    try:
        def status() -> dict[str, Any]:
            got = env.cluster.kubectl_json("get", constants.CRD_NAME, name, "-n", env.namespace)
            return dict(got.get("status") or {})

        failed = wait_until(lambda: (current := status()).get("phase") == "Failed" and current, 60, interval=1,
                            message=lambda: f"Sandbox {name} Failed: {status()}")
        assert failed.get("reason") == "InvalidSpec", failed
        assert names in str(failed.get("message")), failed
        pods = env.cluster.kubectl("get", "pods", "-n", env.namespace, "-o", "name").stdout
        assert f"pod/{name}\n" not in pods
    finally:
        env.cluster.kubectl("delete", constants.CRD_NAME, name, "-n", env.namespace, "--wait=false", check=False)


def test_sandbox_pods_keep_off_control_plane_nodes(env: Env, box: Sandbox) -> None:
    pod = json.loads(env.cluster.kubectl("get", "pod", box.pod_name, "-n", env.namespace, "-o", "json").stdout)
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expressions = [e for t in terms["nodeSelectorTerms"] for e in t.get("matchExpressions", [])]
    assert {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"} in expressions
    assert not pod["spec"].get("tolerations") or all(
        t.get("key", "").startswith("node.kubernetes.io/") for t in pod["spec"]["tolerations"])

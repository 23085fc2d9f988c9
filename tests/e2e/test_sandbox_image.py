"""The hardened sandbox image in the real cluster.

Pods are created directly (not through the operator) with the security context the operator emits, in a namespace
that enforces Pod Security "restricted"; every check runs through `kubectl exec`, most of them through the image's
exec wrapper as the SDK does. Three pods: `main` (the checks, and the "second sandbox" while `bomb` runs a fork
bomb) and `disk`, which is expected to be evicted for exceeding its storage bound.

Each pod has host UIDs of its own, as the operator arranges, so the wrapper's process limit SANDBOX_PIDS_LIMIT=20
(RLIMIT_NPROC, counted per host UID) holds per sandbox: when the node's runtime supports user namespaces
(containerd 2, the project's default) the pods run with `hostUsers: false` and UID 1000 maps to a host range of
their own; without them each pod runs as its own UID from the operator's range (taken from its top end, away
from the UIDs the operator hands out first).

The module runs once per runtime (``[runc]``, ``[gvisor]``: tests/e2e/conftest.py). Under gVisor the pods, like
the operator's, never get `hostUsers: false`: the Sentry is each sandbox's own kernel and counts RLIMIT_NPROC itself.
There the sandbox is the pod's cgroup, so the memory limit shown inside is the pod's (with the RuntimeClass
overhead), and a memory overrun ends the whole pod (docs/gvisor.md).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_operator import constants
from tests.kit import Cluster, Runtime, pod_overhead, wait_until

pytestmark = pytest.mark.timeout(600)

PIDS_LIMIT = 20
MEMORY_LIMIT = "512Mi"
MEMORY_LIMIT_BYTES = 512 * 1024 * 1024
STORAGE_LIMIT = "1Gi"
TMP_LIMIT = "64Mi"
EXEC = constants.EXEC_WRAPPER
FILES = constants.FILES_TOOL


POD_NAMES = ("main", "bomb", "disk")


def pod_uid(name: str, user_namespace: bool) -> int:
    if user_namespace:
        return constants.SANDBOX_UID
    return constants.SANDBOX_UID_RANGE_LAST - POD_NAMES.index(name)


def pod_manifest(name: str, namespace: str, runtime: Runtime, *, user_namespace: bool = False) -> dict[str, Any]:
    """A sandbox pod with the operator's hardening (requests kept small so three fit on a 2-CPU node), on
    ``runtime``."""
    env = [{"name": constants.ENV_COMMAND_TIMEOUT, "value": "300"},
           {"name": constants.ENV_PIDS_LIMIT, "value": str(PIDS_LIMIT)}]
    uid = pod_uid(name, user_namespace)
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "sandbox"}},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            **runtime.pod_fields(),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "hostname": "sandbox",
            "dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["127.0.0.1"]},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": constants.SANDBOX_GID,
                "fsGroup": constants.SANDBOX_GID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": constants.CONTAINER_NAME,
                "image": constants.SANDBOX_IMAGE,
                "imagePullPolicy": "Never",
                "env": env,
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": uid,
                    "runAsGroup": constants.SANDBOX_GID,
                    "allowPrivilegeEscalation": False,
                    "privileged": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "resources": {
                    "requests": {"cpu": "100m", "memory": MEMORY_LIMIT, "ephemeral-storage": "256Mi"},
                    "limits": {"cpu": "1", "memory": MEMORY_LIMIT, "ephemeral-storage": STORAGE_LIMIT},
                },
                "readinessProbe": {"exec": {"command": [constants.READY_PROGRAM]}, "periodSeconds": 5,
                                   "timeoutSeconds": 5},
                "volumeMounts": [{"name": "workspace", "mountPath": constants.WORKSPACE_DIR},
                                 {"name": "tmp", "mountPath": constants.TMP_DIR}],
            }],
            "volumes": [{"name": "workspace", "emptyDir": {"sizeLimit": STORAGE_LIMIT}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_LIMIT}}],
        },
    }
    if user_namespace:
        manifest["spec"]["hostUsers"] = False
    return manifest


class Pods:
    def __init__(self, cluster: Cluster, namespace: str, runtime: Runtime, user_namespace: bool) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.runtime = runtime
        self.user_namespace = user_namespace

    def kubectl(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl("-n", self.namespace, *args, **kwargs)

    def exec(self, pod: str, *argv: str, input: str | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs argv in the pod; the result carries the remote exit code."""
        return self.cluster.pod_exec(self.namespace, pod, *argv, input=input, timeout=timeout)

    def sh(self, pod: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """A shell script through the exec wrapper, as the SDK runs commands."""
        return self.exec(pod, EXEC, "--", "sh", "-c", script, timeout=timeout)

    def get(self, pod: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.kubectl("get", "pod", pod, "-o", "json").stdout)
        return data

    def wait_ready(self, pod: str, timeout: float = 180) -> None:
        def ready() -> bool:
            status = self.get(pod).get("status", {})
            for cs in status.get("containerStatuses", []):
                waiting = cs.get("state", {}).get("waiting", {})
                if waiting.get("reason") in ("ErrImageNeverPull", "CreateContainerConfigError", "CrashLoopBackOff"):
                    pytest.fail(f"pod {pod}: {waiting} (is {constants.SANDBOX_IMAGE} imported? make image)")
            return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))

        wait_until(ready, timeout, interval=1, message=lambda: f"pod {pod} Ready: {self.get(pod).get('status')}")


@pytest.fixture(scope="module")
def pods(cluster: Cluster, runtime: Runtime) -> Iterator[Pods]:
    namespace = cluster.create_namespace("sbx-image-e2e")
    # As the operator does: no user namespace on a kernel-boundary runtime.
    p = Pods(cluster, namespace, runtime, cluster.supports_user_namespaces() and not runtime.kernel_boundary)
    print(f"runtime {runtime}, user namespaces: {p.user_namespace}")
    try:
        for name in POD_NAMES:
            # Pod Security admission would reject a pod that is not "restricted": creation itself is a check.
            pod = pod_manifest(name, namespace, runtime, user_namespace=p.user_namespace)
            created = p.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
            assert created.returncode == 0, created.stderr
            assert "Warning" not in created.stderr, created.stderr
        for name in POD_NAMES:
            p.wait_ready(name)
        yield p
    finally:
        cluster.kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=120s", check=False,
                        timeout=180)


# --- acceptance 1: identity, read-only root, privileges -------------------------------------------------

def test_runs_as_its_own_uid_named_sandbox(pods: Pods) -> None:
    uid = str(pod_uid("main", pods.user_namespace))
    assert pods.exec("main", "id", "-u").stdout.strip() == uid
    assert pods.exec("main", "id", "-g").stdout.strip() == str(constants.SANDBOX_GID)
    assert pods.sh("main", "id -u").stdout.strip() == uid
    assert pods.exec("main", "whoami").stdout.strip() == "sandbox"


def test_the_kernel_is_the_runtimes_own(pods: Pods) -> None:
    """Under gVisor the sandbox sees gVisor's kernel, the Sentry, and not the host's; under runc the host's. The
    hardened sandbox may not read the kernel log under either: RuntimeDefault seccomp refuses syslog(2) without
    CAP_SYSLOG, and under gVisor the Sentry enforces that profile itself."""
    version = pods.exec("main", "cat", "/proc/version")
    assert version.returncode == 0, version.stderr
    print(f"[{pods.runtime}] /proc/version: {version.stdout.strip()}")
    assert ("gvisor" in version.stdout.lower()) == pods.runtime.kernel_boundary, version.stdout
    assert pods.exec("main", "uname", "-r").stdout.strip() in version.stdout
    log = pods.exec("main", "dmesg")
    assert log.returncode != 0 and "Operation not permitted" in log.stderr, (log.stdout[:500], log.stderr)


def test_dmesg_without_seccomp_shows_whose_kernel_it_is(pods: Pods) -> None:
    """The acceptance check, verbatim: `dmesg` inside a gVisor sandbox prints gVisor's own boot log. It needs a pod
    without the seccomp profile (so in a namespace that does not enforce "restricted"); under runc that pod reads
    the host's log, or nothing when the host restricts it (kernel.dmesg_restrict), and never gVisor's."""
    namespace = pods.cluster.create_namespace("sbx-dmesg-e2e", restricted=False)
    try:
        pod = pod_manifest("main", namespace, pods.runtime)
        for context in (pod["spec"]["securityContext"], pod["spec"]["containers"][0]["securityContext"]):
            context["seccompProfile"] = {"type": "Unconfined"}
        probe = Pods(pods.cluster, namespace, pods.runtime, user_namespace=False)
        created = probe.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
        assert created.returncode == 0, created.stderr
        probe.wait_ready("main")
        log = probe.exec("main", "dmesg")
        print(f"[{pods.runtime}] dmesg: exit {log.returncode}\n{log.stdout[:1000]}{log.stderr[-300:]}")
        if pods.runtime.kernel_boundary:
            assert log.returncode == 0 and "Starting gVisor..." in log.stdout, (log.stdout, log.stderr)
        else:
            assert "gVisor" not in log.stdout
    finally:
        pods.cluster.delete_namespace(namespace)


def test_root_filesystem_is_read_only(pods: Pods) -> None:
    code = ("import errno\nfor p in ('/probe', '/usr/local/bin/probe', '/etc/probe'):\n"
            "    try:\n        open(p, 'w')\n        print(p, 'WRITABLE')\n"
            "    except OSError as e:\n        print(p, errno.errorcode[e.errno])\n")
    result = pods.exec("main", "python3", "-c", code)
    assert result.returncode == 0, result.stderr
    # Linux checks the mount's read-only flag first; gVisor the directory's permission (root's, 0755) first. The
    # mount's flag below is what makes it read-only for either.
    refusal, message = ("EACCES", "Permission denied") if pods.runtime.kernel_boundary else \
        ("EROFS", "Read-only file system")
    assert [line.split()[1] for line in result.stdout.splitlines()] == [refusal] * 3
    touch = pods.exec("main", "touch", "/probe")
    assert touch.returncode != 0
    assert message in touch.stderr
    mounts = pods.exec("main", "cat", "/proc/self/mounts").stdout.splitlines()
    root_options = [line.split()[3].split(",") for line in mounts if line.split()[1] == "/"]
    assert root_options and "ro" in root_options[-1], mounts


def test_tmp_and_workspace_are_writable(pods: Pods) -> None:
    for directory in (constants.TMP_DIR, constants.WORKSPACE_DIR):
        result = pods.sh("main", f"echo ok > {directory}/probe && cat {directory}/probe && rm {directory}/probe")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "ok\n"
    assert pods.exec("main", constants.READY_PROGRAM).returncode == 0
    assert pods.sh("main", "cd && pwd").stdout.strip() == constants.WORKSPACE_DIR  # HOME is the work dir


def test_no_capabilities_no_new_privileges_seccomp_filter(pods: Pods) -> None:
    for target in ("/proc/self/status", "/proc/1/status"):
        status = dict(line.split(":", 1) for line in pods.exec("main", "cat", target).stdout.splitlines())
        for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[field].strip(), 16) == 0, (target, field, status[field])
        assert status["NoNewPrivs"].strip() == "1", target
        assert status["Seccomp"].strip() == "2", target


def test_no_setuid_or_setgid_files(pods: Pods) -> None:
    # the acceptance check, verbatim
    suid = pods.sh("main", "find / -xdev -perm -4000 2>/dev/null; true")
    assert suid.returncode == 0
    assert suid.stdout == ""
    # no setgid files either (the emptyDir mount points are setgid directories because of fsGroup: harmless)
    sgid = pods.sh("main", "find / -xdev -type f -perm -2000 2>/dev/null; true")
    assert sgid.stdout == ""


def test_core_dumps_are_off(pods: Pods) -> None:
    assert pods.sh("main", "ulimit -c").stdout.strip() == "0"
    hard = pods.exec("main", EXEC, "--", "bash", "-c", "ulimit -H -c")
    assert hard.stdout.strip() == "0"


def test_pid_1_is_sandbox_init_and_ends_orphans(pods: Pods) -> None:
    """A process re-parented to PID 1 lost its exec wrapper (here: a raw exec that bypassed it), so nothing would
    bound it any more: sandbox-init kills it within its sweep period (1 s) and reaps it."""
    assert pods.exec("main", "cat", "/proc/1/cmdline").stdout.split("\0")[0] == constants.INIT_PROGRAM
    assert pods.exec("main", "sh", "-c", "sleep 600 </dev/null >/dev/null 2>&1 & exit 0").returncode == 0
    def orphans() -> list[str]:
        return pods.exec("main", "ps", "-o", "pid=,stat=", "-C", "sleep").stdout.split()

    wait_until(lambda: not orphans(), 15, interval=0.5,
               message=lambda: f"PID 1's sweep to end the orphan: {orphans()}")


def test_file_tool_in_the_pod(pods: Pods) -> None:
    payload = "line one\nline two \u00e9\n"
    assert pods.exec("main", FILES, "write", "/workspace/dir/f.txt", "--parents", "--size",
                     str(len(payload.encode())), input=payload).returncode == 0
    listing = json.loads(pods.exec("main", FILES, "ls", "/workspace/dir").stdout)
    assert [(e["name"], e["type"], e["size"]) for e in listing] == [("f.txt", "file", len(payload.encode()))]
    assert pods.exec("main", FILES, "read", "/workspace/dir/f.txt").stdout == payload
    refused = pods.exec("main", FILES, "read", "/etc/passwd")
    assert refused.returncode == 2
    report = next(line for line in refused.stderr.splitlines() if line.startswith("{"))  # then kubectl's line
    assert json.loads(report)["error"] == "PathOutsideSandbox"


# --- acceptance 2: timeout, fork bomb, memory, disk ---------------------------------------------------

def test_timeout_kills_the_command_and_its_children(pods: Pods) -> None:
    script = "sleep 300 & echo $! > /tmp/child; sh -c 'sleep 300' & sleep 300"
    start = time.monotonic()
    result = pods.exec("main", EXEC, "--timeout", "2", "--", "sh", "-c", script)
    assert result.returncode == 124, result.stderr
    assert time.monotonic() - start < 30
    assert "timed out" in result.stderr
    left = pods.exec("main", "sh", "-c", "kill -0 $(cat /tmp/child) 2>/dev/null && echo alive; "
                                         "ps -eo comm= | grep -c '^sleep$'; true")
    assert left.stdout.split() == ["0"], left.stdout


def test_nproc_limit_of_the_wrapper(pods: Pods) -> None:
    """A command may ask for a lower process limit than the sandbox's own."""
    result = pods.exec("main", EXEC, "--nproc", "3", "--", "sh", "-c",
                       "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done; wait")
    assert "fork" in result.stderr.lower(), result.stderr


def host_pids_cgroup(pod_uid: str) -> Path | None:
    """The pod's pids cgroup on this machine (the local cluster's node), if the test runs on the node."""
    root = Path("/sys/fs/cgroup/pids/kubepods")
    if not root.is_dir():
        return None
    variants = {f"pod{pod_uid}", f"pod{pod_uid.replace('-', '_')}"}
    for path in root.rglob("pod*"):
        if path.name in variants:
            return path
    return None


def tasks_by_uid(cgroup: Path) -> tuple[dict[int, int], int | None]:
    """Tasks (threads count, as for RLIMIT_NPROC) in the pod's cgroups by real host UID, and the UID of its
    ``sandbox-init``: the sandbox's own UID."""
    counts: dict[int, int] = {}
    sandbox_uid = None
    for tasks in cgroup.rglob("tasks"):
        for tid in tasks.read_text().split():
            try:
                status = Path(f"/proc/{tid}/status").read_text()
            except OSError:  # ended meanwhile
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            uid = int(fields["Uid"].split()[0])
            counts[uid] = counts.get(uid, 0) + 1
            if fields["Name"].strip() == "sandbox-init":
                sandbox_uid = uid
    return counts, sandbox_uid


def test_fork_bomb_is_bounded_and_the_other_sandbox_keeps_working(pods: Pods) -> None:
    inside = pods.exec("bomb", "cat", "/sys/fs/cgroup/pids/pids.max").stdout.strip()
    pod_uid = pods.get("bomb")["metadata"]["uid"]
    bomb = subprocess.Popen(
        [str(pods.cluster.bin_dir / "kubectl"), "--kubeconfig", str(pods.cluster.kubeconfig), "-n", pods.namespace,
         "exec", "bomb", "-c", constants.CONTAINER_NAME, "--",
         EXEC, "--timeout", "25", "--", "bash", "-c", "bomb() { bomb | bomb & }; bomb; wait"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(6)  # let it reach the limit
        cgroup = host_pids_cgroup(pod_uid)
        if cgroup is not None:  # the test runs on the node: look at the pod's pids cgroup from outside
            limit = (cgroup / "pids.max").read_text().strip()
            current = int((cgroup / "pids.current").read_text())
            by_uid, sandbox_uid = tasks_by_uid(cgroup)
            print(f"bomb pod: pids.current {current}, pids.max {limit} (container's own: {inside}); tasks by host "
                  f"UID {by_uid}, the sandbox's {sandbox_uid}")
            assert limit != "max", f"no pids limit on the pod cgroup {cgroup}"
            assert current <= int(limit)
            # Under gVisor the pod's host tasks are the Sentry's, the gofers' and the stub processes (about 2.3 per
            # guest process), none of them the guest's: the Sentry counts RLIMIT_NPROC itself, and the pod staying
            # alive below its pids limit (reaching it would panic the Sentry) is what shows from outside.
            if not pods.runtime.kernel_boundary:
                # RLIMIT_NPROC of the sandbox's own host UID stops it first. Counted by UID: the pod's cgroups also
                # hold the pause process and, while an exec starts, runc's own short-lived processes.
                assert sandbox_uid is not None, f"no sandbox-init among the pod's tasks: {by_uid}"
                assert by_uid[sandbox_uid] <= PIDS_LIMIT + 1, (
                    f"RLIMIT_NPROC did not hold: {by_uid[sandbox_uid]} tasks of UID {sandbox_uid}")
        # the second sandbox keeps running commands normally while the bomb runs
        for _ in range(3):
            start = time.monotonic()
            ok = pods.exec("main", EXEC, "--", "sh", "-c", "echo $((6 * 7)) | cat; python3 -c 'print(1)'",
                           timeout=60)
            assert ok.returncode == 0, ok.stderr
            assert ok.stdout == "42\n1\n"
            assert time.monotonic() - start < 15
        _out, err = bomb.communicate(timeout=120)
    finally:
        bomb.kill()
    assert bomb.returncode == 124, err[-2000:]
    assert "Resource temporarily unavailable" in err or "fork" in err.lower(), err[-2000:]
    # the timeout killed the whole bomb; the pod works again
    def bash_processes() -> list[str]:
        after = pods.exec("bomb", "ps", "-eo", "comm=")
        assert after.returncode == 0, after.stderr
        return [comm for comm in after.stdout.split() if comm == "bash"]

    wait_until(lambda: not bash_processes(), 30, interval=0.5,
               message=lambda: f"the bomb's processes gone: {bash_processes()}")
    status = pods.get("bomb")["status"]
    assert status["phase"] == "Running" and status["containerStatuses"][0]["restartCount"] == 0, status


def test_memory_hog_is_oom_killed_at_the_limit(pods: Pods) -> None:
    """In the `bomb` pod, done with its fork bomb: under gVisor the overrun ends the whole pod."""
    limit = int(pods.exec("bomb", "cat", "/sys/fs/cgroup/memory/memory.limit_in_bytes").stdout)
    overhead = pod_overhead(pods.get("bomb"))[1]
    assert MEMORY_LIMIT_BYTES <= limit <= MEMORY_LIMIT_BYTES + overhead, (limit, overhead)
    hog = "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n"  # written, so resident
    before = None if pods.runtime.kernel_boundary else oom_kills(pods, "bomb")
    result = pods.exec("bomb", EXEC, "--timeout", "120", "--", "python3", "-c", hog, timeout=180)
    if pods.runtime.kernel_boundary:
        # The hog's memory is the Sentry's: the host's OOM killer kills the Sentry or one of its stub processes,
        # which takes the Sentry with it. The pod ends; no other sandbox notices.
        assert result.returncode != 0, result.stdout[-500:]

        def ended() -> dict[str, Any] | None:
            status: dict[str, Any] = pods.get("bomb")["status"]
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_until(ended, 120, interval=1, message=lambda: f"the bomb pod ended: {pods.get('bomb')['status']}")
        terminated = status["containerStatuses"][0]["state"].get("terminated") or {}
        print(f"the hog's pod ended {status['phase']}: {terminated}")
        assert status["phase"] == "Failed" and terminated.get("exitCode") != 0, status
        main = pods.get("main")["status"]
        assert main["phase"] == "Running" and main["containerStatuses"][0]["restartCount"] == 0, main
        assert pods.exec("main", "true").returncode == 0
        return
    # cgroup v1: the kernel's memory-cgroup OOM killer SIGKILLs the hog; PID 1 and the pod live on
    assert result.returncode == 128 + 9, (result.returncode, result.stderr[-500:])
    assert before is not None and oom_kills(pods, "bomb") > before
    status = pods.get("bomb")["status"]
    assert status["phase"] == "Running"
    assert status["containerStatuses"][0]["restartCount"] == 0
    assert pods.exec("bomb", "true").returncode == 0


def oom_kills(pods: Pods, pod: str) -> int:
    text = pods.exec(pod, "cat", "/sys/fs/cgroup/memory/memory.oom_control").stdout
    fields = dict(line.split() for line in text.splitlines())
    return int(fields.get("oom_kill", 0))


def test_file_size_limit_stops_one_file(pods: Pods) -> None:
    result = pods.exec("main", EXEC, "--fsize", "50Mi", "--", "dd", "if=/dev/zero", "of=/workspace/big",
                       "bs=1M", "count=80")
    assert result.returncode == 128 + 25  # SIGXFSZ
    assert pods.exec("main", "stat", "-c", "%s", "/workspace/big").stdout.strip() == str(50 * 1024 * 1024)
    assert pods.exec("main", "rm", "/workspace/big").returncode == 0


def test_filling_the_disk_gets_the_pod_evicted_at_its_bound(pods: Pods) -> None:
    """Each file stays under the wrapper's 1 GiB file-size limit; together they exceed the 1Gi emptyDir bound.
    Nothing stops the writes themselves (no filesystem quota on the node's ext4): the kubelet measures usage
    periodically (seen here: 20-60 s later) and evicts the pod. Its PID 1 exits 0 on the eviction's SIGTERM, so
    since Kubernetes 1.27 the pod ends `Succeeded`, not `Failed`/`Evicted` (kubernetes/kubernetes#118310,
    #120182): the reason is only in the pod's `Evicted` event."""
    script = "for i in 1 2 3; do dd if=/dev/zero of=/workspace/fill$i bs=1M count=400 status=none || exit $?; done"
    result = pods.exec("disk", EXEC, "--timeout", "240", "--", "sh", "-c", script, timeout=300)
    print(f"disk fill: exit {result.returncode} {result.stderr.strip()[-300:]}")
    start = time.monotonic()

    def ended() -> dict[str, Any] | None:
        status: dict[str, Any] = pods.get("disk")["status"]
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(ended, 240, interval=2, message=lambda: f"the disk pod ended: {pods.get('disk')['status']}")
    events = json.loads(pods.kubectl("get", "events", "--field-selector",
                                     "involvedObject.name=disk,reason=Evicted", "-o", "json").stdout)["items"]
    messages = [e.get("message", "") for e in events]
    print(f"disk pod ended {status.get('phase')} ~{time.monotonic() - start:.0f}s after the writes: {messages}")
    assert any("EmptyDir volume \"workspace\" exceeds the limit" in m or "ephemeral" in m for m in messages), messages

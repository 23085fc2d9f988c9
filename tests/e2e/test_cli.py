"""sandboxctl against the real cluster, with the real operator.

exec, cp, ls, cat and rm run twice (the ``tctl`` fixture, which sets ``SANDBOX_EXEC_TRANSPORT``): over the sandbox's
channel (``[channel]``) and with one exec per command (``[exec]``), the fallback for images without the agent.
The module runs once per runtime (``[runc]``, ``[gvisor]``: tests/e2e/conftest.py)."""

from __future__ import annotations

import filecmp
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sandbox_operator import constants
from sandbox_operator.sdk.transport import ENV_TRANSPORT
from tests.kit import SMALL_SPEC, Cluster, Sandboxctl, namespace_fixture, pool_manifest, wait_until

MiB = 1024 * 1024
SMALL = ("--cpu", "250m", "--memory", "256Mi")  # fits next to other suites' sandboxes on the test node


namespace = namespace_fixture("cli-e2e", per_runtime=True)


@pytest.fixture(scope="module")
def ctl(cluster: Cluster, namespace: str) -> Sandboxctl:
    return Sandboxctl(cluster.kubeconfig, namespace)


@pytest.fixture(scope="module", params=["channel", "exec"])
def tctl(request: pytest.FixtureRequest, cluster: Cluster, namespace: str) -> Sandboxctl:
    """sandboxctl with one transport, chosen by the environment variable a user would set."""
    over = Sandboxctl(cluster.kubeconfig, namespace)
    over.env[ENV_TRANSPORT] = request.param
    return over


@pytest.fixture(scope="module")
def box(ctl: Sandboxctl) -> Iterator[str]:
    name = ctl("create", *SMALL, "--timeout", "240", "--label", "e2e=cli").stdout.decode().strip()
    assert name.startswith("sbx-")
    yield name
    ctl("delete", name, "--ignore-not-found")


def test_create_list_get(ctl: Sandboxctl, box: str) -> None:
    table = ctl("list").stdout.decode()
    assert table.splitlines()[0].split()[:2] == ["NAME", "PHASE"]
    assert any(line.split()[:2] == [box, "Ready"] for line in table.splitlines())
    listed = json.loads(ctl("list", "-l", "e2e=cli", "-o", "json").stdout)
    assert [i["metadata"]["name"] for i in listed["items"]] == [box]
    assert json.loads(ctl("list", "-l", "e2e=none", "-o", "json").stdout)["items"] == []
    described = ctl("get", box).stdout.decode()
    assert "Phase:" in described and "Ready" in described and "running" in described
    health = yaml.safe_load(ctl("get", box, "-o", "yaml").stdout)
    assert health["health"]["ready"] is True and health["sandbox"]["metadata"]["name"] == box


def test_exec_hello_exit_codes_stderr_stdin_env_cwd(tctl: Sandboxctl, box: str) -> None:
    out = tctl("exec", box, "--", "python3", "-c", 'print("Hello")')
    assert out.stdout == b"Hello\n"
    failed = tctl("exec", box, "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert (failed.returncode, failed.stdout, failed.stderr) == (7, b"out\n", b"err\n")
    assert tctl("exec", box, "--", "no-such-command-xyz", check=False).returncode == 127
    assert tctl("exec", "-i", box, "--", "wc", "-c", input=b"x" * 12345).stdout.strip() == b"12345"
    assert tctl("exec", box, "-e", "FOO=bar baz", "--sh", "--", "echo $FOO").stdout == b"bar baz\n"
    assert tctl("exec", box, "-w", "/tmp", "--", "pwd").stdout == b"/tmp\n"
    as_json = json.loads(tctl("exec", box, "-o", "json", "--", "sh", "-c", "exit 0").stdout)
    assert as_json["exitCode"] == 0 and as_json["timedOut"] is False
    over_channel = tctl.env[ENV_TRANSPORT] == "channel"
    assert ("cpuSeconds" in as_json and "peakRssBytes" in as_json) == over_channel  # the agent's wait4() report
    # The option beats the environment.
    forced = json.loads(tctl("--transport", "exec", "exec", box, "-o", "json", "--", "true").stdout)
    assert forced["exitCode"] == 0 and "cpuSeconds" not in forced


def test_exec_timeout_kills_and_reports(tctl: Sandboxctl, box: str) -> None:
    started = time.monotonic()
    out = tctl("exec", box, "-t", "2", "--", "sh", "-c", "sleep 300; echo never", check=False)
    assert out.returncode == 124 and b"never" not in out.stdout and b"timed out" in out.stderr
    assert time.monotonic() - started < 30


def test_exec_streams_first_chunk_before_the_end(tctl: Sandboxctl, box: str) -> None:
    started = time.monotonic()
    proc = tctl.popen("exec", box, "--", "sh", "-c", "echo first; sleep 4; echo second")
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_at = time.monotonic() - started
    rest, _ = proc.communicate(timeout=60)
    ended = time.monotonic() - started
    assert first == b"first\n" and rest == b"second\n" and proc.returncode == 0
    assert first_at < ended - 3


def test_cp_binary_round_trip_cat_ls_rm(tctl: Sandboxctl, box: str, tmp_path: Path) -> None:
    data = os.urandom(MiB)
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    tctl("cp", str(src), f"{box}:/workspace/in/data.bin")
    back = tmp_path / "back.bin"
    tctl("cp", f"{box}:in/data.bin", str(back))
    assert back.read_bytes() == data
    assert tctl("cat", box, "/workspace/in/data.bin").stdout == data
    listing = tctl("ls", box, "in").stdout.decode().splitlines()
    assert listing[0].split() == ["MODE", "SIZE", "MODIFIED", "NAME"]
    assert listing[1].split()[1] == str(MiB) and listing[1].split()[-1] == "data.bin"
    entries = json.loads(tctl("ls", box, "in", "-o", "json").stdout)
    assert entries[0]["size"] == MiB and entries[0]["type"] == "file"
    tctl("cp", "-", f"{box}:/tmp/piped.txt", input=b"piped\n")
    assert tctl("cp", f"{box}:/tmp/piped.txt", "-").stdout == b"piped\n"
    tctl("rm", box, "-r", "in")
    missing = tctl("cat", box, "in/data.bin", check=False)
    assert missing.returncode == 3 and b"FileNotFoundError" in missing.stderr


def test_cp_directories_both_ways(tctl: Sandboxctl, box: str, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    (src / "top.txt").write_text("top\n")
    (src / "a" / "b" / "deep.bin").write_bytes(os.urandom(100_000))
    tctl("cp", str(src), f"{box}:/workspace/tree")
    assert tctl("exec", box, "--", "cat", "/workspace/tree/top.txt").stdout == b"top\n"
    dest = tmp_path / "copy"
    tctl("cp", f"{box}:/workspace/tree", str(dest))
    cmp = filecmp.dircmp(src, dest)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files
    assert (dest / "a" / "b" / "deep.bin").read_bytes() == (src / "a" / "b" / "deep.bin").read_bytes()


def test_traversal_and_oversize_rejected(tctl: Sandboxctl, box: str, tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("x")
    for dest in (f"{box}:../etc/x", f"{box}:/etc/passwd", f"{box}:/workspace/../../x"):
        out = tctl("cp", str(small), dest, check=False)
        assert out.returncode == 5, out
        assert b"outside the sandbox" in out.stderr or b"traversal" in out.stderr, out
    assert tctl("cat", box, "/etc/passwd", check=False).returncode == 5
    tctl("exec", box, "--", "ln", "-sfn", "/etc", "/workspace/escape")
    assert tctl("cat", box, "escape/passwd", check=False).returncode == 5
    huge = tmp_path / "huge.bin"  # sparse: over the 100 MiB default cap without using the disk
    with huge.open("wb") as f:
        f.truncate(101 * MiB)
    out = tctl("cp", str(huge), f"{box}:/workspace/huge.bin", check=False)
    assert out.returncode == 5 and b"cap" in out.stderr


def test_errors_have_exit_codes(ctl: Sandboxctl) -> None:
    missing = ctl("get", "no-such-sandbox", check=False)
    assert missing.returncode == 3 and b"not found" in missing.stderr
    assert ctl("exec", "no-such-sandbox", "--", "true", check=False).returncode == 3
    assert ctl("delete", "no-such-sandbox", check=False).returncode == 3
    assert ctl("delete", "no-such-sandbox", "--ignore-not-found", check=False).returncode == 0
    as_json = ctl("-o", "json", "get", "no-such-sandbox", check=False)
    assert json.loads(as_json.stderr)["error"] == "SandboxNotFound"
    assert ctl("frobnicate", check=False).returncode == 2
    bad_image = constants.SANDBOX_IMAGE.rpartition(":")[0] + ":does-not-exist"
    failed = ctl("create", *SMALL, "--image", bad_image, "--timeout", "200", check=False)
    assert failed.returncode == 4 and b"ImageMissing" in failed.stderr


def test_events_create_ready_delete_and_wait(ctl: Sandboxctl) -> None:
    watcher = ctl.popen("events", "--watch", "-o", "json", "--timeout", "400")
    # The watcher lists the namespace before it watches, and says nothing when it has: a sandbox created before
    # that list would arrive as history, not as Created.
    time.sleep(2)
    name = ctl("create", *SMALL, "--no-wait").stdout.decode().strip()
    ctl("wait", name, "--timeout", "240")
    ctl("delete", name, "--wait")
    ctl("wait", name, "--for", "deleted", "--timeout", "30")
    deadline = time.monotonic() + 60
    lines: list[dict[str, object]] = []
    assert watcher.stdout is not None
    while time.monotonic() < deadline:
        raw = watcher.stdout.readline()
        if not raw:
            break
        event = json.loads(raw)
        lines.append(event)
        if event["name"] == name and event["reason"] == "Deleted":
            break
    watcher.terminate()
    watcher.wait(timeout=10)
    reasons = [e["reason"] for e in lines if e["name"] == name and e["kind"] == "state"]
    assert "Created" in reasons and "Ready" in reasons and "Deleted" in reasons, lines
    assert reasons.index("Created") < reasons.index("Ready") < reasons.index("Deleted")
    table = ctl("events", name).stdout.decode()
    assert table == "" or table.splitlines()[0].split()[:4] == ["TIME", "KIND", "TYPE", "REASON"]


def test_create_from_a_pool_and_list_pools(cluster: Cluster, ctl: Sandboxctl, namespace: str) -> None:
    pool = "cli-pool"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pool_manifest(namespace, pool, 2, SMALL_SPEC)))
    try:
        def ready_pool() -> dict[str, object] | None:
            items = json.loads(ctl("pools", "-o", "json").stdout)["items"]
            return next((i for i in items if i["metadata"]["name"] == pool
                         and (i.get("status") or {}).get("readyCount", 0) >= 1), None)

        wait_until(ready_pool, 240, message=f"a ready pod in pool {pool}")
        refused = ctl("create", "--pool", pool, *SMALL, check=False)
        assert refused.returncode == 2 and b"--cpu, --memory cannot be used with --pool" in refused.stderr
        name = ctl("create", "--pool", pool, "--lifetime", "900", "--timeout", "240").stdout.decode().strip()
        try:
            health = json.loads(ctl("get", name, "-o", "json").stdout)["health"]
            assert health["ready"], health
            assert health["pod"]["name"].startswith(constants.pool_pod_generate_name(pool)), health
            assert ctl("exec", name, "--", "echo", "warm").stdout == b"warm\n"

            def claimed_row() -> list[str] | None:
                lines = ctl("pools").stdout.decode().splitlines()
                assert lines[0].split() == ["NAME", "SIZE", "READY", "STARTING", "CLAIMED", "AGE"]
                row = next((line.split() for line in lines[1:] if line.split()[0] == pool), None)
                return row if row is not None and int(row[4]) >= 1 else None

            row = wait_until(claimed_row, 60, message="the claim in sandboxctl pools")
            assert row[1] == "2" and int(row[2]) + int(row[3]) <= 2
        finally:
            ctl("delete", name, "--ignore-not-found")
    finally:
        cluster.kubectl("delete", constants.POOL_PLURAL, pool, "-n", namespace, "--ignore-not-found", "--wait=false")

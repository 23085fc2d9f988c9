"""cluster-down leaves nothing behind, and cluster-up recovers from a cluster killed with SIGKILL.

Disruptive: these tests take the cluster down, so they run after every other test (see conftest) and
bring it back up before they end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_gvisor_runtime import start_gvisor_pod
from tests.kit import REPO_ROOT, Cluster, hack_var

pytestmark = pytest.mark.disruptive

COMPONENTS = ("containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
              "kubelet", "kube-proxy", "kube-router")


def make(target: str) -> None:
    subprocess.run(["make", "-s", "--no-print-directory", target], cwd=REPO_ROOT, check=True, timeout=900)


def recorded_pids() -> dict[str, int]:
    run_dir = Path(hack_var("RUN_DIR"))
    return {f.stem: int(f.read_text().split()[0]) for f in run_dir.glob("*.pid")}


def leftovers() -> list[str]:
    """Everything of the cluster that could remain on the machine, described; empty when clean."""
    found: list[str] = []
    ours = (hack_var("BIN_DIR"), hack_var("CLUSTER_DIR"), f"-address {hack_var('CONTAINERD_SOCK')}",
            f"--root={hack_var('GVISOR_STATE')}/", hack_var("GVISOR_BIN_DIR"))
    for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = cmdline_file.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(mark in cmdline for mark in ours) and cmdline_file.parent.name != str(os.getpid()):
            found.append(f"process {cmdline[:120]} (pid {cmdline_file.parent.name})")
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    found += [f"mount {m.split()[1]}" for m in mounts
              if m.split()[1].startswith(("/var/lib/kubelet", hack_var("CONTAINERD_STATE"), "/run/netns",
                                          hack_var("GVISOR_STATE")))]
    if Path(hack_var("GVISOR_STATE")).exists():
        found.append("runsc state " + hack_var("GVISOR_STATE"))
    if subprocess.run(["ip", "link", "show", hack_var("CNI_BRIDGE")], capture_output=True).returncode == 0:
        found.append("bridge " + hack_var("CNI_BRIDGE"))
    for table in ("filter", "nat", "mangle"):
        rules = subprocess.run(["iptables-save", "-t", table], capture_output=True, text=True, check=True).stdout
        found += [f"iptables {table} {line.split()[0]}" for line in rules.splitlines()
                  if line.startswith(":") and line[1:].startswith(("KUBE-", "CNI-"))]
    sets = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True, check=True).stdout.split()
    found += [f"ipset {s}" for s in sets if s.startswith(("KUBE-", "kube-router"))]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob("*/kubepods")]
    if Path(hack_var("CLUSTER_DIR"), "sysctls.saved").exists():
        found.append("sysctls not restored")
    return found


def test_cluster_down_leaves_nothing_and_restores_sysctls(cluster: Cluster) -> None:
    saved = dict(line.split("=", 1) for line in
                 (Path(hack_var("CLUSTER_DIR")) / "sysctls.saved").read_text().splitlines() if line.strip())
    assert "kernel.panic" in saved
    make("cluster-down")
    assert leftovers() == []
    now = {key: subprocess.run(["sysctl", "-n", key], capture_output=True, text=True).stdout.strip()
           for key, value in saved.items() if value}
    assert now == {key: value for key, value in saved.items() if value}
    make("cluster-up")
    out = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.conditions[?(@.type=='Ready')].status}")
    assert out.stdout == "True"


def test_cluster_up_recovers_after_sigkill(cluster: Cluster) -> None:
    pids = recorded_pids()
    assert set(pids) == set(COMPONENTS)
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    make("cluster-up")
    out = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.conditions[?(@.type=='Ready')].status}")
    assert out.stdout == "True"
    # Running it again leaves the one healthy cluster alone.
    after_recovery = recorded_pids()
    make("cluster-up")
    assert recorded_pids() == after_recovery


gvisor = pytest.mark.skipif(hack_var("SANDBOX_GVISOR") == "0", reason="SANDBOX_GVISOR=0: no gVisor runtime")


def runsc_processes() -> dict[int, str]:
    """The gVisor sandboxes and gofers of the cluster (their command line names its runsc state root)."""
    mark = f"--root={hack_var('GVISOR_STATE')}/"
    found = {}
    for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = cmdline_file.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if mark in cmdline:
            found[int(cmdline_file.parent.name)] = cmdline.split()[0]
    return found


@gvisor
def test_cluster_down_with_a_gvisor_pod_running_leaves_nothing(cluster: Cluster) -> None:
    namespace = cluster.create_namespace("gvisor-down")
    start_gvisor_pod(cluster, namespace, "running")
    assert runsc_processes(), "the gVisor pod runs, but no runsc process names the state root"
    make("cluster-down")
    assert leftovers() == []
    make("cluster-up")


@gvisor
def test_cluster_up_recovers_when_a_gvisor_sandbox_died_with_its_cluster(cluster: Cluster) -> None:
    """A SIGKILLed cluster whose gVisor sandbox died too leaves runsc state naming dead PIDs; the cleanup must not
    SIGKILL whatever process has since got one of those numbers (cluster-down sets them to 0 first)."""
    namespace = cluster.create_namespace("gvisor-crash")
    start_gvisor_pod(cluster, namespace, "crashed")
    for pid in recorded_pids().values():
        os.kill(pid, signal.SIGKILL)
    for pid in runsc_processes():
        with contextlib.suppress(ProcessLookupError):  # gone already: its parent just died
            os.kill(pid, signal.SIGKILL)
    make("cluster-up")
    assert runsc_processes() == {}
    out = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].status.conditions[?(@.type=='Ready')].status}")
    assert out.stdout == "True"

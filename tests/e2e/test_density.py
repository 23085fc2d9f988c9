"""Default sandboxes pack the node without giving up a limit, on the real cluster.

Sandboxes here have ``spec: {}``: exactly what a new user gets from the operator's defaults. Requests are small
(so that many fit on the 2-core test node), while every limit stays a hard limit: 1 CPU, 512Mi memory, 20
processes. The figures (time to Ready, idle cost, memory per sandbox) come from ``bench/bench_density.py``,
not from here.

The module runs once per runtime (``[runc]``, ``[gvisor]``: tests/e2e/conftest.py). Under gVisor the pod is the
sandbox's cgroup, so the limits a sandbox reads inside are the pod's (its container's plus the RuntimeClass
overhead), and a memory overrun ends the whole sandbox (docs/gvisor.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

from sandbox_operator import constants
from sandbox_operator.models.quantity import parse_quantity
from sandbox_operator.sdk import Sandbox, SandboxError, SandboxManager
from tests.kit import (
    READY_TIMEOUT,
    Cluster,
    Runtime,
    operator_namespace,
    pod_overhead,
    sandbox_manifest,
    wait_ended_by_memory,
    wait_until,
)

pytestmark = pytest.mark.timeout(900)

MiB = 1024 * 1024


@dataclass(frozen=True)
class Env:
    cluster: Cluster
    namespace: str
    manager: SandboxManager
    runtime: Runtime

    def pod(self, name: str) -> dict[str, Any]:
        return dict(self.cluster.kubectl_json("get", "pod", name, "-n", self.namespace))

    def create_all(self, prefix: str, count: int) -> list[str]:
        names = [f"{prefix}-{i:02d}" for i in range(count)]
        documents = [sandbox_manifest(self.namespace, name, {}) for name in names]
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                    "items": documents}))
        return names

    def phases(self) -> dict[str, str]:
        listed = json.loads(self.cluster.kubectl("get", constants.CRD_NAME, "-n", self.namespace, "-o",
                                                 "json").stdout)["items"]
        return {item["metadata"]["name"]: f"{(item.get('status') or {}).get('phase')} "
                f"{(item.get('status') or {}).get('reason')}" for item in listed}

    def not_ready(self, names: list[str]) -> dict[str, str | None]:
        phases = self.phases()
        return {name: phases.get(name) for name in names if not phases.get(name, "").startswith("Ready")}

    def wait_all_ready(self, names: list[str], timeout: float = READY_TIMEOUT) -> None:
        def all_ready() -> bool:
            waiting = self.not_ready(names)
            ended = {name: phase for name, phase in waiting.items() if (phase or "").startswith(("Failed", "Expired"))}
            assert not ended, f"{len(ended)} of {len(names)} ended: {dict(list(ended.items())[:5])}"
            return not waiting

        wait_until(all_ready, timeout, interval=1, message=lambda: f"all {len(names)} Sandboxes Ready; not yet: "
                   f"{dict(list(self.not_ready(names).items())[:5])}")

    def delete_all(self) -> None:
        self.cluster.kubectl("delete", constants.CRD_NAME, "--all", "-n", self.namespace, "--wait=true",
                             "--timeout=180s", check=False, timeout=240)


@pytest.fixture(scope="module")
def env(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Iterator[Env]:
    with operator_namespace(cluster, "density", tmp_path_factory.mktemp("logs"),
                            **runtime.operator_settings()) as namespace, \
            SandboxManager(namespace, kubeconfig=cluster.kubeconfig, ready_timeout=READY_TIMEOUT) as manager:
        yield Env(cluster, namespace, manager, runtime)


def unrequested_cpu(cluster: Cluster, node: str) -> Decimal:
    """The node's allocatable CPU less what its running and pending pods request (overhead included)."""
    allocatable = parse_quantity(cluster.kubectl_json("get", "node", node)["status"]["allocatable"]["cpu"])
    pods = cluster.kubectl_json("get", "pods", "-A", "--field-selector",
                                f"spec.nodeName={node},status.phase!=Succeeded,status.phase!=Failed")["items"]
    requested = sum((pod_overhead(pod)[0] + sum((parse_quantity(c["resources"].get("requests", {}).get("cpu", "0"))
                                                 for c in pod["spec"]["containers"]), Decimal(0))
                     for pod in pods), Decimal(0))
    return allocatable - requested


def test_ten_then_fifty_default_sandboxes_are_all_ready(env: Env) -> None:
    ten = env.create_all("ten", 10)
    env.wait_all_ready(ten)
    pod = env.pod(ten[0])
    assert pod["spec"].get("runtimeClassName") == env.runtime.runtime_class
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"]["cpu"] == "1" and resources["limits"]["memory"] == "512Mi"
    assert resources["requests"] != resources["limits"]
    assert pod["status"]["qosClass"] == "Burstable"
    overhead_cpu = pod_overhead(pod)[0]
    if overhead_cpu:
        # The RuntimeClass overhead is requested per pod on top of the sandbox's own 10m: on a small node fifty
        # more may not fit, which is the overhead's cost, not a fault of the defaults.
        needed = 50 * (parse_quantity(resources["requests"]["cpu"]) + overhead_cpu)
        free = unrequested_cpu(env.cluster, pod["spec"]["nodeName"])
        if needed > free:
            env.delete_all()
            pytest.skip(f"[{env.runtime}] fifty more sandboxes request {needed} CPU with the RuntimeClass's "
                        f"{overhead_cpu} CPU overhead per pod; the node has {free} CPU unrequested")
    fifty = env.create_all("fifty", 50)
    try:
        env.wait_all_ready(fifty)
    finally:
        env.delete_all()


@pytest.fixture(scope="module")
def default_box(env: Env) -> Iterator[Sandbox]:
    name = env.create_all("limits", 1)[0]
    env.wait_all_ready([name])
    sandbox = env.manager.get(name)
    yield sandbox
    sandbox.delete(missing_ok=True)


# Work done in 3 s by one busy loop: run alone, then three at once. The count is the guest's own, so it needs no
# CPU accounting from inside (gVisor's counts a descheduled thread's time as the guest's).
BUSY_LOOP = ("import time\nn = 0\nend = time.monotonic() + 3\nwhile time.monotonic() < end:\n    n += 1\n"
             "print(n)")


def test_a_default_sandbox_gets_at_most_one_cpu(env: Env, default_box: Sandbox) -> None:
    quota = default_box.run(["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"])
    quota_us, period_us = (int(x) for x in quota.stdout.split())
    if env.runtime.kernel_boundary:
        # gVisor's cgroupfs shows the sandbox's CFS quota, the pod's, which holds the Sentry too: 1 CPU plus the
        # RuntimeClass overhead.
        overhead_cpu = pod_overhead(env.pod(default_box.pod_name))[0]
        assert period_us <= quota_us <= period_us * (1 + overhead_cpu), f"quota {quota_us}us per {period_us}us"
        one = int(default_box.run(["python3", "-c", BUSY_LOOP], timeout=60).stdout)
        three = default_box.run(["bash", "-c", f"for i in 1 2 3; do python3 -c '{BUSY_LOOP}' & done; wait"],
                                timeout=60)
        together = sum(int(n) for n in three.stdout.split())
        print(f"three busy loops together did {together / one:.2f}x the work of one alone")
        assert together <= 1.5 * one, f"{together} iterations by three loops vs {one} by one: more than one CPU"
        return
    assert quota_us == period_us, f"quota {quota_us}us per {period_us}us is not one CPU"
    burn = ("u0=$(cat /sys/fs/cgroup/cpuacct/cpuacct.usage); t0=$(date +%s%N); "
            "for i in 1 2 3; do timeout 4 sh -c 'while :; do :; done' & done; wait; "
            "u1=$(cat /sys/fs/cgroup/cpuacct/cpuacct.usage); t1=$(date +%s%N); "
            "echo $(( (u1 - u0) * 1000 / (t1 - t0) ))")
    used_millicores = int(default_box.run(["bash", "-c", burn], timeout=60).stdout.split()[-1])
    print(f"three CPU burners together used {used_millicores} millicores")
    assert used_millicores <= 1100


def test_a_default_sandbox_refuses_its_21st_process(default_box: Sandbox) -> None:
    over = default_box.run(["bash", "-c", "for i in $(seq 25); do sleep 20 & done; wait"], timeout=60)
    assert "fork" in over.stderr.lower() or "resource temporarily unavailable" in over.stderr.lower(), over


def test_a_default_sandbox_is_still_killed_at_512mi(env: Env, default_box: Sandbox) -> None:
    """Last: under gVisor the overrun ends the whole sandbox, which the tests above share."""
    hog = ["python3", "-c", "block = bytearray(1536 * 1024 * 1024); print('allocated')"]
    if env.runtime.kernel_boundary:
        with contextlib.suppress(SandboxError):  # the command's channel breaks with the sandbox
            default_box.run(hog)
        print(f"the hog's sandbox ended: {wait_ended_by_memory(default_box)}")
        return
    result = default_box.run(hog)
    assert result.exit_code == 137 and "allocated" not in result.stdout, result
    assert default_box.run(["echo", "alive"]).stdout == "alive\n"

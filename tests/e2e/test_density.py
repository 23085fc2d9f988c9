"""Default sandboxes pack the node without giving up a limit, on the real cluster.

Sandboxes here have ``spec: {}``: exactly what a new user gets from the operator's defaults. Requests are small
(so that many fit on the 2-core test node), while every limit stays a hard limit: 1 CPU, 512Mi memory, 20
processes. The figures (time to Ready, idle cost, memory per sandbox) come from ``bench/bench_density.py``,
not from here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk import Sandbox, SandboxManager
from tests.kit import READY_TIMEOUT, Cluster, operator_namespace, sandbox_manifest, wait_until

pytestmark = pytest.mark.timeout(900)

MiB = 1024 * 1024


@dataclass(frozen=True)
class Env:
    cluster: Cluster
    namespace: str
    manager: SandboxManager

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
def env(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with operator_namespace(cluster, "density", tmp_path_factory.mktemp("logs")) as namespace, \
            SandboxManager(namespace, kubeconfig=cluster.kubeconfig, ready_timeout=READY_TIMEOUT) as manager:
        yield Env(cluster, namespace, manager)


def test_ten_then_fifty_default_sandboxes_are_all_ready(env: Env) -> None:
    ten = env.create_all("ten", 10)
    env.wait_all_ready(ten)
    pod = json.loads(env.cluster.kubectl("get", "pod", ten[0], "-n", env.namespace, "-o", "json").stdout)
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["limits"]["cpu"] == "1" and resources["limits"]["memory"] == "512Mi"
    assert resources["requests"] != resources["limits"]
    assert pod["status"]["qosClass"] == "Burstable"
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


def test_a_default_sandbox_is_still_killed_at_512mi(default_box: Sandbox) -> None:
    result = default_box.run(["python3", "-c", "block = bytearray(1536 * 1024 * 1024); print('allocated')"])
    assert result.exit_code == 137 and "allocated" not in result.stdout, result
    assert default_box.run(["echo", "alive"]).stdout == "alive\n"


def test_a_default_sandbox_gets_at_most_one_cpu(default_box: Sandbox) -> None:
    quota = default_box.run(["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"])
    quota_us, period_us = (int(x) for x in quota.stdout.split())
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


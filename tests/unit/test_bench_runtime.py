"""The runtime benchmark's pure parts: the work it runs inside a sandbox (run here for real), the pods' memory
cgroups found and summed, the RuntimeClass's overhead read, gVisor's extra over runc, the start figures, the table
with its ratio and goals, and the flags."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from bench import bench_exec
from bench.bench_runtime import (
    AT_ONCE,
    EXTRA_IDLE_CPU,
    EXTRA_NODE_MEMORY,
    EXTRA_POD_MEMORY,
    IDLE_CPU,
    NODE_MEMORY,
    OVERHEAD_CPU,
    OVERHEAD_MEMORY,
    POD_MEMORY,
    READY_P50,
    Fleet,
    configured_overhead,
    cpu_loop_script,
    files_script,
    format_table,
    goals_met,
    overhead_note,
    parse_args,
    pod_memory_cgroup,
    pods_memory_bytes,
    rows,
    start_figures,
    with_extras,
)
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.kit import GVISOR, RUNC, CreationTimes, Kube


def run_python(script: str) -> str:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout


def test_the_cpu_loop_prints_its_own_seconds() -> None:
    assert 0 < float(run_python(cpu_loop_script(10_000))) < 10


def test_the_file_work_prints_its_seconds_and_leaves_nothing_behind(tmp_path: Path) -> None:
    assert 0 < float(run_python(files_script(50, str(tmp_path)))) < 10
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("qos", ["", "burstable", "besteffort"])
def test_a_pods_memory_cgroup_is_found_whatever_its_qos_class(tmp_path: Path, qos: str) -> None:
    cgroup = tmp_path.joinpath(qos, "podabc-123")
    cgroup.mkdir(parents=True)
    assert pod_memory_cgroup("abc-123", tmp_path) == cgroup


def test_a_missing_cgroup_says_the_benchmark_runs_on_the_node(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match=r"no memory cgroup of pod abc-123 .* must run on the cluster's node"):
        pod_memory_cgroup("abc-123", tmp_path)


class FakeKube:
    """Sandboxes and their pods as a Kube shows them; deleting one takes it and its pod away."""

    def __init__(self, pods: dict[str, str]) -> None:  # sandbox -> pod uid
        self.live = dict(pods)
        self.deleted: list[str] = []

    def pods(self, namespace: str) -> list[dict[str, Any]]:
        return [{"metadata": {"uid": uid, "labels": {constants.LABEL_SANDBOX: name}}}
                for name, uid in self.live.items()]

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return {"metadata": {"name": name}} if name in self.live else None

    def delete(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.live.pop(name, None)


def test_only_the_named_sandboxes_pods_memory_is_summed(tmp_path: Path) -> None:
    for uid, usage in (("u1", 1000), ("u2", 2000), ("other", 99999)):
        cgroup = tmp_path / "burstable" / f"pod{uid}"
        cgroup.mkdir(parents=True)
        (cgroup / "memory.usage_in_bytes").write_text(f"{usage}\n")
    kube = cast(Kube, FakeKube({"a": "u1", "b": "u2", "someone-elses": "other"}))
    assert pods_memory_bytes(kube, "ns", ["a", "b"], tmp_path) == 3000


class FakeNodeApi:
    def __init__(self, found: client.V1RuntimeClass | None = None, status: int = 404) -> None:
        self.found, self.status = found, status

    def read_runtime_class(self, name: str) -> client.V1RuntimeClass:
        if self.found is None:
            raise ApiException(status=self.status, reason="refused")
        return self.found


def runtime_class(overhead: dict[str, str] | None) -> client.V1RuntimeClass:
    return client.V1RuntimeClass(handler="runsc", metadata=client.V1ObjectMeta(name="gvisor"),
                                 overhead=client.V1Overhead(pod_fixed=overhead) if overhead is not None else None)


def test_the_configured_overhead_is_read_as_mb_and_millicores() -> None:
    api = cast(client.NodeV1Api, FakeNodeApi(runtime_class({"memory": "32Mi", "cpu": "50m"})))
    overhead = configured_overhead(api, "gvisor")
    assert overhead == {OVERHEAD_MEMORY: pytest.approx(33.554432), OVERHEAD_CPU: pytest.approx(50)}


def test_a_runtime_class_without_overhead_adds_nothing() -> None:
    api = cast(client.NodeV1Api, FakeNodeApi(runtime_class(None)))
    assert configured_overhead(api, "gvisor") == {OVERHEAD_MEMORY: 0, OVERHEAD_CPU: 0}


def test_no_runtime_class_is_none_and_other_errors_are_raised() -> None:
    assert configured_overhead(cast(client.NodeV1Api, FakeNodeApi()), "gvisor") is None
    with pytest.raises(ApiException):
        configured_overhead(cast(client.NodeV1Api, FakeNodeApi(status=403)), "gvisor")


def test_gvisors_extra_is_its_figure_minus_runcs_and_missing_when_either_is() -> None:
    extras = with_extras({POD_MEMORY: 4.0, NODE_MEMORY: 10.0, IDLE_CPU: 1.0},
                         {POD_MEMORY: 20.0, NODE_MEMORY: 35.0, IDLE_CPU: None})
    assert extras[EXTRA_POD_MEMORY] == 16.0 and extras[EXTRA_NODE_MEMORY] == 25.0
    assert extras[EXTRA_IDLE_CPU] is None and extras[POD_MEMORY] == 20.0


class FakeTimes:
    """Creation times as CreationTimes records them: each Sandbox Ready after the seconds its name is given,
    or failed."""

    def __init__(self, kube: FakeKube, ready_after: dict[str, float]) -> None:
        self.kube, self.ready_after = kube, ready_after
        self.created: list[str] = []
        self.failed: dict[str, str] = {}

    def create(self, name: str, spec: dict[str, Any]) -> None:
        assert spec == GVISOR.pod_fields()
        self.created.append(name)
        self.kube.live[name] = f"uid-{name}"
        if name.endswith("burst-01"):
            self.failed[name] = "Failed: Unschedulable"

    def wait_settled(self, names: list[str], timeout: float) -> bool:
        return all(name not in self.failed for name in names)

    def to_ready(self, names: Sequence[str]) -> list[float]:
        return [self.ready_after.get(name.rsplit("-", 2)[-2], 1.0) for name in names if name not in self.failed]


def test_start_figures_take_the_singles_p50_and_no_all_ready_time_when_one_failed() -> None:
    kube = FakeKube({})
    times = FakeTimes(kube, {"single0": 1.0, "single1": 3.0, "single2": 2.0})
    fleet = Fleet(cast(Kube, kube), "ns", cast(CreationTimes, times), "00001", timeout=5)
    notes: list[str] = []
    figures = start_figures(fleet, GVISOR, serial=3, at_once=4, notes=notes)
    assert figures == {READY_P50: 2.0, AT_ONCE: None}
    assert len(times.created) == 7 and not kube.live and sorted(kube.deleted) == sorted(times.created)
    assert notes == ["rt-00001-gvisor-burst-01: Failed: Unschedulable"]


def test_the_table_puts_runc_gvisor_their_ratio_and_the_goals_side_by_side() -> None:
    table_rows = rows(parse_args([]))
    results = {RUNC.name: {READY_P50: 1.0, bench_exec.TRUE_P50: 2.0, POD_MEMORY: 4.0},
               GVISOR.name: {READY_P50: 1.4, bench_exec.TRUE_P50: 5.0, POD_MEMORY: 20.0, OVERHEAD_MEMORY: 33.6,
                             EXTRA_NODE_MEMORY: 31.0}}
    lines = format_table(results, table_rows).splitlines()
    assert lines[0].split() == ["metric", "runc", "gvisor", "gvisor", "/", "runc", "goal"]
    ready = next(line for line in lines if line.startswith("single sandbox create -> Ready, p50 of 5"))
    assert ready.split()[-7:] == ["1.0", "1.4", "1.40x", "gvisor", "<=", "1.5x", "met"]
    true_p50 = next(line for line in lines if line.startswith("`true` over the channel, p50 of 100"))
    assert true_p50.split()[-4:] == ["2.0", "5.0", "2.50x", "-"]
    overhead = next(line for line in lines if line.startswith("RuntimeClass overhead.podFixed memory"))
    assert overhead.split()[-4:] == ["-", "33.6", "-", "-"]
    extra = next(line for line in lines if line.startswith("node memory per idle sandbox, gvisor - runc"))
    assert extra.endswith("<= 30  MISSED")
    assert not goals_met(results, table_rows)


def test_the_goals_are_met_only_with_every_figure_they_need() -> None:
    table_rows = rows(parse_args([]))
    met = {RUNC.name: {READY_P50: 1.0}, GVISOR.name: {READY_P50: 1.5, EXTRA_NODE_MEMORY: 12.0}}
    assert goals_met(met, table_rows)
    assert not goals_met({RUNC.name: {}, GVISOR.name: met[GVISOR.name]}, table_rows)  # no runc start to compare
    assert not goals_met({**met, GVISOR.name: {READY_P50: 1.5}}, table_rows)  # no memory figure


def test_the_overhead_note_says_whether_the_overhead_covers_gvisors_extra() -> None:
    assert "covers it" in overhead_note({OVERHEAD_MEMORY: 33.6, EXTRA_POD_MEMORY: 15.0})
    assert "does NOT cover it" in overhead_note({OVERHEAD_MEMORY: 33.6, EXTRA_POD_MEMORY: 40.0})
    assert "no figure" in overhead_note({OVERHEAD_MEMORY: 33.6})


@pytest.mark.parametrize("flag", ["--serial", "--at-once", "--iterations", "--cells", "--work-runs", "--idle",
                                  "--idle-seconds"])
def test_a_count_below_one_is_refused_naming_the_flag(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args([flag, "0"])
    assert f"{flag} must be at least 1, got 0" in capsys.readouterr().err

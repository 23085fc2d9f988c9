"""The burst profile's parsing: /proc/PID/stat lines and the API server's request metrics."""

from __future__ import annotations

from bench.node_profile import CLOCK_TICKS, ProcessTimes, api_use, cpu_by_component, parse_stat


def test_a_stat_line_with_spaces_and_parentheses_in_the_name() -> None:
    line = "42 (evil) name) S 1 42 42 0 -1 4194560 0 0 0 0 7 3 11 5 20 0 1 0 100 0 0"
    assert parse_stat(line) == ProcessTimes("evil) name", 10, 16)


def test_cpu_by_component_counts_new_processes_and_reaped_children() -> None:
    before = {1: ProcessTimes("containerd", 100, 50), 2: ProcessTimes("kubelet", 10, 0)}
    after = {1: ProcessTimes("containerd", 100 + CLOCK_TICKS, 50 + CLOCK_TICKS),  # 1 s own, 1 s of CNI plugins
             2: ProcessTimes("kubelet", 10, 0),
             3: ProcessTimes("pause", CLOCK_TICKS // 2, 0),  # started during the burst
             4: ProcessTimes("bash", CLOCK_TICKS, 0)}
    seconds = cpu_by_component(before, after)
    assert seconds == {"containerd": 2.0, "kubelet": 0.0, "pause": (CLOCK_TICKS // 2) / CLOCK_TICKS, "other": 1.0}


def test_named_processes_are_their_own_component() -> None:
    after = {9: ProcessTimes("python", CLOCK_TICKS, 0), 10: ProcessTimes("python", CLOCK_TICKS, 0)}
    assert cpu_by_component({}, after, {9: "operator"}) == {"operator": 1.0, "other": 1.0}


def test_a_reused_pid_counts_from_zero() -> None:
    seconds = cpu_by_component({7: ProcessTimes("kubelet", 500, 0)}, {7: ProcessTimes("etcd", CLOCK_TICKS, 0)})
    assert seconds == {"etcd": 1.0}


METRICS_BEFORE = """\
# HELP apiserver_request_total Counter of apiserver requests
apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"} 10
apiserver_request_duration_seconds_sum{resource="pods",subresource="",verb="POST"} 1.0
apiserver_request_total{code="200",resource="pods",subresource="",verb="WATCH"} 3
"""
METRICS_AFTER = """\
apiserver_request_total{code="201",resource="pods",subresource="",verb="POST"} 110
apiserver_request_duration_seconds_sum{resource="pods",subresource="",verb="POST"} 51.0
apiserver_request_total{code="200",resource="sandboxes",subresource="status",verb="PATCH"} 250
apiserver_request_duration_seconds_sum{resource="sandboxes",subresource="status",verb="PATCH"} 25.0
apiserver_request_total{code="200",resource="pods",subresource="",verb="WATCH"} 9
"""


def test_api_use_is_the_difference_with_the_servers_mean_latency() -> None:
    uses = api_use(METRICS_BEFORE, METRICS_AFTER)
    assert [(u.verb, u.resource, u.code, u.requests) for u in uses] == [
        ("PATCH", "sandboxes/status", "200", 250), ("POST", "pods", "201", 100)]
    assert [round(u.mean_seconds, 3) for u in uses] == [0.1, 0.5]
    assert api_use(METRICS_BEFORE, METRICS_AFTER, minimum=200)[0].resource == "sandboxes/status"

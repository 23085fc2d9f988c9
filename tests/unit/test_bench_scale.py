"""The scale benchmark's bookkeeping: how a count splits into burst and sustained, the API server's request
counts between two scrapes, who makes which request, and the spec that steers a Sandbox onto the fake nodes."""

from __future__ import annotations

from bench.bench_scale import (
    KWOK_NODE_KEY,
    ApiWindow,
    CollectorPass,
    CollectorSample,
    Plan,
    RequestKey,
    api_requests,
    made_by,
    pass_summary,
    passes_between,
    scale_spec,
)

from sandbox_operator.models.sandbox import SandboxSpec
from sandbox_operator.settings import OperatorSettings


def sample(verb: str, group: str, resource: str, subresource: str, code: str, value: int) -> str:
    """One apiserver_request_total line as the API server writes it."""
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
            f'resource="{resource}",scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


TERMINATED = 'apiserver_terminated_watchers_total{{group="",resource="pods",version="v1"}} {}'
BEFORE = "\n".join([
    "# HELP apiserver_request_total Counter of apiserver requests",
    sample("POST", "sandbox-operator.io", "sandboxes", "", "201", 5),
    sample("PATCH", "", "pods", "status", "200", 1),
    sample("LIST", "", "pods", "", "200", 3),
    TERMINATED.format(1),
])
AFTER = "\n".join([
    sample("POST", "sandbox-operator.io", "sandboxes", "", "201", 105),
    sample("POST", "sandbox-operator.io", "sandboxes", "", "409", 2),
    sample("PATCH", "", "pods", "status", "200", 201),
    sample("LIST", "", "pods", "", "200", 3),
    sample("WATCH", "", "pods", "", "200", 4),
    TERMINATED.format(3),
])
POST_SANDBOXES = RequestKey("POST", "sandbox-operator.io", "sandboxes", "")


def test_the_default_run_is_a_burst_then_twenty_per_second_for_a_minute() -> None:
    plan = Plan(count=2000, rate=20, sustained_seconds=60, idle_seconds=300, gc_interval=10, timeout=600)
    assert (plan.burst, plan.sustained) == (800, 1200)


def test_a_small_run_keeps_a_quarter_for_the_burst() -> None:
    plan = Plan(count=100, rate=20, sustained_seconds=60, idle_seconds=20, gc_interval=2, timeout=180)
    assert (plan.burst, plan.sustained) == (25, 75)


def test_requests_are_summed_over_codes_and_watches_count() -> None:
    requests, terminated = api_requests(AFTER)
    assert requests[POST_SANDBOXES] == 107
    assert requests[RequestKey("WATCH", "", "pods", "")] == 4
    assert terminated == {"pods": 3}


def test_a_window_holds_what_happened_between_the_scrapes_only() -> None:
    window = ApiWindow.between(BEFORE, AFTER)
    assert window.requests[POST_SANDBOXES] == 102
    assert window.count(("PATCH",), "", "pods", "status") == 200
    assert RequestKey("LIST", "", "pods", "") not in window.requests  # unchanged: not a request of the window
    assert window.terminated_watchers == {"pods": 2}


def test_each_request_names_who_makes_it() -> None:
    assert made_by(POST_SANDBOXES) == "this benchmark"
    assert made_by(RequestKey("PATCH", "sandbox-operator.io", "sandboxes", "status")) == "operator (kopf)"
    assert made_by(RequestKey("POST", "", "pods", "binding")) == "kube-scheduler"
    assert made_by(RequestKey("PATCH", "", "pods", "status")) == "kwok"
    assert made_by(RequestKey("POST", "", "pods", "")) == "operator"


def test_the_spec_selects_and_tolerates_the_fake_nodes_and_the_operator_may_allow_it() -> None:
    spec = SandboxSpec.model_validate(scale_spec(300))
    settings = OperatorSettings(allowed_toleration_keys=[KWOK_NODE_KEY], allowed_node_selector_keys=[KWOK_NODE_KEY])
    assert spec.tolerations and spec.node_selector
    assert all(settings.toleration_allowed(toleration.key) for toleration in spec.tolerations)
    assert all(settings.node_selector_key_allowed(key) for key in spec.node_selector)
    assert not OperatorSettings().toleration_allowed(KWOK_NODE_KEY)


def operator_metrics(passes: int, seconds: float, sandboxes: int, idle: int, expired: int) -> str:
    """The collector's lines of the operator's /metrics, as prometheus_client writes them."""
    return "\n".join([
        "# HELP sandbox_operator_collector_pass_seconds Duration of one collector pass",
        'sandbox_operator_collector_pass_seconds_bucket{le="0.001"} 0.0',
        f"sandbox_operator_collector_pass_seconds_count {passes}.0",
        f"sandbox_operator_collector_pass_seconds_sum {seconds}",
        f"sandbox_operator_collector_sandboxes {sandboxes}.0",
        f'sandbox_operator_collections_total{{reason="IdleTimeout"}} {idle}.0',
        f'sandbox_operator_collections_total{{reason="LifetimeExpired"}} {expired}.0',
        "sandbox_operator_collections_created 1.7e9",
    ])


def test_each_new_pass_in_the_operator_metrics_is_one_pass() -> None:
    before = CollectorSample.parse(operator_metrics(3, 0.5, 2000, 10, 2))
    assert before == CollectorSample(passes=3, seconds=0.5, sandboxes=2000, collected=12)
    after = CollectorSample.parse(operator_metrics(4, 1.75, 1900, 110, 2))
    assert passes_between(before, after) == [CollectorPass(seconds=1.25, sandboxes=1900, collected=100)]
    assert passes_between(after, after) == []
    two = passes_between(before, CollectorSample.parse(operator_metrics(5, 0.9, 2000, 10, 2)))
    assert [one.seconds for one in two] == [0.2, 0.2] and all(one.collected == 0 for one in two)


def test_the_pass_figure_tells_passes_that_deleted_from_those_that_did_not() -> None:
    passes = [CollectorPass(0.004, 2000, 0), CollectorPass(0.006, 2000, 0), CollectorPass(1.5, 1800, 200)]
    assert pass_summary(passes) == ("6 / 1500 ms over 3 passes (those deleting nothing: 5 / 6 ms); "
                                    "up to 2000 Sandboxes")
    assert pass_summary([]) == "no pass seen"

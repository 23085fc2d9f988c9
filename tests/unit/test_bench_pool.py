"""The pool benchmark's bookkeeping: claims counted warm, cold or failed, the schedule, the rate, the operator's
metrics, the goals, the flags, the claim loops run against a fake SDK, the claims' create requests timed apart, and
the tables of what a phase cost the node."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
from bench.bench_pool import (
    BENCH_PROCESS,
    MAX_CLAIM_THREADS,
    Claim,
    CreateCallTimer,
    NodeProfile,
    NodeWindow,
    OperatorView,
    Phase,
    Refill,
    api_table,
    at_once,
    claim_threads,
    claimable_pods,
    cpu_table,
    fire_times,
    from_pool,
    goal_figures,
    metric_total,
    ms,
    on_schedule,
    operator_view,
    parse_args,
    pods_taken,
    pool_lasts,
    ready_rate,
    refill_note,
    split_table,
    timed_create,
)
from bench.node_profile import ApiUse

from sandbox_operator import constants
from sandbox_operator.sdk import Sandbox, SandboxManager, SandboxNotReady

POOL = "bench"


def claims(*seconds: float | None, warm: bool = True, first: float | None = None) -> list[Claim]:
    return [Claim(float(index), value, warm and value is not None, first) for index, value in enumerate(seconds)]


def test_a_phase_counts_warm_cold_and_failed_claims() -> None:
    phase = Phase("p", [*claims(0.01, 0.02), *claims(1.0, warm=False), *claims(None)])
    assert (len(phase.ready), phase.warm, phase.cold, phase.failed) == (3, 2, 1, 1)
    assert phase.latency(50) == 0.02
    assert phase.latency(100) == 1.0


def test_a_phase_where_nothing_got_ready_prints_dashes() -> None:
    phase = Phase("p", claims(None, None))
    assert math.isnan(phase.latency(50))
    assert ms(phase.latency(95)) == "-"
    assert ms(0.0123) == "12.3 ms"


def test_a_pod_is_warm_only_when_the_pool_started_it() -> None:
    assert from_pool(constants.pool_pod_generate_name(POOL) + "x7k2p", POOL)
    assert not from_pool(constants.pod_name("sbx-x7k2p"), POOL)
    assert not from_pool("benchmark.pool-x7k2p", POOL)  # another pool whose name starts alike


def pod(*, ready: bool = True, claimed: bool = False, deleting: bool = False) -> dict[str, Any]:
    labels = {constants.LABEL_POOL: POOL, **({constants.LABEL_SANDBOX: "sbx-a"} if claimed else {})}
    meta: dict[str, Any] = {"labels": labels, **({"deletionTimestamp": "2026-12-01T00:00:00Z"} if deleting else {})}
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": str(ready)}]}}


def test_only_ready_unclaimed_pods_that_stay_are_claimable() -> None:
    assert claimable_pods([pod(), pod()]) == 2
    assert claimable_pods([pod(ready=False), pod(claimed=True), pod(deleting=True), {"metadata": {}}]) == 0


def test_the_schedule_is_evenly_spaced_for_the_duration() -> None:
    due = fire_times(20, 60)
    assert len(due) == 1200
    assert due[0] == 0.0
    assert due[-1] == pytest.approx(59.95)
    assert all(b - a == pytest.approx(0.05) for a, b in itertools.pairwise(due))


def test_threads_cover_the_claims_in_flight_up_to_a_cap() -> None:
    assert claim_threads(2, 10) == 20
    assert claim_threads(0.1, 1) == 1
    assert claim_threads(20, 30) == MAX_CLAIM_THREADS


def test_the_rate_counts_ready_claims_from_the_first_call_to_the_last_ready() -> None:
    # Four claims started 0.5 s apart, each Ready after 0.5 s; one more failed: 4 Ready over 2 s.
    done = [Claim(index * 0.5, 0.5, True) for index in range(4)]
    assert ready_rate([*done, Claim(0.25, None, False)]) == pytest.approx(2.0)
    assert ready_rate([Claim(0.0, None, False)]) == 0.0


def exposition(warm: int, cold: int, seconds: float) -> str:
    """The operator's pool metrics as prometheus_client writes them, with every warm claim measured."""
    return f"""\
# HELP sandbox_operator_pool_claims_total Sandboxes with spec.poolRef, by outcome
# TYPE sandbox_operator_pool_claims_total counter
sandbox_operator_pool_claims_total{{outcome="warm"}} {warm}.0
sandbox_operator_pool_claims_total{{outcome="cold"}} {cold}.0
sandbox_operator_pool_claims_created{{outcome="warm"}} 1.7e+09
sandbox_operator_pool_claim_seconds_bucket{{le="0.01"}} {warm}.0
sandbox_operator_pool_claim_seconds_count {warm}.0
sandbox_operator_pool_claim_seconds_sum {seconds}
"""


METRICS_BEFORE, METRICS_AFTER = exposition(2, 1, 0.02), exposition(6, 3, 0.06)


def test_metrics_are_summed_by_name_and_labels() -> None:
    assert metric_total(METRICS_AFTER, "sandbox_operator_pool_claims_total") == 9.0
    assert metric_total(METRICS_AFTER, "sandbox_operator_pool_claims_total", outcome="cold") == 3.0
    assert metric_total(METRICS_AFTER, "sandbox_operator_pool_claim_seconds_sum") == pytest.approx(0.06)
    assert metric_total(METRICS_AFTER, "missing") == 0.0


def test_the_operators_view_of_a_phase_is_what_grew_between_scrapes() -> None:
    view = operator_view(METRICS_BEFORE, METRICS_AFTER)
    assert (view.warm, view.cold) == (4, 2)
    assert view.claim_seconds_mean == pytest.approx(0.01)
    assert math.isnan(operator_view("", "").claim_seconds_mean)


def verdicts(serial: Phase, parallel: Phase, sustained: Phase | None, *, parallel_claims: int = 20,
             rate: float = 20, duration: float = 60) -> list[bool | None]:
    """The goals' verdicts in the table's order: serial claim p50, parallel claim p95, first command p50, sustained
    rate, and the cold/warm ratio (no goal)."""
    cold = Phase("cold", claims(1.0, 1.2, warm=False))
    return [figure.met for figure in goal_figures(serial, parallel, sustained, cold, parallel_claims=parallel_claims,
                                                  rate=rate, duration=duration)]


def steady(rate: float, duration: float, latency: float) -> Phase:
    return Phase("sustained", [Claim(due, latency, True) for due in fire_times(rate, duration)])


FAST_SERIAL = Phase("serial", claims(0.02, 0.025, 0.03, first=0.04))
FAST_PARALLEL = Phase("parallel", claims(*[0.05] * 20))


def test_fast_claims_meet_every_goal() -> None:
    assert verdicts(FAST_SERIAL, FAST_PARALLEL, steady(20, 60, 0.05)) == [True, True, True, True, None]


def test_each_goal_is_missed_on_its_own() -> None:
    slow_serial = Phase("serial", claims(0.05, 0.06, first=0.04))
    assert verdicts(slow_serial, FAST_PARALLEL, None) == [False, True, True, None, None]
    slow_tail = Phase("parallel", claims(*[0.05] * 17, 0.5, 0.5, 0.5))
    assert verdicts(FAST_SERIAL, slow_tail, None)[1] is False
    slow_command = Phase("serial", claims(0.02, first=0.2))
    assert verdicts(slow_command, FAST_PARALLEL, None)[2] is False
    too_few_ready = steady(20, 60, 10.0)  # every claim Ready, but 1200 over 70 s
    assert verdicts(FAST_SERIAL, FAST_PARALLEL, too_few_ready)[3] is False


def test_failed_claims_and_runs_smaller_than_the_goals_miss_them() -> None:
    one_failed = Phase("serial", claims(0.01, None, first=0.01))
    assert verdicts(one_failed, FAST_PARALLEL, None)[0] is False
    assert verdicts(FAST_SERIAL, Phase("parallel", claims(*[0.01] * 5)), None, parallel_claims=5)[1] is False
    assert verdicts(FAST_SERIAL, FAST_PARALLEL, steady(20, 10, 0.05), duration=10)[3] is False
    assert verdicts(FAST_SERIAL, FAST_PARALLEL, steady(10, 60, 0.05), rate=10)[3] is False
    sustained_failure = Phase("sustained", [*steady(20, 60, 0.05).claims, Claim(59.0, None, False)])
    assert verdicts(FAST_SERIAL, FAST_PARALLEL, sustained_failure)[3] is False


@pytest.mark.parametrize(("argv", "complaint"), [
    (["--pool-size", "10"], "--pool-size (10) must be at least --parallel (20)"),
    (["--rate", "0"], "--rate must be a positive number of claims per second"),
    (["--serial", "0"], "--serial must be at least 1"),
    (["--pool-size", "5000"], "--pool-size must be at most 1000"),
])
def test_bad_flags_are_refused_by_name(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert complaint in capsys.readouterr().err


def test_the_defaults_are_the_goals_run() -> None:
    args = parse_args([])
    assert (args.serial, args.parallel, args.rate, args.duration, args.pool_size) == (20, 20, 20.0, 60.0, 40)


class FakeSandbox:
    """What the loops use of a Sandbox handle: its pod's name, ``run`` and ``delete``."""

    def __init__(self, pod_name: str, *, command_fails: bool = False) -> None:
        self.pod_name = pod_name
        self.command_fails = command_fails
        self.deleted = threading.Event()

    def run(self, argv: list[str]) -> Any:
        if self.command_fails:
            raise SandboxNotReady("the channel broke", reason="Test")
        return type("Result", (), {"check": lambda self: self})()

    def delete(self, **_: Any) -> None:
        self.deleted.set()


def test_a_claim_is_timed_and_judged_by_its_pod() -> None:
    claim, sandbox = timed_create(lambda: cast(Sandbox, FakeSandbox("bench.pool-abcde")), POOL, first_command=True)
    assert sandbox is not None
    assert claim.warm
    assert claim.seconds is not None and claim.first_command is not None and claim.error is None


def test_failures_are_recorded_not_raised() -> None:
    def refuse() -> Sandbox:
        raise SandboxNotReady("not Ready within 30s", reason="Timeout")

    failed, sandbox = timed_create(refuse, POOL, due=time.perf_counter())
    assert sandbox is None
    assert failed.seconds is None and not failed.warm
    assert failed.error is not None and "SandboxNotReady" in failed.error
    cold, _ = timed_create(lambda: cast(Sandbox, FakeSandbox("sbx-abcde", command_fails=True)), POOL,
                           first_command=True)
    assert cold.seconds is not None and not cold.warm and cold.first_command is None
    assert cold.error is not None and cold.error.startswith("first command: SandboxNotReady")


def fake_creates(pod_prefix: str) -> tuple[Callable[[], Sandbox], list[FakeSandbox]]:
    """A create for the loops' threads, and every sandbox it made; pods named ``pod_prefix`` and a number."""
    made: list[FakeSandbox] = []
    lock = threading.Lock()

    def create() -> Sandbox:
        with lock:
            made.append(FakeSandbox(f"{pod_prefix}{len(made)}"))
            return cast(Sandbox, made[-1])

    return create, made


def test_claims_at_once_are_each_deleted() -> None:
    create, made = fake_creates("bench.pool-")
    done = at_once(create, 5, POOL)
    assert len(done) == 5 and all(claim.warm for claim in done)
    assert len(made) == 5 and all(sandbox.deleted.is_set() for sandbox in made)


def test_claims_on_schedule_fire_at_their_times_and_are_deleted() -> None:
    create, made = fake_creates("sbx-")
    done = on_schedule(create, POOL, rate=50, duration=0.2, threads=4)
    assert len(done) == 10 and not any(claim.warm for claim in done)
    assert all(sandbox.deleted.is_set() for sandbox in made)
    starts = sorted(claim.started for claim in done)
    assert starts[-1] - starts[0] == pytest.approx(0.18, abs=0.1)
    assert max(claim.late for claim in done) < 0.1


class FakeApi:
    """What the timer wraps of the SDK's API: ``create_sandbox``, taking ``seconds`` (or the body's ``sleep``), or
    failing."""

    def __init__(self, seconds: float, *, refuse: bool = False) -> None:
        self.seconds = seconds
        self.refuse = refuse
        self.bodies: list[dict[str, Any]] = []

    def create_sandbox(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        time.sleep(body.get("sleep", self.seconds))
        if self.refuse:
            raise SandboxNotReady("refused", reason="Test")
        self.bodies.append(body)
        return {"metadata": {"name": "sbx-a", "namespace": namespace}}


def timed_manager(seconds: float, *, refuse: bool = False) -> tuple[SandboxManager, CreateCallTimer]:
    manager = cast(SandboxManager, type("Manager", (), {"api": FakeApi(seconds, refuse=refuse)})())
    return manager, CreateCallTimer(manager)


def creating(manager: SandboxManager, pod_name: str, *, then: float = 0.0) -> Callable[[], Sandbox]:
    """A create as the SDK's: the request through the manager's API, then ``then`` seconds of waiting for Ready."""
    def create() -> Sandbox:
        manager.api.create_sandbox({"spec": {}}, "ns")
        time.sleep(then)
        return cast(Sandbox, FakeSandbox(pod_name))
    return create


def test_the_create_request_is_timed_apart_from_the_wait_for_ready() -> None:
    manager, timer = timed_manager(0.02)
    claim, _ = timed_create(creating(manager, "bench.pool-a", then=0.05), POOL, create_calls=timer)
    assert claim.seconds is not None and claim.create_call is not None and claim.after_create_call is not None
    assert 0.02 <= claim.create_call < 0.05
    assert claim.after_create_call >= 0.05
    assert claim.create_call + claim.after_create_call == pytest.approx(claim.seconds)
    assert timer.take() is None  # taken once: the next claim of this thread does not inherit it
    assert cast(FakeApi, manager.api).bodies == [{"spec": {}}]


def test_a_refused_create_request_is_still_timed() -> None:
    manager, timer = timed_manager(0.01, refuse=True)
    claim, sandbox = timed_create(creating(manager, "bench.pool-a"), POOL, create_calls=timer)
    assert sandbox is None and claim.seconds is None and claim.after_create_call is None
    assert claim.create_call is not None and claim.create_call >= 0.01


def test_each_thread_gets_its_own_create_requests_time() -> None:
    manager, timer = timed_manager(0.0)
    both_sent = threading.Barrier(2)
    lock = threading.Lock()
    request_seconds = [0.0, 0.05]

    def create() -> Sandbox:
        with lock:
            seconds = request_seconds.pop()
        manager.api.create_sandbox({"sleep": seconds}, "ns")
        both_sent.wait()  # both requests are done before either thread takes its time
        return cast(Sandbox, FakeSandbox("bench.pool-a"))

    done = at_once(create, 2, POOL, create_calls=timer)
    fast, slow = sorted(claim.create_call or math.nan for claim in done)
    assert fast < 0.05 <= slow
    done = on_schedule(creating(manager, "bench.pool-b"), POOL, rate=50, duration=0.1, threads=2, create_calls=timer)
    assert len(done) == 5 and all(claim.create_call is not None for claim in done)


class Window:
    """A context manager that records when it was entered and left, among the creates and deletes."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def __enter__(self) -> Window:
        self.events.append("enter")
        return self

    def __exit__(self, *exc: object) -> None:
        self.events.append("exit")


def test_the_window_of_claims_at_once_closes_before_the_deletes() -> None:
    events: list[str] = []

    class Recorded(FakeSandbox):
        def delete(self, **kwargs: Any) -> None:
            events.append("delete")
            super().delete(**kwargs)

    def create() -> Sandbox:
        events.append("create")
        return cast(Sandbox, Recorded("bench.pool-a"))

    at_once(create, 3, POOL, window=Window(events))
    assert events == ["enter", "create", "create", "create", "exit", "delete", "delete", "delete"]


def test_the_split_shows_the_phases_whose_create_requests_were_timed() -> None:
    timed = Phase("claims, 2 at once", [Claim(0.0, 0.5, True, create_call=0.1), Claim(0.0, 0.9, True, create_call=0.3),
                                        Claim(0.0, None, False, create_call=0.2)])
    untimed = Phase("claims, one at a time", claims(0.02))
    table = split_table([timed, untimed])
    assert timed.create_calls == [0.1, 0.3]  # the failed claim's request is left out, as its wait is
    assert timed.after_create_calls == [pytest.approx(0.4), pytest.approx(0.6)]
    assert len(table) == 3
    assert table[2] == ("| claims, 2 at once | 2 | 200.0 ms | 290.0 ms | 300.0 ms | 500.0 ms | 590.0 ms | "
                        "600.0 ms |")


def profile(label: str, seconds: float, claims: int, cpu: dict[str, float], busy_cores: float = 1.5,
            api: list[ApiUse] | None = None) -> NodeProfile:
    return NodeProfile(label, seconds, claims, cpu, busy_cores, api or [])


def test_the_cpu_table_gives_each_component_its_seconds_and_share_of_wall_time() -> None:
    burst = profile("20 at once", 2.0, 20, {"kube-apiserver": 1.2, "bench": 0.4, "other": 0.1}, busy_cores=1.9)
    steady = profile("20/s", 60.0, 1200, {"kube-apiserver": 30.0, "etcd": 45.0, "operator": 12.0})
    table = cpu_table([burst, steady], cpus=2)
    assert table[0] == ("| component | 20 at once: CPU s | 20 at once: share of wall | 20/s: CPU s | "
                        "20/s: share of wall |")
    assert table[2] == "| etcd | 0.00 | 0% | 45.00 | 75% |"  # the busiest share in either phase first
    assert table[3] == "| kube-apiserver | 1.20 | 60% | 30.00 | 50% |"
    assert [row.split(" | ")[0] for row in table[4:7]] == [
        "| this benchmark (the SDK's client threads)", "| the operator (Python, kopf)", "| everything else"]
    assert table[-2] == "| total | 1.70 | 85% | 87.00 | 145% |"
    assert table[-1] == "| the node busy (/proc/stat; it has 2 CPUs: 200%) | 3.80 | 190% | 90.00 | 150% |"


def test_the_api_table_lines_up_each_request_across_the_phases() -> None:
    burst = profile("20 at once", 1.0, 20, {}, api=[ApiUse("POST", "sandboxes", "201", 20, 0.05),
                                                    ApiUse("PATCH", "pods", "200", 40, 0.02)])
    steady = profile("20/s", 60.0, 1200, {}, api=[ApiUse("PATCH", "pods", "200", 2400, 0.1)])
    table = api_table([burst, steady])
    assert table[0] == ("| request | code | 20 at once: count | per claim | server mean | 20/s: count | per claim | "
                        "server mean |")
    assert table[2:] == ["| PATCH pods | 200 | 40 | 2.0 | 20.0 ms | 2400 | 2.0 | 100.0 ms |",
                         "| POST sandboxes | 201 | 20 | 1.0 | 50.0 ms | - | - | - |"]


def test_the_refill_counts_pods_that_became_ready_in_the_pool() -> None:
    # 40 claimable at the start, 5 at the end, 900 taken over 60 s: 865 became Ready, 14.4 a second.
    refill = Refill(40, 5, 900, 60.0)
    assert refill.started == 865
    assert refill.rate == pytest.approx(865 / 60)
    assert pool_lasts(40, 20, 15.0) == pytest.approx(8.0)
    assert math.isinf(pool_lasts(40, 20, 20.0))
    note = refill_note(refill, pool_size=40, rate=20, duration=60)
    assert "865 pool pods became Ready in 60.0 s" in note
    assert "a full pool of K lasts K / (20 - 14.4) s at 20 claims/s: 7 s for --pool-size 40" in note
    assert note.endswith("60 s needs a pool of 335")
    kept_up = refill_note(Refill(40, 40, 1200, 60.0), pool_size=40, rate=20, duration=60)
    assert "the refill kept up with 20 claims/s, so this is a lower bound" in kept_up


def test_the_pods_taken_are_the_operators_count_unless_it_showed_none() -> None:
    phase = Phase("p", claims(0.1, 0.1, None))
    assert pods_taken(Phase("p", phase.claims, OperatorView(3, 0, 0.01))) == 3  # the client gave up on one
    assert pods_taken(Phase("p", phase.claims, OperatorView(0, 0, math.nan))) == 2
    assert pods_taken(phase) == 2


API_BEFORE = """\
apiserver_request_total{code="201",resource="sandboxes",subresource="",verb="POST"} 10
apiserver_request_duration_seconds_sum{resource="sandboxes",subresource="",verb="POST"} 1.0
"""
API_AFTER = """\
apiserver_request_total{code="201",resource="sandboxes",subresource="",verb="POST"} 30
apiserver_request_duration_seconds_sum{resource="sandboxes",subresource="",verb="POST"} 3.0
"""


class FakeCluster:
    """What the window uses of the cluster: ``kubectl get --raw /metrics``, answering each scrape in turn."""

    def __init__(self, *scrapes: str) -> None:
        self.scrapes: Iterator[str] = iter(scrapes)

    def kubectl(self, *args: str) -> Any:
        assert args == ("get", "--raw", "/metrics")
        return type("Completed", (), {"stdout": next(self.scrapes)})()


def test_a_window_profiles_the_cpu_this_process_spent_and_the_requests_made() -> None:
    window = NodeWindow(cast(Any, FakeCluster(API_BEFORE, API_AFTER)), {os.getpid(): BENCH_PROCESS})
    with window:
        spent = time.process_time()
        while time.process_time() - spent < 0.2:
            pass
    profile = window.profile("20 at once", 20)
    assert profile.seconds >= 0.2
    assert profile.cpu[BENCH_PROCESS] >= 0.1  # /proc counts in ticks, and not quite in step with process_time
    assert profile.busy_cores > 0
    assert [(use.verb, use.resource, use.requests, round(use.mean_seconds, 3)) for use in profile.api] == [
        ("POST", "sandboxes", 20, 0.1)]

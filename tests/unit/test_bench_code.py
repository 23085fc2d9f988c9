"""The code benchmark: its SDK half run on the real agent and interpreter over local pipes, the table and its goal,
the flags, and the scripts it runs in llm-sandbox's interpreter (compiled here, and the report's path run for real)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from bench import bench_exec
from bench.bench_code import (
    BIG,
    CELL_P50,
    CELL_P95,
    FRESH,
    LLM,
    LLM_SANDBOX_SCRIPT,
    RATE,
    SDK,
    bench_sdk,
    format_table,
    goal_met,
    parse_args,
    ratio,
)
from bench.peer import PEER_PRELUDE, run_peer

from tests.unit import test_code
from tests.unit.test_sdk_transport import Opener, make_sandbox

# test_code's fixtures, asked for by name below: local agents, with the agent's environment here.
agent_env = test_code.agent_env
code_opener = test_code.code_opener

pytestmark = pytest.mark.timeout(120)


def test_the_sdk_half_runs_every_cell_and_checks_the_state_and_the_megabyte(code_opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(code_opener)
    try:
        metrics = bench_sdk(sandbox, parse_args(["--cells", "20", "--fresh-contexts", "2", "--big-runs", "2",
                                                 "--burst", "30"]))
    finally:
        sandbox.manager.close()
    assert set(metrics) == {CELL_P50, CELL_P95, FRESH, BIG, RATE}
    assert all(value is not None and value > 0 for value in metrics.values())
    assert metrics[CELL_P50] <= metrics[CELL_P95]  # type: ignore[operator]


def test_the_table_puts_the_peer_and_the_ratio_next_to_the_goal() -> None:
    results = {SDK: {CELL_P50: 4.0, CELL_P95: 6.0, RATE: 250.0},
               LLM: {CELL_P50: 400.0, CELL_P95: 600.0, RATE: 2.5, FRESH: 1500.0}}
    lines = format_table(results).splitlines()
    assert lines[0].split("  ")[0] == "metric" and "SDK / llm-sandbox" in lines[0]
    p50 = next(line for line in lines if "p50 (ms)" in line and "trivial" in line)
    assert "<= 15" in p50 and "4.0  met" in p50 and "400.0" in p50 and p50.endswith("0.010x")
    rate = next(line for line in lines if line.startswith("cells per second"))
    assert rate.endswith("100.00x")
    fresh = next(line for line in lines if line.startswith("fresh context"))
    assert fresh.split()[-3:] == ["-", "1500", "-"]  # no figure of ours: no ratio
    assert goal_met(results)


def test_a_slow_or_missing_cell_misses_the_goal() -> None:
    slow = {SDK: {CELL_P50: 15.5}}
    assert "15.5  MISSED" in format_table(slow) and not goal_met(slow)
    assert not goal_met({LLM: {CELL_P50: 1.0}})
    assert goal_met({SDK: {CELL_P50: 15.0}})


def test_ratios() -> None:
    assert (ratio(1.0, 2.0), ratio(1.0, 400.0), ratio(None, 1.0), ratio(1.0, None), ratio(1.0, 0.0)) == (
        "0.50x", "0.003x", "-", "-", "-")


@pytest.mark.parametrize(("argv", "complaint"), [
    (["--cells", "0"], "--cells must be at least 1"),
    (["--peer-burst", "0"], "--peer-burst must be at least 1"),
    (["--llm-sandbox-python", "/venv/bin/python"], "--llm-sandbox-python and --llm-sandbox-ipython go together"),
])
def test_bad_flags_are_refused_by_name(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert complaint in capsys.readouterr().err


def test_the_peer_scripts_compile_and_report_every_metric_of_the_table() -> None:
    for body in (LLM_SANDBOX_SCRIPT, bench_exec.LLM_SANDBOX_SCRIPT):
        compile(PEER_PRELUDE + body, "peer", "exec")
    assert all(f'out["{metric}"]' in LLM_SANDBOX_SCRIPT for metric in (CELL_P50, CELL_P95, FRESH, BIG, RATE))


def test_a_peer_script_reports_its_metrics_notes_and_failures(tmp_path: Path) -> None:
    # The prelude only reads the kubeconfig; nothing is contacted.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(textwrap.dedent("""
        apiVersion: v1
        kind: Config
        clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
        users: [{name: u, user: {token: t}}]
        contexts: [{name: c, context: {cluster: c, user: u}}]
        current-context: c
    """))
    body = textwrap.dedent("""
        manifest = pod_manifest({"PYTHONPATH": "/p"})
        assert manifest["spec"]["containers"][0]["env"] == [{"name": "PYTHONPATH", "value": "/p"}]
        report({"p50_ms": pct([1.0, 2.0, 3.0], 50) * int(sys.argv[4])}, {"big": "ReadError: cut"}, [namespace])
    """)
    metrics, notes = run_peer(sys.executable, body, str(kubeconfig), "peer-ns", "10")
    assert metrics == {"p50_ms": 20.0}
    assert notes == ["llm-sandbox: peer-ns", "llm-sandbox big: FAILED: ReadError: cut"]
    metrics, notes = run_peer(sys.executable, "raise SystemExit('no pod for you')", str(kubeconfig), "ns")
    assert metrics == {} and notes == ["llm-sandbox failed: no pod for you"]

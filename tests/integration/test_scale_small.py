"""The scale benchmark's small run (``python -m bench.bench_scale --count 100``) on kwok's simulated nodes:
correctness only, never timings. Every Sandbox of a burst and a paced stream becomes Ready with exactly one pod
and one NetworkPolicy, and the collector then deletes every one of them along with their children."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.bench_scale import Outcome, Plan, fake_node_room, run

from tests.kit import REPO_ROOT, Cluster, Kube, make_var

# 25 at once, then 75 at 20/s; due 20 s after Ready, checked every 2 s.
SMALL = Plan(count=100, rate=20, sustained_seconds=60, idle_seconds=20, gc_interval=2, timeout=180)
FAKE_NODES = "2"  # 600 pods' room (hack/kwok-up.sh gives each 300)
LOG_DIR = REPO_ROOT / "_out" / "integration"


@pytest.fixture(scope="module")
def fake_nodes(cluster: Cluster) -> Iterator[None]:
    """Fake nodes from hack/kwok-up.sh. Taken down afterwards unless some were up before, because other tests
    expect the cluster's one real node to be its only node."""
    kube = Kube(cluster)
    nodes_before, room = fake_node_room(kube)
    if room < SMALL.count:
        if Path(cluster.kubeconfig).resolve() != Path(make_var("kubeconfig")).resolve():
            pytest.skip("no room on fake nodes in the chosen cluster, and hack/kwok-up.sh serves only the local one")
        subprocess.run(["bash", str(REPO_ROOT / "hack" / "kwok-up.sh"), FAKE_NODES], check=True, timeout=600)
    yield
    if nodes_before == 0:
        subprocess.run(["bash", str(REPO_ROOT / "hack" / "kwok-down.sh")], check=True, timeout=300)


@pytest.fixture(scope="module")
def outcome(cluster: Cluster, fake_nodes: None) -> Outcome:
    return run(cluster, SMALL, LOG_DIR)


def test_every_sandbox_became_ready_with_one_pod_and_one_policy(outcome: Outcome) -> None:
    assert not outcome.times.failed, outcome.times.failed
    assert outcome.all_ready, sorted(set(outcome.names) - set(outcome.times.ready_seen))[:10]
    assert outcome.census is not None
    assert outcome.census.wrong(outcome.names) == []
    assert set(outcome.census.pods) == set(outcome.names), "pods of Sandboxes the run did not create"


def test_the_collector_deleted_every_sandbox_and_its_children(outcome: Outcome) -> None:
    assert outcome.all_gone, (sorted(set(outcome.names) - set(outcome.times.gone_seen))[:10], outcome.notes)
    assert outcome.leftover_children == (0, 0), "pods, NetworkPolicies left"

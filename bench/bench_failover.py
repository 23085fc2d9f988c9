"""Failover of the chart's highly available operator: the leader lost, how soon is a create served again?

    python -m bench.bench_failover [--kills 5] [--kubeconfig PATH]

Installs the chart from this checkout with its defaults (2 replicas, leader election through a Lease; the
operator image is built and imported first), then ``--kills`` times for each of two failures: waits for a
leader and a Ready standby, fails the leader, creates a Sandbox at once, and records the time from the failure
until the Sandbox's pod exists (the new leader served the create) and until it is Ready, and who took over. The
failures:

* ``SIGKILL``: every process of the leader's operator container killed. The kubelet restarts the container at
  once, and with the same identity it may take the Lease back without waiting for it to expire.
* ``frozen``: the leader's processes stopped (SIGSTOP: a hung process or a partitioned node; nothing renews the
  Lease and nothing restarts the container), so the standby must wait for the Lease to expire. Once the standby
  has served the create, the frozen processes are SIGKILLed (never resumed: they would act for a moment before
  noticing the lost Lease).

Prints a table with the median and the worst of each next to the goal (<= 15 s until creates are served
again), and the Lease timings that bound it.

Runs as root on the node of the project's cluster (it reads /proc to find the leader's processes); nothing but
the cluster's API server is contacted. The release is uninstalled afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client
from kubernetes.client import ApiException
from tests.kit import Cluster, default_kubeconfig, invocation, wait_until
from tests.kit.ha import leader_and_standby, operator_pids
from tests.kit.helm import Release, installed_release

from sandbox_operator import constants
from sandbox_operator.settings import OperatorSettings

GOAL_SECONDS = 15.0
SETTLE_TIMEOUT = 240.0


FAILURES = {"SIGKILL": signal.SIGKILL, "frozen": signal.SIGSTOP}


@dataclass
class Failover:
    failure: str
    killed_pod: str
    new_leader: str
    to_pod: float
    to_ready: float


def pod_exists(core: client.CoreV1Api, namespace: str, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def fail_leader_once(release: Release, failure: str, index: int) -> Failover:
    leader, _standby = wait_until(lambda: leader_and_standby(release), SETTLE_TIMEOUT, interval=1,
                                  message="a leader and a Ready standby")
    leader_name = leader["metadata"]["name"]
    pids = operator_pids(leader_name)
    if not pids:
        raise SystemExit(f"no process of {leader_name} in /proc: run as root on the cluster's node")
    name = f"failover-{failure.lower()}-{index}-{uuid.uuid4().hex[:4]}"
    body = {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": name, "namespace": release.sandbox_namespace}, "spec": {}}
    core = client.CoreV1Api(release.cluster.api)
    for pid in pids:
        os.kill(pid, FAILURES[failure])
    killed = time.monotonic()
    client.CustomObjectsApi(release.cluster.api).create_namespaced_custom_object(
        constants.GROUP, constants.VERSION, release.sandbox_namespace, constants.PLURAL, body)
    wait_until(lambda: pod_exists(core, release.sandbox_namespace, constants.pod_name(name)), SETTLE_TIMEOUT,
               interval=0.05, message=f"the pod of {name}")
    to_pod = time.monotonic() - killed
    release.wait_ready(name)
    to_ready = time.monotonic() - killed
    new_leader = release.lease_holder() or "?"
    if failure == "frozen":
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
    release.delete_sandbox(name)
    return Failover(failure, leader_name, new_leader, to_pod, to_ready)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="leader kills to measure (default 5)")
    parser.add_argument("--kubeconfig", type=Path, default=None,
                        help="default: $SANDBOX_KUBECONFIG, $KUBECONFIG, else the local cluster's")
    args = parser.parse_args(argv)

    print(f"$ {invocation()}")
    cluster = Cluster.connect(args.kubeconfig or default_kubeconfig())
    version = client.VersionApi(cluster.api).get_code().git_version
    defaults = OperatorSettings()
    print(f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, Kubernetes {version}, {os.cpu_count()} CPUs;"
          f" chart defaults: 2 replicas, Lease {defaults.lease_duration_seconds:g} s, renew deadline "
          f"{defaults.renew_deadline_seconds:g} s, retry {defaults.retry_period_seconds:g} s")
    results: list[Failover] = []
    with installed_release(cluster, "bench-failover") as release:
        for failure in FAILURES:
            for index in range(args.kills):
                result = fail_leader_once(release, failure, index)
                results.append(result)
                taker = "the same pod, restarted" if result.new_leader == result.killed_pod else "the standby"
                print(f"# {failure} {index + 1}: {result.killed_pod} -> {taker}: pod after {result.to_pod:.1f} s, "
                      f"Ready after {result.to_ready:.1f} s", flush=True)

    met = True
    print("\n| leader | taken over by | create served (pod exists): median / worst | Ready: median / worst "
          "| goal | met |")
    print("|---|---|---:|---:|---|---|")
    for failure in FAILURES:
        runs = [r for r in results if r.failure == failure]
        to_pod, to_ready = [r.to_pod for r in runs], [r.to_ready for r in runs]
        standby = sum(r.new_leader != r.killed_pod for r in runs)
        ok = max(to_pod) <= GOAL_SECONDS
        met = met and ok
        print(f"| {failure} | the standby {standby} of {len(runs)} times | {statistics.median(to_pod):.1f} / "
              f"{max(to_pod):.1f} s | {statistics.median(to_ready):.1f} / {max(to_ready):.1f} s "
              f"| <= {GOAL_SECONDS:g} s | {'yes' if ok else 'NO'} |")
    print(f"\nBound: a standby may take the Lease only once it has seen it unrenewed for its duration "
          f"({defaults.lease_duration_seconds} s), checking every {defaults.retry_period_seconds:g} s; then it starts "
          "kopf, which lists the Sandboxes before handling the create. A restarted container with the holder's "
          "identity renews at once.")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())

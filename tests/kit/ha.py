"""The chart's highly available operator: which pod leads, which waits, and the leader's processes on the node.

Shared by the HA, chaos and failover checks. Finding a pod's processes reads ``/proc/PID/environ`` of every host
process, so it works only as root on the node of the project's cluster, where a container's processes are host
processes (in a PID namespace of their own, but listed in the host's /proc).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sandbox_operator import constants
from tests.kit.helm import Release


def ready(pod: dict[str, Any]) -> bool:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return bool(statuses) and all(s.get("ready") for s in statuses) and not pod["metadata"].get("deletionTimestamp")


def restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in pod.get("status", {}).get("containerStatuses") or [])


def leader_and_standby(release: Release) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(leader pod, standby pod) once both are Ready and the Lease names one of them."""
    pods = [p for p in release.operator_pods() if not p["metadata"].get("deletionTimestamp")]
    holder = release.lease_holder()
    if len(pods) != 2 or not all(ready(p) for p in pods):
        return None
    leaders = [p for p in pods if p["metadata"]["name"] == holder]
    standbys = [p for p in pods if p["metadata"]["name"] != holder]
    return (leaders[0], standbys[0]) if len(leaders) == 1 else None


def operator_pids(pod_name: str) -> list[int]:
    """Host PIDs of the operator container of pod ``pod_name``, found by their environment: the chart sets
    POD_NAME from the downward API, which only the operator container has (HOSTNAME would also match the pod's
    pause container). Reading another process's environ needs root on the node."""
    environs: dict[int, set[bytes]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environs[int(entry.name)] = set((entry / "environ").read_bytes().split(b"\0"))
            except OSError:  # gone meanwhile, or not ours to read
                continue
    return [pid for pid, environ in environs.items() if f"POD_NAME={pod_name}".encode() in environ]


def controller_uid(obj: dict[str, Any]) -> str | None:
    """The UID of the Sandbox controlling ``obj``, if one does."""
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((o["uid"] for o in owners if o.get("controller") and o.get("kind") == constants.KIND), None)


def owned_by(objects: list[dict[str, Any]], uid: str) -> list[str]:
    """Names of the live objects the Sandbox ``uid`` controls."""
    return [o["metadata"]["name"] for o in objects
            if not o["metadata"].get("deletionTimestamp") and controller_uid(o) == uid]


METRICS_PORT = 9090  # the chart's metrics.port


def pod_metric(release: Release, pod: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` on the operator pod ``pod`` (by their label set, "" for none), read through
    the API server's pod proxy."""
    result = release.cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{release.namespace}/pods/{pod}:"
                                     f"{METRICS_PORT}/proxy/metrics", check=False)
    samples: dict[str, float] = {}
    for line in result.stdout.splitlines():
        metric, _, value = line.rpartition(" ")
        if metric == name or metric.startswith(name + "{"):
            samples[metric[len(name):]] = float(value)
    return samples


"""What a burst costs the node: CPU seconds by component, and API requests by kind with the server's latency.

CPU comes from /proc/PID/stat (utime + stime, plus cutime + cstime: the children a process reaped, such as the
CNI plugins containerd runs or the runc processes of a shim), grouped by command name; the machine is the test
cluster's node, so /proc is the node's. API figures come from the API server's own /metrics
(``apiserver_request_total`` and ``apiserver_request_duration_seconds``), so they count every client: the
operator, kopf, the kubelet, the scheduler and the benchmark itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LABEL = re.compile(r'(\w+)="([^"]*)"')
SAMPLE = re.compile(r"^(apiserver_request_total|apiserver_request_duration_seconds_sum)\{(.*)\} (\S+)$")

# Process names of the cluster's parts, as the kernel shows them (comm, at most 15 characters).
COMPONENTS = {
    "containerd": "containerd (CRI, snapshots; reaped: CNI plugins)",
    "containerd-shim": "containerd-shim (reaped: runc create/start)",
    "kube-router": "kube-router (NetworkPolicy sync; reaped: iptables, ipset)",
    "kube-apiserver": "kube-apiserver",
    "kubelet": "kubelet",
    "etcd": "etcd",
    "kube-scheduler": "kube-scheduler",
    "kube-controller": "kube-controller-manager",
    "pause": "runc init + pause (pod sandbox container)",
    "sandbox-init": "runc init + sandbox-init (sandbox container)",
}


@dataclass(frozen=True)
class ProcessTimes:
    name: str
    own_ticks: int
    reaped_ticks: int


def parse_stat(text: str) -> ProcessTimes:
    """One /proc/PID/stat line: the command name (which may hold spaces and parentheses) and the CPU ticks."""
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcessTimes(name, utime + stime, cutime + cstime)


def process_times(proc: Path = Path("/proc")) -> dict[int, ProcessTimes]:
    times: dict[int, ProcessTimes] = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                times[int(entry.name)] = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError):
                continue  # gone meanwhile
    return times


def cpu_by_component(before: Mapping[int, ProcessTimes], after: Mapping[int, ProcessTimes],
                     named: Mapping[int, str] | None = None) -> dict[str, float]:
    """CPU seconds spent between two snapshots, by component (``named`` PIDs under their given name, other
    processes under "other"). A process that started in between counts from zero; one that ended in between is
    counted by whoever reaped it."""
    seconds: dict[str, float] = {}
    for pid, now in after.items():
        then = before.get(pid)
        if then is not None and then.name != now.name:
            then = None  # the PID was reused, or the process exec'd (runc init became pause): count it all
        own = now.own_ticks - (then.own_ticks if then else 0)
        reaped = now.reaped_ticks - (then.reaped_ticks if then else 0)
        component = (named or {}).get(pid) or (now.name if now.name in COMPONENTS else "other")
        seconds[component] = seconds.get(component, 0.0) + max(0, own + reaped) / CLOCK_TICKS
    return seconds


@dataclass(frozen=True)
class RequestKind:
    verb: str
    resource: str
    subresource: str
    code: str


def parse_api_metrics(text: str) -> tuple[dict[RequestKind, float], dict[tuple[str, str, str], float]]:
    """Request counts by (verb, resource, subresource, code) and total server time by (verb, resource,
    subresource), from the API server's /metrics text. Watches are left out: their duration is their life."""
    counts: dict[RequestKind, float] = {}
    seconds: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match is None:
            continue
        labels = dict(LABEL.findall(match.group(2)))
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))
        if match.group(1) == "apiserver_request_total":
            kind = RequestKind(*key, labels.get("code", ""))
            counts[kind] = counts.get(kind, 0.0) + float(match.group(3))
        else:
            seconds[key] = seconds.get(key, 0.0) + float(match.group(3))
    return counts, seconds


@dataclass(frozen=True)
class ApiUse:
    verb: str
    resource: str
    code: str
    requests: int
    mean_seconds: float


def api_use(before: str, after: str, *, minimum: int = 1) -> list[ApiUse]:
    """The requests made between two /metrics scrapes, most frequent first, with the server's mean latency."""
    counts_before, seconds_before = parse_api_metrics(before)
    counts_after, seconds_after = parse_api_metrics(after)
    by_call: dict[tuple[str, str, str], float] = {}
    for kind, count in counts_after.items():
        by_call[(kind.verb, kind.resource, kind.subresource)] = by_call.get(
            (kind.verb, kind.resource, kind.subresource), 0.0) + count - counts_before.get(kind, 0.0)
    uses = []
    for kind, count in counts_after.items():
        made = int(count - counts_before.get(kind, 0.0))
        if made < minimum:
            continue
        key = (kind.verb, kind.resource, kind.subresource)
        total = by_call.get(key, 0.0)
        spent = seconds_after.get(key, 0.0) - seconds_before.get(key, 0.0)
        resource = f"{kind.resource}/{kind.subresource}" if kind.subresource else kind.resource
        uses.append(ApiUse(kind.verb, resource, kind.code, made, spent / total if total else 0.0))
    return sorted(uses, key=lambda use: (-use.requests, use.verb, use.resource))

"""The container runtimes the end-to-end suites run under: ``runc`` (the node's default, no RuntimeClass) and
``gvisor`` (the RuntimeClass ``gvisor``, docs/gvisor.md).

``SANDBOX_E2E_RUNTIMES`` (comma-separated, default ``runc,gvisor``) chooses them. A chosen runtime whose
RuntimeClass the cluster lacks fails its tests: it is never skipped quietly, so a cluster without gVisor needs
``SANDBOX_E2E_RUNTIMES=runc`` said out loud.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator.models.quantity import parse_quantity
from tests.kit.cluster import Cluster
from tests.kit.wait import wait_until

if TYPE_CHECKING:
    from sandbox_operator.sdk import Sandbox

RUNTIMES_VARIABLE = "SANDBOX_E2E_RUNTIMES"
EXTERNAL_OPERATOR_VARIABLE = "SANDBOX_E2E_EXTERNAL_OPERATOR"


@dataclass(frozen=True)
class Runtime:
    name: str                  # the test id: [runc], [gvisor]
    runtime_class: str | None  # None: the node's default runtime

    @property
    def kernel_boundary(self) -> bool:
        """Whether sandboxes run on a kernel of their own (the operator's kernel_boundary_runtime_classes)."""
        return self.runtime_class is not None

    def operator_settings(self) -> dict[str, str]:
        """What the operator serving a test namespace is told, so that every sandbox and pool pod there (the
        Sandboxes name no RuntimeClass) runs on this runtime."""
        return {"default_runtime_class": self.runtime_class} if self.runtime_class else {}

    def pod_fields(self) -> dict[str, Any]:
        """The fields a pod made without the operator needs to run on this runtime."""
        return {"runtimeClassName": self.runtime_class} if self.runtime_class else {}

    def __str__(self) -> str:
        return self.name


RUNC = Runtime("runc", None)
GVISOR = Runtime("gvisor", "gvisor")
RUNTIMES = {runtime.name: runtime for runtime in (RUNC, GVISOR)}


def selected_runtimes() -> list[Runtime]:
    """The runtimes ``SANDBOX_E2E_RUNTIMES`` names, in its order; all of them when it is unset."""
    raw = os.environ.get(RUNTIMES_VARIABLE, "")
    names = [name.strip() for name in raw.split(",") if name.strip()] or list(RUNTIMES)
    unknown = [name for name in names if name not in RUNTIMES]
    if unknown:
        raise ValueError(f"{RUNTIMES_VARIABLE}={raw!r}: unknown runtime {', '.join(unknown)}; "
                         f"choose from {', '.join(RUNTIMES)}")
    return [RUNTIMES[name] for name in dict.fromkeys(names)]


def runtime_problem(cluster: Cluster, runtime: Runtime) -> str | None:
    """Why the tests cannot run under ``runtime`` on this cluster, or None when they can."""
    if runtime.runtime_class is None:
        return None
    if os.environ.get(EXTERNAL_OPERATOR_VARIABLE):
        return (f"{EXTERNAL_OPERATOR_VARIABLE} is set: the running operator's default runtime class is its own and "
                f"cannot be set per test; set {RUNTIMES_VARIABLE} to the one runtime it uses")
    try:
        client.NodeV1Api(cluster.api).read_runtime_class(runtime.runtime_class)
    except ApiException as error:
        if error.status != 404:
            raise
        return (f"the cluster has no RuntimeClass {runtime.runtime_class} (brought up with SANDBOX_GVISOR=0, "
                f"containerd 1, or another cluster): set {RUNTIMES_VARIABLE}=runc to run without it")
    return None


def pod_overhead(pod: dict[str, Any]) -> tuple[Decimal, int]:
    """CPU (cores) and memory (bytes) the pod's RuntimeClass adds to it (``spec.overhead``): both 0 under runc.
    Under gVisor the sandbox is the pod's cgroup, so the limits it shows inside are the pod's: the container's
    plus this."""
    overhead = pod["spec"].get("overhead") or {}
    return parse_quantity(overhead.get("cpu", "0")), int(parse_quantity(overhead.get("memory", "0")))


# How the operator reports a gVisor sandbox that the host's OOM killer ended: OOMKilled when containerd saw the
# cgroup's OOM event for the container, else the exit of its killed main process.
GVISOR_OOM_REASONS = ("OOMKilled", "ProcessExited")


def wait_ended_by_memory(sandbox: Sandbox, timeout: float = 120) -> dict[str, Any]:
    """The Sandbox's status once the operator reports it Failed for a memory overrun. Under gVisor the whole
    sandbox ends: the application's memory is the Sentry's, so the host's OOM killer kills the Sentry or one of its
    stub processes, and a killed stub takes the Sentry with it (docs/gvisor.md)."""

    def failed() -> dict[str, Any] | None:
        status: dict[str, Any] = sandbox.refresh().status
        return status if status.get("phase") == "Failed" else None

    status = wait_until(failed, timeout, interval=1,
                        message=lambda: f"Sandbox {sandbox.name} Failed: {sandbox.refresh().status}")
    assert status.get("reason") in GVISOR_OOM_REASONS, status
    return status

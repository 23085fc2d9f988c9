"""The one test kit of the integration tests, the end-to-end tests, the static checks and the benchmarks.

    from tests.kit import Cluster, Kube, start_operator, wait_until

* waiting: :func:`wait_until` and :func:`consistently` (what to poll, how long, then ``message=``/``interval=``);
* the operator as a local process that is ready once its ``/healthz`` answers: :func:`start_operator`,
  :func:`running_operator`; a fresh namespace served by it: :func:`served_namespace`, and for the end-to-end
  tests :func:`operator_namespace`;
* the cluster (:class:`Cluster`: kubeconfig, API client, its own kubectl and helm, namespaces for one test),
  Sandboxes, SandboxPools and their children (:class:`Kube`), watches that record what they see
  (:class:`WatchThread`, :class:`PhaseRecorder`, :class:`CreationTimes`), ``sandboxctl`` (:class:`Sandboxctl`), a
  Helm release (``tests.kit.helm``), Dockerfiles (``tests.kit.dockerfile``);
* the runtimes the end-to-end suites run under, runc and gVisor (:class:`Runtime`, ``tests.kit.runtimes``);
* small things: :func:`free_port`, :func:`http_get`, :func:`percentile`, :func:`proc_status_kib`, the values of
  the Makefile and hack/lib.sh (:func:`make_var`, :func:`hack_var`), the command line a benchmark ran as
  (:func:`invocation`).

Benchmarks import it as ``tests.kit``: they run from the repository root as ``python -m bench.NAME``. Nothing here
imports pytest. The unit tests' in-memory API server is ``tests/unit/fake_kube.py``.
"""

from tests.kit.cli import Sandboxctl
from tests.kit.cluster import Cluster, configured_kubeconfig, default_kubeconfig, kubectl_binary
from tests.kit.environment import (
    READY_TIMEOUT,
    SMALL_SPEC,
    ServedNamespace,
    namespace_fixture,
    operator_namespace,
    served_namespace,
)
from tests.kit.kube import Heartbeat, Kube, or_none_if_missing, pool_manifest, sandbox_manifest
from tests.kit.net import free_port, http_get
from tests.kit.operator_process import OperatorProcess, running_operator, start_operator
from tests.kit.repo import REPO_ROOT, hack_var, hack_vars, invocation, make_var
from tests.kit.runtimes import GVISOR, RUNC, Runtime, pod_overhead, wait_ended_by_memory
from tests.kit.stats import percentile, proc_status_kib
from tests.kit.wait import WaitTimeoutError, consistently, wait_until
from tests.kit.watch import CreationTimes, PhaseRecorder, WatchThread

__all__ = [
    "GVISOR",
    "READY_TIMEOUT",
    "REPO_ROOT",
    "RUNC",
    "SMALL_SPEC",
    "Cluster",
    "CreationTimes",
    "Heartbeat",
    "Kube",
    "OperatorProcess",
    "PhaseRecorder",
    "Runtime",
    "Sandboxctl",
    "ServedNamespace",
    "WaitTimeoutError",
    "WatchThread",
    "configured_kubeconfig",
    "consistently",
    "default_kubeconfig",
    "free_port",
    "hack_var",
    "hack_vars",
    "http_get",
    "invocation",
    "kubectl_binary",
    "make_var",
    "namespace_fixture",
    "operator_namespace",
    "or_none_if_missing",
    "percentile",
    "pod_overhead",
    "pool_manifest",
    "proc_status_kib",
    "running_operator",
    "sandbox_manifest",
    "served_namespace",
    "start_operator",
    "wait_ended_by_memory",
    "wait_until",
]

"""A fresh namespace served by the operator from this checkout: for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.kit.cluster import Cluster
from tests.kit.kube import Kube
from tests.kit.operator_process import OperatorProcess, start_operator
from tests.kit.runtimes import Runtime

E2E_GC_INTERVAL = "2"
# Small requests, so that the e2e sandboxes fit on the one test node next to other suites' sandboxes.
SMALL_SPEC = {"resources": {"cpu": "250m", "memory": "256Mi"}}
READY_TIMEOUT = 240


@dataclass(frozen=True)
class ServedNamespace:
    name: str
    operator: OperatorProcess | None  # None when an operator that already runs serves it


@contextlib.contextmanager
def served_namespace(cluster: Cluster, prefix: str, log_dir: Path, *, start: bool = True,
                     **settings: str) -> Iterator[ServedNamespace]:
    """The CRD applied, a fresh namespace under Pod Security "restricted", and (with ``start``) the operator from
    this checkout watching it (``settings``: operator settings by name; its log in ``log_dir``). Afterwards every
    Sandbox is deleted while the operator still runs, then the operator stops and the namespace goes."""
    cluster.apply_crd()
    namespace = cluster.create_namespace(prefix)
    operator: OperatorProcess | None = None
    try:
        if start:
            operator = start_operator(cluster.kubeconfig, namespace, log_dir / f"operator-{namespace}.log",
                                      **settings)
        yield ServedNamespace(namespace, operator)
    finally:
        try:
            Kube(cluster).drop_namespace(namespace, operator_running=operator is None or operator.running)
        finally:
            if operator is not None:
                operator.stop()


@contextlib.contextmanager
def operator_namespace(cluster: Cluster, prefix: str, log_dir: Path, **settings: str) -> Iterator[str]:
    """:func:`served_namespace` for the end-to-end tests: a 2-second collection pass unless ``settings`` say
    otherwise; with SANDBOX_E2E_EXTERNAL_OPERATOR=1 an operator that already runs (and watches every namespace)
    serves it instead. Yields the namespace's name."""
    external = bool(os.environ.get("SANDBOX_E2E_EXTERNAL_OPERATOR"))
    with served_namespace(cluster, prefix, log_dir, start=not external,
                          **{"gc_interval_seconds": E2E_GC_INTERVAL, **settings}) as served:
        yield served.name


def namespace_fixture(prefix: str, *, per_runtime: bool = False) -> Any:
    """A module-scoped ``namespace`` fixture: one :func:`operator_namespace` for every test of the module. With
    ``per_runtime`` it takes the e2e ``runtime`` fixture (tests/e2e/conftest.py): one namespace per runtime, whose
    operator runs every sandbox there on it, and every test of the module runs once per runtime.

    In a test module: ``namespace = namespace_fixture("sdk-e2e", per_runtime=True)``."""

    if per_runtime:
        @pytest.fixture(scope="module")
        def namespace(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, runtime: Runtime) -> Iterator[str]:
            with operator_namespace(cluster, prefix, tmp_path_factory.mktemp("logs"),
                                    **runtime.operator_settings()) as name:
                yield name
    else:
        @pytest.fixture(scope="module")
        def namespace(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
            with operator_namespace(cluster, prefix, tmp_path_factory.mktemp("logs")) as name:
                yield name

    return namespace

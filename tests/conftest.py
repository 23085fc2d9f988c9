"""Shared fixtures. Tests that need a cluster carry the `cluster` marker and use the `cluster` fixture.

The cluster is whatever `SANDBOX_KUBECONFIG` (or `KUBECONFIG`) points at; with neither set, the project's own
local cluster is brought up by `make cluster-up` when it is not running.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client, config

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    api: client.ApiClient
    bin_dir: Path

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs the cluster's own kubectl against this cluster."""
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check, capture_output=True, text=True, input=input, timeout=timeout,
        )


def _make_var(name: str) -> str:
    out = subprocess.run(["make", "-s", "--no-print-directory", name], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    explicit = os.environ.get("SANDBOX_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if explicit:
        kubeconfig = Path(explicit)
    else:
        subprocess.run(["make", "-s", "--no-print-directory", "cluster-up"], cwd=REPO_ROOT, check=True)
        kubeconfig = Path(_make_var("kubeconfig"))
    bin_dir = Path(_make_var("bin-dir"))
    api = config.new_client_from_config(config_file=str(kubeconfig))
    yield Cluster(kubeconfig=kubeconfig, api=api, bin_dir=bin_dir)
    api.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/unit are `unit`; integration and e2e tests need the cluster; disruptive ones go last."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "unit" in parts:
            item.add_marker(pytest.mark.unit)
        elif "integration" in parts:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.cluster)
        elif "e2e" in parts:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.cluster)

"""Shared fixtures and the test tiers.

Tiers, by directory: ``tests/unit`` (marker ``unit``: pure, no binaries beyond Python, seconds), ``tests/static``
(``static``: checks of the chart, the images and the scripts with helm, checkov, gcc, shellcheck and ruff),
``tests/integration`` and ``tests/e2e`` (``integration``/``e2e``, both ``cluster``). Tests that need a cluster
use the ``cluster`` fixture: whatever ``SANDBOX_KUBECONFIG`` (or ``KUBECONFIG``) points at; with neither set,
the project's own local cluster, brought up by ``make cluster-up`` when it is not running. The helpers they
share are in ``tests/kit``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit import REPO_ROOT, Cluster, configured_kubeconfig, make_var

TIER_MARKERS = {"unit": ("unit",), "static": ("static",), "integration": ("integration", "cluster"),
                "e2e": ("e2e", "cluster")}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    kubeconfig = configured_kubeconfig()
    if kubeconfig is None:
        subprocess.run(["make", "-s", "--no-print-directory", "cluster-up"], cwd=REPO_ROOT, check=True)
        kubeconfig = Path(make_var("kubeconfig"))
    connected = Cluster.connect(kubeconfig)
    yield connected
    connected.api.close()  # type: ignore[no-untyped-call]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test gets its tier's markers (from its directory under tests/); disruptive ones go last."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)
    for item in items:
        tier = Path(str(item.fspath)).relative_to(REPO_ROOT / "tests").parts[0]
        for marker in TIER_MARKERS.get(tier, ()):
            item.add_marker(marker)

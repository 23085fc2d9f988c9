"""Fixtures of the operator's integration tests: the CRD, the sandbox image, and a per-test environment (a
namespace under Pod Security "restricted" plus operators started by the test)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import pytest

from sandbox_operator import constants
from tests.conftest import REPO_ROOT, Cluster
from tests.integration.operator_harness import (
    Kube,
    Operator,
    drop_namespace,
    make_namespace,
    node_images,
    start_operator,
)

TEST_GC_INTERVAL = "2"


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    return Kube(cluster)


@pytest.fixture(scope="session")
def sandbox_crd(cluster: Cluster) -> None:
    """Applies the committed CRD (which must be accepted by the real API server) and waits until served."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                    str(REPO_ROOT / "crds" / f"{constants.CRD_NAME}.yaml"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{constants.CRD_NAME}")


@pytest.fixture(scope="session")
def sandbox_image(cluster: Cluster) -> str:
    """The project's sandbox image, which must already be on the node (nothing is ever pulled)."""
    images = node_images(cluster)
    assert constants.SANDBOX_IMAGE in images, (
        f"{constants.SANDBOX_IMAGE} is not on the node (build and load it with `make images`); node has {images}")
    return constants.SANDBOX_IMAGE


@dataclass
class SandboxEnv:
    cluster: Cluster
    kube: Kube
    namespace: str
    image: str
    operators: list[Operator] = field(default_factory=list)

    def start(self, **settings: str) -> Operator:
        settings.setdefault("gc_interval_seconds", TEST_GC_INTERVAL)
        operator = start_operator(self.cluster, self.namespace, images=[self.image],
                                  name=f"op{len(self.operators)}", **settings)
        self.operators.append(operator)
        return operator

    @property
    def live_operator(self) -> Operator | None:
        return next((op for op in reversed(self.operators) if op.proc.poll() is None), None)


@pytest.fixture
def sbx_env(cluster: Cluster, kube: Kube, sandbox_crd: None, sandbox_image: str,
            request: pytest.FixtureRequest) -> Iterator[SandboxEnv]:
    env = SandboxEnv(cluster, kube, make_namespace(cluster), sandbox_image)
    yield env
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for operator in env.operators:
            print(f"--- operator log {operator.log_path} ---\n{operator.log()[-6000:]}")
    try:
        drop_namespace(cluster, kube, env.namespace, env.live_operator)
    finally:
        for operator in env.operators:
            operator.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report

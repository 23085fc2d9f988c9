"""Fixtures of the operator's integration tests: the CRD, the sandbox image, and a per-test environment (a
namespace under Pod Security "restricted" plus the operators the test starts in it)."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import pytest

from sandbox_operator import constants
from tests.kit import REPO_ROOT, Cluster, Kube, OperatorProcess, start_operator

TEST_GC_INTERVAL = "2"
LOG_DIR = REPO_ROOT / "_out" / "integration"


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Kube:
    return Kube(cluster)


@pytest.fixture(scope="session")
def sandbox_crd(cluster: Cluster) -> None:
    """The committed CRD, which the real API server must accept, applied and served."""
    cluster.apply_crd()


@pytest.fixture(scope="session")
def sandbox_image(cluster: Cluster) -> str:
    """The project's sandbox image, which must already be on the node (nothing is ever pulled)."""
    images = cluster.node_images()
    assert constants.SANDBOX_IMAGE in images, (
        f"{constants.SANDBOX_IMAGE} is not on the node (build and load it with `make image`); node has {images}")
    return constants.SANDBOX_IMAGE


@dataclass
class SandboxEnv:
    cluster: Cluster
    kube: Kube
    namespace: str
    image: str
    operators: list[OperatorProcess] = field(default_factory=list)

    def start(self, **settings: str) -> OperatorProcess:
        """An operator for this namespace (``settings`` by name); the collector runs every 2 s unless set."""
        log_path = LOG_DIR / f"{self.namespace}-op{len(self.operators)}.log"
        operator = start_operator(self.cluster.kubeconfig, self.namespace, log_path, images=[self.image],
                                  **{"gc_interval_seconds": TEST_GC_INTERVAL, **settings})
        self.operators.append(operator)
        return operator

    @property
    def operator_running(self) -> bool:
        return any(operator.running for operator in self.operators)


@pytest.fixture
def sbx_env(cluster: Cluster, kube: Kube, sandbox_crd: None, sandbox_image: str,
            request: pytest.FixtureRequest) -> Iterator[SandboxEnv]:
    env = SandboxEnv(cluster, kube, cluster.create_namespace("sbxit"), sandbox_image)
    yield env
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for operator in env.operators:
            print(f"--- operator log {operator.log_path} ---\n{operator.log()[-6000:]}")
    try:
        kube.drop_namespace(env.namespace, operator_running=env.operator_running)
    finally:
        for operator in env.operators:
            operator.stop()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item,
                               call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report

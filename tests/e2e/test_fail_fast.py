"""A Sandbox created where no operator serves: the SDK and ``sandboxctl create`` say so within seconds.

The operator from this checkout serves one fresh namespace and publishes that on the Sandbox CRD; a second fresh
namespace is served by nobody. Creating a sandbox there must fail in at most 10 s with NamespaceNotServed, whose
message names the namespace and the served ones, and must leave no Sandbox behind.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator

import pytest

from sandbox_operator import constants
from sandbox_operator.registry import fresh_entries
from sandbox_operator.sdk import NamespaceNotServed, SandboxManager
from tests.kit import SMALL_SPEC, Cluster, Kube, Sandboxctl, operator_namespace, wait_until

FAIL_FAST_SECONDS = 10.0
EXIT_NOT_READY = 4


def registry(cluster: Cluster) -> dict[str, str]:
    crd = cluster.kubectl_json("get", "crd", constants.CRD_NAME)
    return dict(crd["metadata"].get("annotations") or {})


def serving(cluster: Cluster, namespace: str) -> bool:
    now = datetime.datetime.now(datetime.UTC)
    return any(entry.serves(namespace) for entry in fresh_entries(registry(cluster), now).values())


@pytest.fixture(scope="module")
def served(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with operator_namespace(cluster, "failfast-served", tmp_path_factory.mktemp("logs")) as namespace:
        wait_until(lambda: serving(cluster, namespace), 60,
                   message=f"an operator entry serving {namespace} on {constants.CRD_NAME}")
        yield namespace


@pytest.fixture
def unserved(cluster: Cluster, served: str) -> Iterator[str]:
    namespace = cluster.create_namespace("failfast-unserved")
    try:
        if serving(cluster, namespace):
            raise AssertionError(f"an operator watching every namespace runs on this cluster, so {namespace} is "
                                 "served: stop it (or wait for its registry entry to go stale) and run again")
        yield namespace
    finally:
        Kube(cluster).drop_namespace(namespace, operator_running=False)


def no_sandboxes_left(cluster: Cluster, namespace: str) -> None:
    wait_until(lambda: not Kube(cluster).sandboxes(namespace), 10,
               message=f"no Sandbox left in {namespace}")


def test_the_sdk_fails_fast_naming_the_served_namespaces(cluster: Cluster, served: str, unserved: str) -> None:
    with SandboxManager(unserved, kubeconfig=str(cluster.kubeconfig)) as manager:
        started = time.monotonic()
        with pytest.raises(NamespaceNotServed) as info:
            manager.create(spec=SMALL_SPEC)
        elapsed = time.monotonic() - started
    assert elapsed <= FAIL_FAST_SECONDS, f"took {elapsed:.1f}s"
    error = info.value
    assert error.namespace == unserved and error.reason == "NoOperator"
    assert repr(unserved) in str(error) and served in str(error), str(error)
    assert served in error.served
    no_sandboxes_left(cluster, unserved)


def test_sandboxctl_create_fails_fast_naming_the_served_namespaces(cluster: Cluster, served: str,
                                                                   unserved: str) -> None:
    ctl = Sandboxctl(cluster.kubeconfig, unserved)
    started = time.monotonic()
    result = ctl("create", "--cpu", "250m", "--memory", "256Mi", check=False, timeout=60)
    elapsed = time.monotonic() - started
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == EXIT_NOT_READY, stderr
    assert elapsed <= FAIL_FAST_SECONDS, f"took {elapsed:.1f}s: {stderr}"
    assert repr(unserved) in stderr and served in stderr and "NoOperator" in stderr, stderr
    assert result.stdout == b""
    no_sandboxes_left(cluster, unserved)


def test_the_served_namespace_still_gets_ready_sandboxes(cluster: Cluster, served: str) -> None:
    """The check must not get in the way where an operator serves: create() waits for Ready as before."""
    with SandboxManager(served, kubeconfig=str(cluster.kubeconfig)) as manager, \
            manager.create(spec=SMALL_SPEC, timeout=240) as sandbox:
        assert sandbox.phase == "Ready"

"""The chart with `clusterWide: true` on the real cluster: one ClusterRole instead of Roles, and the in-cluster
operator still brings a Sandbox to Ready and cleans up after it: the chart is cluster-wide or per-namespace by
one value.

Other suites run their own operators in namespaces of their own at the same time, so this operator is scoped
with `watchPatterns` to its own sandbox namespace: cluster-wide RBAC, but it reconciles nothing of theirs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kit import Cluster, wait_until
from tests.kit.helm import Release, installed_release

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    with installed_release(
            cluster, "e2e-helmcw",
            "--set", "clusterWide=true",
            "--set-json", "watchPatterns=[\"{release.sandbox_namespace}\"]") as rel:
        yield rel


def test_cluster_wide_rbac_is_a_cluster_role(release: Release) -> None:
    roles = release.cluster.kubectl("get", "roles", "-A", "-l", f"app.kubernetes.io/instance={release.name}",
                                    "-o", "name").stdout.split()
    # Only the leader-election Role, for the Lease in the release's own namespace.
    assert roles == [f"role.rbac.authorization.k8s.io/{release.fullname}-leader-election"]
    cluster_role = release.kubectl_json("get", "clusterrole", release.fullname)
    resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert {"pods", "sandboxes", "networkpolicies", "namespaces"} <= resources
    sa = release.operator_sa
    for namespace in (release.sandbox_namespace, "default"):  # cluster-wide: any namespace
        assert release.can_i("create", "pods", namespace, sa)
        assert not release.can_i("create", "pods", namespace, sa, subresource="exec")
        assert not release.can_i("get", "secrets", namespace, sa)


def test_cluster_wide_operator_brings_a_sandbox_to_ready(release: Release) -> None:
    # The leader's start-up line (a standby waits for the Lease before it starts kopf).
    wait_until(lambda: f"namespaces={release.sandbox_namespace}," in release.operator_log(), 60, interval=1,
               message="the operator's startup line")
    release.create_sandbox("hello")
    sandbox = release.wait_ready("hello")
    assert sandbox["status"]["phase"] == "Ready"
    release.delete_sandbox("hello")
    assert "Not enough permissions" not in release.operator_log()

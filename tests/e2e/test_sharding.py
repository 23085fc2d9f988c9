"""Sharding by namespace (docs/chart.md, "Sharding: several releases"): two releases of the chart side by side,
each with its own release name and namespace, its own sandbox namespace and its own half of the default UID
range. Both install (no cluster-scoped name clashes: Helm would refuse to adopt the other's objects), each
serves its own Sandboxes and never sees the other's, neither's RBAC reaches the other's namespaces, and the
registry on the Sandbox CRD lists both operators with their namespaces.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest

from sandbox_operator import constants
from sandbox_operator.registry import fresh_entries, registry_key
from tests.kit import Cluster, wait_until
from tests.kit.ha import pod_metric
from tests.kit.helm import Release, installed_release

# Disjoint halves of the default range, which the sandbox image's /etc/passwd names.
UID_RANGES = {"a": (1000000000, 1000032767), "b": (1000032768, 1000065535)}

pytestmark = pytest.mark.timeout(1800)

Shards = tuple[Release, Release]


@pytest.fixture(scope="module")
def shards(cluster: Cluster) -> Iterator[Shards]:
    first, last = UID_RANGES["a"]
    with installed_release(cluster, "e2e-shard-a", "--set", f"config.sandboxUidRange={first}-{last}") as a:
        first, last = UID_RANGES["b"]
        with installed_release(cluster, "e2e-shard-b", "--set", f"config.sandboxUidRange={first}-{last}") as b:
            yield a, b


def sandbox_name(release: Release) -> str:
    """A name that appears nowhere but in this release's Sandbox (so a log mentioning it is unambiguous)."""
    return f"only-{release.name}"


def known_sandboxes(release: Release) -> dict[str, float]:
    """Sandboxes each operator pod knows (its ``sandbox_operator_sandboxes`` gauge, summed over phases)."""
    pods = [p["metadata"]["name"] for p in release.operator_pods()]
    return {pod: sum(pod_metric(release, pod, "sandbox_operator_sandboxes").values()) for pod in pods}


def test_both_releases_installed_without_shared_objects(shards: Shards) -> None:
    a, b = shards
    kubectl = a.cluster.kubectl
    names = {}
    for release in shards:
        selector = f"app.kubernetes.io/instance={release.name}"
        names[release.name] = set(kubectl("get", "clusterroles,clusterrolebindings,validatingadmissionpolicies,"
                                          "validatingadmissionpolicybindings", "-l", selector,
                                          "-o", "name").stdout.split())
        assert names[release.name], release.name
        # Each elects its own leader, in its own namespace, among its own pods.
        holder = wait_until(release.lease_holder, 120, interval=1, message=f"the Lease of {release.name}")
        assert holder in {p["metadata"]["name"] for p in release.operator_pods()}
    assert not names[a.name] & names[b.name]


def test_each_release_serves_only_its_own_namespace(shards: Shards) -> None:
    for release in shards:
        release.create_sandbox(sandbox_name(release))
    for release, uids in zip(shards, UID_RANGES.values(), strict=True):
        sandbox = release.wait_ready(sandbox_name(release))
        pod = release.kubectl_json("-n", release.sandbox_namespace, "get", "pod", sandbox["status"]["podName"])
        assert uids[0] <= pod["spec"]["securityContext"]["runAsUser"] <= uids[1]  # its own UID range
    # Each operator knows exactly one Sandbox, its own (the other's is Ready too, but not in its gauge); its
    # standby knows none.
    for release in shards:
        holder = release.lease_holder()
        assert known_sandboxes(release) == {p["metadata"]["name"]: 1.0 if p["metadata"]["name"] == holder else 0.0
                                            for p in release.operator_pods()}
    for release in shards:
        release.delete_sandbox(sandbox_name(release))


def test_each_operator_may_not_touch_the_others_namespaces(shards: Shards) -> None:
    lease = "leases.coordination.k8s.io"
    for release, other in (shards, shards[::-1]):
        sa = release.operator_sa
        assert release.can_i("create", "pods", release.sandbox_namespace, sa)
        for verb in ("list", "patch", "delete"):
            assert not release.can_i(verb, "sandboxes.sandbox-operator.io", other.sandbox_namespace, sa), verb
        for verb in ("create", "delete", "list"):
            assert not release.can_i(verb, "pods", other.sandbox_namespace, sa), verb
        assert not release.can_i("create", "networkpolicies.networking.k8s.io", other.sandbox_namespace, sa)
        # Its own Lease only: not the other's (nor anything in the other's release namespace).
        assert release.can_i("update", f"{lease}/{release.fullname}", release.namespace, sa)
        assert not release.can_i("update", f"{lease}/{other.fullname}", other.namespace, sa)
        assert not release.can_i("create", lease, other.namespace, sa)


def test_the_crd_registry_lists_both_operators_with_their_namespaces(shards: Shards) -> None:
    a, _b = shards

    def entries() -> dict[str, list[str]] | None:
        crd = a.kubectl_json("get", "crd", constants.CRD_NAME)
        fresh = fresh_entries(crd["metadata"].get("annotations"), datetime.datetime.now(datetime.UTC))
        found = {key: list(entry.namespaces) for key, entry in fresh.items()}
        keys = [registry_key(release.namespace, release.fullname) for release in shards]
        return found if all(key in found for key in keys) else None

    found = wait_until(entries, 90, interval=2, message="both operators' entries on the Sandbox CRD")
    for release in shards:
        assert found[registry_key(release.namespace, release.fullname)] == [release.sandbox_namespace], found

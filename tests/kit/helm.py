"""The Helm chart from this checkout, installed as a release with names of its own, and removed with
everything it made."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from sandbox_operator import constants
from tests.kit.cluster import Cluster
from tests.kit.repo import REPO_ROOT
from tests.kit.wait import wait_until

CHART = REPO_ROOT / "charts" / "sandbox-operator"
SAMPLE = REPO_ROOT / "samples" / "sandbox.yaml"
READY_TIMEOUT = 240.0


@dataclass
class Release:
    cluster: Cluster
    name: str
    namespace: str          # the release's (operator's) namespace
    sandbox_namespace: str  # created by the chart, watched by the operator
    client_sa: str          # bound to the client ClusterRole through clientRole.subjects

    @property
    def fullname(self) -> str:
        return f"{self.name}-sandbox-operator"

    @property
    def operator_sa(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.cluster.helm(*args, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return self.cluster.kubectl_json(*args)

    def operator_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl_json("-n", self.namespace, "get", "pods", "-l",
                                 f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator")
        return list(pods["items"])

    def lease_holder(self) -> str | None:
        """The pod holding the release's leader-election Lease (named like the Deployment); None without one."""
        result = self.cluster.kubectl("-n", self.namespace, "get", "lease", self.fullname, "--ignore-not-found",
                                      "-o", "jsonpath={.spec.holderIdentity}", check=False)
        return result.stdout.strip() or None

    def running_operator(self) -> dict[str, Any] | None:
        """The working operator pod when it is running, ready and not being deleted: the Lease holder's pod with
        leader election, the one pod without."""
        pods = [p for p in self.operator_pods() if not p["metadata"].get("deletionTimestamp")]
        holder = self.lease_holder()
        if holder is not None:
            pods = [p for p in pods if p["metadata"]["name"] == holder]
        if len(pods) != 1:
            return None
        statuses = pods[0].get("status", {}).get("containerStatuses") or []
        return pods[0] if statuses and all(s.get("ready") for s in statuses) else None

    def operator_log(self, pod: str | None = None) -> str:
        """The log of ``pod``, else of the Lease holder (a standby logs little), else of one of the pods."""
        source = pod or self.lease_holder()
        result = self.cluster.kubectl("-n", self.namespace, "logs", source or f"deployment/{self.fullname}",
                                      "--tail=200", check=False)
        return result.stdout + result.stderr

    def can_i(self, verb: str, resource: str, namespace: str, user: str, subresource: str = "") -> bool:
        args = ["auth", "can-i", verb, resource, "-n", namespace, "--as", user]
        if subresource:
            args += ["--subresource", subresource]
        result = self.cluster.kubectl(*args, check=False)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), result.stderr
        return answer == "yes"

    def create_sandbox(self, name: str) -> None:
        body = yaml.safe_load(SAMPLE.read_text())
        body["metadata"] = {"name": name, "namespace": self.sandbox_namespace}
        body["spec"].pop("timeouts", None)  # take the operator's configured defaults
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))

    def wait_ready(self, name: str) -> dict[str, Any]:
        result = self.cluster.kubectl("-n", self.sandbox_namespace, "wait", "--for=condition=Ready",
                                      f"sandbox/{name}", f"--timeout={READY_TIMEOUT:.0f}s",
                                      check=False, timeout=READY_TIMEOUT + 30)
        if result.returncode != 0:
            sandbox = self.cluster.kubectl("-n", self.sandbox_namespace, "get", "sandbox", name, "-o", "yaml",
                                           check=False).stdout
            raise AssertionError(f"Sandbox {name} not Ready: {result.stderr}\n{sandbox}\n"
                                 f"--- operator log ---\n{self.operator_log()[-4000:]}")
        return dict(self.kubectl_json("-n", self.sandbox_namespace, "get", "sandbox", name))

    def wait_pool_ready(self, pool: str, ready: int = 1) -> dict[str, Any]:
        """The SandboxPool ``pool`` of the sandbox namespace once it has ``ready`` pods to claim."""
        resource = f"{constants.POOL_PLURAL}.{constants.GROUP}"

        def status() -> dict[str, Any]:
            return dict(self.kubectl_json("-n", self.sandbox_namespace, "get", resource, pool).get("status") or {})

        wait_until(lambda: status().get("readyCount") == ready, READY_TIMEOUT, interval=1,
                   message=lambda: f"pool {pool} with readyCount {ready}: {status()}\n{self.operator_log()[-3000:]}")
        return dict(self.kubectl_json("-n", self.sandbox_namespace, "get", resource, pool))

    def claim(self, name: str, pool: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A Sandbox ``name`` with ``poolRef: pool``, Ready, and the pod it took: the pool's (not a cold start),
        controlled by the Sandbox alone."""
        body = {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
                "metadata": {"name": name, "namespace": self.sandbox_namespace}, "spec": {"poolRef": {"name": pool}}}
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(body))
        sandbox = self.wait_ready(name)
        pod_name = sandbox["status"]["podName"]
        assert pod_name.startswith(constants.pool_pod_generate_name(pool)), pod_name  # the pool's, not a cold one
        pod = dict(self.kubectl_json("-n", self.sandbox_namespace, "get", "pod", pod_name))
        assert sandbox["status"]["podUID"] == pod["metadata"]["uid"]
        controllers = [o for o in pod["metadata"]["ownerReferences"] if o.get("controller")]
        assert [(o["kind"], o["uid"]) for o in controllers] == [(constants.KIND, sandbox["metadata"]["uid"])]
        return sandbox, pod

    def delete_sandbox(self, name: str) -> None:
        self.cluster.kubectl("-n", self.sandbox_namespace, "delete", "sandbox", name, "--wait=true",
                             "--timeout=120s", timeout=150)


def helm_install(release: Release, *values: str) -> None:
    """`helm install --wait` of the chart from this checkout, with `--set`-style VALUES."""
    result = release.helm("install", release.name, str(CHART), "--namespace", release.namespace, *values,
                          "--wait", "--timeout", "5m")
    if result.returncode != 0:
        pods = release.cluster.kubectl("-n", release.namespace, "describe", "pods", check=False).stdout
        raise AssertionError(f"helm install failed: {result.stderr}\n{pods[-3000:]}\n{release.operator_log()}")


def remove_leftovers(release: Release) -> None:
    """Sandboxes first (with a finalizer and no operator they would hold their namespace), then the release, then
    the namespaces; never anything the test did not create."""
    kubectl = release.cluster.kubectl
    names = kubectl("-n", release.sandbox_namespace, "get", "sandboxes", "-o", "name", check=False).stdout.split()
    if names and release.running_operator() is not None:
        kubectl("-n", release.sandbox_namespace, "delete", *names, "--wait=true", "--timeout=90s", check=False,
                timeout=120)
    for name in kubectl("-n", release.sandbox_namespace, "get", "sandboxes", "-o", "name",
                        check=False).stdout.split():
        kubectl("-n", release.sandbox_namespace, "patch", name, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False)
    if release.name in release.helm("list", "-n", release.namespace, "-q").stdout.split():
        release.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "3m")
    for namespace in (release.sandbox_namespace, release.namespace):
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def build_operator_image(cluster: Cluster) -> str:
    """The operator image from this checkout, built (cached by its inputs) and imported into the node when the
    node is this machine's containerd (a kind node gets it from `kind load image-archive`, see docs/chart.md)."""
    result = subprocess.run(["bash", "hack/build-operator-image.sh", "all"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, f"building the operator image failed:\n{result.stderr[-4000:]}"

    # The kubelet reports new images with a later node status update.
    wait_until(lambda: constants.OPERATOR_IMAGE in cluster.node_images(), 120, interval=5,
               message=f"{constants.OPERATOR_IMAGE} on the node (kind: kind load image-archive "
                       "$(bash hack/build-operator-image.sh archive))")
    assert constants.SANDBOX_IMAGE in cluster.node_images(), f"{constants.SANDBOX_IMAGE} is not on the node: make image"
    return constants.OPERATOR_IMAGE


@contextlib.contextmanager
def installed_release(cluster: Cluster, prefix: str, *values: str) -> Iterator[Release]:
    """The operator image built and on the node, then a release of the chart with names of its own (release and
    its namespace, and the one sandbox namespace the chart makes; ``values`` may name them as
    ``{release.namespace}``, ...), removed afterwards with everything the test created; the release's namespace
    enforces Pod Security "restricted"."""
    build_operator_image(cluster)
    suffix = uuid.uuid4().hex[:6]
    rel = Release(cluster, name=f"{prefix}-{suffix}", namespace=f"{prefix}-{suffix}",
                  sandbox_namespace=f"{prefix}-sbx-{suffix}", client_sa="agent")
    # The CRD, the way docs/chart.md says to install and upgrade it (a no-op when it is current).
    cluster.apply_crd(CHART / "crds")
    cluster.kubectl("create", "namespace", rel.namespace)
    try:
        cluster.kubectl("label", "namespace", rel.namespace, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest", "sandbox-operator.io/test=e2e-helm")
        helm_install(rel, "--set-json", f'sandboxNamespaces.names=["{rel.sandbox_namespace}"]',
                     *(arg.format(release=rel) for arg in values))
        yield rel
    finally:
        remove_leftovers(rel)

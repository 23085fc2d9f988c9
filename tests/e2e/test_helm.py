"""The Helm chart on the real cluster (issue 6, acceptance 1 and 2).

One release per module run, with its own names (release, release namespace, sandbox namespace): `helm install`
from the locally built operator image; the in-cluster operator (nothing started by the test) brings a Sandbox
to Ready and sandboxctl runs Python in it; `kubectl auth can-i` proves the operator's ServiceAccount cannot
exec or read Secrets and that the client ClusterRole allows exec only where it is bound; `helm upgrade` with a
changed setting replaces the operator pod and the new setting shows in the next Sandbox; `helm uninstall`
leaves no operator object behind (only what docs/chart.md says it keeps).

The operator is namespaced (the chart's default): it never sees the namespaces other tests work in. The test
applies the CRD from crds/ like every other suite (Helm would skip its crds/ copy anyway when it exists) and
never deletes it. The tests run in file order; each later one builds on the release the fixture installed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from sandbox_operator import constants
from tests.conftest import REPO_ROOT, Cluster

CHART = REPO_ROOT / "charts" / "sandbox-operator"
SAMPLE = REPO_ROOT / "samples" / "sandbox.yaml"
SANDBOXCTL = REPO_ROOT / ".venv" / "bin" / "sandboxctl"
UPGRADED_LIFETIME = 1234
READY_TIMEOUT = 240.0

pytestmark = pytest.mark.timeout(1800)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


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
        return subprocess.run([str(self.cluster.bin_dir / "helm"), "--kubeconfig", str(self.cluster.kubeconfig),
                               *args], capture_output=True, text=True, timeout=timeout)

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.cluster.kubectl(*args, "-o", "json").stdout)

    def operator_pods(self) -> list[dict[str, Any]]:
        pods = self.kubectl_json("-n", self.namespace, "get", "pods", "-l",
                                 f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator")
        return list(pods["items"])

    def running_operator(self) -> dict[str, Any] | None:
        """The one operator pod when it is running, ready and not being deleted."""
        pods = [p for p in self.operator_pods() if not p["metadata"].get("deletionTimestamp")]
        if len(pods) != 1:
            return None
        statuses = pods[0].get("status", {}).get("containerStatuses") or []
        return pods[0] if statuses and all(s.get("ready") for s in statuses) else None

    def operator_log(self) -> str:
        result = self.cluster.kubectl("-n", self.namespace, "logs", f"deployment/{self.fullname}", "--tail=200",
                                      check=False)
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

    def node_images() -> set[str]:
        nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        return {name for node in nodes for image in node["status"].get("images") or []
                for name in image.get("names") or []}

    # The kubelet reports new images with a later node status update.
    wait_for(f"{constants.OPERATOR_IMAGE} on the node (kind: kind load image-archive "
             "$(bash hack/build-operator-image.sh archive))", lambda: constants.OPERATOR_IMAGE in node_images(), 120, 5)
    assert constants.SANDBOX_IMAGE in node_images(), f"{constants.SANDBOX_IMAGE} is not on the node (make image)"
    return constants.OPERATOR_IMAGE


@contextlib.contextmanager
def installed_release(cluster: Cluster, prefix: str, *values: str) -> Iterator[Release]:
    """A release with names of its own (release and its namespace, sandbox namespace), removed afterwards with
    everything the test created; the release's namespace enforces Pod Security "restricted"."""
    suffix = uuid.uuid4().hex[:6]
    rel = Release(cluster, name=f"{prefix}-{suffix}", namespace=f"{prefix}-{suffix}",
                  sandbox_namespace=f"{prefix}-sbx-{suffix}", client_sa="agent")
    # The CRD, the way docs/chart.md says to install and upgrade it (a no-op when it is current).
    for crd in sorted((CHART / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{constants.CRD_NAME}")
    cluster.kubectl("create", "namespace", rel.namespace)
    try:
        cluster.kubectl("label", "namespace", rel.namespace, "pod-security.kubernetes.io/enforce=restricted",
                        "pod-security.kubernetes.io/enforce-version=latest", "sandbox-operator.io/test=e2e-helm")
        helm_install(rel, *(arg.format(release=rel) for arg in values))
        yield rel
    finally:
        remove_leftovers(rel)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """Namespaced (the chart's default), one sandbox namespace, the client role bound to one ServiceAccount."""
    build_operator_image(cluster)
    with installed_release(
            cluster, "e2e-helm",
            "--set-json", "sandboxNamespaces.names=[\"{release.sandbox_namespace}\"]",
            "--set-json", ('clientRole.subjects=[{{"kind": "ServiceAccount", "name": "{release.client_sa}", '
                           '"namespace": "{release.namespace}"}}]'),
            "--set", "config.gcIntervalSeconds=5") as rel:
        yield rel


# --- install ------------------------------------------------------------------------------------------------

def test_install_runs_one_hardened_operator_from_the_local_image(release: Release) -> None:
    pod = wait_for("the operator pod running and ready", release.running_operator, 180)
    assert release.helm("status", release.name, "-n", release.namespace).returncode == 0
    spec = pod["spec"]
    [c] = spec["containers"]
    assert c["image"] == constants.OPERATOR_IMAGE and c["imagePullPolicy"] == "IfNotPresent"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    # Admitted under Pod Security "restricted" (the release namespace enforces it).
    ns = release.kubectl_json("get", "namespace", release.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    deployment = release.kubectl_json("-n", release.namespace, "get", "deployment", release.fullname)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # The chart's sandbox namespace: restricted, with its default-deny policy.
    sbx_ns = release.kubectl_json("get", "namespace", release.sandbox_namespace)
    assert sbx_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    release.kubectl_json("-n", release.sandbox_namespace, "get", "networkpolicy", f"{release.fullname}-default-deny")
    # Inside the image (exec with the test's admin credentials): the numeric user, a read-only root filesystem,
    # no pip and no compiler.
    probe = ("import importlib.util, os, shutil, sys\n"
             "try:\n    open('/opt/sandbox-operator/probe', 'w')\nexcept OSError:\n    ro = True\n"
             "else:\n    ro = False\n"
             "tools = [t for t in ('pip', 'pip3', 'gcc', 'cc', 'x86_64-linux-gnu-gcc') if shutil.which(t)]\n"
             "print(os.getuid(), ro, importlib.util.find_spec('pip') is None, tools)\n")
    result = release.cluster.kubectl("-n", release.namespace, "exec", pod["metadata"]["name"], "--",
                                     "/opt/sandbox-operator/bin/python", "-c", probe)
    assert result.stdout.strip().split(maxsplit=3) == ["10001", "True", "True", "[]"], result.stdout + result.stderr
    # The operator watches its sandbox namespace only, and RBAC gives kopf everything it asks for.
    def started() -> str | None:
        log = release.operator_log()
        return log if f"namespaces={release.sandbox_namespace}," in log else None

    log = wait_for("the operator's startup line", started, 60)
    assert "Not enough permissions" not in log and "Forbidden" not in log, log[-3000:]


def test_in_cluster_operator_brings_a_sandbox_to_ready(release: Release) -> None:
    release.create_sandbox("hello")
    sandbox = release.wait_ready("hello")
    assert sandbox["status"]["phase"] == "Ready"
    pod = release.kubectl_json("-n", release.sandbox_namespace, "get", "pod", constants.pod_name("hello"))
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Sandbox", "hello", sandbox["metadata"]["uid"])
    assert pod["spec"]["activeDeadlineSeconds"] <= 3600  # the chart's default lifetime
    release.kubectl_json("-n", release.sandbox_namespace, "get", "networkpolicy",
                         constants.network_policy_name("hello"))
    # The metrics Service reaches the operator (through the API server's service proxy: no cluster DNS here).
    def ready_gauge() -> bool:
        result = release.cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{release.namespace}/services/"
                                         f"{release.fullname}-metrics:metrics/proxy/metrics", check=False)
        return 'sandbox_operator_sandboxes{phase="Ready"} 1.0' in result.stdout

    wait_for("the Ready sandbox in the operator's metrics", ready_gauge, 60, 2)
    if SANDBOXCTL.exists():  # the CLI, through pods/exec with the test's (admin) credentials
        result = subprocess.run([str(SANDBOXCTL), "--kubeconfig", str(release.cluster.kubeconfig), "--namespace",
                                 release.sandbox_namespace, "exec", "hello", "--", "python3", "-c", "print('Hello')"],
                                capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout) == (0, "Hello\n"), result.stderr
    release.delete_sandbox("hello")  # the operator's finalizer runs: the Sandbox is gone only when it is done
    wait_for("the sandbox pod gone", lambda: release.cluster.kubectl(
        "-n", release.sandbox_namespace, "get", "pod", "hello", "--ignore-not-found", "-o", "name").stdout == "", 90)


# --- RBAC ---------------------------------------------------------------------------------------------------

def test_operator_service_account_cannot_exec_or_read_secrets(release: Release) -> None:
    sa, sbx = release.operator_sa, release.sandbox_namespace
    for namespace in (sbx, release.namespace, "default", "kube-system"):
        for verb in ("create", "get"):
            assert not release.can_i(verb, "pods", namespace, sa, subresource="exec"), (verb, namespace)
        assert not release.can_i("create", "pods", namespace, sa, subresource="attach")
        for verb in ("get", "list", "watch"):
            assert not release.can_i(verb, "secrets", namespace, sa), (verb, namespace)
    # What it does need, only in its sandbox namespace (namespaced mode).
    assert release.can_i("create", "pods", sbx, sa)
    assert release.can_i("patch", "sandboxes.sandbox-operator.io", sbx, sa)
    assert release.can_i("patch", "sandboxes.sandbox-operator.io", sbx, sa, subresource="status")
    assert release.can_i("create", "networkpolicies.networking.k8s.io", sbx, sa)
    for namespace in ("default", release.namespace):
        assert not release.can_i("create", "pods", namespace, sa), namespace
        assert not release.can_i("list", "sandboxes.sandbox-operator.io", namespace, sa), namespace
    assert not release.can_i("list", "secrets", "default", sa)
    assert not release.can_i("create", "clusterrolebindings.rbac.authorization.k8s.io", "default", sa)


def test_client_role_allows_exec_only_where_bound(release: Release) -> None:
    bound = f"system:serviceaccount:{release.namespace}:{release.client_sa}"
    unbound = f"system:serviceaccount:{release.namespace}:someone-else"
    sbx = release.sandbox_namespace
    for verb in ("create", "get"):
        assert release.can_i(verb, "pods", sbx, bound, subresource="exec"), verb
    assert release.can_i("create", "sandboxes.sandbox-operator.io", sbx, bound)
    assert release.can_i("delete", "sandboxes.sandbox-operator.io", sbx, bound)
    assert release.can_i("get", "pods", sbx, bound)
    # Not where it is not bound, not for anyone else, and never Secrets.
    for namespace in (release.namespace, "default", "kube-system"):
        assert not release.can_i("create", "pods", namespace, bound, subresource="exec"), namespace
        assert not release.can_i("create", "sandboxes.sandbox-operator.io", namespace, bound), namespace
    assert not release.can_i("create", "pods", sbx, unbound, subresource="exec")
    assert not release.can_i("get", "secrets", sbx, bound)
    assert not release.can_i("create", "pods", sbx, bound)  # clients go through Sandboxes, not raw pods


# --- upgrade and uninstall ----------------------------------------------------------------------------------

def test_upgrade_with_a_changed_setting_rolls_the_operator(release: Release) -> None:
    before = wait_for("the operator pod running", release.running_operator, 180)
    result = release.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values",
                          "--set", f"config.defaultLifetimeSeconds={UPGRADED_LIFETIME}",
                          "--set", "config.defaultIdleSeconds=600", "--wait", "--timeout", "5m")
    assert result.returncode == 0, result.stderr
    def replaced() -> dict[str, Any] | None:
        pod = release.running_operator()
        return pod if pod is not None and pod["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = wait_for("a new operator pod running", replaced, 240)
    assert after["metadata"]["name"] != before["metadata"]["name"]
    wait_for("the old operator pod gone", lambda: all(
        p["metadata"]["uid"] != before["metadata"]["uid"] for p in release.operator_pods()), 120)
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    assert env["SANDBOX_OPERATOR_DEFAULT_LIFETIME_SECONDS"] == str(UPGRADED_LIFETIME)
    assert env["SANDBOX_OPERATOR_GC_INTERVAL_SECONDS"] == "5"  # --reuse-values kept the install's values
    # The new operator applies the new default to the next Sandbox.
    release.create_sandbox("after-upgrade")
    release.wait_ready("after-upgrade")
    pod = release.kubectl_json("-n", release.sandbox_namespace, "get", "pod", "after-upgrade")
    assert UPGRADED_LIFETIME - 120 < pod["spec"]["activeDeadlineSeconds"] <= UPGRADED_LIFETIME
    release.delete_sandbox("after-upgrade")


def test_uninstall_leaves_no_operator_objects(release: Release) -> None:
    result = release.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout", "3m")
    assert result.returncode == 0, result.stderr
    assert release.name not in release.helm("list", "-A", "-q").stdout.split()
    selector = f"app.kubernetes.io/instance={release.name}"

    def leftovers() -> list[str]:
        found: list[str] = []
        for kinds, scope in (("deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,"
                              "networkpolicies", "-A"),
                             ("clusterroles,clusterrolebindings,namespaces", "")):
            args = ["get", kinds, "-l", selector, "-o", "name"] + ([scope] if scope else [])
            found += release.cluster.kubectl(*args).stdout.split()
        return sorted(found)

    # Kept on purpose (docs/chart.md, "Uninstall"): the sandbox namespace and its default-deny policy.
    kept = sorted([f"namespace/{release.sandbox_namespace}",
                   f"networkpolicy.networking.k8s.io/{release.fullname}-default-deny"])
    wait_for("only the kept objects left", lambda: leftovers() == kept or None, 120)
    sbx_ns = release.kubectl_json("get", "namespace", release.sandbox_namespace)
    assert sbx_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # The CRD stays: Helm never deletes crds/ (deleting it would delete every Sandbox in the cluster).
    release.cluster.kubectl("get", "crd", constants.CRD_NAME)

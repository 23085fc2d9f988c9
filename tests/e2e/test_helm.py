"""The Helm chart on the real cluster.

One release per module run, with its own names (release, release namespace, sandbox namespace): `helm install`
from the locally built operator image; the in-cluster operator (nothing started by the test) brings a Sandbox
to Ready and sandboxctl runs Python in it; `kubectl auth can-i` proves the operator's ServiceAccount cannot
exec or read Secrets and that the client ClusterRole allows exec only where it is bound; `helm upgrade` with a
changed setting replaces the operator pod and the new setting shows in the next Sandbox; `helm uninstall`
leaves no operator object behind (only what docs/chart.md says it keeps). The install also declares one warm
pool (values: pools); a Sandbox with poolRef takes its pod, and removing the entry deletes the pool but not the
claimed pod.

The operator is namespaced (the chart's default): it never sees the namespaces other tests work in. The test
applies the CRD from crds/ like every other suite (Helm would skip its crds/ copy anyway when it exists) and
never deletes it. The tests run in file order; each later one builds on the release the fixture installed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox_operator import constants
from tests.kit import REPO_ROOT, Cluster, wait_until
from tests.kit.helm import CHART, Release, installed_release

SANDBOXCTL = REPO_ROOT / ".venv" / "bin" / "sandboxctl"
UPGRADED_LIFETIME = 1234
POOL = "warm"
# One small pool: its pod starts with the release, and a Sandbox with poolRef claims it.
POOLS = [{"name": POOL, "size": 1, "template": {"resources": {"cpu": "500m", "memory": "256Mi"}}}]
POOL_RESOURCE = f"{constants.POOL_PLURAL}.{constants.GROUP}"

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """Namespaced (the chart's default), one sandbox namespace, the client role bound to one ServiceAccount, one
    warm pool in the sandbox namespace (the pool's namespace left to its default)."""
    pools = json.dumps(POOLS).replace("{", "{{").replace("}", "}}")  # installed_release formats the values
    with installed_release(
            cluster, "e2e-helm",
            "--set-json", ('clientRole.subjects=[{{"kind": "ServiceAccount", "name": "{release.client_sa}", '
                           '"namespace": "{release.namespace}"}}]'),
            "--set", "config.gcIntervalSeconds=5",
            "--set-json", f"pools={pools}") as rel:
        yield rel


# --- install ------------------------------------------------------------------------------------------------

def test_install_runs_a_hardened_operator_from_the_local_image(release: Release) -> None:
    pod = wait_until(release.running_operator, 180, interval=1, message="the operator pod running and ready")
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
    # The chart's default: two pods, one leader (tests/e2e/test_helm_ha.py), rolled on upgrade.
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
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

    log = wait_until(started, 60, interval=1, message="the operator's startup line")
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

    wait_until(ready_gauge, 60, interval=2, message="the Ready sandbox in the operator's metrics")
    if SANDBOXCTL.exists():  # the CLI, through pods/exec with the test's (admin) credentials
        result = subprocess.run([str(SANDBOXCTL), "--kubeconfig", str(release.cluster.kubeconfig), "--namespace",
                                 release.sandbox_namespace, "exec", "hello", "--", "python3", "-c", "print('Hello')"],
                                capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout) == (0, "Hello\n"), result.stderr
    release.delete_sandbox("hello")  # the operator's finalizer runs: the Sandbox is gone only when it is done
    wait_until(lambda: release.cluster.kubectl("-n", release.sandbox_namespace, "get", "pod", "hello",
                                               "--ignore-not-found", "-o", "name").stdout == "",
               90, interval=1, message="the sandbox pod gone")


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


def test_pool_permissions_operator_reconciles_clients_only_read(release: Release) -> None:
    sa, sbx = release.operator_sa, release.sandbox_namespace
    client = f"system:serviceaccount:{release.namespace}:{release.client_sa}"
    for verb in ("get", "list", "watch"):
        assert release.can_i(verb, POOL_RESOURCE, sbx, sa), verb
    assert release.can_i("patch", POOL_RESOURCE, sbx, sa, subresource="status")
    assert release.can_i("update", POOL_RESOURCE, sbx, sa, subresource="finalizers")
    for verb in ("create", "update", "patch", "delete"):  # pools are the chart's or an administrator's
        assert not release.can_i(verb, POOL_RESOURCE, sbx, sa), verb
    for verb in ("get", "list", "watch"):
        assert release.can_i(verb, POOL_RESOURCE, sbx, client), verb
    for verb in ("create", "update", "patch", "delete"):
        assert not release.can_i(verb, POOL_RESOURCE, sbx, client), verb
    for namespace in ("default", release.namespace):
        assert not release.can_i("list", POOL_RESOURCE, namespace, sa), namespace
        assert not release.can_i("list", POOL_RESOURCE, namespace, client), namespace


# --- warm pools ---------------------------------------------------------------------------------------------

def test_pool_from_values_hands_its_pod_to_a_sandbox_and_goes_with_its_entry(release: Release) -> None:
    sbx, kubectl = release.sandbox_namespace, release.cluster.kubectl
    pool = release.wait_pool_ready(POOL)
    assert pool["metadata"]["labels"]["app.kubernetes.io/instance"] == release.name  # the chart's
    _sandbox, pod = release.claim("warm-claim", POOL)
    pod_name = pod["metadata"]["name"]
    assert pod["metadata"]["labels"][constants.LABEL_SANDBOX] == "warm-claim"

    def unclaimed_pods() -> list[str]:
        return kubectl("-n", sbx, "get", "pods", "-l", f"{constants.LABEL_POOL}={POOL},!{constants.LABEL_SANDBOX}",
                       "-o", "name").stdout.split()

    wait_until(unclaimed_pods, 60, interval=1, message="the pool refilled after the claim")

    # The entry removed from values: Helm deletes the SandboxPool and garbage collection its unclaimed pods and
    # policy; the claimed pod belongs to its Sandbox and stays.
    result = release.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values",
                          "--set-json", "pools=[]", "--wait", "--timeout", "5m")
    assert result.returncode == 0, result.stderr

    def pool_gone() -> bool:
        found = kubectl("-n", sbx, "get", f"{POOL_RESOURCE}/{POOL}",
                        f"networkpolicies/{constants.pool_network_policy_name(POOL)}", "--ignore-not-found",
                        "-o", "name").stdout
        return found == "" and not unclaimed_pods()

    wait_until(pool_gone, 120, interval=1, message=lambda: f"pool {POOL}, its policy and unclaimed pods gone: "
                                                           f"{unclaimed_pods()}")
    claimed = release.kubectl_json("-n", sbx, "get", "pod", pod_name)
    assert claimed["metadata"]["uid"] == pod["metadata"]["uid"]
    assert not claimed["metadata"].get("deletionTimestamp")
    release.delete_sandbox("warm-claim")


# --- upgrade and uninstall ----------------------------------------------------------------------------------

def test_upgrade_with_a_changed_setting_rolls_the_operator(release: Release) -> None:
    before = wait_until(release.running_operator, 180, interval=1, message="the operator pod running")
    result = release.helm("upgrade", release.name, str(CHART), "--namespace", release.namespace, "--reuse-values",
                          "--set", f"config.defaultLifetimeSeconds={UPGRADED_LIFETIME}",
                          "--set", "config.defaultIdleSeconds=600", "--wait", "--timeout", "5m")
    assert result.returncode == 0, result.stderr
    def replaced() -> dict[str, Any] | None:
        pod = release.running_operator()
        return pod if pod is not None and pod["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = wait_until(replaced, 240, interval=1, message="a new operator pod running")
    assert after["metadata"]["name"] != before["metadata"]["name"]
    wait_until(lambda: all(p["metadata"]["uid"] != before["metadata"]["uid"] for p in release.operator_pods()), 120,
               interval=1, message="the old operator pod gone")
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
    wait_until(lambda: leftovers() == kept, 120, interval=1,
               message=lambda: f"only the kept objects left: {leftovers()}")
    sbx_ns = release.kubectl_json("get", "namespace", release.sandbox_namespace)
    assert sbx_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # The CRD stays: Helm never deletes crds/ (deleting it would delete every Sandbox in the cluster).
    release.cluster.kubectl("get", "crd", constants.CRD_NAME)

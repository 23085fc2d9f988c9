"""The cluster the tests and benchmarks run against: its kubeconfig, an API client, the cluster's own kubectl and
helm, its node, and namespaces made for one test."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.kit.repo import REPO_ROOT, make_var

# Pod Security "restricted", enforced and warned, as the chart labels sandbox namespaces.
RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
}
TEST_LABEL = "sandbox-operator.io/test"


def configured_kubeconfig() -> Path | None:
    """``SANDBOX_KUBECONFIG``, else ``KUBECONFIG``: a cluster the caller chose."""
    explicit = os.environ.get("SANDBOX_KUBECONFIG") or os.environ.get("KUBECONFIG")
    return Path(explicit) if explicit else None


def default_kubeconfig() -> Path:
    """The chosen cluster, else the project's local one (``make kubeconfig``; it need not be up yet)."""
    return configured_kubeconfig() or Path(make_var("kubeconfig"))


def kubectl_binary(given: str | None = None) -> str:
    """``given``, else the cluster's own kubectl (``make bin-dir``), else the one on PATH."""
    if given:
        return given
    pinned = Path(make_var("bin-dir")) / "kubectl"
    if pinned.exists():
        return str(pinned)
    found = shutil.which("kubectl")
    if not found:
        raise SystemExit("no kubectl: build the cluster's (make cluster-build) or name one")
    return found


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    api: client.ApiClient
    bin_dir: Path

    @classmethod
    def connect(cls, kubeconfig: Path) -> Cluster:
        api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        return cls(kubeconfig, api, Path(make_var("bin-dir")))

    def kubectl(self, *args: str, check: bool = True, input: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs the cluster's own kubectl against this cluster."""
        return subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            check=check, capture_output=True, text=True, input=input, timeout=timeout,
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Runs the cluster's own helm against this cluster; the caller checks the exit code."""
        return subprocess.run([str(self.bin_dir / "helm"), "--kubeconfig", str(self.kubeconfig), *args],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def pod_exec(self, namespace: str, pod: str, *argv: str, input: str | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``argv`` in a sandbox pod's container through ``kubectl exec``; the result carries the remote exit code."""
        flags = ["-i"] if input is not None else []
        return self.kubectl("exec", "-n", namespace, *flags, pod, "-c", constants.CONTAINER_NAME, "--", *argv,
                            check=False, input=input, timeout=timeout)

    def node_images(self) -> set[str]:
        """Every image name the nodes report having."""
        names: set[str] = set()
        for node in client.CoreV1Api(self.api).list_node().items:
            for image in (node.status.images if node.status else None) or []:
                names.update(image.names or [])
        return names

    def supports_user_namespaces(self) -> bool:
        """As every node's runtime reports it; SANDBOX_E2E_USER_NAMESPACES=0 or 1 forces the answer."""
        forced = os.environ.get("SANDBOX_E2E_USER_NAMESPACES")
        if forced in ("0", "1"):
            return forced == "1"
        nodes = self.kubectl_json("get", "nodes")["items"]
        return bool(nodes) and all(
            any(h.get("features", {}).get("userNamespaces") for h in n.get("status", {}).get("runtimeHandlers", []))
            for n in nodes)

    def apply_crd(self, directory: Path = REPO_ROOT / "crds") -> None:
        """Applies the CRDs of ``directory`` the way docs/chart.md says (server-side) and waits until both (Sandbox
        and SandboxPool) are served."""
        for crd in sorted(directory.glob("*.yaml")):
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{constants.CRD_NAME}",
                     f"crd/{constants.POOL_CRD_NAME}")

    def create_namespace(self, prefix: str, *, restricted: bool = True) -> str:
        """A namespace of its own for one test (``PREFIX-xxxxxx``), under Pod Security "restricted" unless asked
        not to, labelled as a test's."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        labels = {TEST_LABEL: prefix, **(RESTRICTED_LABELS if restricted else {})}
        client.CoreV1Api(self.api).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        return name

    def delete_namespace(self, name: str) -> None:
        """Starts deleting the namespace (not waiting for it); gone already is fine."""
        try:
            client.CoreV1Api(self.api).delete_namespace(name)
        except ApiException as error:
            if error.status != 404:
                raise

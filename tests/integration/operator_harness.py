"""Helpers for the operator's integration tests: run ``python -m sandbox_operator`` as a subprocess against the
real cluster, make restricted namespaces, create and watch Sandboxes, and wait on object state."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, watch
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.conftest import REPO_ROOT, Cluster

T = TypeVar("T")


def serialize(api: client.ApiClient, obj: Any) -> Any:
    """Client models to the API's JSON shape (camelCase dicts)."""
    return api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
LOG_DIR = REPO_ROOT / "_out" / "integration"


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.25) -> T:
    """Polls ``predicate`` until it returns something truthy; fails with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def consistently(predicate: Callable[[], object], duration: float, what: str, interval: float = 0.5) -> None:
    """Asserts that ``predicate`` holds on every poll for ``duration`` seconds (for "nothing happens" checks)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert predicate(), f"{what} stopped holding"
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Operator:
    """A running operator process and its log."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    health_port: int
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            return text in self.log()
        wait_for(seen, timeout, f"{text!r} in the operator's log")

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except OSError as error:
            return 0, str(error)

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill would do."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.send_signal(signal.SIGCONT)  # a process stopped at a failpoint handles SIGTERM only then
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def peak_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM")


def start_operator(cluster: Cluster, namespace: str, *, images: list[str], name: str = "operator",
                   **settings: str) -> Operator:
    """Runs the operator from this checkout, watching only ``namespace``; returns once it serves /healthz."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / f"{namespace}-{name}-{uuid.uuid4().hex[:4]}.log"
    health, metrics = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_OPERATOR_")}
    env.update({
        "KUBECONFIG": str(cluster.kubeconfig),
        "SANDBOX_OPERATOR_NAMESPACES": namespace,
        "SANDBOX_OPERATOR_ALLOWED_IMAGES": ",".join(images),
        "SANDBOX_OPERATOR_HEALTH_PORT": str(health),
        "SANDBOX_OPERATOR_METRICS_PORT": str(metrics),
        "SANDBOX_OPERATOR_BIND_ADDRESS": "127.0.0.1",
        "SANDBOX_OPERATOR_LOG_FORMAT": "full",
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"SANDBOX_OPERATOR_{key.upper()}": value for key, value in settings.items()})
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sandbox_operator"], cwd=REPO_ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    operator = Operator(proc, log_path, health, metrics)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the operator exited ({proc.returncode}):\n{operator.log()[-4000:]}")
        return operator.get(health, "/healthz")[0] == 200
    wait_for(healthy, 60, "the operator's /healthz")
    return operator


# --------------------------------------------------------------------------------------------------------------


@dataclass
class Kube:
    cluster: Cluster
    custom: client.CustomObjectsApi = field(init=False)
    core: client.CoreV1Api = field(init=False)
    networking: client.NetworkingV1Api = field(init=False)

    def __post_init__(self) -> None:
        self.custom = client.CustomObjectsApi(self.cluster.api)
        self.core = client.CoreV1Api(self.cluster.api)
        self.networking = client.NetworkingV1Api(self.cluster.api)

    # Sandboxes
    def create(self, namespace: str, name: str, spec: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        body = {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.PLURAL, body, **kwargs)
        return created

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.custom.get_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    def sandboxes(self, namespace: str) -> list[dict[str, Any]]:
        found: dict[str, Any] = self.custom.list_namespaced_custom_object(constants.GROUP, constants.VERSION,
                                                                          namespace, constants.PLURAL)
        return list(found["items"])

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict((self.get(namespace, name) or {}).get("status") or {})

    def patch(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name, patch)
        return patched

    def delete(self, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                        constants.PLURAL, name)

    def record_activity(self, namespace: str, name: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.patch(namespace, name, {"metadata": {"annotations": {constants.ANNOTATION_LAST_ACTIVITY: now}}})

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(namespace, name)
            return status if status.get("phase") == phase else None
        return wait_for(reached, timeout, f"Sandbox {namespace}/{name} phase {phase}")

    def wait_gone(self, namespace: str, name: str, timeout: float = 120) -> None:
        wait_for(lambda: self.get(namespace, name) is None, timeout, f"Sandbox {namespace}/{name} to be gone")

    # Children
    def pods(self, namespace: str, sandbox: str | None = None) -> list[dict[str, Any]]:
        selector = f"{constants.LABEL_SANDBOX}={sandbox}" if sandbox else constants.LABEL_SANDBOX
        items = serialize(self.cluster.api,
            self.core.list_namespaced_pod(namespace, label_selector=selector).items)
        return list(items)

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            pod: dict[str, Any] = serialize(self.cluster.api,
                self.core.read_namespaced_pod(name, namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return pod

    def policies(self, namespace: str) -> list[dict[str, Any]]:
        items = serialize(self.cluster.api,
            self.networking.list_namespaced_network_policy(namespace,
                                                           label_selector=constants.LABEL_SANDBOX).items)
        return list(items)

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        items = serialize(self.cluster.api, self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind={constants.KIND},involvedObject.name={name}").items)
        return list(items)

    def event_reasons(self, namespace: str, name: str) -> list[str]:
        return [str(e.get("reason")) for e in self.events(namespace, name)]

    def wait_event(self, namespace: str, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.events(namespace, name) if e.get("reason") == reason), None)
        return wait_for(found, timeout, f"an Event {reason} for {namespace}/{name}")


class PhaseRecorder:
    """Watches one Sandbox and records every phase it is seen in (transient phases included)."""

    def __init__(self, kube: Kube, namespace: str, name: str) -> None:
        self.phases: list[str] = []
        self.deleted = threading.Event()
        self._stop = threading.Event()
        self._kube, self._namespace, self._name = kube, namespace, name
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and not self.deleted.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                        self._kube.custom.list_namespaced_custom_object, constants.GROUP,
                                           constants.VERSION, self._namespace, constants.PLURAL,
                                           field_selector=f"metadata.name={self._name}", timeout_seconds=5):
                    obj = event["object"]
                    phase = (obj.get("status") or {}).get("phase")
                    if phase and (not self.phases or self.phases[-1] != phase):
                        self.phases.append(phase)
                    if event["type"] == "DELETED":
                        self.deleted.set()
                        break
                    if self._stop.is_set():
                        break
            except ApiException:
                time.sleep(0.2)
            finally:
                stream.stop()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class Heartbeat:
    """Records activity on a Sandbox every ``period`` seconds, as the SDK does while it is used."""

    def __init__(self, kube: Kube, namespace: str, name: str, period: float = 2.0) -> None:
        self._stop = threading.Event()
        self._kube, self._namespace, self._name, self._period = kube, namespace, name, period
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiException):
                self._kube.record_activity(self._namespace, self._name)
            self._stop.wait(self._period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def make_namespace(cluster: Cluster, prefix: str = "sbxit") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(cluster.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "sandbox-operator.io/test": "integration",
    })))
    return name


def drop_namespace(cluster: Cluster, kube: Kube, namespace: str, operator: Operator | None) -> None:
    """Deletes every Sandbox (letting a live operator finish its teardown), then the namespace."""
    for item in kube.sandboxes(namespace):
        kube.delete(namespace, item["metadata"]["name"])
    if operator is not None and operator.proc.poll() is None:
        with contextlib.suppress(AssertionError):
            wait_for(lambda: not kube.sandboxes(namespace), 60, "sandboxes gone")
    for item in kube.sandboxes(namespace):
        with contextlib.suppress(ApiException):  # no operator left to remove its finalizer
            kube.patch(namespace, item["metadata"]["name"], {"metadata": {"finalizers": None}})
    with contextlib.suppress(ApiException):
        client.CoreV1Api(cluster.api).delete_namespace(namespace)


def node_images(cluster: Cluster) -> set[str]:
    names: set[str] = set()
    for node in client.CoreV1Api(cluster.api).list_node().items:
        for image in (node.status.images if node.status else None) or []:
            names.update(image.names or [])
    return names


@contextlib.contextmanager
def operator_in(cluster: Cluster, namespace: str, *, images: list[str], **settings: str) -> Iterator[Operator]:
    operator = start_operator(cluster, namespace, images=images, **settings)
    try:
        yield operator
    finally:
        operator.stop()

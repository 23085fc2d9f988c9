"""Sandboxes, SandboxPools and their children through the API, as JSON dicts, with waits on their state."""

from __future__ import annotations

import contextlib
import datetime
import threading
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.kit.cluster import Cluster
from tests.kit.wait import WaitTimeoutError, wait_until

JSON = dict[str, Any]


def sandbox_manifest(namespace: str, name: str, spec: JSON) -> JSON:
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pool_manifest(namespace: str, name: str, size: int, template: JSON) -> JSON:
    return {"apiVersion": constants.API_VERSION, "kind": constants.POOL_KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": {"size": size, "template": template}}


def or_none_if_missing(call: Any, *args: Any, **kwargs: Any) -> Any:
    """``call(...)``, or None when the API says 404."""
    try:
        return call(*args, **kwargs)
    except ApiException as error:
        if error.status == 404:
            return None
        raise


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

    def serialize(self, obj: Any) -> Any:
        """Client models in the API's JSON shape (camelCase dicts)."""
        return self.cluster.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]

    # Sandboxes
    def create(self, namespace: str, name: str, spec: JSON, **kwargs: Any) -> JSON:
        return cast(JSON, self.custom.create_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.PLURAL, sandbox_manifest(namespace, name, spec),
            **kwargs))

    def get(self, namespace: str, name: str) -> JSON | None:
        found: JSON | None = or_none_if_missing(self.custom.get_namespaced_custom_object, constants.GROUP,
                                                constants.VERSION, namespace, constants.PLURAL, name)
        return found

    def sandboxes(self, namespace: str) -> list[JSON]:
        found = cast(JSON, self.custom.list_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                                     constants.PLURAL))
        return list(found["items"])

    def status(self, namespace: str, name: str) -> JSON:
        return dict((self.get(namespace, name) or {}).get("status") or {})

    def patch(self, namespace: str, name: str, patch: JSON) -> JSON:
        return cast(JSON, self.custom.patch_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name, patch))

    def delete(self, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.custom.delete_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                        constants.PLURAL, name)

    def delete_all(self, namespace: str) -> None:
        self.custom.delete_collection_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                               constants.PLURAL)

    def record_activity(self, namespace: str, name: str) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.patch(namespace, name, {"metadata": {"annotations": {constants.ANNOTATION_LAST_ACTIVITY: now}}})

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 120) -> JSON:
        def reached() -> JSON | None:
            status = self.status(namespace, name)
            return status if status.get("phase") == phase else None
        return wait_until(reached, timeout, message=f"Sandbox {namespace}/{name} phase {phase}")

    def wait_gone(self, namespace: str, name: str, timeout: float = 120) -> None:
        wait_until(lambda: self.get(namespace, name) is None, timeout,
                   message=f"Sandbox {namespace}/{name} to be gone")

    # Children
    def pods(self, namespace: str, sandbox: str | None = None) -> list[JSON]:
        selector = f"{constants.LABEL_SANDBOX}={sandbox}" if sandbox else constants.LABEL_SANDBOX
        return list(self.serialize(self.core.list_namespaced_pod(namespace, label_selector=selector).items))

    def pod(self, namespace: str, name: str) -> JSON | None:
        found = or_none_if_missing(self.core.read_namespaced_pod, name, namespace)
        return None if found is None else dict(self.serialize(found))

    def policies(self, namespace: str) -> list[JSON]:
        return list(self.serialize(self.networking.list_namespaced_network_policy(
            namespace, label_selector=constants.LABEL_SANDBOX).items))

    def events(self, namespace: str, name: str) -> list[JSON]:
        return list(self.serialize(self.core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.kind={constants.KIND},involvedObject.name={name}").items))

    def event_reasons(self, namespace: str, name: str) -> list[str]:
        return [str(e.get("reason")) for e in self.events(namespace, name)]

    def wait_event(self, namespace: str, name: str, reason: str, timeout: float = 60) -> JSON:
        def found() -> JSON | None:
            return next((e for e in self.events(namespace, name) if e.get("reason") == reason), None)
        return wait_until(found, timeout, message=f"an Event {reason} for {namespace}/{name}")

    # SandboxPools
    def create_pool(self, namespace: str, name: str, size: int, template: JSON) -> JSON:
        return cast(JSON, self.custom.create_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, constants.POOL_PLURAL,
            pool_manifest(namespace, name, size, template)))

    def get_pool(self, namespace: str, name: str) -> JSON | None:
        found: JSON | None = or_none_if_missing(self.custom.get_namespaced_custom_object, constants.GROUP,
                                                constants.VERSION, namespace, constants.POOL_PLURAL, name)
        return found

    def delete_pool(self, namespace: str, name: str) -> None:
        """Deletes the pool in the background: the garbage collector then removes what the pool controls."""
        self.custom.delete_namespaced_custom_object(constants.GROUP, constants.VERSION, namespace,
                                                    constants.POOL_PLURAL, name, propagation_policy="Background")

    def pool_pods(self, namespace: str, pool: str) -> list[JSON]:
        """Every pod the pool started, claimed or not (the pool's label stays on a claimed pod)."""
        selector = f"{constants.LABEL_POOL}={pool}"
        return list(self.serialize(self.core.list_namespaced_pod(namespace, label_selector=selector).items))

    def wait_pool(self, namespace: str, name: str, *, ready: int, claimed: int | None = None,
                  timeout: float = 120) -> JSON:
        """The pool's status once it describes the current spec with ``ready`` pods ready (and ``claimed`` pods
        claimed, when given)."""
        def reached() -> JSON | None:
            pool = self.get_pool(namespace, name)
            if pool is None:
                return None
            status = dict(pool.get("status") or {})
            current = status.get("observedGeneration") == pool["metadata"]["generation"]
            counts = status.get("readyCount", 0) == ready and claimed in (None, status.get("claimedCount", 0))
            return status if current and counts else None
        return wait_until(reached, timeout, message=lambda: (
            f"SandboxPool {namespace}/{name} with {ready} ready" + ("" if claimed is None else f", {claimed} claimed")
            + f"; status {(self.get_pool(namespace, name) or {}).get('status')}"))

    # Namespaces
    def drop_namespace(self, namespace: str, *, operator_running: bool) -> None:
        """Deletes every Sandbox (a running operator finishes their teardown; without one their finalizers are
        removed), then the namespace."""
        for item in self.sandboxes(namespace):
            self.delete(namespace, item["metadata"]["name"])
        if operator_running:
            with contextlib.suppress(WaitTimeoutError):
                wait_until(lambda: not self.sandboxes(namespace), 90, message="the Sandboxes gone")
        for item in self.sandboxes(namespace):
            with contextlib.suppress(ApiException):
                self.patch(namespace, item["metadata"]["name"], {"metadata": {"finalizers": None}})
        self.cluster.delete_namespace(namespace)


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

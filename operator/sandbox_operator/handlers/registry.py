"""Publishes which namespaces this operator serves, on the Sandbox CRD (see :mod:`sandbox_operator.registry`).

A client that created a Sandbox nobody picks up reads these entries to say why. The operator writes its own
entry at start-up and every heartbeat, removes it on a clean shutdown, and removes other operators' entries that
have been silent for :data:`PRUNE_AFTER` (operators that were killed), each removal guarded by a JSON-patch
``test`` so that an entry refreshed in the meantime stays. Every write is idempotent. A failed write (no RBAC,
no CRD, API server away) is logged and retried at the next heartbeat: publishing never stops the operator.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import urllib3
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.k8s.api import MERGE_PATCH, REQUEST_TIMEOUT, api_message
from sandbox_operator.registry import registry_entries, registry_entry, registry_key
from sandbox_operator.settings import OperatorSettings

logger = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Outside a pod (a developer's or a test's operator process) there is no pod namespace.
LOCAL_NAMESPACE = "local"
# Other operators' entries silent this long are removed; well past the stale limit, so that clock skew between
# operators never removes a live one (it would only be written back at its next heartbeat anyway).
PRUNE_AFTER = datetime.timedelta(seconds=5 * constants.REGISTRY_STALE_SECONDS)
PublishError = (ApiException, urllib3.exceptions.HTTPError)


class CrdPatcher(Protocol):
    """The one call the publisher makes: ``kubernetes.client.ApiextensionsV1Api`` has it."""

    def patch_custom_resource_definition(self, name: str, body: Any, *, field_manager: str | None = ...,
                                         _content_type: str | None = ..., _preload_content: bool = ...,
                                         _request_timeout: float | None = ...) -> Any: ...


def operator_identity(instance_name: str, pod_namespace: str | None, hostname: str, pid: int) -> tuple[str, str]:
    """(namespace, name) this operator publishes under: its pod's namespace (``local`` outside a pod) and the
    configured instance name (the chart's Deployment name), else ``<host>-<pid>``."""
    return pod_namespace or LOCAL_NAMESPACE, instance_name or f"{hostname}-{pid}"


def pod_namespace(path: Path = SERVICE_ACCOUNT_NAMESPACE) -> str | None:
    """The namespace of the pod this process runs in, from its service account mount; None outside a pod."""
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _json_pointer(key: str) -> str:
    return "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")


@dataclass
class RegistryPublisher:
    """Writes and removes one operator's entry on the Sandbox CRD."""

    crds: CrdPatcher
    key: str
    namespaces: Sequence[str]
    version: str = constants.PROJECT_VERSION
    _problem: str | None = field(default=None, init=False)

    def publish(self, now: datetime.datetime) -> bool:
        """Writes (or refreshes) the entry, then prunes long-silent entries of others; False if it failed."""
        value = registry_entry(self.namespaces, now, self.version).annotation_value()
        try:
            crd = self._patch({"metadata": {"annotations": {self.key: value}}}, MERGE_PATCH)
        except PublishError as error:
            self._report(f"cannot publish the namespaces this operator serves ({self.key}) on "
                         f"CustomResourceDefinition {constants.CRD_NAME}: {_describe(error)}; clients cannot tell "
                         f"which namespaces it serves (it needs get and patch on that CRD); retrying every "
                         f"{constants.REGISTRY_HEARTBEAT_SECONDS}s")
            return False
        if self._problem is not None:
            logger.info("publishing the namespaces this operator serves works again (%s)", self.key)
            self._problem = None
        self._prune(crd.get("metadata", {}).get("annotations") or {}, now)
        return True

    def withdraw(self) -> bool:
        """Removes the entry (a no-op when it is absent); False if that failed."""
        try:
            self._patch({"metadata": {"annotations": {self.key: None}}}, MERGE_PATCH)
        except PublishError as error:
            logger.warning("cannot remove this operator's entry %s from CustomResourceDefinition %s: %s; clients "
                           "will treat it as gone %ss after its last heartbeat", self.key, constants.CRD_NAME,
                           _describe(error), constants.REGISTRY_STALE_SECONDS)
            return False
        return True

    def _prune(self, annotations: Mapping[str, str], now: datetime.datetime) -> None:
        for key, entry in registry_entries(annotations).items():
            if key == self.key or now - entry.heartbeat <= PRUNE_AFTER:
                continue
            pointer = _json_pointer(key)
            try:
                self._patch([{"op": "test", "path": pointer, "value": annotations[key]},
                             {"op": "remove", "path": pointer}], JSON_PATCH)
            except PublishError as error:  # refreshed or removed meanwhile (422), or not allowed: keep going
                logger.debug("not removing the silent entry %s: %s", key, _describe(error))
                continue
            logger.info("removed the entry of an operator silent since %s: %s", entry.heartbeat.isoformat(), key)

    def _patch(self, body: object, content_type: str) -> dict[str, Any]:
        response = self.crds.patch_custom_resource_definition(
            constants.CRD_NAME, body, field_manager=constants.MANAGER_NAME, _content_type=content_type,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        crd: dict[str, Any] = json.loads(response.data)
        return crd

    def _report(self, problem: str) -> None:
        """Warns once per distinct problem: the heartbeat retries every minute and would repeat it."""
        if problem != self._problem:
            logger.warning("%s", problem)
            self._problem = problem


def _describe(error: Exception) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status}: {api_message(error)}"
    return str(error) or type(error).__name__


def publisher_for(settings: OperatorSettings, crds: CrdPatcher) -> RegistryPublisher:
    namespace, name = operator_identity(settings.instance_name, pod_namespace(), socket.gethostname(), os.getpid())
    return RegistryPublisher(crds=crds, key=registry_key(namespace, name), namespaces=list(settings.namespaces))


async def keep_published(publisher: RegistryPublisher, clock: Callable[[], datetime.datetime],
                         interval: float = constants.REGISTRY_HEARTBEAT_SECONDS) -> None:
    """Refreshes the entry every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(publisher.publish, clock())
        except Exception:  # a bug here must not end the heartbeat for good: log it, try again next time
            logger.exception("refreshing the registry entry %s failed", publisher.key)

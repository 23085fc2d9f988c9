"""Blocking Kubernetes calls the operator makes, returning plain JSON dicts (the shape kopf hands to handlers).

The official client is blocking: handlers call these through ``asyncio.to_thread``. Reads and patches return
``None`` for a 404 and deletes ignore one; other errors raise :class:`kubernetes.client.ApiException`, except
that creating a child that already exists (409) is judged by :meth:`KubeApi._judge_existing` as an
:class:`Adoption`.
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.client import ApiException

from sandbox_operator import constants

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = 30.0
JSON = dict[str, Any]


def make_api_client(workers: int) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG`` or ~/.kube/config)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = max(4, workers)
    api = client.ApiClient(configuration)
    api.user_agent = f"{constants.MANAGER_NAME}/{constants.PROJECT_VERSION}"
    return api


def _json(response: Any) -> JSON:
    data: JSON = json.loads(response.data)
    return data


def _unless_missing(call: Callable[[], Any]) -> JSON | None:
    """The JSON answer of ``call`` (made with ``_preload_content=False``), or None when the object is gone (404)."""
    try:
        return _json(call())
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def api_message(error: ApiException) -> str:
    """The API server's own message for an error (the Status object's ``message``)."""
    try:
        body = json.loads(error.body or "{}")
    except ValueError:
        body = {}
    return str(body.get("message") or error.reason or f"HTTP {error.status}")


class Adoption(enum.Enum):
    CREATED = "created"
    EXISTING = "existing"  # already there and ours: a re-run after a crash
    STALE = "stale"  # left by an earlier Sandbox of the same name, waiting for garbage collection
    FOREIGN = "foreign"  # someone else's object has the name


@dataclass(frozen=True)
class ChildResult:
    outcome: Adoption
    body: JSON


def controller_of(body: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The object's controller reference (the owner garbage collection follows), or ``{}``."""
    refs = ((body or {}).get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), {})


def controlled_by(body: Mapping[str, Any] | None, owner_uid: str | None) -> bool:
    """Whether the object is this very owner's child (by UID: a namesake owner's leftovers are not)."""
    return owner_uid is not None and controller_of(body).get("uid") == owner_uid


class KubeApi:
    """The operator's calls, one method each."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.networking = client.NetworkingV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # Sandboxes ---------------------------------------------------------------------------------------------

    def _get_custom(self, plural: str, namespace: str, name: str) -> JSON | None:
        return _unless_missing(lambda: self.custom.get_namespaced_custom_object(
            constants.GROUP, constants.VERSION, namespace, plural, name,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT))

    def _patch_custom_status(self, plural: str, namespace: str, name: str,
                             status_patch: Mapping[str, Any]) -> JSON | None:
        """Merge-patches ``status`` through the status subresource; None if the object is gone."""
        return _unless_missing(lambda: self.custom.patch_namespaced_custom_object_status(
            constants.GROUP, constants.VERSION, namespace, plural, name,
            {"status": dict(status_patch)}, field_manager=constants.MANAGER_NAME,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT))

    def get_sandbox(self, namespace: str, name: str) -> JSON | None:
        return self._get_custom(constants.PLURAL, namespace, name)

    def patch_sandbox_status(self, namespace: str, name: str, status_patch: Mapping[str, Any]) -> JSON | None:
        """Merge-patches the Sandbox's ``status``; None if the Sandbox is gone."""
        return self._patch_custom_status(constants.PLURAL, namespace, name, status_patch)

    def delete_sandbox(self, namespace: str, name: str, uid: str, resource_version: str | None = None) -> bool:
        """Deletes this very Sandbox: preconditions on the UID (not a new namesake) and, if given, the
        resourceVersion (nothing changed since the caller looked). False if gone, changed or already deleting."""
        try:
            self.custom.delete_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                    uid=uid, resource_version=resource_version)),
                _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    # SandboxPools ------------------------------------------------------------------------------------------

    def get_pool(self, namespace: str, name: str) -> JSON | None:
        return self._get_custom(constants.POOL_PLURAL, namespace, name)

    def patch_pool_status(self, namespace: str, name: str, status_patch: Mapping[str, Any]) -> JSON | None:
        """Merge-patches a SandboxPool's ``status``; None if the pool is gone."""
        return self._patch_custom_status(constants.POOL_PLURAL, namespace, name, status_patch)

    # Pods --------------------------------------------------------------------------------------------------

    def get_pod(self, namespace: str, name: str) -> JSON | None:
        return _unless_missing(lambda: self.core.read_namespaced_pod(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))

    def patch_pod(self, namespace: str, name: str, patch: Mapping[str, Any]) -> JSON | None:
        return _unless_missing(lambda: self.core.patch_namespaced_pod(
            name, namespace, dict(patch), field_manager=constants.MANAGER_NAME, _content_type=MERGE_PATCH,
            _preload_content=False, _request_timeout=REQUEST_TIMEOUT))

    def delete_pod(self, namespace: str, name: str, uid: str | None, grace_seconds: int,
                   resource_version: str | None = None) -> bool:
        """Deletes this very pod (UID precondition) and, with ``resource_version``, only if it has not changed
        since: a pool pod claimed in between has another version, and the delete leaves it alone (409). False
        when nothing was deleted (gone already, or a precondition failed)."""
        preconditions = (client.V1Preconditions(uid=uid, resource_version=resource_version)
                         if uid or resource_version else None)
        options = client.V1DeleteOptions(grace_period_seconds=grace_seconds, preconditions=preconditions)
        try:
            self.core.delete_namespaced_pod(name, namespace, body=options, _preload_content=False,
                                            _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status not in (404, 409):
                raise
            return False
        return True

    def create_pod(self, pod: client.V1Pod, owner_uid: str) -> ChildResult:
        return self._create_child(
            pod.metadata, owner_uid, self.get_pod,
            lambda namespace: self.core.create_namespaced_pod(
                namespace, pod, field_manager=constants.MANAGER_NAME, _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT))

    def create_pool_pod(self, pod: client.V1Pod) -> JSON | None:
        """Creates a pool's pod; None when the name is taken (the refill picks another name next time)."""
        assert pod.metadata is not None and pod.metadata.namespace
        try:
            return _json(self.core.create_namespaced_pod(
                pod.metadata.namespace, pod, field_manager=constants.MANAGER_NAME, _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT))
        except ApiException as error:
            if error.status == 409:
                return None
            raise

    def pod_event_message(self, namespace: str, pod_uid: str, reason: str) -> str | None:
        """The message of the latest Event with ``reason`` about this very pod (by UID), or None."""
        selector = f"involvedObject.uid={pod_uid},reason={reason}"
        try:
            events = _json(self.core.list_namespaced_event(namespace, field_selector=selector,
                                                           _preload_content=False,
                                                           _request_timeout=REQUEST_TIMEOUT))
        except ApiException as error:
            if error.status == 403:  # an older RBAC without events/list: the status stays less precise
                logger.warning("cannot list Events in %s: %s", namespace, api_message(error))
                return None
            raise
        items: list[JSON] = events.get("items") or []
        latest = max(items, default=None,
                     key=lambda event: str(event.get("lastTimestamp") or event.get("eventTime") or ""))
        return str(latest.get("message") or "") if latest is not None else None

    # NetworkPolicies ---------------------------------------------------------------------------------------

    def get_network_policy(self, namespace: str, name: str) -> JSON | None:
        return _unless_missing(lambda: self.networking.read_namespaced_network_policy(
            name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))

    def create_network_policy(self, policy: client.V1NetworkPolicy, owner_uid: str) -> ChildResult:
        return self._create_child(
            policy.metadata, owner_uid, self.get_network_policy,
            lambda namespace: self.networking.create_namespaced_network_policy(
                namespace, policy, field_manager=constants.MANAGER_NAME, _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT))

    def delete_network_policy(self, namespace: str, name: str) -> None:
        try:
            self.networking.delete_namespaced_network_policy(name, namespace, _preload_content=False,
                                                             _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 404:
                raise

    # -------------------------------------------------------------------------------------------------------

    def _create_child(self, metadata: client.V1ObjectMeta | None, owner_uid: str,
                      read: Callable[[str, str], JSON | None], create: Callable[[str], Any]) -> ChildResult:
        """Creates a child in its namespace; when the name is taken (409), judges the object that has it."""
        namespace, name = (metadata.namespace, metadata.name) if metadata else (None, None)
        assert namespace and name
        try:
            return ChildResult(Adoption.CREATED, _json(create(namespace)))
        except ApiException as error:
            if error.status != 409:
                raise
        return self._judge_existing(read(namespace, name), owner_uid)

    @staticmethod
    def _judge_existing(existing: JSON | None, owner_uid: str) -> ChildResult:
        """After a 409: ours (adopt it), an earlier namesake Sandbox's or pool's (wait), or someone else's
        (conflict)."""
        if existing is None:  # deleted between our create and our read: the caller retries
            return ChildResult(Adoption.STALE, {})
        if controlled_by(existing, owner_uid):
            return ChildResult(Adoption.EXISTING, existing)
        controller = controller_of(existing)
        if controller.get("apiVersion") == constants.API_VERSION \
                and controller.get("kind") in (constants.KIND, constants.POOL_KIND):
            return ChildResult(Adoption.STALE, existing)
        return ChildResult(Adoption.FOREIGN, existing)

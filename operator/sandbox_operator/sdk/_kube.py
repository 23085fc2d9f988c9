"""Kubernetes access for the SDK: configuration loading, the few API calls it needs, and error translation.

Everything here deals in plain dicts (the JSON the API server sends), never in generated client models, so the
SDK does not depend on the client's model layer and prints exactly what ``kubectl get -o json`` would show.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn, cast

import urllib3
from kubernetes import client
from kubernetes import config as _config
from kubernetes import watch as _watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from sandbox_operator import constants
from sandbox_operator.sdk import errors

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ENV_NAMESPACE = "SANDBOX_NAMESPACE"
config: Any = _config  # untyped modules
watch: Any = _watch
WATCH_LEG_SECONDS = 300  # one watch request; then it resumes from the last resourceVersion
WATCH_RETRIES = 3  # broken connections in a row, without an event in between, before a watch gives up
WATCH_RETRY_PAUSE = 1.0
# Asks for an object's metadata only (the Sandbox CRD's schema is large and not needed).
PARTIAL_METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
CONNECT_TIMEOUT = 15.0
REQUEST_TIMEOUT = (CONNECT_TIMEOUT, 120.0)  # (connect, read) for every non-watch call


@dataclass(frozen=True)
class KubeConfig:
    """An API client and the namespace to use when the caller names none."""

    api_client: client.ApiClient
    namespace: str
    source: str  # "kubeconfig:<path>" or "in-cluster"


def load_config(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    namespace: str | None = None,
    *,
    in_cluster: bool | None = None,
) -> KubeConfig:
    """Finds a configuration the way kubectl and in-cluster clients do.

    Order: an explicit ``kubeconfig``/``context``; ``$KUBECONFIG``; the pod's service account when running
    inside a cluster; ``~/.kube/config``. ``in_cluster=True`` forces the service account, ``False`` forbids
    it. The namespace is ``namespace``, else ``$SANDBOX_NAMESPACE``, else the kubeconfig context's, else the
    pod's own, else ``default``.
    """
    env_kubeconfig = os.environ.get("KUBECONFIG")
    use_in_cluster = in_cluster
    if use_in_cluster is None:
        use_in_cluster = (
            kubeconfig is None and context is None and not env_kubeconfig
            and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
        )
    ns_default = namespace or os.environ.get(ENV_NAMESPACE)
    if use_in_cluster:
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as exc:
            raise errors.ConfigError(f"cannot load in-cluster configuration: {exc}") from exc
        if not ns_default and IN_CLUSTER_NAMESPACE_FILE.exists():
            ns_default = IN_CLUSTER_NAMESPACE_FILE.read_text().strip()
        return KubeConfig(client.ApiClient(cfg), ns_default or "default", "in-cluster")

    path = os.fspath(kubeconfig) if kubeconfig is not None else None
    if path is None and env_kubeconfig:
        # KUBECONFIG may be a list; the client merges it.
        path = env_kubeconfig
    if path is None:
        path = str(Path(config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION).expanduser())
    try:
        api_client = config.new_client_from_config(config_file=path, context=context)
        if not ns_default:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = active
            if context is not None:
                chosen = next((c for c in contexts if c.get("name") == context), active)
            ns_default = ((chosen or {}).get("context") or {}).get("namespace")
    except (ConfigException, OSError) as exc:
        raise errors.ConfigError(f"cannot load kubeconfig {path!r}: {exc}") from exc
    return KubeConfig(api_client, ns_default or "default", f"kubeconfig:{path}")


def status_from_body(body: Any) -> dict[str, Any]:
    """The ``metav1.Status`` in an error response body, or ``{}``."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return {"message": body.strip()} if body.strip() else {}
    return body if isinstance(body, dict) else {}


def error_from_status(
    http_status: int | None,
    status: dict[str, Any],
    *,
    name: str | None = None,
    namespace: str | None = None,
    fallback: str = "Kubernetes API request failed",
    crd: str = constants.CRD_NAME,
) -> errors.SandboxError:
    """Maps an HTTP status plus ``metav1.Status`` to the most specific SDK error; ``crd`` is the definition of the
    resource asked for, named when it is not installed."""
    reason = status.get("reason") or None
    message = status.get("message") or fallback
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    kw: dict[str, Any] = {"reason": reason, "status": http_status, "name": name, "namespace": namespace,
                          "details": details}
    if http_status == 404:
        if "could not find the requested resource" in message and not (details or {}).get("name"):
            return errors.CrdNotInstalled(
                f"the {crd} CustomResourceDefinition is not installed ({message})", **kw)
        return errors.SandboxNotFound(message, **kw)
    if http_status == 409 and reason == "AlreadyExists":
        return errors.SandboxAlreadyExists(message, **kw)
    if http_status == 403:
        return errors.SandboxForbidden(message, **kw)
    if http_status == 422:
        return errors.InvalidSandboxSpec(message, **kw)
    if http_status == 401:
        return errors.ApiError(message, **{**kw, "reason": reason or "Unauthorized"})
    return errors.ApiError(message, **kw)


def raise_api_error(exc: ApiException, *, name: str | None = None, namespace: str | None = None,
                    crd: str = constants.CRD_NAME) -> NoReturn:
    status = status_from_body(exc.body)
    if not status.get("message") and exc.reason:
        status["message"] = str(exc.reason)
    raise error_from_status(exc.status, status, name=name, namespace=namespace, crd=crd) from exc


def unreachable(exc: BaseException, *, name: str | None, namespace: str | None) -> errors.ApiError:
    return errors.ApiError(f"cannot reach the Kubernetes API: {exc}", reason="Unreachable", name=name,
                           namespace=namespace)


@contextlib.contextmanager
def translated(name: str | None = None, namespace: str | None = None, *,
               crd: str = constants.CRD_NAME) -> Iterator[None]:
    """Turns client exceptions into SDK errors; nothing is swallowed."""
    try:
        yield
    except ApiException as exc:
        raise_api_error(exc, name=name, namespace=namespace, crd=crd)
    except urllib3.exceptions.HTTPError as exc:
        raise unreachable(exc, name=name, namespace=namespace) from exc


class KubeApi:
    """The handful of API calls the SDK makes, on one namespace by default, returning dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.extensions = client.ApiextensionsV1Api(api_client)

    # Sandboxes ------------------------------------------------------------------------------------------

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        with translated(name, namespace):
            obj = self.custom.get_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name,
                _request_timeout=REQUEST_TIMEOUT)
        return _as_dict(obj)

    def list_sandboxes(self, namespace: str | None, label_selector: str | None = None) -> dict[str, Any]:
        """The SandboxList (``items`` plus ``metadata.resourceVersion``); all namespaces when None."""
        kwargs: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT}
        if label_selector:
            kwargs["label_selector"] = label_selector
        with translated(None, namespace):
            if namespace is None:
                out = self.custom.list_cluster_custom_object(
                    constants.GROUP, constants.VERSION, constants.PLURAL, **kwargs)
            else:
                out = self.custom.list_namespaced_custom_object(
                    constants.GROUP, constants.VERSION, namespace, constants.PLURAL, **kwargs)
        return _as_dict(out)

    def create_sandbox(self, body: dict[str, Any], namespace: str) -> dict[str, Any]:
        name = body.get("metadata", {}).get("name")
        with translated(name, namespace):
            obj = self.custom.create_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL, body,
                _request_timeout=REQUEST_TIMEOUT)
        return _as_dict(obj)

    def patch_sandbox(self, name: str, namespace: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (the client's default content type for custom objects)."""
        with translated(name, namespace):
            obj = self.custom.patch_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name, patch,
                _content_type="application/merge-patch+json", _request_timeout=REQUEST_TIMEOUT)
        return _as_dict(obj)

    def delete_sandbox(self, name: str, namespace: str, *, propagation: str = "Background") -> None:
        with translated(name, namespace):
            self.custom.delete_namespaced_custom_object(
                constants.GROUP, constants.VERSION, namespace, constants.PLURAL, name,
                propagation_policy=propagation, _request_timeout=REQUEST_TIMEOUT)

    def watch_sandboxes(
        self, namespace: str | None, *, name: str | None = None, label_selector: str | None = None,
        resource_version: str | None = None, timeout_seconds: float | None = None,
        known: Iterable[dict[str, Any]] = (), stopper: list[WatchStopper] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Watch events ``{"type", "object"}`` of Sandboxes after ``resource_version``; see :meth:`_watch`."""
        selectors: dict[str, Any] = {}
        if name:
            selectors["field_selector"] = f"metadata.name={name}"
        if label_selector:
            selectors["label_selector"] = label_selector
        if namespace is None:
            func: Callable[..., Any] = self.custom.list_cluster_custom_object
            args: tuple[Any, ...] = (constants.GROUP, constants.VERSION, constants.PLURAL)
        else:
            func = self.custom.list_namespaced_custom_object
            args = (constants.GROUP, constants.VERSION, namespace, constants.PLURAL)
        return self._watch(func, args, selectors, name=name, namespace=namespace, resource_version=resource_version,
                           timeout_seconds=timeout_seconds, known=known, stopper=stopper)

    def operator_registry(self) -> dict[str, str]:
        """The annotations of the Sandbox CRD, where running operators say which namespaces they serve.

        Only the object's metadata is fetched, not its schema. Without ``get`` on the CRD this raises
        :class:`SandboxForbidden`; when it is missing, :class:`SandboxNotFound`.
        """
        with translated(constants.CRD_NAME, None):
            resp = self.extensions.read_custom_resource_definition(
                constants.CRD_NAME, _preload_content=False, _request_timeout=REQUEST_TIMEOUT,
                _headers={"Accept": f"{PARTIAL_METADATA},application/json"})
        annotations = (_json(resp).get("metadata") or {}).get("annotations") or {}
        return {str(k): str(v) for k, v in annotations.items()}

    # SandboxPools (read only: the operator keeps them) -----------------------------------------------------

    def list_pools(self, namespace: str | None) -> dict[str, Any]:
        """The SandboxPoolList; all namespaces when None."""
        with translated(None, namespace, crd=constants.POOL_CRD_NAME):
            if namespace is None:
                out = self.custom.list_cluster_custom_object(
                    constants.GROUP, constants.VERSION, constants.POOL_PLURAL, _request_timeout=REQUEST_TIMEOUT)
            else:
                out = self.custom.list_namespaced_custom_object(
                    constants.GROUP, constants.VERSION, namespace, constants.POOL_PLURAL,
                    _request_timeout=REQUEST_TIMEOUT)
        return _as_dict(out)

    def get_pool(self, name: str, namespace: str) -> dict[str, Any]:
        """One SandboxPool; :class:`PoolNotFound` when there is none."""
        try:
            with translated(name, namespace, crd=constants.POOL_CRD_NAME):
                obj = self.custom.get_namespaced_custom_object(
                    constants.GROUP, constants.VERSION, namespace, constants.POOL_PLURAL, name,
                    _request_timeout=REQUEST_TIMEOUT)
        except errors.SandboxNotFound as missing:
            raise errors.PoolNotFound(f"sandbox pool {namespace}/{name} does not exist", reason=missing.reason,
                                      status=missing.status, name=name, namespace=namespace) from missing
        return _as_dict(obj)

    # Pods and events --------------------------------------------------------------------------------------

    def get_pod(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The pod as a dict, or None when it does not exist."""
        try:
            with translated(name, namespace):
                resp = self.core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                     _request_timeout=REQUEST_TIMEOUT)
        except errors.SandboxNotFound:
            return None
        return _json(resp)

    def list_events(self, namespace: str | None, field_selector: str | None = None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": REQUEST_TIMEOUT}
        if field_selector:
            kwargs["field_selector"] = field_selector
        with translated(None, namespace):
            if namespace is None:
                resp = self.core.list_event_for_all_namespaces(**kwargs)
            else:
                resp = self.core.list_namespaced_event(namespace, **kwargs)
        return _json(resp)

    def watch_events(
        self, namespace: str | None, *, field_selector: str | None = None,
        resource_version: str | None = None, timeout_seconds: float | None = None,
        known: Iterable[dict[str, Any]] = (), stopper: list[WatchStopper] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Watch events of Kubernetes Events after ``resource_version``; see :meth:`_watch`."""
        selectors: dict[str, Any] = {"field_selector": field_selector} if field_selector else {}
        if namespace is None:
            func: Callable[..., Any] = self.core.list_event_for_all_namespaces
            args: tuple[Any, ...] = ()
        else:
            func = self.core.list_namespaced_event
            args = (namespace,)
        return self._watch(func, args, selectors, name=None, namespace=namespace, resource_version=resource_version,
                           timeout_seconds=timeout_seconds, known=known, stopper=stopper)

    def _watch(self, list_func: Callable[..., Any], args: tuple[Any, ...], selectors: dict[str, Any], *,
               name: str | None, namespace: str | None, resource_version: str | None,
               timeout_seconds: float | None, known: Iterable[dict[str, Any]],
               stopper: list[WatchStopper] | None) -> Iterator[dict[str, Any]]:
        """Watch events after ``resource_version`` (the client's :class:`kubernetes.watch.Watch`, with bookmarks),
        resumed from the last resourceVersion after each server timeout or broken connection.

        ``timeout_seconds`` ends it; without one it runs until the caller stops iterating or calls ``stop()`` on
        the :class:`WatchStopper` appended to ``stopper``. When the resume point is too old (410 Gone), the
        objects are listed again and what changed since the last event (or since ``known``, the objects the
        caller listed) is yielded as ADDED, MODIFIED and DELETED events before watching on from the list.
        """
        stop = WatchStopper()
        if stopper is not None:
            stopper.append(stop)
        deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
        seen = {_key(obj): obj for obj in known}
        rv = resource_version
        failures = 0
        while not stop.stopped.is_set():
            leg = WATCH_LEG_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                leg = max(1, min(leg, math.ceil(remaining)))
            stop.watch = watcher = watch.Watch(return_type=object)
            kwargs = dict(selectors, allow_watch_bookmarks=True, timeout_seconds=leg,
                          _request_timeout=(CONNECT_TIMEOUT, leg + 30))
            if rv:
                kwargs["resource_version"] = rv
            try:
                with contextlib.closing(watcher.stream(list_func, *args, **kwargs)) as events:
                    for event in events:
                        failures = 0
                        rv = watcher.resource_version or rv
                        if event["type"] == "BOOKMARK":
                            continue
                        _remember(seen, event["type"], event["raw_object"])
                        yield {"type": event["type"], "object": event["raw_object"]}
            except ApiException as exc:
                if exc.status != HTTPStatus.GONE:
                    raise_api_error(exc, name=name, namespace=namespace)
                rv = yield from self._relist(list_func, args, selectors, seen, name=name, namespace=namespace)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                if stop.stopped.is_set():
                    return
                failures += 1
                if failures > WATCH_RETRIES:
                    raise unreachable(exc, name=name, namespace=namespace) from exc
                if failures > 1:  # a dropped connection is resumed at once; a failing API is not hammered
                    stop.stopped.wait(WATCH_RETRY_PAUSE)

    @staticmethod
    def _relist(list_func: Callable[..., Any], args: tuple[Any, ...], selectors: dict[str, Any],
                seen: dict[tuple[str, str], dict[str, Any]], *, name: str | None,
                namespace: str | None) -> Generator[dict[str, Any], None, str | None]:
        """Lists the objects again and yields how they differ from ``seen``; returns the list's resourceVersion."""
        with translated(name, namespace):
            listed = _json(list_func(*args, **selectors, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
        current = {_key(obj): obj for obj in listed.get("items") or []}
        for key, obj in current.items():
            before = seen.get(key)
            if before is None:
                yield {"type": "ADDED", "object": obj}
            elif _resource_version(before) != _resource_version(obj):
                yield {"type": "MODIFIED", "object": obj}
        for key in seen.keys() - current.keys():
            yield {"type": "DELETED", "object": seen[key]}
        seen.clear()
        seen.update(current)
        rv = (listed.get("metadata") or {}).get("resourceVersion")
        return str(rv) if rv else None


class WatchStopper:
    """Stops a running watch from another thread."""

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.watch: Any = None  # the watch.Watch of the current request

    def stop(self) -> None:
        self.stopped.set()
        current = self.watch
        if current is not None:
            current.stop()


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _resource_version(obj: dict[str, Any]) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return str(rv) if rv else None


def _remember(seen: dict[tuple[str, str], dict[str, Any]], event_type: str, obj: dict[str, Any]) -> None:
    if event_type == "DELETED":
        seen.pop(_key(obj), None)
    else:
        seen[_key(obj)] = obj


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.ApiError(f"the API server sent {type(value).__name__}, not an object", reason="BadResponse")
    return cast(dict[str, Any], value)


def _json(resp: Any) -> dict[str, Any]:
    data = resp.data
    out = json.loads(data) if data else {}
    return out if isinstance(out, dict) else {}

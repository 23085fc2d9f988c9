"""Kubernetes access for the SDK: configuration loading, the few API calls it needs, and error translation.

Everything here deals in plain dicts (the JSON the API server sends), never in generated client models, so the
SDK does not depend on the client's model layer and prints exactly what ``kubectl get -o json`` would show.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

import urllib3
from kubernetes import client
from kubernetes import config as _config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from sandbox_operator import constants
from sandbox_operator.sdk import errors

IN_CLUSTER_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
ENV_NAMESPACE = "SANDBOX_NAMESPACE"
config: Any = _config  # untyped module
WATCH_LEG_SECONDS = 300  # one watch request; then it resumes from the last resourceVersion
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
) -> errors.SandboxError:
    """Maps an HTTP status plus ``metav1.Status`` to the most specific SDK error."""
    reason = status.get("reason") or None
    message = status.get("message") or fallback
    details = status.get("details") if isinstance(status.get("details"), dict) else None
    kw: dict[str, Any] = {"reason": reason, "status": http_status, "name": name, "namespace": namespace,
                          "details": details}
    if http_status == 404:
        if "could not find the requested resource" in message and not (details or {}).get("name"):
            return errors.CrdNotInstalled(
                f"the {constants.CRD_NAME} CustomResourceDefinition is not installed ({message})", **kw)
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


def raise_api_error(exc: ApiException, *, name: str | None = None,
                    namespace: str | None = None) -> NoReturn:
    status = status_from_body(exc.body)
    if not status.get("message") and exc.reason:
        status["message"] = str(exc.reason)
    raise error_from_status(exc.status, status, name=name, namespace=namespace) from exc


@contextlib.contextmanager
def translated(name: str | None = None, namespace: str | None = None) -> Iterator[None]:
    """Turns client exceptions into SDK errors; nothing is swallowed."""
    try:
        yield
    except ApiException as exc:
        raise_api_error(exc, name=name, namespace=namespace)
    except urllib3.exceptions.HTTPError as exc:
        raise errors.ApiError(f"cannot reach the Kubernetes API: {exc}", reason="Unreachable",
                              name=name, namespace=namespace) from exc


class KubeApi:
    """The handful of API calls the SDK makes, on one namespace by default, returning dicts."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)

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
        resource_version: str | None = None, timeout_seconds: int | None = None,
        stopper: list[WatchStopper] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Raw watch events ``{"type", "object"}`` of Sandboxes, resuming on disconnects.

        ``timeout_seconds`` ends the watch (server side); without it the watch runs until the caller stops
        iterating or calls ``stop()`` on the WatchStopper appended to ``stopper``.
        """
        kwargs: dict[str, Any] = {"allow_watch_bookmarks": True}
        if name:
            kwargs["field_selector"] = f"metadata.name={name}"
        if label_selector:
            kwargs["label_selector"] = label_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
        if timeout_seconds is not None:
            kwargs["timeout_seconds"] = max(1, int(timeout_seconds))
        if namespace is None:
            func: Any = self.custom.list_cluster_custom_object
            args: tuple[Any, ...] = (constants.GROUP, constants.VERSION, constants.PLURAL)
        else:
            func = self.custom.list_namespaced_custom_object
            args = (constants.GROUP, constants.VERSION, namespace, constants.PLURAL)
        yield from self._watch(func, args, kwargs, name=name, namespace=namespace, stopper=stopper)

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
        resource_version: str | None = None, timeout_seconds: int | None = None,
        stopper: list[WatchStopper] | None = None,
    ) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {"allow_watch_bookmarks": True}
        if field_selector:
            kwargs["field_selector"] = field_selector
        if resource_version:
            kwargs["resource_version"] = resource_version
        if timeout_seconds is not None:
            kwargs["timeout_seconds"] = max(1, int(timeout_seconds))
        if namespace is None:
            func: Any = self.core.list_event_for_all_namespaces
            args: tuple[Any, ...] = ()
        else:
            func = self.core.list_namespaced_event
            args = (namespace,)
        yield from self._watch(func, args, kwargs, name=None, namespace=namespace, stopper=stopper)

    def _watch(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, name: str | None,
               namespace: str | None, stopper: list[WatchStopper] | None) -> Iterator[dict[str, Any]]:
        """A watch that resumes from the last resourceVersion after every disconnect or server timeout.

        With ``timeout_seconds`` it ends at that deadline; on ``410 Gone`` it restarts from the current state
        (the server then replays the existing objects as ADDED).
        """
        stop = WatchStopper()
        if stopper is not None:
            stopper.append(stop)
        total = kwargs.pop("timeout_seconds", None)
        deadline = None if total is None else time.monotonic() + total
        rv: str | None = kwargs.pop("resource_version", None)
        while not stop.stopped:
            leg = WATCH_LEG_SECONDS
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                leg = max(1, min(leg, math.ceil(remaining)))
            call_kwargs = dict(kwargs, watch=True, timeout_seconds=leg, _preload_content=False,
                               _request_timeout=(CONNECT_TIMEOUT, leg + 30))
            if rv:
                call_kwargs["resource_version"] = rv
            with translated(name, namespace):
                try:
                    resp = func(*args, **call_kwargs)
                except urllib3.exceptions.ProtocolError:
                    if stop.stopped:
                        return
                    raise
            stop.response = resp
            gone = False
            try:
                for line in _iter_lines(resp, stop):
                    event = json.loads(line)
                    etype = event.get("type")
                    obj = event.get("object") or {}
                    if etype == "ERROR":
                        if obj.get("code") == 410:
                            gone = True
                            break
                        raise error_from_status(obj.get("code"), obj, name=name, namespace=namespace)
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = new_rv
                    if etype == "BOOKMARK":
                        continue
                    yield event
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError, OSError):
                if stop.stopped:
                    return
                # A broken connection: resume from the last resourceVersion.
            finally:
                stop.response = None
                with contextlib.suppress(Exception):
                    resp.release_conn()
            if gone:
                rv = None


class WatchStopper:
    """Stops a running watch from another thread by closing its connection."""

    def __init__(self) -> None:
        self.stopped = False
        self.response: Any = None

    def stop(self) -> None:
        self.stopped = True
        resp = self.response
        if resp is not None:
            with contextlib.suppress(Exception):
                sock = getattr(getattr(resp, "connection", None), "sock", None)
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                resp.close()


def _iter_lines(resp: Any, stop: WatchStopper) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(None, decode_content=False):
        if stop.stopped:
            return
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip() and not stop.stopped:
        yield buf


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.ApiError(f"the API server sent {type(value).__name__}, not an object", reason="BadResponse")
    return cast(dict[str, Any], value)


def _json(resp: Any) -> dict[str, Any]:
    data = resp.data
    out = json.loads(data) if data else {}
    return out if isinstance(out, dict) else {}

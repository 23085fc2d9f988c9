"""SandboxManager: creates, finds, waits for and deletes Sandboxes on a Kubernetes cluster."""

from __future__ import annotations

import builtins
import copy
import datetime
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk._kube import KubeApi, load_config
from sandbox_operator.sdk.activity import DEFAULT_INTERVAL, ActivityRecorder
from sandbox_operator.sdk.channel import Channel, pod_exec_transport
from sandbox_operator.sdk.commands import DEFAULT_MAX_OUTPUT_BYTES
from sandbox_operator.sdk.events import EventStream, SandboxEvent, Subscription
from sandbox_operator.sdk.files import DEFAULT_FILE_TIMEOUT, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TRANSFER_BYTES
from sandbox_operator.sdk.health import pod_name_of, pod_problem, readiness
from sandbox_operator.sdk.pickup import (
    PICKUP_GRACE_SECONDS,
    UNREADABLE_REGISTRY_PATIENCE,
    Pickup,
    PickupCheck,
    check_pickup,
    picked_up,
)
from sandbox_operator.sdk.pools import PoolInfo, pool_info, pooled_spec
from sandbox_operator.sdk.sandbox import Sandbox
from sandbox_operator.sdk.sessions import SessionApi
from sandbox_operator.sdk.transport import ChannelPool, transport_from

DEFAULT_READY_TIMEOUT = 180.0
DEFAULT_COMMAND_TIMEOUT = 300.0  # the project's default per-command timeout (design README)
DEFAULT_GENERATE_NAME = "sbx-"


@dataclass(frozen=True)
class Progress:
    """What :meth:`SandboxManager.wait_ready` reports while waiting."""

    name: str
    phase: str | None
    reason: str | None
    message: str | None
    elapsed: float


ProgressCallback = Callable[[Progress], None]


def _labels_selector(labels: Mapping[str, str] | str | None) -> str | None:
    if labels is None or isinstance(labels, str):
        return labels or None
    return ",".join(f"{k}={v}" for k, v in labels.items()) or None


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_spec(
    *,
    image: str | None = None,
    command: Sequence[str] | None = None,
    args: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    cpu: str | None = None,
    memory: str | None = None,
    ephemeral_storage: str | None = None,
    pids: int | None = None,
    cpu_request: str | None = None,
    memory_request: str | None = None,
    ephemeral_storage_request: str | None = None,
    command_timeout: int | None = None,
    idle_timeout: int | None = None,
    lifetime: int | None = None,
    working_dir: str | None = None,
    pod_labels: Mapping[str, str] | None = None,
    pod_annotations: Mapping[str, str] | None = None,
    runtime_class_name: str | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, Any]] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Sandbox ``spec`` as a plain dict; only what is given is set (the operator defaults the rest).

    ``cpu``, ``memory`` and ``ephemeral_storage`` are limits; the ``*_request`` keywords set what the scheduler
    reserves (``spec.resources.requests``), each at most its limit. Requests equal to the limits give the pod
    Guaranteed QoS.

    ``spec`` is merged last, so any field the keywords do not cover can still be set.
    """
    out: dict[str, Any] = {}
    if image:
        out["image"] = image
    if command:
        out["command"] = list(command)
    if args:
        out["args"] = list(args)
    if env:
        out["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    resources: dict[str, Any] = {
        k: v for k, v in (("cpu", cpu), ("memory", memory), ("ephemeralStorage", ephemeral_storage),
                          ("pids", pids)) if v is not None}
    requests = {k: v for k, v in (("cpu", cpu_request), ("memory", memory_request),
                                  ("ephemeralStorage", ephemeral_storage_request)) if v is not None}
    if requests:
        resources["requests"] = requests
    if resources:
        out["resources"] = resources
    timeouts = {k: v for k, v in (("commandSeconds", command_timeout), ("idleSeconds", idle_timeout),
                                  ("lifetimeSeconds", lifetime)) if v is not None}
    if timeouts:
        out["timeouts"] = timeouts
    if working_dir:
        out["workingDir"] = working_dir
    if pod_labels:
        out["podLabels"] = dict(pod_labels)
    if pod_annotations:
        out["podAnnotations"] = dict(pod_annotations)
    if runtime_class_name:
        out["runtimeClassName"] = runtime_class_name
    if node_selector:
        out["nodeSelector"] = dict(node_selector)
    if tolerations:
        out["tolerations"] = [dict(t) for t in tolerations]
    return _deep_merge(out, spec or {})


def build_sandbox(name: str | None, namespace: str, spec: Mapping[str, Any], *,
                  labels: Mapping[str, str] | None = None,
                  annotations: Mapping[str, str] | None = None,
                  generate_name: str = DEFAULT_GENERATE_NAME) -> dict[str, Any]:
    """The Sandbox object to create: an exact ``name``, or a generated one (``sbx-xxxxx``)."""
    meta: dict[str, Any] = {"namespace": namespace}
    if name:
        meta["name"] = name
    else:
        meta["generateName"] = generate_name
    if labels:
        meta["labels"] = dict(labels)
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND, "metadata": meta, "spec": dict(spec)}


class SandboxManager(SessionApi):
    """Creates, finds, waits for and deletes sandboxes.

    ``SandboxManager()`` reads the kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``) or, inside a pod, the
    service account; the namespace is the kubeconfig context's unless given. Nothing talks to the cluster
    until a method is called. :meth:`create` returns a :class:`Sandbox` handle; the session methods
    (:meth:`create_session`, :meth:`execute_command`, ...) are the same operations addressed by session id.

    ``transport`` says how commands and file operations reach a sandbox: ``"auto"`` (the default) over one
    persistent channel per sandbox, or one exec per command where the image has no channel agent; ``"channel"``
    the channel only; ``"exec"`` one exec per command. Unset, ``$SANDBOX_EXEC_TRANSPORT`` decides. Close the
    manager (or use it as a context manager) to close its channels.
    """

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        in_cluster: bool | None = None,
        api_client: client.ApiClient | None = None,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        default_command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        activity_interval: float = DEFAULT_INTERVAL,
        record_activity: bool = True,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_transfer_bytes: int = DEFAULT_MAX_TRANSFER_BYTES,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        file_timeout: float | None = DEFAULT_FILE_TIMEOUT,
        shell: str = "/bin/bash",
        default_spec: Mapping[str, Any] | None = None,
        default_labels: Mapping[str, str] | None = None,
        transport: str | None = None,
    ) -> None:
        self.transport = transport_from(transport)
        if max_output_bytes < 0:
            raise ValueError(f"max_output_bytes cannot be negative, got {max_output_bytes}")
        if api_client is None:
            cfg = load_config(kubeconfig, context, namespace, in_cluster=in_cluster)
            api_client, default_ns = cfg.api_client, cfg.namespace
            self._owns_client = True
        else:
            default_ns = namespace or os.environ.get("SANDBOX_NAMESPACE") or "default"
            self._owns_client = False
        self.namespace: str = namespace or default_ns
        self.api = KubeApi(api_client)
        self.ready_timeout = ready_timeout
        self.default_command_timeout = default_command_timeout
        self.max_file_bytes = max_file_bytes
        self.max_transfer_bytes = max_transfer_bytes
        self.max_output_bytes = max_output_bytes
        self.file_timeout = file_timeout
        self.shell = shell
        self.default_spec = dict(default_spec or {})
        self.default_labels = dict(default_labels or {})
        self.activity = ActivityRecorder(self.api, activity_interval, enabled=record_activity)
        self._channels = ChannelPool(self._open_channel, fallback=self.transport == "auto")
        # The pods of the sandboxes this manager has seen, so that a handle without the object (a session call)
        # need not read it: a pooled sandbox's pod is not named after it.
        self._pod_names: dict[tuple[str, str], str] = {}
        self._registry_cache = RegistryCache(lambda: self.api.operator_registry())

    def _open_channel(self, namespace: str, name: str, pod: str) -> Channel:
        transport = pod_exec_transport(self.api.api_client, namespace, pod, container=constants.CONTAINER_NAME,
                                       program=constants.AGENT_PROGRAM, sandbox=name)
        return Channel(transport, sandbox=name, namespace=namespace, shell=self.shell)

    def __enter__(self) -> SandboxManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the sandboxes' channels (their background commands run on) and the API client if it is ours."""
        self._channels.close()
        self.activity.close()
        if self._owns_client:
            cast(Any, self.api.api_client).close()

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    # Sandboxes -------------------------------------------------------------------------------------

    def create(
        self,
        name: str | None = None,
        *,
        pool: str | None = None,
        namespace: str | None = None,
        labels: Mapping[str, str] | None = None,
        annotations: Mapping[str, str] | None = None,
        wait: bool = True,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        delete_on_failure: bool = True,
        **spec_fields: Any,
    ) -> Sandbox:
        """Creates a Sandbox and (unless ``wait=False``) returns once it is Ready.

        ``spec_fields`` are :func:`build_spec` keywords (``image``, ``cpu``, ``memory``, ``idle_timeout``,
        ``lifetime``, ``env``, ..., or a raw ``spec`` dict), merged over the manager's ``default_spec``.

        With ``pool`` the sandbox takes a ready pod of that SandboxPool (docs/pools.md), or starts cold from the pool's
        template when none is ready. Its spec is the pool's template: ``default_spec`` is not used, and only
        ``idle_timeout``, ``lifetime``, ``pod_labels`` and ``pod_annotations`` may be given (any other field raises
        :class:`InvalidSandboxSpec` naming it, before anything is sent). A pool that does not exist fails the sandbox
        (:class:`SandboxFailed`, reason ``InvalidSpec``).

        When it never gets Ready the error says why:
        :class:`SandboxFailed` at once for a failure waiting cannot fix (image missing, invalid spec,
        admission), :class:`NamespaceNotServed` within seconds when no running operator serves the namespace,
        :class:`SandboxNotReady` after ``timeout`` with the last reason (e.g. Unschedulable).
        Refusals at creation are :class:`InvalidSandboxSpec` (422) or :class:`SandboxForbidden` (403, e.g.
        RBAC, quota or an admission webhook). With ``delete_on_failure`` a sandbox that never got Ready is
        deleted, so nothing leaks.
        """
        ns = self._ns(namespace)
        requested = build_spec(**spec_fields)
        if pool is not None or "poolRef" in requested:
            spec = pooled_spec(pool, requested, name=name, namespace=ns)
        else:
            spec = _deep_merge(self.default_spec, requested)
        body = build_sandbox(name, ns, spec, labels={**self.default_labels, **(labels or {})},
                             annotations=annotations)
        obj = self.api.create_sandbox(body, ns)
        sandbox = Sandbox(self, obj["metadata"]["name"], ns, obj)
        if not wait:
            return sandbox
        try:
            sandbox.wait_ready(timeout=timeout, on_progress=on_progress, current=obj)
            if self.transport != "exec":
                # The agent starts while the caller gets the handle, and the activity record a first command makes
                # is written now: that command waits for neither.
                self._channels.prepare(ns, sandbox.name, sandbox.pod_name,
                                       then=lambda: self.activity.touch(ns, sandbox.name))
        except BaseException as failure:
            if delete_on_failure:
                try:
                    self.api.delete_sandbox(sandbox.name, ns)
                except errors.SandboxNotFound:
                    pass
                except errors.SandboxError as cleanup:
                    # Keep the original error; say that the sandbox may be left behind.
                    failure.add_note(f"deleting sandbox {ns}/{sandbox.name} after the failure also failed: "
                                     f"{cleanup}")
            raise
        return sandbox

    def get(self, name: str, *, namespace: str | None = None) -> Sandbox:
        """A handle on an existing sandbox (:class:`SandboxNotFound` if there is none)."""
        ns = self._ns(namespace)
        return Sandbox(self, name, ns, self.api.get_sandbox(name, ns))

    def list(self, labels: Mapping[str, str] | str | None = None, *, namespace: str | None = None,
             all_namespaces: bool = False) -> list[Sandbox]:
        """Sandboxes in the namespace (or all), filtered by labels (a dict or a selector string)."""
        ns = None if all_namespaces else self._ns(namespace)
        listed = self.api.list_sandboxes(ns, _labels_selector(labels))
        out = []
        for obj in listed.get("items", []):
            meta = obj.get("metadata") or {}
            out.append(Sandbox(self, meta["name"], meta.get("namespace", ns or self.namespace), obj))
        return sorted(out, key=lambda s: (s.namespace, s.name))

    def delete(self, name: str, *, namespace: str | None = None, wait: bool = False, timeout: float = 120,
               missing_ok: bool = False) -> None:
        """Deletes a sandbox (its pod and policy go with it); ``wait`` blocks until the object is gone."""
        ns = self._ns(namespace)
        try:
            self.api.delete_sandbox(name, ns)
        except errors.SandboxNotFound:
            if not missing_ok:
                raise
            return
        finally:
            self.activity.forget(ns, name)
            self._channels.forget(ns, name)
            self._pod_names.pop((ns, name), None)
        if wait:
            self.wait_deleted(name, namespace=ns, timeout=timeout)

    def wait_ready(self, name: str, *, namespace: str | None = None, timeout: float | None = None,
                   on_progress: ProgressCallback | None = None,
                   current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Watches the Sandbox until it is Ready; returns the object. See :meth:`create` for the errors.
        ``current`` is a version of the object the caller just got (such as the create's answer): the watch
        starts from it instead of a read."""
        ns = self._ns(namespace)
        limit = self.ready_timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + limit
        obj = current if current is not None else self.api.get_sandbox(name, ns)

        def judge(current: dict[str, Any]) -> bool:
            state = readiness(current)
            if on_progress is not None:
                on_progress(Progress(name, state.phase, state.reason, state.message,
                                     time.monotonic() - started))
            if state.state == "ready":
                return True
            if state.state == "failed":
                why = ": ".join(x for x in (state.reason, state.message) if x)
                raise errors.SandboxFailed(
                    f"sandbox {name} will not become Ready (phase {state.phase or 'unknown'})"
                    + (f": {why}" if why else ""), phase=state.phase, reason=state.reason, name=name,
                    namespace=ns)
            return False

        if judge(obj):
            return obj
        operator = _OperatorCheck(self._registry_cache, name, ns, started)
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            operator.check(obj, now)
            leg_end = min(deadline, operator.next_check)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            for event in self.api.watch_sandboxes(ns, name=name, resource_version=rv, timeout_seconds=leg_end - now,
                                                  known=[obj]):
                if event.get("type") == "DELETED":
                    raise errors.SandboxNotFound(f"sandbox {name} was deleted while waiting for it to be Ready",
                                                 reason="Deleted", name=name, namespace=ns)
                obj = event.get("object") or {}
                if judge(obj):
                    return obj
                if time.monotonic() >= leg_end or (operator.pending and picked_up(obj)):
                    break
        raise self._not_ready_error(name, ns, obj, limit)

    def _not_ready_error(self, name: str, ns: str, obj: dict[str, Any], limit: float) -> errors.SandboxNotReady:
        state = readiness(obj)
        reason, message = state.reason, state.message
        try:
            problem = pod_problem(self.api.get_pod(pod_name_of(obj) or constants.pod_name(name), ns))
        except errors.SandboxError:
            problem = None
        if problem is not None and (not reason or reason in ("Pending", "PodPending", "Creating")):
            reason, message = problem
        why = ": ".join(x for x in (reason, message) if x)
        return errors.SandboxNotReady(
            f"sandbox {name} was not Ready within {limit:.0f}s (phase {state.phase or 'unknown'})"
            + (f": {why}" if why else ""), phase=state.phase, reason=reason or "Timeout", name=name,
            namespace=ns)

    def wait_deleted(self, name: str, *, namespace: str | None = None, timeout: float = 120) -> None:
        """Returns once the Sandbox object no longer exists (finalizers done)."""
        ns = self._ns(namespace)
        deadline = time.monotonic() + timeout
        while True:
            try:
                obj = self.api.get_sandbox(name, ns)
            except errors.SandboxNotFound:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.WaitTimeout(f"sandbox {name} still exists after {timeout:.0f}s",
                                         reason="DeletionTimeout", name=name, namespace=ns)
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            for event in self.api.watch_sandboxes(ns, name=name, resource_version=rv, timeout_seconds=remaining,
                                                  known=[obj]):
                if event.get("type") == "DELETED":
                    return

    # Warm pools ------------------------------------------------------------------------------------

    def pools(self, *, namespace: str | None = None, all_namespaces: bool = False) -> builtins.list[PoolInfo]:
        """The SandboxPools in the namespace (or all), with their counts and Ready condition, by name."""
        ns = None if all_namespaces else self._ns(namespace)
        listed = self.api.list_pools(ns)
        return sorted((pool_info(obj) for obj in listed.get("items", [])), key=lambda p: (p.namespace, p.name))

    def get_pool(self, name: str, *, namespace: str | None = None) -> PoolInfo:
        """One SandboxPool (:class:`PoolNotFound` if there is none)."""
        return pool_info(self.api.get_pool(name, self._ns(namespace)))

    # Events ----------------------------------------------------------------------------------------

    def events(self, name: str | None = None, *, namespace: str | None = None, all_namespaces: bool = False,
               labels: Mapping[str, str] | str | None = None, follow: bool = True, history: bool = True,
               timeout: float | None = None, include_kubernetes_events: bool = True) -> EventStream:
        """State changes and Kubernetes Events of one sandbox (``name``) or of all of them.

        ``history`` first yields the current state and the Events Kubernetes still keeps; ``follow`` then
        keeps watching until the stream is closed or ``timeout`` passes.
        """
        ns = None if all_namespaces and not name else self._ns(namespace)
        return EventStream(self.api, ns, name=name, label_selector=_labels_selector(labels),
                           include_kubernetes_events=include_kubernetes_events, follow=follow,
                           history=history, timeout=timeout)

    def subscribe(self, callback: Callable[[SandboxEvent], None], name: str | None = None, *,
                  namespace: str | None = None, history: bool = False,
                  on_error: Callable[[BaseException], None] | None = None) -> Subscription:
        """Calls ``callback`` from a background thread for every event until ``.stop()``."""
        return Subscription(self.events(name, namespace=namespace, history=history), callback, on_error)


REGISTRY_CACHE_SECONDS = 30.0  # the operators' heartbeat is every 60 s, and a stale entry counts after 180 s


class RegistryCache:
    """The operator registry as last read, shared by a manager's waits: when an operator is slow to pick Sandboxes
    up (a burst), every wait would otherwise read the CRD once more. A reading is reused for
    :data:`REGISTRY_CACHE_SECONDS`; one that says nobody serves the namespace is never trusted from the cache."""

    def __init__(self, read: Callable[[], dict[str, str]]) -> None:
        self._read_registry = read
        self._lock = threading.Lock()
        self._read: tuple[float, dict[str, str]] | None = None

    def get(self, *, fresh: bool = False) -> tuple[dict[str, str], bool]:
        """The registry and whether it was read just now (errors from the read are raised)."""
        with self._lock:
            if not fresh and self._read is not None and time.monotonic() - self._read[0] < REGISTRY_CACHE_SECONDS:
                return self._read[1], False
        registry = self._read_registry()
        with self._lock:
            self._read = (time.monotonic(), registry)
        return registry, True


class _OperatorCheck:
    """While waiting for Ready: whether an operator will ever handle the Sandbox (see :mod:`.pickup`)."""

    def __init__(self, registry: RegistryCache, name: str, namespace: str, started: float) -> None:
        self.registry = registry
        self.name = name
        self.namespace = namespace
        self.started = started
        self.pending = True  # still unknown
        self.next_check = started + PICKUP_GRACE_SECONDS
        self._registry: dict[str, str] | None = None
        self._problem: str | None = None
        self._read = False

    def check(self, obj: dict[str, Any], now: float) -> None:
        """Raises :class:`NamespaceNotServed` when nothing will handle the Sandbox; else sets when to look again."""
        if not self.pending:
            return
        picked = picked_up(obj)
        fresh = True
        if not picked and now >= self.started + PICKUP_GRACE_SECONDS and not self._read:
            self._read = True
            try:
                self._registry, fresh = self.registry.get()
            except errors.SandboxError as exc:
                self._problem = str(exc)
        result = self._judge(picked, now)
        if result.outcome is Pickup.NOT_SERVED and not fresh:
            try:
                self._registry, fresh = self.registry.get(fresh=True)
            except errors.SandboxError as exc:
                self._registry, self._problem = None, str(exc)
            result = self._judge(picked, now)
        if result.outcome is Pickup.NOT_SERVED:
            raise errors.NamespaceNotServed(result.message, served=result.served, phase=None, reason="NoOperator",
                                            name=self.name, namespace=self.namespace)
        if result.outcome is Pickup.WAIT:
            self.next_check = self.started + (UNREADABLE_REGISTRY_PATIENCE if self._read else PICKUP_GRACE_SECONDS)
        else:
            self.pending = False
            self.next_check = float("inf")

    def _judge(self, picked: bool, now: float) -> PickupCheck:
        return check_pickup(picked=picked, registry=self._registry, namespace=self.namespace, name=self.name,
                            now=datetime.datetime.now(datetime.UTC), waited=now - self.started,
                            registry_problem=self._problem, grace=PICKUP_GRACE_SECONDS,
                            patience=UNREADABLE_REGISTRY_PATIENCE)

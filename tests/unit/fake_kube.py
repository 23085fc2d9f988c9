"""An in-memory API server for unit tests of the operator's Kubernetes calls and handlers, and the operator's
runtime on it (:func:`make_world`).

:class:`FakeCluster` stands in for the three client classes the operator uses (``core``: CoreV1Api, ``custom``:
CustomObjectsApi, ``networking``: NetworkingV1Api) and answers as the API server does: JSON bodies for
``_preload_content=False``, an :class:`ApiException` carrying a Status body for an error (404 NotFound, 409
AlreadyExists or Conflict on a failed precondition), a new ``resourceVersion`` on every write, ``deletionTimestamp``
instead of removal while finalizers remain, a 409 Conflict for a merge patch whose ``metadata.resourceVersion``
is not the stored one. It records every call, so a test can say what was written and in which order;
:meth:`FakeCluster.fail_next` makes the next call of a method fail with a given status. Custom objects are
Sandboxes or SandboxPools, told apart by their plural.

:class:`Watch` stands in for kopf's watches and the indexes handlers get (``pool_pods``, ``sandbox_pod_uids``,
``pool_pod_policies``): they show the cluster as of its last :meth:`Watch.deliver`, so a test decides when the
watches catch up.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import kopf
import pytest
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.handlers import children, pool, sandbox
from sandbox_operator.handlers.runtime import Runtime
from sandbox_operator.handlers.uids import PodUids
from sandbox_operator.k8s.api import KubeApi
from sandbox_operator.settings import OperatorSettings

JSON = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)
NS = "ns"  # the namespace of the tests' Sandboxes
_SERIALIZER = client.ApiClient()  # client models to the API's JSON, as the real client sends them
WRITES = ("create", "patch", "delete", "replace")
CUSTOM_KINDS = {constants.PLURAL: constants.KIND, constants.POOL_PLURAL: constants.POOL_KIND}


def timestamp(seconds_ago: float = 0) -> str:
    """An RFC 3339 time as the API server writes it (whole seconds, UTC)."""
    when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    @property
    def is_write(self) -> bool:
        return self.method.startswith(WRITES)


@dataclass
class Response:
    """What the client returns for ``_preload_content=False``: the raw body."""

    data: bytes


def api_error(status: int, reason: str, message: str) -> ApiException:
    error = ApiException(status=status, reason=reason)
    error.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                             "reason": reason, "code": status})
    return error


def merge_patch(target: JSON, patch: JSON) -> JSON:
    """RFC 7386: nested objects merge, ``None`` removes a key, anything else replaces."""
    merged = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_patch(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


@dataclass
class FakeCluster:
    objects: dict[Key, JSON] = field(default_factory=dict)
    events: list[JSON] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    # Pods with a grace period linger, deleting, until finish_deleting() (as the kubelet takes its time).
    pods_linger: bool = False
    on_pod_deleted: Callable[[str, str], None] | None = None
    _failures: dict[str, list[ApiException]] = field(default_factory=dict)
    _failures_after: dict[str, list[ApiException]] = field(default_factory=dict)
    # One request at a time, as the API server orders the writes of one object (handlers call from threads).
    _serial: threading.RLock = field(default_factory=threading.RLock)
    _uids: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    _versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.core = _Facade(self, {"read_namespaced_pod": ("Pod", self._read), "create_namespaced_pod": (
            "Pod", self._create), "patch_namespaced_pod": ("Pod", self._patch), "delete_namespaced_pod": (
            "Pod", self._delete), "list_namespaced_event": ("Event", self._list_events)})
        self.networking = _Facade(self, {
            "read_namespaced_network_policy": ("NetworkPolicy", self._read),
            "create_namespaced_network_policy": ("NetworkPolicy", self._create),
            "delete_namespaced_network_policy": ("NetworkPolicy", self._delete)})
        self.custom = _Facade(self, {
            "get_namespaced_custom_object": (constants.KIND, self._read_custom),
            "patch_namespaced_custom_object_status": (constants.KIND, self._patch_status),
            "delete_namespaced_custom_object": (constants.KIND, self._delete_custom)})

    # For tests ----------------------------------------------------------------------------------------------

    def kube_api(self) -> KubeApi:
        """The operator's own API class, its three client objects replaced by this cluster's."""
        api = KubeApi(client.ApiClient())
        api.core = cast(client.CoreV1Api, self.core)
        api.networking = cast(client.NetworkingV1Api, self.networking)
        api.custom = cast(client.CustomObjectsApi, self.custom)
        return api

    def fail_next(self, method: str, status: int, reason: str = "Forbidden", message: str = "denied") -> None:
        self._failures.setdefault(method, []).append(api_error(status, reason, message))

    def fail_next_after_writing(self, method: str, status: int, reason: str = "Timeout",
                                message: str = "the server was unable to return a response in time") -> None:
        """The next call of ``method`` is carried out, then answered with an error: the write was committed and
        its answer lost, as with a 504 Gateway Timeout."""
        self._failures_after.setdefault(method, []).append(api_error(status, reason, message))

    def change(self, kind: str, namespace: str, name: str, patch: JSON) -> JSON:
        """Another writer's merge patch (the kubelet, another claimer): a new resourceVersion, no call recorded."""
        with self._serial:
            return self._store_patched(kind, namespace, name, patch)

    def add(self, kind: str, body: JSON) -> JSON:
        """Stores an object as the API server would have it after a create (uid, version, creation time)."""
        stored = copy.deepcopy(body)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("creationTimestamp", timestamp())
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[(kind, meta["namespace"], meta["name"])] = stored
        return stored

    def get(self, kind: str, namespace: str, name: str) -> JSON | None:
        return self.objects.get((kind, namespace, name))

    def names(self, kind: str) -> list[str]:
        return sorted(name for (k, _ns, name) in self.objects if k == kind)

    def writes(self) -> list[tuple[str, str]]:
        """(method, object name) of every write so far, in order."""
        return [(call.method, _name_of(call)) for call in self.calls if call.is_write]

    def run_pod(self, namespace: str, name: str, *, ready: bool = True) -> JSON:
        """What the scheduler and the kubelet write into a pod that started."""
        pod = self._stored("Pod", namespace, name)
        pod["spec"]["nodeName"] = "node-1"
        pod["status"] = {
            "phase": "Running", "podIP": "10.244.0.7", "startTime": timestamp(),
            "conditions": [{"type": "PodScheduled", "status": "True"},
                           {"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": constants.CONTAINER_NAME, "ready": ready,
                                   "state": {"running": {"startedAt": timestamp()}}}],
        }
        return self._bump(pod)

    def finish_deleting(self, kind: str, namespace: str, name: str) -> None:
        """What the kubelet and the garbage collector do at the end of a graceful deletion."""
        self.objects.pop((kind, namespace, name), None)
        if kind == "Pod" and self.on_pod_deleted is not None:
            self.on_pod_deleted(namespace, name)

    # The API ------------------------------------------------------------------------------------------------

    def _call(self, method: str, kind: str, handler: Callable[..., JSON | None], *args: Any,
              **kwargs: Any) -> Response:
        with self._serial:
            self.calls.append(Call(method, args, kwargs))
            failures = self._failures.get(method)
            if failures:
                raise failures.pop(0)
            answer = json.dumps(handler(kind, *args, **kwargs)).encode()
            failures = self._failures_after.get(method)
            if failures:
                raise failures.pop(0)
            return Response(answer)

    def _missing(self, kind: str, name: str) -> ApiException:
        return api_error(404, "NotFound", f'{kind.lower()}s "{name}" not found')

    def _stored(self, kind: str, namespace: str, name: str) -> JSON:
        found = self.objects.get((kind, namespace, name))
        if found is None:
            raise self._missing(kind, name)
        return found

    def _store_patched(self, kind: str, namespace: str, name: str, patch: JSON) -> JSON:
        """A merge patch; one that changes nothing keeps the version, as on the API server. A
        ``metadata.resourceVersion`` in the patch is a precondition: another one than the stored one is a 409."""
        stored = self._stored(kind, namespace, name)
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != stored["metadata"]["resourceVersion"]:
            raise api_error(409, "Conflict", f'Operation cannot be fulfilled on {kind.lower()}s "{name}": the '
                                             "object has been modified; please apply your changes to the latest "
                                             "version and try again")
        patched = merge_patch(stored, patch)
        if patched != stored:
            self.objects[(kind, namespace, name)] = patched = self._bump(patched)
        return patched

    def _bump(self, body: JSON) -> JSON:
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        return body

    def _read(self, kind: str, name: str, namespace: str, **_: Any) -> JSON:
        return self._stored(kind, namespace, name)

    def _create(self, kind: str, namespace: str, body: Any, **_: Any) -> JSON:
        data: JSON = _SERIALIZER.sanitize_for_serialization(body)  # type: ignore[no-untyped-call]
        name = data["metadata"]["name"]
        if (kind, namespace, name) in self.objects:
            raise api_error(409, "AlreadyExists", f'{kind.lower()}s "{name}" already exists')
        if kind == "Pod":
            data["status"] = {"phase": "Pending"}
        return self.add(kind, {**data, "metadata": {**data["metadata"], "namespace": namespace}})

    def _patch(self, kind: str, name: str, namespace: str, body: JSON, **_: Any) -> JSON:
        return self._store_patched(kind, namespace, name, body)

    def _delete(self, kind: str, name: str, namespace: str, body: client.V1DeleteOptions | None = None,
                **_: Any) -> JSON:
        stored = self._stored(kind, namespace, name)
        self._check_preconditions(stored, body)
        grace = body.grace_period_seconds if body is not None else None
        if kind == "Pod" and self.pods_linger and grace != 0:
            stored["metadata"].setdefault("deletionTimestamp", timestamp())
            return self._bump(stored)
        self.finish_deleting(kind, namespace, name)
        return {"kind": "Status", "status": "Success"}

    def _check_preconditions(self, stored: JSON, options: client.V1DeleteOptions | None) -> None:
        preconditions = options.preconditions if options is not None else None
        if preconditions is None:
            return
        meta = stored["metadata"]
        if preconditions.uid and preconditions.uid != meta["uid"]:
            raise api_error(409, "Conflict", f"Precondition failed: UID in precondition: {preconditions.uid}, "
                                             f"UID in object meta: {meta['uid']}")
        if preconditions.resource_version and preconditions.resource_version != meta["resourceVersion"]:
            raise api_error(409, "Conflict", "Precondition failed: ResourceVersion in precondition: "
                                             f"{preconditions.resource_version}, ResourceVersion in object meta: "
                                             f"{meta['resourceVersion']}")

    def _list_events(self, _kind: str, namespace: str, field_selector: str = "", **_: Any) -> JSON:
        wanted = dict(term.split("=", 1) for term in field_selector.split(",") if term)
        paths = {"involvedObject.uid": ("involvedObject", "uid"), "reason": ("reason",)}

        def matches(event: JSON) -> bool:
            for selector, value in wanted.items():
                found: Any = event
                for part in paths[selector]:
                    found = (found or {}).get(part)
                if found != value:
                    return False
            return True

        items = [e for e in self.events if e.get("metadata", {}).get("namespace") == namespace and matches(e)]
        return {"kind": "EventList", "items": items}

    def _read_custom(self, _kind: str, _group: str, _version: str, namespace: str, plural: str, name: str,
                     **_: Any) -> JSON:
        return self._stored(CUSTOM_KINDS[plural], namespace, name)

    def _patch_status(self, _kind: str, _group: str, _version: str, namespace: str, plural: str, name: str,
                      body: JSON, **_: Any) -> JSON:
        # The status subresource: only the status changes.
        return self._store_patched(CUSTOM_KINDS[plural], namespace, name, {"status": body.get("status")})

    def _delete_custom(self, _kind: str, _group: str, _version: str, namespace: str, plural: str, name: str,
                       body: client.V1DeleteOptions | None = None, **_: Any) -> JSON:
        kind = CUSTOM_KINDS[plural]
        stored = self._stored(kind, namespace, name)
        self._check_preconditions(stored, body)
        if stored["metadata"].get("finalizers"):
            if not stored["metadata"].get("deletionTimestamp"):
                stored["metadata"]["deletionTimestamp"] = timestamp()
                self._bump(stored)
            return stored
        self.finish_deleting(kind, namespace, name)
        return {"kind": "Status", "status": "Success"}


def _name_of(call: Call) -> str:
    """The object name a recorded call is about: the ``name`` argument, or the created body's."""
    if call.method.startswith("create"):
        body = call.args[-1]
        return str(body.metadata.name)
    if call.method.endswith("custom_object") or call.method.endswith("custom_object_status"):
        return str(call.args[4])
    return str(call.args[0])


class _Facade:
    """One client class of the fake: each named method records the call and answers from the cluster."""

    def __init__(self, cluster: FakeCluster, methods: dict[str, tuple[str, Callable[..., JSON | None]]]) -> None:
        self._cluster = cluster
        self._methods = methods

    def __getattr__(self, method: str) -> Callable[..., Response]:
        if method.startswith("__") or method not in self._methods:
            raise AttributeError(f"the fake API has no {method} (add it to tests/unit/fake_kube.py)")
        kind, handler = self._methods[method]

        def call(*args: Any, **kwargs: Any) -> Response:
            return self._cluster._call(method, kind, handler, *args, **kwargs)

        return call


def sandbox_body(name: str, namespace: str = NS, spec: JSON | None = None, **meta: Any) -> JSON:
    """A Sandbox as kopf hands it to the create handler: stored, with the operator's finalizer, no status yet."""
    return {"apiVersion": constants.API_VERSION, "kind": constants.KIND,
            "metadata": {"name": name, "namespace": namespace, "generation": 1,
                         "finalizers": [constants.FINALIZER], **meta},
            "spec": spec or {}}


def pool_body(name: str, size: int, template: JSON | None = None, namespace: str = NS) -> JSON:
    """A SandboxPool as the API server stores it before the operator wrote its status."""
    return {"apiVersion": constants.API_VERSION, "kind": constants.POOL_KIND,
            "metadata": {"name": name, "namespace": namespace, "generation": 1},
            "spec": {"size": size, "template": template or {}}}


IndexKey = TypeVar("IndexKey")
IndexValue = TypeVar("IndexValue")


class WatchIndex(Mapping[IndexKey, list[IndexValue]], Generic[IndexKey, IndexValue]):
    """A kopf index as handlers get it: a live mapping from a key to the values of every object indexed under it."""

    def __init__(self) -> None:
        self._entries: dict[IndexKey, list[IndexValue]] = {}

    def __getitem__(self, key: IndexKey) -> list[IndexValue]:
        return self._entries[key]

    def __iter__(self) -> Iterator[IndexKey]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def fill(self, entries: dict[IndexKey, list[IndexValue]]) -> None:
        self._entries = entries


@dataclass
class Watch:
    """kopf's watches and the indexes they fill (``pool_pods``, ``sandbox_pod_uids``, ``pool_pod_policies``),
    computed by the operator's own index functions under their label filters. They show the objects as of the
    last :meth:`deliver`, so a test decides when the watches catch up with the API server."""

    cluster: FakeCluster
    pool_pods: WatchIndex[tuple[str, str], JSON] = field(default_factory=WatchIndex)
    sandbox_pod_uids: WatchIndex[int, tuple[str, str]] = field(default_factory=WatchIndex)
    pool_pod_policies: WatchIndex[str, str] = field(default_factory=WatchIndex)

    def deliver(self) -> None:
        by_pool: dict[Any, list[Any]] = {}
        by_uid: dict[Any, list[Any]] = {}
        by_pod: dict[Any, list[Any]] = {}
        for (kind, _namespace, _name), stored in sorted(self.cluster.objects.items()):
            labels = stored["metadata"].get("labels") or {}
            if labels.get(constants.LABEL_MANAGED_BY) != constants.MANAGER_NAME:
                continue
            body = copy.deepcopy(stored)
            if kind == "Pod":
                _index(by_uid, children.sandbox_pod_uids, body)
                if constants.LABEL_POOL in labels:
                    _index(by_pool, pool.pool_pods, body)
            elif kind == "NetworkPolicy" and constants.LABEL_POOL_POD in labels:
                _index(by_pod, pool.pool_pod_policies, body)
        self.pool_pods.fill(by_pool)
        self.sandbox_pod_uids.fill(by_uid)
        self.pool_pod_policies.fill(by_pod)

    def indexes(self) -> dict[str, Any]:
        """The indexes as kopf passes them to every handler."""
        return {"pool_pods": self.pool_pods, "sandbox_pod_uids": self.sandbox_pod_uids,
                "pool_pod_policies": self.pool_pod_policies}


def _index(entries: dict[Any, list[Any]], index_fn: object, body: JSON) -> None:
    """Adds what a kopf index function returns for ``body`` (kopf types the function as its callback protocol,
    see :func:`handler`)."""
    for key, value in cast(Callable[..., dict[Any, Any]], index_fn)(body=body).items():
        entries.setdefault(key, []).append(value)


# The operator's runtime on the fake cluster ------------------------------------------------------------------

LOGGER = cast(kopf.Logger, logging.getLogger("test-handlers"))


def handler(fn: object) -> Callable[..., Awaitable[None]]:
    """A kopf handler as the coroutine function it is (kopf's decorators type it as kopf's callback protocol,
    whose every keyword kopf passes; a test passes those the handler uses)."""
    return cast(Callable[..., Awaitable[None]], fn)


@dataclass
class World:
    """The fake API server, the operator's runtime on kopf's memo, and the Events the handlers posted."""

    cluster: FakeCluster
    memo: kopf.Memo
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    event_subjects: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) of each Event's object

    @property
    def runtime(self) -> Runtime:
        return cast(Runtime, self.memo.runtime)

    def sandbox(self, name: str = "a") -> JSON:
        found = self.cluster.get(constants.KIND, NS, name)
        assert found is not None, f"Sandbox {name} is gone"
        return found

    def body(self, name: str = "a") -> kopf.Body:
        """The Sandbox as kopf would hand it over now (a copy: the handler's view does not change under it)."""
        return cast(kopf.Body, copy.deepcopy(self.sandbox(name)))

    def status(self, name: str = "a") -> JSON:
        return dict(self.sandbox(name).get("status") or {})

    def reasons(self) -> list[str]:
        return [reason for _type, reason, _message in self.events]

    def events_about(self, kind: str, name: str) -> list[tuple[str, str, str]]:
        return [event for event, subject in zip(self.events, self.event_subjects, strict=True)
                if subject == (kind, name)]

    def snapshot(self) -> dict[tuple[str, str, str], str]:
        """Every object's version: equal snapshots mean nothing was written."""
        return {key: body["metadata"]["resourceVersion"] for key, body in self.cluster.objects.items()}

    def writes_after(self, calls: int) -> list[str]:
        """The write requests (successful or not) sent after the first ``calls`` calls."""
        return [call.method for call in self.cluster.calls[calls:] if call.is_write]

    async def create(self, name: str = "a", pod_uids: PodUids | None = None) -> None:
        """The create handler, with kopf's index of the host UIDs sandbox pods run as (empty unless given)."""
        await handler(sandbox.create_fn)(body=self.body(name), memo=self.memo, logger=LOGGER,
                                         sandbox_pod_uids=pod_uids or {})


def make_world(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> World:
    cluster = FakeCluster()
    memo = kopf.Memo()
    memo.runtime = Runtime(settings=OperatorSettings(**settings), api=cluster.kube_api())
    world = World(cluster, memo)

    def record(body: Any, *, type: str, reason: str, message: str = "") -> None:
        world.events.append((type, reason, message))
        world.event_subjects.append((str(body.get("kind")), str((body.get("metadata") or {}).get("name"))))

    monkeypatch.setattr(kopf, "event", record)  # kopf posts Events from a queue it runs; here they are kept
    return world

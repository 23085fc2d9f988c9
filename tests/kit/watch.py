"""Watches that record what they see, in a thread: a list first, then a watch from the list's version, so that
nothing that happens after :meth:`WatchThread.wait_ready` can be missed (no "give the watch a second" sleeps)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import urllib3
from kubernetes import client, watch
from kubernetes.client import ApiException

from sandbox_operator import constants
from tests.kit.kube import sandbox_manifest
from tests.kit.wait import WaitTimeoutError, wait_until

JSON = dict[str, Any]
WATCH_SECONDS = 5  # each watch request ends after this, so stop() takes effect within it
HTTP_GONE = 410


class WatchThread:
    """Calls ``handle(event_type, object)`` for every object of one collection, the object as a JSON dict: ADDED
    for each one the first list finds, then each watch event. A watch that ends resumes from the last version
    seen; one whose version expired (410 Gone) lists again. ``list_fn`` is a ``list_*`` method of the client,
    with its positional and keyword arguments (namespace, ``label_selector``, ...)."""

    def __init__(self, list_fn: Callable[..., Any], handle: Callable[[str, JSON], None], *args: Any,
                 **kwargs: Any) -> None:
        self.ready = threading.Event()
        self._list_fn, self._handle, self._args, self._kwargs = list_fn, handle, args, kwargs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{list_fn.__name__}")
        self._thread.start()

    def wait_ready(self, timeout: float = 30) -> None:
        if not self.ready.wait(timeout):
            raise TimeoutError(f"the watch of {self._list_fn.__name__} did not start within {timeout:g} s")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=WATCH_SECONDS + 5)

    def _list(self) -> str:
        response = self._list_fn(*self._args, _preload_content=False, **self._kwargs)
        listed: JSON = json.loads(response.data)
        for item in listed.get("items") or []:
            self._handle("ADDED", item)
        self.ready.set()
        return str(listed["metadata"]["resourceVersion"])

    def _run(self) -> None:
        version: str | None = None
        while not self._stop.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                if version is None:
                    version = self._list()
                for event in stream.stream(  # type: ignore[no-untyped-call]
                        self._list_fn, *self._args, resource_version=version, timeout_seconds=WATCH_SECONDS,
                        allow_watch_bookmarks=True, **self._kwargs):
                    obj: JSON = event["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        self._handle(event["type"], obj)
                    if self._stop.is_set():
                        break
            except ApiException as error:
                if error.status == HTTP_GONE:
                    version = None
                else:
                    self._stop.wait(0.2)
            except (urllib3.exceptions.HTTPError, OSError):  # the connection dropped: watch again
                self._stop.wait(0.2)
            finally:
                stream.stop()  # type: ignore[no-untyped-call]


class PhaseRecorder:
    """Every phase one Sandbox is seen in, in order (transient ones included), and whether it was deleted."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str) -> None:
        self.phases: list[str] = []
        self.deleted = threading.Event()
        self._watch = WatchThread(client.CustomObjectsApi(api).list_namespaced_custom_object, self._seen,
                                  constants.GROUP, constants.VERSION, namespace, constants.PLURAL,
                                  field_selector=f"metadata.name={name}")
        self._watch.wait_ready()

    def _seen(self, event_type: str, obj: JSON) -> None:
        phase = (obj.get("status") or {}).get("phase")
        if phase and (not self.phases or self.phases[-1] != phase):
            self.phases.append(phase)
        if event_type == "DELETED":
            self.deleted.set()

    def stop(self) -> None:
        self._watch.stop()


class CreationTimes:
    """Creates Sandboxes in one namespace and times each from just before its create request: to the first watch
    event that shows its pod (the operator's latency), and to the first that shows it Ready; a Sandbox that ends
    Failed or Expired is noted with why. Times are ``time.monotonic()`` seconds."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.custom = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.started: dict[str, float] = {}
        self.pod_seen: dict[str, float] = {}
        self.ready_seen: dict[str, float] = {}
        self.failed: dict[str, str] = {}
        self._watches = [
            WatchThread(client.CoreV1Api(api).list_namespaced_pod, self._pod, namespace,
                        label_selector=constants.LABEL_SANDBOX),
            WatchThread(self.custom.list_namespaced_custom_object, self._sandbox,
                        constants.GROUP, constants.VERSION, namespace, constants.PLURAL),
        ]
        for started in self._watches:
            started.wait_ready()

    def create(self, name: str, spec: JSON) -> None:
        self.started[name] = time.monotonic()
        self.custom.create_namespaced_custom_object(constants.GROUP, constants.VERSION, self.namespace,
                                                    constants.PLURAL, sandbox_manifest(self.namespace, name, spec))

    def wait_settled(self, names: list[str], timeout: float) -> bool:
        """Waits until each of ``names`` is Ready or failed; True if all are Ready (False also on a timeout)."""
        try:
            wait_until(lambda: all(name in self.ready_seen or name in self.failed for name in names), timeout,
                       interval=0.05, message=f"{len(names)} Sandboxes Ready or failed")
        except WaitTimeoutError:
            return False
        return all(name in self.ready_seen for name in names)

    def to_pod(self, names: list[str]) -> list[float]:
        return [self.pod_seen[name] - self.started[name] for name in names if name in self.pod_seen]

    def to_ready(self, names: list[str]) -> list[float]:
        return [self.ready_seen[name] - self.started[name] for name in names if name in self.ready_seen]

    def delete_all(self, timeout: float = 180) -> None:
        """Deletes every Sandbox of the namespace and waits (at most ``timeout``) until they are gone."""
        self.custom.delete_collection_namespaced_custom_object(constants.GROUP, constants.VERSION, self.namespace,
                                                               constants.PLURAL)
        with contextlib.suppress(WaitTimeoutError):
            wait_until(lambda: not self._sandboxes(), timeout, interval=0.5,
                       message=f"the Sandboxes of {self.namespace} gone")

    def _sandboxes(self) -> list[JSON]:
        listed = cast(JSON, self.custom.list_namespaced_custom_object(constants.GROUP, constants.VERSION,
                                                                      self.namespace, constants.PLURAL))
        return list(listed["items"])

    def _pod(self, _event_type: str, obj: JSON) -> None:
        name = ((obj.get("metadata") or {}).get("labels") or {}).get(constants.LABEL_SANDBOX)
        if name and name not in self.pod_seen:
            self.pod_seen[name] = time.monotonic()

    def _sandbox(self, _event_type: str, obj: JSON) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if status.get("phase") == "Ready" and name not in self.ready_seen:
            self.ready_seen[name] = time.monotonic()
        elif status.get("phase") in ("Failed", "Expired"):
            self.failed[name] = f"{status.get('phase')}: {status.get('reason')} {status.get('message')}"

    def stop(self) -> None:
        for started in self._watches:
            started.stop()

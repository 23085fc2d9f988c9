"""Events of sandboxes: their state changes and the Kubernetes Events about them, as one stream.

Two kinds of :class:`SandboxEvent`:

* ``kind="state"``: a Sandbox was created (``reason="Created"``), changed phase (``reason`` = the new phase,
  e.g. ``Ready``) or was deleted (``reason="Deleted"``); from a watch on the Sandbox objects.
* ``kind="event"``: a Kubernetes Event about the Sandbox, or about its pod (which has the same name), e.g.
  ``Scheduled``, ``Pulled``, ``Started``, or the operator's own events.

For one sandbox both kinds are selected by name; for all sandboxes, Kubernetes Events are those whose
``involvedObject.kind`` is ``Sandbox``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from sandbox_operator import constants
from sandbox_operator.models.timestamps import Time, parse_time
from sandbox_operator.sdk._kube import KubeApi, WatchStopper

EventKind = Literal["state", "event"]


class SandboxEvent(BaseModel):
    """One state change of a Sandbox (``kind="state"``) or one Kubernetes Event about it (``kind="event"``)."""

    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)

    kind: EventKind
    type: str
    """state: ADDED, MODIFIED, DELETED or EXISTING (already there when the stream began); event: Normal or
    Warning."""
    reason: str
    """state: Created, Deleted, Terminating or the new phase; event: the Event's reason."""
    name: str
    namespace: str
    message: str = ""
    phase: str | None = None
    timestamp: Time | None = None
    involved_kind: str | None = None
    object: dict[str, Any] = Field(default_factory=dict, repr=False, exclude=True)
    """The Sandbox or Event object the event came from."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``sandboxctl events -o json`` prints."""
        return self.model_dump(mode="json", by_alias=True)


def _phase(obj: dict[str, Any]) -> str | None:
    return (obj.get("status") or {}).get("phase")


def state_event(etype: str, obj: dict[str, Any], previous_phase: str | None,
                *, existing: bool = False) -> SandboxEvent | None:
    """The state event for one watch event, or None when nothing a user cares about changed."""
    meta = obj.get("metadata") or {}
    phase = _phase(obj)
    status = obj.get("status") or {}
    ready_cond: dict[str, Any] = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    transition = parse_time(ready_cond.get("lastTransitionTime"))
    created = parse_time(meta.get("creationTimestamp"))
    deleting = bool(meta.get("deletionTimestamp"))
    when: datetime | None
    if existing:
        reason, kind, when = (phase or "Created"), "EXISTING", transition or created
    elif etype == "ADDED":
        reason, kind, when = "Created", "ADDED", created
    elif etype == "DELETED":
        reason, kind, when = "Deleted", "DELETED", None
    elif etype == "MODIFIED":
        if deleting and previous_phase != "Terminating":
            reason, kind, when = "Terminating", "MODIFIED", parse_time(meta.get("deletionTimestamp"))
        elif not deleting and phase and phase != previous_phase:
            reason, kind = phase, "MODIFIED"
            when = parse_time(status.get("readyTime")) if phase == "Ready" else transition
        else:
            return None
    else:
        return None
    return SandboxEvent(
        kind="state", type=kind, reason=reason, name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace", "")), message=str(status.get("message") or ""), phase=phase,
        timestamp=when or datetime.now(UTC), involved_kind=constants.KIND, object=obj)


def kube_event(obj: dict[str, Any]) -> SandboxEvent:
    involved = obj.get("involvedObject") or {}
    when = (parse_time(obj.get("lastTimestamp")) or parse_time(obj.get("eventTime"))
            or parse_time(obj.get("firstTimestamp"))
            or parse_time((obj.get("metadata") or {}).get("creationTimestamp")))
    return SandboxEvent(
        kind="event", type=str(obj.get("type") or "Normal"), reason=str(obj.get("reason") or ""),
        name=str(involved.get("name", "")), namespace=str(involved.get("namespace", "")),
        message=str(obj.get("message") or ""), timestamp=when, involved_kind=involved.get("kind"), object=obj)


def event_selector(name: str | None) -> str:
    """Field selector for Kubernetes Events about one sandbox (and its same-named pod) or all Sandboxes."""
    return f"involvedObject.name={name}" if name else f"involvedObject.kind={constants.KIND}"


def _is_relevant(obj: dict[str, Any], name: str | None) -> bool:
    involved = obj.get("involvedObject") or {}
    if name:
        return involved.get("kind") in (constants.KIND, "Pod")
    return involved.get("kind") == constants.KIND


def _sort_key(event: SandboxEvent) -> float:
    return event.timestamp.timestamp() if event.timestamp else 0.0


class EventStream:
    """An iterator of :class:`SandboxEvent`; with ``follow`` it keeps watching until :meth:`close`, the
    ``timeout``, or the end of iteration. Use it as a context manager."""

    def __init__(self, api: KubeApi, namespace: str | None, *, name: str | None = None,
                 label_selector: str | None = None, include_kubernetes_events: bool = True,
                 follow: bool = True, history: bool = True, timeout: float | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.label_selector = label_selector
        self.include_kubernetes_events = include_kubernetes_events
        self.follow = follow
        self.history = history
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._queue: queue.Queue[SandboxEvent | BaseException | None] = queue.Queue()
        self._stoppers: list[WatchStopper] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._iter = self._generate()

    def __iter__(self) -> Iterator[SandboxEvent]:
        return self

    def __next__(self) -> SandboxEvent:
        return next(self._iter)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        for stopper in list(self._stoppers):
            stopper.stop()
        self._queue.put(None)

    def _remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _generate(self) -> Iterator[SandboxEvent]:
        sandboxes = self.api.list_sandboxes(self.namespace, self.label_selector)
        items = [o for o in sandboxes.get("items", []) if not self.name
                 or (o.get("metadata") or {}).get("name") == self.name]
        phases = {((o.get("metadata") or {}).get("namespace"), (o.get("metadata") or {}).get("name")):
                  _phase(o) for o in items}
        sandbox_rv = (sandboxes.get("metadata") or {}).get("resourceVersion")
        initial: list[SandboxEvent] = []
        if self.history:
            for o in items:
                ev = state_event("ADDED", o, None, existing=True)
                if ev:
                    initial.append(ev)
        events: dict[str, Any] = {}
        if self.include_kubernetes_events:
            events = self.api.list_events(self.namespace, event_selector(self.name))
            if self.history:
                initial += [kube_event(o) for o in events.get("items", []) if _is_relevant(o, self.name)]
        initial.sort(key=_sort_key)
        yield from initial
        if not self.follow or self._closed.is_set():
            return
        self._start(self._pump_sandboxes, sandbox_rv, phases, items)
        if self.include_kubernetes_events:
            self._start(self._pump_events, (events.get("metadata") or {}).get("resourceVersion"),
                        events.get("items", []))
        try:
            while not self._closed.is_set():
                remaining = self._remaining()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    item = self._queue.get(timeout=None if remaining is None else max(0.05, remaining))
                except queue.Empty:
                    return
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=self._guard, args=(target, *args), daemon=True,
                                  name=f"sandbox-events-{target.__name__}")
        self._threads.append(thread)
        thread.start()

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except BaseException as exc:
            if not self._closed.is_set():
                self._queue.put(exc)

    def _pump_sandboxes(self, rv: str | None, phases: dict[tuple[Any, Any], str | None],
                        known: list[dict[str, Any]]) -> None:
        for raw in self.api.watch_sandboxes(self.namespace, name=self.name, label_selector=self.label_selector,
                                            resource_version=rv, timeout_seconds=self._remaining(), known=known,
                                            stopper=self._stoppers):
            obj = raw.get("object") or {}
            meta = obj.get("metadata") or {}
            key = (meta.get("namespace"), meta.get("name"))
            ev = state_event(str(raw.get("type")), obj, phases.get(key))
            if raw.get("type") == "DELETED":
                phases.pop(key, None)
            elif ev is not None and ev.reason == "Terminating":
                phases[key] = "Terminating"
            else:
                phases[key] = _phase(obj)
            if ev is not None:
                self._queue.put(ev)

    def _pump_events(self, rv: str | None, known: list[dict[str, Any]]) -> None:
        for raw in self.api.watch_events(self.namespace, field_selector=event_selector(self.name),
                                         resource_version=rv, timeout_seconds=self._remaining(), known=known,
                                         stopper=self._stoppers):
            if raw.get("type") in ("ADDED", "MODIFIED"):
                obj = raw.get("object") or {}
                if _is_relevant(obj, self.name):
                    self._queue.put(kube_event(obj))


class Subscription:
    """Calls ``callback`` for each event from a background thread until :meth:`stop`."""

    def __init__(self, stream: EventStream, callback: Callable[[SandboxEvent], None],
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.stream = stream
        self.error: BaseException | None = None
        self._callback = callback
        self._on_error = on_error
        self._thread = threading.Thread(target=self._run, name="sandbox-subscription", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                self._callback(event)
        except BaseException as exc:
            self.error = exc
            if self._on_error is not None:
                self._on_error(exc)

    def stop(self, timeout: float = 5) -> None:
        self.stream.close()
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

"""What the handlers share for the life of the process, kept on kopf's ``memo``."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox_operator.handlers.uids import Key, UidPool
from sandbox_operator.k8s.api import JSON, KubeApi, make_api_client
from sandbox_operator.metrics import PhaseTracker
from sandbox_operator.settings import OperatorSettings, get_settings

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: OperatorSettings
    api: KubeApi
    phases: PhaseTracker = field(default_factory=PhaseTracker)
    uids: UidPool = field(init=False)
    _locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    _pod_gone: dict[Key, asyncio.Event] = field(default_factory=dict)
    _sandboxes: dict[Key, JSON] = field(default_factory=dict)
    _children: dict[Key, str] = field(default_factory=dict)
    _pods: dict[Key, JSON] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.uids = UidPool(self.settings.sandbox_uids)

    def lock(self, key: Key) -> asyncio.Lock:
        """Serialises status writes per Sandbox (pod events and Sandbox handlers run concurrently)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def pod_gone(self, key: Key) -> asyncio.Event:
        """An event set when the watch sees the Sandbox's pod deleted (the delete handler waits on it)."""
        event = self._pod_gone.get(key)
        if event is None:
            event = self._pod_gone[key] = asyncio.Event()
        return event

    def notify_pod_gone(self, key: Key) -> None:
        event = self._pod_gone.get(key)
        if event is not None:
            event.set()

    def remember(self, body: Mapping[str, Any]) -> None:
        """Keeps the latest version of a Sandbox seen (watch events, handler bodies, our own writes), so status
        syncs need not read it again."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        known = self._sandboxes.get(key)
        if known is None or not _older(meta, known.get("metadata") or {}):
            self._sandboxes[key] = dict(body)

    def latest(self, key: Key) -> JSON | None:
        """The latest version of the Sandbox this process has seen, if any (possibly stale)."""
        return self._sandboxes.get(key)

    def remember_pod(self, key: Key, body: Mapping[str, Any] | None) -> None:
        """Keeps the latest version of a Sandbox's pod seen (None: it is gone)."""
        if body is None:
            self._pods.pop(key, None)
            return
        known = self._pods.get(key)
        if known is None or not _older(body.get("metadata") or {}, known.get("metadata") or {}):
            self._pods[key] = dict(body)

    def latest_pod(self, key: Key) -> JSON | None:
        return self._pods.get(key)

    def children_made(self, key: Key, sandbox_uid: str) -> bool:
        """Whether this process already created or adopted the policy and pod of this very Sandbox."""
        return self._children.get(key) == sandbox_uid

    def note_children_made(self, key: Key, sandbox_uid: str) -> None:
        self._children[key] = sandbox_uid

    def forget(self, key: Key) -> None:
        self._sandboxes.pop(key, None)
        self._pods.pop(key, None)
        self._children.pop(key, None)
        self._pod_gone.pop(key, None)
        self.uids.release(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self.phases.set(key, None)


def _older(candidate: Mapping[str, Any], known: Mapping[str, Any]) -> bool:
    """Whether ``candidate`` metadata is an older version of the same object than ``known``. Resource versions
    are opaque in general; etcd's are integers, and anything else is taken as news."""
    if candidate.get("uid") != known.get("uid"):
        return False
    try:
        return int(str(candidate.get("resourceVersion"))) < int(str(known.get("resourceVersion")))
    except ValueError:
        return False


def runtime(memo: Any) -> Runtime:
    """The Runtime on ``memo``, made on first use (so ``kopf run -m sandbox_operator.handlers`` works too)."""
    existing = getattr(memo, "runtime", None)
    if isinstance(existing, Runtime):
        return existing
    settings = get_settings()
    created = Runtime(settings=settings, api=KubeApi(make_api_client(settings.api_workers)))
    memo.runtime = created
    return created


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def failpoint(settings: OperatorSettings, name: str) -> None:
    """Test-only: at the configured point, say so and stop the whole process (SIGSTOP) until the test kills it.

    Called from the worker thread right after the step, so no other handler (such as the pod watch's status
    sync) runs in between: integration tests kill the operator between two steps deterministically."""
    if settings.failpoint != name:
        return
    logger.error("FAILPOINT %s reached (pid %d); stopping until killed", name, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGSTOP)

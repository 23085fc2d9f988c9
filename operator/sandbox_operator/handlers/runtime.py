"""What the handlers share for the life of the process, kept on kopf's ``memo``."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from sandbox_operator.handlers.uids import Key, UidPool
from sandbox_operator.k8s.api import KubeApi, make_api_client
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

    def forget(self, key: Key) -> None:
        self._pod_gone.pop(key, None)
        self.uids.release(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self.phases.set(key, None)


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

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
from sandbox_operator.models.pool import spec_with_overrides
from sandbox_operator.models.sandbox import InvalidSpecError, Sandbox, SandboxSpec, SandboxTemplate
from sandbox_operator.settings import OperatorSettings, get_settings

logger = logging.getLogger(__name__)


@dataclass
class PoolRefill:
    """The refill of one SandboxPool: one pass at a time, and one more after it when news came in meanwhile."""

    running: bool = False
    again: bool = False
    unseen: dict[str, tuple[JSON, float]] = field(default_factory=dict)
    """Pods this process created (by UID, with the monotonic time of the create) that the watch has not
    delivered yet: counted, so a refill never overshoots."""
    policy_for: str | None = None
    """The pool UID whose deny-all policy this process made or adopted."""
    template: tuple[str, str] | None = None
    """(pool UID/generation, template hash) of the pool version last seen."""
    last_claim: float = 0.0
    """Monotonic time of this process's latest claim from the pool (the refill lets a burst of claims pass)."""


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
    _pools: dict[Key, JSON] = field(default_factory=dict)
    _pool_templates: dict[Key, SandboxTemplate] = field(default_factory=dict)
    refills: dict[Key, PoolRefill] = field(default_factory=dict)
    picked_pool_pods: set[str] = field(default_factory=set)
    """UIDs of pool pods that claims in this process picked: never offered to another claim."""
    pool_pods: Any = None
    """kopf's ``pool_pods`` index (pool pods by (namespace, pool)), a live view kept from the first handler."""
    pool_ticker: asyncio.Task[None] | None = None
    collector: asyncio.Task[None] | None = None
    """The collector's one loop (:mod:`sandbox_operator.handlers.collector`)."""
    collection_index: Any = None
    """kopf's ``sandbox_collection`` index, a live view kept from the start-up handler."""
    covered_pool_pods: set[str] = field(default_factory=set)
    """UIDs of pool pods whose own deny-all policy this process made or adopted."""
    pool_pod_policies: Any = None
    """kopf's ``pool_pod_policies`` index (pool pods' own policies by the pod's UID), a live view."""

    def covered_pods(self) -> set[str]:
        """Pool pods known to have their own deny-all policy (made here, or seen by the watch)."""
        seen = set(self.pool_pod_policies.keys()) if self.pool_pod_policies is not None else set()
        return self.covered_pool_pods | seen

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

    def remember_pool(self, body: Mapping[str, Any]) -> None:
        """Keeps the latest version of a SandboxPool seen (its watch events and the status writes)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        known = self._pools.get(key)
        if known is None or not _older(meta, known.get("metadata") or {}):
            self._pools[key] = dict(body)

    def latest_pool(self, key: Key) -> JSON | None:
        return self._pools.get(key)

    def known_pools(self) -> list[Key]:
        return list(self._pools)

    def forget_pool(self, key: Key) -> None:
        self._pools.pop(key, None)
        self.refills.pop(key, None)

    def pods_of_pool(self, key: Key) -> list[JSON]:
        """The pool's pods as the watch delivered them (claimed ones included: they keep the pool's label)."""
        if self.pool_pods is None:
            return []
        return [dict(pod) for pod in self.pool_pods.get(key, ())]

    def set_pool_template(self, key: Key, template: SandboxTemplate) -> None:
        """The template of the pool a pooled Sandbox came from (read when it got its pod, or on a resume)."""
        self._pool_templates[key] = template

    def run_view(self, sandbox: Sandbox) -> Sandbox:
        """The Sandbox with the spec it runs: for one with poolRef, its pool's template with its current overrides
        (so a lowered lifetime or a new idle timeout applies), once the template is known; else as it is."""
        template = self._pool_templates.get((sandbox.namespace, sandbox.name))
        if template is None or sandbox.spec.pool_ref is None:
            return sandbox
        try:
            merged = spec_with_overrides(template, sandbox.spec)
        except InvalidSpecError:
            return sandbox
        return sandbox.model_copy(
            update={"spec": SandboxSpec.model_validate(merged.model_dump(by_alias=True, exclude_none=True))})

    def children_made(self, key: Key, sandbox_uid: str) -> bool:
        """Whether this process already created or adopted the policy and pod of this very Sandbox."""
        return self._children.get(key) == sandbox_uid

    def note_children_made(self, key: Key, sandbox_uid: str) -> None:
        self._children[key] = sandbox_uid

    def forget(self, key: Key) -> None:
        self._sandboxes.pop(key, None)
        self._pods.pop(key, None)
        self._children.pop(key, None)
        self._pool_templates.pop(key, None)
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

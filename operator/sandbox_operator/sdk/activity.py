"""Activity heartbeats: the SDK's side of idle collection.

The operator cannot see exec traffic, so every SDK call on a sandbox records activity on the Sandbox object:
an RFC 3339 UTC timestamp in the annotation :data:`sandbox_operator.constants.ANNOTATION_LAST_ACTIVITY`,
written with a JSON merge patch. Writes are throttled (at most one per ``interval`` per sandbox), and while a
command runs a background thread keeps refreshing it, so a long command never looks idle.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

from sandbox_operator import constants
from sandbox_operator.models.timestamps import format_time
from sandbox_operator.sdk import errors
from sandbox_operator.sdk._kube import KubeApi

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 10.0
MIN_INTERVAL = 1.0

Key = tuple[str, str]  # (namespace, name)


def activity_patch(moment: datetime | None = None) -> dict[str, object]:
    """The merge patch that records activity (now, unless ``moment`` is given)."""
    return {"metadata": {"annotations": {constants.ANNOTATION_LAST_ACTIVITY: format_time(moment or datetime.now(UTC))}}}


def interval_for(idle_seconds: float | None, default: float = DEFAULT_INTERVAL) -> float:
    """The heartbeat interval: ``default``, but at most a quarter of the idle timeout, so that even with
    the collector's own period a busy sandbox is never seen idle."""
    if idle_seconds is None or idle_seconds <= 0:
        return default
    return max(MIN_INTERVAL, min(default, idle_seconds / 4))


class ActivityRecorder:
    """Throttled activity writes for any number of sandboxes, plus keep-alive while operations run."""

    def __init__(self, api: KubeApi, interval: float = DEFAULT_INTERVAL, *, enabled: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.interval = interval
        self.enabled = enabled
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Key, float] = {}
        self._intervals: dict[Key, float] = {}
        self._active: dict[Key, int] = {}
        self.last_error: dict[Key, BaseException] = {}
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def configure(self, namespace: str, name: str, idle_seconds: float | None) -> None:
        """Tightens the interval for a sandbox whose idle timeout is short."""
        with self._lock:
            self._intervals[(namespace, name)] = interval_for(idle_seconds, self.interval)

    def interval_of(self, namespace: str, name: str) -> float:
        return self._intervals.get((namespace, name), self.interval)

    def due(self, namespace: str, name: str) -> bool:
        key = (namespace, name)
        last = self._last.get(key)
        return last is None or self._clock() - last >= self.interval_of(namespace, name)

    def touch(self, namespace: str, name: str, *, force: bool = False) -> bool:
        """Records activity now if the last record is older than the interval. True if it patched.

        Errors are raised (a vanished sandbox is :class:`SandboxNotFound`; missing ``patch`` rights are
        :class:`SandboxForbidden`): a client that cannot record activity would see its sandbox collected.
        """
        if not self.enabled:
            return False
        key = (namespace, name)
        with self._lock:
            if not force and not self.due(namespace, name):
                return False
            previous = self._last.get(key)
            self._last[key] = self._clock()
        try:
            self.api.patch_sandbox(name, namespace, activity_patch())
        except BaseException:
            with self._lock:
                if previous is None:
                    self._last.pop(key, None)
                else:
                    self._last[key] = previous
            raise
        return True

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._lock:
            self._last.pop(key, None)
            self._intervals.pop(key, None)
            self.last_error.pop(key, None)

    @contextlib.contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        """Keeps the sandbox's activity fresh while the block runs (a command, a transfer)."""
        if not self.enabled:
            yield
            return
        key = (namespace, name)
        with self._lock:
            self._active[key] = self._active.get(key, 0) + 1
            self._ensure_thread()
        self._wake.set()
        try:
            yield
        finally:
            with self._lock:
                count = self._active.get(key, 0) - 1
                if count <= 0:
                    self._active.pop(key, None)
                else:
                    self._active[key] = count

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="sandbox-activity", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            with self._lock:
                keys = list(self._active)
                waits = [self.interval_of(*key) for key in keys] or [self.interval]
            for namespace, name in keys:
                try:
                    self.touch(namespace, name)
                    self.last_error.pop((namespace, name), None)
                except errors.SandboxError as exc:
                    self.last_error[(namespace, name)] = exc
                    log.warning("recording activity on sandbox %s/%s failed: %s", namespace, name, exc)
                except Exception as exc:
                    self.last_error[(namespace, name)] = exc
                    log.warning("recording activity on sandbox %s/%s failed", namespace, name, exc_info=True)
            self._wake.wait(timeout=max(0.05, min(waits) / 2))
            self._wake.clear()

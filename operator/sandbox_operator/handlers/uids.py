"""Host UIDs of sandbox pods without user namespaces: one per sandbox, from SANDBOX_OPERATOR_SANDBOX_UID_RANGE.

RLIMIT_NPROC and the kernel's per-user counters (inotify instances and watches, pending signals, message queues,
keys) count per host UID: with one UID for every sandbox on a node, one sandbox could use up another's share.
The UIDs in use come from a kopf index over the operator's sandbox pods (``sandbox_pod_uids`` in
handlers/children.py), which kopf fills before any handler runs, so a restarted operator knows every UID still
in use. A UID picked but not yet in the index is held as a reservation, under a lock, so two concurrent creates
never pick the same one. A reservation lasts until the Sandbox is deleted.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from typing import Any

from sandbox_operator.settings import ENV_PREFIX

Key = tuple[str, str]  # (namespace, Sandbox name)
PodUids = Mapping[int, Collection[Key]]  # the index: host UID -> the Sandboxes whose pods run as it


class UidRangeExhausted(Exception):  # noqa: N818 - named for the condition, as the status reason is
    """Every UID of the range belongs to a live sandbox pod or a reservation."""


def pod_run_as_users(pod: Mapping[str, Any]) -> set[int]:
    """The UIDs a pod's processes run as (the pod's runAsUser and any container's own)."""
    spec = pod.get("spec") or {}
    contexts = [spec.get("securityContext") or {},
                *((c.get("securityContext") or {}) for c in spec.get("containers") or [])]
    return {uid for uid in (context.get("runAsUser") for context in contexts) if isinstance(uid, int)}


def has_pod(pod_uids: PodUids, key: Key) -> bool:
    """Whether the index holds a pod of Sandbox ``key`` (a pod made by an earlier run of its handler)."""
    return any(key in owners for owners in pod_uids.values())


class UidPool:
    """Hands out the UIDs of a range, one per Sandbox, never one a live pod or another reservation holds."""

    def __init__(self, uids: range) -> None:
        self.uids = uids
        self._lock = threading.Lock()
        self._reserved: dict[Key, int] = {}

    def allocate(self, key: Key, pod_uids: PodUids) -> int:
        """The UID for Sandbox ``key``: the one it already holds (a reservation, or its pod's in the index),
        else the lowest free one. Raises :class:`UidRangeExhausted`."""
        with self._lock:
            held = self._reserved.get(key)
            if held is None:
                held = next((uid for uid, owners in pod_uids.items() if uid in self.uids and key in owners), None)
            if held is None:
                reserved = set(self._reserved.values())
                held = next((uid for uid in self.uids if uid not in pod_uids and uid not in reserved), None)
            if held is None:
                raise UidRangeExhausted(
                    f"every host UID of {ENV_PREFIX}SANDBOX_UID_RANGE ({self.uids.start}-{self.uids.stop - 1}) "
                    "belongs to a live sandbox; waiting for one to end")
            self._reserved[key] = held
            return held

    def adopt(self, key: Key, uid: int) -> None:
        """Records the UID an existing pod of ``key`` runs as (found on a re-run), instead of the one picked."""
        with self._lock:
            self._reserved[key] = uid

    def release(self, key: Key) -> None:
        with self._lock:
            self._reserved.pop(key, None)

    def reserved(self) -> dict[Key, int]:
        with self._lock:
            return dict(self._reserved)

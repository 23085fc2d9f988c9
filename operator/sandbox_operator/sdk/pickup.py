"""Is an operator going to handle this Sandbox? The client's side of the registry of served namespaces.

A Sandbox in a namespace no operator watches stays without status forever. So while waiting for Ready, the SDK
gives the operator :data:`PICKUP_GRACE_SECONDS` to show it has the Sandbox (a status, or its finalizer); if it
has not, the SDK reads which namespaces the running operators serve (:mod:`sandbox_operator.registry`) and says
so at once when none serves this one. When that list cannot be read (no ``get`` on the CRD), it waits up to
:data:`UNREADABLE_REGISTRY_PATIENCE` seconds for the operator before giving up.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox_operator import constants
from sandbox_operator.registry import fresh_entries
from sandbox_operator.sdk._kube import ENV_NAMESPACE

PICKUP_GRACE_SECONDS = 3.0
UNREADABLE_REGISTRY_PATIENCE = 10.0


def picked_up(obj: Mapping[str, Any]) -> bool:
    """Whether an operator has handled the Sandbox: it wrote a status, or added its finalizer."""
    status = obj.get("status") or {}
    finalizers = (obj.get("metadata") or {}).get("finalizers") or []
    return (status.get("observedGeneration") is not None or bool(status.get("phase"))
            or constants.FINALIZER in finalizers)


class Pickup(enum.Enum):
    PICKED_UP = "picked up"  # the operator has it: stop checking
    SERVED = "served"  # a running operator watches the namespace: keep waiting, stop checking
    WAIT = "wait"  # too early to tell: check again later
    NOT_SERVED = "not served"  # nothing will make it Ready: give up with the message


@dataclass(frozen=True)
class PickupCheck:
    outcome: Pickup
    message: str = ""
    served: tuple[str, ...] = ()
    """The namespaces (or patterns) the running operators watch."""


def check_pickup(*, picked: bool, registry: Mapping[str, str] | None, namespace: str, name: str,
                 now: datetime.datetime, waited: float, registry_problem: str | None = None,
                 grace: float = PICKUP_GRACE_SECONDS, patience: float = UNREADABLE_REGISTRY_PATIENCE) -> PickupCheck:
    """Decides, after ``waited`` seconds without pick-up, whether to keep waiting for the operator.

    ``registry`` is the Sandbox CRD's annotations, or None when they could not be read (``registry_problem``
    says why). ``now`` is the wall-clock time the entries' heartbeats are compared with. The registry is not
    consulted before ``grace`` seconds; an unreadable one means waiting up to ``patience`` seconds.
    """
    if picked:
        return PickupCheck(Pickup.PICKED_UP)
    if waited < grace:
        return PickupCheck(Pickup.WAIT)
    if registry is None:
        if waited < patience:
            return PickupCheck(Pickup.WAIT)
        return PickupCheck(Pickup.NOT_SERVED, (
            f"no sandbox operator picked up sandbox {namespace}/{name} within {waited:.0f}s, and which namespaces "
            f"the running operators serve could not be read from the annotations of the CustomResourceDefinition "
            f"{constants.CRD_NAME} ({registry_problem or 'no reason given'}); is an operator running for "
            f"namespace {namespace!r}?"))
    entries = fresh_entries(registry, now)
    if any(entry.serves(namespace) for entry in entries.values()):
        return PickupCheck(Pickup.SERVED)
    served = tuple(sorted({pattern for entry in entries.values() for pattern in entry.namespaces}))
    if not served:
        return PickupCheck(Pickup.NOT_SERVED, (
            f"no sandbox operator is running (none has reported on {constants.CRD_NAME} in the last "
            f"{constants.REGISTRY_STALE_SECONDS}s), so nothing will make sandbox {namespace}/{name} Ready"))
    return PickupCheck(Pickup.NOT_SERVED, (
        f"no sandbox operator serves namespace {namespace!r}, so nothing will make sandbox {namespace}/{name} "
        f"Ready; the running operators serve: {', '.join(served)} (use one of those as the namespace, or set "
        f"{ENV_NAMESPACE})"), served)

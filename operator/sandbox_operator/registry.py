"""Which namespaces the running operators serve, as published on the Sandbox CRD.

Each operator keeps one annotation on the cluster-scoped CustomResourceDefinition ``sandboxes.sandbox-operator.io``,
which a client can read with a ClusterRole that grants nothing else::

    operators.sandbox-operator.io/sandbox-operator-system.sandbox-operator:
        {"namespaces":["sandboxes"],"heartbeat":"2026-12-01T10:00:00Z","version":"0.1.0"}

``["*"]`` means every namespace. The operator writes its entry at start-up and every
:data:`~sandbox_operator.constants.REGISTRY_HEARTBEAT_SECONDS`, and removes it on a clean shutdown. An entry
whose heartbeat is older than :data:`~sandbox_operator.constants.REGISTRY_STALE_SECONDS` belongs to an operator
that was killed or cut off, and serves nothing.

Pure code (``now`` is a parameter) that the operator writes with and clients read with; it needs neither kopf nor
the operator's settings.
"""

from __future__ import annotations

import datetime
import fnmatch
import hashlib
import re
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sandbox_operator import constants
from sandbox_operator.models.timestamps import Time

# An annotation key's name part: at most 63 characters, alphanumeric at both ends, [-._a-zA-Z0-9] between.
KEY_NAME_MAX_LENGTH = 63
_KEY_NAME_INVALID = re.compile(r"[^A-Za-z0-9._-]+")
_KEY_NAME_EDGES = "._-"
_DIGEST_LENGTH = 8


def registry_key(operator_namespace: str, operator_name: str) -> str:
    """``operators.sandbox-operator.io/<namespace>.<name>``, made a valid annotation key.

    Invalid characters become ``-``; a name that had to change or be shortened ends in a hash of the original, so
    two operators never share a key."""
    original = f"{operator_namespace}.{operator_name}"
    name = _KEY_NAME_INVALID.sub("-", original).strip(_KEY_NAME_EDGES)
    if name != original or len(name) > KEY_NAME_MAX_LENGTH:
        digest = hashlib.sha256(original.encode()).hexdigest()[:_DIGEST_LENGTH]
        head = name[:KEY_NAME_MAX_LENGTH - _DIGEST_LENGTH - 1].rstrip(_KEY_NAME_EDGES)
        name = f"{head}-{digest}" if head else digest
    return f"{constants.REGISTRY_ANNOTATION_PREFIX}/{name}"


def namespace_matches(namespace: str, pattern: str) -> bool:
    """One watched-namespace pattern as kopf reads it: a glob (``*``, ``?``), or ``!glob`` for every namespace
    except those (kopf implies a leading catch-all before an exclusion)."""
    if pattern.startswith("!"):
        return not fnmatch.fnmatchcase(namespace, pattern[1:])
    return fnmatch.fnmatchcase(namespace, pattern)


class RegistryEntry(BaseModel):
    """One operator's annotation value."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    namespaces: list[str] = Field(min_length=1)
    """The namespaces (or kopf globs) the operator watches; ``["*"]`` when it watches the whole cluster."""
    heartbeat: Time
    """When the operator last wrote the entry (RFC 3339, UTC)."""
    version: str
    """The operator's package version."""

    def serves(self, namespace: str) -> bool:
        return any(namespace_matches(namespace, pattern) for pattern in self.namespaces)

    def is_fresh(self, now: datetime.datetime) -> bool:
        """Written within the stale limit (a heartbeat ahead of ``now``, from clock skew, counts as fresh)."""
        return (now - self.heartbeat).total_seconds() <= constants.REGISTRY_STALE_SECONDS

    def annotation_value(self) -> str:
        return self.model_dump_json()


def registry_entry(namespaces: Sequence[str], now: datetime.datetime,
                   version: str = constants.PROJECT_VERSION) -> RegistryEntry:
    """The entry of an operator watching ``namespaces`` (empty: the whole cluster)."""
    return RegistryEntry(namespaces=list(namespaces) or [constants.ALL_NAMESPACES], heartbeat=now, version=version)


def registry_entries(annotations: Mapping[str, str] | None) -> dict[str, RegistryEntry]:
    """Every well-formed entry among a CRD's annotations, by key; malformed values are skipped."""
    entries: dict[str, RegistryEntry] = {}
    for key, value in (annotations or {}).items():
        if not key.startswith(f"{constants.REGISTRY_ANNOTATION_PREFIX}/"):
            continue
        try:
            entries[key] = RegistryEntry.model_validate_json(value)
        except ValidationError:
            continue
    return entries


def fresh_entries(annotations: Mapping[str, str] | None, now: datetime.datetime) -> dict[str, RegistryEntry]:
    """The entries of operators that are running now, by key."""
    return {key: entry for key, entry in registry_entries(annotations).items() if entry.is_fresh(now)}

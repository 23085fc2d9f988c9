"""Operator settings, read once at start from environment variables prefixed ``SANDBOX_OPERATOR_``.

Every setting has a default that works on the project's local cluster. Lists are comma-separated
(``SANDBOX_OPERATOR_NAMESPACES=team-a,team-b``). Bad settings stop the operator before it touches the
cluster: :func:`load_settings` raises :class:`SettingsError` whose message names the environment variable.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import socket
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sandbox_operator import constants
from sandbox_operator.models import limits
from sandbox_operator.models.quantity import Quantity, parse_quantity

ENV_PREFIX = "SANDBOX_OPERATOR_"

_SANDBOX_REPOSITORY = constants.SANDBOX_IMAGE.rpartition(":")[0]

CommaList = Annotated[list[str], NoDecode]
ANY_KEY = "*"
# Node labels that say what a node is, not which one: a tenant may steer its sandbox by them, never onto a chosen
# node (kubernetes.io/hostname) or the control plane (node-role.kubernetes.io/*).
SAFE_NODE_SELECTOR_KEYS = ("kubernetes.io/arch", "kubernetes.io/os", "node.kubernetes.io/instance-type",
                           "topology.kubernetes.io/zone", "topology.kubernetes.io/region")
UID_MIN_EXCLUSIVE = 1000  # the image's own users (sandbox is 1000) stay out of the per-sandbox range
UID_MAX = 2**31 - 1
INSTANCE_NAME_PATTERN = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
INSTANCE_NAME_MAX_LENGTH = 253
NAMESPACE_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NAMESPACE_MAX_LENGTH = 63
DEFAULT_LEASE_NAME = "sandbox-operator"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _checked_name(value: str, kind: str, pattern: str, max_length: int, characters: str) -> str:
    """``value`` if empty or a valid name of ``kind``; else an error saying what such a name is."""
    if value and not (len(value) <= max_length and re.fullmatch(pattern, value)):
        raise ValueError(f"{value!r} is not a {kind} ({characters}, alphanumeric at both ends, at most "
                         f"{max_length} characters)")
    return value


class SettingsError(Exception):
    """The environment holds settings the operator cannot start with."""


class OperatorSettings(BaseSettings):
    """What an administrator tunes. Per-Sandbox values are defaulted from here and capped by the maximums."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore",
                                      case_sensitive=False, use_attribute_docstrings=True)

    # Scope and admission of sandboxes.
    namespaces: CommaList = Field(default_factory=list)
    """Namespaces (or kopf globs such as ``sbx-*``) to watch; empty means the whole cluster."""
    allowed_images: CommaList = Field(
        default_factory=lambda: [f"{_SANDBOX_REPOSITORY}:*", f"{_SANDBOX_REPOSITORY}@sha256:*"])
    """Shell-style globs (``*`` also matches ``/``); a Sandbox whose image matches none is InvalidSpec."""
    default_image: str = constants.SANDBOX_IMAGE
    """Image of a Sandbox that names none; must itself be allowed."""
    allowed_runtime_classes: CommaList = Field(default_factory=list)
    """RuntimeClass names a Sandbox may ask for (``*``: any); empty allows only the default runtime class (none
    if unset)."""
    default_runtime_class: str | None = None
    """RuntimeClass of a Sandbox that names none (for example ``gvisor``); unset uses the node's default."""
    allowed_toleration_keys: CommaList = Field(default_factory=list)
    """Taint keys a Sandbox's tolerations may name; empty allows no tolerations, ``*`` any (including a
    toleration of every taint: empty key, operator Exists)."""
    allowed_node_selector_keys: CommaList = Field(default_factory=lambda: list(SAFE_NODE_SELECTOR_KEYS))
    """Node label keys a Sandbox's nodeSelector may name; ``*`` allows any."""
    avoid_control_plane: bool = True
    """Keep sandbox pods off control-plane nodes (required node affinity: no node-role.kubernetes.io/control-plane
    label)."""
    allow_secret_env: bool = False
    """Whether ``spec.env[].valueFrom.secretKeyRef`` is allowed."""

    # Per-sandbox defaults and maximums. default_*/max_* are limits; default_*_request what the scheduler reserves.
    default_cpu: Quantity = "1"
    max_cpu: Quantity = "4"
    default_memory: Quantity = "512Mi"
    max_memory: Quantity = "8Gi"
    default_ephemeral_storage: Quantity = "1Gi"
    max_ephemeral_storage: Quantity = "10Gi"
    default_cpu_request: Quantity = "10m"
    """CPU request of a Sandbox that sets none: an idle sandbox uses next to nothing, and 100 of them fit on a
    2-core node beside the system pods. Capped at the sandbox's CPU limit."""
    default_memory_request: Quantity = "64Mi"
    """Memory request of a Sandbox that sets none: an idle sandbox's ~9 MB plus a small working set. It also
    bounds how many sandboxes the scheduler packs onto a node (allocatable / 64Mi), so that the node's memory
    is not wildly overcommitted. Capped at the sandbox's memory limit."""
    default_ephemeral_storage_request: Quantity = "64Mi"
    """Ephemeral storage request of a Sandbox that sets none. Capped at the sandbox's ephemeral storage limit."""
    tmp_size_limit: Quantity = "256Mi"
    """Size limit of the /tmp emptyDir (capped at the sandbox's ephemeral storage)."""
    default_pids: int = Field(20, ge=limits.PIDS_MIN, le=limits.PIDS_MAX)
    max_pids: int = Field(1024, ge=limits.PIDS_MIN, le=limits.PIDS_MAX)
    default_command_seconds: int = Field(300, ge=limits.COMMAND_SECONDS_MIN, le=limits.COMMAND_SECONDS_MAX)
    max_command_seconds: int = Field(3600, ge=limits.COMMAND_SECONDS_MIN, le=limits.COMMAND_SECONDS_MAX)
    default_idle_seconds: int = Field(1800, ge=limits.IDLE_SECONDS_MIN, le=limits.IDLE_SECONDS_MAX)
    max_idle_seconds: int = Field(86400, ge=limits.IDLE_SECONDS_MIN, le=limits.IDLE_SECONDS_MAX)
    default_lifetime_seconds: int = Field(3600, ge=limits.LIFETIME_SECONDS_MIN, le=limits.LIFETIME_SECONDS_MAX)
    max_lifetime_seconds: int = Field(86400, ge=limits.LIFETIME_SECONDS_MIN, le=limits.LIFETIME_SECONDS_MAX)
    file_size_limit_bytes: int = Field(100 * 1024 * 1024, ge=1024, le=1 << 40)
    """Largest file the in-image file tool reads or writes; passed to the sandbox as SANDBOX_FILE_SIZE_LIMIT."""

    # Pod shape.
    user_namespaces: bool = False
    """Run sandbox pods with ``hostUsers: false`` (needs a runtime with idmap mounts; containerd 1.6 has none)."""
    kernel_boundary_runtime_classes: CommaList = Field(default_factory=lambda: ["gvisor"])
    """RuntimeClasses whose sandboxes run on a kernel of their own (gVisor, Kata): their pods never get
    ``hostUsers: false``. That kernel already stands between the sandbox and the host and counts RLIMIT_NPROC
    per sandbox, and such runtimes need not offer user namespaces to the kubelet."""
    sandbox_uid_range: str = f"{constants.SANDBOX_UID_RANGE_FIRST}-{constants.SANDBOX_UID_RANGE_LAST}"
    """Host UIDs ``FIRST-LAST`` handed out one per sandbox pod when user namespaces are off, so that RLIMIT_NPROC
    and the kernel's per-user counters are per sandbox. Operators sharing nodes need disjoint ranges."""
    termination_grace_seconds: int = Field(5, ge=0, le=30)
    priority_class_name: str | None = None
    service_account_name: str | None = None
    """Service account of sandbox pods; its token is never mounted. Unset uses the namespace's default."""

    # Collection.
    gc_interval_seconds: float = Field(60.0, ge=0.5, le=3600)
    """How often each Sandbox is checked for idleness and expiry."""
    pool_check_interval_seconds: float = Field(30.0, ge=0.5, le=3600)
    """How often every SandboxPool is checked for pods past their maximum age or that never became ready (pod
    events refill a pool at once; this catches what only time changes)."""

    # The operator process.
    health_port: int = Field(8080, ge=0, le=65535)
    """Port of kopf's liveness endpoint ``/healthz``; 0 turns it off."""
    metrics_port: int = Field(9090, ge=0, le=65535)
    """Port of the Prometheus endpoint ``/metrics``; 0 turns it off."""
    bind_address: str = "0.0.0.0"  # noqa: S104 - in a pod the probes come from the node
    log_format: Literal["plain", "full", "json"] = "full"
    verbose: bool = False
    api_workers: int = Field(64, ge=1, le=256)
    """Threads (and HTTP connections) for the blocking Kubernetes client: enough that a burst of creates (two
    blocking calls each) does not queue behind a small pool."""
    instance_name: str = ""
    """This operator's name in the registry of served namespaces on the Sandbox CRD, after its pod's namespace
    (the chart sets the Deployment's name). Empty: the host name and process ID."""
    failpoint: Literal["", "after-pod-create", "after-pod-claim"] = ""
    """Test-only: hang (so that a test can kill the process) at the named point."""

    # Leader election (see :mod:`sandbox_operator.leader`): one replica runs the handlers, the others wait.
    leader_election: bool = False
    """Hold a coordination.k8s.io Lease before running the handlers; off: run at once, no Lease."""
    leader_election_namespace: str = ""
    """Namespace of the Lease; empty: the pod's (env ``POD_NAMESPACE``, else the service account's)."""
    leader_election_lease_name: str = ""
    """Name of the Lease; empty: ``INSTANCE_NAME`` if set, else ``sandbox-operator``."""
    leader_election_identity: str = ""
    """This replica's holderIdentity; empty: env ``POD_NAME``, else ``<host name>-<process ID>``."""
    lease_duration_seconds: int = Field(8, ge=2, le=3600)
    """How long a holder that stopped renewing keeps the Lease, as each standby observes it on its own clock."""
    renew_deadline_seconds: float = Field(6.0, gt=0, le=3600)
    """The leader exits (status 3) when no renewal succeeded for this long: before any standby may take over."""
    retry_period_seconds: float = Field(1.0, gt=0, le=3600)
    """How often the leader renews and a standby tries to acquire."""

    @field_validator("namespaces", "allowed_images", "allowed_runtime_classes", "allowed_toleration_keys",
                     "allowed_node_selector_keys", "kernel_boundary_runtime_classes", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("sandbox_uid_range")
    @classmethod
    def _uid_range(cls, value: str) -> str:
        match = re.fullmatch(r"([0-9]{1,10})-([0-9]{1,10})", value.strip())
        if not (match and UID_MIN_EXCLUSIVE < int(match[1]) <= int(match[2]) <= UID_MAX):
            raise ValueError(f"{value!r} is not FIRST-LAST with {UID_MIN_EXCLUSIVE} < FIRST <= LAST <= {UID_MAX}")
        return f"{int(match[1])}-{int(match[2])}"

    @field_validator("instance_name", "leader_election_lease_name")
    @classmethod
    def _object_name(cls, value: str) -> str:
        return _checked_name(value, "Kubernetes object name", INSTANCE_NAME_PATTERN, INSTANCE_NAME_MAX_LENGTH,
                             "lower-case letters, digits, '-' and '.'")

    @field_validator("leader_election_namespace")
    @classmethod
    def _lease_namespace(cls, value: str) -> str:
        return _checked_name(value, "namespace name", NAMESPACE_PATTERN, NAMESPACE_MAX_LENGTH,
                             "lower-case letters, digits and '-'")

    @model_validator(mode="after")
    def _consistent(self) -> OperatorSettings:
        problems: list[str] = []
        for name, (low, high) in {
            "cpu": (limits.CPU_MIN, limits.CPU_MAX),
            "memory": (limits.MEMORY_MIN, limits.MEMORY_MAX),
            "ephemeral_storage": (limits.EPHEMERAL_STORAGE_MIN, limits.EPHEMERAL_STORAGE_MAX),
        }.items():
            default, maximum = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            request = getattr(self, f"default_{name}_request")
            for variable, value in ((f"DEFAULT_{name}", default), (f"MAX_{name}", maximum),
                                    (f"DEFAULT_{name}_REQUEST", request)):
                if not parse_quantity(low) <= parse_quantity(value) <= parse_quantity(high):
                    problems.append(f"{ENV_PREFIX}{variable.upper()}={value} is outside "
                                    f"the CRD's bounds [{low}, {high}]")
            if parse_quantity(default) > parse_quantity(maximum):
                problems.append(f"{ENV_PREFIX}DEFAULT_{name.upper()}={default} exceeds "
                                f"{ENV_PREFIX}MAX_{name.upper()}={maximum}")
            if parse_quantity(request) > parse_quantity(default):
                problems.append(f"{ENV_PREFIX}DEFAULT_{name.upper()}_REQUEST={request} exceeds the default limit "
                                f"{ENV_PREFIX}DEFAULT_{name.upper()}={default}")
        for name in ("pids", "command_seconds", "idle_seconds", "lifetime_seconds"):
            default_int, maximum_int = getattr(self, f"default_{name}"), getattr(self, f"max_{name}")
            if default_int > maximum_int:
                problems.append(f"{ENV_PREFIX}DEFAULT_{name.upper()}={default_int} exceeds "
                                f"{ENV_PREFIX}MAX_{name.upper()}={maximum_int}")
        if self.default_idle_seconds > self.default_lifetime_seconds:
            problems.append(f"{ENV_PREFIX}DEFAULT_IDLE_SECONDS must not exceed {ENV_PREFIX}DEFAULT_LIFETIME_SECONDS")
        if self.default_command_seconds > self.default_lifetime_seconds:
            problems.append(
                f"{ENV_PREFIX}DEFAULT_COMMAND_SECONDS must not exceed {ENV_PREFIX}DEFAULT_LIFETIME_SECONDS")
        if parse_quantity(self.tmp_size_limit) < parse_quantity(limits.EPHEMERAL_STORAGE_MIN):
            problems.append(f"{ENV_PREFIX}TMP_SIZE_LIMIT must be at least {limits.EPHEMERAL_STORAGE_MIN}")
        if not self.allowed_images:
            problems.append(f"{ENV_PREFIX}ALLOWED_IMAGES must name at least one image pattern")
        elif not self.image_allowed(self.default_image):
            problems.append(f"{ENV_PREFIX}DEFAULT_IMAGE={self.default_image} matches no pattern in "
                            f"{ENV_PREFIX}ALLOWED_IMAGES={','.join(self.allowed_images)}")
        if self.default_runtime_class and not self.runtime_class_allowed(self.default_runtime_class):
            problems.append(f"{ENV_PREFIX}DEFAULT_RUNTIME_CLASS={self.default_runtime_class} is not in "
                            f"{ENV_PREFIX}ALLOWED_RUNTIME_CLASSES")
        if self.health_port and self.health_port == self.metrics_port:
            problems.append(f"{ENV_PREFIX}HEALTH_PORT and {ENV_PREFIX}METRICS_PORT must differ")
        problems.extend(self._election_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _election_problems(self) -> list[str]:
        problems = []
        if not self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds:
            problems.append(
                f"{ENV_PREFIX}RETRY_PERIOD_SECONDS={self.retry_period_seconds} < {ENV_PREFIX}RENEW_DEADLINE_SECONDS="
                f"{self.renew_deadline_seconds} < {ENV_PREFIX}LEASE_DURATION_SECONDS={self.lease_duration_seconds} "
                f"does not hold (a leader must give up before a standby may take over)")
        if self.leader_election and not self.lease_namespace:
            problems.append(f"{ENV_PREFIX}LEADER_ELECTION_NAMESPACE is empty and the pod's namespace is unknown "
                            f"(no env POD_NAMESPACE, no {SERVICE_ACCOUNT_NAMESPACE})")
        return problems

    @property
    def lease_namespace(self) -> str:
        """LEADER_ELECTION_NAMESPACE, else the pod's namespace; empty if neither is known."""
        if self.leader_election_namespace:
            return self.leader_election_namespace
        try:
            from_file = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            from_file = ""
        return os.environ.get("POD_NAMESPACE", "").strip() or from_file

    @property
    def lease_name(self) -> str:
        return self.leader_election_lease_name or self.instance_name or DEFAULT_LEASE_NAME

    @property
    def leader_identity(self) -> str:
        return (self.leader_election_identity or os.environ.get("POD_NAME", "").strip()
                or f"{socket.gethostname()}-{os.getpid()}")

    def image_allowed(self, image: str) -> bool:
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.allowed_images)

    def runtime_class_allowed(self, name: str) -> bool:
        """Listed in ALLOWED_RUNTIME_CLASSES (``*``: any); with an empty list only DEFAULT_RUNTIME_CLASS is."""
        if self.allowed_runtime_classes:
            return ANY_KEY in self.allowed_runtime_classes or name in self.allowed_runtime_classes
        return name == self.default_runtime_class

    def host_users_off(self, runtime_class: str | None) -> bool:
        """Whether a sandbox pod on this RuntimeClass (None: the node's default) gets ``hostUsers: false``."""
        return self.user_namespaces and runtime_class not in self.kernel_boundary_runtime_classes

    def toleration_allowed(self, key: str | None) -> bool:
        """An empty key (with operator Exists: every taint) only under ``*``."""
        return ANY_KEY in self.allowed_toleration_keys or (bool(key) and key in self.allowed_toleration_keys)

    def node_selector_key_allowed(self, key: str) -> bool:
        return ANY_KEY in self.allowed_node_selector_keys or key in self.allowed_node_selector_keys

    @property
    def sandbox_uids(self) -> range:
        first, _, last = self.sandbox_uid_range.partition("-")
        return range(int(first), int(last) + 1)

    def max_quantity(self, name: Literal["cpu", "memory", "ephemeral_storage"]) -> Decimal:
        return parse_quantity(getattr(self, f"max_{name}"))

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else ""
        where = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "invalid operator settings:\n" + "\n".join(lines)


def load_settings() -> OperatorSettings:
    """Reads and validates the settings from the environment; raises :class:`SettingsError`."""
    try:
        return OperatorSettings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


@functools.cache
def get_settings() -> OperatorSettings:
    """The process-wide settings, read once (the handlers module needs the GC interval at import)."""
    return load_settings()

"""The Sandbox resource: pydantic models that are the single source of the CRD schema.

Field docstrings become the CRD's descriptions (what ``kubectl explain sandbox.spec`` prints). Every OpenAPI
bound comes from a pydantic constraint and every CEL rule (``cel_rules``) has a Python twin in a validator, so
the operator re-checks objects that got past admission (for example, written while the CRD lacked the rules).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from sandbox_operator import constants
from sandbox_operator.models import limits
from sandbox_operator.models.base import CrdModel
from sandbox_operator.models.cel import (
    LABEL_VALUE_MAX_LENGTH,
    LABEL_VALUE_PATTERN,
    CelRule,
    cel_json_schema_extra,
    cel_string,
    field_rules,
    is_qualified_name,
    is_reserved_key,
    key_rules,
)
from sandbox_operator.models.conditions import TERMINAL_PHASES as TERMINAL_PHASES
from sandbox_operator.models.conditions import Condition, Phase
from sandbox_operator.models.quantity import Quantity, parse_quantity
from sandbox_operator.models.timestamps import Time as Time
from sandbox_operator.models.timestamps import format_time as format_time

# --------------------------------------------------------------------------------------------------------------
# Shared types

IMAGE_PATTERN = (r"^[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(:[0-9]+)?"
                 r"(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
                 r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$")
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
ABSOLUTE_PATH_PATTERN = r"^(/[-_a-zA-Z0-9@+][-._a-zA-Z0-9@+]*)*/?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
RESERVED_ENV_PREFIX = "SANDBOX_"

ArgString = Annotated[str, StringConstraints(max_length=limits.MAX_ARG_LENGTH)]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX_LENGTH, pattern=LABEL_VALUE_PATTERN)]
AnnotationValue = Annotated[str, StringConstraints(max_length=limits.MAX_ANNOTATION_VALUE_LENGTH)]


# --------------------------------------------------------------------------------------------------------------
# spec

_QUANTITY_BOUNDS: dict[str, tuple[str, str]] = {
    "cpu": (limits.CPU_MIN, limits.CPU_MAX),
    "memory": (limits.MEMORY_MIN, limits.MEMORY_MAX),
    "ephemeralStorage": (limits.EPHEMERAL_STORAGE_MIN, limits.EPHEMERAL_STORAGE_MAX),
}


def _quantity_rule(field: str, low: str, high: str) -> CelRule:
    value = f"quantity(string(self.{field}))"
    return CelRule(
        rule=(f"!has(self.{field}) || !isQuantity(string(self.{field})) || "
              f"({value}.compareTo(quantity('{low}')) >= 0 && {value}.compareTo(quantity('{high}')) <= 0)"),
        message=f"{field} must be between {low} and {high}",
        field_path=f".{field}",
    )


_REQUEST_FIELDS = ("cpu", "memory", "ephemeralStorage")


def _request_rule(field: str) -> CelRule:
    request, limit = f"self.requests.{field}", f"self.{field}"
    return CelRule(
        rule=(f"!has(self.requests) || !has({request}) || !has({limit}) || !isQuantity(string({request})) || "
              f"!isQuantity(string({limit})) || "
              f"quantity(string({request})).compareTo(quantity(string({limit}))) <= 0"),
        message=f"spec.resources.requests.{field} must not exceed spec.resources.{field}",
        field_path=f".requests.{field}",
    )


def _check_bounds(model: BaseModel) -> None:
    for field, (low, high) in _QUANTITY_BOUNDS.items():
        value = getattr(model, to_snake(field))
        if value is not None and not parse_quantity(low) <= parse_quantity(value) <= parse_quantity(high):
            raise ValueError(f"{field} must be between {low} and {high}")


class ResourceRequests(CrdModel):
    """What the scheduler reserves for the sandbox on its node (pod requests). Unset fields take the operator's
    defaults (10m CPU, 64Mi memory, 64Mi ephemeral storage unless configured otherwise), capped at the
    sandbox's limits. Requests equal to the limits give the pod Guaranteed QoS."""

    cel_rules = tuple(_quantity_rule(field, low, high) for field, (low, high) in _QUANTITY_BOUNDS.items())

    cpu: Quantity | None = None
    """CPU cores reserved, for example "100m"; at most the CPU limit."""
    memory: Quantity | None = None
    """Memory reserved, for example "128Mi"; at most the memory limit."""
    ephemeral_storage: Quantity | None = None
    """Local disk reserved, for example "256Mi"; at most the ephemeral storage limit."""

    @model_validator(mode="after")
    def _bounds(self) -> ResourceRequests:
        _check_bounds(self)
        return self


class Resources(CrdModel):
    """Compute resources of the sandbox. cpu, memory, ephemeralStorage and pids are hard limits; requests (what
    the scheduler reserves) are separate and small by default, so idle sandboxes pack a node (Burstable QoS).
    Unset fields take the operator's defaults (1 CPU, 512Mi memory, 1Gi ephemeral storage, 20 processes unless
    configured otherwise); values above the operator's configured maximums make the Sandbox fail with
    InvalidSpec."""

    cel_rules = (*(_quantity_rule(field, low, high) for field, (low, high) in _QUANTITY_BOUNDS.items()),
                 *(_request_rule(field) for field in _REQUEST_FIELDS))

    cpu: Quantity | None = None
    """CPU limit in cores as a Kubernetes quantity, for example "500m" or 2. The sandbox is throttled beyond it."""
    memory: Quantity | None = None
    """Memory limit as a Kubernetes quantity, for example "512Mi". The sandbox is OOM-killed beyond it."""
    ephemeral_storage: Quantity | None = None
    """Local disk limit for the workspace, /tmp, logs and the container's writable layer, for example "1Gi".
    Beyond it the pod is evicted."""
    pids: int | None = Field(None, ge=limits.PIDS_MIN, le=limits.PIDS_MAX)
    """Most processes the sandbox user may run at once (enforced per sandbox by the in-image exec wrapper)."""
    requests: ResourceRequests | None = None
    """What the scheduler reserves; each at most the corresponding limit (given here or defaulted)."""

    @model_validator(mode="after")
    def _bounds(self) -> Resources:
        _check_bounds(self)
        for field in _REQUEST_FIELDS if self.requests else ():
            request, limit = getattr(self.requests, to_snake(field)), getattr(self, to_snake(field))
            if request is not None and limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"spec.resources.requests.{field} must not exceed spec.resources.{field}")
        return self


class Timeouts(CrdModel):
    """Time limits. Unset fields take the operator's defaults (300 s per command, 1800 s idle, 3600 s
    lifetime unless configured otherwise)."""

    cel_rules = (
        CelRule(rule=("!has(self.idleSeconds) || !has(self.lifetimeSeconds) || "
                      "self.idleSeconds <= self.lifetimeSeconds"),
                message="idleSeconds must not exceed lifetimeSeconds", field_path=".idleSeconds"),
        CelRule(rule=("!has(self.commandSeconds) || !has(self.lifetimeSeconds) || "
                      "self.commandSeconds <= self.lifetimeSeconds"),
                message="commandSeconds must not exceed lifetimeSeconds", field_path=".commandSeconds"),
    )

    command_seconds: int | None = Field(None, ge=limits.COMMAND_SECONDS_MIN, le=limits.COMMAND_SECONDS_MAX)
    """Default time limit of one command run in the sandbox; the SDK and CLI kill the command after it.
    Immutable."""
    idle_seconds: int | None = Field(None, ge=limits.IDLE_SECONDS_MIN, le=limits.IDLE_SECONDS_MAX)
    """The Sandbox is deleted after this long without activity. Activity is the RFC 3339 timestamp that
    clients write to the annotation sandbox-operator.io/last-activity; before any, the idle clock starts
    when the sandbox became Ready. Mutable."""
    lifetime_seconds: int | None = Field(None, ge=limits.LIFETIME_SECONDS_MIN, le=limits.LIFETIME_SECONDS_MAX)
    """The Sandbox expires this long after its creation, active or not: its status becomes Expired and it is
    deleted. Also the pod's activeDeadlineSeconds. May be lowered after creation, never raised."""

    @model_validator(mode="after")
    def _ordering(self) -> Timeouts:
        if self.idle_seconds is not None and self.lifetime_seconds is not None \
                and self.idle_seconds > self.lifetime_seconds:
            raise ValueError("idleSeconds must not exceed lifetimeSeconds")
        if self.command_seconds is not None and self.lifetime_seconds is not None \
                and self.command_seconds > self.lifetime_seconds:
            raise ValueError("commandSeconds must not exceed lifetimeSeconds")
        return self


class SecretKeySelector(CrdModel):
    """A key of a Secret in the Sandbox's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """Name of the Secret."""
    key: str = Field(max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    """Key within the Secret."""
    optional: bool | None = None
    """Start the sandbox even if the Secret or key is missing."""


class EnvVarSource(CrdModel):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeySelector
    """A Secret key. Allowed only if the operator is configured with allowSecretEnv."""


class EnvVar(CrdModel):
    """An environment variable of the sandbox's main process (and, through the SDK, of its commands)."""

    cel_rules = (
        CelRule(rule="!(has(self.value) && has(self.valueFrom))",
                message="set value or valueFrom, not both"),
        CelRule(rule=f"!self.name.startsWith({cel_string(RESERVED_ENV_PREFIX)})",
                message=f"environment variables starting with {RESERVED_ENV_PREFIX} are set by the operator",
                field_path=".name", reason="FieldValueForbidden"),
    )

    name: str = Field(max_length=256, pattern=ENV_NAME_PATTERN)
    """Variable name."""
    value: str | None = Field(None, max_length=limits.MAX_ENV_VALUE_LENGTH)
    """Literal value."""
    value_from: EnvVarSource | None = None
    """Value taken from a Secret."""

    @model_validator(mode="after")
    def _rules(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        if self.name.startswith(RESERVED_ENV_PREFIX):
            raise ValueError(f"environment variables starting with {RESERVED_ENV_PREFIX} are set by the operator")
        return self


class Toleration(CrdModel):
    """A toleration of the sandbox pod, for example to run on dedicated sandbox nodes."""

    cel_rules = (
        CelRule(rule="!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                message="a toleration with operator Exists must not have a value", field_path=".value"),
    )

    key: str | None = Field(None, max_length=316)
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] | None = None
    """Equal (the default) or Exists."""
    value: str | None = Field(None, max_length=63)
    """Taint value for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(None, ge=0, le=limits.LIFETIME_SECONDS_MAX)
    """For NoExecute: how long the pod stays bound after the taint appears."""

    @model_validator(mode="after")
    def _exists_without_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not have a value")
        return self


def _check_keys(value: Mapping[str, str] | None, what: str, *, reserved: bool) -> None:
    for key in value or {}:
        if not is_qualified_name(key):
            raise ValueError(f"{what} key {key!r} is not a qualified name")
        if reserved and is_reserved_key(key):
            raise ValueError(f"{what} key {key!r} is reserved for the operator")


_IMMUTABLE_SPEC_FIELDS = ("image", "command", "args", "env", "resources", "workingDir", "runtimeClassName",
                          "nodeSelector", "tolerations")


def _immutable_rule(path: str) -> CelRule:
    parent, _, leaf = path.rpartition(".")
    new_parent, old_parent = ("self." + parent, "oldSelf." + parent) if parent else ("self", "oldSelf")
    if parent:
        has_new = f"(has(self.{parent}) && has({new_parent}.{leaf}))"
        has_old = f"(has(oldSelf.{parent}) && has({old_parent}.{leaf}))"
    else:
        has_new, has_old = f"has(self.{leaf})", f"has(oldSelf.{leaf})"
    return CelRule(
        rule=f"{has_new} == {has_old} && (!{has_new} || {new_parent}.{leaf} == {old_parent}.{leaf})",
        message=f"spec.{path} is immutable", field_path=f".{path}", reason="FieldValueForbidden",
    )


_LIFETIME_RULE = CelRule(
    rule=("!has(oldSelf.timeouts) || !has(oldSelf.timeouts.lifetimeSeconds) || "
          "(has(self.timeouts) && has(self.timeouts.lifetimeSeconds) && "
          "self.timeouts.lifetimeSeconds <= oldSelf.timeouts.lifetimeSeconds)"),
    message="spec.timeouts.lifetimeSeconds may be lowered after creation, not raised or removed",
    field_path=".timeouts.lifetimeSeconds", reason="FieldValueForbidden",
)


class SandboxTemplate(CrdModel):
    """What a sandbox runs: every field is optional, the operator fills in its configured defaults. A
    SandboxPool's template has this shape; a Sandbox's spec adds poolRef and the rules on updates."""

    image: str | None = Field(None, max_length=limits.MAX_IMAGE_LENGTH, pattern=IMAGE_PATTERN)
    """Container image; must match the operator's allow-list. Defaults to the project's sandbox image.
    Immutable."""
    command: list[ArgString] | None = Field(None, max_length=limits.MAX_ARGV_ITEMS)
    """Main process (entrypoint) of the sandbox. Defaults to the image's PID-1 reaper
    (/usr/local/bin/sandbox-init), which keeps the sandbox alive for commands run through the SDK. Immutable."""
    args: list[ArgString] | None = Field(None, max_length=limits.MAX_ARGV_ITEMS)
    """Arguments of the main process. Immutable."""
    env: list[EnvVar] | None = Field(
        None, max_length=limits.MAX_ENV_ITEMS,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    """Environment of the main process. Names starting with SANDBOX_ are reserved. Immutable."""
    resources: Resources | None = None
    """CPU, memory, ephemeral storage and process limits, and the requests the scheduler reserves. Immutable."""
    timeouts: Timeouts | None = None
    """Command, idle and lifetime limits."""
    working_dir: str | None = Field(None, min_length=1, max_length=limits.MAX_PATH_LENGTH,
                                    pattern=ABSOLUTE_PATH_PATTERN)
    """Working directory of the main process, an absolute path (the root file system is read-only; only
    /workspace and /tmp are writable). Defaults to /workspace. Immutable."""
    pod_labels: dict[str, LabelValue] | None = Field(
        None, max_length=limits.MAX_LABELS, json_schema_extra=field_rules(*key_rules("podLabels", reserved=True)))
    """Extra labels of the sandbox pod. Keys under the operator's reserved domains are rejected. Note that
    labels can make other NetworkPolicies in the namespace select the pod."""
    pod_annotations: dict[str, AnnotationValue] | None = Field(
        None, max_length=limits.MAX_ANNOTATIONS,
        json_schema_extra=field_rules(*key_rules("podAnnotations", reserved=True)))
    """Extra annotations of the sandbox pod. Keys under the operator's reserved domains are rejected."""
    runtime_class_name: str | None = Field(None, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)
    """RuntimeClass for stronger isolation, for example gvisor or kata; must be allowed by the operator.
    Immutable."""
    node_selector: dict[str, LabelValue] | None = Field(
        None, max_length=limits.MAX_NODE_SELECTOR,
        json_schema_extra=field_rules(*key_rules("nodeSelector", reserved=False)))
    """Node labels the sandbox pod must be scheduled onto. Immutable."""
    tolerations: list[Toleration] | None = Field(None, max_length=limits.MAX_TOLERATIONS)
    """Tolerations of the sandbox pod. Immutable."""

    @field_validator("pod_labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        _check_keys(value, "podLabels", reserved=True)
        return value

    @field_validator("pod_annotations")
    @classmethod
    def _annotation_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        _check_keys(value, "podAnnotations", reserved=True)
        return value

    @field_validator("node_selector")
    @classmethod
    def _selector_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        _check_keys(value, "nodeSelector", reserved=False)
        return value


class PoolRef(CrdModel):
    """The SandboxPool a Sandbox takes its pod from."""

    name: str = Field(max_length=limits.MAX_NAME_LENGTH, pattern=DNS_LABEL_PATTERN)
    """Name of a SandboxPool in the Sandbox's namespace."""


# What a pooled Sandbox may set: what can still be applied to a pod that is already running. Everything else was
# fixed when the pool started the pod (the container, its environment and limits, its placement).
POOL_OVERRIDES = ("timeouts.idleSeconds", "timeouts.lifetimeSeconds", "podLabels", "podAnnotations")
_NOT_WITH_POOL_FIELDS = (*_IMMUTABLE_SPEC_FIELDS, "timeouts.commandSeconds")


def _not_with_pool_message(path: str) -> str:
    return (f"spec.{path} cannot be set together with spec.poolRef: the pool's pod is already running, so only "
            + ", ".join(POOL_OVERRIDES[:-1]) + f" and {POOL_OVERRIDES[-1]} may be overridden")


def _not_with_pool_rule(path: str) -> CelRule:
    parent, _, leaf = path.rpartition(".")
    present = f"has(self.{parent}) && has(self.{parent}.{leaf})" if parent else f"has(self.{leaf})"
    return CelRule(rule=f"!has(self.poolRef) || !({present})", message=_not_with_pool_message(path),
                   field_path=f".{path}", reason="FieldValueForbidden")


class SandboxSpec(SandboxTemplate):
    """Desired sandbox. Every field is optional: the operator fills in its configured defaults. With poolRef,
    the sandbox takes a ready pod of that SandboxPool (or starts cold from its template) and may override only
    timeouts.idleSeconds, timeouts.lifetimeSeconds, podLabels and podAnnotations."""

    # Transition rules (they use oldSelf) are checked on update only; the pool rules on create and update.
    cel_rules = (*(_immutable_rule(f) for f in (*_IMMUTABLE_SPEC_FIELDS, "timeouts.commandSeconds", "poolRef")),
                 _LIFETIME_RULE, *(_not_with_pool_rule(f) for f in _NOT_WITH_POOL_FIELDS))

    pool_ref: PoolRef | None = None
    """Take the sandbox's pod from this SandboxPool: a ready pod of the pool if there is one, otherwise a pod
    started cold from the pool's template (with an Event saying so). Immutable."""

    @model_validator(mode="after")
    def _only_overrides_with_pool(self) -> SandboxSpec:
        problems = pool_override_violations(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def pool_override_violations(spec: SandboxSpec) -> list[str]:
    """The Python twin of the pool rules: the fields a Sandbox with poolRef sets but may not."""
    if spec.pool_ref is None:
        return []
    problems = [_not_with_pool_message(field) for field in _IMMUTABLE_SPEC_FIELDS
                if getattr(spec, to_snake(field)) is not None]
    if spec.timeouts is not None and spec.timeouts.command_seconds is not None:
        problems.append(_not_with_pool_message("timeouts.commandSeconds"))
    return problems


def immutable_violations(old: SandboxSpec, new: SandboxSpec) -> list[str]:
    """The Python twin of the spec's transition rules: what an update may not change."""
    problems: list[str] = []
    for field in _IMMUTABLE_SPEC_FIELDS:
        attribute = to_snake(field)
        if getattr(old, attribute) != getattr(new, attribute):
            problems.append(f"spec.{field} is immutable")
    old_t, new_t = old.timeouts or Timeouts(), new.timeouts or Timeouts()
    if old_t.command_seconds != new_t.command_seconds:
        problems.append("spec.timeouts.commandSeconds is immutable")
    if old.pool_ref != new.pool_ref:
        problems.append("spec.poolRef is immutable")
    if old_t.lifetime_seconds is not None and (
            new_t.lifetime_seconds is None or new_t.lifetime_seconds > old_t.lifetime_seconds):
        problems.append("spec.timeouts.lifetimeSeconds may be lowered after creation, not raised or removed")
    return problems


def to_snake(camel: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", camel).lower()


# --------------------------------------------------------------------------------------------------------------
# status


class SandboxStatus(CrdModel):
    """Observed state, written only by the operator."""

    model_config = ConfigDict(extra="ignore", strict=False)

    phase: Phase | None = None
    """Pending (being created or not yet ready), Ready (commands can run), Terminating (being deleted),
    Expired (lifetime over; it is deleted next) or Failed (will not become ready: see reason and message)."""
    conditions: list[Condition] = Field(
        default_factory=list, max_length=8,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    """Conditions in the shape of metav1.Condition; Ready is always present."""
    observed_generation: int | None = Field(None, ge=0)
    """The metadata.generation the status was computed from."""
    pod_name: str | None = Field(None, max_length=253)
    """Name of the sandbox's pod; commands run in its container "sandbox"."""
    pod_uid: str | None = Field(None, max_length=64, alias="podUID")
    """UID of the pod the operator created; a pod with another UID is not this sandbox's."""
    node_name: str | None = Field(None, max_length=253)
    """Node the pod runs on."""
    pod_ip: str | None = Field(None, max_length=64, alias="podIP")
    """IP of the pod (no traffic is allowed to or from it)."""
    start_time: Time | None = None
    """When the kubelet accepted the pod."""
    ready_time: Time | None = None
    """When the sandbox first became Ready."""
    last_activity_time: Time | None = None
    """Start of the idle clock: the latest activity recorded by clients in the annotation
    sandbox-operator.io/last-activity, or readyTime if that is later (or there is none)."""
    expires_at: Time | None = None
    """When the lifetime ends (creation time plus lifetimeSeconds)."""
    reason: str | None = Field(None, max_length=1024)
    """CamelCase reason when the sandbox is not Ready (for example OOMKilled, ImageMissing, InvalidSpec)."""
    message: str | None = Field(None, max_length=32768)
    """Human-readable details for reason."""

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


# --------------------------------------------------------------------------------------------------------------
# the resource


class ObjectMeta(BaseModel):
    """The parts of metadata the operator reads (the CRD leaves metadata to the API server)."""

    model_config = ConfigDict(frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True)

    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    creation_timestamp: Time | None = None
    deletion_timestamp: Time | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


def dns_label_name_rule(because: str) -> CelRule:
    """The object's name must be a DNS label of at most 63 characters; ``because`` says why, in the message."""
    return CelRule(
        rule=(f"self.metadata.name.size() <= {limits.MAX_NAME_LENGTH} && "
              f"self.metadata.name.matches({cel_string(DNS_LABEL_PATTERN)})"),
        message=(f"metadata.name must be a DNS label of at most {limits.MAX_NAME_LENGTH} characters "
                 f"(lower-case letters, digits and '-'), because {because}"),
    )


_NAME_RULE = dns_label_name_rule("the pod is named after the Sandbox")


class InvalidSpecError(ValueError):
    """The Sandbox's spec cannot be run (failed validation here or against the operator's settings)."""


class NamespacedResource(BaseModel):
    """What a Sandbox and a SandboxPool share: the API's envelope and their name and namespace."""

    model_config = ConfigDict(frozen=True, extra="ignore", alias_generator=to_camel, populate_by_name=True,
                              use_attribute_docstrings=True, json_schema_extra=cel_json_schema_extra)
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    api_version: str = constants.API_VERSION
    """APIVersion defines the versioned schema of this representation of an object."""
    kind: str
    """Kind is a string value representing the REST resource this object represents."""
    metadata: Annotated[ObjectMeta, WithJsonSchema({"type": "object"})]
    """Standard object metadata."""

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


class Sandbox(NamespacedResource):
    """A disposable, hardened sandbox for running untrusted code: one pod behind a deny-all NetworkPolicy,
    collected when idle or expired."""

    cel_rules = (_NAME_RULE,)

    kind: str = constants.KIND
    """Kind is a string value representing the REST resource this object represents."""
    spec: SandboxSpec = Field(default_factory=SandboxSpec, json_schema_extra={"default": {}})
    """Desired sandbox; every field is optional."""
    status: SandboxStatus = Field(default_factory=SandboxStatus)
    """Observed state, written by the operator."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Sandbox:
        """Parses a Sandbox object. A bad spec raises :class:`InvalidSpecError`; a bad status (only the operator
        writes it) is ignored rather than fatal."""
        return parse_resource(cls, SandboxStatus, body, _NAME_RULE)

    @classmethod
    def shell_from_body(cls, body: Mapping[str, Any]) -> Sandbox:
        """Metadata and status only, with an empty spec: for reporting on a Sandbox whose spec is invalid."""
        try:
            status = SandboxStatus.model_validate(body.get("status") or {})
        except ValidationError:
            status = SandboxStatus()
        return cls(metadata=ObjectMeta.model_validate(body.get("metadata") or {}), status=status)


ResourceT = TypeVar("ResourceT", bound=BaseModel)


def parse_resource(model: type[ResourceT], status_model: type[BaseModel], body: Mapping[str, Any],
                   name_rule: CelRule) -> ResourceT:
    """Parses a Sandbox or a SandboxPool. A bad spec raises :class:`InvalidSpecError` naming the fields, and so does
    a name that is not a DNS label of at most 63 characters (``name_rule`` says why); a bad status (only the
    operator writes it) is ignored rather than fatal."""
    raw = {key: body[key] for key in ("apiVersion", "kind", "metadata", "spec") if key in body}
    try:
        status = status_model.model_validate(body.get("status") or {})
    except ValidationError:
        status = status_model()
    try:
        parsed = model.model_validate(raw)
    except ValidationError as error:
        raise InvalidSpecError(describe_validation_error(error)) from None
    name = str((body.get("metadata") or {}).get("name") or "")
    if len(name) > limits.MAX_NAME_LENGTH or not re.fullmatch(DNS_LABEL_PATTERN, name):
        raise InvalidSpecError(name_rule.message)
    return parsed.model_copy(update={"status": status})


def describe_validation_error(error: ValidationError) -> str:
    """``spec.resources.cpu: must be between 10m and 64; ...`` with the API's camelCase field paths."""
    parts = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"] if not str(p).startswith("function-"))
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{path}: {message}" if path else message)
    return "; ".join(parts)

"""The spec the operator actually runs: the user's spec with the operator's defaults filled in and its
configured maximums, image allow-list and policy checked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sandbox_operator import constants
from sandbox_operator.models.quantity import parse_quantity
from sandbox_operator.models.sandbox import EnvVar, InvalidSpecError, SandboxTemplate, Timeouts, Toleration
from sandbox_operator.settings import ENV_PREFIX, OperatorSettings


@dataclass(frozen=True)
class EffectiveSpec:
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...] | None
    env: tuple[EnvVar, ...]
    cpu: str
    memory: str
    ephemeral_storage: str
    cpu_request: str
    memory_request: str
    ephemeral_storage_request: str
    pids: int
    command_seconds: int
    idle_seconds: int
    lifetime_seconds: int
    working_dir: str
    pod_labels: Mapping[str, str]
    pod_annotations: Mapping[str, str]
    runtime_class_name: str | None
    node_selector: Mapping[str, str]
    tolerations: tuple[Toleration, ...]


def effective_timeouts(spec: SandboxTemplate, settings: OperatorSettings) -> tuple[int, int, int]:
    """(commandSeconds, idleSeconds, lifetimeSeconds) with defaults; never raises (used to collect even
    sandboxes whose spec is invalid), values above the maximums are capped."""
    timeouts = spec.timeouts or Timeouts()
    lifetime = min(timeouts.lifetime_seconds or settings.default_lifetime_seconds, settings.max_lifetime_seconds)
    command = min(timeouts.command_seconds or settings.default_command_seconds, settings.max_command_seconds,
                  lifetime)
    idle = min(timeouts.idle_seconds or settings.default_idle_seconds, settings.max_idle_seconds, lifetime)
    return command, idle, lifetime


def _allowed(what: str, values: list[str], setting: str) -> str:
    return f"(allowed {what}: {', '.join(values) or 'none'}; {ENV_PREFIX}{setting})"


def placement_problems(spec: SandboxTemplate, settings: OperatorSettings) -> list[str]:
    """Where the tenant asks its pod to run, checked against the administrator's allow-lists: a tenant must not
    pick a node by name, land on the control plane or on nodes tainted for others, or choose a weaker runtime."""
    problems: list[str] = []
    for index, toleration in enumerate(spec.tolerations or ()):
        if not settings.toleration_allowed(toleration.key):
            allowed = _allowed("toleration keys", settings.allowed_toleration_keys, "ALLOWED_TOLERATION_KEYS")
            if toleration.key:
                problems.append(f'spec.tolerations[{index}].key "{toleration.key}" is not allowed {allowed}')
            else:
                problems.append(f"spec.tolerations[{index}] has an empty key and so tolerates every taint, which "
                                f"only {ENV_PREFIX}ALLOWED_TOLERATION_KEYS=* allows {allowed}")
    for key in spec.node_selector or {}:
        if not settings.node_selector_key_allowed(key):
            allowed = _allowed("node selector keys", settings.allowed_node_selector_keys,
                               "ALLOWED_NODE_SELECTOR_KEYS")
            problems.append(f'spec.nodeSelector key "{key}" is not allowed {allowed}')
    runtime_class = spec.runtime_class_name
    if runtime_class and not settings.runtime_class_allowed(runtime_class):
        classes = settings.allowed_runtime_classes or (
            [f"{settings.default_runtime_class} (the default)"] if settings.default_runtime_class else [])
        problems.append(f'spec.runtimeClassName "{runtime_class}" is not allowed '
                        f"{_allowed('runtime classes', classes, 'ALLOWED_RUNTIME_CLASSES')}")
    return problems


def resolve(spec: SandboxTemplate, settings: OperatorSettings) -> EffectiveSpec:
    """Fills in defaults and checks the spec against the operator's settings; raises InvalidSpecError naming
    every problem."""
    problems: list[str] = []
    resources = spec.resources
    timeouts = spec.timeouts or Timeouts()

    image = spec.image or settings.default_image
    if not settings.image_allowed(image):
        problems.append(f"spec.image {image!r} is not allowed by the operator (allowed: "
                        f"{', '.join(settings.allowed_images)})")

    quantities: dict[str, str] = {}
    requests = resources.requests if resources else None
    for field, api_name in (("cpu", "cpu"), ("memory", "memory"), ("ephemeral_storage", "ephemeralStorage")):
        value = getattr(resources, field, None) if resources else None
        chosen = value if value is not None else str(getattr(settings, f"default_{field}"))
        maximum = getattr(settings, f"max_{field}")
        if parse_quantity(chosen) > parse_quantity(maximum):
            problems.append(f"spec.resources.{api_name} {chosen} exceeds the operator's maximum {maximum}")
        quantities[field] = chosen
        requested = getattr(requests, field, None) if requests else None
        if requested is None:
            # A default request never exceeds the limit: a sandbox asking for 32Mi of memory gets a 32Mi
            # request, not an error.
            default_request = str(getattr(settings, f"default_{field}_request"))
            smaller = parse_quantity(default_request) <= parse_quantity(chosen)
            quantities[f"{field}_request"] = default_request if smaller else chosen
            continue
        quantities[f"{field}_request"] = requested
        if parse_quantity(requested) > parse_quantity(maximum):
            problems.append(f"spec.resources.requests.{api_name} {requested} exceeds the operator's maximum "
                            f"{maximum}")
        elif parse_quantity(requested) > parse_quantity(chosen):
            source = (f"spec.resources.{api_name}" if value is not None
                      else f"the operator's default {ENV_PREFIX}DEFAULT_{field.upper()}")
            problems.append(f"spec.resources.requests.{api_name} {requested} exceeds the limit {chosen} ({source})")

    pids = resources.pids if resources and resources.pids is not None else settings.default_pids
    if pids > settings.max_pids:
        problems.append(f"spec.resources.pids {pids} exceeds the operator's maximum {settings.max_pids}")

    lifetime_seconds = timeouts.lifetime_seconds or settings.default_lifetime_seconds
    # Against a defaulted lifetime, idle and command limits are capped (a 60 s sandbox gets a 60 s command limit,
    # not an error). Explicit values on both sides that contradict each other are an error, as in the CRD.
    command_seconds = timeouts.command_seconds or settings.default_command_seconds
    idle_seconds = timeouts.idle_seconds or settings.default_idle_seconds
    if timeouts.lifetime_seconds is None or timeouts.command_seconds is None:
        command_seconds = min(command_seconds, lifetime_seconds)
    if timeouts.lifetime_seconds is None or timeouts.idle_seconds is None:
        idle_seconds = min(idle_seconds, lifetime_seconds)
    for api_name, value, maximum in (("commandSeconds", command_seconds, settings.max_command_seconds),
                                     ("idleSeconds", idle_seconds, settings.max_idle_seconds),
                                     ("lifetimeSeconds", lifetime_seconds, settings.max_lifetime_seconds)):
        if value > maximum:
            problems.append(f"spec.timeouts.{api_name} {value} exceeds the operator's maximum {maximum}")
    if idle_seconds > lifetime_seconds:
        problems.append(f"spec.timeouts.idleSeconds {idle_seconds} exceeds lifetimeSeconds {lifetime_seconds}")
    if command_seconds > lifetime_seconds:
        problems.append(
            f"spec.timeouts.commandSeconds {command_seconds} exceeds lifetimeSeconds {lifetime_seconds}")

    env = tuple(spec.env or ())
    if not settings.allow_secret_env:
        for var in env:
            if var.value_from is not None:
                problems.append(f"spec.env {var.name}: Secret references are not allowed by the operator")
    names = [var.name for var in env]
    if len(names) != len(set(names)):
        problems.append("spec.env names must be unique")

    problems.extend(placement_problems(spec, settings))
    runtime_class = spec.runtime_class_name or settings.default_runtime_class

    if problems:
        raise InvalidSpecError("; ".join(problems))

    return EffectiveSpec(
        image=image,
        command=tuple(spec.command) if spec.command else (constants.INIT_PROGRAM,),
        args=tuple(spec.args) if spec.args is not None else None,
        env=env,
        cpu=quantities["cpu"],
        memory=quantities["memory"],
        ephemeral_storage=quantities["ephemeral_storage"],
        cpu_request=quantities["cpu_request"],
        memory_request=quantities["memory_request"],
        ephemeral_storage_request=quantities["ephemeral_storage_request"],
        pids=pids,
        command_seconds=command_seconds,
        idle_seconds=idle_seconds,
        lifetime_seconds=lifetime_seconds,
        working_dir=spec.working_dir or constants.WORKSPACE_DIR,
        pod_labels=dict(spec.pod_labels or {}),
        pod_annotations=dict(spec.pod_annotations or {}),
        runtime_class_name=runtime_class,
        node_selector=dict(spec.node_selector or {}),
        tolerations=tuple(spec.tolerations or ()),
    )

"""The sandbox pod: one container, hardened to pass Pod Security "restricted" and then some."""

from __future__ import annotations

import datetime
import math

from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.builders.meta import child_metadata
from sandbox_operator.models.effective import EffectiveSpec
from sandbox_operator.models.quantity import parse_quantity
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.settings import OperatorSettings

WORKSPACE_VOLUME = "workspace"
TMP_VOLUME = "tmp"
POD_HOSTNAME = "sandbox"  # not the Sandbox's name: nothing about the tenant leaks into the sandbox
RUNTIME_DEFAULT = client.V1SeccompProfile(type="RuntimeDefault")
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"


def active_deadline_seconds(sandbox: Sandbox, lifetime_seconds: int, now: datetime.datetime) -> int:
    """What is left of the lifetime, counted from the Sandbox's creation: a pod created late (operator down)
    still ends when the Sandbox's lifetime does. Never below 1 (0 is invalid in a pod spec)."""
    created = sandbox.metadata.creation_timestamp
    elapsed = (now - created).total_seconds() if created else 0.0
    return max(1, math.ceil(lifetime_seconds - max(0.0, elapsed)))


def _env(spec: EffectiveSpec, settings: OperatorSettings) -> list[client.V1EnvVar]:
    env: list[client.V1EnvVar] = []
    if not any(var.name == "HOME" for var in spec.env):
        env.append(client.V1EnvVar(name="HOME", value=constants.WORKSPACE_DIR))
    for var in spec.env:
        if var.value_from is not None:
            ref = var.value_from.secret_key_ref
            env.append(client.V1EnvVar(name=var.name, value_from=client.V1EnvVarSource(
                secret_key_ref=client.V1SecretKeySelector(name=ref.name, key=ref.key, optional=ref.optional))))
        else:
            env.append(client.V1EnvVar(name=var.name, value=var.value or ""))
    # Last, and under a prefix users cannot use: the exec wrapper's limits. The wrapper turns the process limit
    # into RLIMIT_NPROC, which counts per host UID: every sandbox has host UIDs of its own (user namespaces, or
    # a UID from SANDBOX_OPERATOR_SANDBOX_UID_RANGE), so one sandbox's processes never count against another's.
    env.append(client.V1EnvVar(name=constants.ENV_COMMAND_TIMEOUT, value=str(spec.command_seconds)))
    env.append(client.V1EnvVar(name=constants.ENV_PIDS_LIMIT, value=str(spec.pids)))
    env.append(client.V1EnvVar(name=constants.ENV_FILE_SIZE_LIMIT, value=str(settings.file_size_limit_bytes)))
    return env


def _tmp_size(spec: EffectiveSpec, settings: OperatorSettings) -> str:
    if parse_quantity(settings.tmp_size_limit) < parse_quantity(spec.ephemeral_storage):
        return settings.tmp_size_limit
    return spec.ephemeral_storage


def _affinity(settings: OperatorSettings) -> client.V1Affinity | None:
    if not settings.avoid_control_plane:
        return None
    return client.V1Affinity(node_affinity=client.V1NodeAffinity(
        required_during_scheduling_ignored_during_execution=client.V1NodeSelector(node_selector_terms=[
            client.V1NodeSelectorTerm(match_expressions=[
                client.V1NodeSelectorRequirement(key=CONTROL_PLANE_LABEL, operator="DoesNotExist")])])))


def build_container(spec: EffectiveSpec, settings: OperatorSettings, *, run_as_user: int) -> client.V1Container:
    """The sandbox container. Limits are hard; requests are what the scheduler reserves, small by default so that
    idle sandboxes pack a node (Burstable QoS; Guaranteed when the requests equal the limits).

    There is no readiness probe: an exec probe is a process spawned in every sandbox every period. PID 1
    (sandbox-init) checks at start that commands can run and exits 1 if not, so a running container is a usable
    one."""
    limits = {"cpu": spec.cpu, "memory": spec.memory, "ephemeral-storage": spec.ephemeral_storage}
    requests = {"cpu": spec.cpu_request, "memory": spec.memory_request,
                "ephemeral-storage": spec.ephemeral_storage_request}
    return client.V1Container(
        name=constants.CONTAINER_NAME,
        image=spec.image,
        image_pull_policy="IfNotPresent",
        command=list(spec.command),
        args=list(spec.args) if spec.args is not None else None,
        working_dir=spec.working_dir,
        env=_env(spec, settings),
        resources=client.V1ResourceRequirements(requests=requests, limits=limits),
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=run_as_user,
            run_as_group=constants.SANDBOX_GID,
            allow_privilege_escalation=False,
            privileged=False,
            read_only_root_filesystem=True,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=RUNTIME_DEFAULT,
        ),
        volume_mounts=[
            client.V1VolumeMount(name=WORKSPACE_VOLUME, mount_path=constants.WORKSPACE_DIR),
            client.V1VolumeMount(name=TMP_VOLUME, mount_path=constants.TMP_DIR),
        ],
        termination_message_policy="FallbackToLogsOnError",
    )


def build_pod(sandbox: Sandbox, spec: EffectiveSpec, settings: OperatorSettings, *, run_as_user: int,
              now: datetime.datetime) -> client.V1Pod:
    """The one pod of a Sandbox, named after it (a second create of the same Sandbox gets 409).

    ``run_as_user`` is the sandbox's host UID (see handlers/uids.py); the group stays the image's 1000."""
    return client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=child_metadata(sandbox, constants.pod_name(sandbox.name), labels=dict(spec.pod_labels),
                                annotations=dict(spec.pod_annotations)),
        spec=client.V1PodSpec(
            containers=[build_container(spec, settings, run_as_user=run_as_user)],
            restart_policy="Never",
            active_deadline_seconds=active_deadline_seconds(sandbox, spec.lifetime_seconds, now),
            termination_grace_period_seconds=settings.termination_grace_seconds,
            automount_service_account_token=False,
            service_account_name=settings.service_account_name,
            enable_service_links=False,
            host_network=False,
            host_pid=False,
            host_ipc=False,
            share_process_namespace=False,
            host_users=False if settings.host_users_off(spec.runtime_class_name) else None,
            hostname=POD_HOSTNAME,
            # Egress is denied anyway; a dead local resolver fails fast and leaks no search domains.
            dns_policy="None",
            dns_config=client.V1PodDNSConfig(nameservers=["127.0.0.1"]),
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=run_as_user,
                run_as_group=constants.SANDBOX_GID,
                fs_group=constants.SANDBOX_GID,
                seccomp_profile=RUNTIME_DEFAULT,
            ),
            volumes=[
                client.V1Volume(name=WORKSPACE_VOLUME,
                                empty_dir=client.V1EmptyDirVolumeSource(size_limit=spec.ephemeral_storage)),
                client.V1Volume(name=TMP_VOLUME,
                                empty_dir=client.V1EmptyDirVolumeSource(size_limit=_tmp_size(spec, settings))),
            ],
            runtime_class_name=spec.runtime_class_name,
            priority_class_name=settings.priority_class_name,
            node_selector=dict(spec.node_selector) or None,
            affinity=_affinity(settings),
            tolerations=[client.V1Toleration(
                key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                toleration_seconds=t.toleration_seconds) for t in spec.tolerations] or None,
        ),
    )

"""Warm pools, as pure functions: the pool's pods and deny-all policy, which pod a claim takes and the patch that
hands it over, what a refill does, and the pool's status. docs/pools.md explains the lifecycle.

A pool pod is an ordinary hardened sandbox pod (``build_pod``) that carries the pool's label instead of a
Sandbox's, is controlled by the SandboxPool and has no deadline. A claim is one conditional write (a JSON merge
patch carrying the pod's resourceVersion) that makes the Sandbox the pod's only owner, adds the Sandbox's label
and sets the deadline of the Sandbox's lifetime; the pool's label stays, so the pool's deny-all policy keeps
selecting the pod through the hand-over, and the Sandbox's own policy (created before the claim) from then on.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.builders.meta import child_labels, owner_reference
from sandbox_operator.builders.pod import build_pod
from sandbox_operator.builders.status import ENDED_POD_PHASES, IMAGE_MISSING_REASONS, PodObservation
from sandbox_operator.models.conditions import CONDITION_READY, Condition
from sandbox_operator.models.effective import EffectiveSpec
from sandbox_operator.models.pool import SandboxPool, SandboxPoolStatus
from sandbox_operator.models.sandbox import ObjectMeta, Sandbox
from sandbox_operator.models.timestamps import format_time, parse_time
from sandbox_operator.settings import OperatorSettings

# A pool pod that has not become ready in this long is replaced (it will most likely never be).
POOL_POD_START_TIMEOUT_SECONDS: Final = 300

ReplaceReason = Literal["Ended", "ImageMissing", "StartTimeout", "Outdated", "MaxAgeExceeded", "Excess"]
PoolReadyReason = Literal["PoolFull", "Refilling", "InvalidSpec"]


_SERIALIZER = client.ApiClient()


def _to_json(model: object) -> Any:
    """A kubernetes client model as the API's JSON (camelCase keys, None fields left out)."""
    return _SERIALIZER.sanitize_for_serialization(model)  # type: ignore[no-untyped-call]


# --------------------------------------------------------------------------------------------------------------
# The pool's children


def pool_labels(pool_name: str) -> dict[str, str]:
    """The project's labels on a pool's pods and policy; the policy selects by LABEL_POOL (a reserved key)."""
    return {constants.LABEL_APP_NAME: constants.APP_NAME, constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
            constants.LABEL_POOL: pool_name}


def pool_owner_reference(pool: SandboxPool) -> client.V1OwnerReference:
    """Controller reference to the pool: garbage collection removes its unclaimed pods and its policy with it.
    A claim replaces it, so claimed pods do not go with the pool."""
    return client.V1OwnerReference(
        api_version=constants.API_VERSION, kind=constants.POOL_KIND, name=pool.name, uid=pool.metadata.uid,
        controller=True, block_owner_deletion=True)


def _pool_as_owner(pool: SandboxPool) -> Sandbox:
    """The pool in the place of the Sandbox that ``build_pod`` builds for: only its name, namespace and UID are
    read, and the pod's metadata and deadline are replaced afterwards."""
    return Sandbox(metadata=ObjectMeta(name=pool.name, namespace=pool.namespace, uid=pool.metadata.uid))


def _pool_pod_spec(pool: SandboxPool, spec: EffectiveSpec, settings: OperatorSettings, *,
                   run_as_user: int, now: datetime.datetime) -> client.V1PodSpec:
    pod_spec = build_pod(_pool_as_owner(pool), spec, settings, run_as_user=run_as_user, now=now).spec
    assert pod_spec is not None
    # No deadline while unclaimed: the kubelet counts activeDeadlineSeconds from the pod's start and the API
    # only lets it be added or lowered, so a deadline set now would cap the lifetime of the Sandbox that claims
    # the pod later. Maximum age is the operator's to enforce (plan_refill).
    pod_spec.active_deadline_seconds = None
    return pod_spec


def template_hash(pool: SandboxPool, spec: EffectiveSpec, settings: OperatorSettings) -> str:
    """A hash of the pod a pool builds now (its per-pod host UID left out): it changes with the template and with
    the operator's settings that shape pods, and pods carrying another one are replaced."""
    pod_spec = _pool_pod_spec(pool, spec, settings, run_as_user=constants.SANDBOX_UID,
                              now=datetime.datetime.fromtimestamp(0, datetime.UTC))
    serialized = json.dumps(_to_json(pod_spec), sort_keys=True)
    return hashlib.sha256(serialized.encode()).hexdigest()[:16]


def build_pool_pod(pool: SandboxPool, spec: EffectiveSpec, settings: OperatorSettings, *, run_as_user: int,
                   pod_template_hash: str, now: datetime.datetime, token: str | None = None) -> client.V1Pod:
    """One unclaimed pod of the pool: hardened exactly like a Sandbox's pod, with a generated name (a dot in it,
    so it can never be the name of a Sandbox's pod), the pool's label and no Sandbox label, controlled by the
    pool. ``run_as_user`` is a host UID of its own, as for any sandbox pod. With ``token`` the name is
    ``<pool>.pool-<token>`` and the token is its ``LABEL_POOL_POD`` label, which its own policy selects."""
    return client.V1Pod(
        api_version="v1",
        kind="Pod",
        metadata=client.V1ObjectMeta(
            name=constants.pool_pod_name(pool.name, token) if token else None,
            generate_name=None if token else constants.pool_pod_generate_name(pool.name),
            namespace=pool.namespace,
            labels={**spec.pod_labels, **pool_labels(pool.name),
                    **({constants.LABEL_POOL_POD: token} if token else {})},
            annotations={**spec.pod_annotations, constants.ANNOTATION_POOL_TEMPLATE: pod_template_hash},
            owner_references=[pool_owner_reference(pool)],
        ),
        spec=_pool_pod_spec(pool, spec, settings, run_as_user=run_as_user, now=now),
    )


def build_pool_network_policy(pool: SandboxPool) -> client.V1NetworkPolicy:
    """The pool's deny-all policy, created before its first pod. It selects by the pool's label, which a pool
    pod keeps for life, so it covers every pod of the pool from creation through the claim and after."""
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(
            name=constants.pool_network_policy_name(pool.name), namespace=pool.namespace,
            labels=pool_labels(pool.name), owner_references=[pool_owner_reference(pool)]),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels={constants.LABEL_POOL: pool.name}),
            policy_types=["Ingress", "Egress"],
            ingress=[],
            egress=[],
        ),
    )


def build_pool_pod_network_policy(pod: Mapping[str, Any]) -> client.V1NetworkPolicy:
    """A pool pod's own deny-all policy, controlled by the pod: it lives exactly as long as the pod, whoever owns
    the pod, so a claimed pod stays covered without a write on the claim's path and whatever becomes of the pool.
    A pod is claimable only once this policy exists."""
    meta = _metadata(pod)
    labels = meta.get("labels") or {}
    pool_name, token = labels.get(constants.LABEL_POOL), labels.get(constants.LABEL_POOL_POD)
    if not pool_name or not token:
        raise ValueError(f"pod {meta.get('name')!r} has no {constants.LABEL_POOL} and {constants.LABEL_POOL_POD} "
                         "labels; it is not a pool's pod")
    selector = {constants.LABEL_POOL: pool_name, constants.LABEL_POOL_POD: token}
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=client.V1ObjectMeta(
            name=constants.pool_pod_network_policy_name(str(meta.get("name"))), namespace=meta.get("namespace"),
            labels={**pool_labels(pool_name), constants.LABEL_POOL_POD: token},
            owner_references=[client.V1OwnerReference(api_version="v1", kind="Pod", name=str(meta.get("name")),
                                                      uid=str(meta.get("uid")), controller=True)]),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=selector),
            policy_types=["Ingress", "Egress"],
            ingress=[],
            egress=[],
        ),
    )


# --------------------------------------------------------------------------------------------------------------
# Reading pool pods


def _metadata(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def _controller(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    refs = _metadata(pod).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), {})


def _created(pod: Mapping[str, Any]) -> datetime.datetime:
    created = parse_time(_metadata(pod).get("creationTimestamp"))
    if created is None:
        raise ValueError(f"pod {_metadata(pod).get('name')!r} has no metadata.creationTimestamp")
    return created


def is_unclaimed_pod_of(pool: SandboxPool, pod: Mapping[str, Any]) -> bool:
    """Controlled by this very pool (by UID: a deleted namesake's leftovers are not) and not claimed."""
    labels = _metadata(pod).get("labels") or {}
    return (_controller(pod).get("uid") == pool.metadata.uid and labels.get(constants.LABEL_POOL) == pool.name
            and constants.LABEL_SANDBOX not in labels)


def is_claimed_from(pool: SandboxPool, pod: Mapping[str, Any]) -> bool:
    """A live pod that came from a pool of this name and now belongs to a Sandbox."""
    meta = _metadata(pod)
    labels = meta.get("labels") or {}
    return (labels.get(constants.LABEL_POOL) == pool.name and constants.LABEL_SANDBOX in labels
            and _controller(pod).get("kind") == constants.KIND and not meta.get("deletionTimestamp")
            and (pod.get("status") or {}).get("phase") not in ENDED_POD_PHASES)


def _too_old(pool: SandboxPool, pod: Mapping[str, Any], now: datetime.datetime) -> bool:
    max_age = pool.spec.max_age_seconds
    return max_age is not None and (now - _created(pod)).total_seconds() >= max_age


def is_claimable(pool: SandboxPool, pod: Mapping[str, Any], *, pod_template_hash: str,
                 now: datetime.datetime) -> bool:
    """Ready, unclaimed, not being deleted, of the current template, younger than the maximum age and without a
    deadline (a claim sets the Sandbox's, which the API only allows on a pod that has none or a higher one)."""
    observed = PodObservation.from_pod(pod)
    annotations = _metadata(pod).get("annotations") or {}
    return (is_unclaimed_pod_of(pool, pod) and observed.phase == "Running" and observed.ready
            and not observed.deleting and observed.active_deadline_seconds is None
            and annotations.get(constants.ANNOTATION_POOL_TEMPLATE) == pod_template_hash
            and not _too_old(pool, pod, now))


def choose_pod(pool: SandboxPool, pods: Iterable[Mapping[str, Any]], *, pod_template_hash: str,
               now: datetime.datetime, taken_uids: Collection[str] = (),
               covered_uids: Collection[str] | None = None) -> Mapping[str, Any] | None:
    """The pod a claim should take: the oldest claimable one (then by name, so the choice is deterministic).

    Oldest first, so every pod is used well before its maximum age and none is replaced unused, and the pool
    turns over as a queue. ``taken_uids`` are pods that claims in flight in this process have picked, so
    concurrent claims pick different pods instead of racing for one and losing to a 409. ``covered_uids``, when
    given, are the pods whose own deny-all policy exists: only those are taken."""
    candidates = [pod for pod in pods
                  if str(_metadata(pod).get("uid")) not in taken_uids
                  and (covered_uids is None or str(_metadata(pod).get("uid")) in covered_uids)
                  and is_claimable(pool, pod, pod_template_hash=pod_template_hash, now=now)]
    if not candidates:
        return None
    return min(candidates, key=lambda pod: (_created(pod), str(_metadata(pod).get("name"))))


# --------------------------------------------------------------------------------------------------------------
# The claim


def claim_deadline_seconds(sandbox: Sandbox, lifetime_seconds: int, pod_start_time: datetime.datetime,
                           now: datetime.datetime) -> int:
    """activeDeadlineSeconds for a claimed pod: the kubelet counts it from the pod's status.startTime, so it is
    the pod's time in the pool plus what is left of the Sandbox's lifetime (counted from the Sandbox's creation,
    as for a cold start). Never below 1."""
    created = sandbox.metadata.creation_timestamp or now
    end = created + datetime.timedelta(seconds=lifetime_seconds)
    return max(1, math.ceil((end - pod_start_time).total_seconds()))


def claim_patch(sandbox: Sandbox, pod: Mapping[str, Any], spec: EffectiveSpec, *,
                now: datetime.datetime) -> dict[str, Any]:
    """The JSON merge patch (``application/merge-patch+json``) that hands ``pod`` to ``sandbox``, in one write.

    - ``metadata.resourceVersion`` makes it conditional: if the pod changed since it was read (another claim, a
      deletion, the kubelet) the API server answers 409 and nothing is written. This write is the single
      commit point of a claim.
    - ``ownerReferences`` is replaced as a whole (merge patches replace lists): the Sandbox becomes the only
      owner and controller, so deleting the pool never deletes a claimed pod, and there is never a moment with
      two controllers or none.
    - the Sandbox's label is added and the pool's kept: the pool's policy covers the pod until the write and
      the Sandbox's policy (created first) after it, so no moment is uncovered.
    - ``activeDeadlineSeconds`` starts the Sandbox's lifetime (the pod has none: see ``is_claimable``).
    - the Sandbox's podLabels and podAnnotations are merged over the template's.

    ``spec`` is the Sandbox's effective spec (the pool's template with the Sandbox's overrides)."""
    meta = _metadata(pod)
    resource_version = meta.get("resourceVersion")
    if not resource_version:
        raise ValueError(f"pod {meta.get('name')!r} has no metadata.resourceVersion; a claim must be conditional")
    start_time = parse_time((pod.get("status") or {}).get("startTime"))
    if start_time is None:
        raise ValueError(f"pod {meta.get('name')!r} has no status.startTime; only a started pod can be claimed")
    pool_name = (meta.get("labels") or {}).get(constants.LABEL_POOL)
    if not pool_name:
        raise ValueError(f"pod {meta.get('name')!r} has no label {constants.LABEL_POOL}; it is not a pool's pod")
    labels = {**spec.pod_labels, **child_labels(sandbox.name), constants.LABEL_POOL: pool_name}
    annotations = {**spec.pod_annotations, constants.ANNOTATION_CLAIMED_AT: format_time(now)}
    owner = _to_json(owner_reference(sandbox))
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": {"activeDeadlineSeconds": claim_deadline_seconds(sandbox, spec.lifetime_seconds, start_time, now)},
    }


def claimed_pod_of(sandbox: Sandbox, pods: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The pod an earlier claim of this Sandbox already took (the operator may have stopped after the claim's
    write and before recording it): the one whose controller is this very Sandbox, by UID."""
    return next((pod for pod in pods
                 if _controller(pod).get("uid") == sandbox.metadata.uid
                 and _controller(pod).get("kind") == constants.KIND), None)


# --------------------------------------------------------------------------------------------------------------
# Refill


@dataclass(frozen=True)
class PodToDelete:
    """A pool pod to delete, with the preconditions of the delete: a pod claimed meanwhile has another
    resourceVersion, so the delete fails with 409 instead of removing a Sandbox's pod."""

    name: str
    uid: str
    resource_version: str
    reason: ReplaceReason


@dataclass(frozen=True)
class RefillPlan:
    create: int
    """How many pods to create now."""
    delete: tuple[PodToDelete, ...]
    """Unclaimed pods to delete (their places are counted in ``create``)."""
    ready: int
    starting: int


def _replace_reason(pool: SandboxPool, pod: Mapping[str, Any], observed: PodObservation, *,
                    pod_template_hash: str, now: datetime.datetime) -> ReplaceReason | None:
    if observed.ended:
        return "Ended"
    if observed.waiting_reason in IMAGE_MISSING_REASONS:
        return "ImageMissing"
    if (_metadata(pod).get("annotations") or {}).get(constants.ANNOTATION_POOL_TEMPLATE) != pod_template_hash:
        return "Outdated"
    if _too_old(pool, pod, now):
        return "MaxAgeExceeded"
    if not observed.ready and (now - _created(pod)).total_seconds() >= POOL_POD_START_TIMEOUT_SECONDS:
        return "StartTimeout"
    return None


def _to_delete(pod: Mapping[str, Any], reason: ReplaceReason) -> PodToDelete:
    meta = _metadata(pod)
    return PodToDelete(name=str(meta.get("name")), uid=str(meta.get("uid")),
                       resource_version=str(meta.get("resourceVersion")), reason=reason)


def plan_refill(pool: SandboxPool, pods: Iterable[Mapping[str, Any]], *, pod_template_hash: str,
                now: datetime.datetime, creations_in_flight: int = 0) -> RefillPlan:
    """What brings the pool back to ``spec.size`` ready-or-starting unclaimed pods.

    Pods that ended, cannot pull their image, never started, are of an older template or past the maximum age
    are deleted and replaced at once (none of them would be handed out). Beyond ``size``, starting pods go first
    (they are worth least), then the oldest ready ones. ``creations_in_flight`` are creates this process sent
    whose pods the watch has not delivered yet, so a refill never overshoots. Pods being deleted count for
    nothing. Claimed pods are not the pool's any more and are never touched."""
    delete: list[PodToDelete] = []
    ready: list[Mapping[str, Any]] = []
    starting: list[Mapping[str, Any]] = []
    for pod in pods:
        observed = PodObservation.from_pod(pod)
        if not is_unclaimed_pod_of(pool, pod) or observed.deleting:
            continue
        reason = _replace_reason(pool, pod, observed, pod_template_hash=pod_template_hash, now=now)
        if reason is not None:
            delete.append(_to_delete(pod, reason))
        elif observed.ready and observed.phase == "Running":
            ready.append(pod)
        else:
            starting.append(pod)
    size = pool.spec.size
    excess = len(ready) + len(starting) - size
    if excess > 0:
        by_age = sorted(ready, key=lambda pod: (_created(pod), str(_metadata(pod).get("name"))))
        surplus = (sorted(starting, key=_created, reverse=True) + by_age)[:excess]
        delete += [_to_delete(pod, "Excess") for pod in surplus]
        surplus_uids = {_metadata(pod).get("uid") for pod in surplus}
        ready = [pod for pod in ready if _metadata(pod).get("uid") not in surplus_uids]
        starting = [pod for pod in starting if _metadata(pod).get("uid") not in surplus_uids]
    create = max(0, size - len(ready) - len(starting) - creations_in_flight)
    return RefillPlan(create=create, delete=tuple(delete), ready=len(ready), starting=len(starting))


# --------------------------------------------------------------------------------------------------------------
# Status


def build_pool_status(pool: SandboxPool, pods: Iterable[Mapping[str, Any]], *, pod_template_hash: str | None,
                      now: datetime.datetime, invalid_spec: str | None = None) -> SandboxPoolStatus:
    """The pool's status from its pods. ``pod_template_hash`` is None (and ``invalid_spec`` says why) when the
    template fails the operator's checks: then nothing is ready to claim and the Ready condition says so.

    readyCount counts claimable pods (what a claim can take now); startingCount the unclaimed pods on their way
    there; claimedCount the live pods of a pool of this name that belong to a Sandbox."""
    pods = list(pods)
    ready = starting = 0
    for pod in pods:
        observed = PodObservation.from_pod(pod)
        if not is_unclaimed_pod_of(pool, pod) or observed.deleting or observed.ended:
            continue
        if pod_template_hash is not None and is_claimable(pool, pod, pod_template_hash=pod_template_hash,
                                                          now=now):
            ready += 1
        elif not observed.ready:
            starting += 1
    claimed = sum(1 for pod in pods if is_claimed_from(pool, pod))
    size = pool.spec.size
    reason: PoolReadyReason
    if invalid_spec is not None:
        status, reason, message = "False", "InvalidSpec", invalid_spec
    elif ready >= size:
        status, reason, message = "True", "PoolFull", f"{ready} of {size} pods ready to claim"
    else:
        status, reason, message = "False", "Refilling", f"{ready} of {size} pods ready to claim, {starting} starting"
    old = pool.status.condition(CONDITION_READY)
    transition = now if old is None or old.status != status else old.last_transition_time
    condition = Condition(type=CONDITION_READY, status=status, observed_generation=pool.metadata.generation,
                          last_transition_time=transition, reason=reason, message=message)
    others = [c for c in pool.status.conditions if c.type != CONDITION_READY]
    return SandboxPoolStatus(ready_count=ready, starting_count=starting, claimed_count=claimed,
                             conditions=[condition, *others], observed_generation=pool.metadata.generation)

"""Warm pools' pure builders: the pool pod and policy, choosing a pod, the claim patch, refill and status."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

from sandbox_operator import constants
from sandbox_operator.builders import pool as pools
from sandbox_operator.builders.pod import build_pod
from sandbox_operator.models.effective import resolve
from sandbox_operator.models.pool import SandboxPool, spec_with_overrides
from sandbox_operator.models.sandbox import InvalidSpecError, ObjectMeta, Sandbox, SandboxSpec, SandboxTemplate
from sandbox_operator.settings import OperatorSettings
from tests.unit.test_builders import HOST_UID, restricted_violations, to_json

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
SETTINGS = OperatorSettings()
TEMPLATE = {"timeouts": {"idleSeconds": 600, "lifetimeSeconds": 3600, "commandSeconds": 60},
            "podLabels": {"team": "a"}, "podAnnotations": {"example.com/note": "template"}}


def make_pool(size: int = 3, max_age: int | None = None, template: dict[str, Any] | None = None,
              uid: str = "pool-uid") -> SandboxPool:
    spec: dict[str, Any] = {"size": size, "template": TEMPLATE if template is None else template}
    if max_age is not None:
        spec["maxAgeSeconds"] = max_age
    return SandboxPool.from_body({"metadata": {"name": "python", "namespace": "ns", "uid": uid, "generation": 4},
                                  "spec": spec})


POOL = make_pool()
EFFECTIVE = resolve(POOL.spec.template, SETTINGS)
HASH = pools.template_hash(POOL, EFFECTIVE, SETTINGS)


def pool_pod(name: str = "python.pool-aaaaa", *, age: float = 60, ready: bool = True, phase: str = "Running",
             template_hash: str = HASH, pool: SandboxPool = POOL, **extra: Any) -> dict[str, Any]:
    """A pool pod as the API returns it: built by the builder, then named, versioned and started."""
    body = to_json(pools.build_pool_pod(pool, EFFECTIVE, SETTINGS, run_as_user=HOST_UID,
                                        pod_template_hash=template_hash, now=NOW))
    created = NOW - datetime.timedelta(seconds=age)
    body["metadata"].update(name=name, uid=f"uid-{name}", resourceVersion=f"rv-{name}",
                            creationTimestamp=created.strftime("%Y-%m-%dT%H:%M:%SZ"))
    body["status"] = {"phase": phase, "startTime": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    for key, value in extra.items():
        if key == "metadata":
            body["metadata"].update(value)
        elif key == "status":
            body["status"].update(value)
        else:
            body["spec"][key] = value
    return body


def claiming_sandbox(spec: dict[str, Any] | None = None, created: datetime.datetime = NOW) -> Sandbox:
    return Sandbox.from_body({"metadata": {"name": "sbx-1", "namespace": "ns", "uid": "sbx-uid",
                                           "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
                              "spec": {"poolRef": {"name": "python"}, **(spec or {})}})


# --------------------------------------------------------------------------------------------------------------
# The pool's pod and policy


def test_a_pool_pod_is_hardened_like_any_sandbox_pod() -> None:
    pod = pool_pod()
    assert restricted_violations(pod) == []
    cold = to_json(build_pod(Sandbox(metadata=ObjectMeta(name="python", namespace="ns", uid="pool-uid")),
                             EFFECTIVE, SETTINGS, run_as_user=HOST_UID, now=NOW))
    cold["spec"].pop("activeDeadlineSeconds")
    assert pod["spec"] == cold["spec"]


def test_a_pool_pod_is_labelled_owned_and_named_for_its_pool() -> None:
    meta = to_json(pools.build_pool_pod(POOL, EFFECTIVE, SETTINGS, run_as_user=HOST_UID, pod_template_hash=HASH,
                                        now=NOW))["metadata"]
    assert meta["generateName"] == "python.pool-" and "name" not in meta
    assert meta["labels"] == {"team": "a", "app.kubernetes.io/name": "sandbox",
                              "app.kubernetes.io/managed-by": "sandbox-operator", "sandbox-operator.io/pool": "python"}
    assert constants.LABEL_SANDBOX not in meta["labels"]
    assert meta["annotations"] == {"example.com/note": "template", "sandbox-operator.io/pool-template": HASH}
    assert meta["ownerReferences"] == [{"apiVersion": "sandbox-operator.io/v1alpha1", "kind": "SandboxPool",
                                        "name": "python", "uid": "pool-uid", "controller": True,
                                        "blockOwnerDeletion": True}]


def test_an_unclaimed_pod_has_no_deadline() -> None:
    """A deadline can only be added or lowered later, so one set now would cap the claiming Sandbox's lifetime."""
    assert "activeDeadlineSeconds" not in pool_pod()["spec"]


def test_the_pool_policy_denies_everything_to_every_pod_of_the_pool() -> None:
    policy = to_json(pools.build_pool_network_policy(POOL))
    assert policy["metadata"]["name"] == "python.pool-deny-all"
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "SandboxPool"
    assert policy["spec"] == {"podSelector": {"matchLabels": {"sandbox-operator.io/pool": "python"}},
                              "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}
    selector = policy["spec"]["podSelector"]["matchLabels"]
    claimed = apply_merge_patch(pool_pod(), pools.claim_patch(claiming_sandbox(), pool_pod(), EFFECTIVE, now=NOW))
    for pod in (pool_pod(), claimed):
        assert selector.items() <= pod["metadata"]["labels"].items()


def test_pool_names_never_collide_with_a_sandboxs() -> None:
    """Sandbox names are DNS labels, so a name with a dot is never a Sandbox's pod or policy."""
    assert "." in constants.pool_pod_generate_name("x") and "." in constants.pool_network_policy_name("x")


def test_the_template_hash_follows_the_template_and_the_settings_not_the_uid() -> None:
    other_template = make_pool(template={"resources": {"cpu": "2"}})
    assert pools.template_hash(other_template, resolve(other_template.spec.template, SETTINGS), SETTINGS) != HASH
    user_ns = OperatorSettings(user_namespaces=True)
    assert pools.template_hash(POOL, EFFECTIVE, user_ns) != HASH
    assert pools.template_hash(POOL, EFFECTIVE, SETTINGS) == HASH
    assert len(HASH) == 16


# --------------------------------------------------------------------------------------------------------------
# Choosing a pod


def test_the_oldest_claimable_pod_is_chosen() -> None:
    pods = [pool_pod("python.pool-young", age=10), pool_pod("python.pool-old", age=500),
            pool_pod("python.pool-mid", age=100)]
    chosen = pools.choose_pod(POOL, pods, pod_template_hash=HASH, now=NOW)
    assert chosen is not None and chosen["metadata"]["name"] == "python.pool-old"


def test_pods_taken_by_claims_in_flight_are_skipped() -> None:
    pods = [pool_pod("python.pool-a", age=500), pool_pod("python.pool-b", age=100)]
    chosen = pools.choose_pod(POOL, pods, pod_template_hash=HASH, now=NOW, taken_uids={"uid-python.pool-a"})
    assert chosen is not None and chosen["metadata"]["name"] == "python.pool-b"
    assert pools.choose_pod(POOL, pods, pod_template_hash=HASH, now=NOW,
                            taken_uids={"uid-python.pool-a", "uid-python.pool-b"}) is None


UNCLAIMABLE = {
    "not-ready": pool_pod(ready=False),
    "pending": pool_pod(phase="Pending", ready=False),
    "ended": pool_pod(phase="Failed", ready=False),
    "deleting": pool_pod(metadata={"deletionTimestamp": "2026-01-01T12:00:00Z"}),
    "claimed": pool_pod(metadata={"labels": {**pool_pod()["metadata"]["labels"], "sandbox-operator.io/sandbox": "x"}}),
    "other-pools-namesake": pool_pod(pool=make_pool(uid="old-pool-uid")),
    "outdated-template": pool_pod(template_hash="0" * 16),
    "has-a-deadline": pool_pod(activeDeadlineSeconds=600),
}


@pytest.mark.parametrize("pod", UNCLAIMABLE.values(), ids=UNCLAIMABLE.keys())
def test_a_pod_that_is_not_claimable_is_never_chosen(pod: dict[str, Any]) -> None:
    assert pools.choose_pod(POOL, [pod], pod_template_hash=HASH, now=NOW) is None


def test_a_pod_past_the_maximum_age_is_not_handed_out() -> None:
    aged = make_pool(max_age=300)
    assert pools.choose_pod(aged, [pool_pod(age=300, pool=aged)], pod_template_hash=HASH, now=NOW) is None
    assert pools.choose_pod(aged, [pool_pod(age=299, pool=aged)], pod_template_hash=HASH, now=NOW) is not None


# --------------------------------------------------------------------------------------------------------------
# The claim


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, what the API server does with application/merge-patch+json."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def test_the_claim_is_conditional_and_makes_the_sandbox_the_only_owner() -> None:
    pod = pool_pod(age=120)
    sandbox = claiming_sandbox()
    patch = pools.claim_patch(sandbox, pod, resolve(spec_with_overrides(POOL.spec.template, sandbox.spec),
                                                   SETTINGS), now=NOW)
    assert patch["metadata"]["resourceVersion"] == "rv-python.pool-aaaaa"
    claimed = apply_merge_patch(pod, patch)
    assert claimed["metadata"]["ownerReferences"] == [{
        "apiVersion": "sandbox-operator.io/v1alpha1", "kind": "Sandbox", "name": "sbx-1", "uid": "sbx-uid",
        "controller": True, "blockOwnerDeletion": True}]
    labels = claimed["metadata"]["labels"]
    assert labels["sandbox-operator.io/sandbox"] == "sbx-1" and labels["sandbox-operator.io/pool"] == "python"
    assert claimed["metadata"]["annotations"]["sandbox-operator.io/claimed-at"] == "2026-01-01T12:00:00Z"
    assert pools.claimed_pod_of(sandbox, [pool_pod("python.pool-other"), claimed]) is claimed
    assert not pools.is_unclaimed_pod_of(POOL, claimed)


def test_the_deadline_covers_the_time_in_the_pool_plus_the_sandboxs_lifetime() -> None:
    """The kubelet counts activeDeadlineSeconds from the pod's start, not from the claim."""
    pod = pool_pod(age=1000)
    patch = pools.claim_patch(claiming_sandbox(), pod, EFFECTIVE, now=NOW)
    assert patch["spec"] == {"activeDeadlineSeconds": 1000 + 3600}
    late = pools.claim_patch(claiming_sandbox(created=NOW - datetime.timedelta(seconds=30)), pod, EFFECTIVE,
                             now=NOW)
    assert late["spec"]["activeDeadlineSeconds"] == 1000 + 3600 - 30


def test_the_sandboxs_overrides_reach_the_pod() -> None:
    sandbox = claiming_sandbox({"timeouts": {"lifetimeSeconds": 120}, "podLabels": {"team": "b", "run": "7"},
                                "podAnnotations": {"example.com/who": "me"}})
    spec = resolve(spec_with_overrides(POOL.spec.template, sandbox.spec), SETTINGS)
    claimed = apply_merge_patch(pool_pod(age=10), pools.claim_patch(sandbox, pool_pod(age=10), spec, now=NOW))
    assert claimed["spec"]["activeDeadlineSeconds"] == 130
    assert {"team": "b", "run": "7"}.items() <= claimed["metadata"]["labels"].items()
    assert claimed["metadata"]["annotations"]["example.com/who"] == "me"
    assert claimed["metadata"]["annotations"]["example.com/note"] == "template"


@pytest.mark.parametrize(("metadata", "status", "missing"), [
    ({"resourceVersion": None}, {}, "metadata.resourceVersion"),
    ({}, {"startTime": None}, "status.startTime"),
    ({"labels": {"app.kubernetes.io/name": "sandbox"}}, {}, "sandbox-operator.io/pool"),
])
def test_a_claim_refuses_a_pod_it_cannot_hand_over_safely(metadata: dict[str, Any], status: dict[str, Any],
                                                          missing: str) -> None:
    pod = pool_pod()
    pod["metadata"].update(metadata)
    pod["status"].update(status)
    with pytest.raises(ValueError, match=missing):
        pools.claim_patch(claiming_sandbox(), pod, EFFECTIVE, now=NOW)


def test_overrides_merge_over_the_template() -> None:
    merged = spec_with_overrides(SandboxTemplate.model_validate(TEMPLATE), SandboxSpec.model_validate(
        {"poolRef": {"name": "p"}, "timeouts": {"lifetimeSeconds": 30}, "podLabels": {"x": "1"}}))
    assert merged.timeouts is not None
    assert (merged.timeouts.command_seconds, merged.timeouts.idle_seconds, merged.timeouts.lifetime_seconds) == (
        30, 30, 30)
    assert merged.pod_labels == {"team": "a", "x": "1"}
    assert merged.pod_annotations == {"example.com/note": "template"}
    unchanged = spec_with_overrides(SandboxTemplate.model_validate(TEMPLATE),
                                    SandboxSpec.model_validate({"poolRef": {"name": "p"}}))
    assert unchanged == SandboxTemplate.model_validate(TEMPLATE)


def test_overrides_that_break_a_bound_name_the_field() -> None:
    template = SandboxTemplate.model_validate({"podLabels": {f"t{i}": "v" for i in range(20)}})
    spec = SandboxSpec.model_validate({"poolRef": {"name": "p"}, "podLabels": {f"s{i}": "v" for i in range(20)}})
    with pytest.raises(InvalidSpecError, match=r"^spec\.podLabels: "):
        spec_with_overrides(template, spec)
    idle = SandboxSpec.model_validate({"poolRef": {"name": "p"}, "timeouts": {"idleSeconds": 7200}})
    with pytest.raises(InvalidSpecError, match="idleSeconds must not exceed lifetimeSeconds"):
        spec_with_overrides(SandboxTemplate.model_validate(TEMPLATE), idle)


# --------------------------------------------------------------------------------------------------------------
# Refill


def test_an_empty_pool_creates_its_size() -> None:
    plan = pools.plan_refill(POOL, [], pod_template_hash=HASH, now=NOW)
    assert (plan.create, plan.delete, plan.ready, plan.starting) == (3, (), 0, 0)


def test_ready_and_starting_pods_and_creations_in_flight_count() -> None:
    pods = [pool_pod("python.pool-a"), pool_pod("python.pool-b", ready=False, phase="Pending", age=5)]
    plan = pools.plan_refill(POOL, pods, pod_template_hash=HASH, now=NOW)
    assert (plan.create, plan.ready, plan.starting) == (1, 1, 1)
    assert pools.plan_refill(POOL, pods, pod_template_hash=HASH, now=NOW, creations_in_flight=1).create == 0


def test_claimed_deleting_and_foreign_pods_are_not_the_pools() -> None:
    pods = [UNCLAIMABLE["claimed"], UNCLAIMABLE["deleting"], UNCLAIMABLE["other-pools-namesake"]]
    plan = pools.plan_refill(POOL, pods, pod_template_hash=HASH, now=NOW)
    assert (plan.create, plan.delete) == (3, ())


REPLACED = {
    "Ended": pool_pod(phase="Failed", ready=False),
    "ImageMissing": pool_pod(phase="Pending", ready=False, age=5, status={"containerStatuses": [
        {"name": "sandbox", "state": {"waiting": {"reason": "ErrImageNeverPull"}}}]}),
    "StartTimeout": pool_pod(phase="Pending", ready=False, age=pools.POOL_POD_START_TIMEOUT_SECONDS),
    "Outdated": pool_pod(template_hash="0" * 16),
}


@pytest.mark.parametrize(("reason", "pod"), REPLACED.items(), ids=REPLACED.keys())
def test_broken_and_outdated_pods_are_replaced(reason: str, pod: dict[str, Any]) -> None:
    plan = pools.plan_refill(POOL, [pod], pod_template_hash=HASH, now=NOW)
    assert plan.create == 3
    assert plan.delete == (pools.PodToDelete(name="python.pool-aaaaa", uid="uid-python.pool-aaaaa",
                                             resource_version="rv-python.pool-aaaaa", reason=reason),)


def test_pods_past_the_maximum_age_are_replaced() -> None:
    aged = make_pool(size=1, max_age=300)
    plan = pools.plan_refill(aged, [pool_pod(age=301, pool=aged)], pod_template_hash=HASH, now=NOW)
    assert plan.create == 1 and [d.reason for d in plan.delete] == ["MaxAgeExceeded"]


def test_a_smaller_size_deletes_starting_pods_first_then_the_oldest() -> None:
    small = make_pool(size=1)
    pods = [pool_pod("python.pool-old", age=500, pool=small), pool_pod("python.pool-new", age=50, pool=small),
            pool_pod("python.pool-starting", age=5, ready=False, phase="Pending", pool=small)]
    plan = pools.plan_refill(small, pods, pod_template_hash=HASH, now=NOW)
    assert plan.create == 0 and (plan.ready, plan.starting) == (1, 0)
    assert [(d.name, d.reason) for d in plan.delete] == [("python.pool-starting", "Excess"),
                                                         ("python.pool-old", "Excess")]


# --------------------------------------------------------------------------------------------------------------
# Status


def test_status_counts_and_ready_condition() -> None:
    taken = pool_pod("python.pool-c")
    claimed = apply_merge_patch(taken, pools.claim_patch(claiming_sandbox(), taken, EFFECTIVE, now=NOW))
    ended = {**claimed, "status": {**claimed["status"], "phase": "Failed"}}
    pods = [pool_pod("python.pool-a"), pool_pod("python.pool-b", ready=False, phase="Pending", age=5),
            claimed, ended, UNCLAIMABLE["claimed"], UNCLAIMABLE["deleting"]]
    status = pools.build_pool_status(POOL, pods, pod_template_hash=HASH, now=NOW)
    assert (status.ready_count, status.starting_count, status.claimed_count) == (1, 1, 1)
    assert status.observed_generation == 4
    [ready] = status.conditions
    assert (ready.status, ready.reason, ready.message) == ("False", "Refilling",
                                                           "1 of 3 pods ready to claim, 1 starting")
    full = pools.build_pool_status(make_pool(size=1), [pool_pod(pool=make_pool(size=1))], pod_template_hash=HASH,
                                   now=NOW)
    assert (full.conditions[0].status, full.conditions[0].reason) == ("True", "PoolFull")


def test_the_transition_time_moves_only_when_the_status_flips() -> None:
    first = pools.build_pool_status(POOL, [], pod_template_hash=HASH, now=NOW)
    later = NOW + datetime.timedelta(minutes=5)
    again = pools.build_pool_status(POOL.model_copy(update={"status": first}), [pool_pod()],
                                    pod_template_hash=HASH, now=later)
    assert again.conditions[0].last_transition_time == NOW
    assert again.conditions[0].message == "1 of 3 pods ready to claim, 0 starting"


def test_an_invalid_template_is_reported_and_nothing_is_ready() -> None:
    status = pools.build_pool_status(POOL, [pool_pod()], pod_template_hash=None, now=NOW,
                                     invalid_spec="spec.template.image: not allowed")
    assert status.ready_count == 0
    assert (status.conditions[0].reason, status.conditions[0].message) == (
        "InvalidSpec", "spec.template.image: not allowed")

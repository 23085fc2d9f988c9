"""Watches on the Sandboxes' children: pod state flows into the Sandbox's status; a NetworkPolicy deleted out of
band is recreated (it is a security control, the pod must never run without it)."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from sandbox_operator import constants
from sandbox_operator.builders.network_policy import build_network_policy
from sandbox_operator.handlers.errors import counted
from sandbox_operator.handlers.reconcile import parse_sandbox, post_event, sync_status
from sandbox_operator.handlers.runtime import runtime
from sandbox_operator.handlers.uids import Key, pod_run_as_users
from sandbox_operator.k8s.api import Adoption, controlled_by

CHILD_LABELS: dict[str, Any] = {constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
                                constants.LABEL_SANDBOX: kopf.PRESENT}


@kopf.index("", "v1", "pods", labels={constants.LABEL_MANAGED_BY: constants.MANAGER_NAME}, id="sandbox_pod_uids")
def sandbox_pod_uids(body: kopf.Body, **_: Any) -> dict[int, Key]:
    """The host UIDs sandbox pods run as, by UID (passed to handlers as ``sandbox_pod_uids``): a Sandbox's pod
    under the Sandbox's key, an unclaimed pool pod under its own name (the key its UID was reserved under)."""
    meta = body.get("metadata") or {}
    owner = (meta.get("labels") or {}).get(constants.LABEL_SANDBOX) or meta.get("name")
    return dict.fromkeys(pod_run_as_users(body), (str(meta.get("namespace")), str(owner)))


@kopf.on.event("", "v1", "pods", labels=CHILD_LABELS, id="pod-status")
@counted("pod-status")
async def pod_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                    **_: Any) -> None:
    """Any change of a sandbox pod (including its deletion) re-syncs the Sandbox's status."""
    meta = body.get("metadata") or {}
    sandbox_name = (meta.get("labels") or {}).get(constants.LABEL_SANDBOX)
    if not sandbox_name:
        return
    rt = runtime(memo)
    key = (str(meta.get("namespace")), str(sandbox_name))
    if type == "DELETED":
        rt.notify_pod_gone(key)
        await sync_status(rt, *key, pod_gone=True, log=logger)
    else:
        await sync_status(rt, *key, pod_body=dict(body), log=logger)


@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=CHILD_LABELS, id="policy-guard")
@counted("policy-guard")
async def policy_event(type: str | None, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                       **_: Any) -> None:
    if type != "DELETED":
        return
    rt = runtime(memo)
    meta = body.get("metadata") or {}
    namespace, sandbox_name = str(meta.get("namespace")), str((meta.get("labels") or {})[constants.LABEL_SANDBOX])
    sandbox_body = await asyncio.to_thread(rt.api.get_sandbox, namespace, sandbox_name)
    if sandbox_body is None or (sandbox_body.get("metadata") or {}).get("deletionTimestamp"):
        return
    sandbox, _invalid = parse_sandbox(sandbox_body)
    if not controlled_by(body, sandbox.metadata.uid):
        return
    result = await asyncio.to_thread(rt.api.create_network_policy, build_network_policy(sandbox),
                                     sandbox.metadata.uid)
    if result.outcome is Adoption.CREATED:
        post_event(sandbox_body, "Warning", "NetworkPolicyRecreated",
                   "the sandbox's deny-all NetworkPolicy was deleted outside the operator and has been recreated")
        logger.warning("recreated the NetworkPolicy of Sandbox %s", sandbox_name)
    await sync_status(rt, namespace, sandbox_name, log=logger)

"""The per-sandbox deny-all NetworkPolicy, created before the pod."""

from __future__ import annotations

from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.builders.meta import child_metadata, selector_labels
from sandbox_operator.models.sandbox import Sandbox


def build_network_policy(sandbox: Sandbox) -> client.V1NetworkPolicy:
    """Selects the sandbox's pod and allows nothing: both policy types listed, no rules.

    ``Egress`` must be listed explicitly: a policy without egress rules is otherwise ingress-only."""
    return client.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=child_metadata(sandbox, constants.network_policy_name(sandbox.name)),
        spec=client.V1NetworkPolicySpec(
            pod_selector=client.V1LabelSelector(match_labels=selector_labels(sandbox.name)),
            policy_types=["Ingress", "Egress"],
            ingress=[],
            egress=[],
        ),
    )

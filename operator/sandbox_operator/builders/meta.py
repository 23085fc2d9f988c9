"""Labels, owner references and object metadata shared by every child of a Sandbox."""

from __future__ import annotations

from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.models.sandbox import Sandbox


def selector_labels(sandbox_name: str) -> dict[str, str]:
    """The label the NetworkPolicy selects the pod by (a reserved key: users cannot set it)."""
    return {constants.LABEL_SANDBOX: sandbox_name}


def child_labels(sandbox_name: str) -> dict[str, str]:
    """The project's labels on every child."""
    return {
        constants.LABEL_APP_NAME: constants.APP_NAME,
        constants.LABEL_MANAGED_BY: constants.MANAGER_NAME,
        **selector_labels(sandbox_name),
    }


def owner_reference(sandbox: Sandbox) -> client.V1OwnerReference:
    """A controller reference to the Sandbox: garbage collection removes children even when the operator is down.

    Built here rather than with ``kopf.adopt()`` because adopt also copies the Sandbox's own labels onto the
    child, and those are unfiltered user input (a label could make another NetworkPolicy select the pod)."""
    return client.V1OwnerReference(
        api_version=constants.API_VERSION, kind=constants.KIND, name=sandbox.name, uid=sandbox.metadata.uid,
        controller=True, block_owner_deletion=True,
    )


def child_metadata(sandbox: Sandbox, name: str, *, labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None) -> client.V1ObjectMeta:
    # The project's labels are applied after the user's, so they always win (user keys are validated too).
    return client.V1ObjectMeta(
        name=name,
        namespace=sandbox.namespace,
        labels={**(labels or {}), **child_labels(sandbox.name)},
        annotations=dict(annotations) if annotations else None,
        owner_references=[owner_reference(sandbox)],
    )

"""The chart's admission policy (templates/admission-policy.yaml): its rules by name, the pod the operator builds,
and pods that each break one rule. The static checks evaluate the rendered policy on them; the end-to-end tests
send them to the API server.

A rule is known by the field its message starts with: the message is "FIELD must ...: why".
"""

from __future__ import annotations

import copy
import datetime
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.builders.pod import build_pod
from sandbox_operator.models.effective import resolve
from sandbox_operator.models.sandbox import Sandbox
from sandbox_operator.settings import OperatorSettings

JSON = dict[str, Any]

# The label that puts a namespace under the policy in cluster-wide mode (the chart's sandbox namespaces carry it).
SANDBOX_NAMESPACE_LABEL = f"{constants.GROUP}/sandboxes"
POLICY_SUFFIX = "-pod-hardening"

# Each rule, by the field its message names first.
RULE_FIELDS = {
    "runAsNonRoot": "securityContext.runAsNonRoot",
    "runAsUser": "securityContext.runAsUser",
    "privileged": "securityContext.privileged",
    "allowPrivilegeEscalation": "securityContext.allowPrivilegeEscalation",
    "readOnlyRootFilesystem": "securityContext.readOnlyRootFilesystem",
    "capabilitiesAdd": "securityContext.capabilities.add",
    "capabilitiesDrop": "securityContext.capabilities.drop",
    "hostNetwork": "spec.hostNetwork",
    "hostPID": "spec.hostPID",
    "hostIPC": "spec.hostIPC",
    "hostPath": "spec.volumes[*].hostPath",
    "automountServiceAccountToken": "spec.automountServiceAccountToken",
    "projectedToken": "spec.volumes[*].projected.sources[*].serviceAccountToken",
    "runtimeClassName": "spec.runtimeClassName",
    "image": "spec.containers[*].image",
    "limits": "resources.limits.cpu",
}

# An image no default allow-list matches, and a RuntimeClass no default allows (the end-to-end test creates it:
# the API server refuses a pod naming a RuntimeClass that does not exist before any policy sees it).
FOREIGN_IMAGE = "docker.io/library/python:3.11-slim"
UNLISTED_RUNTIME_CLASS = "sandbox-operator-test-unlisted"


def rule_of(message: str) -> str:
    """The rule a policy message belongs to."""
    found = [rule for rule, name in RULE_FIELDS.items() if message.startswith(f"{name} ")]
    if len(found) != 1:
        raise ValueError(f"no rule of the policy starts its message like {message!r}")
    return found[0]


def to_json(model: object) -> JSON:
    data: JSON = client.ApiClient().sanitize_for_serialization(model)  # type: ignore[no-untyped-call]
    return data


def hardened_pod(settings: OperatorSettings, namespace: str, name: str = "hardened") -> JSON:
    """The pod the operator builds for a Sandbox of an empty spec under ``settings`` (an ordinary sandbox pod, as a
    pool's are), as JSON; its owner is a Sandbox that does not exist."""
    now = datetime.datetime.now(datetime.UTC)
    sandbox = Sandbox.from_body({
        "apiVersion": constants.API_VERSION, "kind": constants.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
                     "creationTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "spec": {}})
    pod = build_pod(sandbox, resolve(sandbox.spec, settings), settings,
                    run_as_user=settings.sandbox_uids[0], now=now)
    return to_json(pod)


def hardened_ephemeral_container(pod: JSON, name: str = "debug") -> JSON:
    """An ephemeral container as hardened as the pod's own (no resources: ephemeral containers have none)."""
    [container] = pod["spec"]["containers"]
    keep = ("image", "imagePullPolicy", "command", "securityContext", "terminationMessagePolicy")
    return {"name": name, "targetContainerName": container["name"], **{k: copy.deepcopy(container[k]) for k in keep}}


def _container(pod: JSON) -> JSON:
    container: JSON = pod["spec"]["containers"][0]
    return container


def _context(pod: JSON) -> JSON:
    context: JSON = _container(pod)["securityContext"]
    return context


def _init_container(pod: JSON, **changes: Any) -> None:
    init = {**copy.deepcopy(_container(pod)), "name": "init", **changes}
    pod["spec"]["initContainers"] = [init]


def _set(path: str, value: Any) -> Callable[[JSON], None]:
    """A change of one field: "spec.hostNetwork", "container.securityContext.privileged" (the sandbox container)."""
    def change(pod: JSON) -> None:
        *parents, last = path.split(".")
        node = pod
        for part in parents:
            node = _container(pod) if part == "container" else node.setdefault(part, {})
        node[last] = value
    return change


def _drop(path: str) -> Callable[[JSON], None]:
    def change(pod: JSON) -> None:
        *parents, last = path.split(".")
        node = pod
        for part in parents:
            node = _container(pod) if part == "container" else node[part]
        del node[last]
    return change


def _both(*changes: Callable[[JSON], None]) -> Callable[[JSON], None]:
    def change(pod: JSON) -> None:
        for one in changes:
            one(pod)
    return change


@dataclass(frozen=True)
class Breach:
    """A pod that breaks one rule of the policy: the operator's pod with one change."""

    id: str
    rule: str
    change: Callable[[JSON], None]
    also: tuple[str, ...] = field(default=())
    """Rules the same pod cannot help breaking too (the API server's own validation forbids the pod otherwise);
    the policy reports ``rule`` first."""

    def pod(self, settings: OperatorSettings, namespace: str) -> JSON:
        pod = hardened_pod(settings, namespace, name=f"breach-{self.id.lower()}")
        self.change(pod)
        return pod


BREACHES = [
    Breach("container-runAsNonRoot-false", "runAsNonRoot", _set("container.securityContext.runAsNonRoot", False)),
    Breach("runAsNonRoot-unset", "runAsNonRoot",
           _both(_drop("container.securityContext.runAsNonRoot"), _drop("spec.securityContext.runAsNonRoot"))),
    Breach("container-runAsUser-0", "runAsUser", _set("container.securityContext.runAsUser", 0)),
    Breach("pod-runAsUser-0", "runAsUser", _set("spec.securityContext.runAsUser", 0)),
    Breach("init-container-runAsUser-0", "runAsUser",
           lambda pod: _init_container(pod, securityContext={**_context(pod), "runAsUser": 0})),
    # The API server refuses privileged together with allowPrivilegeEscalation false.
    Breach("privileged", "privileged",
           _both(_set("container.securityContext.privileged", True),
                 _set("container.securityContext.allowPrivilegeEscalation", True)),
           also=("allowPrivilegeEscalation",)),
    Breach("allowPrivilegeEscalation-true", "allowPrivilegeEscalation",
           _set("container.securityContext.allowPrivilegeEscalation", True)),
    Breach("allowPrivilegeEscalation-unset", "allowPrivilegeEscalation",
           _drop("container.securityContext.allowPrivilegeEscalation")),
    Breach("readOnlyRootFilesystem-false", "readOnlyRootFilesystem",
           _set("container.securityContext.readOnlyRootFilesystem", False)),
    Breach("capabilities-add", "capabilitiesAdd",
           _set("container.securityContext.capabilities", {"drop": ["ALL"], "add": ["NET_RAW"]})),
    Breach("capabilities-drop-some", "capabilitiesDrop",
           _set("container.securityContext.capabilities", {"drop": ["NET_RAW"]})),
    Breach("hostNetwork", "hostNetwork", _set("spec.hostNetwork", True)),
    Breach("hostPID", "hostPID", _set("spec.hostPID", True)),
    Breach("hostIPC", "hostIPC", _set("spec.hostIPC", True)),
    Breach("hostPath", "hostPath",
           lambda pod: pod["spec"]["volumes"].append({"name": "node", "hostPath": {"path": "/etc"}})),
    # On a real API server the ServiceAccount admission plugin then projects a token volume too, which the
    # policy reports second.
    Breach("automountServiceAccountToken", "automountServiceAccountToken",
           _set("spec.automountServiceAccountToken", True)),
    Breach("projected-token", "projectedToken",
           lambda pod: pod["spec"]["volumes"].append({"name": "token", "projected": {"sources": [
               {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]}})),
    Breach("runtimeClassName", "runtimeClassName", _set("spec.runtimeClassName", UNLISTED_RUNTIME_CLASS)),
    Breach("image", "image", _set("container.image", FOREIGN_IMAGE)),
    Breach("image-under-an-allowed-path", "image",
           _set("container.image", f"evil.example/{constants.SANDBOX_IMAGE}")),
    Breach("image-init-container", "image", lambda pod: _init_container(pod, image=FOREIGN_IMAGE)),
    Breach("no-cpu-limit", "limits", _drop("container.resources.limits.cpu")),
    Breach("no-memory-limit", "limits", _drop("container.resources.limits.memory")),
    Breach("init-container-no-limits", "limits", lambda pod: _init_container(pod, resources={})),
]

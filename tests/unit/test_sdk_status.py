"""Status -> error mapping: API statuses, Sandbox readiness, file-tool reports."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_operator.sdk import errors
from sandbox_operator.sdk._kube import error_from_status, status_from_body
from sandbox_operator.sdk.commands import CommandResult
from sandbox_operator.sdk.files import tool_error
from sandbox_operator.sdk.health import health_from, pod_problem, readiness


def status(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": message,
            "details": details}


@pytest.mark.parametrize(("code", "body", "cls", "reason"), [
    (404, status(404, "NotFound", 'sandboxes.sandbox-operator.io "x" not found', name="x"),
     errors.SandboxNotFound, "NotFound"),
    (404, status(404, "NotFound", "the server could not find the requested resource"),
     errors.CrdNotInstalled, "NotFound"),
    (409, status(409, "AlreadyExists", 'sandboxes "x" already exists', name="x"),
     errors.SandboxAlreadyExists, "AlreadyExists"),
    (409, status(409, "Conflict", "the object has been modified"), errors.ApiError, "Conflict"),
    (403, status(403, "Forbidden", 'exceeded quota: q, requested: count/sandboxes=1'),
     errors.SandboxForbidden, "Forbidden"),
    (422, status(422, "Invalid", "spec.resources.cpu: must be between 10m and 64"),
     errors.InvalidSandboxSpec, "Invalid"),
    (500, status(500, "InternalError", "etcd down"), errors.ApiError, "InternalError"),
    (401, {}, errors.ApiError, "Unauthorized"),
])
def test_api_status_mapping(code: int, body: dict[str, Any], cls: type[errors.SandboxError],
                            reason: str) -> None:
    err = error_from_status(code, body, name="x", namespace="ns")
    assert type(err) is cls
    assert err.reason == reason and err.status == code and err.name == "x" and err.namespace == "ns"
    assert isinstance(err, errors.SandboxError)
    assert err.to_dict()["error"] == cls.__name__


def test_status_from_body_variants() -> None:
    assert status_from_body(b'{"reason": "NotFound"}') == {"reason": "NotFound"}
    assert status_from_body("404 page not found\n") == {"message": "404 page not found"}
    assert status_from_body("") == {}
    assert status_from_body(None) == {}


def sandbox(phase: str | None = None, cond: tuple[str, str, str] | None = None, deleting: bool = False,
            **status_extra: Any) -> dict[str, Any]:
    st: dict[str, Any] = dict(status_extra)
    if phase:
        st["phase"] = phase
    if cond:
        st["conditions"] = [{"type": "Ready", "status": cond[0], "reason": cond[1], "message": cond[2],
                             "lastTransitionTime": "2026-11-28T01:00:00Z"}]
    meta: dict[str, Any] = {"name": "s", "namespace": "ns", "creationTimestamp": "2026-11-28T00:59:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-28T01:01:00Z"
    return {"metadata": meta, "status": st}


@pytest.mark.parametrize(("obj", "state", "reason"), [
    (sandbox(), "pending", None),
    (sandbox("Pending", ("False", "PodPending", "waiting for the pod")), "pending", "PodPending"),
    (sandbox("Pending", ("False", "Unschedulable", "0/1 nodes are available")), "pending", "Unschedulable"),
    (sandbox("Ready", ("True", "PodReady", "")), "ready", "PodReady"),
    (sandbox("Ready"), "ready", None),
    (sandbox("Ready", ("False", "ProbeFailed", "")), "pending", "ProbeFailed"),
    (sandbox("Pending", ("False", "ImageMissing", "image x is not on the node")), "failed", "ImageMissing"),
    (sandbox("Pending", ("False", "InvalidSpec", "cpu too high")), "failed", "InvalidSpec"),
    # The kubelet's own waiting reasons, passed through while Pending: it retries them, so waiting goes on.
    (sandbox("Pending", ("False", "CreateContainerConfigError", "secret s not found")), "pending",
     "CreateContainerConfigError"),
    (sandbox("Pending", ("False", "CrashLoopBackOff", "")), "pending", "CrashLoopBackOff"),
    (sandbox("Failed", ("False", "OOMKilled", "")), "failed", "OOMKilled"),
    (sandbox("Expired", ("False", "Expired", "lifetime over")), "failed", "Expired"),
    (sandbox("Failed", reason="PodFailed"), "failed", "PodFailed"),
    (sandbox("Ready", ("True", "PodReady", ""), deleting=True), "failed", "PodReady"),
    (sandbox("Terminating"), "failed", "Terminating"),
])
def test_readiness(obj: dict[str, Any], state: str, reason: str | None) -> None:
    judged = readiness(obj)
    assert judged.state == state
    assert judged.reason == reason


def pod(waiting: str | None = None, scheduled: tuple[str, str] | None = None, running: bool = False,
        restarts: int = 0) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": "Running" if running else "Pending", "podIP": "10.0.0.5"}
    if scheduled:
        st["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": scheduled[0],
                             "message": scheduled[1]}]
    state: dict[str, Any] = {"running": {}} if running else {"waiting": {"reason": waiting or "ContainerCreating",
                                                                         "message": "pull failed"}}
    st["containerStatuses"] = [{"name": "sandbox", "restartCount": restarts, "state": state}]
    return {"metadata": {"name": "s"}, "spec": {"nodeName": "node-1"}, "status": st}


def test_pod_problem() -> None:
    assert pod_problem(None) is None
    assert pod_problem(pod()) is None  # ContainerCreating is progress, not a problem
    assert pod_problem(pod("ErrImageNeverPull")) == ("ErrImageNeverPull", "pull failed")
    assert pod_problem(pod(scheduled=("Unschedulable", "0/1 nodes: Insufficient memory"))) == \
        ("Unschedulable", "0/1 nodes: Insufficient memory")


def test_health_from_objects() -> None:
    obj = sandbox("Ready", ("True", "PodReady", ""), podName="s", expiresAt="2026-11-28T02:00:00Z",
                  readyTime="2026-11-28T01:00:05Z", lastActivityTime="2026-11-28T01:00:05Z")
    obj["metadata"]["annotations"] = {"sandbox-operator.io/last-activity": "2026-11-28T01:10:00Z"}
    health = health_from(obj, pod(running=True, restarts=1))
    assert health.ready and health.phase == "Ready"
    assert health.container_state == "running" and health.restarts == 1 and not health.healthy
    assert health.node_name == "node-1" and health.pod_ip == "10.0.0.5"
    assert health.last_activity is not None and health.last_activity.minute == 10
    assert health.expires_at is not None and health.expires_at.hour == 2
    d = health.to_dict()
    assert d["lastActivity"] == "2026-11-28T01:10:00Z" and d["pod"]["restarts"] == 1
    assert d["conditions"][0]["reason"] == "PodReady"
    missing = health_from(sandbox("Pending"), None)
    assert missing.container_state is None and not missing.ready


def result(code: int, stderr: str = "", timed_out: bool = False) -> CommandResult:
    return CommandResult(command=["sandbox-files"], exit_code=code, stderr_bytes=stderr.encode(),
                         timed_out=timed_out)


@pytest.mark.parametrize(("res", "cls", "reason"), [
    (result(1, '{"error": "PathOutsideSandbox", "message": "resolves outside", "path": "/workspace/l"}'),
     errors.PathOutsideSandbox, "PathOutsideSandbox"),
    (result(1, '{"error": "FileNotFoundError", "message": "no such file", "path": "/workspace/x"}'),
     errors.SandboxFileNotFound, "FileNotFoundError"),
    (result(1, '{"error": "IsADirectoryError", "message": "is a directory", "path": "/workspace"}'),
     errors.FileError, "IsADirectoryError"),
    (result(1, '{"error": "FileTooLarge", "message": "over 100 MiB"}'), errors.FileTooLarge, "FileTooLarge"),
    (result(127, "sandbox-exec: sandbox-files: No such file or directory"), errors.ExecError, "FileToolMissing"),
    (result(124, "sandbox-exec: command timed out after 5s", timed_out=True), errors.FileError, "CommandTimeout"),
    (result(2, '{"error": "UnsafeTarMember", "message": "symlink target outside", "path": "l"}'),
     errors.PathOutsideSandbox, "UnsafeTarMember"),
    (result(1, '{"error": "OSError", "message": "File too large", "errno": "EFBIG", "path": "/tmp/x"}'),
     errors.FileTooLarge, "OSError"),
    (result(3, "something odd"), errors.FileError, "FileToolFailed"),
])
def test_file_tool_errors(res: CommandResult, cls: type[errors.SandboxError], reason: str) -> None:
    err = tool_error(res, path="/workspace/given", sandbox="s")
    assert type(err) is cls
    assert err.reason == reason
    if isinstance(err, errors.FileError):
        assert err.path

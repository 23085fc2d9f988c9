"""Warm pools in the SDK without a cluster: the spec of a pooled create, the refusals before anything is sent, the pod
a pooled sandbox's commands reach (its recorded name, not the sandbox's), and the read-only pool API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.sdk import PoolInfo, Sandbox, errors
from sandbox_operator.sdk import sandbox as sandbox_module
from sandbox_operator.sdk._kube import KubeApi
from sandbox_operator.sdk.aio import AsyncSandboxManager
from sandbox_operator.sdk.pools import pool_info, pooled_spec
from sandbox_operator.sdk.transport import ChannelPool
from tests.unit.test_sdk_manager import FakeApi, manager, obj

POD = "python.pool-x7k2p"
ONLY = "only timeouts.idleSeconds, timeouts.lifetimeSeconds, podLabels and podAnnotations may be overridden"


def pooled(name: str = "sbx-abcde", *, pod: str | None = POD, phase: str = "Ready") -> dict[str, Any]:
    """A Sandbox that took its pod from the pool ``python`` (``pod``: what its status records)."""
    out = obj(name, phase, "PodReady" if phase == "Ready" else "PodPending", "True" if phase == "Ready" else "False")
    out["spec"] = {"poolRef": {"name": "python"}}
    if pod is not None:
        out["status"]["podName"] = pod
    return out


class PoolApi(FakeApi):
    """The manager's fake API, counting reads, with SandboxPools to list."""

    def __init__(self, first: dict[str, Any], events: list[tuple[str, dict[str, Any]]] | None = None, *,
                 pools: list[dict[str, Any]] | None = None) -> None:
        super().__init__(first, events or [], pod={"metadata": {"name": POD}, "status": {"phase": "Running"}})
        self.gets = 0
        self.pods_read: list[str] = []
        self.pools = pools or []
        self.pools_listed_in: list[str | None] = []
        self.api_client = client.ApiClient()

    def get_sandbox(self, name: str, namespace: str) -> dict[str, Any]:
        self.gets += 1
        return super().get_sandbox(name, namespace)

    def get_pod(self, name: str, namespace: str) -> dict[str, Any] | None:
        self.pods_read.append(name)
        return super().get_pod(name, namespace)

    def list_pools(self, namespace: str | None) -> dict[str, Any]:
        self.pools_listed_in.append(namespace)
        return {"items": self.pools}

    def get_pool(self, name: str, namespace: str) -> dict[str, Any]:
        found = next((p for p in self.pools if p["metadata"]["name"] == name), None)
        if found is None:
            raise errors.PoolNotFound(f"sandbox pool {namespace}/{name} does not exist", name=name,
                                      namespace=namespace)
        return found


def pool(name: str, *, size: int = 2, ready: int = 0, starting: int = 0, claimed: int = 0,
         condition: tuple[str, str] | None = None, namespace: str = "ns") -> dict[str, Any]:
    status: dict[str, Any] = {"readyCount": ready, "startingCount": starting, "claimedCount": claimed}
    if condition is not None:
        status["conditions"] = [{"type": "Ready", "status": condition[0], "reason": condition[1],
                                 "message": f"{ready} of {size} pods ready", "lastTransitionTime":
                                 "2026-12-01T10:00:00Z"}]
    return {"apiVersion": constants.API_VERSION, "kind": constants.POOL_KIND,
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-12-01T09:00:00Z"},
            "spec": {"size": size, "template": {}}, "status": status}


# The spec of a pooled create ------------------------------------------------------------------------------------

def test_a_pooled_spec_is_the_pool_reference_and_the_overrides() -> None:
    assert pooled_spec("python", {}) == {"poolRef": {"name": "python"}}
    overrides = {"timeouts": {"idleSeconds": 60, "lifetimeSeconds": 900}, "podLabels": {"task": "t1"},
                 "podAnnotations": {"note": "x"}}
    assert pooled_spec("python", overrides) == {"poolRef": {"name": "python"}, **overrides}
    # The pool may come in the spec itself, once or named the same twice.
    assert pooled_spec(None, {"poolRef": {"name": "python"}}) == {"poolRef": {"name": "python"}}
    assert pooled_spec("python", {"poolRef": {"name": "python"}}) == {"poolRef": {"name": "python"}}


@pytest.mark.parametrize(("requested", "fields"), [
    ({"image": "img:1"}, ["spec.image"]),
    ({"env": [{"name": "A", "value": "1"}], "resources": {"memory": "1Gi"}}, ["spec.env", "spec.resources"]),
    ({"timeouts": {"commandSeconds": 60, "idleSeconds": 30}}, ["spec.timeouts.commandSeconds"]),
    ({"nodeSelector": {"n": "1"}, "workingDir": "/tmp", "runtimeClassName": "gvisor"},
     ["spec.nodeSelector", "spec.workingDir", "spec.runtimeClassName"]),
])
def test_what_a_pool_fixes_is_refused_naming_each_field(requested: dict[str, Any], fields: list[str]) -> None:
    with pytest.raises(errors.InvalidSandboxSpec) as info:
        pooled_spec("python", requested, name="box", namespace="ns")
    error = info.value
    assert str(error).startswith(f"{', '.join(fields)} cannot be set together with a pool ('python')")
    assert ONLY in str(error) and "idle_timeout, lifetime, pod_labels, pod_annotations" in str(error)
    assert [c["field"] for c in error.details["causes"]] == fields
    assert (error.reason, error.status, error.name, error.namespace) == ("FieldValueForbidden", None, "box", "ns")


def test_a_pool_named_twice_differently_or_not_at_all_is_refused() -> None:
    with pytest.raises(errors.InvalidSandboxSpec, match="'other' and pool 'python' differ"):
        pooled_spec("python", {"poolRef": {"name": "other"}})
    with pytest.raises(errors.InvalidSandboxSpec, match="must be a SandboxPool's name, got ''"):
        pooled_spec("", {})
    with pytest.raises(errors.InvalidSandboxSpec, match="got None"):
        pooled_spec(None, {"poolRef": {}})


def test_create_with_a_pool_sends_only_the_reference_and_the_overrides() -> None:
    api = PoolApi(pooled())
    m = manager(api)
    m.default_spec = {"resources": {"cpu": "250m", "memory": "256Mi"}, "timeouts": {"commandSeconds": 60}}
    m.default_labels = {"owner": "agent-7"}
    sandbox = m.create(pool="python", lifetime=900, idle_timeout=120, pod_labels={"task": "t1"},
                       labels={"e2e": "pool"})
    sent = api.created[0]
    # The manager's default_spec describes a cold sandbox; the pool's template replaces it.
    assert sent["spec"] == {"poolRef": {"name": "python"}, "timeouts": {"idleSeconds": 120, "lifetimeSeconds": 900},
                            "podLabels": {"task": "t1"}}
    assert sent["metadata"]["labels"] == {"owner": "agent-7", "e2e": "pool"}
    assert sandbox.pod_name == POD


def test_a_raw_spec_with_a_pool_reference_is_a_pooled_create() -> None:
    api = PoolApi(pooled())
    m = manager(api)
    m.default_spec = {"image": "img:1"}
    m.create(spec={"poolRef": {"name": "python"}, "podAnnotations": {"note": "x"}})
    assert api.created[0]["spec"] == {"poolRef": {"name": "python"}, "podAnnotations": {"note": "x"}}


@pytest.mark.parametrize("fields", [{"image": "img:1"}, {"memory": "1Gi"}, {"env": {"A": "1"}},
                                    {"command_timeout": 30}, {"spec": {"tolerations": [{"operator": "Exists"}]}}])
def test_create_refuses_what_a_pool_fixes_before_sending_anything(fields: dict[str, Any]) -> None:
    api = PoolApi(pooled())
    with pytest.raises(errors.InvalidSandboxSpec, match="cannot be set together with a pool"):
        manager(api).create("box", pool="python", **fields)
    assert api.created == [] and api.deleted == []


def test_the_api_servers_refusal_of_a_pooled_sandbox_is_an_invalid_spec() -> None:
    message = ('Sandbox.sandbox-operator.io "box" is invalid: spec.image: Forbidden: spec.image cannot be set '
               f"together with spec.poolRef: the pool's pod is already running, so {ONLY}")

    class Refusing:
        def create_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            error = ApiException(status=422, reason="Unprocessable Entity")
            error.body = json.dumps({"kind": "Status", "status": "Failure", "code": 422, "reason": "Invalid",
                                     "message": message, "details": {"name": "box", "causes": [
                                         {"reason": "FieldValueForbidden", "field": "spec.image"}]}})
            raise error

    api = KubeApi(client.ApiClient())
    api.custom = Refusing()  # type: ignore[assignment]
    body = {"metadata": {"name": "box"}, "spec": {"poolRef": {"name": "python"}, "image": "img:1"}}
    with pytest.raises(errors.InvalidSandboxSpec) as info:
        api.create_sandbox(body, "ns")
    assert info.value.status == 422 and info.value.reason == "Invalid" and ONLY in str(info.value)


def test_a_missing_pool_fails_the_sandbox_at_once() -> None:
    failed = pooled(pod=None, phase="Pending")
    failed["status"] = {"phase": "Failed", "conditions": [{
        "type": "Ready", "status": "False", "reason": "InvalidSpec", "lastTransitionTime": "2026-12-01T10:00:00Z",
        "message": "spec.poolRef.name: no SandboxPool 'python' in namespace ns"}]}
    api = PoolApi(obj("sbx-abcde"), [("MODIFIED", failed)])
    with pytest.raises(errors.SandboxFailed, match=r"spec\.poolRef\.name") as info:
        manager(api).create(pool="python")
    assert info.value.reason == "InvalidSpec" and api.deleted == ["sbx-abcde"]


# The pod a pooled sandbox's commands reach -------------------------------------------------------------------------

class _RecordingExec:
    """Stands in for the exec connection: records the pod it was asked for, and fails (there is no cluster)."""

    pods: list[str] = []

    def __init__(self, api_client: Any, namespace: str, pod: str, argv: list[str], **kwargs: Any) -> None:
        _RecordingExec.pods.append(pod)
        raise errors.ExecError("no cluster in unit tests", reason="Test")


@pytest.fixture
def exec_pods(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    _RecordingExec.pods = []
    monkeypatch.setattr(sandbox_module, "ExecConnection", _RecordingExec)
    yield _RecordingExec.pods


def test_commands_go_to_the_recorded_pod_over_exec_and_over_the_channel(exec_pods: list[str]) -> None:
    api = PoolApi(pooled())
    m = manager(api)
    m.transport = "exec"
    sandbox = m.get("sbx-abcde")
    with pytest.raises(errors.ExecError):
        sandbox.run("true")
    assert exec_pods == [POD]

    channel_pods: list[str] = []

    def opener(namespace: str, name: str, pod: str) -> Any:
        channel_pods.append(pod)
        raise errors.AgentUnavailable("no agent in this image", reason="NoAgent")

    on_channel = manager(api)
    on_channel.transport = "channel"
    on_channel._channels = ChannelPool(opener, fallback=False)
    with pytest.raises(errors.AgentUnavailable):
        on_channel.get("sbx-abcde").run("true")
    assert channel_pods == [POD]


def test_a_handle_without_the_object_asks_the_manager_then_the_cluster() -> None:
    api = PoolApi(pooled())
    m = manager(api)
    created = m.create(pool="python")
    reads = api.gets
    # A session call makes a handle without the object: the manager knows the pod of a sandbox it created.
    assert Sandbox(m, created.name, "ns").pod_name == POD and api.gets == reads
    # Another manager (another process) reads the object once.
    fresh = manager(api)
    assert Sandbox(fresh, created.name, "ns").pod_name == POD and api.gets == reads + 1
    assert Sandbox(fresh, created.name, "ns").pod_name == POD and api.gets == reads + 1
    # Deleting forgets it.
    m.delete(created.name)
    assert (m.namespace, created.name) not in m._pod_names


def test_a_pooled_handle_read_before_the_claim_reads_again() -> None:
    api = PoolApi(pooled())
    sandbox = Sandbox(manager(api), "sbx-abcde", "ns", pooled(pod=None, phase="Pending"))
    assert sandbox.pod_name == POD and api.gets == 1


def test_a_cold_sandbox_without_a_recorded_pod_is_its_own_pod_without_a_read() -> None:
    api = PoolApi(obj("box", "Pending", "PodPending"))
    sandbox = Sandbox(manager(api), "box", "ns", obj("box", "Pending", "PodPending"))
    assert sandbox.pod_name == constants.pod_name("box") and api.gets == 0


def test_health_and_the_not_ready_error_read_the_recorded_pod() -> None:
    api = PoolApi(pooled())
    m = manager(api)
    health = m.get("sbx-abcde").health()
    assert api.pods_read == [POD] and health.pod_name == POD
    api.first = pooled(phase="Pending")
    with pytest.raises(errors.SandboxNotReady):
        m.wait_ready("sbx-abcde", timeout=0.2)
    assert api.pods_read[-1] == POD


# Reading the pools -------------------------------------------------------------------------------------------------

def test_pool_info_reads_counts_and_the_ready_condition() -> None:
    info = pool_info(pool("python", size=5, ready=5, starting=0, claimed=3, condition=("True", "PoolFull")))
    assert (info.name, info.namespace, info.size, info.ready_count, info.starting_count, info.claimed_count) == (
        "python", "ns", 5, 5, 0, 3)
    assert info.ready and info.reason == "PoolFull" and info.message == "5 of 5 pods ready"
    assert info.created is not None and info.created.isoformat() == "2026-12-01T09:00:00+00:00"
    assert info.obj["kind"] == constants.POOL_KIND and "obj" not in repr(info)


def test_a_pool_not_counted_yet_or_with_a_foreign_status_reads_as_empty() -> None:
    fresh = pool("python")
    del fresh["status"]
    for body in (fresh, {**pool("python"), "status": {"readyCount": -1}}):
        info = pool_info(body)
        assert (info.size, info.ready_count, info.starting_count, info.claimed_count) == (2, 0, 0, 0)
        assert not info.ready and info.reason is None


def test_pools_lists_the_namespace_sorted_and_get_pool_finds_one() -> None:
    api = PoolApi(obj("x"), pools=[pool("ruby"), pool("python", ready=1, starting=1, condition=("False",
                                                                                               "Refilling"))])
    m = manager(api)
    listed = m.pools()
    assert [p.name for p in listed] == ["python", "ruby"] and api.pools_listed_in == ["ns"]
    assert all(isinstance(p, PoolInfo) for p in listed)
    m.pools(all_namespaces=True)
    assert api.pools_listed_in[-1] is None
    found = m.get_pool("python")
    assert (found.ready_count, found.starting_count, found.ready, found.reason) == (1, 1, False, "Refilling")
    with pytest.raises(errors.PoolNotFound):
        m.get_pool("nope")


def test_the_async_twin_reads_pools() -> None:
    api = PoolApi(obj("x"), pools=[pool("python")])

    async def scenario() -> tuple[list[str], str]:
        am = AsyncSandboxManager("ns", api_client=client.ApiClient())
        am.sync.api = api  # type: ignore[assignment]
        return [p.name for p in await am.pools()], (await am.get_pool("python")).name

    assert asyncio.run(scenario()) == (["python"], "python")


class _PoolsApi:
    """CustomObjectsApi's answers about SandboxPools: 404s, as the API server words them."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        self.message = message
        self.details = details

    def get_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        error = ApiException(status=404, reason="Not Found")
        error.body = json.dumps({"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound",
                                 "message": self.message, "details": self.details})
        raise error


def test_a_missing_pool_or_pool_crd_reads_as_such() -> None:
    api = KubeApi(client.ApiClient())
    api.custom = _PoolsApi('sandboxpools.sandbox-operator.io "nope" not found',  # type: ignore[assignment]
                           {"name": "nope", "kind": "sandboxpools"})
    with pytest.raises(errors.PoolNotFound, match="sandbox pool ns/nope does not exist") as info:
        api.get_pool("nope", "ns")
    assert isinstance(info.value, errors.SandboxNotFound) and info.value.status == 404
    api.custom = _PoolsApi("the server could not find the requested resource", {})  # type: ignore[assignment]
    with pytest.raises(errors.CrdNotInstalled, match=constants.POOL_CRD_NAME):
        api.get_pool("python", "ns")

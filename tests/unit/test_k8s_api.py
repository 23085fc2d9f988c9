"""k8s/api.py against an in-memory API server: what each call sends, and how 404, 409 and other answers come back
(a read of something gone is None, a delete of something gone is fine, a create that meets an existing object
says whose it is)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.k8s.api import Adoption, KubeApi, api_message
from tests.unit.fake_kube import NS, FakeCluster, api_error, sandbox_body, timestamp


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def api(cluster: FakeCluster) -> KubeApi:
    return cluster.kube_api()


def owner(uid: str, kind: str = constants.KIND, api_version: str = constants.API_VERSION) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": "x", "uid": uid, "controller": True}


def pod_model(name: str, owner_uid: str = "sbx-uid") -> client.V1Pod:
    return client.V1Pod(metadata=client.V1ObjectMeta(
        name=name, namespace=NS, owner_references=[client.V1OwnerReference(**{
            "api_version": constants.API_VERSION, "kind": constants.KIND, "name": name, "uid": owner_uid,
            "controller": True})]),
        spec=client.V1PodSpec(containers=[client.V1Container(name=constants.CONTAINER_NAME, image="i")]))


def policy_model(name: str, owner_uid: str = "sbx-uid") -> client.V1NetworkPolicy:
    return client.V1NetworkPolicy(metadata=client.V1ObjectMeta(
        name=name, namespace=NS, owner_references=[client.V1OwnerReference(**{
            "api_version": constants.API_VERSION, "kind": constants.KIND, "name": name, "uid": owner_uid,
            "controller": True})]),
        spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(), policy_types=["Ingress", "Egress"]))


# --- reads and patches: None for 404 -------------------------------------------------------------------------

READS: dict[str, tuple[str, Callable[[KubeApi], Any]]] = {
    "get_sandbox": ("get_namespaced_custom_object", lambda api: api.get_sandbox(NS, "a")),
    "patch_sandbox_status": ("patch_namespaced_custom_object_status",
                             lambda api: api.patch_sandbox_status(NS, "a", {"phase": "Ready"})),
    "get_pod": ("read_namespaced_pod", lambda api: api.get_pod(NS, "a")),
    "patch_pod": ("patch_namespaced_pod", lambda api: api.patch_pod(NS, "a", {"metadata": {"labels": {"k": "v"}}})),
    "get_network_policy": ("read_namespaced_network_policy", lambda api: api.get_network_policy(NS, "a")),
}


@pytest.mark.parametrize("call", READS.values(), ids=READS.keys())
def test_reads_and_patches_of_something_gone_are_none(api: KubeApi, call: tuple[str, Callable[[KubeApi], Any]]) -> None:
    assert call[1](api) is None


@pytest.mark.parametrize("call", READS.values(), ids=READS.keys())
@pytest.mark.parametrize("status", [403, 409, 500])
def test_reads_and_patches_raise_every_other_error(cluster: FakeCluster, api: KubeApi,
                                                   call: tuple[str, Callable[[KubeApi], Any]], status: int) -> None:
    method, run = call
    cluster.fail_next(method, status)
    with pytest.raises(ApiException) as raised:
        run(api)
    assert raised.value.status == status


def test_reads_return_the_object_as_json(cluster: FakeCluster, api: KubeApi) -> None:
    stored = cluster.add(constants.KIND, sandbox_body("a"))
    assert api.get_sandbox(NS, "a") == stored
    [call] = cluster.calls
    assert call.args == (constants.GROUP, constants.VERSION, NS, constants.PLURAL, "a")
    assert call.kwargs["_preload_content"] is False and call.kwargs["_request_timeout"] > 0


def test_the_status_is_merge_patched_through_its_subresource_by_the_operator(cluster: FakeCluster,
                                                                            api: KubeApi) -> None:
    cluster.add(constants.KIND, {**sandbox_body("a"), "status": {"phase": "Pending", "reason": "PodPending"}})
    written = api.patch_sandbox_status(NS, "a", {"phase": "Ready", "reason": None})
    assert written is not None and written["status"] == {"phase": "Ready"}
    [call] = cluster.calls
    assert call.method == "patch_namespaced_custom_object_status"
    assert call.args[-1] == {"status": {"phase": "Ready", "reason": None}}
    assert call.kwargs["field_manager"] == constants.MANAGER_NAME


def test_pod_patches_are_merge_patches_by_the_operator(cluster: FakeCluster, api: KubeApi) -> None:
    cluster.add("Pod", {"metadata": {"name": "a", "namespace": NS, "labels": {"old": "x", "keep": "y"}}})
    patched = api.patch_pod(NS, "a", {"metadata": {"labels": {"old": None, "new": "z"}}})
    assert patched is not None and patched["metadata"]["labels"] == {"keep": "y", "new": "z"}
    [call] = cluster.calls
    assert call.kwargs["_content_type"] == "application/merge-patch+json"
    assert call.kwargs["field_manager"] == constants.MANAGER_NAME


# --- deletes --------------------------------------------------------------------------------------------------

def test_a_sandbox_is_deleted_only_as_the_caller_saw_it(cluster: FakeCluster, api: KubeApi) -> None:
    seen = cluster.add(constants.KIND, {**sandbox_body("a"), "metadata": {"name": "a", "namespace": NS}})
    meta = seen["metadata"]
    assert api.delete_sandbox(NS, "a", "another-uid") is False, "a namesake is not deleted"
    assert api.delete_sandbox(NS, "a", meta["uid"], "0") is False, "changed since the caller looked"
    assert cluster.get(constants.KIND, NS, "a") is not None
    assert api.delete_sandbox(NS, "a", meta["uid"], meta["resourceVersion"]) is True
    assert cluster.get(constants.KIND, NS, "a") is None
    assert api.delete_sandbox(NS, "a", meta["uid"]) is False, "already gone"
    options = cluster.calls[-2].kwargs["body"]
    assert (options.preconditions.uid, options.preconditions.resource_version) == (meta["uid"],
                                                                                  meta["resourceVersion"])


def test_a_sandbox_delete_raises_what_it_cannot_judge(cluster: FakeCluster, api: KubeApi) -> None:
    cluster.fail_next("delete_namespaced_custom_object", 403)
    with pytest.raises(ApiException):
        api.delete_sandbox(NS, "a", "uid")


def test_a_pod_delete_names_its_uid_and_grace_and_tolerates_gone_or_replaced(cluster: FakeCluster,
                                                                           api: KubeApi) -> None:
    pod = cluster.add("Pod", {"metadata": {"name": "a", "namespace": NS}})
    api.delete_pod(NS, "a", "a-newer-pods-uid", 3)  # 409: a new pod of the same name stays
    assert cluster.get("Pod", NS, "a") is not None
    api.delete_pod(NS, "a", pod["metadata"]["uid"], 3)
    assert cluster.get("Pod", NS, "a") is None
    api.delete_pod(NS, "a", pod["metadata"]["uid"], 3)  # 404: nothing to do
    options = cluster.calls[1].kwargs["body"]
    assert (options.grace_period_seconds, options.preconditions.uid) == (3, pod["metadata"]["uid"])
    cluster.add("Pod", {"metadata": {"name": "b", "namespace": NS}})
    api.delete_pod(NS, "b", None, 0)
    assert cluster.calls[-1].kwargs["body"].preconditions is None
    assert cluster.get("Pod", NS, "b") is None
    cluster.fail_next("delete_namespaced_pod", 403)
    with pytest.raises(ApiException):
        api.delete_pod(NS, "c", None, 0)


def test_a_policy_delete_tolerates_gone_only(cluster: FakeCluster, api: KubeApi) -> None:
    cluster.add("NetworkPolicy", {"metadata": {"name": "a", "namespace": NS}})
    api.delete_network_policy(NS, "a")
    api.delete_network_policy(NS, "a")
    assert cluster.names("NetworkPolicy") == []
    cluster.fail_next("delete_namespaced_network_policy", 403)
    with pytest.raises(ApiException):
        api.delete_network_policy(NS, "a")


# --- creates: a 409 is judged ---------------------------------------------------------------------------------

CHILDREN: dict[str, tuple[str, Callable[[str], Any], Callable[[KubeApi, Any], Any]]] = {
    "pod": ("Pod", pod_model, lambda api, body: api.create_pod(body, "sbx-uid")),
    "policy": ("NetworkPolicy", policy_model, lambda api, body: api.create_network_policy(body, "sbx-uid")),
}


@pytest.mark.parametrize("child", CHILDREN.values(), ids=CHILDREN.keys())
def test_a_created_child_comes_back_as_stored(cluster: FakeCluster, api: KubeApi, child: Any) -> None:
    kind, model, create = child
    result = create(api, model("a"))
    assert result.outcome is Adoption.CREATED
    assert result.body == cluster.get(kind, NS, "a") and result.body["metadata"]["uid"]
    assert cluster.calls[0].kwargs["field_manager"] == constants.MANAGER_NAME


@pytest.mark.parametrize("child", CHILDREN.values(), ids=CHILDREN.keys())
@pytest.mark.parametrize(("controller", "outcome"), [
    (owner("sbx-uid"), Adoption.EXISTING),                     # ours: a re-run after a crash adopts it
    (owner("earlier-sandbox-uid"), Adoption.STALE),            # a namesake Sandbox's, not yet collected
    (owner("rs-uid", "ReplicaSet", "apps/v1"), Adoption.FOREIGN),
    (None, Adoption.FOREIGN),                                  # nobody's: someone made it by hand
])
def test_a_child_that_exists_is_adopted_waited_for_or_refused(cluster: FakeCluster, api: KubeApi, child: Any,
                                                             controller: dict[str, Any] | None,
                                                             outcome: Adoption) -> None:
    kind, model, create = child
    existing = cluster.add(kind, {"metadata": {"name": "a", "namespace": NS,
                                               "ownerReferences": [controller] if controller else []}})
    result = create(api, model("a"))
    assert result.outcome is outcome
    assert result.body == existing
    assert cluster.get(kind, NS, "a") == existing, "nothing was changed"


@pytest.mark.parametrize("child", CHILDREN.values(), ids=CHILDREN.keys())
def test_a_child_gone_between_the_conflict_and_the_read_is_retried(cluster: FakeCluster, api: KubeApi,
                                                                   child: Any) -> None:
    kind, model, create = child
    cluster.fail_next(f"create_namespaced_{'pod' if kind == 'Pod' else 'network_policy'}", 409, "AlreadyExists")
    result = create(api, model("a"))
    assert (result.outcome, result.body) == (Adoption.STALE, {})


@pytest.mark.parametrize("child", CHILDREN.values(), ids=CHILDREN.keys())
@pytest.mark.parametrize("status", [403, 422, 500])
def test_a_refused_create_raises(cluster: FakeCluster, api: KubeApi, child: Any, status: int) -> None:
    kind, model, create = child
    cluster.fail_next(f"create_namespaced_{'pod' if kind == 'Pod' else 'network_policy'}", status)
    with pytest.raises(ApiException) as raised:
        create(api, model("a"))
    assert raised.value.status == status
    assert cluster.names(kind) == []


# --- events and messages --------------------------------------------------------------------------------------

def event(pod_uid: str, reason: str, message: str, seconds_ago: float, field: str = "lastTimestamp") -> dict[str, Any]:
    return {"metadata": {"namespace": NS, "name": f"e-{message}"}, "involvedObject": {"uid": pod_uid},
            "reason": reason, "message": message, field: timestamp(seconds_ago)}


def test_the_latest_event_of_this_pod_and_reason_gives_the_message(cluster: FakeCluster, api: KubeApi) -> None:
    cluster.events += [event("pod-1", "Evicted", "older", 60), event("pod-1", "Evicted", "newer", 5, "eventTime"),
                       event("pod-1", "Killing", "other reason", 1), event("pod-2", "Evicted", "other pod", 1)]
    assert api.pod_event_message(NS, "pod-1", "Evicted") == "newer"
    assert cluster.calls[0].kwargs["field_selector"] == "involvedObject.uid=pod-1,reason=Evicted"
    assert api.pod_event_message(NS, "pod-3", "Evicted") is None


def test_events_the_operator_may_not_list_give_no_message(cluster: FakeCluster, api: KubeApi,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    cluster.fail_next("list_namespaced_event", 403, message='events is forbidden: cannot list resource "events"')
    assert api.pod_event_message(NS, "pod-1", "Evicted") is None
    assert "cannot list Events in ns: events is forbidden" in caplog.text
    cluster.fail_next("list_namespaced_event", 500)
    with pytest.raises(ApiException):
        api.pod_event_message(NS, "pod-1", "Evicted")


@pytest.mark.parametrize(("error", "message"), [
    (api_error(403, "Forbidden", 'pods "a" is forbidden: exceeded quota'), 'pods "a" is forbidden: exceeded quota'),
    (ApiException(status=500, reason="Internal Server Error"), "Internal Server Error"),
    (ApiException(status=502), "HTTP 502"),
])
def test_api_message_is_the_servers_own(error: ApiException, message: str) -> None:
    assert api_message(error) == message


def test_api_message_of_a_body_that_is_not_json_falls_back_to_the_reason() -> None:
    error = ApiException(status=503, reason="Service Unavailable")
    error.body = "<html>upstream down</html>"
    assert api_message(error) == "Service Unavailable"


def test_outside_a_pod_the_client_comes_from_the_kubeconfig(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://192.0.2.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    probe = ("from sandbox_operator.k8s.api import make_api_client\n"
             "for workers in (1, 16):\n"
             "    api = make_api_client(workers)\n"
             "    print(api.configuration.host, api.configuration.connection_pool_maxsize, api.user_agent)\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUBERNETES_SERVICE")}
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "KUBECONFIG": str(kubeconfig)},
                         capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    agent = f"{constants.MANAGER_NAME}/{constants.PROJECT_VERSION}"
    assert out == [f"https://192.0.2.1:6443 4 {agent}", f"https://192.0.2.1:6443 16 {agent}"]

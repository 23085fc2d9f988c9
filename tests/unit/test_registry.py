"""The registry of served namespaces on the Sandbox CRD: keys, entries, staleness, and the operator's publisher
against a fake API that applies merge and JSON patches as the API server does."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes.client import ApiException

from sandbox_operator import constants
from sandbox_operator.handlers import startup
from sandbox_operator.handlers.registry import (
    PRUNE_AFTER,
    RegistryPublisher,
    keep_published,
    operator_identity,
    pod_namespace,
)
from sandbox_operator.handlers.runtime import Runtime
from sandbox_operator.registry import (
    RegistryEntry,
    fresh_entries,
    registry_entries,
    registry_entry,
    registry_key,
)
from sandbox_operator.settings import OperatorSettings, SettingsError, load_settings

NOW = datetime.datetime(2026, 12, 1, 10, 0, 0, tzinfo=datetime.UTC)
PREFIX = constants.REGISTRY_ANNOTATION_PREFIX
# A qualified annotation key: a DNS-subdomain prefix, "/", and a name part of at most 63 characters.
KEY_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def key_name(key: str) -> str:
    prefix, _, name = key.partition("/")
    assert prefix == PREFIX
    assert KEY_NAME.match(name) and len(name) <= 63, name
    return name


# --- keys ---------------------------------------------------------------------------------------------------

def test_key_is_namespace_dot_name_when_already_valid() -> None:
    assert registry_key("sandbox-operator-system", "demo-sandbox-operator") == (
        f"{PREFIX}/sandbox-operator-system.demo-sandbox-operator")


@pytest.mark.parametrize(("namespace", "name"), [
    ("local", "my host:4242"),              # invalid characters
    ("ns", "x" * 80),                       # too long
    ("-", "-"),                             # nothing valid left at the edges
    ("team-a", "operator/with/slashes"),
])
def test_key_is_always_a_valid_annotation_key(namespace: str, name: str) -> None:
    key_name(registry_key(namespace, name))


def test_changed_or_shortened_names_keep_keys_distinct() -> None:
    long_a, long_b = "a" * 70 + "1", "a" * 70 + "2"
    assert registry_key("ns", long_a) != registry_key("ns", long_b)
    assert registry_key("ns", "a:b") != registry_key("ns", "a;b")  # both sanitise to "ns.a-b"
    assert registry_key("ns", "a:b") != f"{PREFIX}/ns.a-b"
    assert len(key_name(registry_key("ns", long_a))) == 63


# --- entries ------------------------------------------------------------------------------------------------

def test_entry_value_is_the_published_json() -> None:
    value = registry_entry(["team-a", "team-b"], NOW + datetime.timedelta(microseconds=5), "1.2.3").annotation_value()
    assert json.loads(value) == {"namespaces": ["team-a", "team-b"], "heartbeat": "2026-12-01T10:00:00Z",
                                 "version": "1.2.3"}


def test_cluster_wide_operator_serves_every_namespace() -> None:
    entry = registry_entry([], NOW)
    assert entry.namespaces == ["*"] and entry.version == constants.PROJECT_VERSION
    assert entry.serves("default") and entry.serves("anything")


@pytest.mark.parametrize(("patterns", "namespace", "served"), [
    (["sandboxes"], "sandboxes", True),
    (["sandboxes"], "default", False),
    (["sbx-*"], "sbx-team", True),
    (["sbx-*"], "team-sbx", False),
    (["team-?"], "team-a", True),
    (["!kube-*"], "default", True),       # kopf: a leading exclusion implies a catch-all before it
    (["!kube-*"], "kube-system", False),
    (["a", "b"], "b", True),
])
def test_entry_serves_namespaces_as_kopf_matches_them(patterns: list[str], namespace: str, served: bool) -> None:
    assert registry_entry(patterns, NOW).serves(namespace) is served


def test_staleness_rule() -> None:
    entry = registry_entry(["a"], NOW)
    limit = datetime.timedelta(seconds=constants.REGISTRY_STALE_SECONDS)
    assert entry.is_fresh(NOW)
    assert entry.is_fresh(NOW + limit)
    assert not entry.is_fresh(NOW + limit + datetime.timedelta(seconds=1))
    assert entry.is_fresh(NOW - datetime.timedelta(minutes=10))  # written "in the future": clock skew, fresh


def test_entries_are_read_from_annotations_and_bad_ones_skipped() -> None:
    good = registry_entry(["a"], NOW).annotation_value()
    old = registry_entry(["b"], NOW - datetime.timedelta(seconds=600)).annotation_value()
    annotations = {
        f"{PREFIX}/ns.good": good,
        f"{PREFIX}/ns.old": old,
        f"{PREFIX}/ns.not-json": "{",
        f"{PREFIX}/ns.no-namespaces": json.dumps({"namespaces": [], "heartbeat": "2026-12-01T10:00:00Z",
                                                  "version": "1"}),
        f"{PREFIX}/ns.naive-time": json.dumps({"namespaces": ["a"], "heartbeat": "2026-12-01T10:00:00",
                                               "version": "1"}),
        f"{PREFIX}/ns.newer-format": json.dumps({"namespaces": ["c"], "heartbeat": "2026-12-01T10:00:00Z",
                                                 "version": "2", "leader": True}),
        "other.example.com/ns.good": good,
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
    }
    assert set(registry_entries(annotations)) == {f"{PREFIX}/ns.good", f"{PREFIX}/ns.old", f"{PREFIX}/ns.newer-format"}
    fresh = fresh_entries(annotations, NOW)
    assert set(fresh) == {f"{PREFIX}/ns.good", f"{PREFIX}/ns.newer-format"}
    assert fresh[f"{PREFIX}/ns.good"] == RegistryEntry(namespaces=["a"], heartbeat=NOW,
                                                       version=constants.PROJECT_VERSION)
    assert registry_entries(None) == {} and fresh_entries({}, NOW) == {}


# --- who the operator is -------------------------------------------------------------------------------------

def test_identity_in_a_pod_and_outside() -> None:
    assert operator_identity("demo-sandbox-operator", "sandbox-operator-system", "demo-7d9f-x2x4z", 1) == (
        "sandbox-operator-system", "demo-sandbox-operator")
    assert operator_identity("", "team", "pod-abc", 1) == ("team", "pod-abc-1")
    assert operator_identity("", None, "laptop", 4242) == ("local", "laptop-4242")


def test_pod_namespace_from_the_service_account_mount(tmp_path: Path) -> None:
    mounted = tmp_path / "namespace"
    mounted.write_text("sandbox-operator-system")
    assert pod_namespace(mounted) == "sandbox-operator-system"
    assert pod_namespace(tmp_path / "absent") is None
    mounted.write_text("")
    assert pod_namespace(mounted) is None


@pytest.mark.parametrize("name", ["demo-sandbox-operator", "a", "op.team-a", ""])
def test_instance_name_setting_accepts_object_names(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("SANDBOX_OPERATOR_INSTANCE_NAME", name)
    assert load_settings().instance_name == name


@pytest.mark.parametrize("name", ["Demo", "-op", "op-", "op_1", "a" * 254, "op/1"])
def test_instance_name_setting_rejects_other_names(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("SANDBOX_OPERATOR_INSTANCE_NAME", name)
    with pytest.raises(SettingsError, match=r"SANDBOX_OPERATOR_INSTANCE_NAME: .* is not a Kubernetes object name"):
        load_settings()


# --- the publisher against a fake API --------------------------------------------------------------------------

@dataclass
class Response:
    data: bytes


@dataclass
class FakeCrds:
    """The CRD's annotations, patched as the API server patches them; ``fail`` makes every call raise it."""

    annotations: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    fail: Exception | None = None

    def patch_custom_resource_definition(self, name: str, body: Any, **kwargs: Any) -> Response:
        self.calls.append((name, body, kwargs))
        assert name == constants.CRD_NAME
        if self.fail is not None:
            raise self.fail
        if kwargs["_content_type"] == "application/merge-patch+json":
            for key, value in body["metadata"]["annotations"].items():
                if value is None:
                    self.annotations.pop(key, None)
                else:
                    self.annotations[key] = value
        else:
            assert kwargs["_content_type"] == "application/json-patch+json"
            self._json_patch(body)
        crd = {"metadata": {"name": name, "annotations": dict(self.annotations)}}
        return Response(json.dumps(crd).encode())

    def _json_patch(self, operations: list[dict[str, Any]]) -> None:
        def key_of(pointer: str) -> str:
            prefix = "/metadata/annotations/"
            assert pointer.startswith(prefix)
            return pointer[len(prefix):].replace("~1", "/").replace("~0", "~")
        for op in operations:  # all or nothing: a failed test rejects the whole patch
            if op["op"] == "test" and self.annotations.get(key_of(op["path"])) != op["value"]:
                raise ApiException(status=422, reason="Unprocessable Entity")
        for op in operations:
            if op["op"] == "remove":
                del self.annotations[key_of(op["path"])]

    def entry(self, key: str) -> RegistryEntry:
        return RegistryEntry.model_validate_json(self.annotations[key])


KEY = registry_key("local", "op-1")


def publisher(crds: FakeCrds, namespaces: list[str] | None = None) -> RegistryPublisher:
    return RegistryPublisher(crds=crds, key=KEY, namespaces=["team-a"] if namespaces is None else namespaces)


def test_publish_writes_the_entry_as_a_merge_patch_and_refreshes_it() -> None:
    crds = FakeCrds(annotations={"unrelated": "kept"})
    pub = publisher(crds)
    assert pub.publish(NOW)
    assert crds.entry(KEY) == registry_entry(["team-a"], NOW)
    _name, body, kwargs = crds.calls[0]
    assert body == {"metadata": {"annotations": {KEY: registry_entry(["team-a"], NOW).annotation_value()}}}
    assert kwargs["field_manager"] == constants.MANAGER_NAME and kwargs["_request_timeout"]
    later = NOW + datetime.timedelta(seconds=constants.REGISTRY_HEARTBEAT_SECONDS)
    assert pub.publish(later) and pub.publish(later)  # idempotent
    assert crds.entry(KEY).heartbeat == later
    assert crds.annotations["unrelated"] == "kept" and len(crds.annotations) == 2


def test_cluster_wide_publisher_writes_star() -> None:
    crds = FakeCrds()
    assert publisher(crds, namespaces=[]).publish(NOW)
    assert crds.entry(KEY).namespaces == ["*"]


def test_withdraw_removes_only_its_own_entry_and_is_idempotent() -> None:
    other = registry_key("local", "op-2")
    crds = FakeCrds()
    publisher(crds).publish(NOW)
    RegistryPublisher(crds=crds, key=other, namespaces=["b"]).publish(NOW)
    pub = publisher(crds)
    assert pub.withdraw()
    assert KEY not in crds.annotations and other in crds.annotations
    assert pub.withdraw()
    assert crds.calls[-1][1] == {"metadata": {"annotations": {KEY: None}}}


@pytest.mark.parametrize("error", [
    ApiException(status=403, reason="Forbidden"),
    ApiException(status=404, reason="Not Found"),
    ApiException(status=500, reason="Internal Server Error"),
    urllib3.exceptions.MaxRetryError(None, "/apis", "connection refused"),  # type: ignore[arg-type]
], ids=["forbidden", "no-crd", "server-error", "unreachable"])
def test_failures_are_logged_once_and_never_raised(error: Exception, caplog: pytest.LogCaptureFixture) -> None:
    crds = FakeCrds(fail=error)
    pub = publisher(crds)
    with caplog.at_level(logging.INFO, logger="sandbox_operator.handlers.registry"):
        assert not pub.publish(NOW)
        assert not pub.publish(NOW + datetime.timedelta(seconds=60))
        assert not pub.withdraw()
        crds.fail = None
        assert pub.publish(NOW + datetime.timedelta(seconds=120))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings  # one for the repeated publish failure, one for the withdrawal
    assert KEY in warnings[0] and constants.CRD_NAME in warnings[0] and "get and patch" in warnings[0]
    assert any("works again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    assert crds.entry(KEY).heartbeat == NOW + datetime.timedelta(seconds=120)


def test_publish_prunes_long_silent_entries_of_others_only() -> None:
    silent_for = PRUNE_AFTER + datetime.timedelta(seconds=1)
    long_gone = registry_key("team", "crashed")
    recently_stale = registry_key("team", "restarting")
    crds = FakeCrds(annotations={
        long_gone: registry_entry(["x"], NOW - silent_for).annotation_value(),
        recently_stale: registry_entry(["y"], NOW - datetime.timedelta(seconds=300)).annotation_value(),
        f"{PREFIX}/team.garbled": "not json",
        KEY: registry_entry(["team-a"], NOW - silent_for).annotation_value(),
    })
    assert publisher(crds).publish(NOW)
    assert set(crds.annotations) == {recently_stale, f"{PREFIX}/team.garbled", KEY}
    assert crds.entry(KEY).heartbeat == NOW
    remove = crds.calls[-1][1]
    assert [op["op"] for op in remove] == ["test", "remove"]  # guarded: a refreshed entry is never removed


def test_an_entry_refreshed_while_pruning_is_kept() -> None:
    other = registry_key("team", "slow-clock")
    old_value = registry_entry(["x"], NOW - PRUNE_AFTER * 2).annotation_value()

    class RefreshingCrds(FakeCrds):
        def _json_patch(self, operations: list[dict[str, Any]]) -> None:
            self.annotations[other] = registry_entry(["x"], NOW).annotation_value()  # its heartbeat lands first
            super()._json_patch(operations)

    crds = RefreshingCrds(annotations={other: old_value})
    assert publisher(crds).publish(NOW)
    assert crds.entry(other).heartbeat == NOW


def test_heartbeat_loop_refreshes_and_survives_a_failing_round() -> None:
    crds = FakeCrds()
    pub = publisher(crds)
    rounds: list[datetime.datetime] = []

    def clock() -> datetime.datetime:
        rounds.append(NOW + datetime.timedelta(seconds=len(rounds)))
        if len(rounds) == 2:
            raise RuntimeError("a bug in one round")
        return rounds[-1]

    third_round = NOW + datetime.timedelta(seconds=2)

    def refreshed_after_the_failure() -> bool:
        return KEY in crds.annotations and crds.entry(KEY).heartbeat >= third_round

    async def run() -> None:
        task = asyncio.create_task(keep_published(pub, clock, interval=0.01))
        async with asyncio.timeout(10):
            while not refreshed_after_the_failure():
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert rounds[0] == NOW and crds.calls  # the loop waits one interval, then publishes every round


class _Withdrawals:
    def __init__(self) -> None:
        self.count = 0

    def withdraw(self) -> bool:
        self.count += 1
        return True


class _ClosingApi:
    def __init__(self) -> None:
        self.api_client = self
        self.closed = False

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("leader_election", "withdrawn"), [(False, 1), (True, 0)])
def test_shutdown_withdraws_the_entry_unless_a_standby_takes_over(leader_election: bool, withdrawn: int) -> None:
    # With leader election a standby publishes the same entry within seconds; withdrawn in between, a client's
    # create in that gap would be told no operator serves its namespace.
    publisher, api = _Withdrawals(), _ClosingApi()
    memo = kopf.Memo()
    memo.registry = publisher
    settings = OperatorSettings(leader_election=leader_election, leader_election_namespace="operators")
    memo.runtime = Runtime(settings=settings, api=api)  # type: ignore[arg-type]
    asyncio.run(startup.close(memo=memo))
    assert publisher.count == withdrawn
    assert api.closed

"""``sandboxctl create --pool`` and ``sandboxctl pools`` without a cluster."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox_operator import cli
from sandbox_operator.sdk.pools import PoolInfo, pool_info
from tests.unit.test_sdk_pools import pool


class _Created:
    name = "sbx-abcde"
    obj: dict[str, object] = {}


class _Manager:
    """Records what sandboxctl asks of the SDK."""

    def __init__(self, pools: list[PoolInfo] | None = None) -> None:
        self.created: list[tuple[str | None, dict[str, Any]]] = []
        self.listed: list[dict[str, Any]] = []
        self._pools = pools or []

    def create(self, name: str | None, **kwargs: Any) -> _Created:
        self.created.append((name, kwargs))
        return _Created()

    def pools(self, **kwargs: Any) -> list[PoolInfo]:
        self.listed.append(kwargs)
        return self._pools

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _Manager:
    made = _Manager([pool_info(pool("python", size=5, ready=4, starting=1, claimed=12)),
                     pool_info(pool("ruby", size=1, namespace="other"))])
    monkeypatch.setattr(cli.Context, "manager", property(lambda self: made))
    return made


def test_create_with_a_pool_passes_it_and_the_overrides(fake: _Manager, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create", "--pool", "python", "--lifetime", "900", "--idle-timeout", "60", "--pod-label",
                     "task=t1", "-l", "team=a", "--no-wait"]) == cli.EXIT_OK
    name, kwargs = fake.created[0]
    assert name is None and kwargs["pool"] == "python" and kwargs["labels"] == {"team": "a"}
    assert kwargs["spec"] == {"timeouts": {"idleSeconds": 60, "lifetimeSeconds": 900}, "podLabels": {"task": "t1"}}
    assert capsys.readouterr().out.strip() == "sbx-abcde"


def test_create_without_a_pool_passes_none(fake: _Manager) -> None:
    assert cli.main(["create", "--memory", "1Gi", "--no-wait"]) == cli.EXIT_OK
    assert fake.created[0][1]["pool"] is None


def test_create_with_a_pool_refuses_what_the_pool_fixes_naming_each_option(
        fake: _Manager, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["create", "--pool", "python", "--image", "img:1", "--memory", "1Gi", "-e", "A=1",
                     "--command-timeout", "30", "--lifetime", "900"])
    assert code == cli.EXIT_USAGE and fake.created == []
    err = capsys.readouterr().err
    assert "--image, --memory, --command-timeout, --env cannot be used with --pool" in err
    assert "only --idle-timeout, --lifetime and --pod-label may be given" in err and "--lifetime," not in err


def test_every_option_that_sets_a_fixed_field_is_refused() -> None:
    parser = cli.build_parser()
    given = ["--image", "i", "--cpu", "1", "--memory", "1Gi", "--ephemeral-storage", "1Gi", "--cpu-request", "1",
             "--memory-request", "1Gi", "--ephemeral-storage-request", "1Gi", "--pids", "9", "--command-timeout",
             "9", "--working-dir", "/tmp", "--runtime-class", "g", "-e", "A=1", "--node-selector", "n=1"]
    args = cli.parse_args(parser, ["create", "--pool", "python", *given])
    refused = cli.not_with_pool(args)
    assert set(refused) == {flag for flag in given if flag.startswith("--")} | {"--env"}
    assert len(refused) == len(cli.NOT_WITH_POOL)
    allowed = cli.parse_args(parser, ["create", "--pool", "p", "--idle-timeout", "1", "--lifetime", "2",
                                      "--pod-label", "a=b", "-l", "c=d", "--timeout", "5", "--no-wait"])
    assert cli.not_with_pool(allowed) == []


def test_pools_prints_the_counts_as_a_table(fake: _Manager, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pools"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == list(cli.POOL_HEADERS)
    assert lines[1].split()[:5] == ["python", "5", "4", "1", "12"]
    assert fake.listed == [{"all_namespaces": False}]
    assert cli.main(["pools", "-A"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"] and lines[2].split()[:3] == ["other", "ruby", "1"]
    assert fake.listed[-1] == {"all_namespaces": True}


def test_pools_as_json_is_a_list_of_the_objects(fake: _Manager, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pools", "-o", "json"]) == cli.EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert listed["kind"] == "List" and [i["metadata"]["name"] for i in listed["items"]] == ["python", "ruby"]
    assert listed["items"][0]["status"]["claimedCount"] == 12


def test_no_pools_says_so_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli.Context, "manager", property(lambda self: _Manager()))
    assert cli.main(["pools"]) == cli.EXIT_OK
    captured = capsys.readouterr()
    assert captured.out == "" and "No sandbox pools found." in captured.err


def test_pool_row_ages_and_escapes() -> None:
    body = pool("py\x1bthon", size=3, ready=2, starting=1)
    row = cli.pool_row(pool_info(body), datetime(2026, 12, 1, 9, 5, tzinfo=UTC))
    assert row == ["py\\x1bthon", "3", "2", "1", "0", "5m"]


@pytest.mark.parametrize("command", ["pools", "create"])
def test_help_mentions_pools(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and ("--pool NAME" in out if command == "create" else "CLAIMED" in out)

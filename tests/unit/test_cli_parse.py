"""sandboxctl argument parsing, help and exit codes (no cluster)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from sandbox_operator import cli
from sandbox_operator.sdk import errors


def parse(*argv: str) -> object:
    return cli.parse_args(cli.build_parser(), list(argv))


def test_global_options_before_or_after_the_command() -> None:
    a = parse("-n", "team", "-o", "json", "list")
    b = parse("list", "-n", "team", "-o", "json")
    for args in (a, b):
        assert args.namespace == "team" and args.output == "json"  # type: ignore[attr-defined]
    c = parse("list")
    assert not hasattr(c, "namespace")


def test_exec_argv_after_double_dash_keeps_its_options() -> None:
    args = parse("exec", "box", "-t", "5", "-e", "A=1", "--", "python3", "-c", "print('-n')", "-n", "x")
    assert args.name == "box" and args.timeout == 5 and args.env == ["A=1"]  # type: ignore[attr-defined]
    assert args.argv == ["python3", "-c", "print('-n')", "-n", "x"]  # type: ignore[attr-defined]
    assert not hasattr(args, "namespace")
    simple = parse("exec", "box", "ls")
    assert simple.argv == ["ls"]  # type: ignore[attr-defined]


def test_create_options() -> None:
    args = parse("create", "my-box", "--memory", "1Gi", "--idle-timeout", "20", "-e", "A=1", "-l", "t=x",
                 "--no-wait")
    assert args.name == "my-box" and args.memory == "1Gi" and args.idle_timeout == 20  # type: ignore[attr-defined]
    assert args.no_wait and args.label == ["t=x"]  # type: ignore[attr-defined]


class _Created:
    name = "my-box"
    obj: dict[str, object] = {}


class _RecordingManager:
    def __init__(self) -> None:
        self.specs: list[dict[str, object]] = []

    def create(self, name: str | None, **kwargs: Any) -> _Created:
        self.specs.append(kwargs["spec"])
        return _Created()


def test_create_maps_limits_and_requests_into_the_spec(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("create", "my-box", "--cpu", "2", "--memory", "1Gi", "--cpu-request", "500m",
                 "--memory-request", "256Mi", "--ephemeral-storage-request", "128Mi", "--no-wait")
    assert isinstance(args, argparse.Namespace)
    ctx = cli.Context(args)
    manager = _RecordingManager()
    ctx._manager = manager  # type: ignore[assignment]  # no cluster behind this test
    assert cli.cmd_create(ctx) == cli.EXIT_OK
    assert manager.specs == [{"resources": {"cpu": "2", "memory": "1Gi", "requests": {
        "cpu": "500m", "memory": "256Mi", "ephemeralStorage": "128Mi"}}}]
    assert capsys.readouterr().out.strip() == "my-box"


@pytest.mark.parametrize("command", ["create", "list", "get", "exec", "run-code", "cp", "ls", "cat", "rm",
                                     "events", "delete", "wait"])
def test_help_everywhere(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(command, "--help")
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "exit codes:" in out and "--namespace" in out


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse("frobnicate")
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        parse("list", "-o", "xml")
    assert info.value.code == 2


@pytest.mark.parametrize(("exc", "code"), [
    (errors.SandboxNotFound("x"), 3),
    (errors.SandboxFileNotFound("x"), 3),
    (errors.SandboxNotReady("x"), 4),
    (errors.SandboxFailed("x"), 4),
    (errors.NamespaceNotServed("x"), 4),
    (errors.WaitTimeout("x"), 4),
    (errors.SandboxForbidden("x"), 5),
    (errors.InvalidSandboxSpec("x"), 5),
    (errors.PathOutsideSandbox("x"), 5),
    (errors.FileTooLarge("x"), 5),
    (errors.ExecError("x"), 1),
    (errors.ExecError("x", reason="LimitAboveSandbox"), 5),
    (errors.ApiError("x"), 1),
    (errors.ConfigError("x"), 1),
    (cli.UsageError("x"), 2),
])
def test_exit_codes(exc: BaseException, code: int) -> None:
    assert cli.exit_code_for(exc) == code


class _Unserved:
    def create(self, name: str | None, **kwargs: Any) -> _Created:
        raise errors.NamespaceNotServed("no sandbox operator serves namespace 'default'; the running operators "
                                        "serve: sandboxes", served=("sandboxes",), reason="NoOperator",
                                        namespace="default")

    def close(self) -> None:
        pass


def test_create_where_no_operator_serves(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli.Context, "manager", property(lambda self: _Unserved()))
    assert cli.main(["create"]) == cli.EXIT_NOT_READY
    captured = capsys.readouterr()
    assert captured.out == "" and "'default'" in captured.err and "serve: sandboxes" in captured.err
    assert cli.main(["-o", "json", "create"]) == cli.EXIT_NOT_READY
    report = json.loads(capsys.readouterr().err)
    assert report["error"] == "NamespaceNotServed" and report["servedNamespaces"] == ["sandboxes"]


def test_main_reports_config_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert cli.main(["list"]) == 1
    assert "cannot load kubeconfig" in capsys.readouterr().err
    assert cli.main(["-o", "json", "list"]) == 1
    assert '"error": "ConfigError"' in capsys.readouterr().err


def test_main_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cp", "./a", "./b"]) == 2
    assert "exactly one of SRC and DST" in capsys.readouterr().err
    assert cli.main(["exec", "box"]) == 2


@pytest.mark.parametrize(("spec", "expected"), [
    ("box:/workspace/a", ("box", "/workspace/a")),
    ("box:rel/a", ("box", "rel/a")),
    ("box:", ("box", "/workspace")),
    ("./local:name", (None, "./local:name")),
    ("/abs/path", (None, "/abs/path")),
    ("plain.txt", (None, "plain.txt")),
    ("-", (None, "-")),
])
def test_split_remote(spec: str, expected: tuple[str | None, str]) -> None:
    assert cli.split_remote(spec) == expected


def test_parse_key_values() -> None:
    assert cli.parse_key_values(["A=1", "B=x=y", "C="], "--env") == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(cli.UsageError):
        cli.parse_key_values(["nope"], "--env")


@pytest.mark.parametrize(("name", "paths", "expected"), [
    ("box", ["a.txt"], ("box", ["a.txt"])),
    ("box", [], ("box", [])),
    ("box:/workspace", [], ("box", ["/workspace"])),
    ("box:/workspace/a", ["b"], ("box", ["/workspace/a", "b"])),
])
def test_ls_and_cat_take_name_colon_path(name: str, paths: list[str], expected: tuple[str, list[str]]) -> None:
    assert cli.name_and_paths(name, paths) == expected


def test_cat_needs_a_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["cat", "box"]) == 2
    assert "no file given" in capsys.readouterr().err
    assert cli.main(["ls", "box:/workspace", "/tmp"]) == 2

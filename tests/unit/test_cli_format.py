"""sandboxctl output formatting (pure functions)."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
import yaml

from sandbox_operator import cli
from sandbox_operator.sdk.events import SandboxEvent
from sandbox_operator.sdk.files import FileInfo
from sandbox_operator.sdk.health import health_from

NOW = datetime(2026, 11, 28, 2, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "-"), (0, "0s"), (59, "59s"), (119, "119s"), (120, "2m"), (3599, "59m"), (3600, "1h"),
    (3700, "1h1m"), (36000, "10h"), (86400 * 3, "3d"), (-5, "0s"),
])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert cli.human_duration(seconds) == text


def test_table() -> None:
    out = cli.format_table(("NAME", "PHASE"), [("a", "Ready"), ("long-name", None)])
    assert out.splitlines() == ["NAME        PHASE", "a           Ready", "long-name"]


def sandbox_obj() -> dict[str, object]:
    return {
        "metadata": {"name": "sbx-1", "namespace": "ns", "creationTimestamp": "2026-11-28T01:00:00Z",
                     "annotations": {"sandbox-operator.io/last-activity": "2026-11-28T01:59:30Z"}},
        "status": {"phase": "Ready", "nodeName": "node-1", "expiresAt": "2026-11-28T03:00:00Z",
                   "readyTime": "2026-11-28T01:00:03Z",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "PodReady", "message": "",
                                   "lastTransitionTime": "2026-11-28T01:00:03Z"}]},
    }


def test_sandbox_row() -> None:
    row = cli.sandbox_row(sandbox_obj(), NOW)  # type: ignore[arg-type]
    assert row == ["sbx-1", "Ready", "", "node-1", "30s", "1h", "1h"]
    deleting = sandbox_obj()
    deleting["metadata"]["deletionTimestamp"] = "2026-11-28T01:59:59Z"  # type: ignore[index]
    assert cli.sandbox_row(deleting, NOW)[1] == "Ready (deleting)"  # type: ignore[arg-type]
    assert cli.sandbox_row({"metadata": {"name": "x"}}, NOW) == ["x", "-", "", "", "-", "-", "-"]


def test_health_lines() -> None:
    text = cli.health_lines(health_from(sandbox_obj(), None), NOW)  # type: ignore[arg-type]
    assert "Phase:" in text and "Ready" in text and "Conditions:" in text and "PodReady" in text
    assert "(30s ago)" in text and "(in 1h)" in text


def entry(name: str, kind: str, size: int, mode: int) -> FileInfo:
    return FileInfo(name=name, path=f"/workspace/{name}", type=kind, size=size, mode=mode,  # type: ignore[arg-type]
                    mtime=0.0)


def test_file_rows() -> None:
    rows = cli.file_rows([entry("d", "dir", 4096, 0o755), entry("a", "file", 3, 0o644)])
    assert rows == [["drwxr-xr-x", "4096", "1970-01-01 00:00:00", "d/"],
                    ["-rw-r--r--", "3", "1970-01-01 00:00:00", "a"]]


def test_file_names_are_shown_escaped() -> None:
    rows = cli.file_rows([entry("\x1b[2Jevil\nname", "file", 1, 0o644), entry("tab\there\r\x9b\x7f", "dir", 0, 0)])
    assert rows[0][3] == "\\x1b[2Jevil\\nname"
    assert rows[1][3] == "tab\\there\\r\\x9b\\x7f/"
    table = cli.format_table(cli.FILE_HEADERS, rows)
    assert "\x1b" not in table and table.count("\n") == 2


def test_shown_escapes_every_control_character() -> None:
    assert cli.shown("plain text, é ✓") == "plain text, é ✓"
    assert cli.shown("".join(map(chr, range(0x20)))) == (
        "\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\t\\n\\x0b\\x0c\\r\\x0e\\x0f"
        + "".join(f"\\x{c:02x}" for c in range(0x10, 0x20)))
    assert cli.shown("\x7f\x80\x9f\xa0") == "\\x7f\\x80\\x9f\xa0"
    assert cli.shown("a\u202eb") == "a\\u202eb"
    assert cli.shown(None) == ""


def test_event_line() -> None:
    ev = SandboxEvent(kind="event", type="Warning", reason="Failed\x1b[31m", name="sbx-1", namespace="ns",
                      message="multi\nline\x1b]0;title\x07", timestamp=NOW, involved_kind="Pod")
    line = cli.event_line(ev)
    assert line.startswith("02:00:00  event  Warning  Failed\\x1b[31m") and "pod/sbx-1" in line
    assert "multi\\nline\\x1b]0;title\\x07" in line
    assert "\x1b" not in line and "\n" not in line


def test_health_lines_escape_cluster_text() -> None:
    obj = sandbox_obj()
    obj["status"]["conditions"][0]["message"] = "pulling\x1b[2J\nfake: line\r"  # type: ignore[index]
    obj["status"]["nodeName"] = "node\x9b1"  # type: ignore[index]
    text = cli.health_lines(health_from(obj, None), NOW)  # type: ignore[arg-type]
    assert "\x1b" not in text and "\r" not in text and "\x9b" not in text
    assert "pulling\\x1b[2J\\nfake: line\\r" in text and "node\\x9b1" in text


def test_the_error_printer_escapes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from sandbox_operator.sdk import errors

    def fail(ctx: cli.Context) -> int:
        raise errors.SandboxFileNotFound("no such file: /workspace/\x1b]0;pwned\x07\nsandboxctl: forged")

    monkeypatch.setattr(cli, "cmd_cat", fail)
    assert cli.main(["cat", "box:/workspace/x"]) == cli.EXIT_NOT_FOUND
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and err.count("\n") == 1
    assert "\\x1b]0;pwned\\x07\\nsandboxctl: forged" in err


def test_render() -> None:
    data = {"b": 1, "a": [1, 2]}
    assert json.loads(cli.render(data, "json")) == data
    assert yaml.safe_load(cli.render(data, "yaml")) == data
    assert cli.render(data, "yaml").startswith("b: 1")  # key order kept


def test_spinner_only_on_a_terminal() -> None:
    quiet = io.StringIO()
    with cli.Spinner(quiet) as spinner:
        spinner.update("waiting")
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    with cli.Spinner(shown, enabled=True) as spinner:
        spinner.update("waiting for sandbox x")
        import time

        time.sleep(0.35)
    assert "waiting for sandbox x" in shown.getvalue()

"""File API pieces that need no cluster: strict entries and tool errors, caps, uploads and single-file downloads."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TypeVar

import pytest
from pydantic import ValidationError

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.channel import Channel
from sandbox_operator.sdk.commands import CommandResult
from sandbox_operator.sdk.files import FileInfo, Files

T = TypeVar("T")

ENTRY = {"name": "a.py", "path": "/workspace/a.py", "type": "file", "size": 12, "mode": 0o644,
         "mtime": 1764291723.5}


def test_file_info() -> None:
    info = FileInfo.from_dict(ENTRY)
    assert info.is_file and not info.is_dir and info.permissions == "-rw-r--r--"
    assert info.modified.year == 2025
    assert FileInfo.from_dict({**ENTRY, "type": "dir", "mode": 0o755}).permissions == "drwxr-xr-x"
    assert info.to_dict() == ENTRY
    assert FileInfo.from_dict({**ENTRY, "mtime": 5}).mtime == 5.0  # an int mtime is fine


@pytest.mark.parametrize("change", [
    {"type": "fifo"}, {"size": -1}, {"size": "12"}, {"size": 1.5}, {"size": True}, {"mode": 0o10000},
    {"mode": -1}, {"name": ""}, {"name": 3}, {"path": None}, {"mtime": "now"}, {"extra": 1},
])
def test_file_info_is_strict(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FileInfo.from_dict({**ENTRY, **change})
    with pytest.raises(ValidationError):
        FileInfo.from_dict({k: v for k, v in ENTRY.items() if k != "mtime"})


class FakeRunner:
    """Answers file-tool calls from a table, recording them; enforces ``max_output`` and writes to ``sink``
    the way the real transport does."""

    name = "s"
    namespace = "ns"

    def __init__(self, stdout: bytes = b"", exit_code: int = 0, stderr: bytes = b"") -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.caps: list[int] = []
        self.stdout = stdout
        self.exit_code = exit_code
        self.stderr = stderr

    def answer(self, args: Sequence[str]) -> tuple[int, bytes, bytes]:
        return self.exit_code, self.stdout, self.stderr

    def _on_channel(self, operation: Callable[[Channel], T], *, hold: bool = False) -> tuple[T] | None:
        return None  # a sandbox without a channel: every operation runs the file tool

    def _run_tool(self, args: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
                  timeout: float | None = None, max_output: int,
                  sink: IO[bytes] | None = None) -> CommandResult:
        data = stdin.read() if hasattr(stdin, "read") else stdin  # type: ignore[union-attr]
        self.calls.append((list(args), data))  # type: ignore[arg-type]
        self.caps.append(max_output)
        exit_code, stdout, stderr = self.answer(args)
        sent = 0
        for i in range(0, len(stdout), 1000):
            chunk = stdout[i:i + 1000]
            sent += len(chunk)
            if sent > max_output:
                raise errors.FileTooLarge(f"output is over the cap of {max_output} bytes", reason="FileTooLarge")
            if sink is not None:
                sink.write(chunk)
        return CommandResult(command=list(args), exit_code=exit_code,
                             stdout_bytes=b"" if sink is not None else stdout, stderr_bytes=stderr)


def test_write_sends_exact_bytes_with_mode_and_parents() -> None:
    runner = FakeRunner()
    files = Files(runner)
    data = bytes(range(256)) * 10
    assert files.write("out/data.bin", data, mode=0o600) == "/workspace/out/data.bin"
    assert runner.calls == [(["write", "/workspace/out/data.bin", "--mode", "0600", "--size", "2560",
                              "--parents"], data)]
    files.write("/tmp/t.txt", "héllo", parents=False)
    assert runner.calls[-1] == (["write", "/tmp/t.txt", "--mode", "0644", "--size", "6"], "héllo".encode())


def test_caps_and_paths_are_checked_before_sending() -> None:
    runner = FakeRunner()
    files = Files(runner, max_file_bytes=10)
    with pytest.raises(errors.FileTooLarge):
        files.write("big", b"x" * 11)
    with pytest.raises(errors.PathOutsideSandbox):
        files.write("/etc/passwd", b"x")
    with pytest.raises(errors.PathOutsideSandbox):
        files.read_bytes("../../etc/shadow")
    with pytest.raises(errors.PathOutsideSandbox):
        files.remove("/workspace")
    assert runner.calls == []


def test_exists_and_list() -> None:
    assert Files(FakeRunner(exit_code=0)).exists("a") is True
    assert Files(FakeRunner(exit_code=1)).exists("a") is False
    listing = b'[{"name": "b", "path": "/workspace/b", "type": "dir", "size": 0, "mode": 493, "mtime": 1}, ' \
              b'{"name": "a", "path": "/workspace/a", "type": "file", "size": 3, "mode": 420, "mtime": 2}]'
    entries = Files(FakeRunner(stdout=listing)).list()
    assert [e.name for e in entries] == ["a", "b"]


def test_tool_error_is_raised() -> None:
    runner = FakeRunner(exit_code=1, stderr=b'{"error": "PathOutsideSandbox", "message": "symlink escapes", '
                                            b'"path": "/workspace/link"}\n')
    with pytest.raises(errors.PathOutsideSandbox, match="symlink escapes"):
        Files(runner).read_bytes("link")


def test_upload_dir_sends_one_tar(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"A")
    (src / "sub" / "b.bin").write_bytes(b"\0" * 100)
    runner = FakeRunner()
    assert Files(runner).upload(src, "dst") == "/workspace/dst"
    assert len(runner.calls) == 1
    args, tar_bytes = runner.calls[0]
    assert args[:3] == ["tar-in", "/workspace/dst", "--parents"]
    assert tar_bytes is not None and args[3:] == ["--size", str(len(tar_bytes))]
    assert tar_bytes is not None
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        assert sorted(tar.getnames()) == ["a.txt", "sub", "sub/b.bin"]


def test_upload_dir_transfer_cap(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 20000)
    with pytest.raises(errors.FileTooLarge):
        Files(FakeRunner(), max_transfer_bytes=10000).upload(tmp_path, "dst")


# Strict parsing of the tool's answers ------------------------------------------------------------------------

GOOD_ENTRY = json.dumps(ENTRY).encode()


@pytest.mark.parametrize("stdout", [
    GOOD_ENTRY, GOOD_ENTRY + b"\n", json.dumps(ENTRY, indent=2).encode() + b"\n",
])
def test_stat_accepts_one_document_and_one_newline(stdout: bytes) -> None:
    assert Files(FakeRunner(stdout=stdout)).stat("a.py") == FileInfo.from_dict(ENTRY)


HOSTILE_ANSWERS = [
    pytest.param(GOOD_ENTRY + b"\n\n", id="two newlines"),
    pytest.param(GOOD_ENTRY + b" ", id="trailing space"),
    pytest.param(GOOD_ENTRY + b"garbage", id="trailing garbage"),
    pytest.param(GOOD_ENTRY + b"\n" + GOOD_ENTRY + b"\n", id="two JSON lines"),
    pytest.param(b"x" + GOOD_ENTRY, id="prefix injection"),
    pytest.param(b"\n" + GOOD_ENTRY, id="leading newline"),
    pytest.param(b"", id="empty"),
    pytest.param(b"[" + GOOD_ENTRY + b"]", id="a list for stat"),
    pytest.param(GOOD_ENTRY[:-1] + b', "path": "/root/.ssh/authorized_keys"}', id="duplicate key"),
    pytest.param(json.dumps({**ENTRY, "size": "12"}).encode(), id="size as text"),
    pytest.param(json.dumps({**ENTRY, "type": "socket"}).encode(), id="unknown type"),
    pytest.param(json.dumps({**ENTRY, "mode": 0o104755}).encode(), id="mode out of range"),
    pytest.param(GOOD_ENTRY.replace(b"1764291723.5", b"NaN"), id="NaN"),
    pytest.param(b"\xff" + GOOD_ENTRY, id="not UTF-8"),
]


@pytest.mark.parametrize("stdout", HOSTILE_ANSWERS)
def test_stat_refuses_anything_else(stdout: bytes) -> None:
    with pytest.raises(errors.FileError) as info:
        Files(FakeRunner(stdout=stdout)).stat("a.py")
    assert info.value.reason == "BadToolOutput"


@pytest.mark.parametrize("stdout", [
    b"[" + GOOD_ENTRY + b"]\ntrailing", GOOD_ENTRY, b"[" + GOOD_ENTRY + b", 1]", b"[]\n[]\n",
    b'[{"name": "a", "path": "/workspace/a", "type": "file", "size": 1, "mode": 420, "mtime": 1, "x": 2}]',
])
def test_list_refuses_anything_but_one_array_of_entries(stdout: bytes) -> None:
    with pytest.raises(errors.FileError) as info:
        Files(FakeRunner(stdout=stdout)).list()
    assert info.value.reason == "BadToolOutput"


def test_bad_output_messages_show_little_of_the_sandboxes_text_and_escape_it() -> None:
    hostile = b"\x1b[2J" + b"A" * 100_000
    with pytest.raises(errors.FileError) as info:
        Files(FakeRunner(stdout=hostile)).stat("a.py")
    assert "\x1b" not in info.value.message and len(info.value.message) < 500
    extra_key = json.dumps({**ENTRY, "\x1b]0;" + "k" * 5000: 1}).encode()
    with pytest.raises(errors.FileError) as info:
        Files(FakeRunner(stdout=extra_key)).stat("a.py")
    assert "\x1b" not in info.value.message and len(info.value.message) < 500


def test_listing_and_stat_outputs_are_capped() -> None:
    runner = FakeRunner(stdout=b"[]\n")
    files = Files(runner)
    files.list()
    files.exists("a")
    assert runner.caps == [16 * 1024 * 1024, 64 * 1024]


# Tool errors -------------------------------------------------------------------------------------------------

REPORT = b'{"error": "PathOutsideSandbox", "message": "symlink escapes", "path": "/workspace/link"}\n'


@pytest.mark.parametrize("stderr", [
    REPORT, REPORT.rstrip(b"\n"), b"sandbox-exec: note one\nsandbox-exec: note two\n" + REPORT,
])
def test_tool_error_report_is_parsed(stderr: bytes) -> None:
    with pytest.raises(errors.PathOutsideSandbox, match="symlink escapes") as info:
        Files(FakeRunner(exit_code=2, stderr=stderr)).read_bytes("link")
    assert info.value.path == "/workspace/link" and info.value.reason == "PathOutsideSandbox"


@pytest.mark.parametrize("stderr", [
    pytest.param(b"noise\n" + REPORT, id="a line before it"),
    pytest.param(REPORT + REPORT, id="two reports"),
    pytest.param(REPORT + b"more\n", id="a line after it"),
    pytest.param(REPORT.rstrip(b"\n") + b" x\n", id="trailing text"),
    pytest.param(b'{"error": "PathOutsideSandbox", "message": 1}\n', id="wrong type"),
    pytest.param(b'{"error": "PathOutsideSandbox", "message": "m", "extra": 1}\n', id="extra key"),
    pytest.param(b'["PathOutsideSandbox"]\n', id="not an object"),
    pytest.param(b"sandbox-exec:no space\n" + REPORT, id="not the wrapper's prefix"),
])
def test_anything_else_on_stderr_is_an_opaque_error(stderr: bytes) -> None:
    with pytest.raises(errors.FileError) as info:
        Files(FakeRunner(exit_code=2, stderr=stderr)).read_bytes("link")
    assert type(info.value) is errors.FileError and info.value.reason == "FileToolFailed"
    assert "exit code 2" in info.value.message


def test_opaque_errors_are_escaped_and_short() -> None:
    with pytest.raises(errors.FileError) as info:
        Files(FakeRunner(exit_code=1, stderr=b"\x1b]0;pwned\x07" + b"B" * 10_000)).read_bytes("x")
    assert "\x1b" not in info.value.message and "\\x1b]0;pwned\\x07" in info.value.message
    assert len(info.value.message) < 400


def test_a_report_message_is_escaped_and_names_the_path() -> None:
    stderr = b'{"error": "FileNotFoundError", "message": "No such file\\u001b[2J", "path": "/etc/shadow", ' \
             b'"errno": "ENOENT"}\n'
    with pytest.raises(errors.SandboxFileNotFound) as info:
        Files(FakeRunner(exit_code=1, stderr=stderr)).read_bytes("missing\x1b")
    assert info.value.message == "No such file\\x1b[2J: /workspace/missing\\x1b"
    assert info.value.path == "/workspace/missing\x1b"  # the path asked for, not the sandbox's


def test_a_missing_tool_is_reported() -> None:
    with pytest.raises(errors.ExecError) as info:
        Files(FakeRunner(exit_code=127, stderr=b"sandbox-exec: sandbox-files: not found\n")).read_bytes("x")
    assert info.value.reason == "FileToolMissing"


# Single-file downloads ---------------------------------------------------------------------------------------

class StatThenRead(FakeRunner):
    """``stat`` answers ``info``; ``read`` answers ``content``."""

    def __init__(self, info: dict[str, object], content: bytes) -> None:
        super().__init__()
        self.info = info
        self.content = content

    def answer(self, args: Sequence[str]) -> tuple[int, bytes, bytes]:
        if args[0] == "stat":
            return 0, json.dumps(self.info).encode() + b"\n", b""
        assert args[0] == "read"
        return 0, self.content, b""


def test_the_local_name_comes_from_the_requested_path_not_the_sandbox(tmp_path: Path) -> None:
    hostile = {"name": "../../.bashrc", "path": "/home/user/.bashrc", "type": "file", "size": 3, "mode": 0o644,
               "mtime": 0}
    runner = StatThenRead(hostile, b"rc\n")
    written = Files(runner).download("/workspace/report.txt", tmp_path)
    assert written == tmp_path / "report.txt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]
    assert written.read_bytes() == b"rc\n"
    assert [c[0] for c in runner.calls] == [["stat", "/workspace/report.txt"], ["read", "/workspace/report.txt"]]


def test_download_to_an_explicit_file_name_and_over_a_symlink(tmp_path: Path) -> None:
    info = {**ENTRY, "name": "x"}
    (tmp_path / "target").write_text("keep")
    (tmp_path / "out.bin").symlink_to(tmp_path / "target")
    written = Files(StatThenRead(info, b"new" * 1000)).download("a.py", tmp_path / "out.bin")
    assert written == tmp_path / "out.bin" and not written.is_symlink()
    assert written.read_bytes() == b"new" * 1000 and (tmp_path / "target").read_text() == "keep"
    assert stat.S_IMODE(written.stat().st_mode) & 0o600 == 0o600


def test_a_root_has_no_file_name(tmp_path: Path) -> None:
    with pytest.raises(errors.FileError) as info:
        Files(StatThenRead({**ENTRY, "type": "file"}, b"x")).download("/workspace", tmp_path)
    assert info.value.reason == "NoFileName"
    assert list(tmp_path.iterdir()) == []


def test_a_download_past_the_cap_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "report.txt").write_text("old")
    with pytest.raises(errors.FileTooLarge):
        Files(StatThenRead(ENTRY, b"x" * 5000), max_file_bytes=4000).download("/workspace/report.txt", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]
    assert (tmp_path / "report.txt").read_text() == "old"


def test_a_download_of_something_else_is_refused(tmp_path: Path) -> None:
    with pytest.raises(errors.FileError) as info:
        Files(StatThenRead({**ENTRY, "type": "other"}, b"")).download("/workspace/fifo", tmp_path)
    assert info.value.reason == "NotARegularFile"
    assert os.listdir(tmp_path) == []

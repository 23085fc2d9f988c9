"""File API pieces that need no cluster: entries, caps and safe extraction of downloaded archives."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import pytest

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.commands import CommandResult
from sandbox_operator.sdk.files import FileInfo, Files


def test_file_info() -> None:
    info = FileInfo.from_dict({"name": "a.py", "path": "/workspace/a.py", "type": "file", "size": 12,
                               "mode": 0o644, "mtime": 1764291723.5})
    assert info.is_file and not info.is_dir and info.permissions == "-rw-r--r--"
    assert info.modified.year == 2025
    assert FileInfo.from_dict({"name": "d", "type": "dir", "mode": 0o755}).permissions == "drwxr-xr-x"
    assert FileInfo.from_dict({"name": "x", "type": "fifo"}).type == "other"
    assert info.to_dict()["mode"] == 0o644


class FakeRunner:
    """Answers file-tool calls from a table, recording them."""

    name = "s"
    namespace = "ns"

    def __init__(self, stdout: bytes = b"", exit_code: int = 0, stderr: bytes = b"") -> None:
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.stdout = stdout
        self.exit_code = exit_code
        self.stderr = stderr

    def _run_tool(self, args: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
                  timeout: float | None = None, max_output: int | None = None) -> CommandResult:
        data = stdin.read() if hasattr(stdin, "read") else stdin  # type: ignore[union-attr]
        self.calls.append((list(args), data))  # type: ignore[arg-type]
        return CommandResult(command=list(args), exit_code=self.exit_code, stdout_bytes=self.stdout,
                             stderr_bytes=self.stderr)


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


def _tar(members: list[tuple[str, bytes | None, str | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, link in members:
            info = tarfile.TarInfo(name)
            if link is not None:
                info.type = tarfile.SYMTYPE
                info.linkname = link
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class StatAndTar(FakeRunner):
    def __init__(self, tar: bytes) -> None:
        super().__init__()
        self.tar = tar

    def _run_tool(self, args: Sequence[str], **kwargs: object) -> CommandResult:  # type: ignore[override]
        if args[0] == "tar-out":
            assert list(args[2:]) == ["--arcname", "."]
            return CommandResult(command=list(args), exit_code=0, stdout_bytes=self.tar)
        raise AssertionError(args)


@pytest.mark.parametrize("prefix", ["", "./"])
def test_download_dir_extracts_contents(tmp_path: Path, prefix: str) -> None:
    tar = _tar([(prefix or ".", None, None), (prefix + "a.txt", b"A", None), (prefix + "sub", None, None),
                (prefix + "sub/b.bin", b"\0\1", None), (prefix + "sub/link", None, "../a.txt")])
    dest = Files(StatAndTar(tar)).download_dir("/workspace/src", tmp_path / "out")
    assert (dest / "a.txt").read_bytes() == b"A"
    assert (dest / "sub" / "b.bin").read_bytes() == b"\0\1"
    assert (dest / "sub" / "link").is_symlink()


def test_download_dir_makes_absolute_names_relative(tmp_path: Path) -> None:
    dest = Files(StatAndTar(_tar([("/abs.txt", b"x", None)]))).download_dir("/workspace/x", tmp_path / "out")
    assert (dest / "abs.txt").read_bytes() == b"x"


@pytest.mark.parametrize("evil", [
    [("../escape.txt", b"x", None)],
    [("link", None, "/etc/passwd")],
    [("link", None, "../../outside")],
])
def test_download_dir_refuses_unsafe_entries(tmp_path: Path,
                                            evil: list[tuple[str, bytes | None, str | None]]) -> None:
    with pytest.raises(errors.PathOutsideSandbox):
        Files(StatAndTar(_tar(evil))).download_dir("/workspace/x", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


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
        Files(FakeRunner(), max_transfer_bytes=10000).upload_dir(tmp_path, "dst")

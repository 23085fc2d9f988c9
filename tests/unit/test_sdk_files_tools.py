"""The SDK's file API against the image's real tools, run locally: sandbox-files through sandbox-exec (a sandbox
without a channel), and the same tests again over a channel to sandbox-agent.

No cluster: the tools run as local processes with their writable roots pointed at a temporary directory under
/tmp, so the whole contract (arguments, stdin sizes, tar layout, JSON errors) is exercised end to end, and both
ways must give the same answers and the same errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TypeVar

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk.channel import Channel
from sandbox_operator.sdk.commands import CommandResult, is_wrapper_timeout
from sandbox_operator.sdk.exec import wrapper_argv
from sandbox_operator.sdk.files import Files
from tests.unit.test_channel import LocalAgent
from tests.unit.test_image_tools import clean_env

BIN = Path(__file__).resolve().parents[2] / "images" / "sandbox" / "bin"
pytestmark = pytest.mark.skipif(not (BIN / "sandbox-files").exists(), reason="the image's tools are not here")
T = TypeVar("T")


def local_argv(argv: list[str]) -> list[str]:
    """A wrapper argv for this machine: the tools run by this Python (their shebang names the image's)."""
    python = [sys.executable, "-I", "-S"]
    out = [*python, str(BIN / "sandbox-exec"), *argv[1:]]
    cut = out.index("--") + 1
    if out[cut] == constants.FILES_TOOL:
        out[cut:cut + 1] = [*python, str(BIN / "sandbox-files")]
    return out


class LocalRunner:
    name = "local"
    namespace = "local"

    def __init__(self, root: str) -> None:
        self.env = {**os.environ, "SANDBOX_WRITABLE_ROOTS": root}
        self.calls: list[list[str]] = []

    def _on_channel(self, operation: Callable[[Channel], T], *, hold: bool = False) -> tuple[T] | None:
        return None

    def _run_tool(self, args: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
                  timeout: float | None = None, max_output: int,
                  sink: IO[bytes] | None = None) -> CommandResult:
        argv = local_argv(wrapper_argv([constants.FILES_TOOL, *args], command_id=uuid.uuid4().hex,
                                       timeout=timeout))
        self.calls.append(list(args))
        data = stdin.read() if stdin is not None and hasattr(stdin, "read") else stdin
        out = subprocess.run(argv, input=data, capture_output=True, env=self.env, check=False, timeout=60)
        if len(out.stdout) > max_output:
            raise errors.FileTooLarge("over the cap", reason="FileTooLarge")
        if sink is not None:
            sink.write(out.stdout)
        return CommandResult(command=list(args), exit_code=out.returncode,
                             stdout_bytes=b"" if sink is not None else out.stdout, stderr_bytes=out.stderr,
                             timed_out=is_wrapper_timeout(out.returncode, out.stderr))


@pytest.fixture
def root() -> Iterator[str]:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="sdk-files-") as d:
        yield d


class ChannelRunner:
    """A sandbox with a channel: every file operation goes to the agent, none runs the file tool."""

    name = "local"
    namespace = "local"

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def _on_channel(self, operation: Callable[[Channel], T], *, hold: bool = False) -> tuple[T] | None:
        return (operation(self.channel),)

    def _run_tool(self, args: Sequence[str], **kwargs: object) -> CommandResult:
        raise AssertionError(f"the file tool ran although there is a channel: {args}")


@pytest.fixture(params=["tool", "channel"])
def files(request: pytest.FixtureRequest, root: str) -> Iterator[Files]:
    if request.param == "tool":
        yield Files(LocalRunner(root), max_file_bytes=4 * 1024 * 1024)
        return
    agent = LocalAgent(clean_env(SANDBOX_WRITABLE_ROOTS=root, SANDBOX_COMMAND_TIMEOUT="30"))
    try:
        with Channel(agent, sandbox="local") as channel:
            yield Files(ChannelRunner(channel), max_file_bytes=4 * 1024 * 1024)
    finally:
        agent.stop()


def test_write_read_stat_list_exists_remove(files: Files, root: str) -> None:
    data = os.urandom(1024 * 1024)
    path = files.write(f"{root}/a/b/data.bin", data, mode=0o600)
    assert Path(path).read_bytes() == data
    assert files.read_bytes(path) == data
    info = files.stat(path)
    assert (info.type, info.size, info.mode, info.name) == ("file", len(data), 0o600, "data.bin")
    assert [(e.name, e.type) for e in files.list(f"{root}/a")] == [("b", "dir")]
    assert files.exists(path) and not files.exists(f"{root}/nope")
    files.write(f"{root}/t.txt", "héllo")
    assert files.read_text(f"{root}/t.txt") == "héllo"
    files.mkdir(f"{root}/m/n")
    assert files.stat(f"{root}/m/n").is_dir
    files.remove(f"{root}/a", recursive=True)
    assert not files.exists(f"{root}/a")


def test_errors_map_to_types(files: Files, root: str) -> None:
    with pytest.raises(errors.SandboxFileNotFound):
        files.read_bytes(f"{root}/missing")
    os.symlink("/etc", f"{root}/etc-link")
    with pytest.raises(errors.PathOutsideSandbox):
        files.read_bytes(f"{root}/etc-link/passwd")
    with pytest.raises(errors.PathOutsideSandbox):
        files.write(f"{root}/etc-link/evil", b"x")
    with pytest.raises(errors.PathOutsideSandbox):
        files.read_bytes("/tmp/outside-the-root-of-this-test")  # allowed by the client, refused by the tool
    with pytest.raises(errors.FileError) as info:
        files.read_bytes(root + "/")
    assert info.value.reason in ("IsADirectoryError", "PathOutsideSandbox")
    with pytest.raises(errors.FileError):
        files.write(f"{root}/no-parent/x", b"x", parents=False)


def test_directory_round_trip(files: Files, root: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "top.txt").write_text("top\n")
    (src / "pkg" / "deep" / "blob.bin").write_bytes(os.urandom(300_000))
    (src / "pkg" / "link").symlink_to("../top.txt")
    files.upload(src, f"{root}/project")
    assert Path(root, "project", "pkg", "deep", "blob.bin").read_bytes() == \
        (src / "pkg" / "deep" / "blob.bin").read_bytes()
    back = tmp_path / "back"
    files.download(f"{root}/project", back)
    assert (back / "top.txt").read_text() == "top\n"
    assert (back / "pkg" / "deep" / "blob.bin").read_bytes() == (src / "pkg" / "deep" / "blob.bin").read_bytes()
    assert os.readlink(back / "pkg" / "link") == "../top.txt"
    single = tmp_path / "single.bin"
    files.download(f"{root}/project/top.txt", single)
    assert single.read_text() == "top\n"


def test_upload_with_escaping_symlink_is_refused(files: Files, root: str, tmp_path: Path) -> None:
    src = tmp_path / "evil"
    src.mkdir()
    (src / "link").symlink_to("/etc")
    with pytest.raises(errors.PathOutsideSandbox):
        files.upload(src, f"{root}/evil")


def test_timeout_in_the_wrapper_is_reported(root: str) -> None:
    runner = LocalRunner(root)
    argv = local_argv(wrapper_argv(["sleep", "30"], command_id="t1", timeout=1))
    out = subprocess.run(argv, capture_output=True, env=runner.env, check=False, timeout=30)
    assert out.returncode == 124 and is_wrapper_timeout(out.returncode, out.stderr)


def test_a_symlinked_file_downloads_under_the_name_asked_for(files: Files, root: str, tmp_path: Path) -> None:
    Path(root, ".bashrc").write_text("rc\n")
    Path(root, "report.txt").symlink_to(".bashrc")
    assert files.stat(f"{root}/report.txt").name == ".bashrc"  # what the tool says...
    written = files.download(f"{root}/report.txt", tmp_path)  # ...does not name the local file
    assert written == tmp_path / "report.txt" and written.read_text() == "rc\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.txt"]


def test_a_tree_with_a_fifo_downloads_without_it(files: Files, root: str, tmp_path: Path) -> None:
    Path(root, "tree", "sub").mkdir(parents=True)
    Path(root, "tree", "a").write_text("a")
    Path(root, "tree", "sub", "b").write_text("b")
    os.mkfifo(Path(root, "tree", "pipe"))
    dest = files.download(f"{root}/tree", tmp_path / "tree")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == ["a", "sub", "sub/b"]

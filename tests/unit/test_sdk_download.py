"""Directory downloads: a hostile sandbox's tar is checked member by member before anything is written, and
extracted without following any symlink."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.files import Files
from tests.unit.test_sdk_files import FakeRunner


def member(name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE, link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    if data is not None:
        info.size = len(data)
    return info, data


def directory(name: str, mode: int = 0o755) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, kind=tarfile.DIRTYPE, mode=mode)


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, kind=tarfile.SYMTYPE, link=target)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return member(name, kind=tarfile.LNKTYPE, link=target)


def make_tar(members: Sequence[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


SOURCE_DIR = {"name": "src", "path": "/workspace/src", "type": "dir", "size": 0, "mode": 0o755, "mtime": 0.0}


class TarOut(FakeRunner):
    """A sandbox whose /workspace/src is a directory that packs to ``tar``."""

    def __init__(self, tar: bytes) -> None:
        super().__init__()
        self.tar = tar

    def answer(self, args: Sequence[str]) -> tuple[int, bytes, bytes]:
        if list(args) == ["stat", "/workspace/src"]:
            return 0, json.dumps(SOURCE_DIR).encode(), b""
        assert list(args) == ["tar-out", "/workspace/src", "--arcname", "."]
        return 0, self.tar, b""


def download(tar: bytes, dest: Path, **caps: int) -> Path:
    return Files(TarOut(tar), **caps).download("/workspace/src", dest)


@pytest.mark.parametrize("prefix", ["", "./"])
def test_contents_are_extracted(tmp_path: Path, prefix: str) -> None:
    tar = make_tar([directory(prefix or "."), member(prefix + "a.txt", b"A", mode=0o4755),
                    directory(prefix + "sub", mode=0o1777), member(prefix + "sub/b.bin", b"\0\1", mode=0o600),
                    symlink(prefix + "sub/link", "../a.txt"), symlink(prefix + "here", "sub/b.bin"),
                    hardlink(prefix + "sub/hard", prefix + "a.txt"), member(prefix + "deep/er/c", b"c")])
    dest = download(tar, tmp_path / "out")
    assert (dest / "a.txt").read_bytes() == b"A"
    assert stat.S_IMODE((dest / "a.txt").stat().st_mode) == 0o755  # never setuid
    assert stat.S_IMODE((dest / "sub").stat().st_mode) == 0o755  # never sticky or world-writable
    assert stat.S_IMODE((dest / "sub" / "b.bin").stat().st_mode) == 0o600
    assert (dest / "sub" / "b.bin").read_bytes() == b"\0\1"
    assert os.readlink(dest / "sub" / "link") == "../a.txt" and (dest / "sub" / "link").read_bytes() == b"A"
    assert (dest / "here").read_bytes() == b"\0\1"
    assert (dest / "sub" / "hard").stat().st_ino == (dest / "a.txt").stat().st_ino
    assert (dest / "deep" / "er" / "c").read_bytes() == b"c"


def test_existing_files_and_symlinks_are_replaced_not_followed(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    (dest / "a.txt").write_text("old")
    (dest / "link").symlink_to(outside)
    download(make_tar([member("./a.txt", b"new"), member("./link", b"file now")]), dest)
    assert (dest / "a.txt").read_text() == "new"
    assert not (dest / "link").is_symlink() and (dest / "link").read_text() == "file now"
    assert outside.read_text() == "untouched"
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "link"]  # no temporary file left


def test_an_existing_symlink_in_the_way_of_a_directory_is_refused_before_writing(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere)
    with pytest.raises(errors.FileError) as info:
        download(make_tar([member("./a.txt", b"a"), member("./sub/x", b"x")]), dest)
    assert info.value.reason == "LocalPathInTheWay"
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in dest.iterdir()) == ["sub"]


UNSAFE = [
    pytest.param([member("/etc/evil", b"x")], id="absolute name"),
    pytest.param([member("../escape.txt", b"x")], id="dot-dot"),
    pytest.param([member("./sub/../../escape.txt", b"x")], id="dot-dot inside"),
    pytest.param([member("", b"x")], id="empty name"),
    pytest.param([member("a//b", b"x")], id="empty component"),
    pytest.param([member("bad\x1b[2Jname", b"x")], id="control character"),
    pytest.param([member("new\nline", b"x")], id="newline"),
    pytest.param([member("c1\x9bname", b"x")], id="C1 control"),
    pytest.param([member("n" * 256, b"x")], id="component too long"),
    pytest.param([symlink("link", "/etc/passwd")], id="absolute symlink"),
    pytest.param([symlink("link", "../../outside")], id="symlink out"),
    pytest.param([directory("sub"), symlink("sub/link", "../..")], id="symlink out from a subdirectory"),
    pytest.param([symlink("s", "."), symlink("t", "s/s/s/..")], id="symlink with dot-dot after a name"),
    pytest.param([symlink("link", "")], id="empty symlink target"),
    pytest.param([symlink("link", "a\x1bb")], id="control character in a symlink target"),
    pytest.param([symlink("link", "sub"), member("link/evil", b"x")], id="symlink then a file through it"),
    pytest.param([member("f", b"x"), member("f/evil", b"x")], id="a file under a file"),
    pytest.param([member("d/x", b"x"), symlink("d", ".")], id="a symlink over an implicit directory"),
    pytest.param([hardlink("hard", "/etc/passwd")], id="absolute hard link"),
    pytest.param([hardlink("hard", "../outside")], id="hard link out"),
    pytest.param([hardlink("hard", "later"), member("later", b"x")], id="hard link to a later member"),
    pytest.param([directory("d"), hardlink("hard", "d")], id="hard link to a directory"),
    pytest.param([symlink("s", "x"), hardlink("hard", "s")], id="hard link to a symlink"),
    pytest.param([member("fifo", kind=tarfile.FIFOTYPE)], id="FIFO"),
    pytest.param([member("tty", kind=tarfile.CHRTYPE)], id="character device"),
    pytest.param([member("disk", kind=tarfile.BLKTYPE)], id="block device"),
    pytest.param([member("cont", b"x", kind=tarfile.CONTTYPE)], id="contiguous file"),
    pytest.param([member("a", b"x"), member("a", b"y")], id="duplicate"),
    pytest.param([member(".", b"x")], id="a file as the root"),
]


@pytest.mark.parametrize("members", UNSAFE)
def test_unsafe_members_are_refused_before_anything_is_written(
        tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    safe_first = [directory("."), member("./innocent.txt", b"fine"), directory("./dir")]
    dest = tmp_path / "out"
    with pytest.raises(errors.PathOutsideSandbox) as info:
        download(make_tar([*safe_first, *members]), dest)
    assert info.value.reason == "UnsafeArchiveEntry"
    assert info.value.message.startswith("refusing archive member")
    assert "\x1b" not in info.value.message and "\n" not in info.value.message
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_gnu_sparse_member_is_refused(tmp_path: Path) -> None:
    info, _ = member("sparse", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)
    with pytest.raises(errors.PathOutsideSandbox):
        download(buf.getvalue(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_too_many_members(tmp_path: Path) -> None:
    tar = make_tar([member(f"f{i}", b"x") for i in range(11)])
    with pytest.raises(errors.PathOutsideSandbox, match="more than 10 members"):
        download(tar, tmp_path / "out", max_archive_members=10)
    assert not (tmp_path / "out").exists()
    download(tar, tmp_path / "ok", max_archive_members=11)


def test_the_transfer_cap_is_hit_while_streaming(tmp_path: Path) -> None:
    tar = make_tar([member("big", os.urandom(50_000))])
    runner = TarOut(tar)
    with pytest.raises(errors.FileTooLarge):
        Files(runner, max_transfer_bytes=20_000).download("/workspace/src", tmp_path / "out")
    assert runner.caps[-1] == 20_000
    assert not (tmp_path / "out").exists()


def test_a_compressed_archive_is_refused(tmp_path: Path) -> None:
    tar = gzip.compress(make_tar([member("a", b"x")]))
    with pytest.raises(errors.FileError) as info:
        download(tar, tmp_path / "out")
    assert info.value.reason == "BadToolOutput" and "compressed" in info.value.message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data", [b"", b"not a tar at all" * 100, make_tar([member("a", b"x" * 600)])[:700]])
def test_a_broken_archive_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(errors.FileError) as info:
        download(data, tmp_path / "out")
    assert info.value.reason == "BadToolOutput"
    assert not (tmp_path / "out").exists()


def test_a_huge_metadata_header_is_refused_before_tarfile_reads_it(tmp_path: Path) -> None:
    info, data = member("a", b"x")
    info.pax_headers = {"comment": "c" * (2 * 1024 * 1024)}
    with pytest.raises(errors.PathOutsideSandbox, match="metadata header"):
        download(make_tar([(info, data)]), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_long_names_in_pax_headers_are_fine(tmp_path: Path) -> None:
    name = "d" * 200 + "/" + "é" * 100
    dest = download(make_tar([member(name, b"long")]), tmp_path / "out")
    assert (dest / ("d" * 200) / ("é" * 100)).read_bytes() == b"long"

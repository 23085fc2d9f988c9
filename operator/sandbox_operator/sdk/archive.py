"""Extracting a tar archive that a sandbox produced, on the client, without trusting a byte of it.

Every member is checked before anything is written (:func:`plan_extraction`), whatever the Python version's
``tarfile`` filters do: only regular files, directories, symlinks and hard links, with plain relative names,
symlinks that stay inside the destination and hard links to earlier regular files. Extraction
(:func:`extract`) then uses its own code, not ``extractall``: directories are walked one component at a time
with ``O_NOFOLLOW`` relative to their parent's descriptor, so no symlink (already there, or from the archive)
is followed on the way; files are created with ``O_EXCL|O_NOFOLLOW``; symlinks are created last.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

from sandbox_operator.sdk import errors
from sandbox_operator.sdk.text import escape_control

MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
BLOCK = 512
# A PAX or GNU long-name header holds a few names and numbers; tarfile reads one whole into memory.
MAX_METADATA_BYTES = 1024 * 1024
_METADATA_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
COPY_CHUNK = 1024 * 1024
# Magic numbers of gzip, bzip2, xz and zstd: the tool is asked for a plain tar, so any of these is a lie.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd")
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]
Kind = Literal["dir", "file", "symlink", "hardlink"]


@dataclass(frozen=True)
class Entry:
    """One checked member: where it goes (path components under the destination) and what it is."""

    parts: Parts
    kind: Kind
    mode: int
    member: tarfile.TarInfo
    symlink_target: str = ""
    hardlink_target: Parts = ()


class UnsafeMember(Exception):  # noqa: N818 - internal, turned into PathOutsideSandbox
    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"refusing archive member {escape_control(name, limit=200)!r}: {problem}")


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def _name_parts(name: str, what: str = "name") -> Parts:
    """The path components of a member name; ``()`` for the archive's root (``.``)."""
    if not name:
        raise UnsafeMember(name, f"empty {what}")
    if _has_control(name):
        raise UnsafeMember(name, f"control character in the {what}")
    if name.startswith("/"):
        raise UnsafeMember(name, f"absolute {what}")
    if len(os.fsencode(name)) > MAX_PATH_BYTES:
        raise UnsafeMember(name, f"{what} longer than {MAX_PATH_BYTES} bytes")
    rest = name
    while rest.startswith("./"):
        rest = rest[2:]
    if rest in ("", "."):
        return ()
    parts = tuple(rest.split("/"))
    for part in parts:
        if part == "..":
            raise UnsafeMember(name, f"'..' in the {what}")
        if part in ("", "."):
            raise UnsafeMember(name, f"empty or '.' component in the {what}")
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise UnsafeMember(name, f"a component of the {what} is longer than {MAX_NAME_BYTES} bytes")
    return parts


def _check_symlink(parts: Parts, target: str, name: str) -> None:
    """A relative target that climbs (``..``) only at its start, never above the destination, and only
    descends afterwards: the climb passes through directories this extraction made (never symlinks), and a
    descent can only reach what the destination holds, so the link cannot lead outside."""
    if not target:
        raise UnsafeMember(name, "empty symlink target")
    if _has_control(target):
        raise UnsafeMember(name, "control character in the symlink target")
    if target.startswith("/"):
        raise UnsafeMember(name, f"symlink to the absolute path {escape_control(target, limit=100)!r}")
    steps = [s for s in target.split("/") if s not in ("", ".")]
    climb = 0
    while climb < len(steps) and steps[climb] == "..":
        climb += 1
    if ".." in steps[climb:]:
        raise UnsafeMember(name, "symlink target with '..' after a name")
    if climb > len(parts) - 1:
        raise UnsafeMember(name, f"symlink to {escape_control(target, limit=100)!r} leads outside the destination")


def plan_extraction(tar: tarfile.TarFile, *, max_members: int, max_bytes: int, archive_size: int) -> list[Entry]:
    """Reads and checks every member; raises :class:`UnsafeMember` at the first one that is refused.

    ``archive_size`` is the archive's length: a truncated archive is a :class:`tarfile.ReadError` here rather
    than a file found short while writing."""
    entries: list[Entry] = []
    kinds: dict[Parts, Kind] = {}
    parents: set[Parts] = set()
    total = 0
    for count, member in enumerate(tar, start=1):
        name = member.name
        if count > max_members:
            raise UnsafeMember(name, f"the archive has more than {max_members} members")
        parts = _name_parts(name)
        if not parts:
            if member.isdir():
                continue  # the downloaded directory itself
            raise UnsafeMember(name, "the archive's root is not a directory")
        if parts in kinds:
            raise UnsafeMember(name, "appears twice in the archive")
        for depth in range(1, len(parts)):
            above = kinds.get(parts[:depth])
            if above is not None and above != "dir":
                raise UnsafeMember(name, f"lies under a {above}, not a directory")
        mode = member.mode & 0o755
        entry: Entry
        if member.type == tarfile.DIRTYPE:
            entry = Entry(parts, "dir", mode, member)
        elif member.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and member.sparse is None:
            total += member.size
            if member.offset_data + member.size > archive_size:
                raise tarfile.ReadError("unexpected end of data: the archive is truncated")
            if total > max_bytes:
                raise UnsafeMember(name, f"the archive's files hold more than {max_bytes} bytes")
            entry = Entry(parts, "file", mode, member)
        elif member.type == tarfile.SYMTYPE:
            _check_symlink(parts, member.linkname, name)
            entry = Entry(parts, "symlink", 0, member, symlink_target=member.linkname)
        elif member.type == tarfile.LNKTYPE:
            target = _name_parts(member.linkname, "hard link target")
            if kinds.get(target) != "file":
                raise UnsafeMember(name, "hard link to something that is not an earlier regular file")
            entry = Entry(parts, "hardlink", 0, member, hardlink_target=target)
        else:
            raise UnsafeMember(name, f"{_type_name(member)} (only files, directories and links are accepted)")
        if entry.kind != "dir" and parts in parents:
            raise UnsafeMember(name, f"is a {entry.kind} and also holds other members")
        kinds[parts] = entry.kind
        parents.update(parts[:depth] for depth in range(1, len(parts)))
        entries.append(entry)
    return entries


def _type_name(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    if member.sparse is not None or member.type == tarfile.GNUTYPE_SPARSE:
        return "a sparse file"
    return f"an entry of tar type {escape_control(member.type, limit=10)!r}"


def looks_compressed(head: bytes) -> bool:
    return head.startswith(COMPRESSED_MAGIC)


def _header_size(field: bytes) -> int | None:
    if field[:1] and field[0] & 0x80:  # GNU base-256
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        return None


def scan_headers(fileobj: IO[bytes]) -> None:
    """Walks the raw headers before ``tarfile`` parses them, because it would read a metadata header of any
    size into memory, and a GNU sparse map of any length: refuses metadata headers past
    :data:`MAX_METADATA_BYTES` and GNU sparse members. Leaves ``fileobj`` at its start."""
    offset = 0
    try:
        while True:
            fileobj.seek(offset)
            header = fileobj.read(BLOCK)
            if len(header) < BLOCK or header == bytes(BLOCK):
                return  # the end (or a short archive, which tarfile reports)
            size = _header_size(header[124:136])
            if size is None:
                return  # not a header tarfile accepts either
            kind = header[156:157]
            name = header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if kind == tarfile.GNUTYPE_SPARSE:
                raise UnsafeMember(name, "a sparse file")
            if kind in _METADATA_TYPES and size > MAX_METADATA_BYTES:
                raise UnsafeMember(name, f"a metadata header of {size} bytes")
            offset += BLOCK + -(-size // BLOCK) * BLOCK
    finally:
        fileobj.seek(0)


# Extraction ------------------------------------------------------------------------------------------------

def check_destination(dest: Path, entries: list[Entry]) -> None:
    """Refuses, before anything is written, when what ``dest`` already holds is in the way: a non-directory
    where the archive has a directory (or a parent of one), or a directory where it has anything else."""
    if not dest.exists():
        return
    for entry in entries:
        for depth in range(1, len(entry.parts) + 1):
            path = dest.joinpath(*entry.parts[:depth])
            try:
                found = path.lstat()
            except FileNotFoundError:
                break
            wants_dir = depth < len(entry.parts) or entry.kind == "dir"
            if wants_dir != stat.S_ISDIR(found.st_mode):
                what = "a directory" if stat.S_ISDIR(found.st_mode) else "not a directory"
                raise errors.FileError(f"{path} is {what}, in the way of the downloaded {entry.kind} "
                                       f"{escape_control('/'.join(entry.parts), limit=200)!r}",
                                       path=str(path), reason="LocalPathInTheWay")


@contextlib.contextmanager
def _directory(root_fd: int, parts: Parts, *, create_mode: int | None = None) -> Iterator[int]:
    """A descriptor of ``root/parts...``, opened one component at a time without following any symlink;
    missing directories are created (owner rwx added so the extraction can fill them)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                child = os.open(part, _DIR_OPEN, dir_fd=fd)
            except FileNotFoundError:
                mode = 0o755 if create_mode is None else create_mode | 0o700
                os.mkdir(part, 0o700, dir_fd=fd)
                child = os.open(part, _DIR_OPEN, dir_fd=fd)
                os.fchmod(child, mode)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def _temp_name(name: str) -> str:
    return f".{name[:100]}.{uuid.uuid4().hex[:12]}.part"


def _replace_with(parent_fd: int, name: str, make: Callable[[str], None]) -> None:
    """Creates ``name`` by ``make(temp_name)`` then renames it over whatever non-directory is there."""
    existing = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISDIR(existing.st_mode):
        raise IsADirectoryError(f"{name} exists and is a directory")
    temp = _temp_name(name)
    make(temp)
    try:
        os.replace(temp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=parent_fd)
        raise


def _write_file(parent_fd: int, name: str, source: IO[bytes], mode: int) -> None:
    def make(target: str) -> None:
        fd = os.open(target, _NEW_FILE, 0o600, dir_fd=parent_fd)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, COPY_CHUNK)
            os.fchmod(out.fileno(), mode)

    try:
        make(name)
    except FileExistsError:
        _replace_with(parent_fd, name, make)


def extract(tar: tarfile.TarFile, entries: list[Entry], dest: Path) -> None:
    """Writes checked entries under ``dest`` (created): directories, files, hard links, then symlinks."""
    dest.mkdir(parents=True, exist_ok=True)
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for entry in entries:
            if entry.kind == "dir":
                with _directory(root_fd, entry.parts, create_mode=entry.mode):
                    pass
        for entry in entries:
            if entry.kind == "file":
                source = tar.extractfile(entry.member)
                assert source is not None
                with _directory(root_fd, entry.parts[:-1]) as parent, source:
                    _write_file(parent, entry.parts[-1], source, entry.mode)
        for entry in entries:
            if entry.kind == "hardlink":
                with _directory(root_fd, entry.hardlink_target[:-1]) as src_dir, \
                        _directory(root_fd, entry.parts[:-1]) as dst_dir:
                    def link(target: str, src_dir: int = src_dir, dst_dir: int = dst_dir,
                             entry: Entry = entry) -> None:
                        os.link(entry.hardlink_target[-1], target, src_dir_fd=src_dir, dst_dir_fd=dst_dir,
                                follow_symlinks=False)
                    try:
                        link(entry.parts[-1])
                    except FileExistsError:
                        _replace_with(dst_dir, entry.parts[-1], link)
        for entry in entries:
            if entry.kind == "symlink":
                with _directory(root_fd, entry.parts[:-1]) as parent:
                    def symlink(target: str, parent: int = parent, entry: Entry = entry) -> None:
                        os.symlink(entry.symlink_target, target, dir_fd=parent)
                    try:
                        symlink(entry.parts[-1])
                    except FileExistsError:
                        _replace_with(parent, entry.parts[-1], symlink)
    finally:
        os.close(root_fd)

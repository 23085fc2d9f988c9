"""File operations of the sandbox image's tools (sandbox-files, sandbox-agent): stdlib only.

Every path is resolved (symlinks followed; for removal only the parent) and must lie under /workspace or /tmp
($SANDBOX_WRITABLE_ROOTS, colon-separated, overrides). An entry is {"name", "path", "type": "file"|"dir"|
"symlink"|"other", "size", "mode", "mtime"}: mode is the permission bits as an int, mtime float seconds since the
epoch, path absolute and resolved. Errors are exceptions; `error_report` turns one into the JSON object both tools
send: {"error": CLASS, "message": ..., "path": ...} plus "errno": "ENOENT" etc. for OS errors.
"""

# A low-level module on string paths and file descriptors (os.path on purpose; pathlib only adds import time):
# ruff: noqa: PTH100, PTH101, PTH102, PTH103, PTH105, PTH106, PTH108, PTH110, PTH112, PTH113, PTH114, PTH116
# ruff: noqa: PTH118, PTH119, PTH120, PTH208, PTH211

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, Any, cast

from sandbox_tools import parse_bytes

ENV_WRITABLE_ROOTS = "SANDBOX_WRITABLE_ROOTS"
ENV_FILE_SIZE_LIMIT = "SANDBOX_FILE_SIZE_LIMIT"
DEFAULT_ROOTS = ("/workspace", "/tmp")
CHUNK = 1 << 20

EXIT_ERROR = 1
EXIT_OUTSIDE = 2
EXIT_USAGE = 64


class SandboxFilesError(Exception):
    exit_code = EXIT_ERROR

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class PathOutsideSandbox(SandboxFilesError):  # noqa: N818 - the name is part of the JSON contract
    exit_code = EXIT_OUTSIDE


class UnsafeTarMember(SandboxFilesError):  # noqa: N818 - the name is part of the JSON contract
    exit_code = EXIT_OUTSIDE


class UsageError(SandboxFilesError):
    exit_code = EXIT_USAGE


class IncompleteInput(SandboxFilesError):  # noqa: N818 - the name is part of the JSON contract
    pass


def error_report(exc: BaseException, path: str | None = None) -> tuple[dict[str, Any], int]:
    """The JSON object that reports `exc`, and the exit status sandbox-files gives it."""
    report: dict[str, Any] = {"error": type(exc).__name__}
    code = EXIT_ERROR
    if isinstance(exc, SandboxFilesError):
        report["message"] = str(exc)
        report["path"] = exc.path if exc.path is not None else path
        code = exc.exit_code
    elif isinstance(exc, OSError):
        report["message"] = exc.strerror or str(exc)
        report["path"] = exc.filename if exc.filename is not None else path
        if exc.errno is not None:
            report["errno"] = errno.errorcode.get(exc.errno, str(exc.errno))
    else:
        report["message"] = str(exc)
        report["path"] = path
    return report, code


# --- paths ----------------------------------------------------------------------------------------------------

def writable_roots() -> list[str]:
    configured = os.environ.get(ENV_WRITABLE_ROOTS)
    roots = [r for r in configured.split(":") if r] if configured is not None else list(DEFAULT_ROOTS)
    return [os.path.realpath(r) for r in roots]


def is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_inside(resolved: str, original: str) -> str:
    if not any(is_within(resolved, root) for root in writable_roots()):
        raise PathOutsideSandbox(
            f"{original!r} resolves to {resolved!r}, outside the writable roots "
            f"{':'.join(writable_roots())}", original)
    return resolved


def resolve(path: str) -> str:
    """The absolute path with every symlink followed; must lie under a writable root."""
    if not path:
        raise UsageError("empty path", path)
    return check_inside(os.path.realpath(path), path)


def resolve_parent(path: str) -> str:
    """The parent resolved, the last component kept (so a symlink itself can be removed)."""
    if not path:
        raise UsageError("empty path", path)
    head, tail = os.path.split(os.path.abspath(path))
    if tail in ("", ".", ".."):
        raise UsageError(f"{path!r} does not name a directory entry", path)
    resolved = os.path.join(os.path.realpath(head), tail)
    check_inside(resolved, path)
    if resolved in writable_roots():
        raise PathOutsideSandbox(f"{path!r} is a writable root itself", path)
    return resolved


# --- entries --------------------------------------------------------------------------------------------------

def entry_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "other"


def entry(path: str, st: os.stat_result) -> dict[str, Any]:
    return {
        "name": os.path.basename(path) or path,
        "path": path,
        "type": entry_type(st.st_mode),
        "size": st.st_size,
        "mode": stat.S_IMODE(st.st_mode),
        "mtime": st.st_mtime,
    }


def list_entries(path: str) -> list[dict[str, Any]]:
    """The entries of a directory sorted by name (links not followed); a file lists itself."""
    resolved = resolve(path)
    st = os.stat(resolved)
    if not stat.S_ISDIR(st.st_mode):
        return [entry(resolved, st)]
    entries = []
    with os.scandir(resolved) as it:
        for item in it:
            try:
                entries.append(entry(item.path, item.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue  # removed while listing
    entries.sort(key=lambda e: e["name"])
    return entries


def stat_entry(path: str) -> dict[str, Any]:
    resolved = resolve(path)
    return entry(resolved, os.stat(resolved))


def exists(path: str) -> bool:
    return os.path.exists(resolve(path))


# --- reading --------------------------------------------------------------------------------------------------

def open_regular(path: str, shown: str) -> IO[bytes] | None:
    """The regular file at `path` opened for reading, or None when it is something else (a FIFO would block the
    open, a device read forever). Never follows a symlink at the last component."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink put in the file's place meanwhile
            return None
        raise
    src = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        src.close()
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), shown)
    if not stat.S_ISREG(mode):
        src.close()
        return None
    os.set_blocking(fd, True)
    return src


def open_for_read(path: str) -> IO[bytes]:
    """The regular file `path` names (symlinks followed, inside the roots), opened for reading."""
    src = open_regular(resolve(path), path)
    if src is None:
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)", path)
    return src


# --- writing --------------------------------------------------------------------------------------------------

class AtomicWriter:
    """A file written to a temporary name next to `dest` and renamed over it by `commit()`; `abort()` (or any
    failure) removes the temporary file."""

    def __init__(self, dest: str, mode: int) -> None:
        parent, name = os.path.split(dest)
        fd, self.temp = tempfile.mkstemp(prefix=f".{name[:64]}.", suffix=".sandbox-files.tmp", dir=parent)
        self.dest = dest
        self.mode = mode
        self.out = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        try:
            self.out.write(data)
        except BaseException:
            self.abort()
            raise

    def commit(self) -> None:
        try:
            with self.out:
                os.fchmod(self.out.fileno(), self.mode)
            os.replace(self.temp, self.dest)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.out.close()
        with contextlib.suppress(OSError):
            os.unlink(self.temp)

    def write_all(self, chunks: Iterable[bytes]) -> None:
        """Writes every chunk, then commits."""
        try:
            for chunk in chunks:
                self.out.write(chunk)
        except BaseException:
            self.abort()
            raise
        self.commit()


def write_atomically(dest: str, chunks: Iterable[bytes], mode: int) -> None:
    AtomicWriter(dest, mode).write_all(chunks)


def start_write(path: str, mode: int | None, parents: bool) -> AtomicWriter:
    """An AtomicWriter for `path` (inside the roots). `mode` None keeps an existing file's mode (else 0644);
    `parents` creates missing parent directories."""
    resolved = resolve(path)
    parent = os.path.dirname(resolved)
    if parents:
        os.makedirs(parent, exist_ok=True)
    elif not os.path.isdir(parent):
        raise FileNotFoundError(errno.ENOENT, "parent directory does not exist (use --parents)", path)
    if os.path.isdir(resolved):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if mode is None:
        try:
            mode = stat.S_IMODE(os.stat(resolved).st_mode)
        except FileNotFoundError:
            mode = 0o644
    return AtomicWriter(resolved, mode)


def remove(path: str, recursive: bool) -> None:
    target = resolve_parent(path)
    st = os.lstat(target)
    if stat.S_ISDIR(st.st_mode):
        if recursive:
            shutil.rmtree(target)
        else:
            os.rmdir(target)
    else:
        os.unlink(target)


def make_dir(path: str, parents: bool, mode: int) -> None:
    resolved = resolve(path)
    if parents:
        os.makedirs(resolved, mode=mode, exist_ok=True)
    else:
        os.mkdir(resolved, mode)


def parse_octal(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise UsageError(f"invalid mode {text!r}: expected octal such as 0644") from None
    return checked_mode(value, text)


def checked_mode(value: int, shown: object) -> int:
    if not 0 <= value <= 0o7777:
        raise UsageError(f"invalid mode {shown!r}")
    return value & 0o777  # never setuid/setgid/sticky


# --- input ----------------------------------------------------------------------------------------------------

class StdinReader:
    """Reads fd 0 without waiting for more than is available; with `size`, stops after exactly `size` bytes."""

    def __init__(self, size: int | None) -> None:
        self.remaining = size

    def read(self, n: int = CHUNK) -> bytes:
        if n < 0:
            n = CHUNK
        if self.remaining is not None:
            n = min(n, self.remaining)
            if n == 0:
                return b""
        data = os.read(0, n)
        if self.remaining is not None:
            if not data:
                raise IncompleteInput(f"stdin ended {self.remaining} bytes before the announced size")
            self.remaining -= len(data)
        return data

    def chunks(self) -> Iterator[bytes]:
        return read_chunks(self)


def read_chunks(src: StdinReader | IO[bytes]) -> Iterator[bytes]:
    while True:
        data = src.read(CHUNK)
        if not data:
            return
        yield data


def limit_file_size() -> None:
    """Writes obey the same file-size limit as commands (sandbox-exec); no core dumps."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        limit = parse_bytes(os.environ.get(ENV_FILE_SIZE_LIMIT, ""), ENV_FILE_SIZE_LIMIT)
    except ValueError:
        return  # unset or not a size: the limit this tool was started with stays
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if hard == resource.RLIM_INFINITY or limit <= hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))


# --- trees ----------------------------------------------------------------------------------------------------

def add_to_tar(tar: tarfile.TarFile, path: str, arcname: str) -> list[str]:
    """Adds one entry (a file, directory or symlink; anything else is skipped, as is an entry that vanished
    meanwhile); returns the names in it when it is a directory."""
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            src = open_regular(path, path)
            if src is not None:
                with src:
                    info = tar.gettarinfo(path, arcname, fileobj=src)
                    tar.addfile(info, src if info.isreg() else None)
        elif stat.S_ISLNK(st.st_mode):
            tar.addfile(tar.gettarinfo(path, arcname))
        elif stat.S_ISDIR(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                tar.addfile(tar.gettarinfo(path, arcname))
                return sorted(os.listdir(fd))
            finally:
                os.close(fd)
    except FileNotFoundError:
        pass
    return []


def tar_out(path: str, arcname: str | None, out: IO[bytes]) -> None:
    """A plain PAX tar of `path` written to `out`: symlinks stored as symlinks, never followed; FIFOs, sockets and
    devices skipped."""
    resolved = resolve(path)
    os.stat(resolved)  # a clear FileNotFoundError before any output
    name = arcname if arcname is not None else (os.path.basename(resolved) or ".")
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        pending = [(resolved, name)]  # depth first, in name order, like tarfile's own recursive add
        while pending:
            src, arc = pending.pop()
            names = add_to_tar(tar, src, arc)
            pending.extend((os.path.join(src, n), os.path.join(arc, n)) for n in reversed(names))
    out.flush()


def _member_target(root: str, name: str) -> str:
    """The extraction path of an archive member, rejecting absolute names and `..`."""
    if name.startswith("/") or not name.strip("/"):
        raise UnsafeTarMember(f"absolute or empty member name {name!r}", name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeTarMember(f"member name {name!r} contains '..'", name)
    return os.path.join(root, *parts) if parts else root


def _check_under(root: str, path: str, member: str, what: str) -> None:
    if not is_within(path, root):
        raise UnsafeTarMember(f"member {member!r}: {what} {path!r} is outside {root!r}", member)


def tar_in(directory: str, parents: bool, src: StdinReader | IO[bytes]) -> None:
    """Extracts the tar read from `src` into `directory`, refusing members that would land outside it."""
    root = resolve(directory)
    if parents:
        os.makedirs(root, exist_ok=True)
    if not os.path.isdir(root):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), directory)

    dir_modes: list[tuple[str, int, float]] = []
    with tarfile.open(fileobj=cast(IO[bytes], src), mode="r|*") as tar:
        for member in tar:
            dest = _member_target(root, member.name)
            if dest == root:
                continue  # the "./" entry
            parent = os.path.dirname(dest)
            # Existing symlinks on the way (from this archive or from before) must not lead outside.
            if not os.path.isdir(parent):
                _check_under(root, os.path.realpath(parent), member.name, "parent")
                os.makedirs(parent, exist_ok=True)
            _check_under(root, os.path.realpath(parent), member.name, "parent")
            perm = member.mode & 0o777

            if member.isdir():
                if os.path.lexists(dest) and not os.path.isdir(dest):
                    os.unlink(dest)
                _check_under(root, os.path.realpath(dest), member.name, "directory")
                os.makedirs(dest, mode=0o700, exist_ok=True)
                dir_modes.append((dest, perm, member.mtime))
            elif member.isreg():
                data = tar.extractfile(member)
                if data is None:
                    raise UnsafeTarMember(f"member {member.name!r} has no data", member.name)
                if os.path.isdir(dest) and not os.path.islink(dest):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), member.name)
                write_atomically(dest, read_chunks(data), perm)
                os.utime(dest, (member.mtime, member.mtime), follow_symlinks=False)
            elif member.issym():
                link = member.linkname
                pointed = os.path.normpath(link if link.startswith("/") else os.path.join(parent, link))
                _check_under(root, pointed, member.name, "symlink target")
                _check_under(root, os.path.realpath(pointed), member.name, "symlink target")
                if os.path.isdir(dest) and not os.path.islink(dest):
                    raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), member.name)
                if os.path.lexists(dest):
                    os.unlink(dest)
                os.symlink(link, dest)
            elif member.islnk():
                source = _member_target(root, member.linkname)
                _check_under(root, os.path.realpath(source), member.name, "hard link target")
                if not os.path.isfile(source):
                    raise UnsafeTarMember(f"member {member.name!r}: hard link target is not a file", member.name)
                if os.path.lexists(dest):
                    os.unlink(dest)
                os.link(os.path.realpath(source), dest)
            else:
                raise UnsafeTarMember(f"member {member.name!r} is a device, FIFO or other special file",
                                      member.name)
    for path, perm, mtime in reversed(dir_modes):
        os.chmod(path, perm | 0o700)
        os.utime(path, (mtime, mtime))

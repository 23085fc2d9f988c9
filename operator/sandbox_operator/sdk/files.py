"""File operations on a sandbox: over its channel (the agent runs ``sandbox-files``'s code), or through the
in-image file tool run by the exec wrapper where there is no channel.

``sandbox-exec --timeout N -- sandbox-files VERB PATH ...``: the wrapper bounds every operation in time, the
tool resolves paths (symlinks included) and refuses any outside the writable roots; the agent does the same with
the same code. Paths are also checked here before anything is sent (:mod:`sandbox_operator.sdk.paths`), and sizes
are capped on both directions.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import stat as stat_mod
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from sandbox_operator import constants
from sandbox_operator.sdk import archive, errors
from sandbox_operator.sdk.commands import CommandResult
from sandbox_operator.sdk.exec import EXIT_NOT_FOUND, WRAPPER_DIAGNOSTIC_PREFIX
from sandbox_operator.sdk.paths import sandbox_path
from sandbox_operator.sdk.text import escape_control

if TYPE_CHECKING:
    from sandbox_operator.sdk.channel import Channel

T = TypeVar("T")

DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_TRANSFER_BYTES = 1024 * 1024 * 1024
DEFAULT_MAX_ARCHIVE_MEMBERS = 100_000
DEFAULT_FILE_TIMEOUT: float | None = None  # the sandbox's own command limit, applied by the wrapper
SPOOL_IN_MEMORY = 8 * 1024 * 1024
MAX_LISTING_BYTES = 16 * 1024 * 1024  # the JSON of ls or stat; a longer answer is refused, not parsed
MAX_QUIET_OUTPUT_BYTES = 64 * 1024  # verbs that print nothing when they succeed
SHOWN_CHARS = 200  # of the sandbox's own text, in an error message

FileType = Literal["file", "dir", "symlink", "other"]


class FileInfo(BaseModel):
    """One entry as the file tool reports it, checked strictly (the sandbox writes it)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    name: str = Field(min_length=1)
    path: str = Field(min_length=1)
    type: FileType
    size: int = Field(ge=0)
    mode: int = Field(ge=0, le=0o7777)
    mtime: float = Field(allow_inf_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileInfo:
        return cls.model_validate(data)

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def modified(self) -> datetime:
        return datetime.fromtimestamp(self.mtime, UTC)

    @property
    def permissions(self) -> str:
        """``drwxr-xr-x``-style, like ``ls -l``."""
        bits = {"file": stat_mod.S_IFREG, "dir": stat_mod.S_IFDIR, "symlink": stat_mod.S_IFLNK}.get(
            self.type, 0)
        return stat_mod.filemode(bits | (self.mode & 0o7777))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


_LISTING: TypeAdapter[list[FileInfo]] = TypeAdapter(list[FileInfo])


class ToolErrorReport(BaseModel):
    """The file tool's error line: ``{"error": CLASS, "message": ..., "path": ..., ["errno": ...]}``."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    error: str = Field(min_length=1, max_length=100)
    message: str
    # Not used (errors name the path the caller asked for); an OSError raised on an open file reports its
    # descriptor number here.
    path: str | int | None = None
    errno: str | None = None


class _BadOutput(Exception):  # noqa: N818 - internal, turned into FileError
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _BadOutput("a key appears twice in one object")
    return out


def _no_constant(name: str) -> NoReturn:
    raise _BadOutput(f"{name} is not JSON")


def strict_json(data: bytes) -> Any:
    """Exactly one JSON document followed by at most one newline; anything else is :class:`_BadOutput`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadOutput(f"not UTF-8 at byte {exc.start}") from None
    decoder = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    try:
        value, end = decoder.raw_decode(text)
    except ValueError as exc:
        raise _BadOutput(f"not one JSON document: {exc}") from None
    if text[end:] not in ("", "\n"):
        raise _BadOutput(f"{len(text) - end} characters after the JSON document")
    return value


def _validation_problem(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors()[:3])


def _bad_output(verb: str, data: bytes, problem: str, path: str, sandbox: str) -> errors.FileError:
    return errors.FileError(
        f"the file tool's answer to {verb} is not valid ({escape_control(problem, limit=120)}); it began: "
        f"{escape_control(data, limit=80)!r}", path=path, reason="BadToolOutput", name=sandbox)


def _parse_answer(verb: str, validate: Callable[[Any], T], data: bytes, path: str, sandbox: str) -> T:
    try:
        return validate(strict_json(data))
    except _BadOutput as exc:
        raise _bad_output(verb, data, str(exc), path, sandbox) from None
    except ValidationError as exc:
        raise _bad_output(verb, data, _validation_problem(exc), path, sandbox) from None


def parse_entry(data: bytes, *, path: str, sandbox: str) -> FileInfo:
    """The answer of ``stat``: one JSON object, validated strictly."""
    return _parse_answer("stat", FileInfo.model_validate, data, path, sandbox)


def parse_listing(data: bytes, *, path: str, sandbox: str) -> list[FileInfo]:
    """The answer of ``ls``: one JSON array of entries, validated strictly."""
    return _parse_answer("ls", _LISTING.validate_python, data, path, sandbox)


class ToolRunner(Protocol):
    """What :class:`Files` needs from a sandbox: an operation on its channel (None when it has none), else the file
    tool run through the exec wrapper."""

    name: str
    namespace: str

    def _on_channel(self, operation: Callable[[Channel], T], *, hold: bool = False) -> tuple[T] | None: ...

    def _run_tool(self, args: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
                  timeout: float | None = None, max_output: int,
                  sink: IO[bytes] | None = None) -> CommandResult: ...


def parse_tool_error(stderr: bytes) -> ToolErrorReport | None:
    """The tool's error report, only when stderr is exactly one JSON object line, optionally after lines of the
    exec wrapper's own diagnostics; None for anything else."""
    try:
        text = stderr.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.removesuffix("\n").split("\n")
    *wrapper_lines, report_line = lines
    if any(not line.startswith(WRAPPER_DIAGNOSTIC_PREFIX + " ") for line in wrapper_lines):
        return None
    try:
        return ToolErrorReport.model_validate(strict_json(report_line.encode()))
    except (_BadOutput, ValidationError):
        return None


def tool_error(result: CommandResult, *, path: str | None, sandbox: str | None = None) -> errors.SandboxError:
    """The error a failed file-tool run stands for. The sandbox's text in it is escaped and shortened."""
    if result.timed_out:
        return errors.FileError(f"file operation timed out after {result.duration:.0f}s", path=path,
                                reason="CommandTimeout", name=sandbox)
    report = None if result.stderr_truncated else parse_tool_error(result.stderr_bytes)
    if report is None:
        said = escape_control(result.stderr_bytes.strip(), limit=SHOWN_CHARS) or "nothing on stderr"
        if result.exit_code == EXIT_NOT_FOUND:
            return errors.ExecError(f"the sandbox image has no file tool {constants.FILES_TOOL}: {said}",
                                    reason="FileToolMissing", name=sandbox)
        return errors.FileError(f"the file tool failed with exit code {result.exit_code}: {said}", path=path,
                                reason="FileToolFailed", name=sandbox)
    return report_error(report, path=path, sandbox=sandbox)


def report_error(report: ToolErrorReport, *, path: str | None, sandbox: str | None = None) -> errors.SandboxError:
    """The error an in-image tool's error report stands for (its class name picks the SDK error)."""
    kind = report.error
    message = escape_control(report.message, limit=1000)
    if path and path not in report.message:
        message = f"{message}: {escape_control(path, limit=SHOWN_CHARS)}"
    if kind in ("PathOutsideSandbox", "UnsafeTarMember"):
        return errors.PathOutsideSandbox(message, path=path, reason=kind, name=sandbox)
    if kind in ("FileNotFoundError", "NotFound"):
        return errors.SandboxFileNotFound(message, path=path, reason=kind, name=sandbox)
    if kind in ("FileTooLarge", "FileTooLargeError") or report.errno == "EFBIG":
        return errors.FileTooLarge(message, path=path, reason=kind, name=sandbox)
    return errors.FileError(message, path=path, reason=escape_control(kind, limit=100), name=sandbox)


def _new_file_mode() -> int:
    """What a newly created file gets (0o666 less the umask), read without changing the umask."""
    umask = 0o022
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    return 0o666 & ~umask


def download_name(remote: str) -> str:
    """The local name of a downloaded file: the last component of the path the caller asked for (never
    what the sandbox says about it)."""
    name = posixpath.basename(remote)
    if remote in constants.WRITABLE_ROOTS or name in ("", ".", ".."):
        raise errors.FileError(f"{remote!r} has no file name to save it under; give the local file path",
                               path=remote, reason="NoFileName")
    return name


class Files:
    """``sandbox.files``: read_bytes, read_text, write, list, stat, exists, remove, mkdir, upload and download."""

    def __init__(self, runner: ToolRunner, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_transfer_bytes: int = DEFAULT_MAX_TRANSFER_BYTES,
                 timeout: float | None = DEFAULT_FILE_TIMEOUT,
                 max_archive_members: int = DEFAULT_MAX_ARCHIVE_MEMBERS) -> None:
        self._runner = runner
        self.max_file_bytes = max_file_bytes
        self.max_transfer_bytes = max_transfer_bytes
        self.max_archive_members = max_archive_members
        self.timeout = timeout

    def _on_channel(self, operation: Callable[[Channel], T]) -> tuple[T] | None:
        """The operation over the sandbox's channel, activity kept fresh while it runs; None without a channel."""
        return self._runner._on_channel(operation, hold=True)

    def _run(self, args: Sequence[str], *, path: str | None, stdin: bytes | IO[bytes] | None = None,
             max_output: int = MAX_QUIET_OUTPUT_BYTES, sink: IO[bytes] | None = None,
             ok_codes: tuple[int, ...] = (0,)) -> CommandResult:
        result = self._runner._run_tool(args, stdin=stdin, timeout=self.timeout, max_output=max_output, sink=sink)
        if result.exit_code not in ok_codes or result.timed_out:
            raise tool_error(result, path=path, sandbox=self._runner.name)
        return result

    # Single files --------------------------------------------------------------------------------------

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The file's exact bytes; :class:`FileTooLarge` past ``max_bytes`` (default: the file cap)."""
        p = sandbox_path(path)
        cap = self.max_file_bytes if max_bytes is None else max_bytes
        if (read := self._on_channel(lambda ch: ch.read_file(p, max_bytes=cap, timeout=self.timeout))) is not None:
            return read[0]
        return self._run(["read", p], path=p, max_output=cap).stdout_bytes

    def read_text(self, path: str, *, encoding: str = "utf-8", errors: str = "strict",
                  max_bytes: int | None = None) -> str:
        return self.read_bytes(path, max_bytes=max_bytes).decode(encoding, errors)

    def write(self, path: str, data: bytes | str, *, mode: int = 0o644, parents: bool = True) -> str:
        """Writes atomically (the tool writes a temporary file and renames it); returns the sandbox path.

        Text is encoded as UTF-8. Parent directories are created unless ``parents=False``.
        """
        p = sandbox_path(path, allow_root=False)
        payload = data.encode() if isinstance(data, str) else bytes(data)
        if len(payload) > self.max_file_bytes:
            raise errors.FileTooLarge(
                f"{len(payload)} bytes is over the file size cap of {self.max_file_bytes} bytes",
                path=p, reason="FileTooLarge", name=self._runner.name)
        if not 0 <= mode <= 0o7777:
            raise ValueError(f"invalid file mode {mode:o}")
        if self._on_channel(lambda ch: ch.write_file(p, payload, mode=mode, parents=parents,
                                                     timeout=self.timeout)) is not None:
            return p
        args = ["write", p, "--mode", f"{mode:04o}", "--size", str(len(payload))]
        if parents:
            args.append("--parents")
        self._run(args, path=p, stdin=payload)
        return p

    def remove(self, path: str, *, recursive: bool = False) -> None:
        p = sandbox_path(path, allow_root=False)
        if self._on_channel(lambda ch: ch.remove(p, recursive=recursive, timeout=self.timeout)) is None:
            self._run(["rm", p, *(["--recursive"] if recursive else [])], path=p)

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> str:
        p = sandbox_path(path)
        if self._on_channel(lambda ch: ch.mkdir(p, parents=parents, mode=mode)) is None:
            self._run(["mkdir", p, *(["--parents"] if parents else []), "--mode", f"{mode:04o}"], path=p)
        return p

    def exists(self, path: str) -> bool:
        p = sandbox_path(path)
        if (found := self._on_channel(lambda ch: ch.exists(p))) is not None:
            return found[0]
        result = self._run(["exists", p], path=p, ok_codes=(0, 1))
        return result.exit_code == 0

    def stat(self, path: str) -> FileInfo:
        p = sandbox_path(path)
        if (entry := self._on_channel(lambda ch: ch.stat(p))) is not None:
            return entry[0]
        result = self._run(["stat", p], path=p, max_output=MAX_LISTING_BYTES)
        return parse_entry(result.stdout_bytes, path=p, sandbox=self._runner.name)

    def list(self, path: str = constants.WORKSPACE_DIR) -> list[FileInfo]:
        """The entries of a directory (name, type, size, mode, mtime), sorted by name."""
        p = sandbox_path(path)
        if (entries := self._on_channel(lambda ch: ch.list_dir(p))) is not None:
            return entries[0]
        result = self._run(["ls", p], path=p, max_output=MAX_LISTING_BYTES)
        return sorted(parse_listing(result.stdout_bytes, path=p, sandbox=self._runner.name), key=lambda f: f.name)

    # Trees ---------------------------------------------------------------------------------------------

    def upload(self, local: str | os.PathLike[str], remote: str, *, mode: int | None = None) -> str:
        """Copies a local file, or a directory's contents, to ``remote`` (created, parents too)."""
        src = Path(local)
        if src.is_dir():
            return self._upload_dir(src, remote)
        if not src.is_file():
            raise errors.FileError(f"local path {str(src)!r} is not a file or directory",
                                   path=str(src), reason="LocalFileNotFound")
        size = src.stat().st_size
        if size > self.max_file_bytes:
            raise errors.FileTooLarge(f"{src} is {size} bytes, over the file size cap of "
                                      f"{self.max_file_bytes} bytes", path=str(src), reason="FileTooLarge")
        file_mode = mode if mode is not None else stat_mod.S_IMODE(src.stat().st_mode)
        return self.write(remote, src.read_bytes(), mode=file_mode)

    def _upload_dir(self, local: str | os.PathLike[str], remote: str) -> str:
        """Sends a directory's contents as one tar stream, extracted by the tool into ``remote`` (created)."""
        src = Path(local)
        if not src.is_dir():
            raise errors.FileError(f"local path {str(src)!r} is not a directory", path=str(src),
                                   reason="NotADirectoryError")
        p = sandbox_path(remote)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            with tarfile.open(fileobj=spool, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for entry in sorted(src.iterdir()):
                    tar.add(str(entry), arcname=entry.name, recursive=True)
            size = spool.tell()
            if size > self.max_transfer_bytes:
                raise errors.FileTooLarge(
                    f"directory {src} packs to {size} bytes, over the transfer cap of "
                    f"{self.max_transfer_bytes} bytes", path=str(src), reason="FileTooLarge")
            spool.seek(0)
            source = cast(IO[bytes], spool)
            if self._on_channel(lambda ch: ch.tar_in(p, source, parents=True, timeout=self.timeout)) is None:
                self._run(["tar-in", p, "--parents", "--size", str(size)], path=p, stdin=source)
        return p

    def download(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Copies a sandbox file to the local path, or a directory's contents into the local directory.

        When ``local`` is an existing directory, a file lands in it under the last component of ``remote``
        (``download("/workspace/report.txt", "dl/")`` writes ``dl/report.txt``, whatever the sandbox says
        the file is). The file is streamed to a temporary file next to the destination, capped at
        ``max_file_bytes``, and renamed into place only when complete.
        """
        p = sandbox_path(remote)
        info = self.stat(p)
        if info.is_dir:
            return self._download_dir(p, local)
        if not info.is_file:
            raise errors.FileError(f"{p} is not a regular file or a directory", path=p,
                                   reason="NotARegularFile", name=self._runner.name)
        dest = Path(local)
        if dest.is_dir():
            dest = dest / download_name(p)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name[:100]}.", suffix=".part")
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as sink:
                if self._on_channel(lambda ch: ch.read_file(p, max_bytes=self.max_file_bytes, sink=sink,
                                                            timeout=self.timeout)) is None:
                    self._run(["read", p], path=p, max_output=self.max_file_bytes, sink=sink)
                os.fchmod(sink.fileno(), _new_file_mode())
            temp.replace(dest)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        return dest

    def _download_dir(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Fetches a directory as a plain tar stream (spooled to disk, capped at ``max_transfer_bytes``) and
        extracts its contents into ``local``.

        Every member is checked before anything is written, and one unsafe member refuses the whole archive
        (:class:`PathOutsideSandbox`, reason ``UnsafeArchiveEntry``): absolute or empty names, ``..``,
        control characters, symlinks leading outside, hard links to anything but an earlier file, devices,
        FIFOs, more than ``max_archive_members`` members or more than ``max_transfer_bytes`` of files.
        Modes are kept up to ``0o755`` (never setuid, setgid or sticky); owners are not.
        """
        p = sandbox_path(remote)
        dest = Path(local)
        sandbox = self._runner.name
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            sink = cast(IO[bytes], spool)
            if self._on_channel(lambda ch: ch.tar_out(p, sink, max_bytes=self.max_transfer_bytes, arcname=".",
                                                      timeout=self.timeout)) is None:
                self._run(["tar-out", p, "--arcname", "."], path=p, max_output=self.max_transfer_bytes, sink=sink)
            size = spool.tell()
            spool.seek(0)
            head = spool.read(8)
            spool.seek(0)
            if archive.looks_compressed(head):
                raise errors.FileError("the file tool sent a compressed archive; a plain tar was asked for",
                                       path=p, reason="BadToolOutput", name=sandbox)
            try:
                archive.scan_headers(cast(IO[bytes], spool))
                with tarfile.open(fileobj=cast(IO[bytes], spool), mode="r:") as tar:
                    entries = archive.plan_extraction(tar, max_members=self.max_archive_members,
                                                      max_bytes=self.max_transfer_bytes, archive_size=size)
                    archive.check_destination(dest, entries)
                    archive.extract(tar, entries, dest)
            except archive.UnsafeMember as exc:
                raise errors.PathOutsideSandbox(str(exc), path=p, reason="UnsafeArchiveEntry",
                                                name=sandbox) from None
            except (tarfile.TarError, UnicodeError) as exc:
                raise errors.FileError(f"the file tool sent an unreadable archive: "
                                       f"{escape_control(str(exc), limit=SHOWN_CHARS)}", path=p,
                                       reason="BadToolOutput", name=sandbox) from None
            except OSError as exc:
                raise errors.FileError(f"writing the download under {dest} failed: {exc}", path=str(dest),
                                       reason="LocalWriteFailed", name=sandbox) from exc
        return dest

"""File operations on a sandbox, through the in-image file tool run by the exec wrapper.

``sandbox-exec --timeout N -- sandbox-files VERB PATH ...``: the wrapper bounds every operation in time, the
tool resolves paths (symlinks included) and refuses any outside the writable roots. Paths are also checked
here before anything is sent (:mod:`sandbox_operator.sdk.paths`), and sizes are capped on both directions.
"""

from __future__ import annotations

import io
import json
import os
import stat as stat_mod
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal, Protocol, cast

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk.commands import CommandResult
from sandbox_operator.sdk.exec import EXIT_NOT_FOUND, parse_json_line
from sandbox_operator.sdk.paths import sandbox_path

DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
DEFAULT_MAX_TRANSFER_BYTES = 1024 * 1024 * 1024
DEFAULT_FILE_TIMEOUT = 300.0
SPOOL_IN_MEMORY = 8 * 1024 * 1024

FileType = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class FileInfo:
    """One entry as the file tool reports it."""

    name: str
    path: str
    type: FileType
    size: int
    mode: int
    mtime: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileInfo:
        kind = data.get("type", "other")
        return cls(
            name=str(data.get("name", "")), path=str(data.get("path", "")),
            type=kind if kind in ("file", "dir", "symlink", "other") else "other",
            size=int(data.get("size") or 0), mode=int(data.get("mode") or 0),
            mtime=float(data.get("mtime") or 0.0),
        )

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
        return {"name": self.name, "path": self.path, "type": self.type, "size": self.size,
                "mode": self.mode, "mtime": self.mtime}


class ToolRunner(Protocol):
    """What :class:`Files` needs from a sandbox: run the file tool through the exec wrapper."""

    name: str
    namespace: str

    def _run_tool(self, args: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
                  timeout: float | None = None, max_output: int | None = None) -> CommandResult: ...


def tool_error(result: CommandResult, *, path: str | None, sandbox: str | None = None) -> errors.SandboxError:
    """The error a failed file-tool run stands for."""
    report = parse_json_line(result.stderr) or {}
    kind = str(report.get("error") or "")
    message = str(report.get("message") or result.stderr.strip() or f"exit code {result.exit_code}")
    where = str(report.get("path") or path or "") or None
    if result.timed_out:
        return errors.FileError(f"file operation timed out: {message}", path=where, reason="CommandTimeout",
                                name=sandbox)
    if not kind and result.exit_code == EXIT_NOT_FOUND:
        return errors.ExecError(f"the sandbox image has no file tool {constants.FILES_TOOL}: {message}",
                                reason="FileToolMissing", name=sandbox)
    if kind in ("PathOutsideSandbox", "UnsafeTarMember"):
        return errors.PathOutsideSandbox(message, path=where, reason=kind, name=sandbox)
    if kind in ("FileNotFoundError", "NotFound"):
        return errors.SandboxFileNotFound(message, path=where, reason=kind, name=sandbox)
    if kind in ("FileTooLarge", "FileTooLargeError") or report.get("errno") == "EFBIG":
        return errors.FileTooLarge(message, path=where, reason=kind, name=sandbox)
    return errors.FileError(message, path=where, reason=kind or "FileToolFailed", name=sandbox)


class Files:
    """``sandbox.files``: read, write, list, stat, exists, remove, mkdir, upload and download."""

    def __init__(self, runner: ToolRunner, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_transfer_bytes: int = DEFAULT_MAX_TRANSFER_BYTES,
                 timeout: float = DEFAULT_FILE_TIMEOUT) -> None:
        self._runner = runner
        self.max_file_bytes = max_file_bytes
        self.max_transfer_bytes = max_transfer_bytes
        self.timeout = timeout

    def _run(self, args: Sequence[str], *, path: str | None, stdin: bytes | IO[bytes] | None = None,
             max_output: int | None = None, ok_codes: tuple[int, ...] = (0,)) -> CommandResult:
        result = self._runner._run_tool(args, stdin=stdin, timeout=self.timeout, max_output=max_output)
        if result.exit_code not in ok_codes or result.timed_out:
            raise tool_error(result, path=path, sandbox=self._runner.name)
        return result

    # Single files --------------------------------------------------------------------------------------

    def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The file's exact bytes; :class:`FileTooLarge` past ``max_bytes`` (default: the file cap)."""
        p = sandbox_path(path)
        cap = self.max_file_bytes if max_bytes is None else max_bytes
        return self._run(["read", p], path=p, max_output=cap).stdout_bytes

    def read_text(self, path: str, *, encoding: str = "utf-8", errors: str = "strict",
                  max_bytes: int | None = None) -> str:
        return self.read_bytes(path, max_bytes=max_bytes).decode(encoding, errors)

    def read(self, path: str, *, text: bool = False, max_bytes: int | None = None) -> bytes | str:
        """Bytes by default; ``text=True`` decodes UTF-8."""
        return self.read_text(path, max_bytes=max_bytes) if text else self.read_bytes(path, max_bytes=max_bytes)

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
        args = ["write", p, "--mode", f"{mode:04o}", "--size", str(len(payload))]
        if parents:
            args.append("--parents")
        self._run(args, path=p, stdin=payload)
        return p

    def remove(self, path: str, *, recursive: bool = False) -> None:
        p = sandbox_path(path, allow_root=False)
        self._run(["rm", p, *(["--recursive"] if recursive else [])], path=p)

    delete = remove

    def mkdir(self, path: str, *, parents: bool = True, mode: int = 0o755) -> str:
        p = sandbox_path(path)
        self._run(["mkdir", p, *(["--parents"] if parents else []), "--mode", f"{mode:04o}"], path=p)
        return p

    def exists(self, path: str) -> bool:
        p = sandbox_path(path)
        result = self._run(["exists", p], path=p, ok_codes=(0, 1))
        return result.exit_code == 0

    def stat(self, path: str) -> FileInfo:
        p = sandbox_path(path)
        return FileInfo.from_dict(_json_object(self._run(["stat", p], path=p), p, self._runner.name))

    def list(self, path: str = constants.WORKSPACE_DIR) -> list[FileInfo]:
        """The entries of a directory (name, type, size, mode, mtime), sorted by name."""
        p = sandbox_path(path)
        result = self._run(["ls", p], path=p)
        try:
            data = json.loads(result.stdout_bytes or b"[]")
        except ValueError as exc:
            raise errors.FileError(f"the file tool printed no JSON list: {exc}", path=p,
                                   reason="BadToolOutput", name=self._runner.name) from exc
        if isinstance(data, dict):  # a single file
            data = [data]
        return sorted((FileInfo.from_dict(d) for d in data if isinstance(d, dict)), key=lambda f: f.name)

    # Trees ---------------------------------------------------------------------------------------------

    def upload(self, local: str | os.PathLike[str], remote: str, *, mode: int | None = None) -> str:
        """Copies a local file, or a directory's contents, to ``remote`` (created, parents too)."""
        src = Path(local)
        if src.is_dir():
            return self.upload_dir(src, remote)
        if not src.is_file():
            raise errors.FileError(f"local path {str(src)!r} is not a file or directory",
                                   path=str(src), reason="LocalFileNotFound")
        size = src.stat().st_size
        if size > self.max_file_bytes:
            raise errors.FileTooLarge(f"{src} is {size} bytes, over the file size cap of "
                                      f"{self.max_file_bytes} bytes", path=str(src), reason="FileTooLarge")
        file_mode = mode if mode is not None else stat_mod.S_IMODE(src.stat().st_mode)
        return self.write(remote, src.read_bytes(), mode=file_mode)

    def upload_dir(self, local: str | os.PathLike[str], remote: str) -> str:
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
            self._run(["tar-in", p, "--parents", "--size", str(size)], path=p, stdin=cast(IO[bytes], spool))
        return p

    def download(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Copies a sandbox file to the local path, or a directory's contents into the local directory."""
        p = sandbox_path(remote)
        info = self.stat(p)
        if info.is_dir:
            return self.download_dir(p, local)
        dest = Path(local)
        if dest.is_dir():
            dest = dest / info.name
        data = self.read_bytes(p)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        return dest

    def download_dir(self, remote: str, local: str | os.PathLike[str]) -> Path:
        """Fetches a directory as a tar stream and extracts its contents into ``local`` safely: absolute
        names are made relative, and ``..``, links leading outside and device files are refused."""
        p = sandbox_path(remote)
        data = self._run(["tar-out", p, "--arcname", "."], path=p, max_output=self.max_transfer_bytes).stdout_bytes
        dest = Path(local)
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = []
            for member in tar.getmembers():
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                if name in ("", "."):
                    continue
                member.name = name
                members.append(member)
            try:
                tar.extractall(dest, members=members, filter="data")
            except tarfile.FilterError as exc:
                raise errors.PathOutsideSandbox(f"refusing an unsafe entry in the downloaded archive: {exc}",
                                                path=p, reason="UnsafeArchiveEntry") from exc
        return dest


def _json_object(result: CommandResult, path: str, sandbox: str) -> dict[str, Any]:
    try:
        data = json.loads(result.stdout_bytes)
    except ValueError as exc:
        raise errors.FileError(f"the file tool printed no JSON: {exc}", path=path, reason="BadToolOutput",
                               name=sandbox) from exc
    if not isinstance(data, dict):
        raise errors.FileError("the file tool printed no JSON object", path=path, reason="BadToolOutput",
                               name=sandbox)
    return data

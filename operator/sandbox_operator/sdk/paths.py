"""Client-side checks of sandbox paths, done before anything is sent.

A sandbox path is absolute, or relative to the workspace; it must lie under one of the writable roots
(:data:`sandbox_operator.constants.WRITABLE_ROOTS`). ``..`` components are refused outright, even when they
would stay inside a root: a path is accepted only if it says plainly where it goes. Symlinks cannot be judged
here; the in-image file tool resolves them and refuses any that lead outside (reported as
:class:`~sandbox_operator.sdk.errors.PathOutsideSandbox` too).
"""

from __future__ import annotations

import posixpath

from sandbox_operator import constants
from sandbox_operator.sdk.errors import PathOutsideSandbox

MAX_PATH_LENGTH = 4096


def sandbox_path(path: str, *, allow_root: bool = True) -> str:
    """The normalized absolute form of ``path``, or :class:`PathOutsideSandbox` saying what is wrong.

    ``allow_root=False`` also refuses a writable root itself (for deleting or overwriting).
    """
    if not isinstance(path, str):
        raise PathOutsideSandbox(f"a sandbox path must be a string, not {type(path).__name__}",
                                 reason="InvalidPath")
    if path == "":
        raise PathOutsideSandbox("empty path", path=path, reason="InvalidPath")
    if "\x00" in path:
        raise PathOutsideSandbox("path contains a NUL byte", path=path, reason="InvalidPath")
    if len(path) > MAX_PATH_LENGTH:
        raise PathOutsideSandbox(f"path is longer than {MAX_PATH_LENGTH} characters", path=path,
                                 reason="InvalidPath")
    if ".." in path.split("/"):
        raise PathOutsideSandbox(f"path traversal ('..') is not allowed: {path!r}", path=path,
                                 reason="PathTraversal")
    joined = path if path.startswith("/") else posixpath.join(constants.WORKSPACE_DIR, path)
    norm = posixpath.normpath(joined)
    if norm.startswith("//"):  # POSIX keeps a leading double slash; it means nothing special on Linux.
        norm = "/" + norm.lstrip("/")
    roots = constants.WRITABLE_ROOTS
    for root in roots:
        if norm == root:
            if not allow_root:
                raise PathOutsideSandbox(f"refusing to delete or replace the sandbox root {root}",
                                         path=path, reason="PathIsRoot")
            return norm
        if norm.startswith(root + "/"):
            return norm
    raise PathOutsideSandbox(
        f"path {path!r} is outside the sandbox: it must be under {' or '.join(roots)}",
        path=path, reason="PathOutsideSandbox")

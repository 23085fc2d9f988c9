"""Stateful code execution: cells of Python run in a code context's interpreter in the sandbox (docs/code.md).

A context is one Python interpreter (``/usr/local/bin/sandbox-code``, started by the sandbox's channel agent under
the same limits as commands) whose namespace lasts from cell to cell: ``x = 41`` in one call, ``x + 1`` in the
next gives ``42``. Results are shaped like Jupyter's: the last expression's value as a MIME bundle
(``text/plain`` and, when the object offers them, ``text/html``, ``image/png``, ``application/json``...), display
outputs (``display(obj)``, and every matplotlib figure left open by a cell) as bundles too, an exception as its
name, value and traceback. Each sandbox has a default context; :meth:`Sandbox.code_context` opens more.

A context lives as long as the sandbox's channel: a new channel (the old one broke, the manager was closed) starts
its contexts afresh (``execution_count`` 1 again).
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from sandbox_operator.sdk import protocol as p

if TYPE_CHECKING:
    from sandbox_operator.sdk.sandbox import Sandbox

CodeStatus = Literal["ok", "error", "timeout", "lost"]
ContextState = Literal["kept", "lost"]
MimeBundle = dict[str, str | bytes]
DisplayCallback = Callable[[MimeBundle], None]

DEFAULT_CONTEXT = "default"
CONTEXT_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_context_name(name: str) -> str:
    if not isinstance(name, str) or not CONTEXT_NAME.fullmatch(name):
        raise ValueError(f"context must be 1 to 64 letters, digits, '.', '_' or '-', not {name!r}")
    return name


def decode_bundle(data: Mapping[str, str]) -> MimeBundle:
    """A bundle as the SDK gives it: binary types (``image/png``...) decoded to bytes, the rest text (JSON types
    stay JSON text). The entries were checked to be base64 when the frame was read."""
    return {mime: base64.b64decode(entry) if p.is_binary_mime(mime) else entry for mime, entry in data.items()}


def encode_bundle(bundle: Mapping[str, str | bytes]) -> dict[str, Any]:
    """Jupyter's (nbformat's) form of a bundle: bytes as base64, JSON types as JSON values."""
    out: dict[str, Any] = {}
    for mime, entry in bundle.items():
        if isinstance(entry, bytes):
            out[mime] = base64.b64encode(entry).decode()
        elif mime == "application/json" or mime.endswith("+json"):
            try:
                out[mime] = json.loads(entry)
            except ValueError:
                out[mime] = entry
        else:
            out[mime] = entry
    return out


@dataclass(frozen=True)
class CodeError:
    """An exception a cell raised (or why it ended: ``TimeoutError``, ``InterpreterExited``...): Jupyter's
    ``ename``, ``evalue`` and ``traceback`` (lines, the interpreter's own frames left out)."""

    ename: str
    evalue: str
    traceback: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.ename}: {self.evalue}" if self.evalue else self.ename


@dataclass(frozen=True)
class CodeResult:
    """What a cell did.

    ``status`` is ``ok``; ``error`` (the cell raised: ``error`` says what); ``timeout`` (it ran past its timeout:
    KeyboardInterrupt stopped it, or the interpreter was killed); or ``lost`` (the interpreter died: it exited, ran
    out of memory, broke its protocol, or the context was restarted or closed meanwhile). ``state`` is ``kept``
    when the namespace is still there for the next cell, ``lost`` when the next cell starts in a fresh one.

    ``text`` is the ``text/plain`` of the last expression's value (None when the cell did not end with an
    expression, or its value was None); ``data`` is its whole bundle; ``displays`` the display outputs in order,
    each a bundle. In a bundle ``image/png`` and the other binary types are bytes, the rest text
    (``application/json`` as JSON text). ``stdout``/``stderr`` are the head of the output when it was longer than
    the cap (``*_dropped`` count the rest), and so are ``displays`` (``displays_dropped``).
    """

    status: CodeStatus
    execution_count: int
    text: str | None = None
    data: MimeBundle = field(default_factory=dict)
    displays: list[MimeBundle] = field(default_factory=list)
    error: CodeError | None = None
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    state: ContextState = "kept"
    context: str = DEFAULT_CONTEXT
    duration: float = 0.0
    sandbox: str | None = None
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    displays_dropped: int = 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def truncated(self) -> bool:
        return bool(self.stdout_dropped or self.stderr_dropped or self.displays_dropped)

    def outputs(self) -> list[dict[str, Any]]:
        """The cell's outputs as a notebook keeps them (nbformat 4): stdout, stderr, the display outputs, the
        result, the error. (Their order within the cell is not kept: streams come first.)"""
        out: list[dict[str, Any]] = []
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            if text:
                out.append({"output_type": "stream", "name": name, "text": text})
        out.extend({"output_type": "display_data", "data": encode_bundle(bundle), "metadata": {}}
                   for bundle in self.displays)
        if self.data:
            out.append({"output_type": "execute_result", "execution_count": self.execution_count,
                        "data": encode_bundle(self.data), "metadata": {}})
        if self.error is not None:
            out.append({"output_type": "error", "ename": self.error.ename, "evalue": self.error.evalue,
                        "traceback": list(self.error.traceback)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (``sandboxctl run-code -o json``); the outputs in nbformat's shape."""
        return {
            "context": self.context, "status": self.status, "executionCount": self.execution_count,
            "state": self.state, "text": self.text,
            "error": None if self.error is None else {"ename": self.error.ename, "evalue": self.error.evalue,
                                                      "traceback": list(self.error.traceback)},
            "durationSeconds": round(self.duration, 6), "stdoutDropped": self.stdout_dropped,
            "stderrDropped": self.stderr_dropped, "displaysDropped": self.displays_dropped,
            "outputs": self.outputs(),
        }


class CodeContext:
    """A code context of its own in a sandbox: a namespace no other context sees. Get one from
    :meth:`Sandbox.code_context`; use it as a context manager to close it at the end.

    ``cwd`` and ``env`` (added to the sandbox's environment) apply to its interpreter, and again after a
    :meth:`restart` or a loss."""

    def __init__(self, sandbox: Sandbox, name: str | None = None, *, cwd: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.sandbox = sandbox
        self.name = check_context_name(name or f"ctx-{uuid.uuid4().hex[:12]}")
        self.cwd = cwd
        self.env = dict(env or {})

    def __repr__(self) -> str:
        return f"CodeContext(name={self.name!r}, sandbox={self.sandbox.name!r})"

    def __enter__(self) -> CodeContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, code: str, *, timeout: float | None = None, on_stdout: Callable[[str], None] | None = None,
            on_stderr: Callable[[str], None] | None = None, on_display: DisplayCallback | None = None,
            max_output: int | None = None) -> CodeResult:
        """Runs one cell in this context: :meth:`Sandbox.run_code` with ``context=self``."""
        return self.sandbox.run_code(code, context=self, timeout=timeout, on_stdout=on_stdout, on_stderr=on_stderr,
                                     on_display=on_display, max_output=max_output)

    def restart(self) -> None:
        """A fresh interpreter, with an empty namespace (a cell running now ends with status ``lost``)."""
        self.sandbox._restart_code_context(self)

    def close(self) -> None:
        """Ends the context's interpreter and every process it started (a cell running now ends, ``lost``)."""
        self.sandbox._close_code_context(self)


__all__ = ["DEFAULT_CONTEXT", "CodeContext", "CodeError", "CodeResult", "MimeBundle", "decode_bundle"]

# ruff: noqa: N818  (the names say what happened, without an Error suffix: SandboxNotFound, CommandTimeout, ...)
"""Typed errors of the SDK.

Every error is a :class:`SandboxError`. Each one carries the Kubernetes ``reason`` when there is one (the
``reason`` of an API ``Status``, of a Sandbox condition, or of an exec failure), the HTTP ``status`` code when
the API server answered, and the sandbox's ``name``/``namespace`` when it concerns one sandbox.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox_operator.sdk.commands import CommandResult


class SandboxError(Exception):
    """Base class of every error the SDK raises."""

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        status: int | None = None,
        name: str | None = None,
        namespace: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.status = status
        self.name = name
        self.namespace = namespace
        self.details = details or {}

    def __str__(self) -> str:
        if self.reason and self.reason not in self.message:
            return f"{self.message} (reason: {self.reason})"
        return self.message

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (the CLI prints this with ``--output json``)."""
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        for key in ("reason", "status", "name", "namespace"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.details:
            out["details"] = self.details
        return out


class ConfigError(SandboxError):
    """No usable Kubernetes configuration (kubeconfig or in-cluster)."""


class ApiError(SandboxError):
    """The Kubernetes API refused or failed a request in a way no more specific error describes."""


class SandboxForbidden(ApiError):
    """RBAC, admission or quota refused the request (HTTP 403)."""


class InvalidSandboxSpec(ApiError):
    """The Sandbox is invalid: the API server rejected it (HTTP 422, CRD validation or admission), or the SDK
    refused to send it (``status`` None), such as a sandbox taken from a pool that sets a field the pool fixes."""


class CrdNotInstalled(ApiError):
    """The Sandbox custom resource definition is not installed in the cluster."""


class SandboxNotFound(SandboxError):
    """The Sandbox (or its pod) does not exist."""


class PoolNotFound(SandboxNotFound):
    """The SandboxPool does not exist."""


class SandboxAlreadyExists(SandboxError):
    """A Sandbox with that name already exists."""


class SandboxNotReady(SandboxError):
    """The Sandbox is not (or not yet) Ready: waiting timed out, or an operation needs a Ready sandbox.

    ``phase`` is the last phase seen; ``reason``/``message`` come from its Ready condition or status.
    """

    def __init__(self, message: str, *, phase: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.phase = phase

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.phase is not None:
            out["phase"] = self.phase
        return out


class SandboxFailed(SandboxNotReady):
    """The Sandbox reached a terminal state (Failed, Expired) or a reason that cannot resolve by waiting
    (image missing, invalid spec, admission denied...)."""


class NamespaceNotServed(SandboxFailed):
    """No running operator serves the Sandbox's namespace, so nothing will ever make it Ready (reason
    ``NoOperator``). ``served`` lists the namespaces (or patterns) the running operators watch; the message
    names them, or says that no operator is running, or that the list could not be read."""

    def __init__(self, message: str, *, served: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.served = served

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["servedNamespaces"] = list(self.served)
        return out


class WaitTimeout(SandboxError):
    """Waiting for a condition other than readiness (e.g. deletion) timed out."""


class ExecError(SandboxError):
    """The command could not be run at all: the exec connection failed, the container is not running, the
    image has no exec wrapper, the wrapper refused a limit above the sandbox's own (reason
    ``LimitAboveSandbox``), or the stream broke; or killing a command failed (reason ``KillFailed``). A command
    that ran and failed is *not* an ExecError; see :class:`CommandError`."""


class ChannelBroken(ExecError):
    """The channel to the sandbox's agent broke: the agent was killed or stopped (no answer within the ping
    timeout), it broke the protocol, or the stream was cut. Every call in flight on the channel raises this; the
    channel is unusable from then on, and the next call needs a new one.

    ``request_sent`` is False when the call failed before any of its request was written (the channel had broken
    already): it did nothing in the sandbox, and the SDK retries it once on a new channel. A call whose request
    went out is never retried, since it may have run."""

    request_sent: bool = True


class AgentUnavailable(ExecError):
    """No channel could be opened because the sandbox's image has no channel agent, or one that speaks another
    protocol version (``reason`` says which): commands and files have to go one exec each."""


class CommandError(SandboxError):
    """A command exited non-zero and the caller asked for ``check=True``; ``result`` holds its output."""

    def __init__(self, message: str, *, result: CommandResult, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.result = result

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["exitCode"] = self.result.exit_code
        return out


class CommandTimeout(CommandError):
    """The command ran past its timeout; the exec wrapper killed its whole process group."""


class FileError(SandboxError):
    """A file operation failed. ``path`` is the sandbox path; ``reason`` is the in-image tool's error class
    (e.g. ``FileNotFoundError``, ``IsADirectoryError``) when it reported one."""

    def __init__(self, message: str, *, path: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.path = path

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.path is not None:
            out["path"] = self.path
        return out


class SandboxFileNotFound(FileError):
    """The path does not exist in the sandbox."""


class PathOutsideSandbox(FileError):
    """The path is not under the sandbox's writable roots, or escapes them by ``..`` or a symlink."""


class FileTooLarge(FileError):
    """The file or transfer is larger than the configured cap."""

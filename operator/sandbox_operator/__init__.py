"""sandbox-operator: disposable, hardened Kubernetes sandboxes for AI agents.

The SDK's names are importable from here (``from sandbox_operator import SandboxManager, Sandbox``), but lazily:
importing this package loads neither the SDK, the Kubernetes client, kopf nor the operator, and talks to no
cluster. The first use of one of these names imports :mod:`sandbox_operator.sdk`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sandbox_operator.constants import PROJECT_VERSION

if TYPE_CHECKING:
    from sandbox_operator.sdk import (
        AgentUnavailable,
        ApiError,
        ChannelBroken,
        CommandError,
        CommandHandle,
        CommandResult,
        CommandStream,
        CommandTimeout,
        ConfigError,
        EventStream,
        ExecError,
        FileError,
        FileInfo,
        FileTooLarge,
        Health,
        InvalidSandboxSpec,
        NamespaceNotServed,
        OutputChunk,
        PathOutsideSandbox,
        RunningCommand,
        Sandbox,
        SandboxAlreadyExists,
        SandboxError,
        SandboxEvent,
        SandboxFailed,
        SandboxFileNotFound,
        SandboxForbidden,
        SandboxManager,
        SandboxNotFound,
        SandboxNotReady,
        WaitTimeout,
    )
    from sandbox_operator.sdk.aio import AsyncSandbox, AsyncSandboxManager

__version__ = PROJECT_VERSION

__all__ = [
    "AgentUnavailable", "ApiError", "AsyncSandbox", "AsyncSandboxManager", "ChannelBroken", "CommandError",
    "CommandHandle", "CommandResult", "CommandStream", "CommandTimeout", "ConfigError", "EventStream", "ExecError",
    "FileError", "FileInfo", "FileTooLarge", "Health", "InvalidSandboxSpec", "NamespaceNotServed", "OutputChunk",
    "PathOutsideSandbox", "RunningCommand", "Sandbox", "SandboxAlreadyExists", "SandboxError", "SandboxEvent",
    "SandboxFailed", "SandboxFileNotFound", "SandboxForbidden", "SandboxManager", "SandboxNotFound", "SandboxNotReady",
    "WaitTimeout", "__version__",
]
_AIO_NAMES = frozenset({"AsyncSandbox", "AsyncSandboxManager"})
_SDK_NAMES = frozenset(__all__) - _AIO_NAMES - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        module = importlib.import_module("sandbox_operator.sdk")
    elif name in _AIO_NAMES:
        module = importlib.import_module("sandbox_operator.sdk.aio")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

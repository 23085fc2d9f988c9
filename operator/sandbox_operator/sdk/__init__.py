"""The Python SDK of sandbox-operator: sandboxes on Kubernetes for AI agents.

>>> from sandbox_operator import SandboxManager
>>> manager = SandboxManager()
>>> with manager.create(idle_timeout=600) as sandbox:
...     print(sandbox.run("python3 -c 'print(1 + 1)'").stdout)
2

Commands and files travel over one persistent channel per sandbox (one exec each where the image has no agent,
or with ``SandboxManager(transport="exec")``).

One name per action: ``manager.create/get/list/delete`` (``create(pool=...)`` takes a warm pod of a SandboxPool)
and ``manager.pools/get_pool``; on a sandbox ``run`` (to completion), ``stream`` (output as it arrives), ``start``
(in the background), ``run_code`` (Python whose state is kept from call to call; ``code_context()`` for more than
the default context), ``files.read_bytes/read_text/write/list/stat/exists/remove/mkdir/upload/download``,
``health``, ``events``, ``delete``. The session methods of the manager (``create_session``, ``execute_command``,
...) are the same operations by session id (:mod:`.sessions`).

Importing this package talks to nothing; it needs neither the operator nor kopf.
"""

from sandbox_operator.models.conditions import Condition
from sandbox_operator.sdk.activity import ActivityRecorder
from sandbox_operator.sdk.code import CodeContext, CodeError, CodeResult
from sandbox_operator.sdk.commands import CommandHandle, CommandResult, CommandStream, OutputChunk, RunningCommand
from sandbox_operator.sdk.errors import (
    AgentUnavailable,
    ApiError,
    ChannelBroken,
    CommandError,
    CommandTimeout,
    ConfigError,
    CrdNotInstalled,
    ExecError,
    FileError,
    FileTooLarge,
    InvalidSandboxSpec,
    NamespaceNotServed,
    PathOutsideSandbox,
    PoolNotFound,
    SandboxAlreadyExists,
    SandboxError,
    SandboxFailed,
    SandboxFileNotFound,
    SandboxForbidden,
    SandboxNotFound,
    SandboxNotReady,
    WaitTimeout,
)
from sandbox_operator.sdk.events import EventStream, SandboxEvent, Subscription
from sandbox_operator.sdk.exec import StdinPipe
from sandbox_operator.sdk.files import FileInfo, Files
from sandbox_operator.sdk.health import Health
from sandbox_operator.sdk.manager import Progress, SandboxManager, build_sandbox, build_spec
from sandbox_operator.sdk.pools import PoolInfo
from sandbox_operator.sdk.sandbox import Sandbox

__all__ = [
    "ActivityRecorder", "AgentUnavailable", "ApiError", "ChannelBroken", "CodeContext", "CodeError", "CodeResult",
    "CommandError", "CommandHandle", "CommandResult", "CommandStream", "CommandTimeout", "Condition", "ConfigError",
    "CrdNotInstalled", "EventStream", "ExecError", "FileError", "FileInfo", "FileTooLarge", "Files", "Health",
    "InvalidSandboxSpec", "NamespaceNotServed", "OutputChunk", "PathOutsideSandbox", "PoolInfo", "PoolNotFound",
    "Progress", "RunningCommand", "Sandbox", "SandboxAlreadyExists", "SandboxError", "SandboxEvent", "SandboxFailed",
    "SandboxFileNotFound", "SandboxForbidden", "SandboxManager", "SandboxNotFound", "SandboxNotReady", "StdinPipe",
    "Subscription", "WaitTimeout", "build_sandbox", "build_spec",
]

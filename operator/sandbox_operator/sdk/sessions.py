"""The session API: the same operations as the object API, addressed by a session id (the Sandbox's name).

This is the API of the Docker-based ``SandboxManager`` this project replaces (``createSession``,
``executeCommand``, ... there), kept so that code written against it runs unchanged::

    manager = SandboxManager()
    session_id = manager.create_session()
    result = manager.execute_command(session_id, "python3 -c 'print(1)'")
    manager.destroy_session(session_id)

Every method is one line over the object API (:class:`~sandbox_operator.sdk.manager.SandboxManager` and
:class:`~sandbox_operator.sdk.sandbox.Sandbox`), which new code should use. A session method on a sandbox
reaches it directly, without reading the Sandbox object first.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from sandbox_operator import constants
from sandbox_operator.sdk.sandbox import Sandbox

if TYPE_CHECKING:
    from sandbox_operator.sdk.aio import AsyncSandbox
    from sandbox_operator.sdk.commands import CommandResult
    from sandbox_operator.sdk.files import FileInfo
    from sandbox_operator.sdk.health import Health
    from sandbox_operator.sdk.manager import SandboxManager


class _Manager(Protocol):
    namespace: str

    def create(self, name: str | None = None, **kwargs: Any) -> Sandbox: ...

    def delete(self, name: str, *, namespace: str | None = None, wait: bool = False, timeout: float = 120,
               missing_ok: bool = False) -> None: ...

    def list(self, labels: Mapping[str, str] | str | None = None, *, namespace: str | None = None,
             all_namespaces: bool = False) -> builtins.list[Sandbox]: ...


def _sandbox(manager: _Manager, session_id: str) -> Sandbox:
    # SessionApi is mixed into SandboxManager only.
    return Sandbox(cast("SandboxManager", manager), session_id, manager.namespace)


class SessionApi:
    """The session methods of :class:`~sandbox_operator.sdk.manager.SandboxManager`."""

    def create_session(self: _Manager, **kwargs: Any) -> str:
        """Creates a sandbox (``create()``'s keywords), waits until it is Ready and returns its session id."""
        return self.create(**kwargs).name

    def destroy_session(self: _Manager, session_id: str, *, wait: bool = False) -> None:
        """Deletes the sandbox; a session that is already gone is not an error."""
        self.delete(session_id, wait=wait, missing_ok=True)

    def list_sessions(self: _Manager, labels: Mapping[str, str] | str | None = None) -> builtins.list[str]:
        return [sandbox.name for sandbox in self.list(labels)]

    def execute_command(self: _Manager, session_id: str, command: str | Sequence[str], *,
                        timeout: float | None = None, env: Mapping[str, str] | None = None, cwd: str | None = None,
                        stdin: bytes | str | None = None, max_output: int | None = None) -> CommandResult:
        """``Sandbox.run()``: the command's result, a non-zero exit included."""
        return _sandbox(self, session_id).run(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin,
                                              max_output=max_output)

    def read_file(self: _Manager, session_id: str, path: str) -> str:
        return _sandbox(self, session_id).files.read_text(path)

    def write_file(self: _Manager, session_id: str, path: str, content: bytes | str) -> str:
        return _sandbox(self, session_id).files.write(path, content)

    def delete_file(self: _Manager, session_id: str, path: str, *, recursive: bool = False) -> None:
        _sandbox(self, session_id).files.remove(path, recursive=recursive)

    def list_files(self: _Manager, session_id: str,
                   path: str = constants.WORKSPACE_DIR) -> builtins.list[FileInfo]:
        return _sandbox(self, session_id).files.list(path)

    def get_health(self: _Manager, session_id: str) -> Health:
        return _sandbox(self, session_id).health()


class _AsyncManager(Protocol):
    async def create(self, name: str | None = None, **kwargs: Any) -> AsyncSandbox: ...

    async def delete(self, name: str, *, namespace: str | None = None, wait: bool = False, timeout: float = 120,
                     missing_ok: bool = False) -> None: ...

    @property
    def sync(self) -> SandboxManager: ...


class AsyncSessionApi:
    """The session methods of :class:`~sandbox_operator.sdk.aio.AsyncSandboxManager`, with ``await``."""

    async def create_session(self: _AsyncManager, **kwargs: Any) -> str:
        return (await self.create(**kwargs)).name

    async def destroy_session(self: _AsyncManager, session_id: str, *, wait: bool = False) -> None:
        await self.delete(session_id, wait=wait, missing_ok=True)

    async def execute_command(self: _AsyncManager, session_id: str, command: str | Sequence[str],
                              **kwargs: Any) -> CommandResult:
        return await asyncio.to_thread(self.sync.execute_command, session_id, command, **kwargs)

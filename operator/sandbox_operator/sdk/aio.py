"""The asyncio twin of the SDK: the same API with ``await``.

The official Kubernetes client is blocking, so each call runs the synchronous SDK in a worker thread
(:func:`asyncio.to_thread`); streams (command output, events) are bridged chunk by chunk, so the event loop
is never blocked and the first chunk arrives as soon as the sandbox sends it. Commands and files go the
synchronous SDK's way: over the sandbox's one channel, which any number of threads (and so tasks) share.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandbox_operator import constants
from sandbox_operator.sdk.code import CodeContext, CodeResult
from sandbox_operator.sdk.commands import CommandHandle, CommandResult, OutputChunk, RunningCommand
from sandbox_operator.sdk.events import EventStream, SandboxEvent
from sandbox_operator.sdk.exec import StdinSource
from sandbox_operator.sdk.files import FileInfo, Files
from sandbox_operator.sdk.health import Health
from sandbox_operator.sdk.manager import ProgressCallback, SandboxManager
from sandbox_operator.sdk.pools import PoolInfo
from sandbox_operator.sdk.sandbox import Sandbox
from sandbox_operator.sdk.sessions import AsyncSessionApi

_DONE = object()


async def _bridge(open_stream: Callable[[], Any]) -> AsyncIterator[Any]:
    """Iterates a blocking stream (with ``close()``) in a thread, handing items to the event loop."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[Any] = asyncio.Queue()
    stream = await asyncio.to_thread(open_stream)

    def pump() -> None:
        try:
            for item in stream:
                loop.call_soon_threadsafe(items.put_nowait, item)
        except BaseException as exc:  # handed to the consumer
            loop.call_soon_threadsafe(items.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(items.put_nowait, _DONE)

    task = loop.run_in_executor(None, pump)
    try:
        while True:
            item = await items.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stream.close()
        await asyncio.shield(task)


class AsyncFiles:
    """``await sandbox.files.read_bytes(...)`` and the rest of :class:`~sandbox_operator.sdk.files.Files`."""

    def __init__(self, files: Files) -> None:
        self.sync = files

    async def read_bytes(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return await asyncio.to_thread(self.sync.read_bytes, path, max_bytes=max_bytes)

    async def read_text(self, path: str, *, encoding: str = "utf-8") -> str:
        return await asyncio.to_thread(self.sync.read_text, path, encoding=encoding)

    async def write(self, path: str, data: bytes | str, *, mode: int = 0o644, parents: bool = True) -> str:
        return await asyncio.to_thread(self.sync.write, path, data, mode=mode, parents=parents)

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        await asyncio.to_thread(self.sync.remove, path, recursive=recursive)

    async def mkdir(self, path: str, *, parents: bool = True) -> str:
        return await asyncio.to_thread(self.sync.mkdir, path, parents=parents)

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(self.sync.exists, path)

    async def stat(self, path: str) -> FileInfo:
        return await asyncio.to_thread(self.sync.stat, path)

    async def list(self, path: str = constants.WORKSPACE_DIR) -> builtins.list[FileInfo]:
        return await asyncio.to_thread(self.sync.list, path)

    async def upload(self, local: str | os.PathLike[str], remote: str) -> str:
        return await asyncio.to_thread(self.sync.upload, local, remote)

    async def download(self, remote: str, local: str | os.PathLike[str]) -> Path:
        return await asyncio.to_thread(self.sync.download, remote, local)


class AsyncCommandHandle:
    """A background command: ``await wait()``, ``await kill()``, ``async for chunk in chunks()``."""

    def __init__(self, handle: CommandHandle) -> None:
        self.sync = handle

    @property
    def stdout(self) -> str:
        return self.sync.stdout

    @property
    def stderr(self) -> str:
        return self.sync.stderr

    @property
    def running(self) -> bool:
        return self.sync.running

    async def wait(self, timeout: float | None = None) -> CommandResult:
        return await asyncio.to_thread(self.sync.wait, timeout)

    @property
    def dropped_chunks(self) -> int:
        return self.sync.dropped_chunks

    async def kill(self, signal: str | int = "KILL") -> CommandResult | None:
        return await asyncio.to_thread(self.sync.kill, signal)

    async def send_stdin(self, data: bytes | str) -> None:
        self.sync.send_stdin(data)

    async def close_stdin(self) -> None:
        self.sync.close_stdin()

    async def chunks(self) -> AsyncIterator[OutputChunk]:
        loop = asyncio.get_running_loop()
        iterator = self.sync.chunks()
        while True:
            chunk = await loop.run_in_executor(None, next, iterator, None)
            if chunk is None:
                return
            yield chunk


class AsyncSandbox:
    """The asyncio form of :class:`~sandbox_operator.sdk.sandbox.Sandbox`; ``async with`` deletes it."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sync = sandbox
        self.files = AsyncFiles(sandbox.files)

    @property
    def name(self) -> str:
        return self.sync.name

    @property
    def namespace(self) -> str:
        return self.sync.namespace

    @property
    def phase(self) -> str | None:
        return self.sync.phase

    def __repr__(self) -> str:
        return f"Async{self.sync!r}"

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete(missing_ok=True)

    async def refresh(self) -> AsyncSandbox:
        await asyncio.to_thread(self.sync.refresh)
        return self

    async def health(self) -> Health:
        return await asyncio.to_thread(self.sync.health)

    async def wait_ready(self, timeout: float | None = None,
                         on_progress: ProgressCallback | None = None) -> AsyncSandbox:
        await asyncio.to_thread(self.sync.wait_ready, timeout, on_progress)
        return self

    async def delete(self, *, wait: bool = False, timeout: float = 120, missing_ok: bool = False) -> None:
        await asyncio.to_thread(self.sync.delete, wait=wait, timeout=timeout, missing_ok=missing_ok)

    async def touch(self) -> bool:
        return await asyncio.to_thread(self.sync.touch)

    async def run(self, command: str | Sequence[str], *, timeout: float | None = None,
                  env: Mapping[str, str] | None = None, cwd: str | None = None,
                  stdin: bytes | str | None = None, check: bool = False, shell: str | None = None,
                  max_output: int | None = None) -> CommandResult:
        """See :meth:`Sandbox.run`: at most ``max_output`` bytes of stdout and of stderr are kept."""
        return await asyncio.to_thread(self.sync.run, command, timeout=timeout, env=env, cwd=cwd, stdin=stdin,
                                       check=check, shell=shell, max_output=max_output)

    async def run_code(self, code: str, *, context: CodeContext | str | None = None, timeout: float | None = None,
                       max_output: int | None = None) -> CodeResult:
        """See :meth:`Sandbox.run_code` (a context by name, or one from ``sync.code_context()``)."""
        return await asyncio.to_thread(self.sync.run_code, code, context=context, timeout=timeout,
                                       max_output=max_output)

    async def stream(self, command: str | Sequence[str], *, timeout: float | None = None,
                     env: Mapping[str, str] | None = None, cwd: str | None = None,
                     stdin: StdinSource | None = None, shell: str | None = None) -> AsyncIterator[OutputChunk]:
        """Output chunks as they arrive (none of them kept); the command's exit is checked at the end
        (CommandError)."""
        holder: list[RunningCommand] = []

        def open_stream() -> RunningCommand:
            stream = self.sync.stream(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin, shell=shell)
            holder.append(stream)
            return stream

        async for chunk in _bridge(open_stream):
            yield chunk
        if holder and holder[0].result is not None:
            holder[0].result.check()

    async def start(self, command: str | Sequence[str], *, timeout: float | None = None,
                    env: Mapping[str, str] | None = None, cwd: str | None = None,
                    stdin: bool | StdinSource = False, shell: str | None = None,
                    max_output: int | None = None) -> AsyncCommandHandle:
        handle = await asyncio.to_thread(self.sync.start, command, timeout=timeout, env=env, cwd=cwd,
                                         stdin=stdin, shell=shell, max_output=max_output)
        return AsyncCommandHandle(handle)

    async def events(self, *, follow: bool = True, history: bool = True,
                     timeout: float | None = None) -> AsyncIterator[SandboxEvent]:
        async for event in _bridge(lambda: self.sync.events(follow=follow, history=history, timeout=timeout)):
            yield event


class AsyncSandboxManager(AsyncSessionApi):
    """The asyncio form of :class:`~sandbox_operator.sdk.manager.SandboxManager` (same arguments)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sync = SandboxManager(*args, **kwargs)

    @property
    def namespace(self) -> str:
        return self.sync.namespace

    async def __aenter__(self) -> AsyncSandboxManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def create(self, name: str | None = None, **kwargs: Any) -> AsyncSandbox:
        """See :meth:`SandboxManager.create` (``pool=`` included)."""
        return AsyncSandbox(await asyncio.to_thread(self.sync.create, name, **kwargs))

    async def get(self, name: str, *, namespace: str | None = None) -> AsyncSandbox:
        return AsyncSandbox(await asyncio.to_thread(self.sync.get, name, namespace=namespace))

    async def list(self, labels: Mapping[str, str] | str | None = None, *, namespace: str | None = None,
                   all_namespaces: bool = False) -> builtins.list[AsyncSandbox]:
        found = await asyncio.to_thread(self.sync.list, labels, namespace=namespace,
                                        all_namespaces=all_namespaces)
        return [AsyncSandbox(s) for s in found]

    async def delete(self, name: str, *, namespace: str | None = None, wait: bool = False,
                     timeout: float = 120, missing_ok: bool = False) -> None:
        await asyncio.to_thread(self.sync.delete, name, namespace=namespace, wait=wait, timeout=timeout,
                                missing_ok=missing_ok)

    async def pools(self, *, namespace: str | None = None, all_namespaces: bool = False) -> builtins.list[PoolInfo]:
        return await asyncio.to_thread(self.sync.pools, namespace=namespace, all_namespaces=all_namespaces)

    async def get_pool(self, name: str, *, namespace: str | None = None) -> PoolInfo:
        return await asyncio.to_thread(self.sync.get_pool, name, namespace=namespace)

    async def events(self, name: str | None = None, **kwargs: Any) -> AsyncIterator[SandboxEvent]:
        def open_stream() -> EventStream:
            return self.sync.events(name, **kwargs)

        async for event in _bridge(open_stream):
            yield event

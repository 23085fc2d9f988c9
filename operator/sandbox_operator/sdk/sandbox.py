"""The Sandbox handle: one sandbox's commands, files, health, events and lifecycle."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any, TypeVar

from sandbox_operator import constants
from sandbox_operator.sdk import errors
from sandbox_operator.sdk.channel import Channel
from sandbox_operator.sdk.code import DEFAULT_CONTEXT, CodeContext, CodeResult, DisplayCallback
from sandbox_operator.sdk.commands import (
    CommandHandle,
    CommandResult,
    CommandStream,
    RunningCommand,
    follow,
    start_stdin,
)
from sandbox_operator.sdk.events import EventStream, SandboxEvent, Subscription
from sandbox_operator.sdk.exec import (
    EXIT_KILL_NO_COMMAND,
    ExecConnection,
    StdinSource,
    kill_argv,
    shell_argv,
    wrapper_argv,
)
from sandbox_operator.sdk.files import Files
from sandbox_operator.sdk.health import Health, health_from, pod_name_of, readiness
from sandbox_operator.sdk.text import escape_control
from sandbox_operator.sdk.transport import ENV_TRANSPORT

if TYPE_CHECKING:
    from sandbox_operator.sdk.manager import ProgressCallback, SandboxManager

CLIENT_GRACE_SECONDS = 30.0
# ``sandbox-exec --kill`` gives up on its sweep after 10 s; this leaves room for the exec round trip.
KILL_DEADLINE_SECONDS = 30.0
KILL_OUTPUT_BYTES = 4096  # one decimal count on stdout, one diagnostic line on stderr
TOOL_STDERR_BYTES = 64 * 1024  # the file tool's error report is one short JSON line
_KILL_COUNT = re.compile(rb"[0-9]{1,9}\n?")
T = TypeVar("T")


class Sandbox:
    """A handle on one Sandbox. Get one from :meth:`SandboxManager.create`, ``get`` or ``list``.

    Used as a context manager it deletes the sandbox on exit.
    """

    def __init__(self, manager: SandboxManager, name: str, namespace: str,
                 obj: dict[str, Any] | None = None) -> None:
        self.manager = manager
        self.name = name
        self.namespace = namespace
        self._obj = obj
        self.files = Files(self, max_file_bytes=manager.max_file_bytes,
                           max_transfer_bytes=manager.max_transfer_bytes, timeout=manager.file_timeout)
        if obj is not None:
            self._learn(obj)

    def __repr__(self) -> str:
        return f"Sandbox(name={self.name!r}, namespace={self.namespace!r}, phase={self.phase!r})"

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete(missing_ok=True)

    # The object --------------------------------------------------------------------------------------

    @property
    def obj(self) -> dict[str, Any]:
        """The Sandbox object as last fetched (fetched now if it never was)."""
        if self._obj is None:
            self.refresh()
        assert self._obj is not None
        return self._obj

    def refresh(self) -> Sandbox:
        self._obj = self.manager.api.get_sandbox(self.name, self.namespace)
        self._learn(self._obj)
        return self

    def _learn(self, obj: dict[str, Any]) -> None:
        idle = ((obj.get("spec") or {}).get("timeouts") or {}).get("idleSeconds")
        if isinstance(idle, int | float):
            self.manager.activity.configure(self.namespace, self.name, idle)
        pod = pod_name_of(obj)
        if pod is not None:
            self.manager._pod_names[(self.namespace, self.name)] = pod

    @property
    def spec(self) -> dict[str, Any]:
        return dict(self.obj.get("spec") or {})

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    @property
    def phase(self) -> str | None:
        return None if self._obj is None else (self._obj.get("status") or {}).get("phase")

    @property
    def pod_name(self) -> str:
        """The sandbox's pod, as its status records it: a pod taken from a pool keeps the pool's name
        (``python.pool-x7k2p``), a cold-started one is named after the sandbox.

        A handle that has not read the object yet (as the session methods make) asks the manager, which knows the
        pods of the sandboxes it has seen, and otherwise reads the object. So does a handle on a pooled sandbox
        read before its pod was recorded, since that name cannot be guessed. Until the operator records a pod,
        the name is the sandbox's."""
        known = pod_name_of(self._obj) or self.manager._pod_names.get((self.namespace, self.name))
        if known is None and (self._obj is None or "poolRef" in (self._obj.get("spec") or {})):
            known = pod_name_of(self.refresh()._obj)
        return known or constants.pod_name(self.name)

    def health(self) -> Health:
        """Phase, conditions, pod state, restarts, last activity and expiry, read now."""
        self.refresh()
        pod = self.manager.api.get_pod(pod_name_of(self.obj) or constants.pod_name(self.name), self.namespace)
        return health_from(self.obj, pod)

    def is_ready(self) -> bool:
        return readiness(self.refresh().obj).state == "ready"

    def wait_ready(self, timeout: float | None = None, on_progress: ProgressCallback | None = None, *,
                   current: dict[str, Any] | None = None) -> Sandbox:
        """Returns once Ready; :class:`SandboxFailed`/:class:`SandboxNotReady` say why not. ``current``: a version
        of the object just obtained (the watch starts from it, without a read)."""
        self._obj = self.manager.wait_ready(self.name, timeout=timeout, namespace=self.namespace,
                                            on_progress=on_progress, current=current)
        self._learn(self._obj)
        return self

    def touch(self, *, force: bool = True) -> bool:
        """Records activity now (by default even if one was recorded within the throttle interval)."""
        return self.manager.activity.touch(self.namespace, self.name, force=force)

    def delete(self, *, wait: bool = False, timeout: float = 120, missing_ok: bool = False) -> None:
        """Deletes the sandbox; with ``wait`` returns only once the object is gone."""
        self.manager.delete(self.name, namespace=self.namespace, wait=wait, timeout=timeout,
                            missing_ok=missing_ok)

    # Events ----------------------------------------------------------------------------------------

    def events(self, *, follow: bool = True, history: bool = True, timeout: float | None = None,
               include_kubernetes_events: bool = True) -> EventStream:
        """This sandbox's state changes and Kubernetes Events (its own and its pod's)."""
        return self.manager.events(self.name, namespace=self.namespace, follow=follow, history=history,
                                   timeout=timeout, include_kubernetes_events=include_kubernetes_events)

    def subscribe(self, callback: Callable[[SandboxEvent], None], *, history: bool = False,
                  on_error: Callable[[BaseException], None] | None = None) -> Subscription:
        return Subscription(self.events(history=history), callback, on_error)

    # Commands ----------------------------------------------------------------------------------------

    def _command_argv(self, command: str | Sequence[str], shell: str | None) -> list[str]:
        if isinstance(command, str):
            return shell_argv(command, shell or self.manager.shell)
        argv = list(command)
        if not argv:
            raise ValueError("empty command")
        return argv

    def _client_deadline(self, timeout: float | None) -> float:
        if timeout is None:
            timeouts = ((self._obj or {}).get("spec") or {}).get("timeouts") or {}
            spec_timeout = timeouts.get("commandSeconds")
            timeout = float(spec_timeout or self.manager.default_command_timeout)
        return timeout + CLIENT_GRACE_SECONDS

    def _channel(self) -> Channel | None:
        """This sandbox's channel (opened now if there is none), or None when its commands go one exec each: the
        manager's transport is ``exec``, or (``auto``) the image has no agent."""
        if self.manager.transport == "exec":
            return None
        try:
            # The pod's name is looked up only when the channel is first opened, not on every call.
            return self.manager._channels.slot(self.namespace, self.name, lambda: self.pod_name).get()
        except (errors.ExecError, errors.SandboxNotFound) as exc:
            raise self._diagnose(exc) from exc

    def _on_channel(self, operation: Callable[[Channel], T], *, hold: bool = False) -> tuple[T] | None:
        """Runs ``operation`` on the channel after recording activity (kept fresh while it runs with ``hold``);
        None when there is no channel to run it on (use one exec instead).

        A channel found broken before the operation sent anything is replaced, once. One that broke after the
        request went out raises: the operation may have happened, so it is not repeated."""
        for attempt in (1, 2):
            channel = self._channel()
            if channel is None:
                return None
            self.manager.activity.touch(self.namespace, self.name)
            try:
                if not hold:
                    return (operation(channel),)
                with self.manager.activity.hold(self.namespace, self.name):
                    return (operation(channel),)
            except errors.ChannelBroken as exc:
                if exc.request_sent or attempt == 2:
                    raise self._diagnose(exc) from exc
        raise AssertionError("unreachable")

    def _open(self, argv: list[str], stdin: StdinSource | None) -> ExecConnection:
        self.manager.activity.touch(self.namespace, self.name)
        try:
            return ExecConnection(self.manager.api.api_client, self.namespace, self.pod_name, argv,
                                  stdin=stdin, sandbox=self.name)
        except (errors.ExecError, errors.SandboxNotFound) as exc:
            raise self._diagnose(exc) from exc

    def _diagnose(self, exc: errors.SandboxError) -> errors.SandboxError:
        """A clearer error when exec failed because the sandbox is gone or not Ready."""
        try:
            obj = self.manager.api.get_sandbox(self.name, self.namespace)
        except errors.SandboxNotFound as gone:
            return gone
        except errors.SandboxError:
            return exc
        self._obj = obj
        self._learn(obj)
        state = readiness(obj)
        if state.state != "ready":
            why = ": ".join(x for x in (state.reason, state.message) if x)
            cls = errors.SandboxFailed if state.state == "failed" else errors.SandboxNotReady
            return cls(f"sandbox {self.name} is not Ready (phase {state.phase or 'unknown'})"
                       + (f": {why}" if why else "") + f"; exec said: {exc.message}",
                       phase=state.phase, reason=state.reason, name=self.name, namespace=self.namespace)
        return exc

    def _command(self, command: str | Sequence[str], *, timeout: float | None, env: Mapping[str, str] | None,
                 cwd: str | None, stdin: StdinSource | None, shell: str | None, max_output: int,
                 background: bool = False) -> RunningCommand:
        """Starts one command over the channel, or through the exec wrapper when there is none. ``background``
        lets a command on the channel outlive it (as a command run by its own exec outlives its client)."""
        user_argv = self._command_argv(command, shell)
        started = self._on_channel(lambda channel: channel.stream(
            user_argv, timeout=timeout, env=env or None, cwd=cwd, stdin=stdin, background=background,
            max_output=max_output, client_deadline=self._client_deadline(timeout),
            hold=lambda: self.manager.activity.hold(self.namespace, self.name)))
        if started is not None:
            return started[0]
        return self._exec_command(user_argv, timeout=timeout, env=env, cwd=cwd, stdin=stdin, max_output=max_output)

    def _exec_command(self, user_argv: list[str], *, timeout: float | None, env: Mapping[str, str] | None,
                      cwd: str | None, stdin: StdinSource | None, max_output: int,
                      max_stderr: int | None = None) -> CommandStream:
        """Opens one command through the exec wrapper, labelled with a fresh id so it can be killed."""
        command_id = uuid.uuid4().hex
        argv = wrapper_argv(user_argv, command_id=command_id, timeout=timeout, cwd=cwd, env=env or None)
        return CommandStream(
            lambda: self._open(argv, stdin), user_argv, client_deadline=self._client_deadline(timeout),
            hold=lambda: self.manager.activity.hold(self.namespace, self.name), sandbox=self.name,
            namespace=self.namespace, timeout_for_message=timeout, max_output=max_output, max_stderr=max_stderr,
            command_id=command_id, kill=lambda signal: self._kill(command_id, signal))

    def stream(self, command: str | Sequence[str], *, timeout: float | None = None,
               env: Mapping[str, str] | None = None, cwd: str | None = None,
               stdin: StdinSource | None = None, shell: str | None = None) -> RunningCommand:
        """Starts a command and returns its output as an iterator of chunks, each delivered as it arrives.

        A string runs under ``shell -c`` (bash by default); a list is an argv. ``timeout`` (seconds) is
        enforced in the sandbox, which kills every process the command started. The stream keeps none of the
        output (the final :attr:`~RunningCommand.result` has empty output and counts the bytes in
        ``stdout_dropped``/``stderr_dropped``), so any amount can pass through it.
        """
        return self._command(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin, shell=shell, max_output=0)

    def run(self, command: str | Sequence[str], *, timeout: float | None = None,
            env: Mapping[str, str] | None = None, cwd: str | None = None, stdin: StdinSource | None = None,
            check: bool = False, shell: str | None = None,
            on_stdout: Callable[[str], None] | None = None,
            on_stderr: Callable[[str], None] | None = None,
            max_output: int | None = None) -> CommandResult:
        """Runs a command to completion: stdout, stderr, exit code, duration, timed-out flag, and over the channel
        its CPU seconds and peak memory (``cpu_seconds``, ``peak_rss_bytes``).

        At most ``max_output`` bytes of stdout and of stderr are kept (default: the manager's
        ``max_output_bytes``, 16 MiB), the head of each; ``stdout_truncated``/``stdout_dropped`` (and the
        stderr twins) say what was dropped. ``on_stdout``/``on_stderr`` see all of it as it arrives.

        A non-zero exit or a timeout is a result, not an error, unless ``check=True`` (then
        :class:`CommandError`/:class:`CommandTimeout`). Failing to run the command at all raises
        (:class:`ExecError`, :class:`ChannelBroken`, :class:`SandboxNotReady`, :class:`SandboxNotFound`...); a
        ``timeout`` above the sandbox's own limit is refused (:class:`ExecError`, reason ``LimitAboveSandbox``).
        """
        cap = self.manager.max_output_bytes if max_output is None else max_output
        with self._command(command, timeout=timeout, env=env, cwd=cwd, stdin=stdin, shell=shell,
                           max_output=cap) as stream:
            result = follow(stream, on_stdout, on_stderr)
        return result.check() if check else result

    def start(self, command: str | Sequence[str], *, timeout: float | None = None,
              env: Mapping[str, str] | None = None, cwd: str | None = None,
              stdin: bool | StdinSource = False, shell: str | None = None,
              on_stdout: Callable[[str], None] | None = None,
              on_stderr: Callable[[str], None] | None = None,
              max_output: int | None = None) -> CommandHandle:
        """Starts a command in the background; the handle can be waited on, followed or killed.

        ``stdin=True`` opens a pipe fed by :meth:`CommandHandle.send_stdin`; other values are sent as
        the command's whole input. ``max_output`` (default: the manager's ``max_output_bytes``) bounds the
        output kept for :attr:`CommandHandle.stdout`/``stderr`` and the result, and the chunks held for
        :meth:`CommandHandle.chunks`. The command runs on to its end or timeout when this client goes away.
        """
        pipe, source = start_stdin(stdin)
        cap = self.manager.max_output_bytes if max_output is None else max_output
        stream = self._command(command, timeout=timeout, env=env, cwd=cwd, stdin=source, shell=shell,
                               max_output=cap, background=True)
        return CommandHandle(stream, max_queued_bytes=cap, stdin=pipe, on_stdout=on_stdout, on_stderr=on_stderr)

    # Code --------------------------------------------------------------------------------------------------

    def code_context(self, name: str | None = None, *, cwd: str | None = None,
                     env: Mapping[str, str] | None = None) -> CodeContext:
        """A code context of its own: an interpreter whose namespace no other context sees, started on its first
        cell. Close it when done (or use it as a context manager). ``name`` (default: generated) is 1 to 64
        letters, digits, ``.``, ``_`` or ``-``; ``cwd`` and ``env`` apply to its interpreter."""
        return CodeContext(self, name, cwd=cwd, env=env)

    def run_code(self, code: str, *, context: CodeContext | str | None = None, timeout: float | None = None,
                 on_stdout: Callable[[str], None] | None = None, on_stderr: Callable[[str], None] | None = None,
                 on_display: DisplayCallback | None = None, max_output: int | None = None) -> CodeResult:
        """Runs a cell of Python in a code context whose state is kept from call to call: ``run_code("x = 41")``,
        then ``run_code("x + 1").text == "42"``. Without ``context``, the sandbox's default one.

        The result (:class:`CodeResult`) has the last expression's value (``text``, and ``data``, its MIME bundle),
        the display outputs, stdout and stderr, and an exception as ``error`` (name, value, traceback): a cell
        that raises is a result with ``status`` ``error``, not an exception here. ``timeout`` (default and
        maximum: the sandbox's command timeout) interrupts the cell with a KeyboardInterrupt and kills the
        interpreter 2 s later if that did not stop it (``status`` ``timeout``; ``state`` says whether the namespace
        survived). Callbacks see output and display outputs as they arrive (a callback's exception, or a
        KeyboardInterrupt, interrupts the cell); ``max_output`` (default: the manager's ``max_output_bytes``)
        bounds what is kept of each.

        Needs the sandbox's channel: :class:`AgentUnavailable` when the manager's transport is ``exec`` or the image
        has no agent. Failing to run the cell at all raises as commands do (:class:`ExecError`,
        :class:`ChannelBroken`, :class:`SandboxNotReady`...)."""
        target = context if isinstance(context, CodeContext) else CodeContext(self, context or DEFAULT_CONTEXT)
        cap = self.manager.max_output_bytes if max_output is None else max_output
        deadline = self._client_deadline(timeout)
        return self._code_call(lambda channel: channel.run_code(
            target.name, code, timeout=timeout, cwd=target.cwd, env=target.env, on_stdout=on_stdout,
            on_stderr=on_stderr, on_display=on_display, max_output=cap, client_deadline=deadline), hold=True)

    def _restart_code_context(self, context: CodeContext) -> None:
        self._code_call(lambda channel: channel.restart_code_context(context.name, cwd=context.cwd, env=context.env))

    def _close_code_context(self, context: CodeContext) -> None:
        # A context lives in its channel's agent: without an open channel there is none left to close (and none is
        # opened to find that out).
        channel = self.manager._channels.open_channel(self.namespace, self.name)
        if channel is not None:
            with contextlib.suppress(errors.ChannelBroken):  # the channel ended meanwhile, and the context with it
                channel.close_code_context(context.name)

    def _code_call(self, operation: Callable[[Channel], T], *, hold: bool = False) -> T:
        done = self._on_channel(operation, hold=hold)
        if done is not None:
            return done[0]
        if self.manager.transport == "exec":
            raise errors.AgentUnavailable(
                f"running code needs the channel to sandbox {self.name}, and this manager's transport is 'exec' (set "
                f"by SandboxManager(transport=...), ${ENV_TRANSPORT} or sandboxctl --transport): use 'auto' or "
                "'channel'", reason="ExecTransport", name=self.name, namespace=self.namespace)
        missing = self.manager._channels.slot(self.namespace, self.name, self.pod_name).no_agent
        raise errors.AgentUnavailable(
            f"running code needs the channel agent ({constants.AGENT_PROGRAM}) in sandbox {self.name}, and its image "
            f"has none" + (f": {missing.message}" if missing is not None else ""),
            reason=missing.reason if missing is not None else "AgentMissing", name=self.name,
            namespace=self.namespace)

    def _kill(self, command_id: str, signal: str | int) -> int:
        """Runs ``sandbox-exec --kill`` (no wrapper around it, nothing forked in the sandbox); returns how many
        processes were signalled, 0 when the command had already ended."""
        argv = kill_argv(command_id, signal)
        with CommandStream(lambda: self._open(argv, None), argv, client_deadline=KILL_DEADLINE_SECONDS,
                           hold=lambda: self.manager.activity.hold(self.namespace, self.name), sandbox=self.name,
                           namespace=self.namespace, timeout_for_message=None,
                           max_output=KILL_OUTPUT_BYTES) as stream:
            result = stream.wait()
        if result.exit_code == EXIT_KILL_NO_COMMAND:
            return 0
        if result.exit_code == 0 and _KILL_COUNT.fullmatch(result.stdout_bytes):
            return int(result.stdout_bytes)
        problem = escape_control(result.stderr_bytes.strip() or result.stdout_bytes.strip(), limit=200)
        raise errors.ExecError(f"killing command {command_id} failed (exit code {result.exit_code}): "
                               f"{problem or 'no diagnostic'}", reason="KillFailed", name=self.name,
                               namespace=self.namespace)

    def _run_tool(self, args: Sequence[str], *, stdin: bytes | IO[bytes] | None = None,
                  timeout: float | None = None, max_output: int, sink: IO[bytes] | None = None) -> CommandResult:
        """Runs the in-image file tool through the exec wrapper (for a sandbox without a channel). Stdout is kept up
        to ``max_output`` bytes, or written to ``sink`` and not kept; past ``max_output`` the connection is dropped
        and :class:`FileTooLarge` raised. Stderr is kept up to a small fixed cap."""
        with self._exec_command([constants.FILES_TOOL, *args], timeout=timeout, env=None, cwd=None, stdin=stdin,
                                max_output=0 if sink is not None else max_output,
                                max_stderr=TOOL_STDERR_BYTES) as stream:
            size = 0
            for chunk in stream:
                if chunk.stream == "stdout":
                    size += len(chunk.data)
                    if size > max_output:
                        stream.close()
                        raise errors.FileTooLarge(
                            f"output is over the cap of {max_output} bytes",
                            path=args[1] if len(args) > 1 else None, reason="FileTooLarge", name=self.name,
                            namespace=self.namespace)
                    if sink is not None:
                        sink.write(chunk.data)
            return stream.wait()

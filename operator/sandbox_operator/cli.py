"""sandboxctl: the command line of sandbox-operator, a thin layer over the Python SDK.

Run ``sandboxctl --help`` or ``sandboxctl COMMAND --help``. Exit codes (also in ``--help``):

====  ===========================================================================================
0     success
1     any other error (Kubernetes API, exec transport, configuration)
2     usage error (bad arguments)
3     not found: the sandbox, or the file in the sandbox
4     not ready: the sandbox failed, is not Ready, no operator serves its namespace, or waiting timed out
5     refused: forbidden (RBAC, quota, admission), invalid spec, path outside the sandbox, too large, a
      command limit above the sandbox's own
130   interrupted (Ctrl-C)
====  ===========================================================================================

``sandboxctl exec`` exits with the command's own exit code instead (124 when its timeout killed it,
125-127 for exec wrapper errors, 128+N when signal N ended it); the codes above apply when the command
could not be run at all. ``sandboxctl run-code`` exits 1 when the code raised, 124 when it timed out and
125 when its interpreter was lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import yaml

from sandbox_operator import constants

if TYPE_CHECKING:
    from sandbox_operator.sdk import CodeResult, Progress, Sandbox, SandboxEvent, SandboxManager
    from sandbox_operator.sdk.code import MimeBundle
    from sandbox_operator.sdk.files import FileInfo
    from sandbox_operator.sdk.health import Health
    from sandbox_operator.sdk.pools import PoolInfo

PROG = "sandboxctl"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_NOT_READY = 4
EXIT_REFUSED = 5
EXIT_INTERRUPTED = 130
# run-code: how its cells ended (0 when every one ran without an exception)
EXIT_CODE_RAISED = 1
EXIT_CODE_TIMEOUT = 124
EXIT_CODE_LOST = 125

EXIT_CODES_HELP = """exit codes:
  0    success
  1    any other error (Kubernetes API, exec transport, configuration)
  2    usage error
  3    not found (the sandbox, or the file in the sandbox)
  4    not ready (the sandbox failed, is not Ready, no operator serves its namespace, or waiting timed out)
  5    refused (forbidden, invalid spec, path outside the sandbox, too large, a limit above the sandbox's)
  130  interrupted
  exec exits with the command's own code (124 = timed out and killed)."""

OUTPUTS = ("table", "json", "yaml")


# Formatting (pure) ------------------------------------------------------------------------------------------


def shown(value: object) -> str:
    """``value`` as one line safe for a terminal: control characters (ESC, CR, LF, C1, ...) escaped as
    ``\\xNN``/``\\n``. Used for everything printed here that came from a sandbox or the cluster."""
    from sandbox_operator.sdk.text import escape_control  # the SDK loads only when a command needs it

    return escape_control("" if value is None else str(value))



def human_duration(seconds: float | None) -> str:
    """``45s``, ``3m``, ``2h5m``, ``4d`` like kubectl's AGE column; ``-`` for unknown."""
    if seconds is None:
        return "-"
    s = int(max(0, seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h{m}m" if m and h < 10 else f"{h}h"
    return f"{s // 86400}d"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by three spaces, kubectl style."""
    text_rows = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["   ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["   ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip() for row in text_rows]
    return "\n".join(lines)


def _since(value: datetime | None, now: datetime) -> float | None:
    return None if value is None else (now - value).total_seconds()


def sandbox_row(obj: dict[str, Any], now: datetime | None = None) -> list[str]:
    """NAME, PHASE, REASON, NODE, IDLE, EXPIRES, AGE of one Sandbox object."""
    from sandbox_operator.models.timestamps import parse_time
    from sandbox_operator.sdk.health import last_activity_of

    now = now or datetime.now(UTC)
    meta = obj.get("metadata") or {}
    status = obj.get("status") or {}
    created = parse_time(meta.get("creationTimestamp"))
    expires = parse_time(status.get("expiresAt"))
    activity = last_activity_of(obj) or parse_time(status.get("readyTime"))
    phase = status.get("phase") or "-"
    if meta.get("deletionTimestamp") and phase != "Terminating":
        phase = f"{phase} (deleting)"
    return [
        shown(meta.get("name", "")), shown(phase), shown(status.get("reason") or ""),
        shown(status.get("nodeName") or ""),
        human_duration(_since(activity, now)) if activity else "-",
        human_duration((expires - now).total_seconds()) if expires else "-",
        human_duration(_since(created, now)),
    ]


SANDBOX_HEADERS = ("NAME", "PHASE", "REASON", "NODE", "IDLE", "EXPIRES", "AGE")
POOL_HEADERS = ("NAME", "SIZE", "READY", "STARTING", "CLAIMED", "AGE")


def pool_row(pool: PoolInfo, now: datetime | None = None) -> list[str]:
    """NAME, SIZE, READY, STARTING, CLAIMED, AGE of one SandboxPool (kubectl's printer columns)."""
    now = now or datetime.now(UTC)
    return [shown(pool.name), str(pool.size), str(pool.ready_count), str(pool.starting_count),
            str(pool.claimed_count), human_duration(_since(pool.created, now))]


def health_lines(health: Health, now: datetime | None = None) -> str:
    """``kubectl describe``-like key/value lines."""
    from sandbox_operator.models.timestamps import format_time

    now = now or datetime.now(UTC)

    def when(value: datetime | None) -> str:
        if value is None:
            return "-"
        delta = (now - value).total_seconds()
        rel = f"{human_duration(delta)} ago" if delta >= 0 else f"in {human_duration(-delta)}"
        return f"{format_time(value)} ({rel})"

    rows = [
        ("Name", health.name), ("Namespace", health.namespace), ("Phase", health.phase or "-"),
        ("Ready", "yes" if health.ready else "no"), ("Reason", health.reason or "-"),
        ("Message", health.message or "-"), ("Pod", health.pod_name or "-"),
        ("Pod phase", health.pod_phase or "-"), ("Container", health.container_state or "-"),
        ("Restarts", str(health.restarts)), ("Node", health.node_name or "-"), ("Pod IP", health.pod_ip or "-"),
        ("Created", when(health.created)), ("Started", when(health.start_time)),
        ("Ready since", when(health.ready_time)), ("Last activity", when(health.last_activity)),
        ("Expires", when(health.expires_at)),
    ]
    width = max(len(k) for k, _ in rows) + 1
    out = [f"{(k + ':').ljust(width)}  {shown(v)}" for k, v in rows]
    if health.conditions:
        out.append("Conditions:")
        out.append(format_table(
            ("  TYPE", "STATUS", "REASON", "MESSAGE"),
            [(f"  {shown(c.type)}", shown(c.status), shown(c.reason or ""), shown(c.message or ""))
             for c in health.conditions]))
    return "\n".join(out)


def file_rows(entries: Iterable[FileInfo]) -> list[list[str]]:
    rows = []
    for f in entries:
        modified = f.modified.strftime("%Y-%m-%d %H:%M:%S")
        rows.append([f.permissions, str(f.size), modified, shown(f.name) + ("/" if f.is_dir else "")])
    return rows


FILE_HEADERS = ("MODE", "SIZE", "MODIFIED", "NAME")
EVENT_HEADERS = ("TIME", "KIND", "TYPE", "REASON", "OBJECT", "MESSAGE")


def event_row(event: SandboxEvent) -> list[str]:
    when = event.timestamp.astimezone(UTC).strftime("%H:%M:%S") if event.timestamp else "-"
    kind = "state" if event.kind == "state" else "event"
    obj = f"{(event.involved_kind or constants.KIND).lower()}/{event.name}"
    return [when, kind, shown(event.type), shown(event.reason), shown(obj), shown(event.message)]


def event_line(event: SandboxEvent) -> str:
    """One fixed-width line per event, for following a stream."""
    when, kind, etype, reason, obj, message = event_row(event)
    return f"{when:<9} {kind:<6} {etype:<8} {reason:<22} {obj:<34} {message}".rstrip()


def render(data: Any, output: str) -> str:
    if output == "json":
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False).rstrip("\n")


def parse_key_values(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"{what} must look like KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def split_remote(spec: str) -> tuple[str | None, str]:
    """``NAME:PATH`` -> (NAME, PATH); a local path -> (None, path). Prefix ``./`` for a local name with ':'."""
    if spec.startswith(("/", "./", "../", "~")) or ":" not in spec:
        return None, spec
    name, _, path = spec.partition(":")
    if not name or "/" in name:
        return None, spec
    return name, path or constants.WORKSPACE_DIR


# Errors -------------------------------------------------------------------------------------------------


class UsageError(Exception):
    pass


def exit_code_for(exc: BaseException) -> int:
    """The CLI exit code of an SDK error."""
    from sandbox_operator.sdk import errors

    if isinstance(exc, errors.SandboxNotFound | errors.SandboxFileNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, errors.SandboxNotReady | errors.WaitTimeout):
        return EXIT_NOT_READY
    if isinstance(exc, errors.SandboxForbidden | errors.InvalidSandboxSpec | errors.PathOutsideSandbox
                  | errors.FileTooLarge | errors.SandboxAlreadyExists):
        return EXIT_REFUSED
    if isinstance(exc, errors.ExecError) and exc.reason == "LimitAboveSandbox":
        return EXIT_REFUSED
    if isinstance(exc, UsageError | ValueError):
        return EXIT_USAGE
    return EXIT_ERROR


# Progress ------------------------------------------------------------------------------------------------


class Spinner:
    """A one-line progress indicator on stderr, shown only when stderr is a terminal."""

    FRAMES = "|/-\\"

    def __init__(self, stream: IO[str] | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.text = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def update(self, text: str) -> None:
        self.text = text

    def on_progress(self, progress: Progress) -> None:
        state = progress.phase or "Pending"
        if progress.reason:
            state += f": {progress.reason}"
        self.update(f"waiting for sandbox {progress.name} to be Ready ({state})")

    def __enter__(self) -> Spinner:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True, name="spinner")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
            self.stream.write("\r\x1b[2K")
            self.stream.flush()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self._started
            line = f"{self.FRAMES[i % len(self.FRAMES)]} {self.text or 'working'} {elapsed:.0f}s"
            self.stream.write("\r\x1b[2K" + line[:200])
            self.stream.flush()
            i += 1


# Commands ------------------------------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.output: str = getattr(args, "output", "table") or "table"
        self._manager: SandboxManager | None = None

    @property
    def manager(self) -> SandboxManager:
        if self._manager is None:
            from sandbox_operator.sdk import SandboxManager

            self._manager = SandboxManager(
                getattr(self.args, "namespace", None), kubeconfig=getattr(self.args, "kubeconfig", None),
                context=getattr(self.args, "context", None), transport=getattr(self.args, "transport", None))
        return self._manager

    def sandbox(self, name: str) -> Sandbox:
        return self.manager.get(name)

    def close(self) -> None:
        if self._manager is not None:
            self._manager.close()

    def emit(self, data: Any, table: Callable[[], str]) -> None:
        text = table() if self.output == "table" else render(data, self.output)
        if text:
            print(text)


# What `create --pool` refuses: the pool's pod already runs, so these are its template's.
NOT_WITH_POOL = ("image", "cpu", "memory", "ephemeral_storage", "cpu_request", "memory_request",
                 "ephemeral_storage_request", "pids", "command_timeout", "working_dir", "runtime_class", "env",
                 "node_selector")


def not_with_pool(args: argparse.Namespace) -> list[str]:
    """The options given that cannot go with ``--pool``, as typed (``--memory``)."""
    return ["--" + dest.replace("_", "-") for dest in NOT_WITH_POOL if getattr(args, dest, None) is not None]


def cmd_create(ctx: Context) -> int:
    a = ctx.args
    if a.pool is not None:
        refused = not_with_pool(a)
        if refused:
            raise UsageError(f"{', '.join(refused)} cannot be used with --pool: the pool's pod is already running, "
                             "so only --idle-timeout, --lifetime and --pod-label may be given (and --label, the "
                             "Sandbox's own labels)")
    spec: dict[str, Any] = {}
    labels = parse_key_values(a.label, "--label")
    annotations: dict[str, str] = {}
    name = a.name
    if a.filename:
        loaded = _load_manifest(a.filename)
        if loaded.get("kind") == constants.KIND:
            meta = loaded.get("metadata") or {}
            name = name or meta.get("name")
            labels = {**(meta.get("labels") or {}), **labels}
            annotations = dict(meta.get("annotations") or {})
            spec = dict(loaded.get("spec") or {})
        else:
            spec = loaded
    kwargs: dict[str, Any] = {
        "image": a.image, "cpu": a.cpu, "memory": a.memory, "ephemeral_storage": a.ephemeral_storage,
        "pids": a.pids, "cpu_request": a.cpu_request, "memory_request": a.memory_request,
        "ephemeral_storage_request": a.ephemeral_storage_request, "command_timeout": a.command_timeout,
        "idle_timeout": a.idle_timeout, "lifetime": a.lifetime, "working_dir": a.working_dir,
        "runtime_class_name": a.runtime_class,
        "env": parse_key_values(a.env, "--env") or None,
        "pod_labels": parse_key_values(a.pod_label, "--pod-label") or None,
        "node_selector": parse_key_values(a.node_selector, "--node-selector") or None,
    }
    from sandbox_operator.sdk.manager import _deep_merge, build_spec

    spec = _deep_merge(spec, build_spec(**kwargs))
    with Spinner() as spinner:
        sandbox = ctx.manager.create(name, pool=a.pool, labels=labels or None, annotations=annotations or None,
                                     wait=not a.no_wait, timeout=a.timeout, on_progress=spinner.on_progress,
                                     spec=spec)
    ctx.emit(sandbox.obj, lambda: shown(sandbox.name))
    return EXIT_OK


def _load_manifest(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a Sandbox object or a spec mapping")
    return data


def cmd_list(ctx: Context) -> int:
    sandboxes = ctx.manager.list(ctx.args.selector, all_namespaces=ctx.args.all_namespaces)
    objs = [s.obj for s in sandboxes]

    def table() -> str:
        if not objs:
            return ""
        now = datetime.now(UTC)
        headers: tuple[str, ...] = SANDBOX_HEADERS
        rows = [sandbox_row(o, now) for o in objs]
        if ctx.args.all_namespaces:
            headers = ("NAMESPACE", *headers)
            rows = [[shown((o.get("metadata") or {}).get("namespace", "")), *r] for o, r in zip(objs, rows,
                                                                                               strict=True)]
        return format_table(headers, rows)

    if not objs and ctx.output == "table":
        print("No sandboxes found.", file=sys.stderr)
    ctx.emit({"apiVersion": "v1", "kind": "List", "items": objs}, table)
    return EXIT_OK


def cmd_pools(ctx: Context) -> int:
    pools = ctx.manager.pools(all_namespaces=ctx.args.all_namespaces)

    def table() -> str:
        if not pools:
            return ""
        now = datetime.now(UTC)
        rows = [pool_row(p, now) for p in pools]
        if ctx.args.all_namespaces:
            return format_table(("NAMESPACE", *POOL_HEADERS), [[shown(p.namespace), *r] for p, r in zip(pools, rows,
                                                                                                     strict=True)])
        return format_table(POOL_HEADERS, rows)

    if not pools and ctx.output == "table":
        print("No sandbox pools found.", file=sys.stderr)
    ctx.emit({"apiVersion": "v1", "kind": "List", "items": [p.obj for p in pools]}, table)
    return EXIT_OK


def cmd_get(ctx: Context) -> int:
    sandbox = ctx.sandbox(ctx.args.name)
    health = sandbox.health()
    ctx.emit({"sandbox": sandbox.obj, "health": health.to_dict()}, lambda: health_lines(health))
    return EXIT_OK


def cmd_delete(ctx: Context) -> int:
    code = EXIT_OK
    from sandbox_operator.sdk import errors

    for name in ctx.args.names:
        try:
            ctx.manager.delete(name, wait=ctx.args.wait, timeout=ctx.args.timeout,
                               missing_ok=ctx.args.ignore_not_found)
        except errors.SandboxError as exc:
            print(f"{PROG}: {shown(exc)}", file=sys.stderr)
            code = code or exit_code_for(exc)
            continue
        if ctx.output == "table":
            print(f"sandbox/{name} deleted")
    if ctx.output != "table":
        print(render({"deleted": list(ctx.args.names)}, ctx.output))
    return code


def cmd_wait(ctx: Context) -> int:
    a = ctx.args
    if a.condition == "deleted":
        ctx.manager.wait_deleted(a.name, timeout=a.timeout if a.timeout is not None else 120)
        if ctx.output == "table":
            print(f"sandbox/{a.name} deleted")
        return EXIT_OK
    with Spinner() as spinner:
        obj = ctx.manager.wait_ready(a.name, timeout=a.timeout, on_progress=spinner.on_progress)
    ctx.emit(obj, lambda: f"sandbox/{a.name} ready")
    return EXIT_OK


def cmd_exec(ctx: Context) -> int:
    a = ctx.args
    argv = list(a.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("no command given: sandboxctl exec NAME -- COMMAND [ARGS...]")
    command: str | list[str] = " ".join(argv) if a.shell else argv
    sandbox = ctx.sandbox(a.name)
    # Output goes straight through, as it arrives, and is not kept: any amount can pass.
    stream = sandbox.stream(command, timeout=a.timeout, env=parse_key_values(a.env, "--env") or None,
                            cwd=a.cwd, stdin=sys.stdin.buffer if a.stdin else None)
    out, err = sys.stdout.buffer, sys.stderr.buffer
    try:
        with stream:
            for chunk in stream:
                target = out if chunk.stream == "stdout" else err
                target.write(chunk.data)
                target.flush()
            result = stream.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            stream.kill("TERM")
        return EXIT_INTERRUPTED
    if ctx.output != "table":
        print(render(result.to_dict(), ctx.output))
    return result.exit_code


def read_code(source: str) -> str:
    """The code of one cell: a file, or stdin for ``-``."""
    try:
        data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"{source}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{'stdin' if source == '-' else source} is not UTF-8 (byte {exc.start})") from None


def show_display(bundle: MimeBundle) -> None:
    """A display output on a terminal: its text, and a line for each binary entry (-o json has the data)."""
    text = bundle.get("text/plain")
    if isinstance(text, str):
        print(text)
    for mime, entry in bundle.items():
        if isinstance(entry, bytes):
            print(f"[{mime}: {len(entry)} bytes]")


def show_code_result(result: CodeResult) -> None:
    """After the streamed output: the last expression's value on stdout, the error's traceback on stderr."""
    if result.text is not None:
        print(result.text)
    for mime, entry in result.data.items():
        if isinstance(entry, bytes):
            print(f"[{mime}: {len(entry)} bytes]")
    if result.error is not None:
        lines = result.error.traceback or [str(result.error)]
        print("\n".join(lines), file=sys.stderr)
    if result.state == "lost":
        print(f"{PROG}: the interpreter of context {result.context} was lost; the next cell starts a fresh one",
              file=sys.stderr)


def code_exit(result: CodeResult) -> int:
    return {"ok": EXIT_OK, "error": EXIT_CODE_RAISED, "timeout": EXIT_CODE_TIMEOUT}.get(result.status, EXIT_CODE_LOST)


def cmd_run_code(ctx: Context) -> int:
    a = ctx.args
    cells = [read_code(source) for source in (a.filename or ["-"])]
    sandbox = ctx.sandbox(a.name)
    streaming = ctx.output == "table"

    def write(stream: IO[str]) -> Callable[[str], None]:
        def put(text: str) -> None:
            stream.write(text)
            stream.flush()

        return put

    for code in cells:
        result = sandbox.run_code(code, context=a.code_context, timeout=a.timeout,
                                  on_stdout=write(sys.stdout) if streaming else None,
                                  on_stderr=write(sys.stderr) if streaming else None,
                                  on_display=show_display if streaming else None)
        if streaming:
            show_code_result(result)
        else:
            print(render(result.to_dict(), ctx.output))
        if not result.ok:
            return code_exit(result)
    return EXIT_OK


def cmd_cp(ctx: Context) -> int:
    src_name, src = split_remote(ctx.args.src)
    dst_name, dst = split_remote(ctx.args.dst)
    if (src_name is None) == (dst_name is None):
        raise UsageError("exactly one of SRC and DST must be NAME:PATH (a path in a sandbox)")
    if dst_name is not None:  # upload
        sandbox = ctx.sandbox(dst_name)
        if src == "-":
            sandbox.files.write(dst, sys.stdin.buffer.read())
            return EXIT_OK
        local = Path(src)
        if not local.exists():
            raise UsageError(f"{src}: no such file or directory")
        if dst.endswith("/") and local.is_file():
            dst = dst + local.name
        with Spinner() as spinner:
            spinner.update(f"copying {src} to {dst_name}:{dst}")
            sandbox.files.upload(local, dst)
        return EXIT_OK
    assert src_name is not None
    sandbox = ctx.sandbox(src_name)
    if dst == "-":
        sys.stdout.buffer.write(sandbox.files.read_bytes(src))
        sys.stdout.buffer.flush()
        return EXIT_OK
    with Spinner() as spinner:
        spinner.update(f"copying {src_name}:{src} to {dst}")
        sandbox.files.download(src, dst)
    return EXIT_OK


def name_and_paths(name: str, paths: Sequence[str]) -> tuple[str, list[str]]:
    """``NAME PATH...``, or ``NAME:PATH [PATH...]`` as in ``cp``."""
    remote, path = split_remote(name)
    if remote is None:
        return name, list(paths)
    return remote, [path, *paths]


def cmd_ls(ctx: Context) -> int:
    name, paths = name_and_paths(ctx.args.name, [ctx.args.path] if ctx.args.path else [])
    if len(paths) > 1:
        raise UsageError("ls takes one directory: sandboxctl ls NAME [PATH] or sandboxctl ls NAME:PATH")
    entries = ctx.sandbox(name).files.list(paths[0] if paths else constants.WORKSPACE_DIR)
    ctx.emit([e.to_dict() for e in entries], lambda: format_table(FILE_HEADERS, file_rows(entries))
             if entries else "")
    return EXIT_OK


def cmd_cat(ctx: Context) -> int:
    name, paths = name_and_paths(ctx.args.name, ctx.args.paths)
    if not paths:
        raise UsageError("no file given: sandboxctl cat NAME PATH... or sandboxctl cat NAME:PATH")
    sandbox = ctx.sandbox(name)
    for path in paths:
        sys.stdout.buffer.write(sandbox.files.read_bytes(path))
    sys.stdout.buffer.flush()
    return EXIT_OK


def cmd_rm(ctx: Context) -> int:
    sandbox = ctx.sandbox(ctx.args.name)
    for path in ctx.args.paths:
        sandbox.files.remove(path, recursive=ctx.args.recursive)
    return EXIT_OK


def cmd_events(ctx: Context) -> int:
    a = ctx.args
    stream = ctx.manager.events(a.name, all_namespaces=a.all_namespaces, follow=a.watch,
                                timeout=a.timeout, include_kubernetes_events=not a.no_kubernetes_events)
    header_done = False
    try:
        with stream:
            for event in stream:
                if ctx.output == "table":
                    if not header_done:
                        print(f"{'TIME':<9} {'KIND':<6} {'TYPE':<8} {'REASON':<22} {'OBJECT':<34} MESSAGE")
                        header_done = True
                    print(event_line(event), flush=True)
                elif ctx.output == "json":
                    print(json.dumps(event.to_dict()), flush=True)
                else:
                    print("---\n" + render(event.to_dict(), "yaml"), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK if a.watch else EXIT_INTERRUPTED
    return EXIT_OK


# Parser --------------------------------------------------------------------------------------------------


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _common() -> argparse.ArgumentParser:
    """Options accepted before or after the command (kubectl style)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("cluster options")
    g.add_argument("-n", "--namespace", default=argparse.SUPPRESS,
                   help="namespace (default: $SANDBOX_NAMESPACE, else the kubeconfig context's)")
    g.add_argument("--kubeconfig", default=argparse.SUPPRESS,
                   help="kubeconfig file (default: $KUBECONFIG, in-cluster config, ~/.kube/config)")
    g.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context")
    g.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS,
                   help="output format: table (default), json or yaml")
    g.add_argument("--transport", choices=("auto", "channel", "exec"), default=argparse.SUPPRESS,
                   help="how commands and files reach the sandbox: auto (default: its channel, or one exec per "
                        "command when the image has no agent), channel, or exec (default: $SANDBOX_EXEC_TRANSPORT)")
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common], formatter_class=_Formatter,
        description="Create and use sandboxes (disposable, hardened pods for AI agents) on Kubernetes.",
        epilog=EXIT_CODES_HELP + "\n\nexamples:\n  sandboxctl create --idle-timeout 600\n"
               "  sandboxctl exec sbx-x7k2p -- python3 -c 'print(1)'\n"
               "  sandboxctl cp ./src sbx-x7k2p:/workspace/src\n  sandboxctl events sbx-x7k2p --watch")
    parser.add_argument("--version", action="version", version=f"%(prog)s {constants.PROJECT_VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[Context], int], help_text: str, description: str | None = None,
            epilog: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_text, description=description or help_text,
                           epilog=(epilog + "\n\n" if epilog else "") + EXIT_CODES_HELP,
                           formatter_class=_Formatter)
        p.set_defaults(func=func)
        return p

    p = add("create", cmd_create, "create a sandbox and wait until it is Ready",
            "Create a sandbox and wait until it is Ready (a progress line shows on a terminal). Prints the "
            "name (or the object with -o json|yaml). When no running operator serves the namespace it says so "
            "within seconds, names the namespaces that are served, and deletes the sandbox it created. With "
            "--pool it takes a ready pod of that SandboxPool (or starts cold from the pool's template when none is "
            "ready): the pool fixes image, resources, environment and the rest, so only --idle-timeout, "
            "--lifetime, --pod-label and --label may go with it.",
            "examples:\n  sandboxctl create\n  sandboxctl create my-box --memory 1Gi --idle-timeout 600 "
            "--env MODE=test\n  sandboxctl create --pool python --lifetime 900\n  sandboxctl create -f sandbox.yaml")
    p.add_argument("name", nargs="?", help="name (default: generated, sbx-xxxxx)")
    p.add_argument("--pool", metavar="NAME", help="take a warm pod of this SandboxPool (see: sandboxctl pools)")
    p.add_argument("-f", "--filename", help="a Sandbox manifest or a spec mapping (YAML/JSON; - for stdin)")
    p.add_argument("--image", help="container image (must be allowed by the operator)")
    p.add_argument("--cpu", help="CPU limit, e.g. 500m or 2")
    p.add_argument("--memory", help="memory limit, e.g. 512Mi")
    p.add_argument("--ephemeral-storage", help="local disk limit, e.g. 1Gi")
    p.add_argument("--cpu-request", help="CPU the scheduler reserves (at most --cpu), e.g. 100m")
    p.add_argument("--memory-request", help="memory the scheduler reserves (at most --memory), e.g. 128Mi")
    p.add_argument("--ephemeral-storage-request",
                   help="local disk the scheduler reserves (at most --ephemeral-storage), e.g. 256Mi")
    p.add_argument("--pids", type=int, help="maximum number of processes")
    p.add_argument("--command-timeout", type=int, metavar="SECONDS", help="default per-command timeout")
    p.add_argument("--idle-timeout", type=int, metavar="SECONDS", help="delete after this long idle")
    p.add_argument("--lifetime", type=int, metavar="SECONDS", help="delete this long after creation")
    p.add_argument("--working-dir", help="working directory of the main process")
    p.add_argument("--runtime-class", help="RuntimeClass, e.g. gvisor")
    p.add_argument("-e", "--env", action="append", metavar="K=V", help="environment variable (repeatable)")
    p.add_argument("-l", "--label", action="append", metavar="K=V", help="label of the Sandbox (repeatable)")
    p.add_argument("--pod-label", action="append", metavar="K=V", help="label of the pod (repeatable)")
    p.add_argument("--node-selector", action="append", metavar="K=V", help="node selector (repeatable)")
    p.add_argument("--no-wait", action="store_true", help="return once created, without waiting for Ready")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="how long to wait for Ready (default 180)")

    p = add("list", cmd_list, "list sandboxes", epilog="examples:\n  sandboxctl list -l team=a\n  "
            "sandboxctl list -A -o yaml")
    p.add_argument("-l", "--selector", help="label selector, e.g. team=a,env!=prod")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")

    p = add("pools", cmd_pools, "list sandbox pools: their size and pods ready, starting and claimed",
            "List the SandboxPools: SIZE is how many ready, unclaimed pods each keeps; READY and STARTING count its "
            "unclaimed pods; CLAIMED counts the live pods it handed to sandboxes (never returned to the pool).",
            "examples:\n  sandboxctl pools\n  sandboxctl pools -A -o json\n  sandboxctl create --pool python")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list in every namespace")

    p = add("get", cmd_get, "show a sandbox's health: phase, conditions, pod, restarts, activity, expiry")
    p.add_argument("name")

    p = add("exec", cmd_exec, "run a command in a sandbox, streaming its output",
            "Run a command in a sandbox (timeouts and limits apply), streaming stdout and stderr as they arrive. "
            "Exits with the command's exit code. With -o json|yaml the result follows the output: exit code, "
            "duration, and over the channel the command's CPU seconds and peak memory.",
            "examples:\n  sandboxctl exec sbx-x7k2p -- ls -la /workspace\n"
            "  sandboxctl exec sbx-x7k2p --sh -- 'echo $HOME | tr a-z A-Z'\n"
            "  echo data | sandboxctl exec -i sbx-x7k2p -- wc -c")
    p.add_argument("name")
    p.add_argument("argv", nargs="*", metavar="-- COMMAND [ARGS...]",
                   help="the command; put it after -- when it has options of its own")
    p.add_argument("-i", "--stdin", action="store_true", help="pass this terminal's stdin to the command")
    p.add_argument("-t", "--timeout", type=float, metavar="SECONDS",
                   help="kill the command after this long (default: the sandbox's commandSeconds)")
    p.add_argument("-w", "--cwd", help="working directory (default: /workspace)")
    p.add_argument("-e", "--env", action="append", metavar="K=V", help="environment variable (repeatable)")
    p.add_argument("--sh", "--shell", dest="shell", action="store_true",
                   help="run the command as a bash command line (bash -c)")

    p = add("run-code", cmd_run_code, "run Python in a sandbox's code context, whose state is kept between cells",
            "Run Python code in a code context of a sandbox, as a notebook cell: its output streams as it arrives, "
            "then the value of its last expression and any exception's traceback. Display outputs (display(obj), "
            "matplotlib figures) show as their text, and a line for each image; -o json|yaml prints the outputs as "
            "Jupyter MIME bundles (nbformat), images in base64. Each -f FILE is one cell, run in order in the same "
            "context (stdin when there is none, or for -). A context's state lasts as long as the channel to the "
            "sandbox: for sandboxctl, one invocation; the SDK keeps it from call to call. Exits 0 when every cell ran "
            "without an exception, else with the first failure's code: 1 the code raised, 124 it timed out, 125 "
            "its interpreter was lost (it exited, or was killed).",
            "examples:\n  echo 'print(6 * 7)' | sandboxctl run-code sbx-x7k2p\n"
            "  sandboxctl run-code sbx-x7k2p -f load.py -f plot.py -o json > outputs.json")
    p.add_argument("name")
    p.add_argument("-f", "--filename", action="append", metavar="FILE",
                   help="a file of Python code, one cell (repeatable; - for stdin; default stdin)")
    p.add_argument("-c", "--code-context", metavar="CONTEXT",
                   help="the code context to run in (default: the sandbox's default context)")
    p.add_argument("-t", "--timeout", type=float, metavar="SECONDS",
                   help="interrupt a cell after this long, kill its interpreter 2 s later (default: the sandbox's "
                        "commandSeconds)")

    p = add("cp", cmd_cp, "copy files and directories to or from a sandbox",
            "Copy a file or a directory's contents between this machine and a sandbox, like kubectl cp. "
            "One side is NAME:PATH; PATH is absolute or relative to /workspace and must be under /workspace "
            "or /tmp. A directory's contents go into the destination directory (created). '-' is "
            "stdin/stdout for a single file.",
            "examples:\n  sandboxctl cp ./data.csv sbx-x7k2p:/workspace/data.csv\n"
            "  sandboxctl cp ./project sbx-x7k2p:/workspace/project\n"
            "  sandboxctl cp sbx-x7k2p:/workspace/out ./out")
    p.add_argument("src", help="local path or NAME:PATH")
    p.add_argument("dst", help="local path or NAME:PATH")

    p = add("ls", cmd_ls, "list a directory in a sandbox",
            "List a directory in a sandbox. Control characters in names are shown escaped (\\x1b, \\n).",
            "examples:\n  sandboxctl ls sbx-x7k2p /workspace/src\n  sandboxctl ls sbx-x7k2p:/workspace/src")
    p.add_argument("name", help="the sandbox, or NAME:PATH")
    p.add_argument("path", nargs="?", help="directory (default /workspace)")

    p = add("cat", cmd_cat, "print files from a sandbox (bytes as they are)",
            epilog="examples:\n  sandboxctl cat sbx-x7k2p out.txt\n  sandboxctl cat sbx-x7k2p:/workspace/out.txt")
    p.add_argument("name", help="the sandbox, or NAME:PATH")
    p.add_argument("paths", nargs="*", metavar="path")

    p = add("rm", cmd_rm, "remove files or directories in a sandbox")
    p.add_argument("name")
    p.add_argument("paths", nargs="+", metavar="path")
    p.add_argument("-r", "--recursive", action="store_true", help="remove directories and their contents")

    p = add("events", cmd_events, "show a sandbox's (or all sandboxes') state changes and Kubernetes Events",
            epilog="examples:\n  sandboxctl events sbx-x7k2p\n  sandboxctl events --watch -o json")
    p.add_argument("name", nargs="?", help="one sandbox (default: all sandboxes in the namespace)")
    p.add_argument("-w", "--watch", action="store_true", help="keep watching for new events")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="stop watching after this long")
    p.add_argument("--no-kubernetes-events", action="store_true", help="state changes only")

    p = add("delete", cmd_delete, "delete sandboxes")
    p.add_argument("names", nargs="+", metavar="name")
    p.add_argument("--wait", action="store_true", help="return only once the sandboxes are gone")
    p.add_argument("--timeout", type=float, default=120, metavar="SECONDS", help="with --wait (default 120)")
    p.add_argument("--ignore-not-found", action="store_true", help="a missing sandbox is not an error")

    p = add("wait", cmd_wait, "wait until a sandbox is Ready (or deleted)")
    p.add_argument("name")
    p.add_argument("--for", dest="condition", choices=("ready", "deleted"), default="ready")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long (default 180)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parses argv; for ``exec``, everything after the first ``--`` is the command, options included."""
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        if "exec" in argv[:cut]:
            argv, tail = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    if tail:
        args.argv = [*getattr(args, "argv", []), *tail]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, list(sys.argv[1:] if argv is None else argv))
    ctx = Context(args)
    from sandbox_operator.sdk import errors

    try:
        code: int = args.func(ctx)
    except UsageError as exc:
        print(f"{PROG}: {shown(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except errors.SandboxError as exc:
        if ctx.output != "table":
            print(render(exc.to_dict(), ctx.output), file=sys.stderr)
        else:
            print(f"{PROG}: error: {shown(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except ValueError as exc:
        print(f"{PROG}: {shown(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`); do not print a traceback.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        ctx.close()
    return code


if __name__ == "__main__":
    sys.exit(main())

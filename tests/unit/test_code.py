"""Code contexts: the real agent and its interpreter (images/sandbox/bin/sandbox-agent, sandbox-code) run here over
pipes, driven through :class:`Channel`, ``Sandbox.run_code`` and ``sandboxctl run-code``; scripted agents for what
a real one never sends.

The interpreter is started as in the image, as ``python3 sandbox-code`` found in $PATH (this test's Python first).
Limits on processes (RLIMIT_NPROC) do not hold for root, so fork bombs and memory hogs are the cluster's tests
(tests/e2e/test_code.py).
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sandbox_operator import cli
from sandbox_operator.sdk import errors
from sandbox_operator.sdk import protocol as p
from sandbox_operator.sdk.channel import Channel, ChannelCodeRun
from sandbox_operator.sdk.code import CodeResult
from tests.unit import test_channel
from tests.unit.test_channel import AGENT, LocalAgent, ScriptedAgent, exit_frame
from tests.unit.test_image_tools import clean_env, wait_gone
from tests.unit.test_sdk_transport import Opener, make_sandbox

CODE = AGENT.parent / "sandbox-code"
# test_channel's fixtures, asked for by name below: they start the agent with this module's `agent_env`.
open_channel = test_channel.open_channel
channel = test_channel.channel

pytestmark = pytest.mark.timeout(120)


def load(path: Path, name: str) -> ModuleType:
    loader = SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture
def agent_env(tmp_path: Path) -> dict[str, str]:
    """The agent's environment here (test_channel's `open_channel` and `channel` fixtures start it with this):
    python3 is this test's interpreter, stdlib only being all that sandbox-code needs."""
    (tmp_path / "ws").mkdir()
    return clean_env(SANDBOX_WRITABLE_ROOTS=str(tmp_path / "ws"), SANDBOX_COMMAND_TIMEOUT="30",
                     PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")


def interpreter_pid(channel: Channel, context: str) -> int:
    result = channel.run_code(context, "import os\nos.getpid()")
    assert result.text is not None
    return int(result.text)


# --- what a cell may send: one rule in three places -----------------------------------------------------------------

def test_the_agent_the_interpreter_and_the_sdk_agree_on_what_a_cell_may_send() -> None:
    agent = load(AGENT, "sandbox_agent_code_limits")
    interpreter = load(CODE, "sandbox_code_under_test")
    limits = ["MAX_MIME_ENTRIES", "MAX_MIME_TYPE", "MIME_CHARACTERS", "MAX_ENAME", "MAX_EVALUE", "MAX_TRACEBACK",
              "MAX_TRACEBACK_ENTRY"]
    assert {name: getattr(agent, name) for name in limits} == {name: getattr(p, name) for name in limits}
    assert interpreter.MIME_CHARACTERS == p.MIME_CHARACTERS
    # The interpreter cuts what it sends well within what the agent accepts.
    assert interpreter.MAX_EVALUE < p.MAX_EVALUE and interpreter.MAX_TRACEBACK_ENTRIES < p.MAX_TRACEBACK
    assert interpreter.MAX_TRACEBACK_ENTRY < p.MAX_TRACEBACK_ENTRY and interpreter.MAX_MESSAGE < p.MAX_PAYLOAD
    for mime in ("image/png", "image/jpeg", "image/svg+xml", "text/html", "application/json", "application/pdf",
                 "audio/wav", "video/mp4", "application/vnd.custom+json", "text/plain"):
        assert agent.is_binary_mime(mime) == interpreter.is_binary(mime) == p.is_binary_mime(mime), mime
    for name in ("text/plain", "image/svg+xml", "application/vnd.a.b+json", "x/y", "text", "/x", "x/", "a/b/c",
                 "text/ plain", "t\u00e9xt/plain", "a/" + "b" * 125, "a/" + "b" * 126):
        assert agent.is_mime_type(name) == interpreter.is_mime_type(name) == p.is_mime_type(name), name


# --- cells --------------------------------------------------------------------------------------------------------

def test_the_state_is_kept_and_the_last_expression_is_the_result(channel: Channel) -> None:
    first = channel.run_code("c", "x = 41")
    assert (first.status, first.state, first.text, first.data, first.execution_count) == ("ok", "kept", None, {}, 1)
    second = channel.run_code("c", "print('adding')\nx + 1")
    assert (second.text, second.data, second.stdout, second.execution_count) == ("42", {"text/plain": "42"},
                                                                                  "adding\n", 2)
    assert channel.run_code("c", "_ * 2").text == "84"  # the last value, as in a notebook
    assert channel.run_code("c", "x;").text is None  # a trailing semicolon hides it
    assert channel.run_code("c", "None").text is None
    pickled = channel.run_code("c", "import dataclasses, pickle\n@dataclasses.dataclass\nclass P:\n    a: int\n"
                                    "(__name__, pickle.loads(pickle.dumps(P(1))))")
    assert pickled.text == "('__main__', P(a=1))"  # classes of cells live in a real __main__ module
    awaited = channel.run_code("c", "import asyncio\nawait asyncio.sleep(0)\nx * 2")
    assert awaited.text == "82"  # top-level await
    streams = channel.run_code("c", "import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert (streams.stdout, streams.stderr) == ("out\n", "err\n")


def test_contexts_are_isolated_from_each_other(channel: Channel) -> None:
    channel.run_code("a", "v = 'a'")
    missing = channel.run_code("b", "v")
    assert missing.status == "error" and missing.error is not None and missing.error.ename == "NameError"
    channel.run_code("b", "v = 'b'")
    assert (channel.run_code("a", "v").text, channel.run_code("b", "v").text) == ("'a'", "'b'")
    assert interpreter_pid(channel, "a") != interpreter_pid(channel, "b")


def test_an_exception_is_its_name_value_and_traceback_without_the_interpreters_frames(channel: Channel) -> None:
    failed = channel.run_code("e", "def f():\n    raise ValueError('bad input')\n\nf()")
    assert (failed.status, failed.state) == ("error", "kept") and failed.error is not None
    assert (failed.error.ename, failed.error.evalue) == ("ValueError", "bad input")
    assert failed.error.traceback[0] == "Traceback (most recent call last):"
    assert failed.error.traceback[1].startswith('  File "<cell-1>", line 4, in <module>\n    f()')
    assert failed.error.traceback[2].startswith('  File "<cell-1>", line 2, in f\n    raise ValueError')
    assert failed.error.traceback[-1] == "ValueError: bad input" and len(failed.error.traceback) == 4
    assert not any("sandbox-code" in line for line in failed.error.traceback)
    syntax = channel.run_code("e", "x = (")
    assert syntax.error is not None and syntax.error.ename == "SyntaxError"
    assert syntax.error.traceback[0] == '  File "<cell-2>", line 1'  # no frames at all: none of them is the cell's
    exited = channel.run_code("e", "raise SystemExit(3)")
    assert exited.error is not None and (exited.error.ename, exited.state) == ("SystemExit", "kept")
    assert channel.run_code("e", "f.__name__").text == "'f'"  # all of that kept the state


RICH = '''
class Rich:
    def _repr_html_(self):
        return "<b>rich</b>"
    def _repr_png_(self):
        return b"\\x89PNG\\r\\n"
    def _repr_json_(self):
        return {"a": [1, 2]}
    def _repr_latex_(self):
        raise RuntimeError("no latex today")
    def __repr__(self):
        return "Rich()"

class Bundled:
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/markdown": "*b*", "image/svg+xml": "<svg/>"}, {"image/svg+xml": {"isolated": True}}

class Claims:  # every attribute exists: no formats, as in IPython
    def __getattr__(self, name):
        return lambda *args, **kwargs: "<i>no</i>"
    def __repr__(self):
        return "Claims()"
'''


def test_display_outputs_and_rich_results_are_jupyter_mime_bundles(channel: Channel) -> None:
    channel.run_code("d", RICH)
    seen: list[dict[str, Any]] = []
    result = channel.run_code("d", "display(1, Rich)\ndisplay({'text/plain': 'raw', 'image/png': b'PNG'}, raw=True)\n"
                                   "display(Bundled(), Claims())\nRich()", on_display=seen.append)
    assert result.status == "ok" and seen == result.displays
    assert result.displays == [
        {"text/plain": "1"}, {"text/plain": "<class '__main__.Rich'>"}, {"text/plain": "raw", "image/png": b"PNG"},
        {"text/markdown": "*b*", "image/svg+xml": "<svg/>", "text/plain": repr_of_bundled(result)},
        {"text/plain": "Claims()"}]
    assert result.data == {"text/html": "<b>rich</b>", "image/png": b"\x89PNG\r\n", "application/json": '{"a": [1, 2]}',
                           "text/plain": "Rich()"}
    assert result.text == "Rich()"
    assert "Rich._repr_latex_() raised RuntimeError: no latex today" in result.stderr  # the others still apply
    outputs = result.outputs()
    assert outputs[0] == {"output_type": "stream", "name": "stderr", "text": result.stderr}
    assert outputs[3]["data"] == {"text/plain": "raw", "image/png": base64.b64encode(b"PNG").decode()}
    assert outputs[-1] == {"output_type": "execute_result", "execution_count": 2, "metadata": {}, "data": {
        "text/html": "<b>rich</b>", "image/png": base64.b64encode(b"\x89PNG\r\n").decode(),
        "application/json": {"a": [1, 2]}, "text/plain": "Rich()"}}


def repr_of_bundled(result: CodeResult) -> str:
    text = result.displays[3]["text/plain"]
    assert isinstance(text, str) and text.startswith("<__main__.Bundled object at 0x")
    return text


def test_output_streams_as_it_arrives_and_writes_to_fds_1_and_2_are_output(channel: Channel) -> None:
    arrived: list[tuple[float, str]] = []
    started = time.monotonic()
    result = channel.run_code("o", "import os, subprocess, sys, time\nprint('first')\ntime.sleep(0.5)\n"
                                   "os.write(1, b'\\x00\\x00\\x00\\x07{bogus}\\n')\nos.write(2, b'raw err\\n')\n"
                                   "subprocess.run(['sh', '-c', 'echo from a child'])\n'done'",
                              on_stdout=lambda text: arrived.append((time.monotonic(), text)))
    ended = time.monotonic()
    assert result.status == "ok" and result.text == "'done'"
    assert result.stdout == "first\n\x00\x00\x00\x07{bogus}\nfrom a child\n" and result.stderr == "raw err\n"
    assert arrived[0][1].startswith("first") and arrived[0][0] - started < ended - started - 0.3  # not at the end
    assert channel.run_code("o", "1 + 1").text == "2"  # the bytes that look like protocol were only output


def test_a_fork_made_in_a_cell_does_not_answer_for_it(channel: Channel) -> None:
    result = channel.run_code("f", "import os\npid = os.fork()\nif pid == 0:\n    print('child', flush=True)\n"
                                   "else:\n    os.waitpid(pid, 0)\n'parent'")
    assert (result.status, result.text, result.stdout) == ("ok", "'parent'", "child\n")
    assert channel.run_code("f", "pid > 0").text == "True"


def test_a_timeout_interrupts_the_cell_kills_what_it_started_and_keeps_the_state(channel: Channel,
                                                                                 tmp_path: Path) -> None:
    channel.run_code("t", "kept = 'yes'")
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    result = channel.run_code("t", f"import subprocess\nchild = subprocess.Popen(['sleep', '60'], "
                                   f"start_new_session=True)\nopen({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                                   "while True:\n    pass", timeout=1)
    assert time.monotonic() - started < 10
    assert (result.status, result.state) == ("timeout", "kept")
    assert result.error is not None and result.error.ename == "KeyboardInterrupt"
    assert '  File "<cell-2>", line ' in result.error.traceback[1]
    assert wait_gone(int(pid_file.read_text()), within=5)  # what the interrupted cell started ended with it
    after = channel.run_code("t", "kept")
    assert (after.text, after.execution_count) == ("'yes'", 3)


def test_a_cell_that_ignores_the_interrupt_is_killed_and_the_context_starts_afresh(channel: Channel) -> None:
    channel.run_code("i", "a = 1")
    old = interpreter_pid(channel, "i")
    started = time.monotonic()
    result = channel.run_code("i", "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n"
                                   "    pass", timeout=1)
    took = time.monotonic() - started
    assert (result.status, result.state) == ("timeout", "lost") and 2.5 < took < 20  # 1 s, then 2 s of grace
    assert result.error is not None and result.error.ename == "TimeoutError" and "1s" in result.error.evalue
    assert wait_gone(old)
    fresh = channel.run_code("i", "a")
    assert fresh.error is not None and fresh.error.ename == "NameError" and fresh.execution_count == 1


@pytest.mark.parametrize(("code", "said"), [
    ("import os, signal\nprint('bye', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)", "signal 9 (SIGKILL"),
    ("import os\nprint('bye', flush=True)\nos._exit(3)", "exited with status 3"),
])
def test_a_cell_that_kills_its_interpreter_loses_the_state_and_the_next_cell_starts_fresh(
        channel: Channel, code: str, said: str) -> None:
    channel.run_code("k", "a = 1")
    result = channel.run_code("k", code)
    assert (result.status, result.state, result.stdout) == ("lost", "lost", "bye\n")
    assert result.error is not None and result.error.ename == "InterpreterExited" and said in result.error.evalue
    fresh = channel.run_code("k", "a")
    assert fresh.error is not None and fresh.error.ename == "NameError" and fresh.execution_count == 1
    assert channel.run_code("k", "a = 2\na").text == "2"


def test_a_thousand_small_cells_in_a_row(channel: Channel) -> None:
    channel.run_code("n", "i = 0")
    started = time.monotonic()
    for _ in range(1000):
        assert channel.run_code("n", "i += 1").status == "ok"
    took = time.monotonic() - started
    assert channel.run_code("n", "i").text == "1000"
    assert took < 30, f"1000 cells took {took:.1f}s"  # about 1 ms each here, unloaded


def test_restart_and_close_end_the_interpreter_and_its_processes(open_channel: Callable[..., tuple[Channel,
                                                                                                   LocalAgent]],
                                                                 tmp_path: Path) -> None:
    channel, agent = open_channel()
    channel.run_code("r", "a = 1")
    first = interpreter_pid(channel, "r")
    channel.restart_code_context("r")
    assert wait_gone(first, within=5)
    fresh = channel.run_code("r", "a")
    assert fresh.error is not None and fresh.error.ename == "NameError" and fresh.execution_count == 1
    pid_file = tmp_path / "server.pid"
    channel.run_code("r", f"import subprocess\nserver = subprocess.Popen(['sleep', '60'])\n"
                          f"open({str(pid_file)!r}, 'w').write(str(server.pid))")
    second, server = interpreter_pid(channel, "r"), int(pid_file.read_text())
    channel.close_code_context("r")
    assert wait_gone(second, within=5) and wait_gone(server, within=5)
    channel.close_code_context("never-opened")  # nothing to do
    assert channel.run_code("r", "a = 3\na").text == "3"  # opened again
    third = interpreter_pid(channel, "r")
    channel.close()  # the end of the channel ends its contexts, and the agent
    assert wait_gone(third, within=5) and agent.proc.wait(timeout=10) == 0


def test_cells_of_one_context_take_turns_and_other_contexts_run_meanwhile(channel: Channel) -> None:
    channel.run_code("busy", "import time")
    channel.run_code("other", "'opened'")
    results: list[CodeResult] = []

    def slow() -> None:
        results.append(channel.run_code("busy", "time.sleep(0.5)\n'slow'"))

    threads = [threading.Thread(target=slow) for _ in range(2)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    assert channel.run_code("other", "'quick'").text == "'quick'"
    assert time.monotonic() - started < 0.9  # not behind the busy context's cells
    for thread in threads:
        thread.join(30)
    assert [r.text for r in results] == ["'slow'", "'slow'"]
    assert sorted(r.execution_count for r in results) == [2, 3]


def test_an_interrupt_on_the_client_side_interrupts_the_cell(channel: Channel) -> None:
    channel.run_code("ki", "kept = True")

    def interrupt(_text: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        channel.run_code("ki", "import time\nprint('go', flush=True)\nwhile True:\n    time.sleep(0.01)",
                         on_stdout=interrupt)
    assert channel.run_code("ki", "kept").text == "True"  # the cell was interrupted, the state kept

    def fail(_text: str) -> None:
        raise ValueError("a callback that fails")

    with pytest.raises(ValueError, match="a callback that fails"):  # the cell floods: nobody reads it any more
        channel.run_code("ki", "while True:\n    print('x' * 1000)", on_stdout=fail)
    assert channel.run_code("ki", "kept").text == "True"


def test_large_values_and_display_outputs_fit_the_frames_and_the_window(channel: Channel) -> None:
    big = channel.run_code("big", "'x' * 3_000_000")
    assert big.text is not None and big.text.startswith("'xxx") and big.text.endswith("more characters]")
    assert len(big.text) < 200_000
    # Eight display outputs of about 700 kB each: more than the window of 1 MiB, so each waits for credit.
    seen: list[int] = []
    flood = channel.run_code("big", "import os\nfor _ in range(8):\n    display({'image/png': os.urandom(500_000)}, "
                                    "raw=True)", on_display=lambda bundle: seen.append(len(bundle["image/png"])))
    assert flood.status == "ok" and seen == [500_000] * 8 and len(flood.displays) == 8
    too_big = channel.run_code("big", "display({'image/png': b'x' * 2_000_000, 'text/plain': 'a picture'}, raw=True)")
    (shown,) = too_big.displays
    assert "image/png" not in shown and str(shown["text/plain"]).startswith("a picture\n[left out")
    capped = channel.run_code("big", "print('y' * 5000)\nfor _ in range(3):\n    display({'image/png': b'z' * 3000}, "
                                     "raw=True)", max_output=4096)
    assert len(capped.stdout_bytes) == 4096 and capped.stdout_dropped == 5001 - 4096
    assert len(capped.displays) == 1 and capped.displays_dropped == 2 and capped.truncated


def test_what_an_unusual_cell_makes_still_fits_what_the_agent_accepts(channel: Channel) -> None:
    """Each of these, sent as it is, would be refused by the agent and lose the context."""
    long_name = channel.run_code("u", "raise type('E' * 2000, (Exception,), {})('long')")
    assert long_name.error is not None and long_name.error.ename.startswith("EEE") and long_name.state == "kept"
    assert len(long_name.error.ename) < p.MAX_ENAME
    no_name = channel.run_code("u", "raise type('', (Exception,), {})('nameless')")
    assert no_name.error is not None and (no_name.error.ename, no_name.error.evalue) == ("Exception", "nameless")
    deep = channel.run_code("u", "m = {}\nfor _ in range(100):\n    m = {'m': m}\ndisplay('deep', metadata=m)")
    assert deep.status == "ok" and deep.displays == [{"text/plain": "'deep'"}]
    many = channel.run_code("u", "class Many:\n    def _repr_mimebundle_(self, **kwargs):\n"
                                 "        return {f'text/x-{n}': 'x' for n in range(100)}\nMany()")
    assert many.status == "ok" and len(many.data) == p.MAX_MIME_ENTRIES
    assert "text/x-99 (a type too many)" in str(many.text)
    assert channel.run_code("u", "1").execution_count == 5  # one interpreter all along


def test_refusals_name_the_reason(open_channel: Callable[..., tuple[Channel, LocalAgent]]) -> None:
    channel, _ = open_channel()
    with pytest.raises(errors.ExecError) as above:
        channel.run_code("l", "1", timeout=60)
    assert above.value.reason == "LimitAboveSandbox" and "SANDBOX_COMMAND_TIMEOUT" in above.value.message
    with pytest.raises(errors.ExecError) as no_python:
        channel.run_code("np", "1", env={"PATH": "/nonexistent"})
    assert no_python.value.reason == "InterpreterFailed" and "python3: command not found" in no_python.value.message
    assert channel.run_code("np", "1").text == "1"  # not opened, so opened again (with the sandbox's $PATH)
    with pytest.raises(ValueError, match="context must be"):
        channel.run_code("no spaces", "1")
    with pytest.raises(ValueError, match="timeout must be"):
        channel.run_code("l", "1", timeout=-1)
    assert channel.usable


# --- a hostile cell: what it writes to the protocol's pipe ends its context, never the channel ------------------------

@pytest.mark.parametrize(("forgery", "problem"), [
    ("os.write(4, b'\\x00\\x00\\x00\\x03abc')", "broke its protocol (Expecting value"),
    ("os.write(4, b'\\xff\\xff\\xff\\xff')", "at most 1048576"),
    ("send({'type': 'display', 'cell': display.__self__.cell, 'data': {'image/png': '!!'}, 'metadata': {}})",
     "the image/png entry is not base64"),
    ("send({'type': 'result', 'cell': display.__self__.cell, 'status': 'ok', 'data': {}, 'error': {}})",
     "a result is ok"),
    ("send({'type': 'display', 'cell': display.__self__.cell, 'data': {}, 'metadata': {'a': float('nan')}})",
     "NaN is not JSON"),
    ("os.close(4)", "closed its replies pipe"),
], ids=["not-json", "huge-length", "bad-base64", "inconsistent-result", "nan", "closed"])
def test_a_cell_that_forges_protocol_loses_its_context_and_the_channel_goes_on(channel: Channel, forgery: str,
                                                                               problem: str) -> None:
    channel.run_code("other", "still = 'here'")
    channel.run_code("h", "import json, os, struct\ndef send(message):\n    data = json.dumps(message).encode()\n"
                          "    os.write(4, struct.pack('>I', len(data)) + data)")
    result = channel.run_code("h", f"{forgery}\nimport time\ntime.sleep(30)", timeout=20)
    assert (result.status, result.state) == ("lost", "lost")
    assert result.error is not None and result.error.ename == "ProtocolError" and problem in result.error.evalue
    assert channel.usable and channel.run_code("other", "still").text == "'here'"
    assert channel.run_code("h", "1").execution_count == 1


def test_a_forged_message_for_another_cell_is_dropped(channel: Channel) -> None:
    result = channel.run_code("g", "import json, os, struct\nmessage = json.dumps({'type': 'result', 'cell': 99, "
                                   "'status': 'ok', 'data': {'text/plain': 'forged'}, 'error': None}).encode()\n"
                                   "os.write(4, struct.pack('>I', len(message)) + message)\n'real'")
    assert (result.status, result.text) == ("ok", "'real'")


# --- a hostile agent: what the client accepts --------------------------------------------------------------------

def display_frame(stream: int, **report: Any) -> bytes:
    body = {"data": {"text/plain": "x"}, "metadata": {}, **report}
    return p.encode(p.DISPLAY, stream, json.dumps(body).encode())


def result_frame(stream: int, **report: Any) -> bytes:
    body = {"status": "ok", "execution_count": 1, "text": None, "data": {}, "error": None, "state": "kept", **report}
    return p.encode(p.RESULT, stream, json.dumps(body).encode())


def scripted(answer: Callable[[int], bytes]) -> Channel:
    def respond(frame: p.Frame) -> bytes:
        if frame.kind in (p.CODE_OPEN, p.CODE_CLOSE, p.CODE_RESTART):
            return p.encode(p.RESULT, frame.stream, b"{}")
        return answer(frame.stream) if frame.kind in (p.CODE_RUN, p.RUN) else b""

    return Channel(ScriptedAgent(respond), ping_interval=5)


@pytest.mark.parametrize(("answer", "problem"), [
    (lambda s: display_frame(s, data={"image/png": "not base64!"}), "DISPLAY.*base64"),
    (lambda s: display_frame(s, data={"text plain": "x"}), "DISPLAY.*MIME type"),
    (lambda s: display_frame(s, data={f"a/{n}": "x" for n in range(65)}), "DISPLAY.*at most 64"),
    (lambda s: display_frame(s, surprise=1), "DISPLAY"),
    (lambda s: result_frame(s, error={"ename": "E", "evalue": "", "traceback": []}), "RESULT.*ok"),
    (lambda s: result_frame(s, status="lost", error={"ename": "E", "evalue": "", "traceback": []}),
     "RESULT.*state"),
    (lambda s: result_frame(s, status="error", error={"ename": "", "evalue": "", "traceback": []}), "RESULT"),
    (lambda s: result_frame(s, execution_count=True), "RESULT"),
    (lambda s: result_frame(s, text="\ud800", data={"text/plain": "x"}), "RESULT"),
    (lambda s: p.encode(p.RESULT, s, b'{"status": NaN}'), "RESULT"),
    (lambda s: struct.pack(">BBII", p.MAGIC, p.RESULT, s, p.MAX_PAYLOAD + 1), "at most"),
    (lambda s: exit_frame(s), "EXIT on code stream"),
], ids=["bad-base64", "bad-mime", "too-many-types", "extra-field", "ok-with-error",
        "lost-but-kept", "empty-ename", "bool-count", "lone-surrogate", "nan", "oversized", "exit"])
def test_a_hostile_agent_breaks_the_channel_on_a_cell(answer: Callable[[int], bytes], problem: str) -> None:
    channel = scripted(answer)
    with pytest.raises(errors.ChannelBroken, match=problem) as broken:
        channel.run_code("c", "1")
    assert broken.value.reason == "ProtocolError" and not channel.usable


def test_display_outputs_count_against_the_window() -> None:
    """What the agent sends before the client grants more is bounded: a display output beyond the window is refused
    before it is parsed (a scripted agent could not show this reliably: the caller may grant credit meanwhile)."""
    turn = threading.Lock()
    turn.acquire()
    stream = ChannelCodeRun(scripted(lambda s: b""), "c", max_output=0, client_deadline=None, turn=turn)
    stream.id = 7
    picture = display_frame(7, data={"image/png": "x" * 700_000})[p.HEADER.size:]
    stream.feed(p.Frame(p.DISPLAY, 7, picture))
    with pytest.raises(p.ProtocolError, match=f"{len(picture)} bytes of output on stream 7 with a window of "
                                              f"{p.WINDOW - len(picture)}"):
        stream.feed(p.Frame(p.DISPLAY, 7, picture))
    assert len(stream.inbox) == 1


@pytest.mark.parametrize("answer", [lambda s: display_frame(s), lambda s: result_frame(s)], ids=["display", "result"])
def test_code_frames_on_a_command_stream_break_the_channel(answer: Callable[[int], bytes]) -> None:
    channel = scripted(answer)
    with pytest.raises(errors.ChannelBroken, match="on command stream"):
        channel.run(["true"])


def test_a_large_result_is_only_for_a_cell() -> None:
    def respond(frame: p.Frame) -> bytes:
        return p.encode(p.RESULT, frame.stream, json.dumps({"entry": "x" * 70_000}).encode())

    channel = Channel(ScriptedAgent(respond), ping_interval=5)
    with pytest.raises(errors.ChannelBroken, match="at most 65536"):
        channel.stat("/workspace/x")


@pytest.mark.parametrize("kind", [p.DISPLAY, p.RESULT])
def test_a_code_frame_larger_than_a_frame_is_refused_before_its_payload_is_read(kind: int) -> None:
    source = io.BytesIO(struct.pack(">BBII", p.MAGIC, kind, 1, p.MAX_PAYLOAD + 1) + b"x" * 4096)
    asked: list[int] = []

    def read(n: int) -> bytes:
        asked.append(n)
        return source.read(min(n, 10))

    with pytest.raises(p.ProtocolError, match="at most"):
        p.FrameReader(read, chunk=10).next()
    assert sum(asked) < 100  # the header, and nothing of the payload


def test_a_scripted_cell_with_everything_in_it() -> None:
    png = base64.b64encode(b"\x89PNG").decode()

    def answer(stream: int) -> bytes:
        return (p.encode(p.STDOUT, stream, b"out\n") + display_frame(stream, data={"image/png": png})
                + result_frame(stream, status="timeout", state="lost", execution_count=7,
                               error={"ename": "TimeoutError", "evalue": "killed", "traceback": []}))

    result = scripted(answer).run_code("c", "1")
    assert (result.status, result.state, result.execution_count, result.stdout) == ("timeout", "lost", 7, "out\n")
    assert result.displays == [{"image/png": b"\x89PNG"}] and str(result.error) == "TimeoutError: killed"


# --- the SDK: Sandbox.run_code, code_context(), sandboxctl run-code ----------------------------------------------

@pytest.fixture
def code_opener(agent_env: dict[str, str]) -> Iterator[Opener]:
    made = Opener(agent_env)
    yield made
    made.stop()


def test_run_code_keeps_a_default_context_per_sandbox_and_records_activity(code_opener: Opener) -> None:
    sandbox, activity, _ = make_sandbox(code_opener)
    assert sandbox.run_code("x = 41").ok
    assert activity.touches >= 1 and activity.holds == 1 and activity.held == 0
    other_handle = type(sandbox)(sandbox.manager, sandbox.name, sandbox.namespace)
    assert other_handle.run_code("x + 1").text == "42"  # the same default context
    assert sandbox.run_code("x", context="default").text == "41"
    sandbox.manager.close()


def test_a_code_context_of_its_own_is_closed_at_the_end(code_opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(code_opener)
    sandbox.run_code("x = 'default'")
    with sandbox.code_context(env={"MARK": "mine"}) as context:
        assert context.run("import os\nos.environ['MARK']").text == "'mine'"
        assert context.run("x").status == "error"
        pid = int(str(context.run("os.getpid()").text))
        context.restart()
        assert context.run("os").status == "error"  # a fresh namespace
        assert wait_gone(pid, within=5)
        pid = int(str(context.run("import os\nos.getpid()").text))
    assert wait_gone(pid, within=5)
    assert sandbox.run_code("x").text == "'default'"
    sandbox.manager.close()


def test_a_new_channel_starts_the_contexts_afresh(code_opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(code_opener)
    sandbox.run_code("x = 1")
    code_opener.agents[0].stop()
    deadline = time.monotonic() + 10
    while code_opener.channels[0].usable and time.monotonic() < deadline:
        time.sleep(0.01)
    fresh = sandbox.run_code("x")
    assert fresh.error is not None and fresh.error.ename == "NameError" and fresh.execution_count == 1
    assert code_opener.count == 2
    sandbox.manager.close()


def test_run_code_needs_the_channel(agent_env: dict[str, str], code_opener: Opener) -> None:
    sandbox, _, _ = make_sandbox(code_opener, transport="exec")
    with pytest.raises(errors.AgentUnavailable, match=r"transport is 'exec'.*SANDBOX_EXEC_TRANSPORT") as setting:
        sandbox.run_code("1")
    assert setting.value.reason == "ExecTransport" and code_opener.count == 0
    missing = Opener(agent_env, fail=errors.AgentUnavailable("no /usr/local/bin/sandbox-agent", reason="AgentMissing"))
    without_agent, _, _ = make_sandbox(missing)
    with pytest.raises(errors.AgentUnavailable, match="image has none: no /usr/local/bin/sandbox-agent") as none:
        without_agent.run_code("1")
    assert none.value.reason == "AgentMissing"


def test_sandboxctl_run_code_prints_the_outputs(code_opener: Opener, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    sandbox, _, _ = make_sandbox(code_opener)
    monkeypatch.setattr(cli.Context, "sandbox", lambda self, name: sandbox)
    first, second = tmp_path / "first.py", tmp_path / "second.py"
    first.write_text("x = 6\nprint('set')")
    second.write_text("display({'image/png': b'PNG', 'text/plain': 'a figure'}, raw=True)\nx * 7")
    assert cli.main(["run-code", "box", "-f", str(first), "-f", str(second)]) == 0
    assert capsys.readouterr().out == "set\na figure\n[image/png: 3 bytes]\n42\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1 / 0")))
    assert cli.main(["run-code", "box", "-c", "other"]) == cli.EXIT_CODE_RAISED
    printed = capsys.readouterr()
    assert printed.err.endswith("ZeroDivisionError: division by zero\n") and "<cell-1>" in printed.err
    second.write_text("x * 7")
    assert cli.main(["run-code", "box", "-f", str(second), "-o", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "ok" and report["outputs"] == [
        {"output_type": "execute_result", "execution_count": 3, "data": {"text/plain": "42"}, "metadata": {}}]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"while True:\n    pass")))
    assert cli.main(["run-code", "box", "-t", "0.5", "-f", "-"]) == cli.EXIT_CODE_TIMEOUT
    assert capsys.readouterr().err.endswith("KeyboardInterrupt\n")
    sandbox.manager.close()

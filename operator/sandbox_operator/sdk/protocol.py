"""The channel protocol (docs/channel.md): frames between the SDK and the sandbox's agent, parsed as hostile.

A frame is a 10-byte header, ``magic (0xA7), type, stream id (u32), payload length (u32)``, big-endian, then the
payload: at most :data:`MAX_PAYLOAD` bytes, raw for data, one JSON object for control. Stream 0 is the channel's
own (HELLO, PING, PONG, a fatal ERROR); the client numbers every request with a new, higher stream id. Data on a
stream is flow-controlled both ways: at most :data:`WINDOW` bytes beyond what the receiver granted back with
CREDIT frames.

The in-image agent (images/sandbox/bin/sandbox-agent) cannot import this module, so it repeats these values;
``tests/unit/test_channel.py`` checks that they are the same.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from sandbox_operator.sdk.files import FileInfo, ToolErrorReport, strict_json
from sandbox_operator.sdk.text import escape_control

PROTOCOL_VERSION: Final = 1
MAGIC: Final = 0xA7
HEADER: Final = struct.Struct(">BBII")
MAX_PAYLOAD: Final = 1 << 20
WINDOW: Final = 1 << 20
MAX_PING: Final = 64
# What the client accepts as a JSON answer (HELLO, EXIT, RESULT, ERROR): they are small.
MAX_CONTROL: Final = 64 * 1024

HELLO: Final = 0x01
PING: Final = 0x02
PONG: Final = 0x03
RUN: Final = 0x10
FILE: Final = 0x11
SIGNAL: Final = 0x12
INPUT: Final = 0x13
INPUT_END: Final = 0x14
CANCEL: Final = 0x15
CREDIT: Final = 0x16
CODE_OPEN: Final = 0x17
CODE_RUN: Final = 0x18
CODE_RESTART: Final = 0x19
CODE_CLOSE: Final = 0x1A
STDOUT: Final = 0x20
STDERR: Final = 0x21
EXIT: Final = 0x22
RESULT: Final = 0x23
ERROR: Final = 0x24
DISPLAY: Final = 0x25

FRAME_NAMES: Final = {
    HELLO: "HELLO", PING: "PING", PONG: "PONG", RUN: "RUN", FILE: "FILE", SIGNAL: "SIGNAL", INPUT: "INPUT",
    INPUT_END: "INPUT_END", CANCEL: "CANCEL", CREDIT: "CREDIT", CODE_OPEN: "CODE_OPEN", CODE_RUN: "CODE_RUN",
    CODE_RESTART: "CODE_RESTART", CODE_CLOSE: "CODE_CLOSE", STDOUT: "STDOUT", STDERR: "STDERR", EXIT: "EXIT",
    RESULT: "RESULT", ERROR: "ERROR", DISPLAY: "DISPLAY",
}
# The frames an agent may send; anything else from it is a protocol error.
AGENT_FRAMES: Final = frozenset({HELLO, PONG, CREDIT, STDOUT, STDERR, EXIT, RESULT, ERROR, DISPLAY})
# Frames whose payload may take a whole frame: output, and a cell's display outputs and result (a PNG, a table's
# HTML). Any other JSON answer is small; a stream that takes RESULT only as a small answer checks that itself.
LARGE_FRAMES: Final = frozenset({STDOUT, STDERR, DISPLAY, RESULT})

M = TypeVar("M", bound=BaseModel)


class ProtocolError(Exception):
    """The agent sent something the protocol does not allow; the channel cannot be trusted any more."""


def frame_name(kind: int) -> str:
    return FRAME_NAMES.get(kind, f"type {kind:#04x}")


def encode(kind: int, stream_id: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"a frame payload is at most {MAX_PAYLOAD} bytes, not {len(payload)}")
    return HEADER.pack(MAGIC, kind, stream_id, len(payload)) + payload


def encode_credit(stream_id: int, amount: int) -> bytes:
    return encode(CREDIT, stream_id, struct.pack(">I", amount))


@dataclass(frozen=True)
class Frame:
    kind: int
    stream: int
    payload: bytes


class FrameReader:
    """Frames from a byte stream (``read(n)`` returns 1 to n bytes, or b"" at its end), one at a time. Memory
    stays bounded: a header announcing more than :data:`MAX_PAYLOAD` bytes is refused before any payload is
    read."""

    def __init__(self, read: Callable[[int], bytes], *, chunk: int = 256 * 1024) -> None:
        self._read = read
        self._chunk = chunk
        self._buffer = bytearray()
        self.received_any = False

    def _fill(self, need: int) -> bool:
        """Reads until ``need`` bytes are buffered; False at the end of the stream."""
        while len(self._buffer) < need:
            data = self._read(max(self._chunk, need - len(self._buffer)))
            if not data:
                return False
            self.received_any = True
            self._buffer += data
        return True

    def next(self) -> Frame | None:
        """The next frame; None when the stream ended cleanly between frames; ProtocolError otherwise."""
        if not self._fill(HEADER.size):
            if self._buffer:
                raise ProtocolError(f"the stream ended inside a frame header ({len(self._buffer)} bytes)")
            return None
        magic, kind, stream_id, length = HEADER.unpack_from(self._buffer)
        if magic != MAGIC:
            raise ProtocolError(f"bad magic byte {magic:#04x}; the stream began: "
                                f"{escape_control(bytes(self._buffer[:32]), limit=64)!r}")
        if kind not in AGENT_FRAMES:
            raise ProtocolError(f"unknown or misdirected frame {frame_name(kind)}")
        if length > MAX_PAYLOAD:
            raise ProtocolError(f"a {frame_name(kind)} frame of {length} bytes (at most {MAX_PAYLOAD})")
        if kind not in LARGE_FRAMES and length > MAX_CONTROL:
            raise ProtocolError(f"a {frame_name(kind)} frame of {length} bytes (at most {MAX_CONTROL})")
        if not self._fill(HEADER.size + length):
            raise ProtocolError(f"the stream ended inside a {frame_name(kind)} frame")
        payload = bytes(self._buffer[HEADER.size:HEADER.size + length])
        del self._buffer[:HEADER.size + length]
        return Frame(kind, stream_id, payload)


# Payloads ----------------------------------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


class Hello(BaseModel):
    """The agent's first frame. Fields beyond these are allowed (a newer agent may say more)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    protocol: int
    agent: str = Field(max_length=100)
    pid: int = Field(ge=1)
    window: int = Field(ge=1)
    max_payload: int = Field(ge=1)


class ExitReport(_Strict):
    exit_code: int = Field(ge=0, le=255)
    timed_out: bool
    cpu_seconds: float = Field(ge=0, allow_inf_nan=False)
    peak_rss_bytes: int = Field(ge=0)


class EmptyResult(_Strict):
    pass


class StatResult(_Strict):
    entry: FileInfo


class ExistsResult(_Strict):
    exists: bool


class SignalResult(_Strict):
    signalled: int = Field(ge=0)


# Code contexts: what a cell's display outputs and result may hold. The agent holds its interpreters' messages to the
# same limits (images/sandbox/bin/sandbox-agent; tests/unit/test_code.py compares them), so that nothing a cell does
# makes it send what breaks the channel.
MAX_MIME_ENTRIES: Final = 64
MAX_MIME_TYPE: Final = 127
MIME_CHARACTERS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.+-_")
MAX_ENAME: Final = 1024
MAX_EVALUE: Final = 64 * 1024
MAX_TRACEBACK: Final = 1000
MAX_TRACEBACK_ENTRY: Final = 64 * 1024


def is_mime_type(name: str) -> bool:
    """``type/subtype`` of letters, digits and ``. + - _``, at most 127 characters."""
    if len(name) > MAX_MIME_TYPE:
        return False
    major, slash, minor = name.partition("/")
    return bool(slash and major and minor and set(major) <= MIME_CHARACTERS and set(minor) <= MIME_CHARACTERS)


def is_binary_mime(mime: str) -> bool:
    """Whether a bundle's entry of this type is base64 (Jupyter's rule: images but SVG, audio, video, PDF)."""
    major, _, minor = mime.partition("/")
    return (major in ("image", "audio", "video") and not minor.endswith("+xml")) or mime == "application/pdf"


def _text(value: str) -> str:
    value.encode("utf-8")  # a lone surrogate (a \ud800 escape) is no text: UnicodeEncodeError, a ValueError
    return value


def _bundle(data: dict[str, str]) -> dict[str, str]:
    if len(data) > MAX_MIME_ENTRIES:
        raise ValueError(f"{len(data)} MIME types (at most {MAX_MIME_ENTRIES})")
    for mime, entry in data.items():
        if not is_mime_type(mime):
            raise ValueError(f"{escape_control(mime, limit=40)!r} is not a MIME type")
        _text(entry)
        if is_binary_mime(mime):
            try:
                base64.b64decode(entry, validate=True)
            except binascii.Error:
                raise ValueError(f"the {mime} entry is not base64") from None
    return data


Text = Annotated[str, AfterValidator(_text)]
MimeData = Annotated[dict[str, str], AfterValidator(_bundle)]


class CodeErrorReport(_Strict):
    ename: Text = Field(min_length=1, max_length=MAX_ENAME)
    evalue: Text = Field(max_length=MAX_EVALUE)
    traceback: list[Annotated[Text, Field(max_length=MAX_TRACEBACK_ENTRY)]] = Field(max_length=MAX_TRACEBACK)


class DisplayReport(_Strict):
    """A DISPLAY frame: one display output, a Jupyter MIME bundle (binary types in base64)."""

    data: MimeData
    metadata: dict[str, Any]


class CodeRunReport(_Strict):
    """The RESULT of a cell."""

    status: Literal["ok", "error", "timeout", "lost"]
    execution_count: int = Field(ge=0)
    text: Text | None
    data: MimeData
    error: CodeErrorReport | None
    state: Literal["kept", "lost"]

    @model_validator(mode="after")
    def _consistent(self) -> CodeRunReport:
        if (self.status == "ok") != (self.error is None):
            raise ValueError("a cell that ran is ok without an error, and has one otherwise")
        if self.status != "timeout" and (self.state == "lost") != (self.status == "lost"):  # a timeout: either
            raise ValueError(f"status {self.status!r} with state {self.state!r}")
        return self


def parse_payload(model: type[M], payload: bytes, what: str) -> M:
    """One strict JSON object of ``model``'s shape; ProtocolError naming ``what`` otherwise."""
    try:
        value: Any = strict_json(payload)
        return model.model_validate(value)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'value'}: {e['msg']}"
                             for e in exc.errors()[:3])
        raise ProtocolError(f"invalid {what}: {escape_control(problems, limit=300)}") from None
    except Exception as exc:  # strict_json's own refusal (not UTF-8, not one document, duplicate keys, ...)
        raise ProtocolError(f"invalid {what}: {escape_control(str(exc), limit=300)}") from None


def parse_error(payload: bytes) -> ToolErrorReport:
    return parse_payload(ToolErrorReport, payload, "ERROR")

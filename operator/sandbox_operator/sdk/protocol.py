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

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
STDOUT: Final = 0x20
STDERR: Final = 0x21
EXIT: Final = 0x22
RESULT: Final = 0x23
ERROR: Final = 0x24

FRAME_NAMES: Final = {
    HELLO: "HELLO", PING: "PING", PONG: "PONG", RUN: "RUN", FILE: "FILE", SIGNAL: "SIGNAL", INPUT: "INPUT",
    INPUT_END: "INPUT_END", CANCEL: "CANCEL", CREDIT: "CREDIT", STDOUT: "STDOUT", STDERR: "STDERR", EXIT: "EXIT",
    RESULT: "RESULT", ERROR: "ERROR",
}
# The frames an agent may send; anything else from it is a protocol error.
AGENT_FRAMES: Final = frozenset({HELLO, PONG, CREDIT, STDOUT, STDERR, EXIT, RESULT, ERROR})

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
        if kind not in (STDOUT, STDERR) and length > MAX_CONTROL:
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

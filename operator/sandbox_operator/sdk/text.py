"""Showing text that came from a sandbox or the cluster without letting it act on a terminal or a log.

A file name, an event message or a tool's error text may hold escape sequences (``ESC[2J`` clears a screen,
``ESC]0;...BEL`` retitles a window) or line breaks that forge extra lines. :func:`escape_control` turns every
such character into a visible escape, so the text is shown, never obeyed.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Bidirectional overrides and isolates reorder what follows them on screen (a name can look like another).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escaped(char: str) -> str | None:
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if code < 0x20 or 0x7F <= code <= 0x9F:  # C0, DEL, C1 (ESC included)
        return f"\\x{code:02x}"
    if char in _BIDI or 0xD800 <= code <= 0xDFFF:  # lone surrogates come from undecodable bytes
        return f"\\u{code:04x}"
    return None


def escape_control(text: str | bytes, *, limit: int | None = None) -> str:
    """``text`` with control characters shown as ``\\n``, ``\\r``, ``\\t`` or ``\\xNN`` (C0, DEL, C1, ESC),
    and bidirectional controls as ``\\uNNNN``; the result is always one line.

    Bytes are decoded as UTF-8, invalid bytes shown as ``\\xNN``. With ``limit``, at most that many characters
    of the input are shown, followed by ``...`` when there were more.
    """
    more = False
    if isinstance(text, bytes | bytearray | memoryview):
        raw = bytes(text if limit is None else text[:limit * 4])  # no need to decode what is not shown
        more = limit is not None and len(text) > len(raw)
        text = raw.decode("utf-8", "backslashreplace")
    shown = text if limit is None else text[:limit]
    out = []
    for char in shown:
        escaped = _escaped(char)
        out.append(char if escaped is None else escaped)
    if more or len(shown) < len(text):
        out.append("...")
    return "".join(out)

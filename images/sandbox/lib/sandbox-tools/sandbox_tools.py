"""What the sandbox image's Python tools (sandbox-exec, sandbox-files) share: stdlib only.

Installed as /usr/local/lib/sandbox-tools/sandbox_tools.py (root-owned, read-only); each tool adds that
directory, ../lib/sandbox-tools next to its own, to sys.path, so the same layout works from the repository.
"""

from __future__ import annotations

import resource

UNLIMITED = "unlimited"
_MULTIPLIERS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_bytes(text: str, what: str, *, unlimited: bool = False) -> int:
    """A number of bytes, optionally with a Kubernetes-style suffix (``1Gi``, ``500M``); with ``unlimited``,
    the word "unlimited" is ``resource.RLIM_INFINITY``. ValueError naming ``what`` otherwise."""
    if unlimited and text == UNLIMITED:
        return resource.RLIM_INFINITY
    stripped = text.strip()
    digits = stripped.rstrip("kKMGTi")
    suffix = stripped[len(digits):]
    if not digits.isdigit() or not digits.isascii() or suffix not in _MULTIPLIERS:
        expected = "bytes (e.g. 1073741824 or 1Gi)" + (f" or {UNLIMITED!r}" if unlimited else "")
        raise ValueError(f"invalid {what} {text!r}: expected {expected}")
    return int(digits) * _MULTIPLIERS[suffix]

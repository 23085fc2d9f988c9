"""Timestamps as Kubernetes writes them (``metav1.Time``): RFC 3339, UTC, second precision.

One reading and one writing rule for the operator, the SDK and the CLI alike: a time without a zone is not an
RFC 3339 time, so it is refused (None when parsing), never guessed.
"""

from __future__ import annotations

import datetime
from typing import Annotated

from pydantic import AfterValidator, PlainSerializer, WithJsonSchema


def utc_seconds(value: datetime.datetime) -> datetime.datetime:
    """``value`` in UTC without its fraction of a second; ValueError for a time without a zone."""
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone")
    return value.astimezone(datetime.UTC).replace(microsecond=0)


def format_time(value: datetime.datetime) -> str:
    """``2026-11-28T01:02:03Z``."""
    return utc_seconds(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object) -> datetime.datetime | None:
    """A timestamp (``Z`` or an offset, optional fraction) as an aware datetime; None when absent, not a
    timestamp or without a zone. An aware datetime passes through."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else None
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


Time = Annotated[
    datetime.datetime,
    AfterValidator(utc_seconds),
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
"""A model field holding a ``metav1.Time``."""

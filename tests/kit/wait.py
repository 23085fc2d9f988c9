"""Waiting on state, never on time: the one poll loop of the tests and benchmarks.

Both helpers take what to poll and for how long positionally, then by keyword what is awaited (``message``, for
the failure) and how often to look (``interval``)::

    pod = wait_until(lambda: kube.pod(ns, "a"), 30, message="the pod to exist")
    consistently(lambda: kube.pod(ns, "a") is None, 5, message="no replacement pod")

A ``message`` may be a function, called only on failure, to describe the state at that moment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(AssertionError):
    """A wait ran out of time; the message names what was awaited and the predicate's last answer."""


Message = str | Callable[[], str]


def _describe(message: Message) -> str:
    return message if isinstance(message, str) else message()


def wait_until(predicate: Callable[[], T | None], timeout: float, *, message: Message, interval: float = 0.25) -> T:
    """Calls ``predicate`` until it returns something truthy and returns that value; raises
    :class:`WaitTimeoutError` after ``timeout`` seconds. The predicate may raise to give up early (say, when a
    process it waits on died)."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise WaitTimeoutError(f"timed out after {timeout:g} s waiting for {_describe(message)} (last: {last!r})")
        time.sleep(interval)


def consistently(predicate: Callable[[], object], duration: float, *, message: Message,
                 interval: float = 0.5) -> None:
    """Asserts that ``predicate`` holds on every poll for ``duration`` seconds (for "nothing happens" checks)."""
    deadline = time.monotonic() + duration
    while True:
        assert predicate(), f"{_describe(message)} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)

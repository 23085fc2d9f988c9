"""Counting handler failures for the reconcile-errors metric."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import kopf

from sandbox_operator.metrics import RECONCILE_ERRORS

P = ParamSpec("P")
R = TypeVar("R")


def counted(handler: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Counts every exception but kopf.TemporaryError (an expected wait, not an error) and re-raises it."""

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except kopf.TemporaryError:
                raise
            except kopf.PermanentError:
                RECONCILE_ERRORS.labels(handler, "permanent").inc()
                raise
            except Exception:
                RECONCILE_ERRORS.labels(handler, "unexpected").inc()
                raise

        return wrapper

    return decorate

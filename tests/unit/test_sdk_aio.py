"""The asyncio bridge: blocking streams delivered to the event loop item by item, errors and close passed on."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from sandbox_operator.sdk.aio import _bridge


class SlowStream:
    def __init__(self, items: list[str], delay: float = 0.0, error: BaseException | None = None) -> None:
        self.items = items
        self.delay = delay
        self.error = error
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[str]:
        for item in self.items:
            if self.closed.is_set():
                return
            time.sleep(self.delay)
            yield item
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed.set()


def test_items_arrive_as_produced_without_blocking_the_loop() -> None:
    async def scenario() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        got = [item async for item in _bridge(lambda: SlowStream(["a", "b", "c"], delay=0.1))]
        task.cancel()
        return got, ticks

    got, ticks = asyncio.run(scenario())
    assert got == ["a", "b", "c"]
    assert ticks >= 10  # the loop kept running while the stream blocked


def test_errors_are_raised_in_the_consumer() -> None:
    async def scenario() -> list[str]:
        out = []
        async for item in _bridge(lambda: SlowStream(["a"], error=ValueError("boom"))):
            out.append(item)
        return out

    with pytest.raises(ValueError, match="boom"):
        asyncio.run(scenario())


def test_breaking_out_closes_the_stream() -> None:
    stream = SlowStream(["a", "b", "c", "d"], delay=0.05)

    async def scenario() -> None:
        gen = _bridge(lambda: stream)
        async for _item in gen:
            break
        await gen.aclose()  # type: ignore[attr-defined]

    asyncio.run(scenario())
    assert stream.closed.is_set()

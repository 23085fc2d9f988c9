"""The end-to-end suites' one runtime switch: a module that asks for ``runtime`` (directly, or through
``namespace_fixture(..., per_runtime=True)``) runs once per runtime of ``SANDBOX_E2E_RUNTIMES``, as ``[runc]``
and ``[gvisor]`` (tests/kit/runtimes.py).

A test that cannot hold under one runtime says so with ``@pytest.mark.xfail_under("gvisor", reason=...)``: under
that runtime it is a strict xfail (it must fail; when it passes, the mark has to go). A test of the client alone,
which the sandbox's runtime cannot change, says so with ``@pytest.mark.client_side(reason=...)``: it runs under
the first runtime selected only; the others' variants are deselected (reported as such, never skipped).
"""

from __future__ import annotations

import pytest

from tests.kit import Cluster
from tests.kit.runtimes import Runtime, runtime_problem, selected_runtimes

try:
    RUNTIMES = selected_runtimes()
except ValueError as error:
    raise pytest.UsageError(str(error)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xfail_under(runtime, reason): a strict xfail of the test's [runtime] variant")
    config.addinivalue_line("markers", "client_side(reason): tests the client alone; runs under the first runtime only")


def item_runtime(item: pytest.Item) -> Runtime | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("runtime") if callspec is not None else None


def runtime_order(item: pytest.Item) -> int:
    chosen = item_runtime(item)
    return RUNTIMES.index(chosen) if chosen is not None else len(RUNTIMES)


@pytest.hookimpl(trylast=True)  # after pytest's own grouping of parametrized fixtures, which it would undo
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module's tests, one runtime after the other. Pytest groups the module-scoped parameters itself, but with
    two of them (``runtime`` and, say, the transport) it alternates between runtimes, and each switch starts the
    module's operator and sandboxes again. Each module's run of consecutive tests keeps its place."""
    client_side = [item for item in items if item.get_closest_marker("client_side") is not None
                   and item_runtime(item) not in (None, RUNTIMES[0])]
    if client_side:
        config.hook.pytest_deselected(items=client_side)
        items[:] = [item for item in items if item not in client_side]
    start = 0
    while start < len(items):
        end = start + 1
        while end < len(items) and items[end].path == items[start].path:
            end += 1
        items[start:end] = sorted(items[start:end], key=runtime_order)
        start = end
    for item in items:
        chosen = item_runtime(item)
        for mark in item.iter_markers("xfail_under"):
            if chosen is not None and chosen.name == mark.args[0]:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"under {chosen}: {mark.kwargs['reason']}"))


@pytest.fixture(scope="module", params=RUNTIMES, ids=str)
def runtime(request: pytest.FixtureRequest, cluster: Cluster) -> Runtime:
    """The runtime this module's sandboxes run under; fails (never skips) when the cluster lacks it."""
    chosen: Runtime = request.param
    problem = runtime_problem(cluster, chosen)
    if problem is not None:
        pytest.fail(f"[{chosen}] {problem}")
    return chosen

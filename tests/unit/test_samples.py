"""The samples in samples/ are valid objects of the operator's own models (the CRD's schema comes from them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sandbox_operator import constants
from sandbox_operator.models.pool import SandboxPool
from sandbox_operator.models.sandbox import Sandbox

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "samples").glob("*.yaml"))


@pytest.mark.parametrize("path", SAMPLES, ids=[path.name for path in SAMPLES])
def test_a_sample_parses_as_the_operator_reads_it(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    body["metadata"]["namespace"] = "sandboxes"
    if body["kind"] == constants.POOL_KIND:
        pool = SandboxPool.from_body(body)
        assert pool.spec.size > 0
    else:
        assert body["kind"] == constants.KIND
        Sandbox.from_body(body)


def test_the_pooled_sample_names_the_sample_pool() -> None:
    pool = yaml.safe_load((SAMPLES[0].parent / "sandboxpool.yaml").read_text())
    sandbox = Sandbox.from_body({**yaml.safe_load((SAMPLES[0].parent / "pooled-sandbox.yaml").read_text()),
                                 "metadata": {"name": "task-1", "namespace": "sandboxes"}})
    assert sandbox.spec.pool_ref is not None and sandbox.spec.pool_ref.name == pool["metadata"]["name"]

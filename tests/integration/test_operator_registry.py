"""The operator publishes which namespaces it serves on the Sandbox CRD, where a client can read it: on start,
and until a clean shutdown removes it. A killed operator's entry stays behind and goes stale by its heartbeat."""

from __future__ import annotations

import contextlib
import datetime
import socket
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from sandbox_operator import constants
from sandbox_operator.registry import RegistryEntry, fresh_entries, registry_key
from tests.integration.conftest import SandboxEnv
from tests.kit import wait_until

# A local operator process has no pod namespace (see sandbox_operator.handlers.registry).
LOCAL_NAMESPACE = "local"


def crd_annotations(env: SandboxEnv) -> dict[str, str]:
    crd = client.ApiextensionsV1Api(env.cluster.api).read_custom_resource_definition(constants.CRD_NAME)
    return dict(crd.metadata.annotations or {})


def entry_of(env: SandboxEnv, key: str) -> RegistryEntry | None:
    value = crd_annotations(env).get(key)
    return RegistryEntry.model_validate_json(value) if value is not None else None


@pytest.fixture
def registry_keys(sbx_env: SandboxEnv) -> Iterator[list[str]]:
    """Keys a test expects; whatever a failed test left behind is removed afterwards."""
    keys: list[str] = []
    yield keys
    api = client.ApiextensionsV1Api(sbx_env.cluster.api)
    for key in keys:
        with contextlib.suppress(client.ApiException):
            api.patch_custom_resource_definition(constants.CRD_NAME, {"metadata": {"annotations": {key: None}}})


def test_operator_publishes_its_namespaces_and_removes_them_on_shutdown(sbx_env: SandboxEnv,
                                                                         registry_keys: list[str]) -> None:
    env = sbx_env
    started = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    operator = env.start()
    # Without an instance name a local operator is "<host>-<pid>" in namespace "local".
    key = registry_key(LOCAL_NAMESPACE, f"{socket.gethostname()}-{operator.pid}")
    registry_keys.append(key)

    entry = wait_until(lambda: entry_of(env, key), 10, message=f"the annotation {key} on {constants.CRD_NAME}")
    assert entry.namespaces == [env.namespace]
    assert entry.version == constants.PROJECT_VERSION
    now = datetime.datetime.now(datetime.UTC)
    assert started - datetime.timedelta(seconds=5) <= entry.heartbeat <= now
    fresh = fresh_entries(crd_annotations(env), now)
    assert key in fresh and fresh[key].serves(env.namespace) and not fresh[key].serves("default")

    operator.stop()
    assert operator.proc.returncode == 0, operator.log()[-3000:]
    assert key not in crd_annotations(env), "a clean shutdown removes the operator's entry"


def test_killed_operator_leaves_its_entry_and_a_restart_takes_it_over(sbx_env: SandboxEnv,
                                                                      registry_keys: list[str]) -> None:
    env = sbx_env
    name = f"it-registry-{uuid.uuid4().hex[:6]}"
    key = registry_key(LOCAL_NAMESPACE, name)
    registry_keys.append(key)

    first = env.start(instance_name=name)
    before = wait_until(lambda: entry_of(env, key), 10, message=f"the annotation {key}")
    first.kill()
    assert entry_of(env, key) == before, "a killed operator cannot remove its entry: clients see it go stale"

    second = env.start(instance_name=name)  # the same instance (a Deployment's next pod) rewrites the same key

    def rewritten() -> RegistryEntry | None:
        entry = entry_of(env, key)
        return entry if entry is not None and entry.heartbeat > before.heartbeat else None
    after = wait_until(rewritten, 10, message="a newer heartbeat under the same key")
    assert after.namespaces == [env.namespace]
    second.stop()
    assert key not in crd_annotations(env)

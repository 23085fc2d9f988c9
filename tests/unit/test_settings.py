"""Operator settings from environment variables, validated at start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandbox_operator import constants
from sandbox_operator.settings import OperatorSettings, SettingsError, load_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.startswith("SANDBOX_OPERATOR_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.clusterwide and settings.namespaces == []
    assert settings.default_image == constants.SANDBOX_IMAGE and settings.image_allowed(constants.SANDBOX_IMAGE)
    assert (settings.default_cpu, settings.default_memory, settings.default_ephemeral_storage) == (
        "1", "512Mi", "1Gi")
    assert (settings.default_cpu_request, settings.default_memory_request,
            settings.default_ephemeral_storage_request) == ("10m", "64Mi", "64Mi")
    assert (settings.default_pids, settings.default_command_seconds, settings.default_idle_seconds,
            settings.default_lifetime_seconds, settings.gc_interval_seconds) == (20, 300, 1800, 3600, 60)
    assert settings.user_namespaces is False and settings.allow_secret_env is False
    assert settings.sandbox_uids == range(constants.SANDBOX_UID_RANGE_FIRST, constants.SANDBOX_UID_RANGE_LAST + 1)
    assert len(settings.sandbox_uids) == 65536
    assert settings.allowed_toleration_keys == [] and not settings.toleration_allowed("anything")
    assert not settings.toleration_allowed(None)
    assert settings.node_selector_key_allowed("kubernetes.io/arch")
    assert not settings.node_selector_key_allowed("kubernetes.io/hostname")
    assert not settings.node_selector_key_allowed("node-role.kubernetes.io/control-plane")
    assert settings.avoid_control_plane is True
    assert settings.allowed_runtime_classes == [] and not settings.runtime_class_allowed("runc")


def test_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SANDBOX_OPERATOR_NAMESPACES", "team-a, sbx-*")
    clean_env.setenv("SANDBOX_OPERATOR_ALLOWED_IMAGES", "localhost/sandbox-operator/*,registry.local/py:*")
    clean_env.setenv("SANDBOX_OPERATOR_GC_INTERVAL_SECONDS", "2.5")
    clean_env.setenv("SANDBOX_OPERATOR_USER_NAMESPACES", "true")
    clean_env.setenv("SANDBOX_OPERATOR_MAX_MEMORY", "2Gi")
    settings = load_settings()
    assert settings.namespaces == ["team-a", "sbx-*"] and not settings.clusterwide
    assert settings.gc_interval_seconds == 2.5 and settings.user_namespaces
    assert settings.max_memory == "2Gi"
    assert settings.image_allowed("registry.local/py:3.12")
    assert not settings.image_allowed("registry.local/other:1")


def test_placement_and_uid_settings_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SANDBOX_OPERATOR_SANDBOX_UID_RANGE", " 2000000-2000009 ")
    clean_env.setenv("SANDBOX_OPERATOR_ALLOWED_TOLERATION_KEYS", "sandbox, gpu")
    clean_env.setenv("SANDBOX_OPERATOR_ALLOWED_NODE_SELECTOR_KEYS", "pool")
    clean_env.setenv("SANDBOX_OPERATOR_AVOID_CONTROL_PLANE", "false")
    settings = load_settings()
    assert settings.sandbox_uids == range(2000000, 2000010) and settings.sandbox_uid_range == "2000000-2000009"
    assert settings.toleration_allowed("gpu") and not settings.toleration_allowed("other")
    assert not settings.toleration_allowed("") and not settings.toleration_allowed(None)
    assert settings.node_selector_key_allowed("pool") and not settings.node_selector_key_allowed("kubernetes.io/os")
    assert settings.avoid_control_plane is False
    clean_env.setenv("SANDBOX_OPERATOR_ALLOWED_TOLERATION_KEYS", "*")
    clean_env.setenv("SANDBOX_OPERATOR_ALLOWED_NODE_SELECTOR_KEYS", "*")
    settings = load_settings()
    assert settings.toleration_allowed(None) and settings.node_selector_key_allowed("kubernetes.io/hostname")
    one = OperatorSettings(sandbox_uid_range="1001-1001")
    assert one.sandbox_uids == range(1001, 1002)


@pytest.mark.parametrize(("env", "fragment"), [
    ({"SANDBOX_OPERATOR_GC_INTERVAL_SECONDS": "0"}, "SANDBOX_OPERATOR_GC_INTERVAL_SECONDS"),
    ({"SANDBOX_OPERATOR_MAX_CPU": "lots"}, "SANDBOX_OPERATOR_MAX_CPU"),
    ({"SANDBOX_OPERATOR_DEFAULT_MEMORY": "1Gi", "SANDBOX_OPERATOR_MAX_MEMORY": "512Mi"},
     "SANDBOX_OPERATOR_DEFAULT_MEMORY=1Gi exceeds SANDBOX_OPERATOR_MAX_MEMORY=512Mi"),
    ({"SANDBOX_OPERATOR_MAX_MEMORY": "1Ti"}, "outside the CRD's bounds"),
    ({"SANDBOX_OPERATOR_DEFAULT_CPU_REQUEST": "2"},
     "SANDBOX_OPERATOR_DEFAULT_CPU_REQUEST=2 exceeds the default limit SANDBOX_OPERATOR_DEFAULT_CPU=1"),
    ({"SANDBOX_OPERATOR_DEFAULT_MEMORY_REQUEST": "256Mi", "SANDBOX_OPERATOR_DEFAULT_MEMORY": "128Mi"},
     "SANDBOX_OPERATOR_DEFAULT_MEMORY_REQUEST=256Mi exceeds the default limit SANDBOX_OPERATOR_DEFAULT_MEMORY=128Mi"),
    ({"SANDBOX_OPERATOR_DEFAULT_EPHEMERAL_STORAGE_REQUEST": "2Gi"},
     "SANDBOX_OPERATOR_DEFAULT_EPHEMERAL_STORAGE_REQUEST=2Gi exceeds the default limit "
     "SANDBOX_OPERATOR_DEFAULT_EPHEMERAL_STORAGE=1Gi"),
    ({"SANDBOX_OPERATOR_DEFAULT_CPU_REQUEST": "1m"},
     "SANDBOX_OPERATOR_DEFAULT_CPU_REQUEST=1m is outside the CRD's bounds [10m, 64]"),
    ({"SANDBOX_OPERATOR_DEFAULT_MEMORY_REQUEST": "lots"}, "SANDBOX_OPERATOR_DEFAULT_MEMORY_REQUEST"),
    ({"SANDBOX_OPERATOR_DEFAULT_IDLE_SECONDS": "7200"}, "DEFAULT_IDLE_SECONDS must not exceed"),
    ({"SANDBOX_OPERATOR_ALLOWED_IMAGES": "registry.local/*"}, "SANDBOX_OPERATOR_DEFAULT_IMAGE="),
    ({"SANDBOX_OPERATOR_ALLOWED_IMAGES": ""}, "must name at least one image pattern"),
    ({"SANDBOX_OPERATOR_DEFAULT_RUNTIME_CLASS": "kata", "SANDBOX_OPERATOR_ALLOWED_RUNTIME_CLASSES": "gvisor"},
     "DEFAULT_RUNTIME_CLASS=kata is not in"),
    ({"SANDBOX_OPERATOR_USER_NAMESPACES": "maybe"}, "SANDBOX_OPERATOR_USER_NAMESPACES"),
    ({"SANDBOX_OPERATOR_SANDBOX_UID_RANGE": "1000-2000"}, "SANDBOX_OPERATOR_SANDBOX_UID_RANGE: '1000-2000' is not "
     "FIRST-LAST with 1000 < FIRST <= LAST <= 2147483647"),
    ({"SANDBOX_OPERATOR_SANDBOX_UID_RANGE": "5000-4000"}, "SANDBOX_OPERATOR_SANDBOX_UID_RANGE"),
    ({"SANDBOX_OPERATOR_SANDBOX_UID_RANGE": "5000-2147483648"}, "SANDBOX_OPERATOR_SANDBOX_UID_RANGE"),
    ({"SANDBOX_OPERATOR_SANDBOX_UID_RANGE": "5000"}, "SANDBOX_OPERATOR_SANDBOX_UID_RANGE"),
    ({"SANDBOX_OPERATOR_SANDBOX_UID_RANGE": "-5-9"}, "SANDBOX_OPERATOR_SANDBOX_UID_RANGE"),
    ({"SANDBOX_OPERATOR_SANDBOX_UID_RANGE": "a-b"}, "SANDBOX_OPERATOR_SANDBOX_UID_RANGE"),
    ({"SANDBOX_OPERATOR_AVOID_CONTROL_PLANE": "sometimes"}, "SANDBOX_OPERATOR_AVOID_CONTROL_PLANE"),
    ({"SANDBOX_OPERATOR_METRICS_PORT": "70000"}, "SANDBOX_OPERATOR_METRICS_PORT"),
    ({"SANDBOX_OPERATOR_HEALTH_PORT": "9000", "SANDBOX_OPERATOR_METRICS_PORT": "9000"}, "must differ"),
    ({"SANDBOX_OPERATOR_LOG_FORMAT": "xml"}, "SANDBOX_OPERATOR_LOG_FORMAT"),
])
def test_bad_settings_name_the_variable(clean_env: pytest.MonkeyPatch, env: dict[str, str], fragment: str) -> None:
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert fragment in str(error.value)


def test_requests_equal_to_the_default_limits_are_allowed(clean_env: pytest.MonkeyPatch) -> None:
    """The way back to Guaranteed QoS for every Sandbox that sets no requests."""
    clean_env.setenv("SANDBOX_OPERATOR_DEFAULT_CPU_REQUEST", "1000m")
    clean_env.setenv("SANDBOX_OPERATOR_DEFAULT_MEMORY_REQUEST", "512Mi")
    clean_env.setenv("SANDBOX_OPERATOR_DEFAULT_EPHEMERAL_STORAGE_REQUEST", "1Gi")
    settings = load_settings()
    assert (settings.default_cpu_request, settings.default_memory_request,
            settings.default_ephemeral_storage_request) == ("1000m", "512Mi", "1Gi")


def test_the_removed_readiness_period_is_not_a_setting() -> None:
    assert "readiness_period_seconds" not in OperatorSettings.model_fields


def test_main_exits_non_zero_before_touching_the_cluster() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_OPERATOR_")}
    env.update(SANDBOX_OPERATOR_MAX_PIDS="0", KUBECONFIG="/nonexistent")
    result = subprocess.run([sys.executable, "-m", "sandbox_operator"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "invalid operator settings" in result.stderr and "SANDBOX_OPERATOR_MAX_PIDS" in result.stderr
    assert "Traceback" not in result.stderr


def test_settings_are_frozen() -> None:
    settings = OperatorSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.gc_interval_seconds = 1  # type: ignore[misc]

"""Operator settings from environment variables, validated at start."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_operator import constants
from sandbox_operator import settings as settings_module
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


@pytest.fixture
def no_pod(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Outside a pod: no POD_NAME/POD_NAMESPACE, no service account namespace file."""
    clean_env.delenv("POD_NAME", raising=False)
    clean_env.delenv("POD_NAMESPACE", raising=False)
    clean_env.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    return clean_env


def test_leader_election_defaults(no_pod: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.leader_election is False
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds, settings.retry_period_seconds) == (
        8, 6, 1)
    assert settings.lease_name == "sandbox-operator" and settings.lease_namespace == ""
    assert settings.leader_identity == f"{socket.gethostname()}-{os.getpid()}"


def test_leader_election_names_from_the_pod(no_pod: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in {"SANDBOX_OPERATOR_LEADER_ELECTION": "true", "SANDBOX_OPERATOR_INSTANCE_NAME":
                       "ops-sandbox-operator", "POD_NAME": "ops-sandbox-operator-7d9f-abcde",
                       "POD_NAMESPACE": "ops"}.items():
        no_pod.setenv(key, value)
    settings = load_settings()
    assert (settings.lease_namespace, settings.lease_name, settings.leader_identity) == (
        "ops", "ops-sandbox-operator", "ops-sandbox-operator-7d9f-abcde")
    no_pod.delenv("POD_NAMESPACE")
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("from-token\n")
    no_pod.setattr(settings_module, "SERVICE_ACCOUNT_NAMESPACE", namespace_file)
    assert load_settings().lease_namespace == "from-token"
    for name, value in {"LEADER_ELECTION_NAMESPACE": "explicit", "LEADER_ELECTION_LEASE_NAME": "my-lease",
                        "LEADER_ELECTION_IDENTITY": "replica-1", "LEASE_DURATION_SECONDS": "15",
                        "RENEW_DEADLINE_SECONDS": "10", "RETRY_PERIOD_SECONDS": "0.5"}.items():
        no_pod.setenv(f"SANDBOX_OPERATOR_{name}", value)
    settings = load_settings()
    assert (settings.lease_namespace, settings.lease_name, settings.leader_identity) == (
        "explicit", "my-lease", "replica-1")
    assert (settings.lease_duration_seconds, settings.renew_deadline_seconds, settings.retry_period_seconds) == (
        15, 10, 0.5)


def test_leader_election_off_needs_no_namespace(no_pod: pytest.MonkeyPatch) -> None:
    assert load_settings().leader_election is False


@pytest.mark.parametrize(("env", "fragment"), [
    ({"SANDBOX_OPERATOR_LEADER_ELECTION": "true"},
     "SANDBOX_OPERATOR_LEADER_ELECTION_NAMESPACE is empty and the pod's namespace is unknown (no env POD_NAMESPACE"),
    ({"SANDBOX_OPERATOR_RENEW_DEADLINE_SECONDS": "8"},
     "SANDBOX_OPERATOR_RETRY_PERIOD_SECONDS=1.0 < SANDBOX_OPERATOR_RENEW_DEADLINE_SECONDS=8.0 < "
     "SANDBOX_OPERATOR_LEASE_DURATION_SECONDS=8 does not hold"),
    ({"SANDBOX_OPERATOR_RETRY_PERIOD_SECONDS": "6"}, "SANDBOX_OPERATOR_RETRY_PERIOD_SECONDS=6.0 < "),
    ({"SANDBOX_OPERATOR_LEASE_DURATION_SECONDS": "5"}, "SANDBOX_OPERATOR_LEASE_DURATION_SECONDS=5 does not hold"),
    ({"SANDBOX_OPERATOR_LEASE_DURATION_SECONDS": "1"}, "SANDBOX_OPERATOR_LEASE_DURATION_SECONDS"),
    ({"SANDBOX_OPERATOR_RETRY_PERIOD_SECONDS": "0"}, "SANDBOX_OPERATOR_RETRY_PERIOD_SECONDS"),
    ({"SANDBOX_OPERATOR_LEADER_ELECTION_LEASE_NAME": "Not_A_Name"},
     "SANDBOX_OPERATOR_LEADER_ELECTION_LEASE_NAME: 'Not_A_Name' is not a Kubernetes object name"),
    ({"SANDBOX_OPERATOR_LEADER_ELECTION_NAMESPACE": "a.b"},
     "SANDBOX_OPERATOR_LEADER_ELECTION_NAMESPACE: 'a.b' is not a namespace name"),
])
def test_bad_leader_election_settings_name_the_variable(no_pod: pytest.MonkeyPatch, env: dict[str, str],
                                                        fragment: str) -> None:
    for key, value in env.items():
        no_pod.setenv(key, value)
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert fragment in str(error.value)


def test_main_with_election_and_no_namespace_exits_before_touching_the_cluster() -> None:
    if settings_module.SERVICE_ACCOUNT_NAMESPACE.exists():
        pytest.skip("running in a pod: its service account names the namespace")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SANDBOX_OPERATOR_") and k not in ("POD_NAMESPACE", "POD_NAME")}
    env.update(SANDBOX_OPERATOR_LEADER_ELECTION="true", KUBECONFIG="/nonexistent")
    result = subprocess.run([sys.executable, "-m", "sandbox_operator"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "SANDBOX_OPERATOR_LEADER_ELECTION_NAMESPACE" in result.stderr and "Traceback" not in result.stderr

"""The operator image's Dockerfile and build script follow the image rules: multi-stage, numeric
non-root USER, exec-form entrypoint, wheels installed with --no-index, no pip or compilers in the final stage.
The built image itself is checked on the cluster by tests/e2e/test_helm.py."""

from __future__ import annotations

import subprocess

import yaml

from sandbox_operator import constants
from tests.kit import REPO_ROOT
from tests.kit.dockerfile import instructions, stages

DOCKERFILE = REPO_ROOT / "images" / "operator" / "Dockerfile"
SCRIPT = REPO_ROOT / "hack" / "build-operator-image.sh"


def test_multi_stage_on_the_configurable_base() -> None:
    build, final = stages(DOCKERFILE)
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build")
    assert final[0] == ("FROM", "${BASE_IMAGE}")
    args = [a for k, a in instructions(DOCKERFILE) if k == "ARG"]
    assert args == ["BASE_IMAGE=python:3.11-slim-bookworm"]  # docker users; buildah passes the project's base


def test_wheels_installed_offline_and_pip_never_installed() -> None:
    build, final = stages(DOCKERFILE)
    run = " ".join(a for k, a in build if k == "RUN")
    assert "pip install --no-index --find-links /wheels" in run.replace('"$pip_wheel/pip" ', "pip ")
    assert "venv --without-pip" in run
    assert "unchecked-hash" in run  # bytecode compiled ahead: the root filesystem is read-only at run time
    # The final stage copies the virtual environment only, and installs nothing.
    final_text = " ".join(f"{k} {a}" for k, a in final)
    assert ("COPY", "--from=build /opt/sandbox-operator /opt/sandbox-operator") in final
    assert "wheels" not in final_text
    assert "pip install" not in final_text and "apt-get" not in final_text
    assert "uninstall" in final_text  # removes the slim image's own pip
    for tool in ("pip", "pip3", "gcc", "cc"):
        assert tool in final_text.split("for tool in ")[1].split(";")[0]


def test_numeric_non_root_user_and_exec_form_entrypoint() -> None:
    _build, final = stages(DOCKERFILE)
    [user] = [a for k, a in final if k == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) >= 10000 and int(gid) > 0
    values = yaml.safe_load((REPO_ROOT / "charts" / "sandbox-operator" / "values.yaml").read_text())
    assert (values["securityContext"]["runAsUser"], values["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    [entrypoint] = [a for k, a in final if k == "ENTRYPOINT"]
    assert entrypoint == '["/opt/sandbox-operator/bin/sandbox-operator"]'
    env = " ".join(a for k, a in final if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "LOGNAME=" in env and "HOME=/tmp" in env
    exposed = {a for k, a in final if k == "EXPOSE"}
    assert exposed == {"8080 9090"}


def test_build_script_names_the_shared_image_and_never_latest() -> None:
    out = subprocess.run(["bash", str(SCRIPT), "ref"], capture_output=True, text=True, check=True).stdout.strip()
    assert out == constants.OPERATOR_IMAGE and not out.endswith(":latest")
    text = SCRIPT.read_text()
    assert "pip wheel" in text and "--no-index" in text
    assert "://" not in text  # no registry or index address: pip uses the machine's own configuration

"""The shell scripts: every one passes shellcheck (following what it sources), and every bash script stops at
the first failing command, unset variable or failing pipe stage (``set -euo pipefail`` before anything runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kit import REPO_ROOT

SHELL_DIRECTORIES = ("hack", "images", ".ci")
SHEBANGS = ("#!/bin/sh", "#!/bin/bash", "#!/usr/bin/env bash", "#!/usr/bin/env sh")
STRICT = "set -euo pipefail"


def shell_scripts() -> list[Path]:
    """Files named *.sh, or starting with a shell's #!, below the script directories (relative to the repo)."""
    found = []
    for directory in SHELL_DIRECTORIES:
        for path in sorted((REPO_ROOT / directory).rglob("*")):
            if not path.is_file():
                continue
            with path.open("rb") as file:
                first_line = file.readline().decode(errors="replace").strip()
            if path.suffix == ".sh" or first_line.startswith(SHEBANGS):
                found.append(path.relative_to(REPO_ROOT))
    return found


SCRIPTS = shell_scripts()
# POSIX sh has no pipefail: the image's readiness command (run by /bin/sh, dash) checks every condition and reports
# all that fail, which is why it sets only -u.
POSIX_SH = [script for script in SCRIPTS if (REPO_ROOT / script).read_text().startswith("#!/bin/sh")]


def test_the_scripts_are_found() -> None:
    names = {str(script) for script in SCRIPTS}
    assert {"hack/lib.sh", "hack/cluster-up.sh", "hack/tools/runc/userns-smoke.sh", "images/base/mkrootfs.sh",
            ".ci/run", "images/sandbox/bin/sandbox-ready"} <= names, names
    assert [str(script) for script in POSIX_SH] == ["images/sandbox/bin/sandbox-ready"]


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in POSIX_SH], ids=str)
def test_bash_scripts_are_strict_before_anything_runs(script: Path) -> None:
    commands = [line.strip() for line in (REPO_ROOT / script).read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands[0] == STRICT, f"{script}: the first command is {commands[0]!r}, not {STRICT!r}"


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck (make lint installs it)")
def test_shellcheck_finds_nothing() -> None:
    """From the repository root, so the ``# shellcheck source=hack/...`` directives resolve."""
    result = subprocess.run(["shellcheck", "--external-sources", *map(str, SCRIPTS)], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr

"""The containerd and runsc configuration cluster-up writes for gVisor, rendered into a scratch directory (nothing
is started): the runtime handler `runsc` is there exactly when gVisor passed its check, and both files parse."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.kit import REPO_ROOT

RUNTIMES = ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes")


def render(cluster_dir: Path, gvisor_ready: bool) -> dict[str, Any]:
    """Runs write_containerd_config as cluster-up would after gvisor_preflight; returns the parsed containerd.toml
    and hack/lib.sh's gVisor variables."""
    script = (f"source hack/lib.sh; source hack/cluster-lib.sh; GVISOR_READY={str(gvisor_ready).lower()}; "
              "write_containerd_config; "
              'printf "%s\\n" "$GVISOR_BIN_DIR" "$GVISOR_CONFIG" "$GVISOR_STATE" "$GVISOR_PLATFORM"')
    env = {**os.environ, "SANDBOX_OPERATOR_CLUSTER_DIR": str(cluster_dir), "SANDBOX_CONTAINERD": "2"}
    out = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True)
    bin_dir, config, state, platform = out.stdout.split("\n")[:4]
    containerd = tomllib.loads((cluster_dir / "containerd.toml").read_text())
    return {"containerd": containerd, "bin_dir": bin_dir, "config": Path(config), "state": state,
            "platform": platform}


def runtimes(containerd: dict[str, Any]) -> dict[str, Any]:
    section: dict[str, Any] = containerd
    for key in RUNTIMES:
        section = section[key]
    return section


def test_the_runsc_handler_points_at_the_patched_shim_and_its_config(tmp_path: Path) -> None:
    rendered = render(tmp_path, gvisor_ready=True)
    runsc = runtimes(rendered["containerd"])["runsc"]
    assert runsc["runtime_type"] == "io.containerd.runsc.v1"
    assert runsc["runtime_path"] == f"{rendered['bin_dir']}/containerd-shim-runsc-v1"
    assert runsc["options"] == {"TypeUrl": "io.containerd.runsc.v1.options", "ConfigPath": str(rendered["config"])}
    assert rendered["config"].parent == tmp_path
    shim = tomllib.loads(rendered["config"].read_text())
    assert shim["binary_name"] == f"{rendered['bin_dir']}/runsc"
    assert shim["root"] == rendered["state"]
    # oci-seccomp: without it runsc ignores the pods' RuntimeDefault profile.
    assert shim["runsc_config"] == {"platform": rendered["platform"], "oci-seccomp": "true"}
    assert runtimes(rendered["containerd"])["runc"]["runtime_type"] == "io.containerd.runc.v2"


@pytest.mark.parametrize("leftover", [False, True], ids=["fresh", "after-a-gvisor-cluster"])
def test_without_gvisor_there_is_no_runsc_handler_and_no_runsc_config(tmp_path: Path, leftover: bool) -> None:
    if leftover:
        render(tmp_path, gvisor_ready=True)
    rendered = render(tmp_path, gvisor_ready=False)
    assert set(runtimes(rendered["containerd"])) == {"runc"}
    assert not rendered["config"].exists()

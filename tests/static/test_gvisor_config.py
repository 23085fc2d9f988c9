"""The containerd and runsc configuration cluster-up writes for gVisor, rendered into a scratch directory (nothing
is started): the runtime handler `runsc` is there exactly when gVisor passed its check, and both files parse. And the
patches build-binaries.sh applies to gVisor: all of them, keying the binaries' cache directory, applying cleanly."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.kit import REPO_ROOT, hack_vars

RUNTIMES = ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes")
GVISOR_TOOLS = REPO_ROOT / "hack" / "tools" / "gvisor"


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


def gvisor_patches() -> list[str]:
    return hack_vars("GVISOR_PATCHES[*]")["GVISOR_PATCHES[*]"].split()


def test_every_gvisor_patch_is_applied_and_keys_the_binaries() -> None:
    """A patch file left out of GVISOR_PATCHES would be silently not built; a cache key blind to a patch's content
    would keep serving binaries built without it."""
    names = gvisor_patches()
    assert sorted(names) == sorted(path.stem for path in GVISOR_TOOLS.glob("*.patch"))
    key = hashlib.sha256(b"".join(f"{name}\n".encode() + (GVISOR_TOOLS / f"{name}.patch").read_bytes()
                                  for name in names)).hexdigest()[:12]
    assert hack_vars("GVISOR_BIN_DIR")["GVISOR_BIN_DIR"].endswith(f"-patches-{key}")


def test_the_gvisor_patches_apply_in_order_to_the_pinned_module(tmp_path: Path) -> None:
    """Applied to a copy of just the files they touch, as build-binaries.sh applies them to a copy of the module."""
    found = hack_vars("GOMODCACHE", "GVISOR_VERSION")
    module = Path(found["GOMODCACHE"]) / f"gvisor.dev/gvisor@{found['GVISOR_VERSION']}"
    if not module.is_dir():
        pytest.skip(f"{module} is not downloaded (hack/build-binaries.sh gvisor downloads it)")
    for name in gvisor_patches():
        patch = GVISOR_TOOLS / f"{name}.patch"
        for touched in re.findall(r"^\+\+\+ b/(\S+)", patch.read_text(), flags=re.MULTILINE):
            if not (tmp_path / touched).exists():
                (tmp_path / touched).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(module / touched, tmp_path / touched)
        applied = subprocess.run(["patch", "-p1", "--forward", "--batch", "-d", str(tmp_path), "-i", str(patch)],
                                 capture_output=True, text=True)
        assert applied.returncode == 0, f"{patch.name}: {applied.stdout}{applied.stderr}"
        assert "offset" not in applied.stdout and "fuzz" not in applied.stdout, f"{patch.name}: {applied.stdout}"

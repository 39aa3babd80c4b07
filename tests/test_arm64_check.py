"""tools/arm64_check.sh: the Pi path on emulated aarch64 (Debian 12; 13 on request), for correctness.

It needs root, debootstrap and qemu-user-static 8+ (CI here has them: .ci/run installs them
from bookworm-backports); elsewhere the test is skipped with what is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "tools" / "arm64_check.sh"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "not root (debootstrap, chroot and binfmt registration need it)"
    if not shutil.which("debootstrap"):
        return "no debootstrap (apt-get install debootstrap)"
    qemu = shutil.which("qemu-aarch64-static")
    if not qemu:
        return "no qemu-user-static (install 10.x from bookworm-backports)"
    version = re.search(r"version (\d+)", subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout)
    if not version or int(version.group(1)) < 8:
        return "qemu-user-static older than 8 crashes inside ai-edge-litert"
    if not Path("/proc/sys/fs/binfmt_misc/register").exists() and subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"]).returncode:
        return "binfmt_misc cannot be mounted here"
    return None


# Debian 12 is Raspberry Pi OS Bookworm's base; EDGERES_ARM64_SUITES="bookworm trixie" adds Debian 13
# (each new suite costs a debootstrap under emulation, about 10 minutes, once per machine).
SUITES = os.environ.get("EDGERES_ARM64_SUITES", "bookworm")


@pytest.mark.slow
@pytest.mark.skipif(_missing() is not None, reason=f"arm64 emulation unavailable: {_missing()}")
def test_arm64_check_gives_x86s_top1_on_every_image(converted, digits) -> None:
    """The session's own rpi and npu INT8 artifacts, run on emulated aarch64 as a Pi user installs edgeres."""
    artifacts = [str(converted("rpi", "int8").path), str(converted("npu", "int8").path)]
    result = subprocess.run(["bash", str(SCRIPT), "--suites", SUITES, "--images", "60", *artifacts],
                            capture_output=True, text=True, timeout=3000,
                            env={**os.environ, "EDGERES_ARM64_IMAGES": str(digits.test_dir)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    same = re.findall(r"^(\w+) (\S+): same top-1 as x86 on (\d+) of (\d+) images(?: \(.*\))?$", result.stdout,
                      re.MULTILINE)
    assert {(suite, name.rsplit(".", 1)[1]) for suite, name, _, _ in same} == {
        (suite, kind) for suite in SUITES.split() for kind in ("tflite", "onnx")}
    assert all(agree == total and int(total) >= 50 for _, _, agree, total in same)
    # edgeres verify on each, inside the emulated Pi OS base
    assert result.stdout.count(" passed (int8, ") == 2 * len(SUITES.split())


def test_arm64_check_says_what_is_missing(tmp_path: Path) -> None:
    """Without debootstrap (or without root) it stops at once and says why (exit 2), touching nothing."""
    for tool in ("id", "dirname", "sed", "realpath"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    result = subprocess.run(["/bin/bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                            env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    assert re.search(r"run as root|debootstrap is missing: apt-get install debootstrap", result.stderr)
    assert not (tmp_path / ".cache").exists()

from __future__ import annotations

from pathlib import Path

import pytest

from edgeres.artifact import read_sidecar
from edgeres.devices import load_profile, profile_names
from edgeres.errors import TargetError
from edgeres.targets import REGISTRY, get_target, resolve_target


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_is_consistent(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.target in REGISTRY
    assert profile.threads >= 1 and len(profile.why) > 40
    assert profile.recommended_precision in get_target(profile.target).precisions


def test_the_pi_profiles_exist() -> None:
    assert {"rpi4", "rpi5"} <= set(profile_names())
    assert resolve_target("rpi5")[0].name == "rpi"


def test_unknown_name_lists_targets_and_profiles() -> None:
    with pytest.raises(TargetError, match=r"choose a target \(onnx, npu, x86, rpi, jetson, mobile\) or a device profile \(rpi4, rpi5\)"):
        resolve_target("pi9")


@pytest.mark.slow
def test_convert_for_a_profile(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    from tests.test_cli import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "rpi4", "--imgsz", "32",
                             "--out", tmp_path)
    assert code == 0, err
    record = read_sidecar(tmp_path / "resnet18_rpi4_fp32" / "resnet18_rpi4_fp32.tflite")
    assert record.target == "rpi" and record.device_profile["name"] == "rpi4"
    assert "rpi4: int8 is recommended" in out

from __future__ import annotations

from pathlib import Path

import pytest

from edgeres.artifact import read_sidecar
from edgeres.devices import load_profile, profile_names
from edgeres.errors import TargetError
from edgeres.runtime.base import PRECISION_MODES
from edgeres.targets import REGISTRY, get_target, resolve_target


@pytest.mark.parametrize("name", profile_names())
def test_every_profile_is_consistent(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name and profile.target in REGISTRY
    assert profile.threads >= 0 and len(profile.why) > 40  # 0: all cores (a class of CPUs)
    assert all(isinstance(value, str) and value for value in profile.options.values())
    assert profile.recommended_precision in get_target(profile.target).precisions
    assert profile.float_mode in PRECISION_MODES


def test_the_pi_profiles_exist() -> None:
    assert {"rpi4", "rpi5"} <= set(profile_names())
    assert resolve_target("rpi5")[0].name == "rpi"


def test_jetson_and_x86_profiles() -> None:
    jetsons = {"jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-nano"}
    x86 = {"x86-avx2", "x86-avx512-vnni", "x86-amx"}
    assert jetsons | x86 <= set(profile_names())
    assert {resolve_target(name)[0].name for name in jetsons} == {"jetson"}
    assert {resolve_target(name)[0].name for name in x86} == {"x86"}
    assert load_profile("jetson-nano").recommended_precision == "fp16"  # Maxwell: no fast int8
    assert "--useDLACore=0" in load_profile("jetson-orin-nx").options["trtexec_dla"]
    assert "f32" in load_profile("x86-amx").options["openvino_compile_fp32"]
    assert [load_profile(name).float_mode for name in ("x86-avx2", "x86-avx512-vnni", "x86-amx")] == \
        ["fp32", "fp32", "bf16"]


def test_snapdragon_profiles_name_their_soc_and_htp() -> None:
    socs = {name: load_profile(name).options for name in profile_names() if name.startswith("snapdragon-")}
    assert {name: (o["soc_model"], o["htp_arch"]) for name, o in socs.items()} == {
        "snapdragon-8-gen-1": ("36", "69"), "snapdragon-8-gen-2": ("43", "73"),
        "snapdragon-8-gen-3": ("57", "75"), "snapdragon-8-elite": ("69", "79")}
    assert {resolve_target(name)[0].name for name in socs} == {"qnn"}


def test_unknown_name_lists_targets_and_profiles() -> None:
    with pytest.raises(TargetError, match=r"choose a target \(onnx, npu, qnn, rknn, imx500, x86, rpi, jetson, mobile\) or a device profile \(jetson-agx-orin, .*, rk3566, rk3568, rk3588, rpi-ai-camera, rpi4, rpi5, snapdragon-8-elite, .*, x86-amx, x86-avx2, x86-avx512-vnni\)"):
        resolve_target("pi9")


@pytest.mark.slow
def test_convert_for_a_profile(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "rpi4", "--imgsz", "32",
                             "--out", tmp_path)
    assert code == 0, err
    record = read_sidecar(tmp_path / "resnet18_rpi4_fp32" / "resnet18_rpi4_fp32.tflite")
    assert record.target == "rpi" and record.device_profile["name"] == "rpi4"
    assert "rpi4: int8 is recommended" in out


@pytest.mark.slow
@pytest.mark.parametrize("profile, suffix", [("jetson-orin-nano", ".onnx"), ("x86-amx", ".xml")])
def test_new_profiles_convert_and_record_their_recommendations(monkeypatch, capsys, checkpoint: Path,
                                                               tmp_path: Path, profile: str, suffix: str) -> None:
    from tests.conftest import run_cli

    code, out, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", profile, "--imgsz", "32",
                             "--out", tmp_path)
    assert code == 0, err
    stem = f"resnet18_{profile}_fp32"
    record = read_sidecar(tmp_path / stem / f"{stem}{suffix}")
    expected = load_profile(profile)
    assert record.device_profile["options"] == expected.options and record.device_profile["why"] == expected.why
    assert "int8 is recommended" in out
    first = next(iter(expected.options))
    assert f"On {profile} ({first}):" in " ".join(out.split())
    if profile == "x86-amx":  # bf16's cost, measured where this CPU has bf16, else why not and how to measure it
        assert f"{stem}.xml in bf16" in out and "run float artifacts in bf16 there" in " ".join(out.split())
        assert record.device_profile["float_mode"] == "bf16" and "bf16" in record.verification["modes"]

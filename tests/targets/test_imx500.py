"""Sony IMX500 (Raspberry Pi AI Camera): MCT's quantization and imxconv-pt's package, run for real in the
toolchain's own environment (built once, about 6.5 GB, most of it PyTorch, from the package index).

What runs here is Sony's MCT and imx500-converter on this PC, and MCT's simulation of the quantized graph
(its own quantizer ops on ONNX Runtime), not the sensor. The Pi's side (imx500-package, Picamera2's IMX500
helper and the camera) is replaced at its boundary: a camera whose sensor gives, with each frame, the
scores MCT's simulation computes for it.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgeres.artifact import read_sidecar
from edgeres.errors import ArtifactError, BackendUnavailableError, ConversionError, FrameError, PlanRefusedError
from edgeres.runtime import backend_class
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier
from edgeres.runtime.imx500 import Imx500CameraBackend, Imx500SimulatorBackend
from edgeres.targets.imx500 import MIB, DEFAULT_WEIGHT_BUDGET, _check_fits_at_all, _check_kept_fit, _memory
from tests.conftest import assert_one_red_line, run_cli
from tests.test_cameras import FakePicamera2

if not sys.platform.startswith("linux") or __import__("platform").machine() != "x86_64":
    pytest.skip("Sony's imx500-converter runs on Linux x86-64", allow_module_level=True)


def _mct(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".imx500.zip") + ".mct.onnx")


@pytest.mark.slow
def test_the_set_is_the_converters_package_and_fits_the_sensor(converted) -> None:
    result = converted("imx500", "int8")
    assert result.path.name.endswith(".imx500.zip") and _mct(result.path) in result.files
    with zipfile.ZipFile(result.path) as package:
        assert {"dnnParams.xml", "l2staticData.bin"} <= set(package.namelist())
    quantization = result.record.quantization
    memory = quantization["compiled"]["memory"]
    assert memory["fits"] and memory["needed"] <= memory["available"] == 8 * MIB  # the sensor's 8 MB
    # a ResNet18 at 8-bit weights needs more than the sensor has: MCT's mixed precision lowered some layers
    assert quantization["layers_below_8_bits"] and quantization["weight_bytes"] <= quantization["weight_budget"]
    # a 32 px input leaves most of the runtime memory to the weights, and the package fits with them
    assert quantization["weight_budget"] > DEFAULT_WEIGHT_BUDGET
    assert quantization["activation_thresholds"]["calibration_views"] > 0  # refined (160 images: some held out)
    assert set(quantization["weight_bits"].values()) <= {2, 4, 8}
    assert set(result.record.companions) == {_mct(result.path).name}  # its hash: a swapped graph is refused
    verification = result.record.verification
    assert verification["runtime"] == Imx500SimulatorBackend.name and "not the sensor" in verification["runtime"]
    assert verification["top1_agreement"] >= 0.9
    # MCT's simulation against the graph lowered to standard ops, which the search judged: the same answers
    assert verification["stand_in"]["top1_agreement_with_stand_in"] >= 0.97


@pytest.mark.slow
def test_mcts_simulation_gives_fp32s_answers(converted, model, held_out) -> None:
    result = converted("imx500", "int8")
    assert backend_class(result.path) is Imx500SimulatorBackend
    frames = held_out[0][::23][:20]
    classifier = Classifier(result.path)
    simulated = classifier.logits_batch(frames)
    spec = Preprocess.imagenet(32)  # the PyTorch model's own input
    reference = model.logits(spec.tensors([spec.resize_and_crop(frame) for frame in frames]))
    assert np.mean(simulated.argmax(1) == reference.argmax(1)) >= 0.9
    # the sensor's input: RGB pixels / 256, the normalisation inside the graph
    assert classifier.preprocess.mean == (0.0, 0.0, 0.0) and classifier.preprocess.std == pytest.approx((256 / 255,) * 3)


def _inputs(path: Path, frames) -> np.ndarray:
    return Preprocess.from_dict(read_sidecar(path).preprocess).batch(frames)


class FakeSensorCamera(FakePicamera2):
    """Picamera2 on a Pi with the AI Camera: each request carries the sensor network's output in its metadata,
    here the scores MCT's simulation gives for the frame (the first frames carry none, as while the firmware
    uploads)."""

    scores: list[np.ndarray | None] = []

    def capture_request(self):
        frame = self.capture_array("main")
        tensor = self.scores[self.read - 1]
        metadata = {} if tensor is None else {"CnnOutputTensor": tensor.ravel().tolist()}
        return types.SimpleNamespace(make_array=lambda stream: frame, get_metadata=lambda: metadata,
                                     release=lambda: None)


class FakeImx500:
    """picamera2.devices.IMX500 as edgeres calls it."""

    made: list["FakeImx500"] = []

    def __init__(self, network_file: str) -> None:
        assert Path(network_file).read_bytes().startswith(b"RPK of ")
        self.network_file, self.camera_num, self.aspect = network_file, 0, None
        FakeImx500.made.append(self)

    def get_input_size(self) -> tuple[int, int]:
        return (32, 32)

    def set_inference_aspect_ratio(self, aspect) -> None:
        self.aspect = aspect

    def get_outputs(self, metadata: dict, add_batch: bool = False):
        tensor = metadata.get("CnnOutputTensor")
        if tensor is None:
            return None
        return [np.array(tensor, np.float32)[None] if add_batch else np.array(tensor, np.float32)]


@pytest.fixture
def on_the_pi(monkeypatch, tmp_path: Path):
    """Picamera2 with the IMX500 helper, and an imx500-package on PATH that writes network.rpk."""
    FakeImx500.made.clear()
    devices = types.SimpleNamespace(IMX500=FakeImx500)
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakeSensorCamera, devices=devices))
    monkeypatch.setitem(sys.modules, "picamera2.devices", devices)
    tools = tmp_path / "bin"
    tools.mkdir()
    package = tools / "imx500-package"
    package.write_text("#!/bin/sh\n# imx500-package -i PACKAGE -o DIR\nprintf 'RPK of %s' \"$2\" > \"$4/network.rpk\"\n")
    package.chmod(package.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    return tools


@pytest.mark.slow
def test_on_the_pi_the_sensor_classifies_its_own_frames_and_the_cpu_reads_the_scores(
        converted, held_out, on_the_pi, monkeypatch, capsys, tmp_path: Path) -> None:
    result = converted("imx500", "int8")
    folder = tmp_path / "set"
    shutil.copytree(result.path.parent, folder)
    artifact = folder / result.path.name
    frames = list(held_out[0][:8])
    simulation = Imx500SimulatorBackend(result.path, None)  # what the sensor gives, as simulated here
    simulated = simulation.run(_inputs(result.path, frames))
    simulation.close()
    FakeSensorCamera.frames = [frames[0], *frames]
    FakeSensorCamera.scores = [None, *simulated]  # the first frame comes before the network is up
    assert backend_class(artifact) is Imx500CameraBackend
    code, out, err = run_cli(monkeypatch, capsys, "video", artifact, "--source", "picamera", "--max-frames", "8",
                             "--out", tmp_path / "video")
    assert code == 0, err
    # a live camera: the newest frame is classified when the last is done, so some are dropped; each row's
    # index counts the reads (the frame without a tensor was skipped inside one)
    rows = [row.split(",") for row in (tmp_path / "video" / "frames.csv").read_text().splitlines()[1:]]
    labels = read_sidecar(result.path).labels
    assert rows and all(row[2] == labels[simulated[int(row[0])].argmax()] for row in rows)
    sensor = FakeImx500.made[-1]
    assert Path(sensor.network_file).parent == folder and sensor.aspect == (32, 32)
    assert Path(sensor.network_file).name.startswith(artifact.name.removesuffix(".imx500.zip"))
    # a frame from elsewhere cannot be classified by the sensor; a file is no source for it
    classifier = Classifier(folder)  # the set's folder: its package, not the graph beside it
    assert classifier.path == artifact and classifier.sensor is not None
    with pytest.raises(FrameError, match="classifies only the frames it captures itself"):
        classifier.predict(frames[0])
    code, out, err = run_cli(monkeypatch, capsys, "video", artifact, "--source", str(result.path))
    assert_one_red_line(code, err, "runs on the IMX500 sensor, which classifies only its own frames")


@pytest.mark.slow
def test_a_set_the_simulation_cannot_stand_for_is_refused(converted, tmp_path: Path, monkeypatch) -> None:
    from edgeres.converter_envs import ENVS_ENV

    result = converted("imx500", "int8")
    alone = tmp_path / "alone.imx500.zip"
    shutil.copy(result.path, alone)
    with pytest.raises(ArtifactError, match="graph it was compiled from \\(alone.mct.onnx\\)"):
        Imx500SimulatorBackend(alone, None)
    lying = tmp_path / "lying.imx500.zip"
    with zipfile.ZipFile(lying, "w") as package:
        package.writestr("photo.jpg", b"not a network")
    with pytest.raises(ArtifactError, match="not a network imxconv-pt compiled"):
        Imx500SimulatorBackend(lying, None)
    swapped = tmp_path / "swapped"
    shutil.copytree(result.path.parent, swapped)
    graph = swapped / _mct(result.path).name
    graph.write_bytes(graph.read_bytes()[:-16] + bytes(16))
    with pytest.raises(ArtifactError, match="is not the file .* was converted with"):
        Classifier(swapped / result.path.name)
    monkeypatch.setenv(ENVS_ENV, str(tmp_path / "none"))  # opening never builds the 6.5 GB environment
    with pytest.raises(BackendUnavailableError, match="runs as MCT's IMX500 simulation on a PC: .*not built here"):
        Classifier(result.path)
    assert not (tmp_path / "none").exists()


def test_a_network_or_a_plan_too_large_for_the_sensor_is_refused_before_mct_runs() -> None:
    from torchvision.models import resnet18, resnet50

    with pytest.raises(ConversionError, match="resnet50 has 25.5 M weights: even at 4 bits each they need 12.16 MiB"):
        _check_fits_at_all(resnet50(), "resnet50", DEFAULT_WEIGHT_BUDGET)
    _check_fits_at_all(resnet18(), "resnet18", DEFAULT_WEIGHT_BUDGET)
    # the search keeping layer4's three largest convs at 8 bits leaves no room: that plan only is refused
    _check_kept_fit(resnet18(), ("fc", "layer4.1.conv2"), DEFAULT_WEIGHT_BUDGET)
    with pytest.raises(PlanRefusedError, match="3 layers kept at 8-bit weights need at least"):
        _check_kept_fit(resnet18(), ("layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"), DEFAULT_WEIGHT_BUDGET)


def test_the_converters_memory_verdict_is_read_from_its_report_or_its_refusal() -> None:
    report = {"Memory Report": {"Memory Usage": "7.29MB", "Total Memory Available On Chip": "8.00MB",
                                "Memory Utilization": "92%", "Fit In Chip": True}}
    assert _memory({"status": 0, "report": report}) == {"fits": True, "needed": int(7.29 * 2 ** 20),
                                                        "available": 8 * 2 ** 20, "utilization": "92%"}
    refused = _memory({"status": 1, "report": None, "not_enough": ["8.00MB", "8.87MB"]})
    assert not refused["fits"] and refused["needed"] > refused["available"]
    with pytest.raises(ConversionError, match="no memory report"):
        _memory({"status": 1, "report": None})
    with pytest.raises(ConversionError, match="no usage and fit"):
        _memory({"status": 0, "report": {"Memory Report": {"Fit In Chip": "yes"}}})


def test_a_small_input_gives_its_share_of_the_runtime_memory_to_the_weights_and_a_large_one_takes_none() -> None:
    from edgeres.targets.imx500 import sized_budget

    assert sized_budget(224) == DEFAULT_WEIGHT_BUDGET
    assert sized_budget(32) == 7_827_176 and sized_budget(112) > DEFAULT_WEIGHT_BUDGET
    assert sized_budget(448) == sized_budget(1024) == DEFAULT_WEIGHT_BUDGET  # not measured there: nothing taken


@pytest.mark.parametrize("judged_on_calibration", [False, True])
@pytest.mark.parametrize("finetuned", [False, True])
def test_thresholds_are_refined_towards_fp32_and_never_on_the_images_int8_is_judged_on(
        judged_on_calibration, finetuned, tmp_path: Path, monkeypatch) -> None:
    """What the target asks of the toolchain (its boundary replaced): refinement only where some calibration
    images are held back, and towards the FP32 model, not the fine-tuned weights MCT quantizes."""
    import json

    from edgeres.calibration.folder import CalibrationSet
    from edgeres.converter_envs import imx500
    from edgeres.quantization.design import QuantizationPlan
    from edgeres.targets.base import ConvertJob
    from edgeres.targets.imx500 import Imx500Target

    asked = {}

    def quantize(work: Path, log) -> dict:
        asked.update(json.loads((work / "job.json").read_text()), reference=(work / "reference.pt").is_file())
        return {"weight_bits": {"0": 8}}

    monkeypatch.setattr(imx500, "quantize", quantize)
    from torchvision.models import resnet18

    module = resnet18(num_classes=2).eval()
    spec = Preprocess.imagenet(8)
    logged = []
    job = ConvertJob(module=module, arch="resnet18", labels=["a"], preprocess=Imx500Target().input_spec(spec),
                     model_preprocess=spec, precision="int8", stem="s", log=logged.append,
                     calibration=CalibrationSet([np.zeros((8, 8, 3), np.uint8)] * 4),
                     judged_on_calibration=judged_on_calibration)
    plan = QuantizationPlan(resnet18(num_classes=2).eval(), {}, "minmax", False, finetuned=finetuned)
    Imx500Target()._quantize(job, plan, tmp_path, DEFAULT_WEIGHT_BUDGET)
    assert asked["refine_thresholds"] is not judged_on_calibration
    assert asked["activation_error_method"] == (None if judged_on_calibration else "MAE")
    assert asked["reference"] is finetuned  # the FP32 model saved beside fine-tuned weights
    assert any("left as MCT chose them" in line for line in logged) is judged_on_calibration

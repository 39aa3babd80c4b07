"""Rockchip RKNN: the .rknn rknn-toolkit2 compiles, run on the toolkit's simulator in its own environment.

Everything here runs the real rknn-toolkit2 2.5.0 in the environment edgeres builds for it (once, about
80 s and 1.5 GB from the package index); its simulator runs on this PC, not on a Rockchip NPU. The
board's runtime (rknn-toolkit-lite2, aarch64 only) is replaced at its boundary, the RKNNLite class,
by one that runs the simulator.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeres.conversion.measure import artifact_logits
from edgeres.converter_envs.rknn import TOOLKIT_VERSION, Simulator, compile_rknn
from edgeres.errors import ArtifactError, ConversionError
from edgeres.exporters.onnx_tools import module_of
from edgeres.runtime import backend_class
from edgeres.runtime.classifier import Classifier
from edgeres.runtime.rknn import RknnLiteBackend, RknnSimulatorBackend, compiled_for

if not sys.platform.startswith("linux") or __import__("platform").machine() != "x86_64":
    pytest.skip("rknn-toolkit2's simulator runs on Linux x86-64", allow_module_level=True)
pytestmark = pytest.mark.slow


def _qdq(path: Path) -> Path:
    return path.with_name(path.stem + ".qdq.onnx")


def test_the_set_is_a_rknn_for_its_platform_beside_the_qdq_it_was_compiled_from(converted) -> None:
    result = converted("rknn", "int8")
    assert result.path.suffix == ".rknn" and _qdq(result.path) in result.files
    assert compiled_for(result.path) == {"platform": "rk3588", "version": TOOLKIT_VERSION}
    record = result.record
    assert record.quantization["compiled"]["platform"] == "rk3588"
    assert set(record.companions) == {_qdq(result.path).name}  # its hash: a swapped QDQ is refused
    assert record.verification["runtime"] == RknnSimulatorBackend.name and "not the chip" in RknnSimulatorBackend.name
    nodes = {node.op_type for node in onnx.load(str(_qdq(result.path))).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= nodes


def test_the_simulator_runs_the_npus_arithmetic_and_gives_fp32s_answers(converted, model, held_out) -> None:
    """The simulator's build is another computation of the QDQ graph than ONNX Runtime's: compared, not assumed."""
    result = converted("rknn", "int8")
    assert backend_class(result.path) is RknnSimulatorBackend
    frames = held_out[0][::9][:40]
    classifier = Classifier(result.path)
    simulated = classifier.logits_batch(frames)
    spec = classifier.preprocess
    crops = [spec.resize_and_crop(frame) for frame in frames]
    on_cpu = artifact_logits(_qdq(result.path), spec, crops)
    assert np.mean(simulated.argmax(1) == on_cpu.argmax(1)) >= 0.95
    assert not np.array_equal(simulated, on_cpu)
    reference = model.logits(spec.tensors(crops))
    assert np.mean(simulated.argmax(1) == reference.argmax(1)) >= 0.95


class _BoardLibrary:
    """rknn-toolkit-lite2's RKNNLite, as the board has it, running on the simulator instead of an NPU."""

    loaded: list[str] = []
    formats: list[str] = []

    def __init__(self, verbose: bool = False) -> None:
        self._simulator = None

    def load_rknn(self, path: str) -> int:
        if not open(path, "rb").read(4) == b"RKNN":
            return -1
        self.loaded.append(path)
        self._simulator = Simulator(_qdq(Path(path)), compiled_for(Path(path))["platform"], log=lambda m: None)
        return 0

    def init_runtime(self, core_mask: int = 0) -> int:
        return 0 if self._simulator else -1

    def inference(self, inputs: list, data_format: str | None = None) -> list:
        (batch,) = inputs
        assert batch.shape[0] == 1 and batch.dtype == np.float32 and batch.flags.c_contiguous
        self.formats.append(data_format)
        return [self._simulator.run(batch)]


def test_on_the_board_rknn_toolkit_lite2_runs_the_rknn_itself(converted, held_out, monkeypatch) -> None:
    result = converted("rknn", "int8")
    board = types.ModuleType("rknnlite")
    board.api = types.SimpleNamespace(RKNNLite=_BoardLibrary)
    monkeypatch.setitem(sys.modules, "rknnlite", board)
    monkeypatch.setitem(sys.modules, "rknnlite.api", board.api)
    assert backend_class(result.path) is RknnLiteBackend
    frames = held_out[0][:6]
    on_board = Classifier(result.path).logits_batch(frames)
    assert _BoardLibrary.loaded[-1] == str(result.path) and set(_BoardLibrary.formats) == {"nchw"}
    monkeypatch.delitem(sys.modules, "rknnlite")
    monkeypatch.delitem(sys.modules, "rknnlite.api")
    np.testing.assert_array_equal(on_board, Classifier(result.path).logits_batch(frames))


def test_a_rknn_the_simulator_cannot_stand_for_is_refused(converted, tmp_path: Path) -> None:
    result = converted("rknn", "int8")
    alone = tmp_path / "alone.rknn"
    shutil.copy(result.path, alone)
    with pytest.raises(ArtifactError, match="needs the QDQ it was compiled from .*alone.qdq.onnx"):
        RknnSimulatorBackend(alone, None)
    older = tmp_path / "older.rknn"
    older.write_bytes(result.path.read_bytes().replace(f'"version":"{TOOLKIT_VERSION}"'.encode(),
                                                       b'"version":"1.9.9"', 1))
    shutil.copy(_qdq(result.path), _qdq(older))
    with pytest.raises(ArtifactError, match="compiled by rknn-toolkit2 1.9.9; the simulator here is"):
        RknnSimulatorBackend(older, None)
    lying = tmp_path / "lying.rknn"
    lying.write_bytes(b"\x89PNG not a model")
    with pytest.raises(ArtifactError, match="is not an RKNN model"):
        RknnSimulatorBackend(lying, None)


def test_a_set_whose_files_were_swapped_is_refused_before_anything_runs(converted, tmp_path: Path) -> None:
    """On a PC the simulator runs the QDQ, not the .rknn: both are bound to the record by their hashes."""
    result = converted("rknn", "int8")
    other = converted("rknn", "int8", keep=("layer4.0.conv1",), max_kept=1)
    for swapped, source in (("qdq", _qdq(other.path)), ("rknn", other.path)):
        folder = tmp_path / swapped
        shutil.copytree(result.path.parent, folder)
        shutil.copy(source, folder / (_qdq(result.path).name if swapped == "qdq" else result.path.name))
        with pytest.raises(ArtifactError, match="is not the (file|.rknn) .* (was converted with|compiled from)"):
            Classifier(folder / result.path.name)


def test_the_simulators_own_reason_comes_through_and_a_dead_one_is_an_error(converted) -> None:
    result = converted("rknn", "int8")
    backend = RknnSimulatorBackend(result.path, None)
    with pytest.raises(ArtifactError, match=r"rknn-toolkit2: .*shape \(1, 3, 9, 9\) is wrong"):
        backend.run(np.zeros((1, 3, 9, 9), np.float32))
    backend = RknnSimulatorBackend(result.path, None)
    backend._simulator._process.kill()
    with pytest.raises(ArtifactError, match="rknn-toolkit2: the rknn-toolkit2 step stopped with status -9"):
        backend.run(np.zeros((1, 3, 32, 32), np.float32))


def test_opening_a_rknn_never_builds_the_toolkits_environment(converted, monkeypatch, tmp_path: Path) -> None:
    from edgeres.converter_envs import ENVS_ENV
    from edgeres.errors import BackendUnavailableError

    result = converted("rknn", "int8")
    monkeypatch.setenv(ENVS_ENV, str(tmp_path / "none"))
    with pytest.raises(BackendUnavailableError, match="runs on rknn-toolkit2's simulator on a PC: .*not built here"):
        Classifier(result.path)
    assert not (tmp_path / "none").exists()
    monkeypatch.setattr("platform.machine", lambda: "aarch64")  # a board without rknn-toolkit-lite2
    assert backend_class(result.path) is RknnLiteBackend
    with pytest.raises(BackendUnavailableError, match="need rknn-toolkit-lite2 on the board: pip install"):
        Classifier(result.path)


def test_a_device_profile_compiles_for_its_platform(model, calib_dir: Path, tmp_path: Path) -> None:
    from edgeres.conversion.pipeline import ConvertOptions, convert

    options = ConvertOptions(target="rk3566", precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=64,
                             imgsz=32, report=False, finetune="never")
    result = convert(model, options, log=lambda message: None)
    assert compiled_for(result.path)["platform"] == "rk3566"
    assert result.record.device_profile["name"] == "rk3566" and result.record.target == "rknn"


def test_a_kept_layer_stays_in_float_and_the_npu_runs_it(converted) -> None:
    """The toolkit runs a layer left without Q/DQ in float16 on the NPU: the graph rules let it through."""
    result = converted("rknn", "int8", keep=("layer4.0.conv1",), max_kept=1)
    qdq = onnx.load(str(_qdq(result.path)))
    conv_of = {module_of(node.name): node for node in qdq.graph.node if node.op_type == "Conv"}
    conv = conv_of["layer4.0.conv1"]
    assert conv.input[1] in {init.name for init in qdq.graph.initializer}  # float weights, no DequantizeLinear
    assert conv_of["layer4.0.conv2"].input[1] not in {init.name for init in qdq.graph.initializer}  # the next one's are int8
    assert result.record.quantization["design"]["kept_higher"] == ["layer4.0.conv1"]
    assert result.record.verification["top1_agreement"] >= 0.95


def test_what_the_toolkit_refuses_fails_the_conversion_with_its_reason(tmp_path: Path) -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    source = tmp_path / "opset21.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), str(source))
    with pytest.raises(ConversionError, match=r"^rknn-toolkit2: Unsupport onnx opset 21, need <= 19!$"):
        compile_rknn(source, "rk3588", tmp_path / "out.rknn", log=lambda message: None)
    assert not (tmp_path / "out.rknn").exists()


def test_a_toolkit_that_crashes_refuses_that_plan_only(monkeypatch, tmp_path: Path) -> None:
    """A signal (it segfaulted on the hard ResNet50 with 16 layers kept) is the plan's refusal, which the search
    records and goes past; a reasoned failure stays a conversion error."""
    import edgeres.converter_envs.rknn as rknn_env
    from edgeres.errors import PlanRefusedError

    crashing = tmp_path / "crash.py"
    crashing.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setattr(rknn_env, "TOOL", crashing)
    with pytest.raises(PlanRefusedError, match="rknn-toolkit2 crashed compiling for rk3588 \\(signal 11\\)"):
        compile_rknn(tmp_path / "any.onnx", "rk3588", tmp_path / "out.rknn", log=lambda message: None)


"""Qualcomm Hexagon (QNN): the context model QNN compiles, run on QNN's HTP emulator with CPU fallback disabled.

Everything here runs the real onnxruntime-qnn: its Linux x86-64 wheel compiles with QNN's HTP
backend and runs the binary on the HTP emulator (not on a Snapdragon).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeres.artifact import read_sidecar
from edgeres.conversion.measure import artifact_logits
from edgeres.errors import ConversionError
from edgeres.runtime import backend_class
from edgeres.runtime.classifier import Classifier
from edgeres.runtime.onnxruntime import OnnxRuntimeBackend
from edgeres.runtime.qnn import QnnBackend, is_context_model
from edgeres.targets.qnn import DEFAULT_SOC, Soc, compile_context

pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn (edgeres[qnn]) is not installed")
pytestmark = pytest.mark.slow


def test_the_set_is_a_context_model_with_every_node_on_the_npu_and_its_qdq(converted) -> None:
    result = converted("qnn", "int8")
    model = onnx.load(str(result.path))
    assert {node.op_type for node in model.graph.node} == {"EPContext"}  # no op left for a CPU
    sources = {a.s.decode() for node in model.graph.node for a in node.attribute if a.name == "source"}
    assert sources == {"QNNExecutionProvider"}
    qdq = result.path.with_name(result.path.stem + ".qdq.onnx")
    assert qdq in result.files and not is_context_model(qdq)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= {n.op_type for n in onnx.load(str(qdq)).graph.node}
    compiled = result.record.quantization["compiled"]
    assert (compiled["soc_model"], compiled["htp_arch"]) == (DEFAULT_SOC.soc_model, DEFAULT_SOC.htp_arch)


def test_the_runtime_is_chosen_by_what_the_onnx_holds(converted) -> None:
    result = converted("qnn", "int8")
    assert backend_class(result.path) is QnnBackend
    assert backend_class(result.path.with_name(result.path.stem + ".qdq.onnx")) is OnnxRuntimeBackend
    assert backend_class(converted("npu", "int8").path) is OnnxRuntimeBackend


def test_the_emulator_gives_the_stand_ins_answers_and_the_record_says_so(converted, model, held_out) -> None:
    """The search judged the QDQ on the CPU; the emulator runs the compiled binary in QNN's own fixed point
    arithmetic. They are different computations of one graph: compared image by image, not assumed equal."""
    result = converted("qnn", "int8")
    checked = result.record.verification["stand_in"]
    assert "emulator" in checked["runtime"] and checked["images"] > 16
    assert checked["top1_agreement_with_stand_in"] >= 0.95
    assert "ONNX Runtime's CPU" in result.record.quantization["search"]["evaluated_on"]

    frames = held_out[0][:24]
    emulated = Classifier(result.path).logits_batch(frames)
    qdq = result.path.with_name(result.path.stem + ".qdq.onnx")
    spec = Classifier(result.path).preprocess
    on_cpu = artifact_logits(qdq, spec, [spec.resize_and_crop(f) for f in frames])
    assert np.mean(emulated.argmax(1) == on_cpu.argmax(1)) >= 0.9
    assert not np.array_equal(emulated, on_cpu)  # it really is another arithmetic, not the CPU again
    reference = model.logits(spec.tensors([spec.resize_and_crop(f) for f in frames]))
    assert np.mean(emulated.argmax(1) == reference.argmax(1)) >= 0.9


def test_a_device_profile_compiles_for_its_soc(model, calib_dir: Path, tmp_path: Path) -> None:
    from edgeres.conversion.pipeline import ConvertOptions, convert

    options = ConvertOptions(target="snapdragon-8-gen-3", precision="int8", out_dir=tmp_path, calib=calib_dir,
                             calib_size=64, imgsz=32, report=False, finetune="never")
    result = convert(model, options, log=lambda message: None)
    compiled = result.record.quantization["compiled"]
    assert (compiled["soc_model"], compiled["htp_arch"]) == ("57", "75") and "SM8650" in compiled["soc"]
    assert result.record.device_profile["name"] == "snapdragon-8-gen-3"
    assert read_sidecar(result.path).target == "qnn"


def test_an_op_the_npu_cannot_run_fails_the_compilation_with_qnns_reason(tmp_path: Path) -> None:
    """CPU fallback is disabled: a node QNN cannot place on the HTP is an error, not a silent CPU op."""
    graph = helper.make_graph([helper.make_node("Det", ["x"], ["y"])], "det",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    source = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(source))
    with pytest.raises(ConversionError, match="QNN could not compile the model for .* every node on the NPU: "
                       "Det node .*Operators of type `Det` are not supported by QNN EP"):
        compile_context(source, tmp_path / "det_ctx.onnx", Soc("test SoC", "43", "73"))
    assert not (tmp_path / "det_ctx.onnx").exists()


def test_a_context_model_that_is_not_qnns_is_not_taken_for_one(tmp_path: Path) -> None:
    def context_model(name: str, domain: str, source: str) -> Path:
        node = helper.make_node("EPContext", ["x"], ["y"], domain=domain, source=source, ep_cache_context=b"blob",
                                embed_mode=1)
        graph = helper.make_graph([node], "ctx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(graph), str(tmp_path / name))
        return tmp_path / name

    assert is_context_model(context_model("qnn.onnx", "com.microsoft", "QNNExecutionProvider"))
    assert not is_context_model(context_model("openvino.onnx", "com.microsoft", "OpenVINOExecutionProvider"))
    assert not is_context_model(context_model("lookalike.onnx", "evil.domain", "QNNExecutionProvider"))
    assert not is_context_model(context_model("prefix.onnx", "com.microsoft", "QNNfake"))
    (tmp_path / "junk.onnx").write_bytes(b"\x00not protobuf")
    assert not is_context_model(tmp_path / "junk.onnx")


def test_a_compiled_model_that_answers_otherwise_than_its_stand_in_fails_verification(converted, held_out) -> None:
    """The bar was judged on the stand-in: an emulated artifact that does not give its answers is refused."""
    from types import SimpleNamespace

    from edgeres.conversion.pipeline import _against_stand_in
    from edgeres.errors import VerificationError

    result = converted("qnn", "int8")
    spec = Classifier(result.path).preprocess
    crops = [spec.resize_and_crop(frame) for frame in held_out[0][::15][:30]]
    stand_in = SimpleNamespace(path=result.path.with_name(result.path.stem + ".qdq.onnx"), preprocess=spec)
    artifact = SimpleNamespace(path=result.path)
    agreeing = artifact_logits(stand_in.path, spec, crops)
    found = _against_stand_in(stand_in, artifact, crops, agreeing, agreeing, lambda message: None)
    assert found["top1_agreement_with_stand_in"] == 1.0 and found["max_abs_logit_diff_to_stand_in"] == 0
    shuffled = np.roll(agreeing, 1, axis=1)  # every answer moved to the next class
    with pytest.raises(VerificationError, match="computes something other than the judged one"):
        _against_stand_in(stand_in, artifact, crops, shuffled, agreeing, lambda message: None)


def test_a_kept_layer_gets_uint16_activations_converted_at_its_edges_and_compiles(converted) -> None:
    """Learned from QNN: with int16 activations (the npu target's A16W8) it leaves a kept layer's per-channel
    weights standalone and refuses the model; uint16 on the kept layer alone, converted from and to int8 where
    it meets the others, compiles with every node on the NPU."""
    result = converted("qnn", "int8", keep=("layer4.0.conv1",), max_kept=1)
    assert {node.op_type for node in onnx.load(str(result.path)).graph.node} == {"EPContext"}
    qdq = onnx.load(str(result.path.with_name(result.path.stem + ".qdq.onnx")))
    zero_points = {init.name: init for init in qdq.graph.initializer}
    sixteen = [node for node in qdq.graph.node if node.op_type == "QuantizeLinear"
               and zero_points[node.input[2]].data_type == TensorProto.UINT16]
    quantizers = [node for node in qdq.graph.node if node.op_type == "QuantizeLinear"]
    assert 1 <= len(sixteen) <= 4 < len(quantizers) // 4  # the kept layer's input convert, its output; not the rest
    assert result.record.quantization["design"]["kept_higher"] == ["layer4.0.conv1"]
    assert "uint16" in result.record.quantization["higher_precision"]

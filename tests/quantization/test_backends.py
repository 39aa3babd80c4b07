"""The plan's ranges reach every backend's artifact: each target's quantization parameters, read back
from the file it wrote, are the ones the design chose for that point."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from edgeres.calibration import read_image_folder
from edgeres.demo import DEMO_IMGSZ
from edgeres.preprocess import Preprocess
from edgeres.quantization.design import QuantizationDesign
from edgeres.quantization.onnx_backend import tensor_points

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def design(model, calib_dir):
    """The pipeline's design for the `converted` INT8 artifacts, and the calibration images it used (the
    quarter held back sets nothing: it is what the design evaluates on)."""
    spec = Preprocess.imagenet(DEMO_IMGSZ)
    used, held = read_image_folder(calib_dir, spec, size=200).held_out()
    return QuantizationDesign(model.module, spec.tensors(used.crops), spec.tensors(held.crops)), used


@pytest.fixture(scope="module")
def plan_of(design):
    """The plan the pipeline applied to an artifact, recomputed from the same calibration images."""
    design, _ = design

    def get(record):
        chosen = record.quantization["design"]
        return design.plan(chosen["range_method"], chosen["bias_correction"])

    return get


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}


def _activation_scales(model: onnx.ModelProto) -> dict[str, tuple[float, int]]:
    constants = _constants(model)
    return {node.input[0]: (float(constants[node.input[1]]), int(constants[node.input[2]]))
            for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in constants}


@pytest.fixture(scope="module")
def tuned(model, design, tmp_path_factory):
    """A fine-tuned plan whose weights and ranges differ from calibration's, and tuned_built(target): the
    artifact each target's own tool makes of it, as the pipeline's search would."""
    from edgeres.targets import resolve_target
    from edgeres.targets.base import ConvertJob

    spec = Preprocess.imagenet(DEMO_IMGSZ)
    design, used = design
    plan, _ = design.best_plan()
    tuned_plan, _ = design.finetuned(plan, seconds=600, steps=30)
    # the check below could not tell the plans apart if fine-tuning had changed nothing
    moved = [abs(a[1] - b[1]) / max(abs(b[1]), 1e-6) for a, b in zip(tuned_plan.ranges.values(), plan.ranges.values())]
    assert np.median(moved) > 1e-3
    built = {}

    def tuned_built(target_name: str):
        if target_name not in built:
            target, _ = resolve_target(target_name)
            job = ConvertJob(module=model.module, arch=model.arch, labels=model.labels,
                             preprocess=target.input_spec(spec), model_preprocess=spec, precision="int8",
                             stem=f"tuned_{target_name}", calibration=used, log=lambda message: None)
            scratch = tmp_path_factory.mktemp(f"tuned-{target_name}")
            built[target_name] = target.build(job, tuned_plan, scratch).artifacts[0].path
        return built[target_name]

    return tuned_plan, tuned_built


def _artifact_and_plan(case: str, target: str, converted, plan_of, tuned):
    if case == "calibrated":
        result = converted(target, "int8")
        return result.path, plan_of(result.record)
    plan, built = tuned
    return built(target), plan


CASES = ["calibrated", "fine-tuned"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("target, symmetric", [("onnx", False), ("npu", False), ("jetson", True)])
def test_onnx_qdq_scales_are_the_plans(converted, plan_of, tuned, case: str, target: str, symmetric: bool) -> None:
    path, plan = _artifact_and_plan(case, target, converted, plan_of, tuned)
    model = onnx.load(str(path))
    points = tensor_points(_float_graph(model))
    scales = _activation_scales(model)
    checked = 0
    for tensor, (scale, zero) in scales.items():
        if tensor not in points:
            continue  # a Q pair edgeres inserted itself (jetson's residuals), checked below
        low, high = plan.ranges[points[tensor]]
        expected = max(-low, high) / 127 if symmetric else (high - low) / 255
        assert scale == pytest.approx(expected, rel=1e-5), tensor
        checked += 1
    assert checked >= 20  # every activation quantizer of a ResNet18, not a handful
    _check_weights(model, plan)


def _check_weights(model: onnx.ModelProto, plan) -> None:
    """conv1's int8 weights, dequantized, are the plan's weights as the simulation quantizes them."""
    from edgeres.quantization.simulate import quantize_weight

    constants = _constants(model)
    expected = quantize_weight(plan.module.conv1.weight.detach()).numpy()
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in constants and constants[node.input[0]].ndim == 4:
            weight, scale = constants[node.input[0]].astype(np.float32), constants[node.input[1]]
            if weight.shape == expected.shape:
                np.testing.assert_allclose(weight * scale.reshape(-1, 1, 1, 1), expected, atol=1e-6)
                return
    raise AssertionError("no int8 weight of conv1's shape in the QDQ graph")


def _float_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without its Q/DQ pairs, tensors named as in the FP32 export (what tensor_points maps)."""
    constants = _constants(model)
    rename = {}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] not in constants:
            quantize = next(n for n in model.graph.node if node.input[0] in n.output)
            rename[node.output[0]] = quantize.input[0]
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    del graph.graph.node[:]
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        copy = graph.graph.node.add()
        copy.CopyFrom(node)
        for index, name in enumerate(copy.input):
            copy.input[index] = rename.get(name, name)
    return graph


@pytest.mark.parametrize("case", CASES)
def test_openvino_fake_quantize_ranges_are_the_plans(converted, plan_of, tuned, case: str) -> None:
    import openvino as ov

    path, plan = _artifact_and_plan(case, "x86", converted, plan_of, tuned)
    model = ov.Core().read_model(str(path))
    fakes = [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]
    assert len(fakes) >= 20
    uses = {float(max(-low, high)) for low, high in plan.ranges.values()}  # the performance preset is symmetric
    for fq in fakes:
        high = float(fq.input_value(2).get_node().get_data().reshape(-1)[0])
        assert any(abs(high - h) <= 1e-5 * max(1.0, abs(h)) for h in uses), fq.get_friendly_name()


@pytest.mark.parametrize("case", CASES)
def test_tflite_scales_are_the_plans(converted, plan_of, tuned, case: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from edgeres.quantization.tflite_backend import op_points

    path, plan = _artifact_and_plan(case, "rpi", converted, plan_of, tuned)
    interpreter = Interpreter(model_path=str(path))
    by_name = {d["name"]: d for d in interpreter.get_tensor_details()}
    # map on the quantized file itself: op order and tensor names survive ai-edge-quantizer
    points, _ = op_points(path.read_bytes(), plan.module, (0.0, 255.0))
    checked = 0
    for name, point in points.items():
        if not isinstance(point, str) or name not in by_name:
            continue
        scale = by_name[name]["quantization_parameters"]["scales"]
        if len(scale) != 1:
            continue
        low, high = plan.ranges[point]
        assert float(scale[0]) == pytest.approx((high - low) / 255, rel=1e-5), name
        checked += 1
    assert checked >= 20


@pytest.mark.parametrize("case", CASES)
def test_executorch_scales_are_the_plans(converted, plan_of, tuned, case: str) -> None:
    """The .pte's quantize ops use the plan's scales (read from the lowered program's XNNPACK payload is
    opaque, so the check runs on the same PT2E program the target lowers)."""
    import torch

    from edgeres.quantization.executorch_backend import pt2e_int8

    plan = plan_of(converted("mobile", "int8").record) if case == "calibrated" else tuned[0]
    program, _ = pt2e_int8(plan, torch.zeros(1, 3, DEMO_IMGSZ, DEMO_IMGSZ))
    scales = sorted({float(node.args[1]) for node in program.graph.nodes
                     if "quantize_per_tensor" in str(node.target) and isinstance(node.args[1], float)})
    # XNNPACK shares one observer where an op needs equal parameters on two tensors (the last block's
    # output and the average pool; the two inputs of a downsampling add): the union of their ranges
    ranges = list(plan.ranges.values())
    ranges += [(min(a[0], b[0]), max(a[1], b[1])) for a in plan.ranges.values() for b in plan.ranges.values()]
    expected = np.array(sorted({max((high - low) / 255, 2 ** -12) for low, high in ranges}))
    assert len(scales) >= 15
    for scale in scales:  # the observers hold float32 ranges
        assert np.abs(expected - scale).min() <= 1e-6 * scale, scale


def test_npu_keeps_a_layer_out_with_16_bit_activations(converted, plan_of) -> None:
    result = converted("npu", "int8", keep=("fc",))
    model = onnx.load(str(result.path))
    constants = _constants(model)
    gemm = next(node for node in model.graph.node if node.op_type == "Gemm")
    producer = next(node for node in model.graph.node if gemm.input[0] in node.output)
    assert producer.op_type == "DequantizeLinear"
    assert constants[producer.input[2]].dtype == np.int16  # A16W8: the input is 16-bit
    weight = next(node for node in model.graph.node if gemm.input[1] in node.output)
    assert constants[weight.input[0]].dtype == np.int8  # the weights stay int8
    assert result.record.quantization["design"]["kept_higher"] == ["fc"]

"""The backend-neutral half of INT8: points, statistics, ranges, simulation, bias correction, ranking."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision

from edgeres.demo import DEMO_IMGSZ
from edgeres.preprocess import Preprocess
from edgeres.quantization.corrections import _apply, correct_biases
from edgeres.quantization.design import QuantizationDesign
from edgeres.quantization.points import blocks, fold_batchnorm, layers, points
from edgeres.quantization.ranges import METHODS, PointStats, choose, fake_quantize
from edgeres.quantization.simulate import fake_quantize as fake_quantize_tensor
from edgeres.models import module_logits as logits
from edgeres.quantization.simulate import GRIDS, quantize_weight, simulated
from edgeres.quantization.statistics import collect


def random_resnet(arch: str = "resnet18", seed: int = 0) -> torch.nn.Module:
    """A torchvision ResNet with BatchNorm statistics that are not the identity (as after training)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model


def inputs(count: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, 3, size, size)).astype(np.float32)


@pytest.mark.parametrize("arch, layer_count", [("resnet18", 21), ("resnet50", 54)])
def test_every_layer_and_point_is_named(arch: str, layer_count: int) -> None:
    model = random_resnet(arch)
    found = layers(model)
    assert len(found) == layer_count and found[0].name == "conv1" and found[-1].name == "fc"
    assert {layer.input_point for layer in found} <= set(points(model))
    assert found[-1].input_point == "avgpool"
    downsample = next(layer for layer in found if layer.name == "layer2.0.downsample.0")
    assert downsample.input_point == f"layer1.{len(model.layer1) - 1}" and downsample.feeds_add
    assert not downsample.relu_after


def test_folding_batchnorm_keeps_the_function() -> None:
    model = random_resnet("resnet50")
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = inputs(4)
    np.testing.assert_allclose(logits(folded, x), logits(model, x), rtol=1e-5, atol=1e-3)


def test_statistics_are_exact_where_they_must_be() -> None:
    folded = fold_batchnorm(random_resnet())
    x = inputs()
    stats = collect(folded, x)
    assert set(stats) == set(points(folded))
    seen = {}
    handle = folded.layer1[0].register_forward_hook(lambda m, a, out: seen.setdefault("out", out.clone()))
    logits(folded, x, batch=len(x))
    handle.remove()
    assert stats["layer1.0"].high == pytest.approx(float(seen["out"].max()))
    assert stats["layer1.0"].low == 0.0  # a block ends with its ReLU
    assert stats["layer1.0.conv2"].low < 0  # the conv before the residual add has no ReLU
    assert stats["input"].low == pytest.approx(float(x.min()))
    assert stats["fc"].mean_high <= stats["fc"].high


@pytest.mark.parametrize("tail", ["laplace", "student-t", "mixture"])
def test_range_methods_stay_inside_the_values_and_mse_is_the_least_error(tail: str) -> None:
    rng = np.random.default_rng(0)
    values = {"laplace": rng.laplace(0, 1, 1 << 18), "student-t": rng.standard_t(3, 1 << 18),
              "mixture": np.concatenate([rng.normal(0, 1, 255_000), rng.normal(0, 30, 7144)])}[tail]
    values = rng.permutation(values).astype(np.float32)
    stats = PointStats(float(values.min()), float(values.max()), values, float(values.min()) / 2,
                       float(values.max()) / 2)
    ranges = {method: choose(stats, method) for method in METHODS}
    assert ranges["minmax"] == (float(values.min()), float(values.max()))
    for method, (low, high) in ranges.items():
        assert values.min() <= low < 0 < high <= values.max(), method
    assert ranges["percentile"][1] < values.max() and ranges["entropy"][1] < values.max()

    def error(method):
        return float(np.mean((fake_quantize(values, *ranges[method]) - values) ** 2))
    assert error("mse") <= 1.02 * min(error(method) for method in METHODS)
    with pytest.raises(ValueError, match="methods are"):
        choose(stats, "median")


def test_simulation_with_wide_grids_is_float_and_int8_is_not(monkeypatch) -> None:
    folded = fold_batchnorm(random_resnet())
    x = inputs()
    stats = collect(folded, x)
    ranges = {point: choose(s, "minmax") for point, s in stats.items()}
    exact = logits(folded, x)
    with simulated(folded, ranges):
        int8 = logits(folded, x)
    assert np.abs(int8 - exact).max() > 1e-3
    np.testing.assert_allclose(logits(folded, x), exact)  # hooks and weights are restored
    every = {layer.name for layer in layers(folded)}
    with simulated(folded, ranges, higher=every):
        only_stream = logits(folded, x)
    assert np.abs(only_stream - exact).max() < np.abs(int8 - exact).max()


def test_a_quantizer_given_to_the_simulation_runs_at_every_point_int8_places_one() -> None:
    """tools/int8_noise_floor.py replaces rounding with noise this way: every quantizer, on its grid, nothing
    else."""
    folded = fold_batchnorm(random_resnet())
    x = inputs(4)
    ranges = {point: choose(s, "minmax") for point, s in collect(folded, x).items()}
    seen: list = []

    def passing(values, value_range, grid):
        seen.append((value_range, grid))
        return values

    with simulated(folded, ranges, weights=False, quantize=passing, grid=GRIDS["symmetric"]):
        np.testing.assert_allclose(logits(folded, x), logits(fold_batchnorm(random_resnet()), x), rtol=1e-5,
                                   atol=1e-5)
    branches = sum(layer.feeds_add for layer in layers(folded))
    # each layer's input, each block's output, each branch into an add, and the logits
    assert len(seen) == len(layers(folded)) + len(blocks(folded)) + branches + 1
    assert all(grid is GRIDS["symmetric"] for _, grid in seen)
    assert {value_range for value_range, _ in seen} == set(ranges.values())


def _quantize_dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """ONNX Runtime's own QuantizeLinear -> DequantizeLinear on int8."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
         helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"])], "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(values.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(values.shape))],
        [helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
         helper.make_tensor("zero", TensorProto.INT8, [], [zero_point])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": values})[0]


@pytest.mark.parametrize("value_range", [(0.0, 6.0), (-2.0, 6.0), (-5.0, 1.5)])
@pytest.mark.parametrize("grid, symmetric", [("asymmetric", False), ("symmetric", True)])
def test_simulated_grids_are_onnx_runtimes_int8(value_range, grid: str, symmetric: bool) -> None:
    """The grid the design simulates is the one ONNX Runtime computes for the same range (jetson: symmetric,
    so after a ReLU only 128 levels)."""
    from onnx import TensorProto
    from onnxruntime.quantization.quant_utils import compute_scale_zp, get_qmin_qmax_for_qType

    low, high = value_range
    qmin, qmax = get_qmin_qmax_for_qType(TensorProto.INT8, symmetric=symmetric)
    zero, scale = compute_scale_zp(np.float32(low), np.float32(high), qmin, qmax, symmetric=symmetric)
    values = np.linspace(1.5 * min(low, -1.0), 1.5 * high, 20001, dtype=np.float32)
    expected = _quantize_dequantize(values, float(scale), int(zero))
    simulated_values = fake_quantize_tensor(torch.from_numpy(values), value_range, GRIDS[grid]).numpy()
    assert np.abs(simulated_values - expected).max() < 1e-4 * high
    levels = len(np.unique(expected[(values >= 0) & (values <= high)]))
    assert levels == 1 + round(high / float(scale))
    if symmetric and low == 0:
        assert levels == 128  # what TensorRT gives a ReLU's output


def test_nncf_grid_is_openvinos_fake_quantize() -> None:
    """x86's default preset: the FakeQuantize the backend writes computes what the design simulated."""
    import openvino as ov
    import openvino.opset13 as ops

    values = np.linspace(-9.0, 9.0, 20001, dtype=np.float32)
    for value_range in [(0.0, 6.0), (-2.0, 6.0), (-5.0, 1.5)]:
        low, high, levels = GRIDS["nncf-symmetric"](value_range)
        x = ops.parameter(values.shape, np.float32)
        bounds = [ops.constant(np.float32(v)) for v in (low, high, low, high)]
        model = ov.Model([ops.fake_quantize(x, *bounds, levels)], [x])
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        expected = compiled(values)[0]
        simulated_values = fake_quantize_tensor(torch.from_numpy(values), value_range, GRIDS["nncf-symmetric"])
        assert np.abs(simulated_values.numpy() - expected).max() < 1e-4 * high, value_range


@pytest.mark.parametrize("layer_name", ["conv1", "layer3.0.conv2", "fc"])
def test_bias_correction_removes_each_layers_mean_shift(layer_name: str) -> None:
    """Fast bias correction: with its float input, a corrected INT8 layer's mean output is the float one's."""
    folded = fold_batchnorm(random_resnet())
    x = inputs(32)
    ranges = {point: choose(s, "minmax") for point, s in collect(folded, x).items()}
    corrected = copy.deepcopy(folded)
    shifts = correct_biases(corrected, ranges, x)
    assert set(shifts) == {layer.name for layer in layers(folded)} and max(shifts.values()) > 0
    layer = next(item for item in layers(folded) if item.name == layer_name)
    captured = []
    handle = dict(folded.named_modules())[layer_name].register_forward_pre_hook(lambda m, a: captured.append(a[0]))
    logits(folded, x, batch=len(x))
    handle.remove()
    x_float = captured[0]
    original, fixed = dict(folded.named_modules())[layer_name], dict(corrected.named_modules())[layer_name]
    axes = [0] + list(range(2, x_float.dim()))

    @torch.no_grad()
    def mean_output(module, quantize: bool) -> torch.Tensor:
        weight = quantize_weight(module.weight) if quantize else module.weight
        value = fake_quantize_tensor(x_float, ranges[layer.input_point]) if quantize else x_float
        return _apply(module, value, weight).mean(dim=axes)

    exact = mean_output(original, quantize=False)
    before = (mean_output(original, quantize=True) - exact).abs().max()
    after = (mean_output(fixed, quantize=True) - exact).abs().max()
    assert after < before / 10


@pytest.fixture(scope="module")
def sensitive_design(model, digits) -> QuantizationDesign:
    """The digits model with fc's weights for one feature raised by 1000: FP32 answers alike, INT8 fc does not."""
    module = copy.deepcopy(model.module)
    with torch.no_grad():
        module.fc.weight[:, 7] += 1000.0
    spec = Preprocess.imagenet(DEMO_IMGSZ)
    from edgeres.calibration import read_image_folder

    crops = read_image_folder(digits.train_dir, spec, size=64).crops
    return QuantizationDesign(module, spec.tensors(crops), spec.tensors(crops))


def test_the_layer_made_sensitive_ranks_first(sensitive_design) -> None:
    """fc ranks first, and the ranking means what it says: keeping fc out of INT8 repairs the model, keeping
    the runner-up does not. (The runner-up's own score is rounding noise, 0.0016 on AVX2 and 0.025 on an
    AVX-512 BF16 CPU: a ratio between the two is the CPU's arithmetic, not a property of the ranking.)"""
    plan, table = sensitive_design.best_plan()
    assert len(table) == 8 and plan.method in METHODS
    ranking = sensitive_design.sensitivity(plan)
    assert ranking[0][0] == "fc" and ranking[0][1] > ranking[1][1]
    assert sensitive_design.simulate(plan).agreement < 0.5
    assert sensitive_design.simulate(plan.with_higher((ranking[1][0],))).agreement < 0.5
    assert sensitive_design.simulate(plan.with_higher(("fc",))).agreement > 0.95


def test_one_model_and_calibration_are_designed_once_per_process() -> None:
    """Converting a model for several targets reuses statistics and plans; other weights or images do not."""
    module, calibration = random_resnet(seed=5), inputs(8, seed=5)
    first = QuantizationDesign(module, calibration, calibration)
    plan = first.plan("minmax", True)
    again = QuantizationDesign(copy.deepcopy(module), calibration.copy(), calibration)
    assert again.stats is first.stats and again.plan("minmax", True).module is plan.module
    changed = copy.deepcopy(module)
    with torch.no_grad():
        changed.fc.bias += 1.0
    assert QuantizationDesign(changed, calibration, calibration).stats is not first.stats
    assert QuantizationDesign(module, inputs(8, seed=6), calibration).stats is not first.stats

"""The IMX500 step itself, on a small network: MCT's mixed precision keeps a kept layer's weights at 8 bits
(the layer names edgeres gives reach MCT's graph), and the graph lowered to standard ONNX ops computes what
MCT's own quantizer ops do. Runs Sony's MCT for real in the toolchain's environment (built once)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeres.converter_envs import imx500
from edgeres.preprocess import Preprocess
from edgeres.targets.imx500 import Imx500Target, write_mct_job

if not sys.platform.startswith("linux") or __import__("platform").machine() != "x86_64":
    pytest.skip("Sony's imx500-converter runs on Linux x86-64", allow_module_level=True)
pytestmark = pytest.mark.slow


def _small_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 64, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()


@pytest.mark.parametrize("kept", [(), ("2",)])
def test_mixed_precision_lowers_the_big_layer_unless_it_is_kept(kept, tmp_path: Path) -> None:
    module = _small_network()
    weights = {"0": 3 * 16 * 9, "2": 16 * 64 * 9, "6": 64 * 10}
    # room for the big conv at 8 bits only with the other two at 2 bits
    budget = weights["2"] + (weights["0"] + weights["6"]) * 2 // 8 + 64
    spec = Preprocess.imagenet(8)
    crops = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(32)]
    work = write_mct_job(tmp_path / "mct", module, Imx500Target().input_spec(spec), spec, crops, kept, budget,
                         tmp_path / "small", refine_thresholds=True)
    chosen = imx500.quantize(work, lambda message: None)
    bits = chosen["weight_bits"]
    assert set(bits) == set(weights) and chosen["mixed_precision"] and chosen["weight_bytes"] <= budget
    if kept:
        assert bits == {"0": 2, "2": 8, "6": 2}
    else:  # left to itself MCT lowers the big layer, where the bytes are
        assert bits["2"] < 8
    # the lowered graph (standard ops) against MCT's own quantizer ops, on inputs it was not calibrated on
    simulator = imx500.Simulator(tmp_path / "small.mct.onnx", build=False)
    try:
        inputs = Imx500Target().input_spec(spec).tensors(
            [np.random.default_rng(100 + i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(16)])
        theirs = simulator.run(inputs)
    finally:
        simulator.close()
    import onnxruntime

    lowered = onnxruntime.InferenceSession(str(tmp_path / "small.lowered.onnx"))
    ours = lowered.run(None, {"input": inputs})[0]
    step = np.abs(np.diff(np.unique(theirs))).min()  # the output quantizer's step
    assert np.abs(ours - theirs).max() <= step * 1.01
    _check_refined_thresholds(chosen["thresholds"], work, module, lowered, tmp_path / "small.mct.onnx")


def _check_refined_thresholds(refined: dict, work: Path, module: torch.nn.Module, lowered, exported: Path) -> None:
    """The refinement only halves or doubles thresholds (the sensor takes powers of two), leaves the sensor's
    input (pixels / 256) as it is, and what it chose is what was exported."""
    import importlib.util
    import json

    import onnx

    thresholds = {node.name.split("/")[1].removesuffix("_activation_holder_quantizer"): onnx.helper.get_attribute_value(
                      next(a for a in node.attribute if a.name == "threshold"))
                  for node in onnx.load(str(exported)).graph.node if node.op_type == "ActivationPOTQuantizer"}
    assert refined["changed"], "nothing refined: this check would prove nothing"
    assert {name: thresholds[name] for name in refined["changed"]} == {
        name: change["refined"] for name, change in refined["changed"].items()}
    assert all(change["refined"] / change["mct"] in (0.5, 2.0) for change in refined["changed"].values())
    assert thresholds["x"] == 1.0 and "x" not in refined["changed"]  # the sensor's pixels / 256
    assert refined["thresholds_considered"] == len(thresholds) - 1
    # the lowered graph agrees with the float network on the refinement's own views as the refinement measured
    spec = importlib.util.spec_from_file_location("imx500_tool", imx500.TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    job = json.loads((work / "job.json").read_text())
    views = tool._views(np.load(work / "calib.npy"))
    with torch.no_grad():
        answers = tool._with_input_normalisation(module, job["input_gain"], job["input_bias"])(views).argmax(1).numpy()
    agreed = (lowered.run(None, {"input": views.numpy()})[0].argmax(1) == answers).mean()
    # it rounds as MCT's ops do, within one output step: a near tie may flip
    assert abs(agreed - refined["calibration_view_agreement_refined"]) <= 2 / len(views)

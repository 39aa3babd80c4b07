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
                         tmp_path / "small")
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

    ours = onnxruntime.InferenceSession(str(tmp_path / "small.lowered.onnx")).run(None, {"input": inputs})[0]
    step = np.abs(np.diff(np.unique(theirs))).min()  # the output quantizer's step
    assert np.abs(ours - theirs).max() <= step * 1.01

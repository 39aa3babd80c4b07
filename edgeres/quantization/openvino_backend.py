"""A quantization plan applied to an OpenVINO model with NNCF.

NNCF places the FakeQuantize nodes as OpenVINO's CPU plugin wants them (it knows which
patterns fuse into int8 kernels); each one's range is then set from the plan's point for
the tensor it quantizes, found by its ONNX tensor name. NNCF's own bias correction is
off: the plan's model is already corrected. Layers kept out run in float (IgnoredScope).
"""

from __future__ import annotations

import logging
import re

import numpy as np

from ..errors import ConversionError
from ..logs import quiet
from ..runtime.openvino import no_telemetry, ov
from .design import QuantizationPlan
from .simulate import GRIDS

PRESET_GRIDS = {"performance": "nncf-symmetric", "mixed": "asymmetric"}  # how each preset lays out activations
STATISTICS_SUBSET = 8  # NNCF needs a dataset to place quantizers; the plan's ranges replace its statistics


def quantize(model: "ov.Model", plan: QuantizationPlan, points: dict[str, str], inputs: list[np.ndarray], *,
             preset: str) -> tuple["ov.Model", dict]:
    with quiet(), no_telemetry():
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        nncf.set_log_level(logging.ERROR)
        ignored = None
        if plan.higher:
            ignored = nncf.IgnoredScope(patterns=[f"^{re.escape(name)}/" for name in plan.higher])
        quantized = nncf.quantize(
            model, nncf.Dataset(inputs[:STATISTICS_SUBSET]), preset=getattr(nncf.QuantizationPreset, preset.upper()),
            subset_size=min(STATISTICS_SUBSET, len(inputs)), ignored_scope=ignored,
            advanced_parameters=AdvancedQuantizationParameters(disable_bias_correction=True),
        )
    applied = set_ranges(quantized, plan, points, grid=PRESET_GRIDS[preset])
    return quantized, {
        "kind": "static", "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor " + ("symmetric" if preset == "performance" else "asymmetric"),
        "preset": preset, "tool": f"nncf {nncf.__version__} quantize (ranges from the edgeres plan)",
        "ranges_applied": f"{applied} FakeQuantize nodes",
    }


def set_ranges(model: "ov.Model", plan: QuantizationPlan, points: dict[str, str], *, grid: str) -> int:
    """Every activation FakeQuantize takes the range of its tensor's plan point, on the preset's grid;
    returns how many. The performance preset's grids are exactly what the design simulates; the mixed
    preset's FakeQuantize has no rounded zero point, within one step of the simulated grid."""
    import openvino.opset13 as ops

    count = 0
    for fq in (op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"):
        if fq.input_value(0).get_node().get_type_name() == "Constant":
            continue  # a weight: NNCF quantized it per channel from the corrected weights themselves
        names = fq.input_value(0).get_names()
        point = next((points[name] for name in names if name in points), None)
        if point is None:
            raise ConversionError(f"NNCF quantized a tensor ({', '.join(sorted(names)) or 'unnamed'}) that has no "
                                  "point in the quantization plan")
        low, high, levels = GRIDS[grid](plan.ranges[point])
        if fq.get_attributes()["levels"] != levels:
            raise ConversionError(f"NNCF quantized {point} to {fq.get_attributes()['levels']} levels; the plan "
                                  f"simulated {levels}")
        for port, value in zip((1, 2, 3, 4), (low, high, low, high)):
            constant = ops.constant(np.full(fq.input_value(port).get_shape(), value, np.float32))
            fq.input(port).replace_source_output(constant.output(0))
        count += 1
    model.validate_nodes_and_infer_types()
    return count


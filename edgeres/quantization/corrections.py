"""Bias correction: move each layer's bias so that quantization does not shift its mean output.

Quantizing a layer's weights and input moves the mean of each output channel; later
layers and the logits inherit that shift. Measured on the calibration data (each layer
with its float input, as NNCF's fast bias correction does) and subtracted from the
folded bias, it is part of the float model every backend then quantizes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .points import layers
from .ranges import Range
from ..models import module_logits
from .simulate import Grid, asymmetric, fake_quantize, quantize_weight

BATCH = 32
IMAGES = 128  # a mean shift settles within a hundred images (NNCF's fast bias correction uses 100)


def correct_biases(module: torch.nn.Module, ranges: dict[str, Range], inputs: np.ndarray,
                   skip: frozenset[str] | set[str] = frozenset(), grid: Grid = asymmetric) -> dict[str, float]:
    """Correct the biases of `module` (BatchNorm-folded) in place; returns each layer's largest shift."""
    named = dict(module.named_modules())
    chosen = [layer for layer in layers(module) if layer.name not in skip]
    shifts = {layer.name: None for layer in chosen}
    counts = dict.fromkeys(shifts, 0)

    weights = {layer.name: quantize_weight(named[layer.name].weight) for layer in chosen}

    def measure(name: str, value_range: Range):
        def hook(target, args, exact):
            quantized = _apply(target, fake_quantize(args[0], value_range, grid), weights[name])
            axes = [0] + list(range(2, exact.dim()))
            delta = (quantized - exact).sum(dim=axes)
            shifts[name] = delta if shifts[name] is None else shifts[name] + delta
            counts[name] += exact.numel() // exact.shape[1]
        return hook

    handles = [named[layer.name].register_forward_hook(measure(layer.name, ranges[layer.input_point]))
               for layer in chosen]
    inputs = inputs[:IMAGES]
    try:
        module_logits(module, inputs, BATCH)  # run for the hooks
    finally:
        for handle in handles:
            handle.remove()
    largest = {}
    with torch.no_grad():
        for layer in chosen:
            target = named[layer.name]
            shift = shifts[layer.name] / max(counts[layer.name], 1)
            if target.bias is None:
                target.bias = torch.nn.Parameter(torch.zeros(target.weight.shape[0]))
            target.bias -= shift
            largest[layer.name] = float(shift.abs().max())
    return largest


def _apply(layer: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, torch.nn.Linear):
        return F.linear(x, weight, layer.bias)
    return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

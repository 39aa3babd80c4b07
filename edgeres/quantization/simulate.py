"""INT8 as a backend computes it, simulated in PyTorch: for choosing ranges, corrections and layers.

Weights are per-output-channel symmetric int8 (scale max|w| / 127, values -127..127) as
every edgeres backend quantizes them; activations are fake-quantized with the plan's
ranges wherever the target places a quantizer, on the target's own grid of levels: a
zero point (ONNX Runtime, TFLite, XNNPACK), NNCF's symmetric grids, TensorRT's
symmetric int8, which gives a ReLU's output only 128 levels, or MCT's power-of-two thresholds (IMX500).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator

import torch

from .points import Layer, blocks, layers
from .ranges import LEVELS, Range

# Where a target puts activation quantizers, beyond the input of every quantized layer.
BRANCHES = "branches"  # the conv outputs that go into a residual add (pre-add)
LOGITS = "logits"  # the model's output
ALL_PLACEMENTS = frozenset({BRANCHES, LOGITS})

Grid = Callable[[Range], tuple[float, float, int]]  # a range -> the low and high end and levels it quantizes to
Quantize = Callable[[torch.Tensor, Range, Grid], torch.Tensor]  # values, their range and grid -> as INT8 gives them


def asymmetric(value_range: Range) -> tuple[float, float, int]:
    """256 levels over the range, with a zero point: ONNX Runtime's default, TFLite, XNNPACK, NNCF mixed."""
    return (*value_range, LEVELS)


def symmetric(value_range: Range) -> tuple[float, float, int]:
    """int8 with zero point 0 and scale max|x| / 127, saturating at -128 and 127, as TensorRT requires:
    after a ReLU only 0..127 are used."""
    low, high = value_range
    amax = max(-low, high)
    return -amax * (LEVELS // 2) / (LEVELS // 2 - 1), amax, LEVELS


def nncf_symmetric(value_range: Range) -> tuple[float, float, int]:
    """NNCF's performance preset: u8 over [0, A] after a ReLU, else i8 over [-A * 128/127, A]."""
    low, high = value_range
    return (0.0, high, LEVELS) if low >= 0 else symmetric(value_range)


def power_of_two(value_range: Range) -> tuple[float, float, int]:
    """Sony's MCT for the IMX500: a threshold T that is a power of two, u8 over [0, T) after a ReLU, else i8
    over [-T, T). MCT chooses T among powers of two by the error; here the smallest at or above max|x|."""
    low, high = value_range
    threshold = 2.0 ** math.ceil(math.log2(max(-low, high, 1e-12)))
    if low >= 0:
        return 0.0, threshold * (LEVELS - 1) / LEVELS, LEVELS
    return -threshold, threshold * (LEVELS // 2 - 1) / (LEVELS // 2), LEVELS


GRIDS: dict[str, Grid] = {"asymmetric": asymmetric, "symmetric": symmetric, "nncf-symmetric": nncf_symmetric,
                          "power-of-two": power_of_two}


def quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    axes = tuple(range(1, weight.dim()))
    scale = weight.abs().amax(dim=axes, keepdim=True).clamp_min(1e-12) / 127
    return torch.round(weight / scale).clamp(-127, 127) * scale


def fake_quantize(values: torch.Tensor, value_range: Range, grid: Grid = asymmetric) -> torch.Tensor:
    low, high, levels = grid(value_range)
    scale = max(high - low, 1e-12) / (levels - 1)
    zero = round(-low / scale)
    return (torch.clamp(torch.round(values / scale) + zero, 0, levels - 1) - zero) * scale


@contextlib.contextmanager
def simulated(module: torch.nn.Module, ranges: dict[str, Range], *, placement: frozenset[str] = ALL_PLACEMENTS,
              higher: frozenset[str] | set[str] = frozenset(), weights: bool = True,
              grid: Grid = asymmetric, quantize: Quantize | None = None) -> Iterator[torch.nn.Module]:
    """Within the block, `module` computes as its INT8 artifact would; layers in `higher` stay float.

    Every backend requantizes the residual stream after each block (the add's output, which
    the next block's add reads back), so block outputs are always quantized. `quantize` replaces
    fake_quantize at every point (tools/int8_noise_floor.py puts rounding-sized noise there).
    """
    quantize = quantize or fake_quantize
    named = dict(module.named_modules())
    handles, saved = [], {}
    try:
        for name, block in blocks(module):
            handles.append(block.register_forward_hook(_output_quantizer(ranges[name], grid, quantize)))
        for layer in layers(module):
            if layer.name in higher:
                continue
            target = named[layer.name]
            handles.append(target.register_forward_pre_hook(
                _input_quantizer(ranges[layer.input_point], grid, quantize)))
            if output_quantized(layer, placement):
                handles.append(target.register_forward_hook(_output_quantizer(ranges[layer.name], grid, quantize)))
            if weights:
                saved[layer.name] = target.weight.data
                target.weight.data = quantize_weight(target.weight.data)
        yield module
    finally:
        for handle in handles:
            handle.remove()
        for name, weight in saved.items():
            named[name].weight.data = weight


def output_quantized(layer: Layer, placement: frozenset[str]) -> bool:
    return (layer.feeds_add and BRANCHES in placement) or (layer.name == "fc" and LOGITS in placement)


def _input_quantizer(value_range: Range, grid: Grid, quantize: Quantize):
    return lambda _, args: (quantize(args[0], value_range, grid),)


def _output_quantizer(value_range: Range, grid: Grid, quantize: Quantize):
    return lambda _, __, output: quantize(output, value_range, grid)

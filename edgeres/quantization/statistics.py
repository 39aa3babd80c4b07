"""Activation statistics at every point, collected once in PyTorch and shared by every backend."""

from __future__ import annotations

import numpy as np
import torch

from .points import INPUT, blocks, layers
from .ranges import PointStats
from ..models import module_logits

SAMPLES_PER_POINT = 1 << 18  # values kept per point for range searches; min and max are exact
BATCH = 32


def collect(module: torch.nn.Module, inputs: np.ndarray, seed: int = 0) -> dict[str, PointStats]:
    """Statistics of every activation point of a BatchNorm-folded ResNet over `inputs` (N, 3, H, W)."""
    batches = max(1, -(-len(inputs) // BATCH))
    per_batch = max(1, SAMPLES_PER_POINT // batches)
    rng = np.random.default_rng(seed)
    seen: dict[str, list] = {}

    def record(point: str, values: torch.Tensor) -> None:
        per_image = values.detach().reshape(len(values), -1)
        flat = per_image.reshape(-1).numpy()
        chosen = flat if flat.size <= per_batch else flat[rng.integers(0, flat.size, per_batch)]
        entry = seen.setdefault(point, [np.inf, -np.inf, [], [], []])
        entry[0], entry[1] = min(entry[0], float(flat.min())), max(entry[1], float(flat.max()))
        entry[2].append(chosen.copy())
        entry[3].append(per_image.amin(dim=1).numpy())
        entry[4].append(per_image.amax(dim=1).numpy())

    handles = _hooks(module, record)
    try:
        module_logits(module, inputs, BATCH)  # run for the hooks
    finally:
        for handle in handles:
            handle.remove()
    return {point: PointStats(low, high, np.concatenate(parts), float(np.concatenate(lows).mean()),
                              float(np.concatenate(highs).mean()))
            for point, (low, high, parts, lows, highs) in seen.items()}


def _hooks(module: torch.nn.Module, record) -> list:
    """Forward hooks that hand each point's values to `record` (copies: torchvision adds in place)."""
    named = dict(module.named_modules())
    handles = [named["conv1"].register_forward_pre_hook(lambda _, args: record(INPUT, args[0]))]
    for layer in layers(module):
        relu = layer.relu_after
        handles.append(named[layer.name].register_forward_hook(
            lambda _, __, out, name=layer.name, relu=relu: record(name, torch.relu(out) if relu else out.clone())))
    for name, block in [("maxpool", named["maxpool"]), *blocks(module), ("avgpool", named["avgpool"])]:
        handles.append(block.register_forward_hook(lambda _, __, out, name=name: record(name, out.clone())))
    return handles

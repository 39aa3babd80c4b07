"""Where a torchvision ResNet is quantized, named once for every backend.

An activation point is named after the module that produces it, as every backend's
graph can find it: `input` (the normalised image), a conv (`layer1.0.conv1`: its output,
after the ReLU that follows it when one does), a block (`layer1.0`: the residual add and
its ReLU), `maxpool`, `avgpool` (also the flattened vector) and `fc` (the logits). Each
backend maps its own tensors to these names, so ranges chosen here reach every format.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

INPUT = "input"
STAGES = ("layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class Layer:
    """A conv or linear layer: where its input comes from, and what its output is."""

    name: str
    input_point: str  # the point this layer reads
    relu_after: bool  # its output point is after a ReLU
    feeds_add: bool  # its output goes into a residual add (last conv of a block, downsample)


def blocks(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(f"{stage}.{index}", block) for stage in STAGES for index, block in enumerate(getattr(module, stage))]


def layers(module: torch.nn.Module) -> list[Layer]:
    """Every conv and linear layer in execution order, with its place in the graph."""
    found = [Layer("conv1", INPUT, relu_after=True, feeds_add=False)]
    previous = "maxpool"
    for name, block in blocks(module):
        convs = [c for c in ("conv1", "conv2", "conv3") if hasattr(block, c)]
        source = previous
        for conv in convs:
            last = conv == convs[-1]
            found.append(Layer(f"{name}.{conv}", source, relu_after=not last, feeds_add=last))
            source = f"{name}.{conv}"
        if block.downsample is not None:
            found.append(Layer(f"{name}.downsample.0", previous, relu_after=False, feeds_add=True))
        previous = name
    found.append(Layer("fc", "avgpool", relu_after=False, feeds_add=False))
    return found


def points(module: torch.nn.Module) -> list[str]:
    """Every activation point, in execution order."""
    names = [INPUT, "conv1", "maxpool"]
    for block, _ in blocks(module):
        names += [layer.name for layer in layers(module) if layer.name.startswith(block + ".")] + [block]
    return names + ["avgpool", "fc"]


def fold_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """A copy with every BatchNorm folded into the conv before it, as every backend's exporter does.

    Bias correction and weight rounding change these folded weights and biases, so
    every backend then quantizes exactly the weights that were corrected.
    """
    folded = copy.deepcopy(module).eval()

    def fuse(parent: torch.nn.Module, conv: str, bn: str) -> None:
        if isinstance(getattr(parent, bn), torch.nn.BatchNorm2d):
            setattr(parent, conv, fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn)))
            setattr(parent, bn, torch.nn.Identity())

    fuse(folded, "conv1", "bn1")
    for _, block in blocks(folded):
        for index in (1, 2, 3):
            if hasattr(block, f"conv{index}"):
                fuse(block, f"conv{index}", f"bn{index}")
        if block.downsample is not None:
            fuse(block.downsample, "0", "1")
    return folded

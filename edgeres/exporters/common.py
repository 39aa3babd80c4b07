"""What every converter shares."""

from __future__ import annotations

import re

# torch.export's ONNX exporter writes opset 18 at least: the default, and the widest support on devices
MIN_OPSET = 18

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def conv_of_batchnorm(module: str) -> str:
    """The conv a ResNet BatchNorm follows: layer1.0.bn2 -> layer1.0.conv2, downsample.1 -> downsample.0."""
    module = re.sub(r"(^|\.)bn(\d+)$", r"\1conv\2", module)
    return re.sub(r"\.downsample\.1$", ".downsample.0", module)

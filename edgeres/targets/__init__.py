"""The target registry: a name -> the class that converts for it, imported lazily.

Adding a target is one new module and one line here.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import TargetError
from .base import Target

REGISTRY: dict[str, str] = {
    "onnx": "edgeres.targets.onnx:OnnxTarget",
    "npu": "edgeres.targets.npu:NpuTarget",
    "x86": "edgeres.targets.openvino:OpenVinoTarget",
    "rpi": "edgeres.targets.tflite:TfliteTarget",
}


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].split(":")
    return getattr(import_module(module_name), class_name)()

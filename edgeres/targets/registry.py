"""The target registry: one row per target, the class that converts for it and what it accepts.

Adding a target is one new module and one row here. The rows are data: the CLI's help is built
from them without importing any converter, and an option a target would ignore is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Accepts:
    """What a target takes besides the model: its registry row, which the CLI's help is built from and
    which refuses an option the target would otherwise ignore."""

    precisions: tuple[str, ...] = PRECISIONS
    presets: tuple[str, ...] = ()  # quantization presets, the first the default
    opset: bool = False  # made from an ONNX export, so --opset means something
    static_batch: str | None = None  # why it takes a batch of 1 only; None where --dynamic-batch works


@dataclass(frozen=True)
class Entry:
    where: str  # module:class
    accepts: Accepts


REGISTRY: dict[str, Entry] = {
    "onnx": Entry("edgeres.targets.onnx:OnnxTarget", Accepts(opset=True)),
    "npu": Entry("edgeres.targets.npu:NpuTarget", Accepts(
        ("int8",), opset=True, static_batch="NPU compilers need a static batch-1 shape")),
    "qnn": Entry("edgeres.targets.qnn:QnnTarget", Accepts(
        ("int8",), opset=True, static_batch="QNN context binaries are compiled for a static batch of 1")),
    "rknn": Entry("edgeres.targets.rknn:RknnTarget", Accepts(
        ("int8",), opset=True, static_batch="rknn-toolkit2 compiles .rknn models for a static batch of 1 here")),
    "imx500": Entry("edgeres.targets.imx500:Imx500Target", Accepts(
        ("int8",), static_batch="the IMX500 runs one camera frame at a time")),
    "x86": Entry("edgeres.targets.openvino:OpenVinoTarget", Accepts(presets=("performance", "mixed"), opset=True)),
    "rpi": Entry("edgeres.targets.tflite:TfliteTarget", Accepts(
        static_batch="TFLite models here have a static batch of 1")),
    "jetson": Entry("edgeres.targets.jetson:JetsonTarget", Accepts(
        opset=True, static_batch="jetson engines are built for a static batch of 1 here")),
    "mobile": Entry("edgeres.targets.mobile:MobileTarget", Accepts(
        ("fp32", "int8"), static_batch="mobile artifacts take a batch of 1 (a camera frame)")),
}


def refusal(name: str, precision: str, *, preset: str | None = None, dynamic_batch: bool = False,
            opset: int | None = None) -> str | None:
    """Why target `name` does not take these options, naming the targets that do; None where it takes them."""
    accepts = REGISTRY[name].accepts
    if precision not in accepts.precisions:
        hint = ": add --int8 --calib DIR" if accepts.precisions == ("int8",) else ""
        return f"target {name} makes {', '.join(accepts.precisions)}, not {precision}{hint}"
    if preset is not None and preset not in accepts.presets:
        if accepts.presets:
            return f"--preset must be one of {', '.join(accepts.presets)}, got {preset!r}"
        return f"--preset is for target {', '.join(accepting('presets'))}; target {name} has no presets"
    if dynamic_batch and accepts.static_batch:
        return f"{accepts.static_batch}: drop --dynamic-batch"
    if opset is not None and not accepts.opset:
        return (f"--opset is for targets made from an ONNX export ({', '.join(accepting('opset'))}); "
                f"target {name} is not: drop --opset")
    return None


def accepting(option: str) -> list[str]:
    """The targets whose row takes `option` (opset, dynamic_batch, presets)."""
    taken = {"opset": lambda a: a.opset, "dynamic_batch": lambda a: a.static_batch is None,
             "presets": lambda a: bool(a.presets)}[option]
    return [name for name, entry in REGISTRY.items() if taken(entry.accepts)]

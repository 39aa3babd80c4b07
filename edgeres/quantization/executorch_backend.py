"""A quantization plan applied to an ExecuTorch program with the XNNPACK PT2E quantizer.

XNNPACKQuantizer annotates the graph as XNNPACK's int8 kernels need it (per-channel
symmetric weights, per-tensor activations); each activation observer is then replaced by
one holding its plan point's range, found from the module that produced the tensor.
Layers the plan keeps out are not annotated and run as float XNNPACK ops.
"""

from __future__ import annotations

import copy

import torch

from ..errors import ConversionError
from .design import QuantizationPlan

RELU = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)
EPS = 2 ** -12  # XNNPACK's quantizer floor for scales


def pt2e_int8(plan: QuantizationPlan, example: torch.Tensor) -> tuple[object, dict]:
    """The plan's model, exported and quantized for XNNPACK; returns (ExportedProgram, record fields)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    kept = set(plan.higher)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_filter_function(lambda node: not _in_layers(node, kept))
    module = copy.deepcopy(plan.module).eval()
    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    with torch.no_grad():
        prepared(example)  # the weight observers see the (corrected) weights; activation ranges come from the plan
    applied = set_ranges(prepared, plan)
    converted = convert_pt2e(prepared)
    record = {"kind": "static", "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor",
              "tool": "PT2E (torchao prepare_pt2e/convert_pt2e) with XNNPACKQuantizer (ranges from the edgeres plan)",
              "ranges_applied": f"{applied} observers"}
    return torch.export.export(converted, (example,)), record


def set_ranges(prepared: torch.fx.GraphModule, plan: QuantizationPlan) -> int:
    """Replace every activation observer by a min/max observer holding its point's range."""
    from torchao.quantization.pt2e.observer import MinMaxObserver

    by_observer: dict[int, list[tuple[str, str]]] = {}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and node.target.startswith("activation_post_process"):
            observer = getattr(prepared, node.target)
            if observer.qscheme == torch.per_tensor_affine:
                by_observer.setdefault(id(observer), []).append((node.target, _point(node)))
    for uses in by_observer.values():
        # XNNPACK shares one observer where an op keeps its input's parameters (max-pool, average pool)
        ranges = [plan.ranges[point] for _, point in uses]
        observer = MinMaxObserver(dtype=torch.int8, qscheme=torch.per_tensor_affine, quant_min=-128, quant_max=127,
                                  eps=EPS)
        observer.min_val.fill_(min(low for low, _ in ranges))
        observer.max_val.fill_(max(high for _, high in ranges))
        for target, _ in uses:
            setattr(prepared, target, observer)
    return sum(len(uses) for uses in by_observer.values())


def _point(observer_node: torch.fx.Node) -> str:
    source = observer_node.args[0]
    if source.op == "placeholder":
        return "input"
    if source.op == "call_function" and source.target in RELU:
        source = source.args[0]  # a block's ReLU module is shared: the conv or add before it names the point
    stack = _stack(source)
    if not stack:
        raise ConversionError(f"cannot place the quantized tensor {source.name} in the ResNet's quantization plan")
    point = stack[-1]
    if point == "":  # torch.flatten in ResNet.forward: the pooled vector
        return "avgpool"
    return point


def _stack(node: torch.fx.Node) -> list[str]:
    return [name for name, _ in node.meta.get("nn_module_stack", {}).values()]


def _in_layers(node: torch.fx.Node, names: set[str]) -> bool:
    return any(module == name or module.startswith(name + ".") for module in _stack(node) for name in names)

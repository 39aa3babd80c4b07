"""NPUs: INT8 ONNX in QDQ form, shaped the way NPU compilers want it.

Vendor compilers (Qualcomm QNN, Rockchip RKNN, Hailo, AMD Ryzen AI, ...) take a QDQ
ONNX and map each quantized op onto the accelerator; an op left in float or a dynamic
axis makes them fall back to the CPU or refuse the model. The rules
are checked on the final graph and the conversion fails if one is broken.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import onnx

from ..errors import ConversionError
from ..quantization import onnx_backend
from .base import ConvertJob
from .onnx import OnnxTarget

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


class NpuTarget(OnnxTarget):
    name: ClassVar[str] = "npu"
    summary: ClassVar[str] = "INT8 QDQ ONNX for NPU compilers (static batch 1, every op quantized)"
    # An op left in float falls back to the CPU or is refused: a sensitive layer gets 16-bit activations
    # with int8 weights (A16W8), which ONNX Runtime runs; QNN's HTP refuses int16 ones (the qnn target
    # gives it uint16, converted at the kept layer's edges), so other compilers' rules may differ too.
    higher_precision: ClassVar[str] = "16-bit activations, int8 weights (A16W8)"
    kept_as: ClassVar[str] = onnx_backend.INT16

    def check_graph(self, model: onnx.ModelProto, job: ConvertJob, plan) -> list[dict]:
        return apply_rules(NPU_RULES, model, job, "NPU rules", "NPU rule")


def apply_rules(rules, model: onnx.ModelProto, job: ConvertJob, broken_name: str, passed_name: str,
                kept: frozenset[str] = frozenset()) -> list[dict]:
    """Run graph rules; any broken one fails the conversion, naming each broken rule and where.

    `kept` names the layers the plan keeps out of INT8, which rules on quantized layers skip.
    """
    checks = [rule(model, kept) for rule in rules]
    broken = [c for c in checks if not c["passed"]]
    if broken:
        details = "; ".join(f"{c['rule']}: {c['detail']}" for c in broken)
        raise ConversionError(f"the INT8 ONNX breaks {broken_name} ({details})")
    for check in checks:
        job.log(f"{passed_name} passed: {check['rule']} ({check['detail']})")
    return checks


def _check(rule: str, problems: list[str], ok: str) -> dict:
    return {"rule": rule, "passed": not problems, "detail": ", ".join(problems[:5]) if problems else ok}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


_consumers = onnx_backend.consumers_of  # the jetson rules read it from here too


def check_static_batch1(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    problems = []
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        if not all(isinstance(d, int) and d > 0 for d in shape):
            problems.append(f"{value.name} has shape {shape}")
        elif shape[0] != 1:
            problems.append(f"{value.name} has batch {shape[0]}")
    return _check("static batch-1 inputs and outputs", problems, "all static, batch 1")


def check_no_dynamic_shapes(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    inferred = onnx.shape_inference.infer_shapes(model)
    problems = []
    for value in inferred.graph.value_info:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            problems.append(f"{value.name} has unknown rank")
        elif any(not d.HasField("dim_value") for d in tensor.shape.dim):
            problems.append(f"{value.name} has a dynamic axis")
    count = len(inferred.graph.value_info)
    return _check("no dynamic shapes", problems, f"{count} intermediate tensors, all static")


WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def check_qdq_everywhere(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    """Every compute op reads from DequantizeLinear and writes only to QuantizeLinear. Where a compiler runs
    layers left in float (`kept`: the rknn target, in float16), a kept layer's Conv or Gemm is exempt, and so
    are the ops without weights that its float output flows through (ReLU, max-pool, Add) until it is
    quantized again; a layer with weights that reads it in float is not."""
    initializers = {init.name for init in model.graph.initializer}
    producers, consumers = _producers(model), _consumers(model)
    kept_nodes = {node.name for node in model.graph.node if onnx_backend.layer_of(node) in kept}
    in_float = {out for node in model.graph.node if node.name in kept_nodes for out in node.output}
    problems, quantized, held = [], 0, 0
    for node in model.graph.node:
        if node.op_type in QDQ_OPS or node.op_type == "Constant":
            continue
        if node.name in kept_nodes or (node.op_type not in WEIGHTED_OPS and in_float.intersection(node.input)):
            in_float.update(node.output)
            held += 1
            continue
        float_inputs = [n for n in node.input if n and n not in initializers
                        and getattr(producers.get(n), "op_type", None) not in QDQ_OPS | {"Constant"}]
        float_outputs = [o for o in node.output
                         if any(c.op_type != "QuantizeLinear" for c in consumers.get(o, []))
                         or not consumers.get(o)]
        if float_inputs or float_outputs:
            problems.append(f"{node.op_type} '{node.name}' runs in float")
        else:
            quantized += 1
    held_text = f", {held} in float with the {len(kept_nodes)} kept layers" if held else ""
    return _check("QDQ around every op", problems,
                  f"{quantized} ops, each between DequantizeLinear and QuantizeLinear{held_text}")


NPU_RULES: tuple[Callable[[onnx.ModelProto], dict], ...] = (
    check_static_batch1,
    check_no_dynamic_shapes,
    check_qdq_everywhere,
)

"""What this CPU changes in the numbers: the features that pick each runtime's kernels, and what they pick.

The same artifact gives other logits on other CPUs when a runtime chooses its arithmetic by
the CPU: OpenVINO runs float layers in bf16 on AVX512-BF16 and AMX unless told (edgeres
tells it f32), ONNX Runtime's fused int8 kernels saturate without VNNI (edgeres runs QDQ
models unfused there), XNNPACK's int8 kernels differ between x86 and ARM's dot product.
`python -m edgeres.numerics` prints it, so a failure says where it ran (CI prints it first).
"""

from __future__ import annotations

import platform

from .cpu import NUMERIC_FLAGS, cpu_flags, cpu_model


def host_numerics() -> dict[str, object]:
    """The CPU, its numeric features, and what OpenVINO and ONNX Runtime pick on it (those installed)."""
    flags = cpu_flags()
    found: dict[str, object] = {"cpu": cpu_model(), "machine": platform.machine(),
                                "features": [flag for flag in NUMERIC_FLAGS if flag in flags]}
    found.update(_openvino())
    found.update(_onnxruntime())
    return found


def _openvino() -> dict[str, object]:
    from .runtime.openvino import compile_config, device_precisions, ov

    if ov is None:
        return {"openvino": "not installed"}
    import numpy as np
    import openvino.opset13 as ops

    core = ov.Core()
    x = ops.parameter([1, 4], np.float32)
    tiny = ov.Model([ops.relu(x)], [x])
    unpinned = core.compile_model(tiny, "CPU").get_property("INFERENCE_PRECISION_HINT").get_type_name()
    pinned = core.compile_model(tiny, "CPU", compile_config("fp32", None, "LATENCY"))
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {"openvino": ov.get_version().split("-")[0], "openvino_capabilities": list(capabilities),
            "openvino_float_default": unpinned,
            "openvino_edgeres_runs": pinned.get_property("INFERENCE_PRECISION_HINT").get_type_name(),
            "openvino_modes": list(device_precisions(capabilities))}


def _onnxruntime() -> dict[str, object]:
    from .runtime.onnxruntime import int8_kernels_saturate, ort

    if ort is None:
        return {"onnxruntime": "not installed"}
    unfused = int8_kernels_saturate()
    return {"onnxruntime": ort.__version__,
            "onnxruntime_int8": "QDQ unfused (fused int8 kernels would saturate: no VNNI)" if unfused
            else "fused int8 kernels (VNNI, AMX or ARM: 32-bit accumulation)"}


def describe() -> str:
    found = host_numerics()
    features = ", ".join(found.pop("features")) or "none of " + ", ".join(NUMERIC_FLAGS[:4])
    lines = [f"cpu: {found.pop('cpu')} ({found.pop('machine')}); numeric features: {features}"]
    lines += [f"{key}: {', '.join(value) if isinstance(value, list) else value}" for key, value in found.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())

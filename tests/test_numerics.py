"""What this CPU changes in the numbers, and that edgeres' own choices do not follow it."""

from __future__ import annotations

import pytest

from edgeres.cpu import NUMERIC_FLAGS, cpu_flags
from edgeres.numerics import describe, host_numerics
from edgeres.runtime.onnxruntime import int8_kernels_saturate


def test_the_host_is_described_with_what_each_runtime_picks() -> None:
    found = host_numerics()
    assert found["cpu"] and set(found["features"]) <= set(NUMERIC_FLAGS) & cpu_flags()
    # edgeres runs every IR in f32, whatever OpenVINO would pick here (bf16 on AVX512-BF16 and AMX, f16 on ARM)
    assert found["openvino_edgeres_runs"] == "f32"
    assert found["openvino_modes"][0] == "fp32" and set(found["openvino_modes"]) <= {"fp32", "bf16", "fp16"}
    assert ("unfused" in found["onnxruntime_int8"]) == int8_kernels_saturate()
    assert describe().startswith(f"cpu: {found['cpu']}")


def test_bf16_cpus_offer_the_bf16_mode() -> None:
    flags = cpu_flags()
    if not flags & {"avx512_bf16", "amx_bf16"}:
        pytest.skip("this CPU has neither AVX512-BF16 nor AMX-BF16: its refusal of bf16 is tested in "
                    "tests/runtime/test_openvino.py")
    found = host_numerics()
    assert "bf16" in found["openvino_modes"] and found["openvino_float_default"] == "bf16"

"""The CPU edgeres runs on: its model name and the feature flags that pick runtimes' kernels."""

from __future__ import annotations

import platform
from pathlib import Path

# The flags that change a runtime's arithmetic, as /proc/cpuinfo names them.
NUMERIC_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                 "avx512_fp16", "amx_fp16", "asimddp", "fphp", "asimdhp", "bf16", "i8mm")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo ('Features' on ARM); empty where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    line = next((line for line in text.splitlines() if line.startswith(("model name", "Model"))), "")
    return line.partition(":")[2].strip() or platform.machine()

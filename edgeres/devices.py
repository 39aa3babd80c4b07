"""Device profiles: what edgeres assumes about a device (data in the top-level targets/ folder).

A profile names its target and the defaults it implies, each with its reason:
`edgeres convert --target rpi5` converts for target `rpi` with the rpi5 profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import re
from importlib import resources
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6): the same parser, from PyPI
    import tomli as tomllib

from .errors import TargetError


@dataclass(frozen=True)
class DeviceProfile:
    """threads: the device's cores for its runtime (0: all of them, where the class of device varies)."""

    name: str
    target: str
    cpu: str
    threads: int
    input_dtype: str
    recommended_precision: str
    why: str
    published_latency_ms: dict[str, Any] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)  # engine build / compile commands it recommends
    float_mode: str = "fp32"  # the arithmetic it recommends for fp32/fp16 artifacts (runtime/base.PRECISION_MODES)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "cpu": self.cpu, "threads": self.threads, "input_dtype": self.input_dtype,
                "recommended_precision": self.recommended_precision, "float_mode": self.float_mode, "why": self.why,
                "options": self.options,
                "published": self.published_latency_ms}


def profile_names() -> list[str]:
    folder = resources.files("edgeres.profiles")
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def load_profile(name: str) -> DeviceProfile | None:
    """The profile called `name`, or None if there is none."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", name):  # a profile name, never a path
        return None
    entry = resources.files("edgeres.profiles") / f"{name}.toml"
    if not entry.is_file():
        return None
    try:
        return DeviceProfile(**tomllib.loads(entry.read_text()))
    except (tomllib.TOMLDecodeError, TypeError) as error:
        raise TargetError(f"device profile {name} is malformed: {error}") from None

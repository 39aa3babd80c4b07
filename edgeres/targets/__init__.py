"""Targets by name: the class that converts for each, imported lazily (the rows are in registry.py)."""

from __future__ import annotations

from importlib import import_module

from ..devices import DeviceProfile, load_profile, profile_names
from ..errors import TargetError
from .base import Target
from .registry import REGISTRY


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise TargetError(f"unknown target {name!r}; choose one of {', '.join(REGISTRY)}")
    module_name, class_name = REGISTRY[name].where.split(":")
    return getattr(import_module(module_name), class_name)()


def resolve_target(name: str) -> tuple[Target, DeviceProfile | None]:
    """A target name (onnx, rpi, ...) or a device profile name (rpi4, rpi5, ...)."""
    profile = profile_of(name)
    return get_target(profile.target if profile else name), profile


def profile_of(name: str) -> DeviceProfile | None:
    """The device profile `name` names, None for a target name; an error for neither (without importing
    any converter, so options are checked before any work)."""
    if name in REGISTRY:
        return None
    profile = load_profile(name)
    if profile is None:
        raise TargetError(
            f"unknown target {name!r}; choose a target ({', '.join(REGISTRY)}) "
            f"or a device profile ({', '.join(profile_names())})"
        )
    return profile

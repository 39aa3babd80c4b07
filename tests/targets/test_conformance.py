"""Every registered target, every precision it makes: convert, reload, run, compare with PyTorch.

A new target in the registry is covered here without new test code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeres.artifact import read_sidecar
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier
from edgeres.targets import REGISTRY, get_target

EMULATED_FRAMES = 64
CASES = [(name, precision) for name in REGISTRY for precision in get_target(name).precisions]


@pytest.mark.slow
@pytest.mark.parametrize("target, precision", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_target_round_trip(target: str, precision: str, converted, model, held_out) -> None:
    result = converted(target, precision)
    record = result.record
    assert all(path.exists() for path in result.files)
    assert (record.target, record.precision, record.arch) == (target, precision, "resnet18")
    assert record.labels == model.labels
    assert read_sidecar(result.path) == record

    classifier = Classifier(result.path)
    assert classifier.record == record  # the record embedded in the artifact is the sidecar's
    frames, _ = held_out  # all 450 held-out images: the first hundred are only two classes
    if get_target(target).emulated:  # seconds per image: every seventh (sorted by class: all ten classes)
        frames = frames[::7][:EMULATED_FRAMES]
    crops = [classifier.preprocess.resize_and_crop(frame) for frame in frames]
    reference = model.logits(Preprocess.imagenet(32).tensors(crops))
    ours = classifier.logits_batch(frames)
    tolerance = get_target(target).tolerance
    if precision == "fp32":
        assert np.abs(ours - reference).max() < tolerance.fp32_max_abs
    agreement = (ours.argmax(1) == reference.argmax(1)).mean()
    assert agreement >= (0.98 if precision == "int8" else 0.99)


@pytest.mark.slow
@pytest.mark.parametrize("target, precision", CASES, ids=[f"{t}-{p}" for t, p in CASES])
def test_target_artifact_verifies_and_evaluates(target: str, precision: str, converted, digits,
                                                tmp_path: Path) -> None:
    """Golden samples, `edgeres verify` and `edgeres eval` work for every target without target-specific code."""
    from edgeres.evaluate import evaluate_artifacts
    from edgeres.golden import check_golden, golden_path

    result = converted(target, precision)
    assert golden_path(result.path) in result.files
    assert check_golden(Classifier(result.path)).passed
    test_dir = digits.test_dir
    if get_target(target).emulated:  # seconds per image: a few of each class
        test_dir = tmp_path / "test"
        for source in sorted(digits.test_dir.glob("*/*"))[::9]:
            (test_dir / source.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, test_dir / source.parent.name / source.name)
    results, _, mapping = evaluate_artifacts([result.path], test_dir)
    assert mapping == "by label" and results[result.path.name].top1 > 0.9


def test_every_target_says_how_it_quantizes_and_keeps_layers_out() -> None:
    from types import SimpleNamespace

    from edgeres.quantization.simulate import ALL_PLACEMENTS, GRIDS

    for name in REGISTRY:
        target = get_target(name)
        assert target.placement <= ALL_PLACEMENTS and target.higher_precision
        for preset in (None, *target.presets):
            assert target.activation_grid(SimpleNamespace(preset=preset)) in GRIDS


def test_the_presets_in_the_registry_are_the_quantizers() -> None:
    from edgeres.quantization.openvino_backend import PRESET_GRIDS

    assert get_target("x86").presets == tuple(PRESET_GRIDS)  # the registry row the CLI's help reads, and NNCF's


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_target_refuses_what_its_row_does_not_accept(name: str) -> None:
    """Every option a target would ignore is refused, naming the targets that take it; what it takes passes."""
    from edgeres.conversion.options import ConvertOptions
    from edgeres.errors import TargetError

    accepts = REGISTRY[name].accepts
    options = {"opset": ({"opset": 19}, accepts.opset, "--opset is for targets made from an ONNX export"),
               "dynamic": ({"dynamic_batch": True}, accepts.static_batch is None, "drop --dynamic-batch"),
               "preset": ({"preset": "mixed"}, "mixed" in accepts.presets, "has no presets"),
               "fp16": ({"precision": "fp16"}, "fp16" in accepts.precisions, f"target {name} makes")}
    for given, taken, refusal in options.values():
        chosen = {"target": name, "precision": "fp32", **({"precision": "int8", "calib": "calib"}
                                                          if accepts.precisions == ("int8",) else {}), **given}
        if taken:
            ConvertOptions(**chosen)
            continue
        with pytest.raises(TargetError, match=refusal):
            ConvertOptions(**chosen)  # before any model is loaded, once: the options are checked on construction

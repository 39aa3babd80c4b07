"""INT8 on models that plain post-training quantization breaks: ResNets trained briefly on package photos.

Each fixture must first prove that it is hard: torch.ao FX with torchvision's recipe and
ONNX Runtime's quantize_static defaults both agree with FP32 on fewer held-out images than
the floor every edgeres target is then held to (measured 2026-12-01 on two trainings of
the fixtures, with 2 and with 1 torch thread, which give different weights: ResNet50 FX
71.9% / 79.4% agreement, ORT 84.7% / 88.4%; ResNet18 FX 56.7% / 65.2%, ORT 73.9% / 82.2%;
all seven tests passed on both). Each
INT8 target is converted with its defaults plus --val, the floors given as its bar; they
are looser than the README's bar (96%, 0.3 points), which is for the larger benchmark
model (tools/benchmark_accuracy.py), because these models train in a minute or two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeres.calibration.folder import find_images, read_image
from edgeres.conversion.pipeline import ConvertOptions, convert
from edgeres.photoset import FIXTURES
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from benchmark_accuracy import _fx, _ort  # noqa: E402  (the benchmark's own peer recipes)

pytestmark = pytest.mark.slow
FLOOR_AGREEMENT, FLOOR_DROP = 0.94, 1.5
CASES = [("resnet50-photos-32", "npu"), ("resnet50-photos-32", "x86"), ("resnet18-photos-32", "rpi"),
         ("resnet18-photos-32", "jetson"), ("resnet18-photos-32", "mobile")]


def _inputs(folder: Path, labels, imgsz: int) -> tuple[np.ndarray, np.ndarray]:
    spec = Preprocess.imagenet(imgsz)
    paths = find_images(folder)
    return np.stack([spec(read_image(p)) for p in paths]), np.array([labels.index(p.parent.name) for p in paths])


@pytest.fixture(scope="module")
def reference(hard_model):
    """(FP32 logits, truth) on a fixture's held-out images."""
    found = {}

    def get(name: str):
        if name not in found:
            model, data = hard_model(name)
            val, truth = _inputs(data.val_dir, list(data.labels), FIXTURES[name].recipe.imgsz)
            with torch.inference_mode():
                found[name] = (model.module(torch.from_numpy(val)).numpy(), truth, val)
        return found[name]

    return get


@pytest.mark.parametrize("name", ["resnet50-photos-32", "resnet18-photos-32"])
def test_plain_post_training_quantization_fails_on_the_fixture(hard_model, reference, name: str) -> None:
    model, data = hard_model(name)
    imgsz = FIXTURES[name].recipe.imgsz
    logits, truth, val = reference(name)
    calib, _ = _inputs(data.calib_dir, list(data.labels), imgsz)
    for peer, quantized in (("torch.ao FX", _fx(model.module, calib, val)),
                            ("ORT quantize_static", _ort(model.module, calib, val, Preprocess.imagenet(imgsz)))):
        agreement = (quantized.argmax(1) == logits.argmax(1)).mean()
        # hard: plain PTQ misses the floor that every edgeres target is held to below
        assert agreement < FLOOR_AGREEMENT, f"{peer} agrees on {agreement:.1%}: the fixture is not hard"


@pytest.mark.parametrize("name, target", CASES, ids=[f"{n}-{t}" for n, t in CASES])
def test_every_int8_target_survives_the_hard_model(hard_model, reference, tmp_path: Path, name: str,
                                                   target: str) -> None:
    model, data = hard_model(name)
    # The README's bar (96%, 0.3 points) is for the larger benchmark model; these floors,
    # given as the bar, hold on the tests' own briefly trained fixtures.
    options = ConvertOptions(target=target, precision="int8", out_dir=tmp_path, calib=data.calib_dir,
                             imgsz=FIXTURES[name].recipe.imgsz, val=data.val_dir, report=False, max_kept=16,
                             min_agreement=FLOOR_AGREEMENT, max_drop=FLOOR_DROP)
    result = convert(model, options, log=lambda message: None)  # AccuracyBarError if no attempt holds the floors
    search = result.search
    chosen = search["attempts"][search["chosen"]]
    assert result.record.quantization["design"]["kept_higher"] == chosen["kept_higher"]
    # the artifact itself, through the runtime a device uses, agrees with PyTorch on the held-out images,
    # as much as the search measured (the bar and the report take its numbers)
    logits, truth, _ = reference(name)
    classifier = Classifier(result.path)
    quantized = np.stack([classifier.logits(read_image(path)) for path in find_images(data.val_dir)])
    agreement = (quantized.argmax(1) == logits.argmax(1)).mean()
    drop = 100 * ((logits.argmax(1) == truth).mean() - (quantized.argmax(1) == truth).mean())
    one_image = 1 / len(quantized)
    assert agreement >= FLOOR_AGREEMENT
    assert abs(chosen["agreement"] - agreement) <= one_image + 1e-9, (chosen, agreement)
    assert abs(chosen["drop_points"] - drop) <= 100 * one_image + 1e-6, (chosen, drop)

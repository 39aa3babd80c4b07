"""The images INT8 is judged on, and how steady the FP32 model's own answers are on them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgeres.conversion.int8 import fragile
from edgeres.conversion.measure import STABILITY_IMAGES, EvalSet, fp32_stability
from edgeres.conversion.options import ConvertOptions
from edgeres.conversion.pipeline import _bar_failure
from edgeres.quantization.search import Bar

CLASSES = 4


def _eval_set(crops: list[np.ndarray], logits_of) -> EvalSet:
    seen: list[int] = []

    def fp32_logits(chosen: list[np.ndarray]) -> np.ndarray:
        seen.append(len(chosen))
        return np.stack([logits_of(crop) for crop in chosen])

    data = EvalSet(crops, None, "validation", fp32_logits)
    data.seen = seen
    return data


def _flat_crops(count: int) -> list[np.ndarray]:
    """Each crop one flat grey value in the middle of a band of 10: one grey level never leaves the band."""
    return [np.full((8, 8, 3), 10 * (i % 25) + 5, np.uint8) for i in range(count)]


def _by_band(crop: np.ndarray) -> np.ndarray:
    return np.eye(CLASSES)[(int(crop.mean()) // 10) % CLASSES]


def _by_parity(crop: np.ndarray) -> np.ndarray:
    """A model on a knife edge: its answer is the parity of the pixels' sum, which one grey level flips."""
    return np.eye(CLASSES)[int(crop.astype(np.int64).sum()) % 2]


def test_a_steady_model_keeps_every_answer_and_nothing_is_said() -> None:
    stability = fp32_stability(_eval_set(_flat_crops(60), _by_band), seed=0)
    assert stability["agreement"] == 1.0 and stability["images"] == 60
    assert fragile(stability, Bar(0.96)) is None


def test_a_model_on_a_knife_edge_changes_about_half_its_answers_and_the_user_is_told() -> None:
    stability = fp32_stability(_eval_set(_flat_crops(200), _by_parity), seed=0)
    assert 0.35 < stability["agreement"] < 0.65
    note = fragile(stability, Bar(0.96, 0.3))
    assert note and "changes" in note and "--max-drop" in note


def test_the_nudge_is_seeded_and_spread_over_every_image() -> None:
    crops = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3 * STABILITY_IMAGES)]
    first, again = (fp32_stability(_eval_set(crops, _by_parity), seed=7) for _ in range(2))
    assert first == again and first["images"] == STABILITY_IMAGES
    # the images nudged span the set (it is sorted by class), not its first STABILITY_IMAGES: each crop's
    # width is its index
    indexed = [np.full((1, i + 1, 3), 128, np.uint8) for i in range(len(crops))]
    widths: list[int] = []
    fp32_stability(_eval_set(indexed, lambda crop: widths.append(crop.shape[1] - 1) or np.eye(CLASSES)[0]), seed=0)
    nudged = widths[len(crops):]  # after the reference on every crop
    assert len(nudged) == STABILITY_IMAGES and nudged[0] == 0 and nudged[-1] == len(crops) - 1
    assert max(np.diff(nudged)) <= 4


def test_the_quarter_rule() -> None:
    """Said where FP32's own changes reach a quarter of the disagreement the bar allows, not below."""
    assert fragile({"agreement": 0.99, "images": 500}, Bar(0.96)) is not None
    assert fragile({"agreement": 0.995, "images": 500}, Bar(0.96)) is None
    assert fragile({"agreement": 0.995, "images": 500}, Bar(0.99)) is not None


def test_the_bar_failure_names_a_fragile_model_before_its_advice(tmp_path) -> None:
    attempt = {"agreement": 0.942, "drop_points": -0.47, "kept_higher": ["fc"]}
    search = {"attempts": [attempt], "chosen": 0, "bar": {"min_agreement": 0.96, "max_drop": 0.3},
              "finetune": None, "fp32_stability": {"agreement": 0.981, "images": 512}}
    result = SimpleNamespace(search=search, path=tmp_path / "m.onnx", record=SimpleNamespace(calibration={"used": 400}))
    options = ConvertOptions(target="npu", precision="int8", out_dir=tmp_path, calib=tmp_path)
    message = _bar_failure(result, options)
    assert "FP32 itself changes 1.9% of its answers" in message and message.index("changes") < message.index("Next:")
    steady = {**search, "fp32_stability": {"agreement": 1.0, "images": 512}}
    assert "FP32 itself" not in _bar_failure(SimpleNamespace(**{**vars(result), "search": steady}), options)

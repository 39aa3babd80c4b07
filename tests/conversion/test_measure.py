"""The images INT8 is judged on, and how steady the FP32 model's own answers are on them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgeres.conversion.int8 import fragility_note
from edgeres.conversion.measure import STABILITY_IMAGES, EvalSet, fp32_stability
from edgeres.conversion.options import ConvertOptions
from edgeres.conversion.pipeline import _bar_failure
from edgeres.quantization.search import Bar

CLASSES = 4


def _eval_set(crops: list[np.ndarray], logits_of) -> EvalSet:
    return EvalSet(crops, None, "validation", lambda chosen: np.stack([logits_of(crop) for crop in chosen]))


def _flat_crops(count: int) -> list[np.ndarray]:
    """Flat crops at the ends of the scale and in the middle of bands of three grey levels."""
    values = (0, 255, *range(4, 251, 3))
    return [np.full((8, 8, 3), values[i % len(values)], np.uint8) for i in range(count)]


def _band(value: int) -> int:
    return min(value // 3, 84)  # 252..255 is the last band


def _by_band(crop: np.ndarray) -> np.ndarray:
    """The band of the crop's pixels (86: they span two): one grey level keeps every flat crop in its band,
    two do not, and a nudge that wrapped round (0 - 1 = 255) would not either."""
    low, high = _band(int(crop.min())), _band(int(crop.max()))
    return np.eye(86)[low if low == high else 85]


def _by_parity(crop: np.ndarray) -> np.ndarray:
    """A model on a knife edge: its answer is the parity of the pixels' sum, which one grey level flips."""
    return np.eye(CLASSES)[int(crop.astype(np.int64).sum()) % 2]


def test_a_steady_model_keeps_every_answer_and_nothing_is_said() -> None:
    stability = fp32_stability(_eval_set(_flat_crops(170), _by_band), seed=0)
    assert stability["agreement"] == 1.0 and stability["images"] == 170 and stability["changed"] == 0
    assert fragility_note(stability, Bar(0.96), labelled=True) is None


def test_a_model_on_a_knife_edge_changes_about_half_its_answers_and_the_user_is_told() -> None:
    stability = fp32_stability(_eval_set(_flat_crops(200), _by_parity), seed=0)
    assert 0.35 < stability["agreement"] < 0.65 and stability["changed"] == round(200 * (1 - stability["agreement"]))
    note = fragility_note(stability, Bar(0.96, 0.3), labelled=True)
    assert note and f"changes {stability['changed']} of 200" in note and "--max-drop" in note


def test_the_nudge_is_seeded_and_spread_over_every_image() -> None:
    crops = [np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8) for i in range(3 * STABILITY_IMAGES)]
    first, again = (fp32_stability(_eval_set(crops, _by_parity), seed=7) for _ in range(2))
    assert first == again and first["images"] == STABILITY_IMAGES
    # the images nudged span the set (it is sorted by class), not its first STABILITY_IMAGES: each crop's
    # width is its index
    indexed = [np.full((1, i + 1, 3), 128, np.uint8) for i in range(len(crops))]
    nudged: list[int] = []
    data = EvalSet(indexed, None, "validation", lambda chosen: np.stack(
        [nudged.append(crop.shape[1] - 1) or np.eye(CLASSES)[0] for crop in chosen]), np.tile(np.eye(CLASSES)[0],
                                                                                            (len(indexed), 1)))
    fp32_stability(data, seed=0)
    assert len(nudged) == STABILITY_IMAGES and nudged[0] == 0 and nudged[-1] == len(crops) - 1
    assert max(np.diff(nudged)) <= 4


def test_the_quarter_rule() -> None:
    """Said where FP32's own changes reach a quarter of the disagreement the bar allows (and 3 images), not
    below."""
    def note(changed: int, images: int, min_agreement: float = 0.96) -> str | None:
        stability = {"agreement": 1 - changed / images, "images": images, "changed": changed}
        return fragility_note(stability, Bar(min_agreement), labelled=True)

    assert note(6, 512) and not note(5, 512)  # a quarter of 4% of 512 is 5.12 images
    assert note(3, 512, 0.99) and not note(2, 512, 0.99)  # 2.56; and at least 3 images
    assert note(3, 25) and not note(2, 25)  # 8% of 25 is far above a quarter of 4%, but 2 images are 2
    assert "lower --min-agreement" in note(6, 512)
    unlabelled = fragility_note({"agreement": 0.9, "images": 100, "changed": 10}, Bar(0.96), labelled=False)
    assert "--val DIR" in unlabelled


def test_the_bar_failure_names_a_fragile_model_where_agreement_fell_short(tmp_path) -> None:
    note = "FP32 itself changes 10 of 512 answers (2.0%)"
    attempt = {"agreement": 0.942, "drop_points": -0.47, "kept_higher": ["fc"]}
    search = {"attempts": [attempt], "chosen": 0, "bar": {"min_agreement": 0.96, "max_drop": 0.3},
              "finetune": None, "fp32_stability": {"agreement": 0.98, "images": 512, "changed": 10, "note": note}}
    result = SimpleNamespace(search=search, path=tmp_path / "m.onnx", record=SimpleNamespace(calibration={"used": 400}))
    options = ConvertOptions(target="npu", precision="int8", out_dir=tmp_path, calib=tmp_path)
    message = _bar_failure(result, options)
    assert note in message and message.index(note) < message.index("Next:")
    # agreement met, the drop did not: FP32's steadiness is not what stood in the way
    dropped = {**search, "attempts": [{**attempt, "agreement": 0.97, "drop_points": 0.6}]}
    assert note not in _bar_failure(SimpleNamespace(**{**vars(result), "search": dropped}), options)

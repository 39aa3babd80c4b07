from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeres.errors import EvaluationError
from edgeres.evaluate import metrics, read_labelled_folder
from tests.conftest import assert_one_red_line, run_cli

LABELS = ["cat", "dog", "fox"]


def test_metrics_by_hand() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 2.0]])
    truth = np.array([0, 1, 1])
    reference = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 2.0, 1.0]])
    result = metrics(logits, truth, LABELS, reference)
    assert result.images == 3 and result.top1 == pytest.approx(2 / 3) and result.top5 == 1.0
    assert result.per_class == {"cat": 1.0, "dog": 0.5}
    assert result.agreement == pytest.approx(2 / 3)
    # Only the third image differs: KL(p || q) for p = softmax(0, 2, 1), q = softmax(1, 0, 2).
    p = np.exp([0.0, 2.0, 1.0]) / np.exp([0.0, 2.0, 1.0]).sum()
    q = np.exp([1.0, 0.0, 2.0]) / np.exp([1.0, 0.0, 2.0]).sum()
    assert result.mean_kl == pytest.approx(sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) / 3)
    assert metrics(logits, truth, LABELS).agreement is None


def _folder(root: Path, names: list[str], calib_dir: Path) -> Path:
    image = sorted(calib_dir.rglob("*.png"))[0]
    for name in names:
        (root / name).mkdir(parents=True)
        shutil.copy(image, root / name / "a.png")
    return root


def test_class_folders_are_matched_to_the_labels(tmp_path: Path, calib_dir: Path) -> None:
    by_label = read_labelled_folder(_folder(tmp_path / "a", ["fox", "cat"], calib_dir), LABELS)
    assert list(by_label.classes) == [0, 2] and by_label.mapping == "by label"
    by_index = read_labelled_folder(_folder(tmp_path / "b", ["2", "1"], calib_dir), LABELS)
    assert list(by_index.classes) == [1, 2] and by_index.mapping == "by class index"
    with pytest.raises(EvaluationError, match=r"folders 'x', 'y', 'z' are neither among the model's labels"):
        read_labelled_folder(_folder(tmp_path / "c", ["x", "y", "z"], calib_dir), LABELS)  # never paired by guess


def test_bad_data_folders(tmp_path: Path, calib_dir: Path) -> None:
    with pytest.raises(EvaluationError, match="'bear', 'wolf' are neither among"):
        read_labelled_folder(_folder(tmp_path / "a", ["wolf", "bear"], calib_dir), LABELS)
    (tmp_path / "b" / "cat").mkdir(parents=True)
    with pytest.raises(EvaluationError, match="no images in them"):
        read_labelled_folder(tmp_path / "b", LABELS)
    (tmp_path / "c").mkdir()
    with pytest.raises(EvaluationError, match="no class folders"):
        read_labelled_folder(tmp_path / "c", LABELS)
    with pytest.raises(EvaluationError, match="is not a folder"):
        read_labelled_folder(tmp_path / "missing", LABELS)


@pytest.mark.slow
def test_cli_eval_against_the_checkpoint(monkeypatch, capsys, converted, checkpoint: Path, digits) -> None:
    artifacts = [converted("onnx", "fp32").path, converted("x86", "int8").path, converted("rpi", "int8").path]
    code, out, err = run_cli(monkeypatch, capsys, "eval", *artifacts, "--data", digits.test_dir,
                             "--reference", checkpoint, "--json")
    assert code == 0, err
    report = json.loads(out)
    fp32, x86, rpi = (report["artifacts"][p.name] for p in artifacts)
    assert report["classes_matched"] == "by label" and fp32["images"] == 450
    assert fp32["agreement"] == 1.0 and fp32["mean_kl"] < 1e-9
    assert x86["agreement"] >= 0.98 and rpi["agreement"] >= 0.98 and abs(x86["top1"] - fp32["top1"]) <= 0.01
    assert set(fp32["per_class"]) == set(digits.labels_file.read_text().split())


@pytest.mark.slow
def test_cli_eval_mismatched_classes(monkeypatch, capsys, converted, tmp_path: Path, calib_dir: Path) -> None:
    data = _folder(tmp_path / "val", ["wolf", "bear"], calib_dir)
    code, _, err = run_cli(monkeypatch, capsys, "eval", converted("onnx", "fp32").path, "--data", data)
    assert_one_red_line(code, err, "'bear', 'wolf' are neither among the model's labels ('zero', 'one'")

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeres.calibration import read_image_folder
from edgeres.errors import CalibrationError
from edgeres.preprocess import Preprocess

SPEC = Preprocess.imagenet(32)


@pytest.fixture
def mixed_folder(tmp_path: Path, calib_dir: Path) -> Path:
    """A few real images in nested folders, in several formats, plus broken and foreign files."""
    import cv2

    sources = sorted(calib_dir.rglob("*.png"))[:6]
    (tmp_path / "a" / "b").mkdir(parents=True)
    for index, source in enumerate(sources):
        image = cv2.imread(str(source))
        suffix = [".png", ".jpg", ".bmp", ".webp", ".JPEG", ".png"][index]
        folder = tmp_path / ("a/b" if index % 2 else "")
        cv2.imwrite(str(folder / f"img{index}{suffix}"), image)
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    return tmp_path


def test_reads_recursively_and_counts_unreadable(mixed_folder: Path) -> None:
    calibration = read_image_folder(mixed_folder, SPEC, size=100)
    assert calibration.summary["found"] == 8  # 6 images + 2 broken; the .txt is not an image
    assert calibration.summary["used"] == 6
    assert calibration.summary["skipped"] == 2
    assert sorted(Path(p).name for p in calibration.summary["skipped_examples"]) == ["broken.jpg", "empty.png"]
    assert all(crop.shape == (32, 32, 3) and crop.dtype == np.uint8 for crop in calibration.crops)


def test_sampling_is_deterministic(calib_dir: Path) -> None:
    first = read_image_folder(calib_dir, SPEC, size=20, seed=1)
    second = read_image_folder(calib_dir, SPEC, size=20, seed=1)
    other = read_image_folder(calib_dir, SPEC, size=20, seed=2)
    assert len(first) == 20
    np.testing.assert_array_equal(np.stack(first.crops), np.stack(second.crops))
    assert not np.array_equal(np.stack(first.crops), np.stack(other.crops))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        read_image_folder(tmp_path / "nope", SPEC)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match="has no images"):
        read_image_folder(tmp_path, SPEC)


def test_all_images_unreadable(tmp_path: Path) -> None:
    for index in range(3):
        (tmp_path / f"{index}.jpg").write_bytes(b"garbage")
    with pytest.raises(CalibrationError, match="none of the 3 images"):
        read_image_folder(tmp_path, SPEC)


def test_non_ascii_paths(tmp_path: Path, calib_dir: Path) -> None:
    folder = tmp_path / "calibração"
    folder.mkdir()
    shutil.copy(sorted(calib_dir.rglob("*.png"))[0], folder / "imagem_ü.png")
    assert len(read_image_folder(folder, SPEC)) == 1


def test_a_quarter_is_held_back_spread_over_a_folder_and_at_the_end_of_a_video() -> None:
    import numpy as np

    from edgeres.calibration.folder import CalibrationSet

    crops = [np.full((2, 2, 3), i, np.uint8) for i in range(40)]
    used, held = CalibrationSet(crops, {"source": "image_folder", "used": 40}).held_out()
    assert [int(c[0, 0, 0]) for c in held.crops] == list(range(3, 40, 4)) and len(used) == 30
    assert used.summary == {"source": "image_folder", "used": 30, "held_out": 10}
    used, held = CalibrationSet(crops, {"source": "video", "used": 40}).held_out()
    assert [int(c[0, 0, 0]) for c in held.crops] == list(range(30, 40))  # neighbouring frames are near copies
    few = CalibrationSet(crops[:39], {})
    assert few.held_out() == (few, None)

from __future__ import annotations

import collections
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeres.calibration import read_calibration
from edgeres.errors import CalibrationError
from edgeres.preprocess import Preprocess

SPEC = Preprocess.imagenet(32)


def test_image_folder_is_sampled_class_balanced(calib_dir: Path) -> None:
    calibration = read_calibration(calib_dir, SPEC, size=50)
    assert calibration.summary["source"] == "image_folder" and calibration.summary["classes"] == 10
    chosen = read_calibration(calib_dir, SPEC, size=50).crops
    assert all(np.array_equal(a, b) for a, b in zip(chosen, calibration.crops))  # deterministic
    # Which class each crop came from: match crops back to the files' crops.
    per_class = collections.Counter()
    crops = {SPEC.resize_and_crop(cv2.imread(str(path))).tobytes(): path.parent.name
             for path in sorted(calib_dir.rglob("*.png"))}
    for crop in calibration.crops:
        per_class[crops[crop.tobytes()]] += 1
    assert sorted(per_class.values()) == [5] * 10


def test_a_different_seed_gives_different_images(calib_dir: Path) -> None:
    first = read_calibration(calib_dir, SPEC, size=20, seed=0).crops
    second = read_calibration(calib_dir, SPEC, size=20, seed=1).crops
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))


def test_video_every_nth_frame(clip) -> None:
    path, truth = clip  # 65 frames
    calibration = read_calibration(path, SPEC, size=10, every=3)
    assert len(calibration) == 10 and calibration.summary["every"] == 3
    assert calibration.summary["source"] == "video"
    spread = read_calibration(path, SPEC, size=13)  # default: spread over the whole file
    assert spread.summary["every"] == 5 and len(spread) == 13
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read()[1]) is not None:
        frames.append(frame)
    assert np.array_equal(calibration.crops[1], SPEC.resize_and_crop(frames[3]))


def test_video_that_cannot_be_opened(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(CalibrationError, match="cannot open video"):
        read_calibration(broken, SPEC)
    with pytest.raises(CalibrationError, match="cannot open camera 97"):
        read_calibration("97", SPEC)


def test_npy_and_npz(tmp_path: Path, calib_dir: Path) -> None:
    images = np.stack([cv2.imread(str(p)) for p in sorted(calib_dir.rglob("*.png"))[:12]])
    np.save(tmp_path / "images.npy", images)
    np.savez(tmp_path / "images.npz", images=images, labels=np.arange(12))
    np.save(tmp_path / "gray.npy", images[..., 0])
    from_npy = read_calibration(tmp_path / "images.npy", SPEC, size=5)
    from_npz = read_calibration(tmp_path / "images.npz", SPEC, size=5)
    assert len(from_npy) == 5 and from_npy.summary["found"] == 12 and from_npy.summary["source"] == "array"
    assert all(np.array_equal(a, b) for a, b in zip(from_npy.crops, from_npz.crops))
    assert len(read_calibration(tmp_path / "gray.npy", SPEC)) == 12


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 8, 8, 3), np.float32), "float32 array of shape"),
    (np.zeros((4, 8, 8, 4), np.uint8), "expected uint8 images"),
    (np.zeros((0, 8, 8, 3), np.uint8), "holds no images"),
])
def test_arrays_that_are_not_images(tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(CalibrationError, match=message):
        read_calibration(tmp_path / "bad.npy", SPEC)


def test_npz_without_an_images_array(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 8, 8, 3), np.uint8), b=np.zeros(3))
    with pytest.raises(CalibrationError, match="name the images array 'images'"):
        read_calibration(tmp_path / "two.npz", SPEC)


def test_path_list_skips_missing_files(tmp_path: Path, calib_dir: Path) -> None:
    paths = sorted(calib_dir.rglob("*.png"))[:4]
    listing = tmp_path / "calib.txt"
    listing.write_text("# calibration images\n" + "\n".join(str(p) for p in paths) + "\nmissing.png\n\n")
    calibration = read_calibration(listing, SPEC)
    assert len(calibration) == 4 and calibration.summary["skipped"] == 1
    assert calibration.summary["skipped_examples"] == [str(tmp_path / "missing.png")]
    listing.write_text("# nothing\n")
    with pytest.raises(CalibrationError, match="names no images"):
        read_calibration(listing, SPEC)


def test_a_file_of_another_kind(tmp_path: Path) -> None:
    (tmp_path / "model.pth").write_bytes(b"weights")
    with pytest.raises(CalibrationError, match="cannot calibrate from"):
        read_calibration(tmp_path / "model.pth", SPEC)

"""Calibration images from a folder, sampled deterministically and preprocessed once."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import CalibrationError
from . import DEFAULT_CALIB_SIZE
from ..images import read_image  # noqa: F401  (calibration's reader: unreadable images are skipped)
from ..preprocess import Preprocess

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# progress(iterable, description, total) -> the same items; the CLI passes rich's track.
Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


def no_progress(items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
    return items


HELD_OUT_EVERY = 4  # a quarter of the calibration images judge INT8 where no --val is given
MIN_TO_HOLD_OUT = 40  # below it, judging on 10 images would say little: all are used, and the record says so


@dataclass
class CalibrationSet:
    """Calibration images, resized and cropped (uint8 BGR, crop x crop x 3), and a summary.

    Crops rather than model inputs: each target turns them into its own input layout,
    dtype and normalisation with `Preprocess.tensors`, from the same pixels.
    """

    crops: list[np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.crops)

    def held_out(self) -> tuple["CalibrationSet", "CalibrationSet | None"]:
        """(the images quantization may use, every HELD_OUT_EVERY-th image, which it never sees), so that INT8
        is judged on images that set no range and trained no weight; (self, None) when too few to spare."""
        if len(self.crops) < MIN_TO_HOLD_OUT:
            return self, None
        if self.summary.get("source") in ("video", "camera"):  # neighbouring frames are near copies: the last quarter
            cut = len(self.crops) - len(self.crops) // HELD_OUT_EVERY
            used, held = self.crops[:cut], self.crops[cut:]
        else:
            held = self.crops[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]
            used = [crop for index, crop in enumerate(self.crops) if index % HELD_OUT_EVERY != HELD_OUT_EVERY - 1]
        return (CalibrationSet(used, {**self.summary, "used": len(used), "held_out": len(held)}),
                CalibrationSet(held, {**self.summary, "used": len(held)}))


def find_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def expand_folders(paths: Sequence[Path]) -> list[Path]:
    """Image files as given, each folder replaced by the images found in it (recursively)."""
    from ..errors import EdgeresError

    found = []
    for path in paths:
        if path.is_dir():
            inside = find_images(path)
            if not inside:
                raise EdgeresError(f"folder {path} holds no images ({' '.join(IMAGE_SUFFIXES)})")
            found += inside
        else:
            found.append(path)
    return found


def read_image_folder(
    folder: str | Path,
    preprocess: Preprocess,
    *,
    size: int = DEFAULT_CALIB_SIZE,
    seed: int = 0,
    progress: Progress = no_progress,
) -> CalibrationSet:
    """Read up to `size` images found recursively under `folder`.

    The same folder, size and seed always give the same images in the same order.
    Unreadable images are skipped and counted; none readable is an error.
    """
    folder = Path(folder)
    if size < 1:
        raise CalibrationError(f"--calib-size must be at least 1, got {size}")
    if folder.is_file():
        raise CalibrationError(f"--calib {folder} is a file; give the folder that holds the calibration images")
    if not folder.is_dir():
        raise CalibrationError(f"calibration folder {folder} does not exist; give a folder of images")
    paths = find_images(folder)
    if not paths:
        raise CalibrationError(
            f"calibration folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)"
        )
    classes = image_folder_classes(folder, paths)
    chosen = balanced_sample(paths, classes, size, seed) if classes else sample_paths(paths, size, seed)
    calibration = crop_paths(chosen, preprocess, progress, f"{folder}")
    calibration.summary.update({
        "source": "image_folder" if classes else "folder",
        "folder": str(folder),
        "found": len(paths),
        "seed": seed,
    })
    if classes:
        calibration.summary["classes"] = len(set(classes.values()))
    return calibration


def crop_paths(chosen: Sequence[Path], preprocess: Preprocess, progress: Progress, where: str) -> CalibrationSet:
    """Read and crop `chosen`; unreadable files are skipped and counted, none readable is an error."""
    crops, skipped = _crop_all(chosen, preprocess, progress)
    if not crops:
        raise CalibrationError(
            f"none of the {len(chosen)} images sampled from {where} could be read; first unreadable: {skipped[0]}"
        )
    return CalibrationSet(crops=crops, summary={
        "sampled": len(chosen), "used": len(crops), "skipped": len(skipped),
        "skipped_examples": [str(p) for p in skipped[:5]], "skipped_why": "not a readable image" if skipped else None,
    })


def image_folder_classes(folder: Path, paths: Sequence[Path]) -> dict[Path, str] | None:
    """{image: class} when `folder` is an ImageFolder (DIR/<class>/... with no images at the top)."""
    if any(path.parent == folder for path in paths):
        return None
    classes = {path: path.relative_to(folder).parts[0] for path in paths}
    return classes if len(set(classes.values())) > 1 else None


def balanced_sample(paths: Sequence[Path], classes: dict[Path, str], size: int, seed: int) -> list[Path]:
    """Take classes in turn, each in a seeded shuffled order, so each class gets an equal share."""
    rng = random.Random(seed)
    by_class: dict[str, list[Path]] = {}
    for path in paths:
        by_class.setdefault(classes[path], []).append(path)
    queues = [rng.sample(members, len(members)) for _, members in sorted(by_class.items())]
    chosen: list[Path] = []
    while len(chosen) < size and any(queues):
        for queue in queues:
            if queue and len(chosen) < size:
                chosen.append(queue.pop())
    return sorted(chosen)


def sample_paths(paths: Sequence[Path], size: int, seed: int) -> list[Path]:
    if len(paths) <= size:
        return list(paths)
    return sorted(random.Random(seed).sample(list(paths), size))


def _crop_all(
    paths: Sequence[Path], preprocess: Preprocess, progress: Progress
) -> tuple[list[np.ndarray], list[Path]]:
    crops, skipped = [], []
    for path in progress(paths, "Reading calibration images", len(paths)):
        image = read_image(path)
        if image is None:
            skipped.append(path)
        else:
            crops.append(preprocess.resize_and_crop(image))
    return crops, skipped

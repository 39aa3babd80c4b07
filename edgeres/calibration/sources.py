"""Every calibration source behind one call: a folder, a video or camera, an array file, a list.

`read_calibration` picks the reader from what `--calib` names. Each reader returns the
same CalibrationSet (crops, as `Preprocess.resize_and_crop` makes them, and a summary for
the artifact's record), so targets never see where the images came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import CalibrationError
from ..files import GiB, SMALL_TEXT_LIMIT, VIDEO_LIMIT, checked, npz_headers, read_text
from ..preprocess import Preprocess
from .folder import DEFAULT_CALIB_SIZE, CalibrationSet, Progress, crop_paths, no_progress, read_image_folder, sample_paths

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
LIST_SUFFIXES = (".txt", ".lst")
DEFAULT_CAMERA_EVERY = 10  # a camera at 30 FPS: three frames a second, so the scene moves between samples


def read_calibration(source: str | Path, preprocess: Preprocess, *, size: int = DEFAULT_CALIB_SIZE, seed: int = 0,
                     every: int | None = None, progress: Progress = no_progress) -> CalibrationSet:
    """Calibration crops from `source`: an image folder, a video file, a camera index, a .npy/.npz, a path list."""
    if size < 1:
        raise CalibrationError(f"--calib-size must be at least 1, got {size}")
    if every is not None and every < 1:
        raise CalibrationError(f"--calib-every must be at least 1, got {every}")
    text = str(source)
    for matches, reader in READERS:
        if matches(text):
            return reader(text, preprocess, size=size, seed=seed, every=every, progress=progress)
    raise CalibrationError(
        f"--calib {text} is a file edgeres cannot calibrate from; give a folder of images, a video "
        f"({', '.join(VIDEO_SUFFIXES)}), a camera index, an array file (.npy, .npz) or a list of image paths (.txt)"
    )


def _folder(source: str, preprocess: Preprocess, *, size: int, seed: int, every, progress) -> CalibrationSet:
    return read_image_folder(source, preprocess, size=size, seed=seed, progress=progress)


def read_video(source: str, preprocess: Preprocess, *, size: int, seed: int = 0, every: int | None = None,
               progress: Progress = no_progress) -> CalibrationSet:
    """Every `every`-th frame of a video file or camera, up to `size` frames.

    For a file `every` defaults to spreading the frames over the whole video.
    """
    camera, live = source.isdigit(), source.isdigit() or "://" in source
    if not live:  # a file: a named pipe or a device would block OpenCV's reader for good
        checked(Path(source), VIDEO_LIMIT, "calibration video", CalibrationError)
    capture = cv2.VideoCapture(int(source) if camera else source)
    if not capture.isOpened():
        what = f"camera {source}" if camera else f"video {source}"
        raise CalibrationError(f"cannot open {what} for calibration; check that it exists and OpenCV can decode it")
    try:
        length = 0 if live else max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
        step = every or (DEFAULT_CAMERA_EVERY if live else max(1, length // size))
        crops = [preprocess.resize_and_crop(frame)
                 for frame in progress(_every_nth(capture, step, size), "Reading calibration frames", size)]
    finally:
        capture.release()
    if not crops:
        raise CalibrationError(f"no frame could be read from {source} for calibration")
    return CalibrationSet(crops=crops, summary={
        "source": "camera" if live else "video", "video": source, "every": step, "frames_in_file": length or None,
        "sampled": len(crops), "used": len(crops), "skipped": 0, "skipped_examples": [], "seed": seed,
    })


def _every_nth(capture, step: int, size: int):
    index = taken = 0
    while taken < size:
        ok = capture.grab()
        if not ok:
            return
        if index % step == 0:
            ok, frame = capture.retrieve()
            if ok and frame is not None:
                taken += 1
                yield frame
        index += 1


def read_arrays(source: str, preprocess: Preprocess, *, size: int, seed: int = 0, every=None,
                progress: Progress = no_progress) -> CalibrationSet:
    """Images stacked in a .npy, or in a .npz (key 'images', else its only array): uint8, (N, H, W, 3) BGR or (N, H, W)."""
    path = Path(source)
    images = _load_array(path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise CalibrationError(
            f"{path.name} holds a {images.dtype} array of shape {images.shape}; expected uint8 images "
            "(N, H, W, 3) in BGR order as OpenCV reads them, or grayscale (N, H, W)"
        )
    if len(images) == 0:
        raise CalibrationError(f"{path.name} holds no images")
    chosen = sample_paths(range(len(images)), size, seed)
    crops = []
    for index in progress(chosen, "Reading calibration images", len(chosen)):
        image = images[index]
        crops.append(preprocess.resize_and_crop(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image))
    return CalibrationSet(crops=crops, summary={
        "source": "array", "file": str(path), "found": len(images), "sampled": len(chosen), "used": len(crops),
        "skipped": 0, "skipped_examples": [], "seed": seed,
    })


ARRAY_LIMIT = 8 * GiB  # a calibration array of uint8 frames: 300 frames of 1080p are 1.9 GB


def _load_array(path: Path) -> np.ndarray:
    """The images array; an .npy is mapped, not read, and an .npz member is judged by its header first."""
    if not path.exists() and not path.is_symlink():
        raise CalibrationError(f"calibration array {path} does not exist")
    checked(path, ARRAY_LIMIT, "calibration array", CalibrationError)
    if path.suffix.lower() == ".npz":
        headers = npz_headers(path, ARRAY_LIMIT, "calibration array", CalibrationError)
        keys = list(headers)
        if "images" not in keys and len(keys) != 1:
            raise CalibrationError(f"{path.name} holds arrays {', '.join(keys)}; name the images array 'images'")
        shape, dtype = headers["images" if "images" in keys else keys[0]]
        if int(np.prod(shape)) * np.dtype(dtype).itemsize > ARRAY_LIMIT:
            raise CalibrationError(f"{path.name}'s images inflate to more than {ARRAY_LIMIT >> 30} GiB; give "
                                   "fewer images, or a folder of image files")
    try:
        loaded = np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError) as error:
        raise CalibrationError(f"{path} is not a readable numpy file: {error}") from None
    if isinstance(loaded, np.ndarray):
        return loaded
    with loaded:
        keys = list(loaded.keys())
        return loaded["images" if "images" in keys else keys[0]]


def read_path_list(source: str, preprocess: Preprocess, *, size: int, seed: int = 0, every=None,
                   progress: Progress = no_progress) -> CalibrationSet:
    """A text file with one image path per line (relative to the file's folder); '#' starts a comment."""
    path = Path(source)
    if not path.exists() and not path.is_symlink():
        raise CalibrationError(f"calibration list {path} does not exist")
    text = read_text(path, SMALL_TEXT_LIMIT, "calibration list", CalibrationError, errors="replace")
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    paths = [(path.parent / line) for line in lines if line]
    if not paths:
        raise CalibrationError(f"calibration list {path} names no images")
    chosen = sample_paths(paths, size, seed)
    calibration = crop_paths(chosen, preprocess, progress, str(path))
    calibration.summary.update({"source": "list", "file": str(path), "found": len(paths), "seed": seed})
    if calibration.summary["skipped"]:
        calibration.summary["skipped_why"] = "missing or not a readable image"
    return calibration


def _suffix_in(suffixes: tuple[str, ...]) -> Callable[[str], bool]:
    return lambda text: Path(text).suffix.lower() in suffixes


# Checked in order; the folder reader also explains a folder or file that does not exist.
READERS: list[tuple[Callable[[str], bool], Callable[..., CalibrationSet]]] = [
    (lambda text: Path(text).is_dir(), _folder),
    (str.isdigit, read_video),
    (_suffix_in(VIDEO_SUFFIXES), read_video),
    (lambda text: "://" in text, read_video),
    (_suffix_in(ARRAY_SUFFIXES), read_arrays),
    (_suffix_in(LIST_SUFFIXES), read_path_list),
    (lambda text: Path(text).is_dir() or not Path(text).exists(), _folder),
]

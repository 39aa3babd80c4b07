"""Hard models for the tests and benchmarks: ResNets trained briefly on photos that ship in packages.

Plain post-training quantization is easy on the digits model; it is not on a ResNet
trained briefly from scratch on a small set of photographs, the kind of model people
bring. Sixteen classes, one per photo (scikit-image's, scikit-learn's and matplotlib's
sample images), each image a random rotated, scaled, colour-jittered and noisy crop of
its photo, written as an ImageFolder (train/, val/, calib/). Trained without weight
decay for a few epochs, the model's residual stream and logits grow wide: min/max
ranges then waste most of the 256 int8 levels.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from .calibration.folder import find_images, read_image

SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                  "retina", "camera", "brick", "grass", "gravel", "coins")
SIDE = 64  # stored image size (default); the models take a centre crop after resizing


@dataclass(frozen=True)
class PhotoSet:
    root: Path
    labels: tuple[str, ...]

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    @property
    def calib_dir(self) -> Path:
        return self.root / "calib"

    @property
    def labels_file(self) -> Path:
        return self.root / "labels.txt"


@dataclass(frozen=True)
class Recipe:
    """How a hard model is trained: brief, no weight decay, optionally at a constant learning rate."""

    arch: str
    imgsz: int = 32
    epochs: int = 6
    lr: float = 3e-3
    constant_lr: bool = False
    seed: int = 0


def photos() -> dict[str, np.ndarray]:
    """The sample photos as BGR uint8, by name (greyscale ones repeated to three channels)."""
    import matplotlib
    import sklearn.datasets
    from skimage import data

    found = {}
    for name in SKIMAGE_PHOTOS:
        image = getattr(data, name)()
        found[name] = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image[..., :3][..., ::-1]
    found["motorcycle"] = data.stereo_motorcycle()[0][..., ::-1]
    for path in sklearn.datasets.load_sample_images().filenames:
        found[Path(path).stem] = cv2.imread(path)
    found["grace_hopper"] = cv2.imread(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))
    return {name: np.ascontiguousarray(image) for name, image in sorted(found.items())}


def photo_set(root: Path, *, per_class: tuple[int, int, int] = (100, 40, 10), jitter: float = 1.0,
              seed: int = 0, side: int = SIDE) -> PhotoSet:
    """Write (once) train/val/calib ImageFolders of random crops: per_class images in each split."""
    root = Path(root)
    done = root / "done.json"
    settings = {"per_class": list(per_class), "jitter": jitter, "seed": seed, "side": side}
    if done.is_file() and json.loads(done.read_text()) == settings:
        return PhotoSet(root, tuple(root.joinpath("labels.txt").read_text().split()))
    rng = np.random.default_rng(seed)
    sources = photos()
    for split, count in zip(("train", "val", "calib"), per_class):
        for name, photo in sources.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                cv2.imwrite(str(folder / f"{index:03d}.png"), random_view(photo, rng, jitter, side))
    (root / "labels.txt").write_text("\n".join(sources) + "\n")
    done.write_text(json.dumps(settings))
    return PhotoSet(root, tuple(sources))


def random_view(photo: np.ndarray, rng: np.random.Generator, jitter: float = 1.0, side: int = SIDE) -> np.ndarray:
    """A rotated, scaled crop of `photo` with jittered contrast, colour, brightness and sensor noise."""
    height, width = photo.shape[:2]
    crop = min(height, width) * rng.uniform(0.25, 0.6)
    cy, cx = rng.uniform(crop / 2, height - crop / 2), rng.uniform(crop / 2, width - crop / 2)
    warp = cv2.getRotationMatrix2D((cx, cy), rng.uniform(-20, 20), side / crop)
    warp[:, 2] += (side / 2 - cx, side / 2 - cy)
    image = cv2.warpAffine(photo, warp, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
    image = image.astype(np.float32)
    image = (image - image.mean()) * rng.uniform(1 - 0.4 * jitter, 1 + 0.5 * jitter) + image.mean()
    gain = rng.uniform(1 - 0.25 * jitter, 1 + 0.25 * jitter, 3) * rng.uniform(1 - 0.25 * jitter, 1 + 0.3 * jitter)
    image = image * gain + rng.uniform(-30 * jitter, 30 * jitter)
    if rng.random() < 0.3:
        grey = image.mean(axis=-1, keepdims=True)
        image = grey + (image - grey) * rng.uniform(0, 1.5)
    image += rng.normal(0, rng.uniform(0, 20 * jitter), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def train_photo_resnet(data: PhotoSet, checkpoint: Path, recipe: Recipe) -> dict:
    """Train `recipe` on data.train_dir and save its state_dict; cached by the recipe and the data."""
    import torch
    import torchvision

    from .demo import fit
    from .preprocess import Preprocess

    info_file = Path(checkpoint).with_suffix(".json")
    settings = {**asdict(recipe), "data": str(data.root)}
    if Path(checkpoint).is_file() and info_file.is_file() and json.loads(info_file.read_text())["settings"] == settings:
        return json.loads(info_file.read_text())
    spec = Preprocess.imagenet(recipe.imgsz)
    train_x, train_y = _load(data.train_dir, data.labels, spec)
    val_x, val_y = _load(data.val_dir, data.labels, spec)
    torch.manual_seed(recipe.seed)
    model = getattr(torchvision.models, recipe.arch)(weights=None, num_classes=len(data.labels))
    fit(model, torch.from_numpy(train_x), torch.from_numpy(train_y), recipe.epochs, recipe.seed,
        lr=recipe.lr, weight_decay=0.0, constant_lr=recipe.constant_lr)
    model.eval()
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(val_x)).argmax(1).numpy() == val_y).mean())
    Path(checkpoint).parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    info = {"settings": settings, "val_accuracy": accuracy, "val_images": int(len(val_y))}
    info_file.write_text(json.dumps(info, indent=2) + "\n")
    return info


def _load(folder: Path, labels: tuple[str, ...], spec) -> tuple[np.ndarray, np.ndarray]:
    paths = find_images(folder)
    return np.stack([spec(read_image(p)) for p in paths]), np.array([labels.index(p.parent.name) for p in paths])


@dataclass(frozen=True)
class Fixture:
    """A hard model: its photo set (folder name and photo_set arguments) and how it is trained."""

    data_folder: str
    data: dict
    recipe: Recipe


FIXTURES: dict[str, Fixture] = {
    # The benchmark's main model, close to what a user brings: 96 px photos, 64 px crops, 10 epochs (minutes).
    "resnet50-photos-64": Fixture("photos80", {"side": 80}, Recipe("resnet50", imgsz=64, epochs=10)),
    # The tests' models: 32 px crops, trained in about two minutes (ResNet50) and one (ResNet18) on 2 cores.
    "resnet50-photos-32": Fixture("photos64", {}, Recipe("resnet50", imgsz=32, epochs=6)),
    "resnet18-photos-32": Fixture("photos64-jitter", {"jitter": 1.6}, Recipe("resnet18", imgsz=32, epochs=5, lr=1e-2,
                                                                                 constant_lr=True, seed=3)),
}

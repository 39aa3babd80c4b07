from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from edgeres.errors import ArchitectureError, CheckpointError, LabelsError, WeightsNotFoundError
from edgeres.models import detect_arch, load_model


@pytest.fixture(scope="module")
def state_dict(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)


def _same_weights(loaded, state_dict: dict) -> bool:
    return all(torch.equal(loaded.module.state_dict()[k], v) for k, v in state_dict.items())


def test_plain_state_dict(checkpoint: Path, state_dict: dict) -> None:
    loaded = load_model(checkpoint, "resnet18")
    assert loaded.num_classes == 10
    assert loaded.labels[:2] == ["class_0", "class_1"]
    assert not loaded.module.training
    assert len(loaded.source["sha256"]) == 64
    assert _same_weights(loaded, state_dict)


@pytest.mark.parametrize("wrap", ["state_dict", "model"])
def test_nested_and_dataparallel_state_dicts(tmp_path: Path, state_dict: dict, wrap: str) -> None:
    prefixed = {f"module.{k}": v for k, v in state_dict.items()}
    path = tmp_path / "nested.pth"
    torch.save({wrap: prefixed, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    assert _same_weights(load_model(path, "resnet18"), state_dict)


def test_torchscript_archive(tmp_path: Path, model, state_dict: dict) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(model.module).save(str(path))
    assert _same_weights(load_model(path, "resnet18"), state_dict)


def test_pickled_module_needs_trust(tmp_path: Path, model, state_dict: dict) -> None:
    path = tmp_path / "whole.pt"
    torch.save(model.module, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_model(path, "resnet18")
    assert _same_weights(load_model(path, "resnet18", trust_checkpoint=True), state_dict)


def test_wrong_architecture_names_both(checkpoint: Path) -> None:
    with pytest.raises(ArchitectureError, match="holds a resnet18, but --arch resnet50 was asked for; pass --arch resnet18"):
        load_model(checkpoint, "resnet50")


def test_unknown_architecture_lists_choices(checkpoint: Path) -> None:
    with pytest.raises(ArchitectureError, match="unknown architecture 'vgg16'; choose one of resnet18, resnet34, resnet50"):
        load_model(checkpoint, "vgg16")


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_detect_arch_tells_every_resnet_apart(arch: str) -> None:
    assert detect_arch(getattr(torchvision.models, arch)(num_classes=3).state_dict()) == arch


def test_resnet50_checkpoint_loads(tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(num_classes=7).state_dict(), path)
    assert load_model(path, "resnet50").num_classes == 7


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x02 this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(path, "resnet18")


def test_truncated_checkpoint(tmp_path: Path, checkpoint: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_model(path, "resnet18")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pth", "resnet18")


def test_not_a_classifier(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="has no 'fc.weight'"):
        load_model(path, "resnet18")


def test_no_weights_inside(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "config": {"lr": 0.1}}, path)
    with pytest.raises(CheckpointError, match="not model weights"):
        load_model(path, "resnet18")


def test_labels_from_file(checkpoint: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n\n")
    assert load_model(checkpoint, "resnet18", labels=labels).labels[3] == "digit 3"


@pytest.mark.parametrize("content, message", [
    ("a\nb\nc\n", "has 3 labels but the model has 10 classes"),
    ("", "is empty"),
    ("a\n\nb\n", "blank line inside"),
])
def test_bad_labels(checkpoint: Path, tmp_path: Path, content: str, message: str) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text(content)
    with pytest.raises(LabelsError, match=message):
        load_model(checkpoint, "resnet18", labels=labels)


def test_missing_labels_file(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="does not exist"):
        load_model(checkpoint, "resnet18", labels=tmp_path / "labels.txt")


def test_imagenet_weights_offline_say_where_to_put_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url: str, dst: str, progress: bool) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    expected = str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    with pytest.raises(WeightsNotFoundError, match=f"Copy resnet18-f37072fd.pth .* to {expected}"):
        load_model(weights="imagenet", arch="resnet18")


def test_imagenet_weights_from_disk(tmp_path: Path, monkeypatch) -> None:
    """The real loading path, with a file standing in for the ImageNet download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), folder / "resnet18-f37072fd.pth")
    loaded = load_model(weights="imagenet", arch="resnet18")
    assert loaded.labels[0] == "tench" and loaded.num_classes == 1000
    assert loaded.source["weights"] == "ResNet18_Weights.IMAGENET1K_V1"


def test_path_and_weights_are_exclusive(checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="either a checkpoint path or weights"):
        load_model(checkpoint, "resnet18", weights="imagenet")

"""Loading trained torchvision ResNets from the checkpoints people actually have.

torch is imported inside this module only: the runtime side never needs it.
"""

from __future__ import annotations

import re
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torchvision

from .artifact import sha256_of
from .architectures import ARCHITECTURES, IMAGENET_WEIGHTS
from .errors import ArchitectureError, CheckpointError, WeightsNotFoundError
from .files import CHECKPOINT_LIMIT, check_inflated_size, checked
from .labels import check_label_count, default_labels, read_labels

_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "net")
_DOWNLOAD_TIMEOUT_S = 20


@dataclass
class LoadedModel:
    """A torchvision ResNet in eval mode, with its labels and where it came from."""

    module: torch.nn.Module
    arch: str
    labels: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Its logits for model inputs (N, 3, H, W), normalised as it expects; finite, or the model itself
        is broken (finite weights can still overflow), which no export should be blamed for."""
        found = module_logits(self.module, inputs)
        if not np.isfinite(found).all():
            raise CheckpointError("the PyTorch model itself gives non-finite logits (NaN or inf) on these images: "
                                  "its weights overflow float32; it cannot be converted or judged. Check the training")
        return found


def module_logits(module: torch.nn.Module, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """A module's outputs for inputs (N, ...), `batch` at a time, without autograd."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            outputs.append(module(torch.from_numpy(inputs[start : start + batch])).numpy())
    return np.concatenate(outputs)


def load_model(
    path: str | Path | None = None,
    arch: str = "resnet18",
    *,
    weights: str | None = None,
    labels: str | Path | list[str] | None = None,
    trust_checkpoint: bool = False,
) -> LoadedModel:
    """Load a trained ResNet from `path`, or torchvision's pretrained `weights="imagenet"`.

    Accepted checkpoints: a state_dict (also nested under state_dict/model, with
    DataParallel's `module.` prefix), a TorchScript archive, or a whole pickled
    module when `trust_checkpoint=True` (unpickling can run arbitrary code).
    """
    check_arch_name(arch)
    if (path is None) == (weights is None):
        raise CheckpointError("give either a checkpoint path or weights='imagenet', not both and not neither")
    if weights is not None:
        return _load_pretrained(arch, weights, labels)
    path = Path(path)
    state_dict = _read_state_dict(path, trust_checkpoint)
    module = build_resnet(arch, state_dict, where=str(path))
    num_classes = module.fc.out_features
    label_list = _resolve_labels(labels, num_classes)
    source = {"checkpoint": path.name, "sha256": sha256_of(path)}
    return LoadedModel(module=module, arch=arch, labels=label_list, source=source)


def check_arch_name(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise ArchitectureError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def build_resnet(arch: str, state_dict: Mapping[str, torch.Tensor], where: str) -> torch.nn.Module:
    """A torchvision `arch` with `state_dict` loaded, after checking that they match."""
    check_numbers(state_dict, where)
    if "fc.weight" not in state_dict:
        sample = ", ".join(list(state_dict)[:4]) or "no tensors"
        raise CheckpointError(
            f"{where} has no 'fc.weight', so it is not a torchvision ResNet classifier "
            f"(found keys such as: {sample})"
        )
    found = detect_arch(state_dict)
    if found != arch:
        raise ArchitectureError(
            f"{where} holds a {found or 'network that is no torchvision ResNet'}, "
            f"but --arch {arch} was asked for"
            + (f"; pass --arch {found}" if found else "")
        )
    num_classes = int(state_dict["fc.weight"].shape[0])
    module = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
        raise CheckpointError(f"{where} does not fit a {arch}: {first_line}") from None
    return module.eval()


def check_numbers(state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights that are not numbers, and BatchNorm variances that cannot be variances.

    One NaN in a convolution makes every logit NaN, and argmax of NaN rows "agrees" with
    anything: such a model would convert and verify as if it were fine.
    """
    for name, tensor in state_dict.items():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        bad = ~torch.isfinite(tensor)
        if bad.any():
            raise CheckpointError(f"{where}: tensor {name} holds {int(bad.sum())} non-finite values (NaN or inf) "
                                  f"of its {tensor.numel()}; the training diverged or the file is damaged")
        if name.endswith("running_var") and (tensor < 0).any():
            raise CheckpointError(f"{where}: BatchNorm statistics {name} hold {int((tensor < 0).sum())} negative "
                                  "variances; the file is damaged or was edited")


def detect_arch(state_dict: Mapping[str, Any]) -> str | None:
    """Name the torchvision ResNet whose layout these keys have, or None."""
    blocks = []
    for stage in range(1, 5):
        indices = {int(m.group(1)) for key in state_dict if (m := re.match(rf"layer{stage}\.(\d+)\.", key))}
        blocks.append(len(indices))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state_dict else "basic"
    for name, layout in ARCHITECTURES.items():
        if layout == (tuple(blocks), kind):
            return name
    return None


def _read_state_dict(path: Path, trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint file inside it")
    checked(path, CHECKPOINT_LIMIT, "checkpoint", CheckpointError)
    check_inflated_size(path, CHECKPOINT_LIMIT, "checkpoint", CheckpointError)
    if _is_torchscript(path):
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as error:
            raise CheckpointError(f"{path} looks like TorchScript but cannot be loaded: {error}") from None
    loaded = _torch_load(path, trust_checkpoint)
    return _strip_prefix(_find_state_dict(loaded, path))


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def _torch_load(path: Path, trust_checkpoint: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_checkpoint)
    except Exception as error:  # torch raises many kinds for a bad file; all mean the same here
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found and not trust_checkpoint:
            raise CheckpointError(
                f"{path} holds pickled Python objects ({found.group(1)}), not just weights; "
                "loading it can run arbitrary code. Save model.state_dict() instead, or pass "
                "--trust-checkpoint (trust_checkpoint=True) if you trust where it came from"
            ) from None
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    text = str(error)
    unpickler = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if unpickler:
        return "unpickling failed: " + unpickler.group(1).strip()
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def _find_state_dict(loaded: Any, path: Path) -> Mapping[str, Any]:
    if isinstance(loaded, torch.nn.Module):
        return loaded.state_dict()
    if isinstance(loaded, Mapping):
        if any(isinstance(value, torch.Tensor) for value in loaded.values()):
            return loaded
        for key in _NESTED_KEYS:
            if key in loaded:
                return _find_state_dict(loaded[key], path)
    kind = type(loaded).__name__
    keys = f" with keys {list(loaded)[:6]}" if isinstance(loaded, Mapping) else ""
    raise CheckpointError(
        f"{path} holds a {kind}{keys}, not model weights; expected a state_dict, "
        f"or a dict with one of {', '.join(_NESTED_KEYS)}"
    )


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    # DataParallel and DistributedDataParallel save every key under "module.".
    tensors = {key: value for key, value in state_dict.items() if isinstance(value, torch.Tensor)}
    if tensors and all(key.startswith("module.") for key in tensors):
        return {key[len("module.") :]: value for key, value in tensors.items()}
    return tensors


def _resolve_labels(labels: str | Path | list[str] | None, num_classes: int) -> list[str]:
    if labels is None:
        return default_labels(num_classes)
    if isinstance(labels, (str, Path)):
        return read_labels(labels, num_classes)
    check_label_count(list(labels), num_classes)
    return list(labels)


def _load_pretrained(arch: str, weights: str, labels: str | Path | list[str] | None) -> LoadedModel:
    if weights != "imagenet":
        raise CheckpointError(f"unknown weights {weights!r}; the only pretrained weights are 'imagenet'")
    spec = torchvision.models.get_weight(IMAGENET_WEIGHTS[arch])
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(spec.url).name
    if not checkpoint.is_file():
        _download(spec.url, checkpoint)
    state_dict = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module = build_resnet(arch, state_dict, where=str(checkpoint))
    label_list = _resolve_labels(labels, module.fc.out_features) if labels else list(spec.meta["categories"])
    source = {"weights": IMAGENET_WEIGHTS[arch], "checkpoint": checkpoint.name, "sha256": sha256_of(checkpoint)}
    return LoadedModel(module=module, arch=arch, labels=label_list, source=source)


def _download(url: str, checkpoint: Path) -> None:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(checkpoint), progress=False)
    except OSError as error:  # URLError and socket timeouts are OSErrors
        raise WeightsNotFoundError(
            f"torchvision's ImageNet weights are not on this machine and cannot be downloaded ({error}). "
            f"Copy {Path(url).name} (from {url}) to {checkpoint}, or set TORCH_HOME to the folder "
            f"whose hub/checkpoints/ holds it"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)

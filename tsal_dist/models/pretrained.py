"""Initial weights from a user's file (``model.init_from``): e.g. an ImageNet VGG-16 for cpm_vgg16.

No weights are downloaded or shipped: the user names a state dict file. It is read with
``torch.load(weights_only=True)`` (no code from the file runs), unwrapped from the usual
containers (``{"state_dict": ...}``, ``{"model": ...}``, a ``module.`` prefix), and each tensor is
matched by name to the model: as named (``backbone.features.0.weight``) or as the backbone's
(``features.0.weight``, torchvision's VGG-16 names, which are ours up to conv4_3). A matching name
with another shape is an error naming the keys; names the model lacks (VGG-16's conv5 and
classifier) are counted and ignored; a file that matches nothing is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tsal_dist.config import ConfigError

__all__ = ["InitReport", "load_init_weights_"]


@dataclass(frozen=True)
class InitReport:
    """What ``load_init_weights_`` did: tensors loaded, file tensors unused, model tensors kept."""

    path: str
    loaded: int
    unused: tuple[str, ...]
    kept: int

    def line(self) -> str:
        return (f"model.init_from: {self.path}: loaded {self.loaded} tensors, "
                f"{len(self.unused)} in the file unused, {self.kept} of the model's left at "
                f"their random init")


def _unwrap(obj: Any, path: str) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "teacher"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ConfigError(f"model.init_from: {path}: not a state dict (a mapping of names to "
                          f"tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


@torch.no_grad()
def load_init_weights_(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the tensors of the state dict file ``path`` into ``model`` (in place).

    Raises:
        ConfigError: unreadable file, not a state dict, shape mismatches (naming the keys), or no
            tensor of the file matches the model.
    """
    path = str(Path(path).expanduser())
    if not Path(path).is_file():
        raise ConfigError(f"model.init_from: {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable or unsafe file is the user's to fix
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"model.init_from: {path}: cannot be read as weights ({first})") from None
    source = _unwrap(obj, path)
    target = model.state_dict()
    matched: dict[str, torch.Tensor] = {}
    mismatched: list[str] = []
    unused: list[str] = []
    for name, tensor in source.items():
        dest = name if name in target else f"backbone.{name}" if f"backbone.{name}" in target \
            else None
        if dest is None:
            unused.append(name)
        elif tuple(target[dest].shape) != tuple(tensor.shape):
            mismatched.append(f"{name} {tuple(tensor.shape)} vs {dest} "
                              f"{tuple(target[dest].shape)}")
        else:
            matched[dest] = tensor
    if mismatched:
        more = f" (+{len(mismatched) - 4} more)" if len(mismatched) > 4 else ""
        raise ConfigError(f"model.init_from: {path}: shapes differ from the model's: "
                          f"{'; '.join(mismatched[:4])}{more}")
    if not matched:
        raise ConfigError(f"model.init_from: {path}: none of its {len(source)} tensors is named "
                          f"as the model's (e.g. {next(iter(source))!r} vs "
                          f"{next(iter(target))!r})")
    for dest, tensor in matched.items():
        target[dest].copy_(tensor.to(target[dest].dtype))
    return InitReport(path=path, loaded=len(matched), unused=tuple(unused),
                      kept=len(target) - len(matched))

"""The optimizer of each model: a torch optimizer by name and its parameter groups (per-layer
learning-rate scales, weight decay on biases or not). The engines (engines.py) step it; the
learning rate itself is set by the loop every step (schedules.py), times each group's
``lr_scale``."""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["build_optimizer", "param_groups"]


def build_optimizer(params: Iterator[nn.Parameter] | list, *, name: str, lr: float,
                    weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Torch optimizer by name (DeepSpeed is given this object: no JIT-built ops on CPU).
    ``params``: parameters, or groups (:func:`param_groups`) whose keys override the defaults."""
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def param_groups(model: nn.Module, *, weight_decay: float, layer_lr: str = "uniform",
                 bias_decay: bool = True) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The optimizer's parameter groups: ``lr_scale`` multiplies the step's learning rate.

    ``layer_lr="tsal"`` gives TSAL's groups (docs/method_notes.md 1.11): weights 1x and biases 2x,
    times 4 in the heatmap stages (``heatmap_head.*``). ``bias_decay=False`` puts no weight decay on
    1-d parameters (biases, norm scales and shifts). With the defaults every parameter is in one
    group, returned as the plain list (the optimizer is then exactly the single-group one).
    """
    if layer_lr not in ("uniform", "tsal"):
        raise ValueError(f"layer_lr must be 'uniform' or 'tsal', got {layer_lr!r}")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        one_d = p.ndim <= 1
        scale = 1.0
        if layer_lr == "tsal":
            scale = (4.0 if name.startswith("heatmap_head.") else 1.0) * (2.0 if one_d else 1.0)
        wd = weight_decay if bias_decay or not one_d else 0.0
        groups.setdefault((scale, wd), []).append(p)
    if len(groups) == 1 and next(iter(groups)) == (1.0, weight_decay):
        return next(iter(groups.values()))
    return [{"params": ps, "lr_scale": scale, "weight_decay": wd}
            for (scale, wd), ps in groups.items()]

"""The datasets of a run, built from its config: the one place config sections become dataset
arguments, for training and distillation alike.

What does not belong here: the datasets themselves (``datasets.py``), which list files a run reads
(``lists.py``), batching (``batches.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsal_dist.config import DataConfig, ExperimentConfig
from tsal_dist.data.clips import ClipDataset
from tsal_dist.data.datasets import EvalImageDataset, LabeledImageDataset
from tsal_dist.data.formats import read_list
from tsal_dist.data.lists import DataLists, resolve_data, split_labeled

__all__ = ["RunData", "build_run_data"]


@dataclass(frozen=True)
class RunData:
    """Everything a run reads.

    Attributes:
        lists: the run's list files (``lists.eval`` are scored at the end).
        labeled: augmented training faces (the labeled lists minus the held-out faces).
        val: the held-out faces (the last ``run.val_images``), unaugmented.
        clips: augmented unlabeled clips; None when the run trains on none.
    """

    lists: DataLists
    labeled: LabeledImageDataset
    val: EvalImageDataset
    clips: ClipDataset | None


def augmentation_args(d: DataConfig) -> dict[str, Any]:
    """The training augmentation of ``data`` as the crop datasets' keyword arguments."""
    return dict(rotate_max_deg=d.rotate_max_deg, scale_min=d.scale_min, scale_max=d.scale_max,
                shift_max_frac=d.shift_max_frac, flip=d.flip)


def build_run_data(cfg: ExperimentConfig, *, clips: bool = True) -> RunData:
    """Resolve the lists (generating the synthetic data once if none is configured) and build
    the datasets; ``clips=False`` skips the unlabeled clips (a supervised run)."""
    d, m = cfg.data, cfg.model
    lists = resolve_data(cfg)
    labeled_entries = [e for p in lists.labeled for e in read_list(p)]
    train_entries, val_entries = split_labeled(labeled_entries, cfg.run.val_images,
                                               d.labeled_limit)
    aug = augmentation_args(d)
    labeled = LabeledImageDataset(train_entries, num_points=d.num_points,
                                  input_size=m.input_size, pre_crop_expand=d.pre_crop_expand,
                                  augment=True, strict=d.strict, **aug)
    clip_ds = None
    if clips and lists.unlabeled and cfg.optim.clips_per_batch > 0:
        unl = [e for p in lists.unlabeled for e in read_list(p)]
        clip_ds = ClipDataset(unl, num_points=d.num_points, clip_length=d.clip_length,
                              clip_stride=d.clip_stride, input_size=m.input_size,
                              pre_crop_expand=d.pre_crop_expand, augment=True, flow=d.flow,
                              strict=d.strict, jitter_rotate_deg=d.clip_jitter_rotate_deg,
                              jitter_scale=d.clip_jitter_scale,
                              jitter_shift_frac=d.clip_jitter_shift_frac, **aug)
    val = EvalImageDataset(val_entries, num_points=d.num_points, input_size=m.input_size,
                           pre_crop_expand=d.pre_crop_expand, strict=d.strict)
    return RunData(lists=lists, labeled=labeled, val=val, clips=clip_ds)

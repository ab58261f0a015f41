"""Which list files a run reads, and how its labeled faces split into training and validation.

What belongs here: resolving ``data.*_lists`` against ``data.root`` (or generating the synthetic
dataset once when no data is configured) and the held-out split. What does not: reading the
lists (``formats.py``), the datasets built from them (``build.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tsal_dist.config import ConfigError, ExperimentConfig
from tsal_dist.data.formats import ListEntry

__all__ = ["DataLists", "resolve_data", "split_labeled"]


@dataclass(frozen=True)
class DataLists:
    """The list files of a run: labeled faces, unlabeled video frames, evaluation lists."""

    labeled: tuple[Path, ...]
    unlabeled: tuple[Path, ...]
    eval: tuple[Path, ...]


def resolve_data(cfg: ExperimentConfig) -> DataLists:
    """List files of the run; generates the synthetic dataset once when no data is configured."""
    d = cfg.data
    if d.root:
        root = Path(d.root).expanduser()
        lab = tuple(root / p for p in d.labeled_lists)
        unl = tuple(root / p for p in d.unlabeled_lists)
        ev = tuple(root / p for p in d.eval_lists)
        if not lab:
            raise ConfigError("data.labeled_lists: is empty but data.root is set; name the "
                              "labeled list files under data.root")
        return DataLists(lab, unl, ev)
    from tsal_dist.data.synthetic import dataset_lists, ensure_synthetic

    s = d.synthetic
    root = ensure_synthetic(Path(d.cache_dir).expanduser(), images=s.images,
                            test_images=s.test_images, videos=s.videos,
                            test_videos=s.test_videos, frames=s.frames,
                            image_size=s.image_size, seed=s.seed,
                            labeled_domain=s.labeled_domain)
    lists = dataset_lists(root)
    pick = lambda names, default: tuple(lists[n] for n in names) if names else default  # noqa: E731
    lab = tuple(Path(root) / p for p in d.labeled_lists) or (lists["train"],)
    unl = tuple(Path(root) / p for p in d.unlabeled_lists) or (
        (lists["videos_train_unlabeled"],) if s.videos > 0 else ())
    ev = tuple(Path(root) / p for p in d.eval_lists) or pick(
        (), (lists["test"],) + ((lists["videos_test"],) if s.test_videos > 0 else ()))
    return DataLists(lab, unl, ev)


def split_labeled(entries: list[ListEntry], val_images: int, limit: int
                  ) -> tuple[list[ListEntry], list[ListEntry]]:
    """Hold out the last ``val_images`` faces for validation, then keep the first ``limit``."""
    n_val = min(val_images, max(0, len(entries) - 1))
    train, val = entries[: len(entries) - n_val], entries[len(entries) - n_val:]
    if limit:
        train = train[:limit]
    return train, val

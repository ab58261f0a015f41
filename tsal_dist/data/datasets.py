"""Datasets of single-image face crops: training (:class:`LabeledImageDataset`) and evaluation
(:class:`EvalImageDataset`). The clip dataset is ``clips.py`` (:class:`ClipDataset` and
:func:`build_clips` are re-exported here); what they share, the item purity and the bad-data
policy, ``crops.py``; the seeded batch order and ``collate``, ``batches.py``.

What does not belong here: file formats (formats.py), geometry (transforms.py), flow (flow.py),
target encoding (tsal_dist.codec).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from tsal_dist.data.clips import ClipDataset, build_clips
from tsal_dist.data.crops import FaceCrops, Report, chw
from tsal_dist.data.formats import ListEntry
from tsal_dist.data.transforms import warp_image

__all__ = ["ClipDataset", "EvalImageDataset", "LabeledImageDataset", "build_clips"]


class LabeledImageDataset(FaceCrops):
    """Single-image face crops (300W-style lists; ``annotation`` None -> ``labeled`` False).

    Item (CONTRACTS.md): ``image`` uint8 (3, S, S) RGB; ``landmarks`` float32 (K, 2) crop px;
    ``visible`` float32 (K,) (0 for points off the crop or unannotated; their coordinates are 0);
    ``labeled`` bool (); ``affine`` float32 (2, 3) image->crop (includes the mirror when the
    augmentation flipped, in which case landmark j is the mirror partner of file point j);
    ``index`` int64 () = entry actually used.

    Args: those of :class:`~tsal_dist.data.crops.FaceCrops`.
    """

    def __len__(self) -> int:
        return len(self.entries)

    def _crop(self, index: int, seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray,
                                                    np.ndarray, bool]:
        e = self.entries[index]
        pts, vis, labeled = self._annotation(index)
        aug = self._draw(seed)
        M = self._matrix(aug, e.box, e.image)
        img = self._read(e.image)
        crop = warp_image(img, M, self.input_size)
        lm, lv = self._landmarks(M, pts, vis, aug)
        item = {
            "image": chw(crop),
            "landmarks": torch.from_numpy(lm),
            "visible": torch.from_numpy(lv),
            "labeled": torch.tensor(labeled),
            "affine": torch.from_numpy(M.astype(np.float32)),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        return item, pts, vis, labeled

    def _make(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        return self._crop(index, seed)[0]


class EvalImageDataset(LabeledImageDataset):
    """Labeled crops without augmentation, plus what evaluation needs to go back to the image.

    Extra item keys: ``orig_landmarks`` float32 (K, 2) image px as in the file; ``orig_visible``
    float32 (K,) visibility as in the file (NOT reduced to the crop); ``face_size`` float32 ()
    (the list's face_size, NaN when absent). ``index`` indexes ``dataset.entries`` (see
    :meth:`path`); ``affine`` inverted maps crop predictions back to image px.
    """

    def __init__(self, entries: Sequence[ListEntry], *, num_points: int, input_size: int,
                 pre_crop_expand: float, strict: bool = False, report: Report | None = None,
                 max_open_videos: int = 4) -> None:
        super().__init__(entries, num_points=num_points, input_size=input_size,
                         pre_crop_expand=pre_crop_expand, augment=False, strict=strict,
                         report=report, max_open_videos=max_open_videos)

    def _make(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        item, pts, vis, _ = self._crop(index, seed)
        fs = self.entries[index].face_size
        item["orig_landmarks"] = torch.from_numpy(np.asarray(pts, np.float32).copy())
        item["orig_visible"] = torch.from_numpy(np.asarray(vis, np.float32).copy())
        item["face_size"] = torch.tensor(math.nan if fs is None else fs, dtype=torch.float32)
        return item

"""Clips of consecutive video frames: :func:`build_clips` groups list entries into clips and
:class:`ClipDataset` crops them, one crop and one augmentation per clip, with the flow-warped
tracking source (item purity and bad-data policy as ``crops.py`` says).

What does not belong here: single-image datasets (datasets.py), the flow and tracking grids
(flow.py), geometry (transforms.py).
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from tsal_dist.data.crops import FaceCrops, ItemProblem, Report
from tsal_dist.data.flow import FlowMethod, remap_with_grid, tracking_grids
from tsal_dist.data.formats import AnnotationError, ListEntry, split_video_ref
from tsal_dist.data.transforms import compose_affine, view_jitter, warp_image


def build_clips(entries: Sequence[ListEntry], clip_length: int, clip_stride: int = 1,
                all_starts: bool = False) -> list[list[int]]:
    """Group list entries into clips of ``clip_length`` entries taken every ``clip_stride``.

    Sequences: ``video#frame`` refs are grouped by video path and ordered by frame index (wherever
    they appear in the list); plain image paths form a sequence per run of consecutive lines in
    the same folder, in list order. Consecutive entries of a sequence count as consecutive frames
    (a list that keeps every 5th frame gives clips at 1/5 of the frame rate). A clip never
    crosses sequences; sequences shorter than a clip give none.

    Windows: non-overlapping by default (starts 0, T*stride, 2*T*stride, ...: every frame is used
    at most once per epoch, as TSAL's grouping of 10 consecutive lines); ``all_starts=True`` uses
    every start position (more, strongly overlapping clips).

    Returns:
        list of clips, each a list of ``clip_length`` entry indices, in sequence order.
    """
    if clip_length < 1 or clip_stride < 1:
        raise ValueError("clip_length and clip_stride must be >= 1")
    videos: dict[str, list[tuple[int, int]]] = {}
    sequences: list[list[int] | str] = []  # image runs, or the key of a video (first appearance)
    last_folder: str | None = None
    for i, e in enumerate(entries):
        vid = split_video_ref(e.image)
        if vid is not None:
            if vid[0] not in videos:
                videos[vid[0]] = []
                sequences.append(vid[0])
            videos[vid[0]].append((vid[1], i))
            last_folder = None
            continue
        folder = os.path.dirname(e.image)
        if last_folder is not None and folder == last_folder and isinstance(sequences[-1], list):
            sequences[-1].append(i)
        else:
            sequences.append([i])
        last_folder = folder
    span = (clip_length - 1) * clip_stride + 1
    step = 1 if all_starts else clip_length * clip_stride
    clips = []
    for s in sequences:
        seq = s if isinstance(s, list) else [i for _, i in sorted(videos[s], key=lambda t: t[0])]
        for start in range(0, len(seq) - span + 1, step):
            clips.append(seq[start:start + span:clip_stride])
    return clips


class ClipDataset(FaceCrops):
    """Clips of T consecutive frames of one video, one crop and ONE augmentation per clip, plus
    the flow-warped tracking source.

    The crop box is the MEAN of the frames' list boxes (keeps the face scale of single-image
    crops; a point that leaves the crop becomes invisible). Clips are built by
    :func:`build_clips` (non-overlapping windows unless ``all_starts``).

    Optionally each frame also gets its own small "view jitter" (rotation, zoom, shift about the
    crop centre) on top of the clip's transform, as TSAL's independently augmented copies: then
    frame t and frame t+1 are different VIEWS, and the tracking grid carries the exact view change
    composed with the flow (``tracking_grids``), so a consistency term can compare predictions
    across views in output space.

    Item (CONTRACTS.md): ``frames`` uint8 (T, 3, S, S) (the views); ``grid`` float32
    (T-1, S, S, 2): for every pixel of view t+1, where it comes from in view t (crop px; flow
    computed on the shared-transform crops, see :func:`~tsal_dist.data.flow.tracking_grids`);
    ``warped`` uint8 (T-1, 3, S, S) = view t resampled through that grid (frame t registered onto
    frame t+1's geometry; without jitter exactly :func:`~tsal_dist.data.flow.warp_to_next`);
    ``landmarks`` float32 (T, K, 2) crop px; ``visible`` float32 (T, K); ``labeled`` bool (T,)
    (False for ``annotation`` None frames, whose landmarks/visibility are 0); ``index`` int64 () =
    clip used.

    Args: those of :class:`~tsal_dist.data.crops.FaceCrops`, plus ``clip_length`` T (>= 2),
    ``clip_stride`` (frame step inside a clip), ``flow`` ("dis" | "farneback" | "none"),
    ``flow_preset`` (DIS preset), ``all_starts``, ``jitter_rotate_deg`` / ``jitter_scale`` /
    ``jitter_shift_frac`` (per-frame view jitter: rotation ~ U(-r, r) deg, zoom ~ U(1 - s, 1 + s),
    shift ~ U(-f S, f S) px; all 0 = no jitter). A clip with any bad frame or annotation is
    skipped as a whole.
    """

    def __init__(self, entries: Sequence[ListEntry], *, num_points: int, clip_length: int,
                 clip_stride: int, input_size: int, pre_crop_expand: float, augment: bool,
                 rotate_max_deg: float = 0.0, scale_min: float = 1.0, scale_max: float = 1.0,
                 shift_max_frac: float = 0.0, flip: bool = False,
                 flip_pairs: Sequence[tuple[int, int]] | None = None, flow: FlowMethod = "dis",
                 flow_preset: str = "medium", all_starts: bool = False, strict: bool = False,
                 report: Report | None = None, max_open_videos: int = 4,
                 jitter_rotate_deg: float = 0.0, jitter_scale: float = 0.0,
                 jitter_shift_frac: float = 0.0) -> None:
        if clip_length < 2:
            raise ValueError(f"clip_length must be >= 2 (pairs of frames), got {clip_length}")
        if flow not in ("dis", "farneback", "none"):
            raise ValueError(f"unknown flow method {flow!r}")
        super().__init__(entries, num_points=num_points, input_size=input_size,
                         pre_crop_expand=pre_crop_expand, augment=augment,
                         rotate_max_deg=rotate_max_deg, scale_min=scale_min,
                         scale_max=scale_max, shift_max_frac=shift_max_frac, flip=flip,
                         flip_pairs=flip_pairs, strict=strict, report=report,
                         max_open_videos=max_open_videos)
        self.clip_length, self.clip_stride = clip_length, clip_stride
        self.flow, self.flow_preset = flow, flow_preset
        if not (0 <= jitter_rotate_deg <= 90 and 0 <= jitter_scale < 1
                and 0 <= jitter_shift_frac < 0.5):
            raise ValueError(f"bad view jitter: rotate {jitter_rotate_deg} (0..90), scale "
                             f"{jitter_scale} ([0, 1)), shift {jitter_shift_frac} ([0, 0.5))")
        self.jitter = (float(jitter_rotate_deg), float(jitter_scale), float(jitter_shift_frac))
        self.clips = build_clips(self.entries, clip_length, clip_stride, all_starts)

    def __len__(self) -> int:
        return len(self.clips)

    def _jitters(self, seed: int, t_len: int) -> list[np.ndarray] | None:
        if not (self.augment and any(self.jitter)):
            return None
        rng = np.random.default_rng([seed, 0x71E])  # independent of the clip's own draw
        return [view_jitter(rng, self.input_size, *self.jitter) for _ in range(t_len)]

    def _frames(self, idx: list[int]) -> list[np.ndarray]:
        refs = [self.entries[i].image for i in idx]
        vids = [split_video_ref(r) for r in refs]
        if all(v is not None for v in vids) and len({v[0] for v in vids if v}) == 1:
            path = vids[0][0]  # type: ignore[index]
            try:  # one batched decord read for the whole clip
                return self.videos.read_frames(path, [v[1] for v in vids if v])
            except AnnotationError as err:
                raise ItemProblem("video", path, err) from None
        return [self._read(r) for r in refs]

    def _make(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        idx = self.clips[index]
        anns = [self._annotation(i) for i in idx]
        box = np.mean([self.entries[i].box for i in idx], axis=0)
        aug = self._draw(seed)
        M = self._matrix(aug, box, self.entries[idx[0]].image)
        imgs = self._frames(idx)
        S = self.input_size
        shared = np.stack([warp_image(img, M, S) for img in imgs])  # (T, S, S, 3)
        jit = self._jitters(seed, len(idx))
        if jit is None:
            views, mats = shared, [M] * len(idx)
        else:
            mats = [compose_affine(J, M) for J in jit]
            views = np.stack([warp_image(img, Mt, S) for img, Mt in zip(imgs, mats)])
        grid = tracking_grids(shared, jit, self.flow, self.flow_preset)
        warped = np.stack([remap_with_grid(views[t], grid[t]) for t in range(len(idx) - 1)])
        lms, vis = zip(*(self._landmarks(Mt, p, v, aug) for Mt, (p, v, _) in zip(mats, anns)))
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(views.transpose(0, 3, 1, 2))),
            "warped": torch.from_numpy(np.ascontiguousarray(warped.transpose(0, 3, 1, 2))),
            "grid": torch.from_numpy(np.ascontiguousarray(grid)),
            "landmarks": torch.from_numpy(np.stack(lms)),
            "visible": torch.from_numpy(np.stack(vis)),
            "labeled": torch.tensor([a[2] for a in anns], dtype=torch.bool),
            "index": torch.tensor(index, dtype=torch.int64),
        }

"""Datasets of face crops (labeled images, eval images, video clips) and the seeded batch order.

Items follow docs/CONTRACTS.md exactly. Every item is a pure function of ``(index, seed)``:
``dataset.get(index, seed)`` draws all its randomness from ``np.random.default_rng(seed)``, and
``dataset[(index, seed)]`` (or ``dataset[index]``, seed = index) calls it. Together with
:func:`seeded_batch_indices` the batch of step s on rank r is a pure function of
(run seed, s, r, world), which is what exact resume relies on.

Bad data (missing/corrupt image or video frame, bad annotation): with ``strict=True`` the
:class:`~tsal_dist.data.formats.AnnotationError` naming the file is raised; otherwise a warning is
logged once per file, the item is counted in ``dataset.problems`` (reason -> number of skipped
items: "annotation", "image", "video", "box") and the next good item ((index + 1) % len, ...) is
returned instead, deterministically. Annotations are validated lazily, on first use, and both
results and failures are cached (per process: DataLoader workers keep their own counts).

What does not belong here: file formats (formats.py), geometry (transforms.py), flow (flow.py),
target encoding (tsal_dist.codec).
"""

from __future__ import annotations

import logging
import math
import os
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tsal_dist.data.flow import FlowMethod, remap_with_grid, tracking_grids
from tsal_dist.data.formats import AnnotationError, ListEntry, read_pts, split_video_ref
from tsal_dist.data.images import VideoCache, read_image
from tsal_dist.data.transforms import (
    IBUG68_FLIP_PAIRS,
    IDENTITY_AUGMENTATION,
    Augmentation,
    centre_similarity,
    compose_affine,
    flip_permutation,
    sample_augmentation,
    transform_landmarks,
    warp_image,
)

log = logging.getLogger(__name__)

Report = Callable[[str, str], None]  # (reason, message)


class _FaceCrops(Dataset):
    """Shared machinery: annotation cache, augmentation draw, bad-data policy."""

    def __init__(self, entries: Sequence[ListEntry], *, num_points: int, input_size: int,
                 pre_crop_expand: float, augment: bool, rotate_max_deg: float,
                 scale_min: float, scale_max: float, shift_max_frac: float, flip: bool,
                 flip_pairs: Sequence[tuple[int, int]] | None, strict: bool,
                 report: Report | None, max_open_videos: int) -> None:
        if num_points <= 0 or input_size <= 0:
            raise ValueError("num_points and input_size must be > 0")
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min ({scale_min}) <= scale_max ({scale_max})")
        self.entries = list(entries)
        self.num_points = num_points
        self.input_size = input_size
        self.pre_crop_expand = pre_crop_expand
        self.augment = augment
        self.rotate_max_deg = rotate_max_deg
        self.scale_min, self.scale_max = scale_min, scale_max
        self.shift_max_frac = shift_max_frac
        self.flip = flip
        self.flip_perm: np.ndarray | None = None
        if augment and flip:
            if flip_pairs is None:
                if num_points != 68:
                    raise ValueError(f"flip=True with {num_points} points needs flip_pairs "
                                     "(only the iBUG-68 pairs are built in)")
                flip_pairs = IBUG68_FLIP_PAIRS
            self.flip_perm = flip_permutation(num_points, flip_pairs)
        self.strict = strict
        self._report_fn = report
        self.videos = VideoCache(max_open=max_open_videos)
        self.problems: dict[str, int] = {}
        self._warned: set[str] = set()
        self._unread_reports: list[str] = []  # for the process that consumes the items
        self._bad: dict[int, str] = {}  # item index -> reason, so a bad item is skipped at once
        self._ann: dict[int, tuple[np.ndarray, np.ndarray] | AnnotationError] = {}

    # ---------------------------------------------------------------- access
    def __len__(self) -> int:
        raise NotImplementedError

    def _make(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        if isinstance(key, (tuple, list)):
            if len(key) != 2:
                raise TypeError(f"expected index or (index, seed), got {key!r}")
            return self.get(int(key[0]), int(key[1]))
        return self.get(int(key), int(key))

    def take_reports(self) -> list[str]:
        """The bad-file messages of this process not taken yet (a DataLoader worker's messages
        travel with its batches, so the training process can show them whatever the worker's
        own stderr is)."""
        out, self._unread_reports = self._unread_reports, []
        return out

    def bad_items(self) -> dict[int, str]:
        """{item index: reason} of the bad items this process has met so far."""
        return dict(self._bad)

    def get(self, index: int, seed: int) -> dict[str, torch.Tensor]:
        """Item ``index`` with augmentation drawn from ``seed``; a bad item is replaced by the next
        good one ((index + 1) % len, ...) with the same seed, unless ``strict``."""
        return self.get_with_replacements(index, seed)[0]

    def get_with_replacements(self, index: int, seed: int
                              ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """:meth:`get`, plus the reasons of the bad items it skipped on the way (one per item;
        the same in every process, unlike ``problems``, which counts each bad item once per
        process)."""
        n = len(self)
        if n == 0:
            raise IndexError(f"{type(self).__name__} is empty")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        replaced: list[str] = []
        for k in range(n):
            i = (index + k) % n
            if i in self._bad:
                replaced.append(self._bad[i])
                continue
            try:
                return self._make(i, seed), replaced
            except _ItemProblem as p:
                if self.strict:
                    raise p.error from None
                self._bad[i] = p.reason
                replaced.append(p.reason)
                self.problems[p.reason] = self.problems.get(p.reason, 0) + 1
                self._warn(p)
        raise AnnotationError(f"{type(self).__name__}: none of the {n} items is readable "
                              f"(problems: {self.problems})")

    # ---------------------------------------------------------------- helpers
    def _warn(self, p: "_ItemProblem") -> None:
        if p.file in self._warned:
            return
        self._warned.add(p.file)
        msg = f"skipping bad data ({p.reason}): {p.error}"
        self._unread_reports.append(msg)
        if self._report_fn is not None:
            self._report_fn(p.reason, msg)
        else:
            log.warning(msg)

    def _annotation(self, i: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(points (K, 2) image px, visible (K,), labeled) of entry i; cached, errors too."""
        e = self.entries[i]
        if e.annotation is None:
            K = self.num_points
            return np.zeros((K, 2), np.float32), np.zeros(K, np.float32), False
        got = self._ann.get(i)
        if got is None:
            try:
                got = read_pts(e.annotation, self.num_points)
            except AnnotationError as err:
                got = err
            self._ann[i] = got
        if isinstance(got, AnnotationError):
            raise _ItemProblem("annotation", e.annotation, got)
        return got[0], got[1], True

    def _draw(self, seed: int) -> Augmentation:
        if not self.augment:
            return IDENTITY_AUGMENTATION
        rng = np.random.default_rng(seed)
        return sample_augmentation(rng, self.rotate_max_deg, self.scale_min, self.scale_max,
                                   self.shift_max_frac, self.input_size, self.flip)

    def _matrix(self, aug: Augmentation, box: Sequence[float], where: str) -> np.ndarray:
        try:
            return aug.matrix(box, self.input_size, self.pre_crop_expand)
        except ValueError as err:
            raise _ItemProblem("box", where, AnnotationError(f"{where}: {err}")) from None

    def _read(self, ref: str) -> np.ndarray:
        vid = split_video_ref(ref)
        try:
            if vid is None:
                return read_image(ref)
            return self.videos.read_frames(vid[0], [vid[1]])[0]
        except AnnotationError as err:
            raise _ItemProblem("image" if vid is None else "video",
                               ref if vid is None else vid[0], err) from None

    def _landmarks(self, M: np.ndarray, pts: np.ndarray, vis: np.ndarray,
                   aug: Augmentation) -> tuple[np.ndarray, np.ndarray]:
        return transform_landmarks(M, pts, vis, self.input_size,
                                   self.flip_perm if aug.flip else None)

    def path(self, index: int) -> str:
        """Image ref (path or ``video#frame``) of entry ``index`` (the ``index`` of an item)."""
        return self.entries[index].image


class _ItemProblem(Exception):
    def __init__(self, reason: str, file: str, error: AnnotationError) -> None:
        super().__init__(str(error))
        self.reason, self.file, self.error = reason, file, error


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class LabeledImageDataset(_FaceCrops):
    """Single-image face crops (300W-style lists; ``annotation`` None -> ``labeled`` False).

    Item (CONTRACTS.md): ``image`` uint8 (3, S, S) RGB; ``landmarks`` float32 (K, 2) crop px;
    ``visible`` float32 (K,) (0 for points off the crop or unannotated; their coordinates are 0);
    ``labeled`` bool (); ``affine`` float32 (2, 3) image->crop (includes the mirror when the
    augmentation flipped, in which case landmark j is the mirror partner of file point j);
    ``index`` int64 () = entry actually used.

    Args:
        entries: list entries (resolved paths).
        num_points: K. input_size: S (crop px). pre_crop_expand: box growth per side (fraction).
        augment: draw rotation/scale/shift(/flip) per item from the seed; False = plain crop.
        rotate_max_deg, scale_min, scale_max, shift_max_frac, flip: see
            :func:`~tsal_dist.data.transforms.sample_augmentation`.
        flip_pairs: mirror pairs (0-based); None = iBUG-68 when K == 68.
        strict: raise on the first bad file instead of skipping it.
        report: called as ``report(reason, message)`` once per bad file (default: log warning).
        max_open_videos: decord/cv2 readers kept open (``video#frame`` refs).
    """

    def __init__(self, entries: Sequence[ListEntry], *, num_points: int, input_size: int,
                 pre_crop_expand: float, augment: bool, rotate_max_deg: float = 0.0,
                 scale_min: float = 1.0, scale_max: float = 1.0, shift_max_frac: float = 0.0,
                 flip: bool = False, flip_pairs: Sequence[tuple[int, int]] | None = None,
                 strict: bool = False, report: Report | None = None,
                 max_open_videos: int = 4) -> None:
        super().__init__(entries, num_points=num_points, input_size=input_size,
                         pre_crop_expand=pre_crop_expand, augment=augment,
                         rotate_max_deg=rotate_max_deg, scale_min=scale_min,
                         scale_max=scale_max, shift_max_frac=shift_max_frac, flip=flip,
                         flip_pairs=flip_pairs, strict=strict, report=report,
                         max_open_videos=max_open_videos)

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
            "image": _chw(crop),
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


class ClipDataset(_FaceCrops):
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

    Args: as :class:`LabeledImageDataset`, plus ``clip_length`` T (>= 2), ``clip_stride`` (frame
    step inside a clip), ``flow`` ("dis" | "farneback" | "none"), ``flow_preset`` (DIS preset),
    ``all_starts``, ``jitter_rotate_deg`` / ``jitter_scale`` / ``jitter_shift_frac`` (per-frame
    view jitter: rotation ~ U(-r, r) deg, zoom ~ U(1 - s, 1 + s), shift ~ U(-f S, f S) px; all 0 =
    no jitter). A clip with any bad frame or annotation is skipped as a whole.
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
                raise _ItemProblem("video", path, err) from None
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


def view_jitter(rng: np.random.Generator, size: int, rotate_deg: float, scale: float,
                shift_frac: float) -> np.ndarray:
    """One per-frame view jitter: a (2, 3) crop -> crop similarity about the crop centre."""
    rot = float(rng.uniform(-rotate_deg, rotate_deg))
    zoom = float(rng.uniform(1.0 - scale, 1.0 + scale))
    m = shift_frac * size
    dx, dy = (float(v) for v in rng.uniform(-m, m, size=2))
    return centre_similarity(size, rot, zoom, (dx, dy))[:2]


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of item dicts key by key: tensors -> (B, ...) tensor, anything else -> list.

    Raises:
        ValueError: items with different keys (e.g. image and clip items mixed).
    """
    if not items:
        raise ValueError("collate: empty batch")
    keys = list(items[0])
    for it in items[1:]:
        if set(it) != set(keys):
            raise ValueError(f"collate: items have different keys {sorted(keys)} vs {sorted(it)}")
    out: dict[str, Any] = {}
    for k in keys:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if all(isinstance(v, torch.Tensor) for v in vals) else vals
    return out


# ------------------------------------------------------------------------------- batch order


@lru_cache(maxsize=8)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    perm = np.random.default_rng((seed, epoch)).permutation(n)
    perm.flags.writeable = False
    return perm


def seeded_batch_indices(step: int, rank: int, world: int, n: int, batch: int,
                         seed: int) -> list[tuple[int, int]]:
    """(index, item_seed) pairs of one rank's batch at one step; a pure function.

    The global sample stream is the concatenation of per-epoch permutations of range(n), epoch e
    drawn from ``np.random.default_rng((seed, e))``. Step s consumes positions
    ``s*batch*world .. (s+1)*batch*world - 1`` of that stream; rank r takes the contiguous slice
    ``[r*batch, (r+1)*batch)`` of them (a step may straddle an epoch boundary; if n < batch*world
    an item can appear twice in a step). ``item_seed`` = first word of
    ``SeedSequence((seed, step, rank, slot))``, so augmentations differ across steps, ranks and
    slots, and a resumed run continues with exactly the batch it would have had.

    Args:
        step, rank, world, n (dataset length), batch (items per rank per step), seed (run seed):
            non-negative, with rank < world and n, batch, world >= 1.
    Returns:
        ``batch`` pairs (index in [0, n), seed in [0, 2**32)).
    """
    if n < 1 or batch < 1 or world < 1 or not 0 <= rank < world or step < 0 or seed < 0:
        raise ValueError(f"seeded_batch_indices: bad arguments step={step} rank={rank} "
                         f"world={world} n={n} batch={batch} seed={seed}")
    first = (step * world + rank) * batch
    out = []
    for slot in range(batch):
        pos = first + slot
        epoch, k = divmod(pos, n)
        index = int(_epoch_permutation(seed, epoch, n)[k])
        item_seed = int(np.random.SeedSequence((seed, step, rank, slot)).generate_state(1)[0])
        out.append((index, item_seed))
    return out

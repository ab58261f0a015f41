"""What every dataset of face crops shares: annotation cache, augmentation draw, reading images
and video frames, and the bad-data policy (:class:`FaceCrops`).

Items follow docs/CONTRACTS.md exactly. Every item is a pure function of ``(index, seed)``:
``dataset.get(index, seed)`` draws all its randomness from ``np.random.default_rng(seed)``, and
``dataset[(index, seed)]`` (or ``dataset[index]``, seed = index) calls it. Together with
:func:`~tsal_dist.data.batches.seeded_batch_indices` the batch of step s on rank r is a pure
function of (run seed, s, r, world), which is what exact resume relies on.

Bad data (missing/corrupt image or video frame, bad annotation): with ``strict=True`` the
:class:`~tsal_dist.data.formats.AnnotationError` naming the file is raised; otherwise a warning is
logged once per file, the item is counted in ``dataset.problems`` (reason -> number of skipped
items: "annotation", "image", "video", "box") and the next good item ((index + 1) % len, ...) is
returned instead, deterministically. Annotations are validated lazily, on first use, and both
results and failures are cached (per process: DataLoader workers keep their own counts).

What does not belong here: the datasets themselves (images: datasets.py, clips: clips.py), file
formats (formats.py), geometry (transforms.py), flow (flow.py), target encoding
(tsal_dist.codec).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tsal_dist.data.formats import AnnotationError, ListEntry, read_pts, split_video_ref
from tsal_dist.data.images import VideoCache, read_image
from tsal_dist.data.schemes import scheme_for
from tsal_dist.data.transforms import (
    IDENTITY_AUGMENTATION,
    Augmentation,
    flip_permutation,
    sample_augmentation,
    transform_landmarks,
)

# the datasets' bad-file warnings go to one logger, whichever module raised them (batches.py
# shows a loader worker's reports under the same name)
log = logging.getLogger("tsal_dist.data.datasets")

Report = Callable[[str, str], None]  # (reason, message)


class FaceCrops(Dataset):
    """Shared machinery: annotation cache, augmentation draw, bad-data policy.

    Args (every dataset of face crops takes them):
        entries: list entries (resolved paths).
        num_points: K. input_size: S (crop px). pre_crop_expand: box growth per side (fraction).
        augment: draw rotation/scale/shift(/flip) per item from the seed; False = plain crop.
        rotate_max_deg, scale_min, scale_max, shift_max_frac, flip: see
            :func:`~tsal_dist.data.transforms.sample_augmentation`.
        flip_pairs: mirror pairs (0-based); None = the K-point scheme's
            (:func:`~tsal_dist.data.schemes.scheme_for`; only iBUG-68 has them).
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
                flip_pairs = scheme_for(num_points).flip_pairs
                if not flip_pairs:
                    raise ValueError(f"flip=True with {num_points} points needs flip_pairs "
                                     "(tsal_dist.data.schemes knows none for it)")
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
            except ItemProblem as p:
                if self.strict:
                    raise p.error from None
                self._bad[i] = p.reason
                replaced.append(p.reason)
                self.problems[p.reason] = self.problems.get(p.reason, 0) + 1
                self._warn(p)
        raise AnnotationError(f"none of the {n} items is readable "
                              f"(problems: {self.problems})")

    # ---------------------------------------------------------------- helpers
    def _warn(self, p: "ItemProblem") -> None:
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
            raise ItemProblem("annotation", e.annotation, got)
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
            raise ItemProblem("box", where, AnnotationError(f"{where}: {err}")) from None

    def _read(self, ref: str) -> np.ndarray:
        vid = split_video_ref(ref)
        try:
            if vid is None:
                return read_image(ref)
            return self.videos.read_frames(vid[0], [vid[1]])[0]
        except AnnotationError as err:
            raise ItemProblem("image" if vid is None else "video",
                               ref if vid is None else vid[0], err) from None

    def _landmarks(self, M: np.ndarray, pts: np.ndarray, vis: np.ndarray,
                   aug: Augmentation) -> tuple[np.ndarray, np.ndarray]:
        return transform_landmarks(M, pts, vis, self.input_size,
                                   self.flip_perm if aug.flip else None)

    def path(self, index: int) -> str:
        """Image ref (path or ``video#frame``) of entry ``index`` (the ``index`` of an item)."""
        return self.entries[index].image


class ItemProblem(Exception):
    """A bad item: its reason ("annotation", "image", "video", "box"), file and error."""

    def __init__(self, reason: str, file: str, error: AnnotationError) -> None:
        super().__init__(str(error))
        self.reason, self.file, self.error = reason, file, error


def chw(img: np.ndarray) -> torch.Tensor:
    """(H, W, C) image -> (C, H, W) tensor (contiguous, sharing nothing with ``img``'s view)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))

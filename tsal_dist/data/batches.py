"""The training batches of one rank, step by step, made off the training thread.

One item of :class:`StepBatches` is everything a training step consumes: the collated labeled
batch and (when the run has unlabeled video) the collated clips, each a pure function of
(run seed, step, rank, world) through :func:`seeded_batch_indices`.
:func:`step_loader` serves steps ``start .. end - 1`` through a ``torch.utils.data.DataLoader``
with ``workers`` processes (image decoding, augmentation, decord reads and the clips' optical
flow overlap the training step), prefetching, persistent workers and pinned memory on CUDA.
Because an item depends only on its step, workers and resume change nothing in the batches.

Bad samples: a dataset replaces a bad item by the next good one (deterministically) and reports
the file; with ``strict`` the first bad file ends the run. From a worker the error reaches the
training process as the same :class:`~tsal_dist.data.formats.AnnotationError` with its one-line
message. Each batch carries the number of items replaced in it, by reason (``skipped``), so
counts are exact whichever process made the batch.

What does not belong here: the datasets themselves (datasets.py), the loop's policy.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tsal_dist.data.clips import ClipDataset
from tsal_dist.data.datasets import LabeledImageDataset
from tsal_dist.data.formats import AnnotationError

log = logging.getLogger("tsal_dist.data.datasets")  # where the datasets report bad files

CLIP_SEED_OFFSET = 7919  # the clips' sample stream is seeded apart from the labeled one


class StepBatches(Dataset):
    """``batches[step]`` -> ``{"labeled": ..., "clips": ... or None, "skipped": {reason: n}}``.

    Args:
        labeled: labeled faces; ``batch`` of them per step.
        clips: unlabeled clips (or None); ``clips_per_batch`` per step.
        rank, world: this worker and the data-parallel world size.
        seed: the run seed (``train.seed``).
    """

    def __init__(self, labeled: LabeledImageDataset, clips: ClipDataset | None, *, batch: int,
                 clips_per_batch: int, rank: int, world: int, seed: int) -> None:
        self.labeled, self.clips = labeled, clips
        self.batch, self.clips_per_batch = batch, clips_per_batch
        self.rank, self.world, self.seed = rank, world, seed

    def __len__(self) -> int:  # steps are unbounded; the sampler says which ones
        return 2**62

    def __getitem__(self, step: int) -> dict[str, Any]:
        skipped: dict[str, int] = {}
        try:
            idx = seeded_batch_indices(step, self.rank, self.world, len(self.labeled), self.batch,
                                       self.seed)
            labeled = collate([_counted(self.labeled, i, s, skipped) for i, s in idx])
            clips = None
            if self.clips is not None:
                cidx = seeded_batch_indices(step, self.rank, self.world, len(self.clips),
                                            self.clips_per_batch, self.seed + CLIP_SEED_OFFSET)
                clips = collate([_counted(self.clips, i, s, skipped) for i, s in cidx])
        except AnnotationError as e:
            # returned, not raised: DataLoader would wrap it in a worker traceback
            return {"error": str(e)}
        reports = self.labeled.take_reports() + (self.clips.take_reports() if self.clips
                                                 is not None else [])
        return {"labeled": labeled, "clips": clips, "skipped": skipped, "reports": reports}


def _counted(ds: LabeledImageDataset | ClipDataset, index: int, seed: int,
             skipped: dict[str, int]) -> dict[str, torch.Tensor]:
    """``ds.get(index, seed)``, adding the items it had to replace to ``skipped``."""
    item, replaced = ds.get_with_replacements(index, seed)
    for reason in replaced:
        skipped[reason] = skipped.get(reason, 0) + 1
    return item


def resolve_loader_workers(requested: int, cpus: float) -> int:
    """``data.loader_workers``: as given when >= 0; -1 (auto) = the CPUs this training worker
    has beyond its own thread (``cpus - 1``, at least 0), capped at 8."""
    if requested >= 0:
        return requested
    return max(0, min(8, int(cpus) - 1))


def _init_worker(_: int) -> None:
    # each loader process decodes/warps on one thread: the processes are the parallelism
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def step_loader(batches: StepBatches, start: int, end: int, *, workers: int,
                device: torch.device, prefetch: int = 2) -> Iterator[dict[str, Any]]:
    """Batches of steps ``start .. end - 1`` in order (raises AnnotationError for a bad file
    under ``strict``). ``workers`` = 0 makes them on the calling thread."""
    steps = range(start, end)
    if workers == 0:
        loader: Any = (batches[s] for s in steps)
    else:
        loader = DataLoader(batches, batch_size=None, sampler=steps, num_workers=workers,
                            prefetch_factor=prefetch, persistent_workers=True,
                            pin_memory=device.type == "cuda", worker_init_fn=_init_worker,
                            multiprocessing_context=_context())
    shown: set[str] = set()
    for item in loader:
        if "error" in item:
            raise AnnotationError(item["error"])
        for msg in item.get("reports", []):
            # a worker's report, shown by this process once (the worker's own stderr may go
            # anywhere); on the training thread the dataset has logged it already
            if workers > 0 and msg not in shown:
                shown.add(msg)
                log.warning(msg)
        yield item


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors of a collated batch moved to ``device`` (asynchronously from pinned memory)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


def _context() -> str:
    # fork is the fast start, but forking a process that already runs Ray/gloo/OpenMP threads can
    # deadlock in a child; forkserver starts children from a clean process.
    return os.environ.get("TSAL_LOADER_START_METHOD", "forkserver")


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

"""Run a landmark model over eval lists and score it (NME / AUC / FR per list, per video).

What belongs here: batching eval items through a landmark model's ``predict`` (the one model
interface, tsal_dist.models: crop-normalised landmarks and scores, whatever the model), mapping
predictions back to IMAGE pixels (the frame the ground truth lives in) and aggregating. What does
not: the metric math (``metrics.py``), plots (``plots.py``), checkpoint loading
(``tsal_dist.loop.checkpoint``), the CLI (``__main__.py``), reading images / making crops
(``tsal_dist.data.datasets``).

Protocol (docs/method_notes.md section 3, docs/evaluation.md):

* Errors are measured in the original image frame, against the annotation as written.
* 68 points: the headline is inter-ocular NME (corners 36/45); inter-pupil is reported beside it.
  19 points (AFLW): face_size from the list. 98 points (WFLW): corners 60/72.
* A list file is one category. For 300VW-style lists (image = ``video.avi#frame``) the category's
  numbers aggregate over ALL of its frames (never an average of per-video NMEs, which lets one
  degenerate video dominate); the per-video breakdown is kept under ``"videos"``.
* Entries without an annotation (``None``) cannot be scored and are counted as skipped, not
  fed to the metrics (the SBR/TSAL ``compute_mse`` defect). Degenerate images (tiny or undefined
  normaliser) are NaN per image and counted in ``n_degenerate``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from tsal_dist.codec import norm_to_px
from tsal_dist.data.formats import ListEntry, read_list, split_video_ref
from tsal_dist.data.schemes import scheme_for
from tsal_dist.data.transforms import invert_affine
from tsal_dist.eval.metrics import error_changes, nme_by_norm, nmj, normalizer, summarize

Decode = Callable[[Tensor], "tuple[Tensor, Tensor]"]


def apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (N, K, 2) points through (N, 2, 3) affines: ``p' = A p + t``; float64."""
    M = np.asarray(M, np.float64)
    p = np.asarray(pts, np.float64)
    return np.einsum("nij,nkj->nki", M[..., :2], p) + M[:, None, :, 2]


@dataclass(frozen=True)
class Shard:
    """This rank's share of an evaluation run by every rank of a process group.

    Rank r predicts items r, r + world, r + 2 world, ... (interleaved, so video frames spread
    evenly); :meth:`gather` brings every rank's predictions to rank 0.
    """

    rank: int
    world: int

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ValueError(f"Shard: rank {self.rank} not in [0, {self.world})")

    def view(self, dataset: Any) -> Any:
        return _Strided(dataset, self.rank, self.world)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (rank order), None elsewhere; call on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out


class _Strided:
    """Items ``rank, rank + world, ...`` of a dataset, keeping their ``index``."""

    def __init__(self, dataset: Any, rank: int, world: int) -> None:
        self.dataset, self.rank, self.world = dataset, rank, world

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.world))

    def get(self, i: int, seed: int) -> Mapping[str, Any]:
        return _get_item(self.dataset, self.rank + i * self.world)


def merge_predictions(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One prediction table from several ranks' :func:`predict` outputs: rows sorted by dataset
    index, each index once (a bad item's replacement may have been predicted by two ranks)."""
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(cat["indices"], return_index=True)  # sorted unique indices
    return {k: v[first] for k, v in cat.items()}


def _get_item(dataset: Any, i: int) -> Mapping[str, Any]:
    # Datasets of CONTRACTS.md expose get(index, seed); eval items are deterministic (seed unused).
    if hasattr(dataset, "get"):
        return dataset.get(i, 0)
    return dataset[i]


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@torch.no_grad()
def predict(model: torch.nn.Module, dataset: Any, *, batch_size: int = 32, device: str = "cpu",
            decode: Decode | None = None) -> dict[str, np.ndarray]:
    """Predict landmarks for every item of an eval dataset, in IMAGE pixels.

    Each item is a dict with ``image`` uint8 (3, S, S), ``affine`` (2, 3) image->crop,
    ``orig_landmarks`` (K, 2) and ``orig_visible`` (K,) in the image frame, ``face_size`` ()
    (NaN or absent when unknown) and optionally ``index`` () (position in the dataset's entries).
    A dataset that answers a bad item with the next good one (non-strict ``EvalImageDataset``) is
    handled: an item whose ``index`` was already seen is dropped, so every entry counts once.

    Args:
        model: a landmark model (``tsal_dist.models.LandmarkModel``): ``num_points``,
            ``input_size`` and ``predict(uint8 (B, 3, S, S))`` -> ``Prediction`` (landmarks
            (B, K, 2) crop-normalised, scores (B, K), last-stage heatmaps or None). A detector
            decodes with its own codec, a regressor's scores are 1. It is moved to ``device`` and
            run in eval mode (its training flag is restored afterwards).
        dataset: ``len()`` plus ``get(i, seed)`` or ``[i]``.
        batch_size: items per forward pass.
        device: torch device string.
        decode: None (the model's own landmarks), or another decode of a heatmap model's
            last-stage maps, (B, K, h, w) -> (coords (B, K, 2) crop px, scores (B, K)): to
            compare decoders on one model (benchmarks/decode.py).

    Returns:
        ``preds`` (N, K, 2) image px, ``gts`` (N, K, 2), ``visible`` (N, K), ``face_size`` (N,)
        (NaN if unknown), ``scores`` (N, K), ``crop_preds`` (N, K, 2) crop px, ``indices`` (N,)
        int64. All numpy, float64 for coordinates.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    k = int(model.num_points)
    was_training = model.training
    model.to(device).eval()
    cols: dict[str, list[np.ndarray]] = {n: [] for n in ("preds", "gts", "visible", "face_size",
                                                         "scores", "crop_preds", "indices")}
    seen: set[int] = set()
    try:
        n = len(dataset)
        for start in range(0, n, batch_size):
            items, idxs = [], []
            for i in range(start, min(n, start + batch_size)):
                it = _get_item(dataset, i)
                # a non-strict dataset answers a bad item with the next good one: score it once
                idx = int(_np(it["index"], np.int64)) if "index" in it else i
                if idx not in seen:
                    seen.add(idx)
                    items.append(it)
                    idxs.append(idx)
            if not items:
                continue
            images = torch.stack([torch.as_tensor(it["image"]) for it in items]).to(device)
            pred = model.predict(images)
            if decode is None:
                coords, scores = norm_to_px(pred.landmarks, int(model.input_size)), pred.scores
            elif pred.heatmaps is None:
                raise ValueError("predict(decode=...) needs a model with heatmaps")
            else:
                coords, scores = decode(pred.heatmaps[:, :k])
            crop = _np(coords)
            affine = np.stack([_np(it["affine"]) for it in items])
            cols["crop_preds"].append(crop)
            cols["preds"].append(apply_affine(invert_affine(affine), crop))
            cols["scores"].append(_np(scores))
            cols["gts"].append(np.stack([_np(it["orig_landmarks"]) for it in items]))
            cols["visible"].append(np.stack([_np(it["orig_visible"]) for it in items]))
            cols["face_size"].append(np.array([
                float(_np(it["face_size"])) if it.get("face_size") is not None else np.nan
                for it in items]))
            cols["indices"].append(np.array(idxs, np.int64))
    finally:
        model.train(was_training)
    if not cols["preds"]:
        return {"preds": np.zeros((0, k, 2)), "gts": np.zeros((0, k, 2)),
                "visible": np.zeros((0, k)), "face_size": np.zeros(0), "scores": np.zeros((0, k)),
                "crop_preds": np.zeros((0, k, 2)), "indices": np.zeros(0, np.int64)}
    return {name: np.concatenate(v) for name, v in cols.items()}


# ----------------------------------------------------------------------------- scoring


def score_predictions(preds: np.ndarray, gts: np.ndarray, visible: np.ndarray,
                      face_size: np.ndarray,
                      num_points: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Per-image NMEs under every normaliser of the scheme, and their summary.

    Returns:
        (summary dict as :func:`tsal_dist.eval.metrics.summarize`, {norm: (N,) NMEs}).
    """
    scheme = scheme_for(num_points)
    nmes = nme_by_norm(preds, gts, scheme, visible=visible, face_size=face_size)
    primary = scheme.primary_norm
    return summarize(nmes[primary], nmes.get("inter_pupil"), primary_norm=primary), nmes


@dataclass
class EvalResult:
    """Everything :func:`evaluate_list` computed for one list file.

    ``summary`` is JSON-safe (fractions, not %); the arrays are aligned with ``entries``.
    """

    name: str
    path: str
    summary: dict[str, Any]
    nmes: dict[str, np.ndarray]
    preds: np.ndarray  # (N, K, 2) image px
    gts: np.ndarray  # (N, K, 2) image px
    visible: np.ndarray  # (N, K)
    entries: list[ListEntry] = field(default_factory=list)

    @property
    def primary_nmes(self) -> np.ndarray:
        """(N,) NMEs under the headline normaliser (the first of ``nmes``)."""
        return next(iter(self.nmes.values()))


def video_key(entry: ListEntry, list_dir: str | Path) -> str | None:
    """Video a list entry's frame comes from, relative to the list's folder; None for images."""
    ref = split_video_ref(entry.image)
    if ref is None:
        return None
    return os.path.relpath(ref[0], list_dir)


def per_video_summaries(entries: Sequence[ListEntry], nmes: Mapping[str, np.ndarray],
                        list_dir: str | Path, primary_norm: str) -> dict[str, dict[str, Any]]:
    """Summaries of each video's frames (for the breakdown only; categories aggregate frames)."""
    keys = np.array([video_key(e, list_dir) or "" for e in entries], dtype=object)
    out = {}
    for key in dict.fromkeys(k for k in keys if k):
        sel = keys == key
        ip = nmes.get("inter_pupil")
        out[key] = summarize(nmes[primary_norm][sel], None if ip is None else ip[sel],
                             primary_norm=primary_norm)
    return out


def video_jitter(entries: Sequence[ListEntry], out: Mapping[str, np.ndarray],
                 list_dir: str | Path, num_points: int
                 ) -> tuple[float | None, dict[str, float | None]]:
    """NMJ of the list's videos (pooled) and of each video: the RMS of the frame-to-frame change
    of the error normalised by the scheme's primary distance, frames in list order (a skipped
    bad frame joins its neighbours). Fractions; None without a pair of frames."""
    scheme = scheme_for(num_points)
    kwargs: dict[str, Any] = {}
    if scheme.eye_corners is not None:
        kwargs["eye_corners"] = scheme.eye_corners
    if scheme.pupils is not None:
        kwargs["pupils"] = scheme.pupils
    d = normalizer(out["gts"], scheme.primary_norm, out["visible"], out["face_size"], **kwargs)
    order = np.argsort(np.asarray(out["indices"]), kind="stable")
    keys = [video_key(entries[i], list_dir) for i in order]
    changes: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(k for k in keys if k):
        idx = order[[k == key for k in keys]]
        changes[key] = error_changes(out["preds"][idx], out["gts"][idx], d[idx],
                                     out["visible"][idx])
    def safe(x: float) -> float | None:  # JSON has no NaN
        return x if np.isfinite(x) else None

    return safe(nmj(list(changes.values()))), {k: safe(nmj([c])) for k, c in changes.items()}


def evaluate_list(model: torch.nn.Module, list_path: str | Path, *, input_size: int,
                  pre_crop_expand: float, num_points: int, sigma_px: float | None = None,
                  window: int | None = None, locate: str | None = None,
                  blur_cells: float | None = None, batch_size: int = 32,
                  device: str | torch.device = "cpu", strict: bool = False,
                  name: str | None = None, shard: Shard | None = None) -> EvalResult | None:
    """Evaluate ``model`` on one SBR list file (= one category).

    Args:
        model: a landmark model, detector or regressor (see :func:`predict`; ``num_points`` /
            ``input_size`` must match).
        list_path: SBR list file (``image annotation x1 y1 x2 y2 [face_size]``).
        input_size: crop side S in px (``model.input_size``).
        pre_crop_expand: box expansion on each side, fraction of the box size.
        num_points: K; picks the normalisers (68: inter-ocular + inter-pupil, 19: face_size, ...).
        sigma_px, window, locate, blur_cells: optional: the heatmap codec settings the caller
            expects (``model.heatmap_sigma_px``, ``decode_window``, ``decode``,
            ``decode_blur_cells``). A detector decodes with its own codec; these only check it
            (a mismatch raises). Unused for a model without a codec (a regressor).
        batch_size: crops per forward pass.
        device: torch device.
        strict: True: the first bad image/annotation raises; False: skipped and counted.
        name: the result's name (default: the list's file name; see :func:`list_names`).
        shard: every rank of the process group calls this, predicts its share on its own
            device, and rank 0 gets the result of the whole list (the same numbers as one
            process); the other ranks get None.

    Returns:
        An :class:`EvalResult` whose ``summary`` has ``count``, ``nme`` / ``nme_<primary>``,
        ``nme_inter_pupil``, ``auc@0.07|0.08|0.1``, ``fr@...``, ``n_degenerate``, the skip
        counts, and for video lists ``videos`` = {video path: summary over its frames}. NMEs are
        fractions.
    """
    # Imported here: eval's metrics/plots stay free of the data package
    # (tests/test_architecture.py).
    from tsal_dist.data.datasets import EvalImageDataset

    if int(model.input_size) != input_size or int(model.num_points) != num_points:
        raise ValueError(f"model is {model.num_points} points at {model.input_size} px but the "
                         f"evaluation asks for {num_points} points at {input_size} px")
    _check_decode(model, sigma_px=sigma_px, window=window, locate=locate, blur_cells=blur_cells)
    p = Path(list_path)
    entries = read_list(p)
    labeled = [e for e in entries if e.annotation is not None]
    dataset = EvalImageDataset(labeled, num_points=num_points, input_size=input_size,
                               pre_crop_expand=pre_crop_expand, strict=strict)
    out = predict(model, dataset if shard is None else shard.view(dataset),
                  batch_size=batch_size, device=str(device))
    bad = dataset.bad_items()
    if shard is not None:
        parts = shard.gather((out, bad))
        if parts is None:
            return None
        out = merge_predictions([o for o, _ in parts])
        bad = {i: reason for _, b in parts for i, reason in b.items()}  # a file found by 2 ranks
    problems: dict[str, int] = {}
    for reason in bad.values():
        problems[reason] = problems.get(reason, 0) + 1
    # items carry their position in `labeled`, so skipped bad files do not shift anything
    used = [labeled[int(i)] for i in out["indices"]]
    summary, nmes = score_predictions(out["preds"], out["gts"], out["visible"], out["face_size"],
                                      num_points)
    primary = scheme_for(num_points).primary_norm
    summary["list"] = str(p)
    summary["n_entries"] = len(entries)
    summary["n_unlabeled_skipped"] = len(entries) - len(labeled)
    summary["n_bad_skipped"] = len(labeled) - len(used)
    summary["problems"] = problems
    if any(e.is_video_frame for e in used):
        summary["n_videos"] = len({video_key(e, p.parent) for e in used} - {None})
        summary["videos"] = per_video_summaries(used, nmes, p.parent, primary)
        summary["nmj"], per_video = video_jitter(used, out, p.parent, num_points)
        for key, value in per_video.items():
            summary["videos"][key]["nmj"] = value
    return EvalResult(name=name or p.name, path=str(p), summary=summary, nmes=nmes,
                      preds=out["preds"], gts=out["gts"], visible=out["visible"], entries=used)


def _check_decode(model: torch.nn.Module, **expected: Any) -> None:
    """Raise when a heatmap model's codec is not the one the caller expects (None = no
    expectation); a model without a codec (a regressor) has nothing to check."""
    codec = getattr(model, "codec", None)
    if codec is None:
        return
    own = {"sigma_px": codec.sigma_px, "window": codec.window, "locate": codec.locate_method,
           "blur_cells": codec.blur_cells}
    wrong = [f"{k}={v!r} (the model's codec has {own[k]!r})" for k, v in expected.items()
             if v is not None and v != own[k]]
    if wrong:
        raise ValueError(f"the model decodes with its own codec, which differs from the "
                         f"evaluation's: {', '.join(wrong)}")


def list_names(list_paths: Sequence[str | Path]) -> list[str]:
    """Short unique names for list files: the file name, or the full path where names clash."""
    base = [Path(p).name for p in list_paths]
    return [b if base.count(b) == 1 else str(p) for b, p in zip(base, list_paths)]

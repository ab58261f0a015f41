"""One TSAL training step for both models (CPU-testable, engine-agnostic).

Student (radical): supervised heatmap + centroid focal + offset terms on labeled faces, the per-clip
structure invariant constraint, and on unlabeled clips the MULTI-source pseudo-target (heatmap
locations fused with the nearest centroid+offset candidate shape, both predicted on the flow-warped
frames). Teacher (calm): the same supervised terms and SINGLE-source heatmap consistency against its
own predictions on the warped frames. Both step their own optimizers. The recursive averaging of the
student into the teacher happens at sync points in loop.py, not here.

Each model runs two forwards per step, one backward: the labeled faces alone, then the clip frames
cat(frames t+1, warped(t -> t+1)) (the warped outputs are detached targets). Keeping them apart
matters: a clip's frames are near-duplicates, and mixing them into the labeled faces' BatchNorm
batch skews its statistics — measured on synthetic data, that alone cost ~1 NME point on test
videos (benchmarks/results/semi_supervised.md), more than the consistency terms gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tsal_dist.codec import CentroidCodec, HeatmapCodec
from tsal_dist.data.schemes import head_turn, scheme_for
from tsal_dist.losses.consistency import (grid_to_cells, points_through_inverse_grid,
                                          student_consistency, student_pseudo_target,
                                          teacher_consistency, warp_heatmaps)
from tsal_dist.losses.focal import centroid_focal_loss
from tsal_dist.losses.heatmap import heatmap_loss
from tsal_dist.losses.offset import offset_loss
from tsal_dist.losses.structure import gather_at, structure_loss
from tsal_dist.loop.engines import Engine


@dataclass(frozen=True)
class LossWeights:
    """Weights applied in exactly one place (``total_loss``); terms are logged unweighted."""

    heatmap: float = 1.0
    centroid: float = 1.0
    offset: float = 0.1
    structure: float = 0.01
    unsup: float = 1.0
    student_unsup: float = 1.0  # extra factor on the student's consistency (role="student")


def consistency_weight(w: LossWeights, ramp: float, role: str = "teacher") -> float:
    """The weight of ``role``'s consistency term this step: ``ramp * unsup`` (times
    ``student_unsup`` for the student)."""
    return ramp * (w.unsup * (w.student_unsup if role == "student" else 1.0))


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights, ramp: float,
               role: str = "teacher") -> torch.Tensor:
    """sum(weight * term); the consistency term's weight is :func:`consistency_weight`."""
    return (w.heatmap * terms["heatmap"] + w.centroid * terms["centroid"]
            + w.offset * terms["offset"] + w.structure * terms["structure"]
            + consistency_weight(w, ramp, role) * terms["consistency"])


def _split(out: dict, sizes: list[int]) -> list[dict]:
    parts: list[dict] = [dict() for _ in sizes]
    for key, val in out.items():
        if isinstance(val, (list, tuple)):
            chunks = [torch.split(v, sizes) for v in val]
            for i in range(len(sizes)):
                parts[i][key] = [c[i] for c in chunks]
        else:
            for i, c in enumerate(torch.split(val, sizes)):
                parts[i][key] = c
    return parts


def model_terms(out_l: dict, out_n: dict | None, out_w: dict | None, *, role: str,
                targets: dict, clip_ids: torch.Tensor | None, hm_codec: HeatmapCodec,
                ctr_codec: CentroidCodec, fusion_mu: float, structure_descriptor: str,
                grid: torch.Tensor | None = None,
                student_term: str = "multi_source",
                pseudo_threshold: float = 0.4,
                structure_on: str = "clips",
                pseudo_max_turn: float = 0.0) -> dict[str, torch.Tensor]:
    """Unweighted loss terms of one model.

    Args:
        out_l: model outputs on the labeled faces (B).
        out_n: outputs on clip frames t+1 (N = clips * (T-1)), or None without clips.
        out_w: the source of the consistency target (N), or None; used only as detached targets:
            outputs on warp(frame t -> t+1) ("image" space, ``grid`` None), or outputs on frame t
            itself ("output" space), carried into frame t+1 through ``grid``.
        role: "teacher" (single-source consistency) or "student" (multi-source).
        targets: heatmap/centroid targets of the labeled faces (see ``make_targets``).
        grid: (N, S, S, 2) tracking grid (crop px of frame t for each pixel of frame t+1) for
            output-space consistency, or None.
        student_term: "multi_source" (TSAL), "heatmap" (the student uses the single-source
            heatmap term too, on ``out_w``) or "pseudo_label" (landmarks of ``out_w`` whose peak
            is >= ``pseudo_threshold``, re-rendered as targets; logged as ``pseudo_kept``; with
            ``pseudo_max_turn`` > 0 only frames whose pseudo-label's |head turn| is at most that,
            logged as ``pseudo_frames_kept``).
        structure_on: "clips" (per clip, at each clip frame's predicted centroid cell) or
            "labeled" (TSAL's code: the labeled faces at their ground-truth centroid cell, offset
            mask applied, every pair of the batch compared).
    """
    k = hm_codec.num_points
    terms = {
        "heatmap": heatmap_loss(out_l["heatmaps"], targets["heatmaps"], targets["mask"]),
        "centroid": centroid_focal_loss(out_l["center"], targets["center"], targets["valid"]),
        "offset": offset_loss(out_l["offsets"], targets["center_index"], targets["offsets"],
                              targets["offset_mask"]),
    }
    zero = terms["heatmap"].new_zeros(())
    if structure_on == "labeled":
        at_gt = gather_at(out_l["offsets"], targets["center_index"])
        one_group = torch.zeros(at_gt.shape[0], dtype=torch.long, device=at_gt.device)
        terms["structure"] = structure_loss(at_gt, one_group, targets["offset_mask"],
                                            descriptor=structure_descriptor)
    if out_n is None or out_w is None:
        terms.setdefault("structure", zero)
        terms["consistency"] = zero
        return terms
    if structure_on == "clips":
        # Structure invariance per clip, at each frame's predicted centroid cell (no GT on clips).
        centre_idx = out_n["center"].detach().flatten(1).argmax(1)
        terms["structure"] = structure_loss(gather_at(out_n["offsets"], centre_idx), clip_ids,
                                            None, descriptor=structure_descriptor)
    cell_grid = None if grid is None else grid_to_cells(grid, hm_codec.stride)
    if role == "student" and student_term == "pseudo_label":
        # Hard pseudo-labels: the source's confident landmarks (peak >= threshold), decoded,
        # carried into frame t+1, re-rendered as sharp Gaussians; the background channel is
        # masked out (it would push the unconfident landmarks towards background).
        with torch.no_grad():
            xy, score = hm_codec.locate(out_w["heatmaps"][-1][:, :k].detach())
            if grid is not None:
                xy = points_through_inverse_grid(xy, grid)
            size = hm_codec.input_size
            inside = ((xy >= 0) & (xy <= size - 1)).all(dim=-1)
            keep = (score >= pseudo_threshold) & inside
            if pseudo_max_turn > 0:
                frontal = head_turn(xy, scheme_for(k)).abs() <= pseudo_max_turn
                keep &= frontal[:, None]
            vis = keep.to(xy.dtype)
            target, mask = hm_codec.encode(xy, vis)
            mask = torch.cat([mask[:, :k], torch.zeros_like(mask[:, k:])], dim=1)
        terms["consistency"] = heatmap_loss(out_n["heatmaps"], target, mask)
        terms["pseudo_kept"] = vis.mean()
        if pseudo_max_turn > 0:
            terms["pseudo_frames_kept"] = frontal.to(xy.dtype).mean()
    elif role == "teacher" or student_term == "heatmap":
        # Single source: heatmaps on frame t+1 vs own heatmaps on frame t, registered into t+1
        # (image space: computed on the warped image; output space: the maps resampled).
        preds, tgt = out_n["heatmaps"], out_w["heatmaps"][-1].detach()
        if cell_grid is not None:
            tgt, valid = warp_heatmaps(tgt, cell_grid)
            preds, tgt = [p * valid for p in preds], tgt * valid
        terms["consistency"] = teacher_consistency(preds, tgt)
    else:
        with torch.no_grad():
            maps_w = out_w["heatmaps"][-1][:, :k].detach()
            if cell_grid is not None:
                maps_w, _ = warp_heatmaps(maps_w, cell_grid)
            hm_xy, _ = hm_codec.decode(maps_w)
            cands, _ = ctr_codec.decode(out_w["center"].detach(), out_w["offsets"].detach())
            if grid is not None:
                n, kk = cands.shape[:2]
                cands = points_through_inverse_grid(cands.reshape(n, kk * k, 2),
                                                    grid).reshape(n, kk, k, 2)
            target = student_pseudo_target(hm_xy, cands, fusion_mu)
        pred_xy, _ = hm_codec.decode(out_n["heatmaps"][-1][:, :k])
        terms["consistency"] = student_consistency(pred_xy, target, hm_codec.stride)
    return terms


def make_targets(batch: dict, hm_codec: HeatmapCodec, ctr_codec: CentroidCodec) -> dict:
    """Heatmap and centroid/offset targets of a labeled batch (computed on the batch's device)."""
    lm, vis, lab = batch["landmarks"], batch["visible"], batch["labeled"]
    vis = vis * lab.to(vis.dtype)[:, None]
    heatmaps, mask = hm_codec.encode(lm, vis)
    ctr = ctr_codec.encode(lm, vis, lab)
    return {"heatmaps": heatmaps, "mask": mask, **ctr}


def tsal_step(*, student: Engine, teacher: Engine, labeled: dict, clips: dict | None,
              hm_codec: HeatmapCodec, ctr_codec: CentroidCodec, weights: LossWeights,
              ramp: float, lr: float, fusion_mu: float, structure_descriptor: str = "pairs",
              pseudo_source: str = "self", consistency_space: str = "image",
              student_term: str = "multi_source",
              pseudo_threshold: float = 0.4, structure_on: str = "clips",
              optimize_teacher: bool = True, pseudo_max_turn: float = 0.0) -> dict[str, float]:
    """Run one optimizer step of student and teacher; return logged scalars.

    Args:
        labeled: collated labeled items (CONTRACTS.md), tensors on the model device.
        clips: collated clip items or None (supervised-only step).
        ramp: the consistency ramp value for this step (loop.schedules.ramp_weight).
        pseudo_source: "self" (TSAL code: the student's multi-source target comes from its own
            outputs on the warped frames) or "teacher" (from the teacher's outputs on the same
            warped frames, computed in the teacher's pass: the mean-teacher reading).
        consistency_space: "image" (TSAL: targets from the model on the registered image
            ``clips["warped"]``) or "output" (targets from the model on frame t itself, carried
            into frame t+1 through ``clips["grid"]``; see losses.consistency).
        student_term: the student's unsupervised term, "multi_source" (TSAL), "heatmap" or
            "pseudo_label" (``loss.student_consistency``); ``pseudo_threshold`` and
            ``pseudo_max_turn`` for the last.
        structure_on: "clips" or "labeled" (``loss.structure_on``, see :func:`model_terms`).
        optimize_teacher: False = the teacher takes no step (``teacher.optimize``): it only runs
            on the warped frames, without gradients, for the targets it gives the student.
    """
    if structure_on not in ("clips", "labeled"):
        raise ValueError(f"structure_on must be 'clips' or 'labeled', got {structure_on!r}")
    if student_term not in ("multi_source", "heatmap", "pseudo_label"):
        raise ValueError(f"student_term must be 'multi_source', 'heatmap' or 'pseudo_label', "
                         f"got {student_term!r}")
    if consistency_space not in ("image", "output"):
        raise ValueError(f"consistency_space must be 'image' or 'output', "
                         f"got {consistency_space!r}")
    images = labeled["image"]
    targets = make_targets(labeled, hm_codec, ctr_codec)
    clip_ids = grid = None
    if clips is not None:
        frames = clips["frames"]
        c, t = frames.shape[:2]
        nxt = frames[:, 1:].reshape(c * (t - 1), *frames.shape[2:])
        if consistency_space == "output":
            # the target's source: frame t as the model sees it, carried through the grid
            wrp = frames[:, :-1].reshape(c * (t - 1), *frames.shape[2:])
            g = clips["grid"]
            grid = g.reshape(c * (t - 1), *g.shape[2:]).float()
        else:
            warped = clips["warped"]
            wrp = warped.reshape(c * (t - 1), *warped.shape[2:])
        clip_ids = torch.arange(c, device=images.device).repeat_interleave(t - 1)
        clip_inputs = torch.cat([nxt, wrp])
        clip_sizes = [nxt.shape[0], wrp.shape[0]]

    if pseudo_source not in ("self", "teacher"):
        raise ValueError(f"pseudo_source must be 'self' or 'teacher', got {pseudo_source!r}")
    logs: dict[str, float] = {}
    teacher_warped: dict | None = None
    for role, engine in (("teacher", teacher), ("student", student)):
        if role == "teacher" and not optimize_teacher:
            if clips is not None and pseudo_source == "teacher":
                with torch.no_grad():
                    out = engine.module(wrp)
                teacher_warped = {k: ([v.detach() for v in x] if isinstance(x, list)
                                      else x.detach()) for k, x in out.items()}
            continue
        parts = [engine.module(images)]
        if clips is not None:
            parts += _split(engine.module(clip_inputs), clip_sizes)
        warped_out = parts[2] if clips is not None else None
        if role == "teacher" and warped_out is not None:
            teacher_warped = {k: ([v.detach() for v in x] if isinstance(x, list) else x.detach())
                              for k, x in warped_out.items()}
        if role == "student" and pseudo_source == "teacher" and warped_out is not None:
            warped_out = teacher_warped
        terms = model_terms(parts[0], parts[1] if clips is not None else None,
                            warped_out, role=role, targets=targets,
                            clip_ids=clip_ids, hm_codec=hm_codec, ctr_codec=ctr_codec,
                            fusion_mu=fusion_mu, structure_descriptor=structure_descriptor,
                            grid=grid, student_term=student_term,
                            pseudo_threshold=pseudo_threshold, structure_on=structure_on,
                            pseudo_max_turn=pseudo_max_turn)
        loss = total_loss(terms, weights, ramp, role)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{role} loss is not finite: "
                                     f"{ {k: float(v) for k, v in terms.items()} }")
        engine.backward(loss)
        logs[f"{role}/grad_norm"] = engine.step(lr)
        logs[f"{role}/loss"] = float(loss.detach())
        for name, v in terms.items():
            logs[f"{role}/{name}"] = float(v.detach())
    return logs

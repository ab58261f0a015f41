"""Evaluation inside a run: the periodic validation NME, and the final scoring of every network
of the run on its eval lists (training: teacher and student; distillation: both teachers and the
student), written to ``<run>/eval/summary.json``.

What does not belong here: the metric math and the list runner (``tsal_dist.eval``), exporting
the finished network (the entry points call ``tsal_dist.export``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from tsal_dist.atomic import PLAIN, atomic_write_json
from tsal_dist.codec import HeatmapCodec
from tsal_dist.config import ExperimentConfig
from tsal_dist.data.datasets import EvalImageDataset
from tsal_dist.data.lists import DataLists
from tsal_dist.loop.context import WorkerContext
from tsal_dist.loop.engines import Engine
from tsal_dist.models import build_model

__all__ = ["eval_module", "validation_nme", "list_eval_args", "evaluate_lists",
           "write_eval_summary", "finish_run"]


def eval_module(engine: Engine, cfg: ExperimentConfig,
                device: torch.device | None = None) -> torch.nn.Module:
    """A plain module with the engine's full weights for rank-0-only evaluation. Under ZeRO-3 the
    parameters are partitioned (a forward on one rank would wait for the others), and under
    DeepSpeed fp16/bf16 the module holds rounded weights, so this builds an fp32 copy from the
    full state: call it on EVERY rank. Otherwise the unwrapped module."""
    if engine.collective_state or engine.low_precision_weights:
        sd = engine.full_state_dict()
        model = build_model(cfg.model, cfg.data.num_points)
        model.load_state_dict(sd)
        return model.to(device or torch.device("cpu"))
    return engine.unwrapped()


@torch.no_grad()
def validation_nme(model: torch.nn.Module, codec: HeatmapCodec, dataset: EvalImageDataset,
                   device: torch.device, ctx: WorkerContext | None = None,
                   batch_size: int = 32) -> float:
    """Mean inter-ocular NME (fraction) of ``model`` on ``dataset``, in image pixels.

    Every rank of ``ctx`` calls it and predicts its share on ``device``; every rank returns the
    same number (rank 0 scores, then broadcasts).
    """
    from tsal_dist.eval.metrics import nme
    from tsal_dist.eval.run import Shard, merge_predictions, predict

    ctx = ctx or WorkerContext()
    shard = Shard(ctx.rank, ctx.world_size)
    out = predict(model, shard.view(dataset), batch_size=batch_size, device=str(device),
                  decode=codec.locate)
    parts = shard.gather(out)
    value = math.nan
    if parts is not None:
        m = merge_predictions(parts)
        value = float(np.nanmean(nme(m["preds"], m["gts"], norm="inter_ocular",
                                     visible=m["visible"])))
    if ctx.world_size > 1 and dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def list_eval_args(cfg: ExperimentConfig, *, input_size: int | None = None) -> dict[str, Any]:
    """``tsal_dist.eval.run.evaluate_list``'s crop and decode arguments from a config: the one
    mapping, used by the run's final scoring and by ``python -m tsal_dist.eval``.

    Args:
        input_size: the network's crop side when it is not ``model.input_size`` (a distilled
            student's, from its checkpoint).
    """
    m, d = cfg.model, cfg.data
    return {"input_size": input_size or m.input_size, "pre_crop_expand": d.pre_crop_expand,
            "num_points": d.num_points, "sigma_px": m.heatmap_sigma_px,
            "window": m.decode_window, "locate": m.decode, "blur_cells": m.decode_blur_cells,
            "strict": d.strict}


def evaluate_lists(models: Mapping[str, torch.nn.Module], cfg: ExperimentConfig,
                   eval_lists: Sequence[Path], *, ctx: WorkerContext | None = None
                   ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray]] | None:
    """Score every model (heatmap detector or coordinate regressor) on every eval list.

    Every rank of ``ctx`` calls it: with more than one rank each list is sharded over the ranks
    (each predicts its share on its own device) and rank 0 gathers; one process alone scores
    everything on ``ctx.device``.

    Returns:
        On rank 0: ({model name: {list name: summary}}, {"<model> <list>": primary NMEs (N,)});
        None on the other ranks.
    """
    from tsal_dist.eval.run import Shard, evaluate_list, list_names

    ctx = ctx or WorkerContext()
    results: dict[str, dict[str, Any]] = {}
    curves: dict[str, np.ndarray] = {}
    names = list_names([str(p) for p in eval_lists])
    shard = Shard(ctx.rank, ctx.world_size) if ctx.world_size > 1 else None
    for which, model in models.items():
        model.eval()
        results[which] = {}
        for name, path in zip(names, eval_lists):
            r = evaluate_list(model, path, **list_eval_args(cfg), batch_size=32,
                              device=ctx.device, name=name, shard=shard)
            if r is not None:
                results[which][name] = r.summary
                curves[f"{which} {name}"] = r.primary_nmes
    return (results, curves) if ctx.is_main else None


def write_eval_summary(run_dir: Path, results: Mapping[str, Any]) -> None:
    """``<run>/eval/summary.json``: {model: {list: summary}} (NMEs as fractions)."""
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "eval" / "summary.json", results, default=float,
                      final_newline=False, mode=PLAIN)


def finish_run(cfg: ExperimentConfig, *, run_dir: Path, teacher: torch.nn.Module,
               student: torch.nn.Module, hm_codec: HeatmapCodec, lists: DataLists,
               ctx: WorkerContext | None = None) -> dict[str, Any]:
    """Evaluate teacher and student on the eval lists, plot CED + training curves.

    Every rank calls it: the evaluation is sharded over the ranks (each predicts its share on
    its own device); rank 0 gathers and writes, and returns the results ({} elsewhere).
    ``hm_codec`` is unused: the decode is the config's (``model.decode``).
    """
    ctx = ctx or WorkerContext()
    out: dict[str, Any] = {}
    if lists.eval:
        from tsal_dist.eval.plots import plot_ced

        scored = evaluate_lists({"teacher": teacher, "student": student}, cfg, lists.eval,
                                ctx=ctx)
        if scored is None:
            return out
        results, curves = scored
        write_eval_summary(run_dir, results)
        plot_ced(curves, run_dir / "eval" / "ced.png", title="CED, teacher vs student")
        out["eval"] = results
    if not ctx.is_main:
        return out
    try:
        from tsal_dist.eval.plots import plot_training_curves

        plot_training_curves(run_dir / "metrics.jsonl", run_dir / "training_curves.png",
                             keys=["student/loss", "teacher/loss", "student/consistency",
                                   "teacher/consistency"])
    except Exception as e:  # noqa: BLE001 - a plot must never lose a finished run
        print(f"warning: training curve plot failed: {e}")
    return out

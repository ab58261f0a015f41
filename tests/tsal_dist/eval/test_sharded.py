"""Evaluation sharded over the ranks of a process group (2 gloo processes) gives the numbers of one
process: the final evaluation's list summaries and the periodic validation NME."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from tsal_dist.eval.run import Shard, merge_predictions

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup():
    from tsal_dist.codec import HeatmapCodec
    from tsal_dist.config import load_config
    from tsal_dist.data.datasets import EvalImageDataset
    from tsal_dist.data.formats import read_list
    from tsal_dist.data.lists import resolve_data
    from tsal_dist.models import build_model

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_points).eval()
    lists = resolve_data(cfg)
    codec = HeatmapCodec.for_model(cfg.model, stride=model.stride, num_points=68)
    val = EvalImageDataset(read_list(lists.labeled[0])[:11], num_points=68,
                           input_size=cfg.model.input_size,
                           pre_crop_expand=cfg.data.pre_crop_expand)
    return cfg, model, lists, codec, val


def _evaluate(cfg, model, lists, shard):
    from tsal_dist.eval.run import evaluate_list

    out = {}
    for p in lists.eval:
        r = evaluate_list(model, p, input_size=cfg.model.input_size,
                          pre_crop_expand=cfg.data.pre_crop_expand, num_points=68,
                          sigma_px=cfg.model.heatmap_sigma_px, window=cfg.model.decode_window,
                          locate=cfg.model.decode, blur_cells=cfg.model.decode_blur_cells,
                          batch_size=1, shard=shard)  # per-item forwards: bitwise comparable
        if r is not None:
            out[p.name] = {"summary": r.summary, "preds": r.preds.tolist()}
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from tsal_dist.loop.context import WorkerContext
    from tsal_dist.loop.evaluation import validation_nme

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cfg, model, lists, codec, val = _setup()
    res = _evaluate(cfg, model, lists, Shard(rank, world))
    v = validation_nme(model, codec, val, torch.device("cpu"),
                       WorkerContext(rank=rank, world_size=world), batch_size=1)
    Path(out_dir, f"r{rank}.json").write_text(json.dumps({"eval": res, "val": v}, default=float))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_numbers_of_one_process(tmp_path):
    from tsal_dist.loop.evaluation import validation_nme

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                       start_method="spawn", join=True)
    r0 = json.loads((tmp_path / "r0.json").read_text())
    r1 = json.loads((tmp_path / "r1.json").read_text())
    cfg, model, lists, codec, val = _setup()
    one = json.loads(json.dumps(_evaluate(cfg, model, lists, None), default=float))
    assert r1["eval"] == {} and set(r0["eval"]) == set(one) and len(one) == 2
    for name in one:
        assert np.allclose(r0["eval"][name]["preds"], one[name]["preds"], atol=1e-5)
        a, b = r0["eval"][name]["summary"], one[name]["summary"]
        assert a["count"] == b["count"] > 0
        assert a["nme_inter_ocular"] == pytest.approx(b["nme_inter_ocular"], abs=1e-6)
        assert a.get("videos", {}).keys() == b.get("videos", {}).keys()
    v1 = validation_nme(model, codec, val, torch.device("cpu"), batch_size=1)
    assert r0["val"] == pytest.approx(v1, abs=1e-6) and r1["val"] == r0["val"]  # every rank


def test_merge_keeps_each_index_once_in_order():
    a = {"indices": np.array([0, 2, 3]), "preds": np.array([0.0, 2.0, 3.0])}
    b = {"indices": np.array([1, 3]), "preds": np.array([1.0, 3.5])}
    m = merge_predictions([a, b])
    assert m["indices"].tolist() == [0, 1, 2, 3] and m["preds"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        Shard(2, 2)

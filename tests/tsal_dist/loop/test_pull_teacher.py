"""The teacher sync's pull: rank 0 asks the server once and broadcasts (2 gloo processes); a
failure on rank 0 stops every rank with its message instead of a hang."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEMPLATE = {"w": ((2, 3), torch.bfloat16), "bn.num_batches_tracked": ((), torch.int64),
            "b": ((4,), torch.float32)}


class CountingClient:
    def __init__(self, fail: bool) -> None:
        self.fail, self.calls = fail, 0

    def get(self, version: int) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("teacher version 7 not available after 300 s (latest 3)")
        return {"w": np.arange(6, dtype=np.float32).reshape(2, 3) / 7,
                "bn.num_batches_tracked": np.array(5, np.int64),
                "b": np.full(4, version, np.float32)}


def _worker(rank: int, world: int, port: int, out_dir: str, fail: bool) -> None:
    import torch.distributed as dist

    from tsal_dist.loop.context import WorkerContext
    from tsal_dist.loop.loop import pull_teacher

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    client = CountingClient(fail)
    out: dict = {}
    try:
        st = pull_teacher(client, 7, WorkerContext(rank=rank, world_size=world), template=TEMPLATE)
        out = {k: v.tolist() for k, v in st.items()}
        out["dtypes"] = {k: str(v.dtype) for k, v in st.items()}
    except RuntimeError as e:
        out = {"error": str(e)}
    out["calls"] = client.calls
    Path(out_dir, f"r{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.mark.parametrize("fail", [False, True])
def test_rank0_pulls_once_and_every_rank_gets_it(tmp_path, fail):
    mp.start_processes(_worker, args=(3, _free_port(), str(tmp_path), fail), nprocs=3,
                       start_method="spawn", join=True)
    res = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(3)]
    assert [r["calls"] for r in res] == [1, 0, 0]  # one pull, whatever the world size
    if fail:
        assert "not available after 300 s" in res[0]["error"]
        for r in res[1:]:
            assert r["error"].startswith("rank 0 could not get teacher version 7: RuntimeError")
        return
    want = CountingClient(False).get(7)
    for r in res:
        assert np.array_equal(np.array(r["w"], np.float32), want["w"])
        assert r["bn.num_batches_tracked"] == 5 and r["b"] == [7.0] * 4
        assert r["dtypes"] == {"w": "torch.float32", "bn.num_batches_tracked": "torch.int64",
                               "b": "torch.float32"}

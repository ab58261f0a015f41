"""Step batches made by DataLoader worker processes: the same batches as on the training thread,
bad files reported and skipped (counts exact), strict mode ending in one clean error, and a
resumed run with workers bitwise equal to an uninterrupted one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tsal_dist.config import with_overrides
from tsal_dist.data.batches import StepBatches, resolve_loader_workers, step_loader
from tsal_dist.data.datasets import ClipDataset, LabeledImageDataset
from tsal_dist.data.formats import AnnotationError, ListEntry, read_list
from tsal_dist.loop.checkpoint import latest_checkpoint, load_checkpoint
from tsal_dist.data.lists import resolve_data
from tsal_dist.loop.loop import run


def _datasets(cfg, entries=None, strict=False):
    lists = resolve_data(cfg)
    lab = entries if entries is not None else read_list(lists.labeled[0])
    d, m = cfg.data, cfg.model
    labeled = LabeledImageDataset(lab, num_points=68, input_size=m.input_size,
                                  pre_crop_expand=d.pre_crop_expand, augment=True, strict=strict)
    clips = ClipDataset(read_list(lists.unlabeled[0]), num_points=68, clip_length=d.clip_length,
                        clip_stride=d.clip_stride,
                        input_size=m.input_size, pre_crop_expand=d.pre_crop_expand, augment=True)
    return labeled, clips


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.slow
def test_worker_batches_equal_training_thread_batches(smoke_cfg):
    labeled, clips = _datasets(smoke_cfg)
    sb = StepBatches(labeled, clips, batch=4, clips_per_batch=1, rank=1, world=2, seed=3)
    inline = list(step_loader(sb, 2, 6, workers=0, device=torch.device("cpu")))
    workers = list(step_loader(sb, 2, 6, workers=2, device=torch.device("cpu")))
    assert len(inline) == len(workers) == 4
    assert all(_equal(a, b) for a, b in zip(inline, workers))
    assert inline[0]["clips"]["frames"].shape[:2] == (1, smoke_cfg.data.clip_length)


def _with_bad_file(cfg, tmp_path: Path) -> list[ListEntry]:
    entries = read_list(resolve_data(cfg).labeled[0])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    return [ListEntry(str(bad), entries[0].annotation, entries[0].box)] + entries[1:]


@pytest.mark.slow
def test_bad_file_in_a_worker_is_skipped_and_counted_exactly(smoke_cfg, tmp_path):
    import logging

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("tsal_dist.data.datasets").addHandler(handler)
    entries = _with_bad_file(smoke_cfg, tmp_path)
    n = len(entries)
    for workers in (2, 0):
        labeled, _ = _datasets(smoke_cfg, entries)  # fresh: nothing reported yet
        sb = StepBatches(labeled, None, batch=n, clips_per_batch=0, rank=0, world=1, seed=0)
        items = list(step_loader(sb, 0, 3, workers=workers, device=torch.device("cpu")))
        # every step draws every item once: the broken one is replaced once per step
        assert [it["skipped"] for it in items] == [{"image": 1}] * 3, workers
        # reported naming the file, in THIS process (through logging), whichever process made
        # the batch; the message also travels with the batch
        assert any("broken.jpg" in r for r in records), (workers, records)
        assert any("broken.jpg" in m for it in items for m in it["reports"]), workers
        records.clear()
    logging.getLogger("tsal_dist.data.datasets").removeHandler(handler)


@pytest.mark.slow
def test_strict_bad_file_from_a_worker_is_one_clean_error(smoke_cfg, tmp_path):
    entries = _with_bad_file(smoke_cfg, tmp_path)
    labeled, _ = _datasets(smoke_cfg, entries, strict=True)
    sb = StepBatches(labeled, None, batch=len(entries), clips_per_batch=0, rank=0, world=1,
                     seed=0)
    with pytest.raises(AnnotationError) as err:
        list(step_loader(sb, 0, 2, workers=1, device=torch.device("cpu")))
    msg = str(err.value)
    assert "broken.jpg" in msg and "\n" not in msg and "Traceback" not in msg


def test_auto_loader_workers() -> None:
    assert resolve_loader_workers(3, 1) == 3
    assert resolve_loader_workers(-1, 1) == 0
    assert resolve_loader_workers(-1, 4) == 3
    assert resolve_loader_workers(-1, 64) == 8


@pytest.mark.slow
def test_resume_with_loader_workers_is_bitwise_exact(smoke_cfg, tmp_path):
    cfg = with_overrides(smoke_cfg, {"run.output": str(tmp_path), "run.export": False,
                                     "data.loader_workers": 2})
    ref = with_overrides(cfg, {"data.loader_workers": 0})
    run(ref, run_dir=tmp_path / "inline", progress=False, final_eval=False)
    run(cfg, run_dir=tmp_path / "cut", progress=False, stop_after=6)
    run(cfg, run_dir=tmp_path / "cut", progress=False, final_eval=False)
    a = load_checkpoint(latest_checkpoint(tmp_path / "inline" / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"))
    assert a["step"] == b["step"] == 12
    for role in ("student", "teacher"):
        assert all(torch.equal(a[role][k], b[role][k]) for k in a[role]), role

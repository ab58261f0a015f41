"""The BN-statistics probe: the re-estimation against statistics computed by hand, and the
paired summary."""

from __future__ import annotations

import statistics

import pytest
import torch

from _scripts import load_script


def test_reestimate_bn_is_the_cumulative_average_of_the_batch_statistics():
    mod = load_script("bn_probe")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4, momentum=0.3),
                                torch.nn.Dropout(0.5))
    model.train()
    w_before = {k: v.clone() for k, v in model.state_dict().items()
                if "running" not in k and "num_batches" not in k}
    batches = [torch.randint(0, 256, (5, 3, 8, 8)).float() for _ in range(3)]
    assert mod.reestimate_bn(model, iter(batches)) == 15
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    # by hand: BN's cumulative average of each batch's per-channel mean and unbiased variance
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    bn = model[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(bn.running_var, var, rtol=1e-5)
    assert bn.momentum == 0.3 and model.training  # restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in w_before.items())
    with pytest.raises(ValueError, match="no batch-norm"):
        mod.reestimate_bn(torch.nn.Linear(2, 2), iter(batches))
    with pytest.raises(ValueError, match="no images"):
        mod.reestimate_bn(model, iter([]))


def test_summary_pairs_each_way_with_the_same_run_as_trained():
    mod = load_script("bn_probe")

    def run(a, b, c):  # as trained, re-estimated labeled, re-estimated on video (the others: a)
        vals = dict(zip(mod.WAYS, (a, b, a, c, a)))
        return {"eval": {w: {"imgs": {"nme": v, "fr@0.08": 0.1, "nmj": None}}
                         for w, v in vals.items()}}

    assert mod.WAYS[1] == "re-estimated, labeled"
    assert mod.WAYS[3] == "re-estimated, unlabeled video"
    runs = [run(0.14, 0.15, 0.12), run(0.15, 0.15, 0.13), run(0.16, 0.17, 0.13)]
    rows = {r["way"]: r for r in mod.summarise(runs)}
    d = rows[mod.WAYS[3]]["delta"]
    diffs = [0.12 - 0.14, 0.13 - 0.15, 0.13 - 0.16]
    assert d["mean"] == pytest.approx(statistics.fmean(diffs))
    assert d["significant"] is True
    assert rows[mod.WAYS[3]]["rel"] == pytest.approx(statistics.fmean(diffs) / 0.15)
    assert "delta" not in rows[mod.WAYS[0]]
    assert rows[mod.WAYS[1]]["delta"]["significant"] is False


def test_batches_are_random_samples_of_equal_size_across_videos():
    """Frames of 5 'videos' (dataset items of 4 frames each, item i filled with i): batches of 4
    are shuffled across items (not one video a batch), all of size 4, every frame at most once."""
    mod = load_script("bn_probe")

    class Clips:
        def __len__(self):
            return 5

        def get(self, i, seed):
            return {"frames": torch.full((4, 1, 2, 2), i, dtype=torch.uint8)}

    got = mod._batches(Clips(), "frames", 3)
    assert [b.shape[0] for b in got] == [3] * 6  # 20 frames: 6 full batches, remainder dropped
    ids = [int(x[0, 0, 0]) for b in got for x in b]
    assert len(ids) == 18 and all(ids.count(i) <= 4 for i in range(5))
    assert any(len({int(x[0, 0, 0]) for x in b}) > 1 for b in got)  # mixed videos
    assert [b.tolist() for b in mod._batches(Clips(), "frames", 3)] == [b.tolist() for b in got]
    assert [b.shape[0] for b in mod._batches(Clips(), "frames", 50)] == [20]  # under one batch

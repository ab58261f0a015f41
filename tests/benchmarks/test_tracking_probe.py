"""benchmarks/tracking_probe.py: carrying points along a clip's tracking grids and the per-subset
NME (the probe end to end runs in test_semi_supervised_tables, on the quick runs it trains)."""

from __future__ import annotations


import numpy as np
import pytest

from _scripts import load_script


def _translation_grids(t_len: int, size: int, d: tuple[float, float]) -> np.ndarray:
    """grids[t][y, x] = where pixel (x, y) of frame t+1 comes from in frame t: content moving by
    +d per frame comes from (x - dx, y - dy)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    g = np.stack([xs - d[0], ys - d[1]], -1)
    return np.repeat(g[None], t_len - 1, axis=0)


def test_carry_moves_points_with_the_content_both_ways():
    mod = load_script("tracking_probe")
    d = (1.5, -0.75)
    grids = _translation_grids(5, 24, d)
    p = np.array([[8.0, 12.0], [10.25, 9.5], [14.0, 14.0]])
    out = mod.carry(p, grids, anchor=2)
    assert out.shape == (5, 3, 2)
    for t in range(5):
        np.testing.assert_allclose(out[t], p + (t - 2) * np.array(d), atol=1e-3)


def test_subset_nme_is_normalised_by_the_whole_face():
    mod = load_script("tracking_probe")
    from tsal_dist.eval.metrics import nme

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 64, (3, 68, 2))
    pred = gt + rng.normal(0, 1.0, gt.shape)
    vis = np.ones((3, 68))
    jaw, inner = mod.subset_nme(pred, gt, vis, mod.JAW), mod.subset_nme(pred, gt, vis, mod.INNER)
    # the full NME is the point-count-weighted mean of the two parts
    np.testing.assert_allclose((17 * jaw + 51 * inner) / 68, nme(pred, gt, visible=vis))
    iod = np.linalg.norm(gt[:, 36] - gt[:, 45], axis=-1)
    by_hand = np.linalg.norm(pred[:, :17] - gt[:, :17], axis=-1).mean(1) / iod
    np.testing.assert_allclose(jaw, by_hand)


def test_a_list_without_annotations_is_refused_in_one_line(tmp_path):
    mod = load_script("tracking_probe")
    lst = tmp_path / "videos.train.none"
    lst.write_text("")
    with pytest.raises(SystemExit, match=r"videos\.train\.none: .*needs the annotated list"):
        mod.annotated_videos(lst)
    (tmp_path / "videos.train.lst").write_text("")
    assert mod.annotated_videos(lst) == tmp_path / "videos.train.lst"

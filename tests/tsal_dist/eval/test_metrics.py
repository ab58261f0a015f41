"""tsal_dist.eval.metrics against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tsal_dist.data.schemes import scheme_for
from tsal_dist.eval import metrics as M

# Hand-made eye geometry (68 points): outer corners 36 = (10, 50) and 45 = (110, 50) -> d_io = 100.
# Left eye 36..41 averages to (30, 50), right eye 42..47 to (90, 50) -> d_ip = 60.
LEFT_EYE = [(10, 50), (20, 45), (40, 45), (50, 50), (40, 55), (20, 55)]
RIGHT_EYE = [(70, 50), (80, 45), (100, 45), (110, 50), (100, 55), (80, 55)]


def face68() -> np.ndarray:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 120, size=(68, 2))
    gt[36:42] = LEFT_EYE
    gt[42:48] = RIGHT_EYE
    return gt[None]  # (1, 68, 2)


def with_errors(gt: np.ndarray) -> np.ndarray:
    pred = gt.copy()
    pred[0, 0] += (3.0, 4.0)  # error 5
    pred[0, 1] += (0.0, -2.0)  # error 2
    return pred


def test_inter_ocular_hand_example():
    gt = face68()
    out = M.nme(with_errors(gt), gt, "inter_ocular")
    assert out.shape == (1,)
    assert out[0] == pytest.approx(7.0 / (68 * 100.0))


def test_inter_pupil_hand_example_and_ratio():
    gt = face68()
    pred = with_errors(gt)
    ip = M.nme(pred, gt, "inter_pupil")
    io = M.nme(pred, gt, "inter_ocular")
    assert ip[0] == pytest.approx(7.0 / (68 * 60.0))
    # same errors, pupils closer together than outer corners: ip / io = d_io / d_ip
    assert ip[0] / io[0] == pytest.approx(100.0 / 60.0)
    both = M.nme_by_norm(pred, gt, scheme_for(68))
    assert list(both) == ["inter_ocular", "inter_pupil"]
    np.testing.assert_allclose(both["inter_pupil"], ip)


def test_normalizer_values():
    gt = face68()
    assert M.normalizer(gt, "inter_ocular")[0] == pytest.approx(100.0)
    assert M.normalizer(gt, "inter_pupil")[0] == pytest.approx(60.0)


def test_visibility_masking():
    gt = face68()
    pred = with_errors(gt)
    vis = np.ones((1, 68))
    vis[0, 0] = 0  # hides the error-5 point
    vis[0, 50:] = 0  # 18 more hidden points, errors 0 anyway
    pred[0, 60] = np.nan  # invisible points may hold garbage
    out = M.nme(pred, gt, "inter_ocular", visible=vis)
    assert out[0] == pytest.approx(2.0 / (49 * 100.0))


def test_invisible_normaliser_point_is_degenerate():
    gt = face68()
    vis = np.ones((1, 68))
    vis[0, 45] = 0
    assert np.isnan(M.nme(gt, gt, "inter_ocular", visible=vis)[0])
    vis = np.ones((1, 68))
    vis[0, 40] = 0  # part of the left pupil; the corners are fine
    assert np.isnan(M.nme(gt, gt, "inter_pupil", visible=vis)[0])
    assert M.nme(gt, gt, "inter_ocular", visible=vis)[0] == 0.0


def test_face_size_19_points():
    rng = np.random.default_rng(1)
    gt = rng.uniform(0, 100, size=(2, 19, 2))
    pred = gt.copy()
    pred[0, 3] += (6.0, 8.0)  # error 10 in image 0
    pred[1, 0] += (1.0, 0.0)  # error 1 in image 1
    vis = np.ones((2, 19))
    vis[1, 10:] = 0  # 10 visible in image 1
    out = M.nme(pred, gt, "face_size", visible=vis, face_size=np.array([50.0, 20.0]))
    np.testing.assert_allclose(out, [10.0 / (19 * 50.0), 1.0 / (10 * 20.0)])
    spec = scheme_for(19)
    assert spec.primary_norm == "face_size" and spec.norms == ("face_size",)
    assert np.isnan(M.nme(pred, gt, "face_size", face_size=np.array([np.nan, 0.0]))).all()
    with pytest.raises(ValueError, match="face_size"):
        M.nme(pred, gt, "face_size")


def test_bbox_norm_ignores_invisible_points():
    gt = np.array([[[0, 0], [8, 0], [0, 2], [8, 2], [100, 100]]], float)
    vis = np.array([[1, 1, 1, 1, 0]])
    pred = gt.copy()
    pred[0, 1, 0] += 1.0
    assert M.normalizer(gt, "bbox", vis)[0] == pytest.approx(4.0)  # sqrt(8 * 2)
    assert M.nme(pred, gt, "bbox", visible=vis)[0] == pytest.approx(1.0 / (4 * 4.0))


def test_degenerate_and_nonfinite():
    gt = np.zeros((3, 68, 2))
    gt[1:] = face68()[0]
    pred = gt.copy()
    pred[2, 5] = np.nan  # broken prediction on a visible point: a failure, not degenerate
    vis = np.ones((3, 68))
    out = M.nme(pred, gt, "inter_ocular", visible=vis)
    assert np.isnan(out[0])  # all-zero annotation: d = 0
    assert out[1] == 0.0
    assert np.isposinf(out[2])
    vis[1] = 0
    assert np.isnan(M.nme(pred, gt, "bbox", visible=vis)[1])  # no visible point
    bad_gt = gt.copy()
    bad_gt[1, 3] = np.inf
    assert np.isnan(M.nme(gt, bad_gt)[1])


def test_shape_and_name_errors():
    gt = face68()
    with pytest.raises(ValueError, match="differ"):
        M.nme(gt[:, :10], gt)
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        M.nme(gt[0], gt[0])
    with pytest.raises(ValueError, match="unknown norm"):
        M.nme(gt, gt, "interocular")
    with pytest.raises(ValueError, match="visible"):
        M.nme(gt, gt, visible=np.ones(68))
    with pytest.raises(ValueError, match="outside"):
        M.nme(gt[:, :40], gt[:, :40], "inter_ocular")


def test_wflw_corners_used_by_nme_by_norm():
    gt = np.zeros((1, 98, 2))
    gt[0, :, 0] = np.arange(98)  # x = index, so ||p60 - p72|| = 12
    gt[0, 96] = (0, 0)
    gt[0, 97] = (0, 3)  # pupils 3 apart
    pred = gt.copy()
    pred[0, 0, 1] += 98.0 * 12  # total error 1176 -> NME_io = 1176 / (98 * 12) = 1
    out = M.nme_by_norm(pred, gt, scheme_for(98))
    assert out["inter_ocular"][0] == pytest.approx(1.0)
    assert out["inter_pupil"][0] == pytest.approx(4.0)


def test_ced_is_strictly_below():
    ts, fr = M.ced(np.array([0.02, 0.06, np.nan]), threshold=0.08, steps=5)
    np.testing.assert_allclose(ts, [0, 0.02, 0.04, 0.06, 0.08])
    np.testing.assert_allclose(fr, [0, 0, 0.5, 0.5, 1.0])  # NME == t does not count yet
    with pytest.raises(ValueError):
        M.ced(np.array([0.1]), threshold=0.0)


def test_auc_hand_computed_small_grid():
    # grid 0, .02, .04, .06, .08; one image at 0.03: CED = 0, 0, 1, 1, 1
    # trapezoids: 0 + .02 * .5 + .02 + .02 = .05 -> / .08 = .625
    assert M.auc(np.array([0.03]), 0.08, steps=5) == pytest.approx(0.625)
    # three valid images (0.01, 0.05, 0.2) + NaN: CED = 0, 1/3, 1/3, 2/3, 2/3
    # area = .01 * (1/3 + 2/3 + 1 + 4/3) = 1/30 -> / .08 = 5/12
    assert M.auc(np.array([0.01, 0.05, 0.2, np.nan]), 0.08, steps=5) == pytest.approx(5 / 12)


def test_auc_step_distribution_default_grid():
    # Everybody at 0.04 = tau / 2: CED jumps between grid points 999 and 1000 of 2000; the
    # trapezoid area is (999 + 1/2) cells of 0.08 / 1999 -> AUC = 999.5 / 1999 = 1/2 exactly.
    assert M.auc(np.full(10, 0.04)) == pytest.approx(0.5, abs=1e-12)
    # perfect predictions: CED(0) = 0 (strict), then 1 -> AUC = 1 - 0.5 / 1999
    assert M.auc(np.zeros(4)) == pytest.approx(1 - 0.5 / 1999)
    assert M.auc(np.full(3, 0.5)) == 0.0
    assert np.isnan(M.auc(np.array([np.nan])))
    assert np.isnan(M.auc(np.array([])))


def test_failure_rate_edges():
    assert M.failure_rate(np.array([0.08, 0.0800001, np.nan]), 0.08) == pytest.approx(0.5)
    assert M.failure_rate(np.array([0.01, np.inf]), 0.1) == pytest.approx(0.5)
    assert M.failure_rate(np.array([0.0, 0.0])) == 0.0
    assert np.isnan(M.failure_rate(np.array([np.nan, np.nan])))
    assert np.isnan(M.failure_rate(np.array([])))


def test_summarize_keys_values_and_json_safety():
    io = np.array([0.01, 0.03, 0.09, np.nan])
    ip = io * (100 / 60)
    s = M.summarize(io, ip)
    assert s["n_images"] == 4 and s["count"] == 3 and s["n_degenerate"] == 1
    assert s["nme_inter_ocular"] == pytest.approx(0.13 / 3)
    assert s["nme"] == s["nme_inter_ocular"]
    assert s["nme_inter_pupil"] == pytest.approx(0.13 / 3 * 100 / 60)
    assert s["fr@0.08"] == pytest.approx(1 / 3)
    assert s["fr@0.1"] == 0.0
    assert s["fr@0.07"] == pytest.approx(1 / 3)
    assert s["auc@0.08"] == pytest.approx(M.auc(io, 0.08))
    assert {"auc@0.07", "auc@0.1", "nme_median"} <= set(s)
    json.dumps(s, allow_nan=False)
    empty = M.summarize(np.array([np.nan]), None, primary_norm="face_size")
    assert empty["count"] == 0 and empty["nme"] is None and empty["nme_face_size"] is None
    assert empty["nme_inter_pupil"] is None and empty["auc@0.08"] is None
    json.dumps(empty, allow_nan=False)
    inf = M.summarize(np.array([0.01, np.inf]))
    assert inf["nme"] is None and inf["n_nonfinite"] == 1 and inf["fr@0.08"] == 0.5


def test_nmj_is_the_rms_of_the_change_of_the_normalised_error():
    from tsal_dist.eval.metrics import error_changes, nmj

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, (4, 3, 2))
    # the same error every frame: no jitter, however large the error
    assert nmj([error_changes(gt + 5.0, gt, np.full(4, 10.0))]) == pytest.approx(0.0, abs=1e-12)
    # error alternating +1 / -1 px in x at d = 10: every change is 0.2 in x, 0 in y
    pred = gt.copy()
    pred[::2, :, 0] += 1.0
    pred[1::2, :, 0] -= 1.0
    ch = error_changes(pred, gt, np.full(4, 10.0))
    assert ch.shape == (9,) and np.allclose(ch, 0.04)
    assert nmj([ch]) == pytest.approx(0.2)
    # a point invisible in frame 2 drops the pairs (1, 2) and (2, 3) of that point only
    vis = np.ones((4, 3))
    vis[2, 0] = 0
    assert error_changes(pred, gt, np.full(4, 10.0), vis).shape == (7,)
    # pooled over videos: RMS of all changes, not the mean of per-video RMS
    other = error_changes(gt + np.array([0.0, 3.0]) * np.arange(4)[:, None, None], gt,
                          np.full(4, 10.0))  # changes of 0.3 each
    assert nmj([ch, other]) == pytest.approx(np.sqrt((9 * 0.04 + 9 * 0.09) / 18))
    assert np.isnan(nmj([]))

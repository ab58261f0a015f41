"""One TSAL step on CPU: both models learn on a fixed batch; options behave."""

from __future__ import annotations

import pytest
import torch

from tsal_dist.codec import CentroidCodec, HeatmapCodec
from tsal_dist.config import ModelConfig
from tsal_dist.loop.engines import DDPEngine
from tsal_dist.loop.optimizers import build_optimizer
from tsal_dist.loop.step import LossWeights, total_loss, tsal_step
from tsal_dist.models import build_model

S, K = 64, 68


def _engines(seed=0):
    cfg = ModelConfig(input_size=S, width=0.35, cpm_stages=1, heatmap_sigma_px=2.0)
    torch.manual_seed(seed)
    s = build_model(cfg, K)
    t = build_model(cfg, K)
    t.load_state_dict(s.state_dict())
    mk = lambda m: DDPEngine(m, build_optimizer(m.parameters(), name="adam", lr=3e-3,  # noqa: E731
                                                weight_decay=0, momentum=0.9),
                             grad_clip=5.0, device=torch.device("cpu"))
    codec = HeatmapCodec(input_size=S, stride=s.stride, num_points=K, sigma_px=2.0, window=3)
    ctr = CentroidCodec(input_size=S, stride=s.stride, num_points=K, centroid_index=30, topk=4)
    return mk(s), mk(t), codec, ctr


def _batch(b=4, c=1, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(K, 2, generator=g) * (S - 24) + 12
    lm = base[None].repeat(b, 1, 1) + torch.randn(b, K, 2, generator=g)
    images = torch.randint(0, 255, (b, 3, S, S), generator=g, dtype=torch.uint8)
    labeled = {"image": images, "landmarks": lm, "visible": torch.ones(b, K),
               "labeled": torch.ones(b, dtype=torch.bool)}
    frames = torch.randint(0, 255, (c, t, 3, S, S), generator=g, dtype=torch.uint8)
    clips = {"frames": frames, "warped": frames[:, :-1].clone()}
    return labeled, clips


@pytest.mark.parametrize("pseudo_source", ["self", "teacher"])
def test_both_models_learn_a_fixed_batch(pseudo_source):
    torch.set_num_threads(1)
    student, teacher, codec, ctr = _engines()
    labeled, clips = _batch()
    w = LossWeights()
    first = last = None
    for i in range(20):
        logs = tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                         hm_codec=codec, ctr_codec=ctr, weights=w, ramp=1.0, lr=3e-3,
                         fusion_mu=0.5, pseudo_source=pseudo_source)
        first = first or logs
        last = logs
    for role in ("student", "teacher"):
        assert last[f"{role}/heatmap"] < 0.7 * first[f"{role}/heatmap"]
        assert last[f"{role}/loss"] < first[f"{role}/loss"]
    assert "student/consistency" in last and "teacher/consistency" in last


def test_supervised_only_step_has_zero_unlabeled_terms():
    student, teacher, codec, ctr = _engines()
    labeled, _ = _batch()
    logs = tsal_step(student=student, teacher=teacher, labeled=labeled, clips=None,
                     hm_codec=codec, ctr_codec=ctr, weights=LossWeights(), ramp=1.0, lr=1e-3,
                     fusion_mu=0.5)
    assert logs["student/consistency"] == 0.0 and logs["student/structure"] == 0.0


def test_total_loss_weights_each_term_once():
    terms = {k: torch.tensor(v) for k, v in
             dict(heatmap=2.0, centroid=3.0, offset=5.0, structure=7.0, consistency=11.0).items()}
    w = LossWeights(heatmap=1.0, centroid=0.5, offset=0.1, structure=0.01, unsup=2.0,
                    student_unsup=68.0)
    assert float(total_loss(terms, w, ramp=0.25)) == pytest.approx(
        2.0 + 1.5 + 0.5 + 0.07 + 0.25 * 2.0 * 11.0)
    # the student's consistency alone gets the extra factor
    assert float(total_loss(terms, w, ramp=0.25, role="student")) == pytest.approx(
        2.0 + 1.5 + 0.5 + 0.07 + 0.25 * 2.0 * 68.0 * 11.0)


def test_teacher_source_needs_valid_name():
    student, teacher, codec, ctr = _engines()
    labeled, clips = _batch()
    with pytest.raises(ValueError, match="pseudo_source"):
        tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                  hm_codec=codec, ctr_codec=ctr, weights=LossWeights(), ramp=1.0, lr=1e-3,
                  fusion_mu=0.5, pseudo_source="oracle")


def test_output_space_with_identity_grid_equals_image_space():
    # warped == frame t and an identity grid: carrying frame t's OUTPUTS through the grid must give
    # exactly the image-space targets (same inputs, same BatchNorm batch)
    torch.set_num_threads(1)
    labeled, clips = _batch(c=2)
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32),
                            torch.arange(S, dtype=torch.float32), indexing="ij")
    clips["grid"] = torch.stack([xs, ys], -1).expand(2, 2, S, S, 2).clone()
    logs = {}
    for space in ("image", "output"):
        student, teacher, codec, ctr = _engines(seed=3)
        logs[space] = tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                                hm_codec=codec, ctr_codec=ctr, weights=LossWeights(), ramp=1.0,
                                lr=1e-3, fusion_mu=0.5, consistency_space=space)
    for role in ("teacher", "student"):
        assert logs["output"][f"{role}/consistency"] == pytest.approx(
            logs["image"][f"{role}/consistency"], rel=1e-4, abs=1e-6)
        assert logs["output"][f"{role}/consistency"] > 0
    student, teacher, codec, ctr = _engines()
    with pytest.raises(ValueError, match="consistency_space"):
        tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips, hm_codec=codec,
                  ctr_codec=ctr, weights=LossWeights(), ramp=1.0, lr=1e-3, fusion_mu=0.5,
                  consistency_space="pixels")


def test_student_heatmap_consistency_is_the_teachers_term():
    # identical weights, same inputs: the student's single-source heatmap term equals the
    # teacher's (the teacher steps first, but on its own copy of the weights)
    torch.set_num_threads(1)
    student, teacher, codec, ctr = _engines(seed=5)
    labeled, clips = _batch(c=2, seed=2)
    logs = tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                     hm_codec=codec, ctr_codec=ctr, weights=LossWeights(), ramp=1.0, lr=1e-3,
                     fusion_mu=0.5, student_term="heatmap")
    assert logs["student/consistency"] == pytest.approx(logs["teacher/consistency"], rel=1e-5)
    with pytest.raises(ValueError, match="student_term"):
        tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                  hm_codec=codec, ctr_codec=ctr, weights=LossWeights(), ramp=1.0, lr=1e-3,
                  fusion_mu=0.5, student_term="coords")


def test_pseudo_labels_keep_only_confident_points_and_mask_background():
    from tsal_dist.loop.step import make_targets, model_terms

    torch.set_num_threads(1)
    _, _, codec, ctr = _engines()
    n, h = 2, S // 4
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(n, K, 2, generator=g) * (S - 20) + 10
    conf = torch.rand(n, K, generator=g) > 0.5
    maps, _ = codec.encode(pts, torch.ones(n, K))
    peak = maps[:, :K].flatten(2).amax(2)  # confident channels peak at 1, the others at 0.2
    maps[:, :K] *= (torch.where(conf, 1.0, 0.2) / peak)[..., None, None]
    zeros = {"center": torch.zeros(n, 1, h, h), "offsets": torch.zeros(n, 2 * K, h, h)}
    src = {"heatmaps": [maps], **zeros}
    # the prediction on frame t+1 equals the re-rendered target on the kept points and is wrong
    # on the dropped points and on the background: only the masking makes the loss 0
    want, _ = codec.encode(codec.locate(maps[:, :K])[0], conf.float())
    bad = want.clone()
    bad[:, :K] += 0.3 * (~conf).float()[..., None, None]
    bad[:, K] = 0.7
    pred = {"heatmaps": [bad], **zeros}
    labeled, _ = _batch(b=2)
    targets = make_targets(labeled, codec, ctr)
    out_l = {"heatmaps": [targets["heatmaps"]], **zeros}
    common = dict(role="student", targets=targets, clip_ids=torch.arange(n), hm_codec=codec,
                  ctr_codec=ctr, fusion_mu=0.5, structure_descriptor="pairs",
                  student_term="pseudo_label")
    terms = model_terms(out_l, pred, src, pseudo_threshold=0.5, **common)
    assert float(terms["consistency"]) == pytest.approx(0.0, abs=1e-8)
    assert float(terms["pseudo_kept"]) == pytest.approx(conf.float().mean().item())
    # a threshold that keeps every point sees the wrong values
    terms = model_terms(out_l, pred, src, pseudo_threshold=0.1, **common)
    assert float(terms["consistency"]) > 1.0


def test_pseudo_labels_skip_frames_turned_further_than_the_limit():
    """Frame 0's pseudo-label is a frontal face (nose tip between the eye corners: turn 0),
    frame 1's a turned one (nose tip 10 px towards one corner, eyes 24 px apart: turn 0.42). The
    prediction on frame t+1 matches frame 0's target and is wrong on frame 1: with a limit of 0.2
    only frame 1 is dropped and the loss is 0; without a limit it counts."""
    from tsal_dist.data.schemes import IBUG68, head_turn
    from tsal_dist.loop.step import make_targets, model_terms

    torch.set_num_threads(1)
    _, _, codec, ctr = _engines()
    h = S // 4
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(2, K, 2, generator=g) * (S - 20) + 10
    pts[:, 36], pts[:, 45] = torch.tensor([20.0, 30.0]), torch.tensor([44.0, 30.0])
    pts[0, 30], pts[1, 30] = torch.tensor([32.0, 40.0]), torch.tensor([42.0, 40.0])
    assert head_turn(pts, IBUG68).tolist() == pytest.approx([0.0, 10 / 24])
    maps, _ = codec.encode(pts, torch.ones(2, K))
    zeros = {"center": torch.zeros(2, 1, h, h), "offsets": torch.zeros(2, 2 * K, h, h)}
    src = {"heatmaps": [maps], **zeros}
    want, _ = codec.encode(codec.locate(maps[:, :K])[0], torch.ones(2, K))
    pred_maps = want.clone()
    pred_maps[1, :K] = 0.5  # wrong everywhere on the turned frame
    pred = {"heatmaps": [pred_maps], **zeros}
    labeled, _ = _batch(b=2)
    targets = make_targets(labeled, codec, ctr)
    out_l = {"heatmaps": [targets["heatmaps"]], **zeros}
    common = {"role": "student", "targets": targets, "clip_ids": torch.arange(2),
              "hm_codec": codec, "ctr_codec": ctr, "fusion_mu": 0.5,
              "structure_descriptor": "pairs", "student_term": "pseudo_label",
              "pseudo_threshold": 0.0}
    terms = model_terms(out_l, pred, src, pseudo_max_turn=0.2, **common)
    assert float(terms["consistency"]) == pytest.approx(0.0, abs=1e-8)
    assert float(terms["pseudo_frames_kept"]) == pytest.approx(0.5)
    assert float(terms["pseudo_kept"]) == pytest.approx(0.5)
    assert float(model_terms(out_l, pred, src, pseudo_max_turn=0.5, **common)["consistency"]) > 1
    no_limit = model_terms(out_l, pred, src, **common)
    assert float(no_limit["consistency"]) > 1.0 and "pseudo_frames_kept" not in no_limit

"""TSAL as published, piece by piece: the per-iteration two-way lerp, the structure constraint on
labeled faces at the ground-truth centroid, TSAL's per-layer learning rates and bias decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsal_dist.config import ModelConfig, with_overrides
from tsal_dist.loop.engines import DDPEngine
from tsal_dist.loop.optimizers import build_optimizer, param_groups
from tsal_dist.loop.loop import mutual_step_
from tsal_dist.loop.step import make_targets, model_terms
from tsal_dist.losses.structure import structure_descriptor_terms
from tsal_dist.models import build_model

from test_step import K, S, _batch, _engines


def _engine(model: nn.Module) -> DDPEngine:
    return DDPEngine(model, build_optimizer(model.parameters(), name="sgd", lr=0.1,
                                            weight_decay=0, momentum=0.9),
                     grad_clip=0.0, device=torch.device("cpu"))


def test_mutual_step_is_the_codes_two_way_lerp():
    torch.manual_seed(0)
    s_model, t_model = nn.Linear(3, 2), nn.Linear(3, 2)
    s0 = {k: v.clone() for k, v in s_model.state_dict().items()}
    t0 = {k: v.clone() for k, v in t_model.state_dict().items()}
    student, teacher = _engine(s_model), _engine(t_model)
    mutual_step_(teacher=teacher, student=student, student_keep=0.6, blend=0.6,
                 average_buffers=False, buffer_keys=frozenset())
    for k in s0:
        s_new = 0.6 * s0[k] + 0.4 * t0[k]
        torch.testing.assert_close(s_model.state_dict()[k], s_new)
        # teacher <- 0.6 T + 0.4 S_new = 0.76 T + 0.24 S_old (docs/method_notes.md 1.8)
        torch.testing.assert_close(t_model.state_dict()[k], 0.76 * t0[k] + 0.24 * s0[k])


def test_structure_on_labeled_uses_the_gt_centroid_and_mask_over_the_batch():
    torch.manual_seed(0)
    student, _, codec, ctr = _engines()
    labeled, _ = _batch(b=4)
    labeled["visible"][1, :10] = 0  # a partly occluded face: its masked offsets are left out
    targets = make_targets(labeled, codec, ctr)
    with torch.no_grad():
        out = student.module(labeled["image"])
    terms = model_terms(out, None, None, role="student", targets=targets, clip_ids=None,
                        hm_codec=codec, ctr_codec=ctr, fusion_mu=0.5,
                        structure_descriptor="pairs", structure_on="labeled")
    # independent computation: offsets at each face's GT centroid cell, every pair of the batch
    flat = out["offsets"].flatten(2)  # (B, 2K, h*w)
    at = flat[torch.arange(4), :, targets["center_index"]]
    t, v = structure_descriptor_terms(at, targets["offset_mask"], descriptor="pairs")
    want, n = 0.0, 0
    for i in range(4):
        for j in range(i + 1, 4):
            both = v[i] * v[j]
            want += float(((t[i] * both).sum() - (t[j] * both).sum()) ** 2)
            n += 1
    assert float(terms["structure"]) == pytest.approx(want / (K * n), rel=1e-5)
    assert float(terms["structure"]) > 0
    clips_only = model_terms(out, None, None, role="student", targets=targets, clip_ids=None,
                             hm_codec=codec, ctr_codec=ctr, fusion_mu=0.5,
                             structure_descriptor="pairs", structure_on="clips")
    assert float(clips_only["structure"]) == 0.0  # no clips, no structure term


def test_tsal_layer_lr_groups_and_no_decay_on_biases():
    model = build_model(ModelConfig(input_size=S, width=0.35, cpm_stages=1), K)
    groups = param_groups(model, weight_decay=5e-4, layer_lr="tsal", bias_decay=False)
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        stage = name.startswith("heatmap_head.")
        assert g["lr_scale"] == (4.0 if stage else 1.0) * (2.0 if p.ndim == 1 else 1.0), name
        assert g["weight_decay"] == (0.0 if p.ndim == 1 else 5e-4), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    # the defaults are one plain group: exactly the optimizer built from model.parameters()
    plain = param_groups(model, weight_decay=5e-4)
    assert [id(p) for p in plain] == [id(p) for p in model.parameters()]


def test_engine_step_scales_the_learning_rate_per_group():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    groups = [{"params": list(model[0].parameters()), "lr_scale": 1.0},
              {"params": list(model[1].parameters()), "lr_scale": 4.0}]
    eng = DDPEngine(model, build_optimizer(groups, name="adam", lr=1.0, weight_decay=0,
                                           momentum=0.9),
                    grad_clip=0.0, device=torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    eng.backward(model(torch.ones(1, 2)).sum())
    grads = [p.grad.detach().clone() for p in model.parameters()]
    eng.step(0.01)
    scales = [1.0, 1.0, 4.0, 4.0]
    for p0, g, p, sc in zip(before, grads, model.parameters(), scales):
        # Adam's first step moves every coordinate by lr * sign(g) (up to its eps)
        torch.testing.assert_close(p.detach(), p0 - 0.01 * sc * torch.sign(g), atol=1e-6,
                                   rtol=0)


def test_published_recipe_loads_and_names_the_published_choices():
    from pathlib import Path

    from tsal_dist.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[3] / "configs/recipes/tsal_published.yaml")
    assert cfg.teacher.mode == "mutual_step" and cfg.teacher.average_buffers is False
    assert cfg.teacher.blend == cfg.teacher.mutual_student_keep == 0.6
    assert cfg.loss.structure_on == "labeled" and cfg.loss.pseudo_source == "self"
    assert cfg.optim.layer_lr == "tsal" and cfg.optim.bias_decay is False
    assert cfg.model.backbone == "cpm_vgg16" and cfg.data.clip_length == 10
    smaller = with_overrides(cfg, {"model.backbone": "mobilenetv2"})
    assert smaller.teacher.mode == "mutual_step"


def test_a_teacher_that_does_not_optimize_only_gives_targets():
    from tsal_dist.loop.step import LossWeights, tsal_step

    torch.manual_seed(0)
    student, teacher, codec, ctr = _engines()
    labeled, clips = _batch()
    before = {k: v.clone() for k, v in teacher.unwrapped().state_dict().items()
              if v.is_floating_point() and "running" not in k}
    logs = tsal_step(student=student, teacher=teacher, labeled=labeled, clips=clips,
                     hm_codec=codec, ctr_codec=ctr, weights=LossWeights(), ramp=1.0, lr=1e-2,
                     fusion_mu=0.5, pseudo_source="teacher", student_term="heatmap",
                     optimize_teacher=False)
    after = teacher.unwrapped().state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(k.startswith("teacher/") for k in logs)
    assert logs["student/consistency"] > 0

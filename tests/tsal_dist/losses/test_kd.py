"""KD-Loss: every region of the assistive weight on hand-computed coordinates (code and paper
variants), main-loss continuity, reflection, masking and the weighting."""

from __future__ import annotations

import pytest
import torch

from tsal_dist.losses.kd import (KDLossParams, assistive_loss, assistive_weight, kd_loss_terms,
                                 kd_total, l1_loss, l2_loss, main_loss)

CODE = dict(alpha=1.9, alpha_neg=-0.45, beta_frac=0.15, reflect=True, low_ramp=False)
PAPER = dict(alpha=1.0, alpha_neg=-0.5, beta_frac=0.4, reflect=False, low_ramp=True)


def _w(p, g, t, **kw):
    w, tu = assistive_weight(torch.tensor([p], dtype=torch.float64),
                             torch.tensor([g], dtype=torch.float64),
                             torch.tensor([t], dtype=torch.float64), **kw)
    return float(w[0]), float(tu[0])


def _released_code_weight(p, g, t, alpha, alpha_neg, beta_frac):
    """The released code's formula written out literally (custom_Losses.kd_loss)."""
    s = (p > g) - (p < g)
    tr = g + s * abs(t - g)
    beta = g + s * beta_frac * abs(t - g)
    return alpha * ((p - tr) * (tr - g) > 0) + alpha_neg * ((tr - p) * (p - beta) >= 0)


@pytest.mark.parametrize("p, expected", [
    (0.6, 1.9),     # beyond the teacher (R_P): T'=0.4, 0.6 > 0.4
    (0.3, -0.45),   # between beta=0.06 and T'=0.4 (R_N)
    (0.4, -0.45),   # exactly at the teacher: (P-T')(T'-G)=0 -> only the negative term
    (0.06, -0.45),  # exactly at beta: >= includes it
    (0.03, 0.0),    # between G and beta: nothing (no ramp in the code)
])
def test_code_regions_teacher_on_same_side(p, expected):
    w, t_used = _w(p, 0.0, 0.4, **CODE)
    assert w == pytest.approx(expected)
    assert t_used == pytest.approx(0.4)
    assert w == pytest.approx(_released_code_weight(p, 0.0, 0.4, 1.9, -0.45, 0.15))


@pytest.mark.parametrize("p, expected", [(-0.6, 1.9), (-0.3, -0.45), (-0.03, 0.0)])
def test_code_reflects_a_teacher_on_the_other_side(p, expected):
    # teacher at +0.4, student on the negative side: T' = -0.4, beta = -0.06
    w, t_used = _w(p, 0.0, 0.4, **CODE)
    assert t_used == pytest.approx(-0.4)
    assert w == pytest.approx(expected)


def test_code_weight_matches_released_formula_on_random_values():
    g = torch.rand(2000, dtype=torch.float64)
    p, t = g + torch.randn_like(g) * 0.3, g + torch.randn_like(g) * 0.2
    w, _ = assistive_weight(p, g, t, **CODE)
    ref = torch.tensor([_released_code_weight(*map(float, x), 1.9, -0.45, 0.15)
                        for x in zip(p, g, t)], dtype=torch.float64)
    assert torch.allclose(w, ref)


@pytest.mark.parametrize("p, expected", [
    (0.5, 1.0),       # R_P beyond the teacher at 0.4
    (0.3, -0.5),      # R_N between beta=0.16 and 0.4 (figure: teacher 0.4 -> beta 0.16)
    (0.16, -0.5),     # at beta
    (0.08, -0.25),    # R_L: halfway from G to beta -> half of alpha_neg
    (0.0, 0.0),       # at G
    (-0.08, 0.5),     # opposite side, halfway to beta- = -0.16: ramp to alpha
    (-0.3, 1.0),      # opposite side beyond beta-: alpha
])
def test_paper_regions(p, expected):
    w, t_used = _w(p, 0.0, 0.4, **PAPER)
    assert t_used == pytest.approx(0.4)  # no reflection
    assert w == pytest.approx(expected)


def test_paper_beta_of_the_figure_second_teacher():
    # teacher 0.49 -> beta 0.196: just above is R_N, just below is the ramp
    assert _w(0.197, 0.0, 0.49, **PAPER)[0] == pytest.approx(-0.5)
    assert _w(0.098, 0.0, 0.49, **PAPER)[0] == pytest.approx(-0.25)


def test_assistive_loss_value_and_gradient_direction():
    g = torch.tensor([0.0, 0.0])
    t = torch.tensor([0.4, 0.4])
    p = torch.tensor([0.6, 0.3], requires_grad=True)
    loss = assistive_loss(p, g, t, **CODE)
    # (1.9 * |0.4-0.6| + (-0.45) * |0.4-0.3|) / 2
    assert float(loss.detach()) == pytest.approx((1.9 * 0.2 - 0.45 * 0.1) / 2)
    loss.backward()
    # R_P pulls P back towards the teacher; R_N pushes P away from the teacher towards G
    assert p.grad[0] > 0 and p.grad[1] > 0


def test_main_loss_regions_and_continuity_at_delta():
    g, tol = torch.tensor([0.0]), torch.tensor([0.2])
    assert float(main_loss(torch.tensor([0.1]), g, tol, factor=3.0)) == pytest.approx(0.3)
    assert float(main_loss(torch.tensor([0.5]), g, tol, factor=3.0)) == pytest.approx(
        0.25 + 0.6 - 0.04)
    for factor in (3.0, 1.0):
        below = main_loss(torch.tensor([0.2 - 1e-7]), g, tol, factor=factor)
        above = main_loss(torch.tensor([0.2 + 1e-7]), g, tol, factor=factor)
        assert float(below) == pytest.approx(float(above), abs=1e-5)
        assert float(main_loss(torch.tensor([0.2]), g, tol, factor=factor)) == pytest.approx(
            factor * 0.2)


def test_terms_weighting_and_mask():
    g = torch.zeros(1, 2, 2)
    p = torch.full((1, 2, 2), 0.6)
    t = torch.full((1, 2, 2), 0.4)
    terms = kd_loss_terms(p, g, t, t, KDLossParams.code())
    assert set(terms) == {"main", "aloss_tough", "aloss_tolerant"}
    assert float(terms["main"]) == pytest.approx(0.36 + 1.2 - 0.16)
    assert float(terms["aloss_tough"]) == pytest.approx(1.9 * 0.2)
    assert float(terms["aloss_tolerant"]) == pytest.approx(1.8 * 0.2)
    assert float(kd_total(terms)) == pytest.approx(2 * 1.4 + 0.38 + 0.36)
    # masked points do not count: point 1 is far off but invisible
    p2 = p.clone()
    p2[0, 1] = 5.0
    vis = torch.tensor([[1.0, 0.0]])
    assert float(kd_loss_terms(p2, g, t, t, mask=vis)["main"]) == pytest.approx(1.4)
    assert float(l2_loss(p, g)) == pytest.approx(0.36)
    assert float(l1_loss(p, g)) == pytest.approx(0.6)


def test_variants_and_bad_input():
    pp = KDLossParams.paper()
    assert (pp.beta_frac, pp.low_ramp, pp.reflect, pp.main_factor) == (0.4, True, False, 1.0)
    cp = KDLossParams.code()
    assert (cp.beta_frac, cp.low_ramp, cp.reflect, cp.main_factor) == (0.15, False, True, 3.0)
    assert (cp.w_main, cp.w_tough, cp.w_tol) == (2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="beta_frac"):
        KDLossParams(beta_frac=1.5)
    with pytest.raises(ValueError, match="shapes differ"):
        assistive_weight(torch.zeros(2), torch.zeros(3), torch.zeros(2), **CODE)


def test_gradient_norms_match_the_closed_form_gradients():
    """L2 = mean((p - g)^2) has gradient 2 (p - g) / N, L1 = mean|p - g| has sign(p - g) / N:
    their norms, computed by hand, are what gradient_norms returns, and the graph is kept for
    the caller's backward."""
    from tsal_dist.losses.kd import gradient_norms, l1_loss, l2_loss

    torch.manual_seed(0)
    p = torch.rand(4, 68, 2, requires_grad=True)
    g = torch.rand(4, 68, 2)
    d = p.detach() - g
    n = d.numel()
    ref, own = gradient_norms(p, l2_loss(p, g), l1_loss(p, g))
    assert ref == pytest.approx(float((2 * d / n).norm()), rel=1e-6)
    assert own == pytest.approx(float((torch.sign(d) / n).norm()), rel=1e-6)
    l2 = l2_loss(p, g)
    a, b = gradient_norms(p, l2, 3 * l2)
    assert b == pytest.approx(3 * a)
    l2.backward()  # the graph is still there
    assert p.grad is not None

"""KD-Loss (Fard & Mahoor 2022), per coordinate (docs/method_notes.md §5.4).

P = student prediction, G = ground truth, T = a teacher's prediction, all (B, K, 2) in the SAME
unit. The loop uses crop-normalised coordinates ``(px + 0.5) / S`` (the regressor's output), the
scale of KD's "hyperface" ``(112 - x) / 224`` up to sign and offset, which |.| ignores: the
main loss's ``e^2`` vs ``factor * e`` crossover sits where KD put it.

Assistive weight of one teacher, with d = signed distance of P from G measured towards the
teacher (after reflection, the teacher is always on P's side), t = |T - G| and b = beta_frac * t:

    d > t            : alpha       (R_P, the student overshoots beyond the teacher)
    b <= d <= t      : alpha_neg   (R_N, between beta and the teacher: a "negative assistant")
    0 <= d < b       : 0 (code) or alpha_neg * d / b (paper's R_L linear ramp)
    d < 0 (only when reflect=False): alpha * min(1, |d| / b) with the ramp, alpha without
                       (the dev code's opposite side; the released code reflects instead)

which is exactly the released code's ``alpha * [(P - T')(T' - G) > 0] + alpha_neg *
[(T' - P)(P - beta) >= 0]`` with T' = G + sign(P - G)|T - G|, beta = G + sign(P - G) b.
ALoss_T = mean(omega * |T' - P|). Main loss, delta = |G - T_tol|, e = |G - P|:
``factor * e`` if e <= delta else ``e^2 + factor * delta - delta^2`` (code factor 3, paper 1).

Every function returns unweighted terms; :func:`kd_total` is the one weighting place.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = ["KDLossParams", "assistive_weight", "assistive_loss", "main_loss", "kd_loss_terms",
           "kd_total", "gradient_norms", "l1_loss", "l2_loss"]


@dataclass(frozen=True)
class KDLossParams:
    """Constants of KD-Loss. Defaults = the released code (``student_train.py``)."""

    beta_frac: float = 0.15  # inner boundary beta = G + beta_frac * |T - G| (paper 0.4)
    low_ramp: bool = False  # paper's R_L: linear ramp 0 -> alpha_neg between G and beta
    reflect: bool = True  # mirror each teacher to the student's side of G (code)
    main_factor: float = 3.0  # slope of the main loss inside delta (paper figure: 1)
    alpha_tough: float = 1.9
    alpha_neg_tough: float = -0.45
    alpha_tol: float = 1.8
    alpha_neg_tol: float = -0.4
    w_main: float = 2.0  # KD = w_main * main + w_tough * aloss_tough + w_tol * aloss_tolerant
    w_tough: float = 1.0
    w_tol: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.beta_frac <= 1:
            raise ValueError(f"beta_frac must be in [0, 1], got {self.beta_frac}")
        if self.main_factor <= 0:
            raise ValueError(f"main_factor must be > 0, got {self.main_factor}")

    @classmethod
    def code(cls, **over: float | bool) -> "KDLossParams":
        """The released code's constants (the default)."""
        return replace(cls(), **over)

    @classmethod
    def paper(cls, **over: float | bool) -> "KDLossParams":
        """The paper-figure variant: beta 0.4, R_L ramp, no reflection, main factor 1."""
        return replace(cls(beta_frac=0.4, low_ramp=True, reflect=False, main_factor=1.0), **over)


def assistive_weight(pred: Tensor, gt: Tensor, teacher: Tensor, *, alpha: float,
                     alpha_neg: float, beta_frac: float, reflect: bool = True,
                     low_ramp: bool = False) -> tuple[Tensor, Tensor]:
    """Per-coordinate weight omega and the (possibly reflected) teacher T'.

    Args:
        pred, gt, teacher: same shape, same unit.
        alpha, alpha_neg: weights of the positive / negative-assistant regions.
        beta_frac: inner boundary as a fraction of |T - G|.
        reflect: mirror the teacher to P's side of G first.
        low_ramp: linear ramp in [G, beta) (and on the opposite side when not reflecting).

    Returns:
        (omega, teacher_used), both the shape of ``pred``; omega carries no gradient.
    """
    if not (pred.shape == gt.shape == teacher.shape):
        raise ValueError(f"shapes differ: pred {tuple(pred.shape)}, gt {tuple(gt.shape)}, "
                         f"teacher {tuple(teacher.shape)}")
    p, g, t_ = pred.detach(), gt.detach(), teacher.detach()
    t_dist = (t_ - g).abs()
    if reflect:
        t_used = g + torch.sign(p - g) * t_dist
        side = torch.sign(p - g)
    else:
        t_used = t_
        side = torch.sign(t_ - g)
    d = (p - g) * side  # >= 0 on the teacher's side
    # a teacher exactly at G has no side: the student is beyond it whichever way it errs
    d = torch.where(side == 0, (p - g).abs(), d)
    b = beta_frac * t_dist
    safe_b = torch.where(b > 0, b, torch.ones_like(b))
    zero = torch.zeros_like(d)
    if low_ramp:
        low = torch.where(b > 0, alpha_neg * d / safe_b, zero)
        opposite = alpha * torch.clamp(-d / safe_b, max=1.0)
        opposite = torch.where(b > 0, opposite, torch.full_like(d, alpha))
    else:
        low = zero
        opposite = torch.full_like(d, alpha)
    w = torch.where(d > t_dist, torch.full_like(d, alpha),
                    torch.where(d >= b, torch.full_like(d, alpha_neg),
                                torch.where(d >= 0, low, opposite)))
    return w, t_used


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    if m.shape != x.shape:
        m = m.unsqueeze(-1).expand_as(x)  # (B, K) visibility -> both coordinates
    return (x * m).sum() / m.sum().clamp_min(1.0)


def assistive_loss(pred: Tensor, gt: Tensor, teacher: Tensor, *, alpha: float,
                   alpha_neg: float, beta_frac: float, reflect: bool = True,
                   low_ramp: bool = False, mask: Tensor | None = None) -> Tensor:
    """ALoss_T = mean(omega * |T' - P|) over the (visible) coordinates; unweighted scalar."""
    w, t_used = assistive_weight(pred, gt, teacher, alpha=alpha, alpha_neg=alpha_neg,
                                 beta_frac=beta_frac, reflect=reflect, low_ramp=low_ramp)
    return _masked_mean(w * (t_used.detach() - pred).abs(), mask)


def main_loss(pred: Tensor, gt: Tensor, tolerant: Tensor, *, factor: float = 3.0,
              mask: Tensor | None = None) -> Tensor:
    """Loss_main: factor*e for e <= delta, e^2 + factor*delta - delta^2 beyond (mean)."""
    e = (gt - pred).abs()
    delta = (gt - tolerant).abs().detach()
    per = torch.where(e <= delta, factor * e, e * e + factor * delta - delta * delta)
    return _masked_mean(per, mask)


def kd_loss_terms(pred: Tensor, gt: Tensor, tough: Tensor, tolerant: Tensor,
                  params: KDLossParams = KDLossParams(),
                  mask: Tensor | None = None) -> dict[str, Tensor]:
    """The three unweighted KD-Loss terms.

    Args:
        pred, gt, tough, tolerant: (B, K, 2) same unit (crop-normalised in the loop).
        params: constants (code default or :meth:`KDLossParams.paper`).
        mask: (B, K) visibility (or (B, K, 2)); None = all.

    Returns:
        {"main", "aloss_tough", "aloss_tolerant"}: scalars.
    """
    kw = dict(beta_frac=params.beta_frac, reflect=params.reflect, low_ramp=params.low_ramp,
              mask=mask)
    return {
        "main": main_loss(pred, gt, tolerant, factor=params.main_factor, mask=mask),
        "aloss_tough": assistive_loss(pred, gt, tough, alpha=params.alpha_tough,
                                      alpha_neg=params.alpha_neg_tough, **kw),
        "aloss_tolerant": assistive_loss(pred, gt, tolerant, alpha=params.alpha_tol,
                                         alpha_neg=params.alpha_neg_tol, **kw),
    }


def kd_total(terms: dict[str, Tensor], params: KDLossParams = KDLossParams()) -> Tensor:
    """w_main * main + w_tough * aloss_tough + w_tol * aloss_tolerant."""
    return (params.w_main * terms["main"] + params.w_tough * terms["aloss_tough"]
            + params.w_tol * terms["aloss_tolerant"])


def l2_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared coordinate error (the teachers' and the plain student's loss)."""
    return _masked_mean((pred - gt) ** 2, mask)


def gradient_norms(pred: Tensor, reference: Tensor, loss: Tensor) -> tuple[float, float]:
    """``(||d reference / d pred||, ||d loss / d pred||)``: their ratio is the factor that gives
    ``loss`` the gradient norm of ``reference`` at the predictions (``kd.switch: matched``). Both
    losses must come from ``pred``'s graph, which is kept for the caller's backward."""
    g_ref, = torch.autograd.grad(reference, pred, retain_graph=True)
    g_loss, = torch.autograd.grad(loss, pred, retain_graph=True)
    return float(g_ref.norm()), float(g_loss.norm())


def l1_loss(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean absolute coordinate error."""
    return _masked_mean((pred - gt).abs(), mask)

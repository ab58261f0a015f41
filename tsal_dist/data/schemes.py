"""Landmark schemes: the one home of each point layout's facts (all indices 0-based).

Per scheme: its name (``model.json``'s ``landmark_scheme``), the horizontal-mirror pairs
(flip augmentation, ``model.json``'s ``flip_pairs``), the outer eye corners of the inter-ocular
NME, the eye contours whose means are the pupils of the inter-pupil NME, and the headline NME
normaliser (docs/method_notes.md section 3; the normalisers themselves are
``tsal_dist.eval.metrics``).

Who reads it: ``data.datasets`` (default flip pairs), ``eval.run`` (which normalisers to report,
through :func:`scheme_for`), ``export`` (``model.json``). ``eval.metrics`` imports nothing of
ours (tests/test_architecture.py), so its callers pass these indices in; its iBUG-68 defaults
are held equal to :data:`IBUG68` by tests/tsal_dist/data/test_schemes.py.

What does not belong here: how a dataset's files number their points (``layouts/``), geometry
(``transforms.py``). Pure Python: nothing imported but the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FlipPairs = tuple[tuple[int, int], ...]
EyeIndices = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class LandmarkScheme:
    """One landmark layout.

    Attributes:
        name: short name ("ibug68", "wflw98", "aflw19", ...), as ``model.json`` writes it.
        num_points: K.
        primary_norm: the headline NME normaliser, "inter_ocular" | "inter_pupil" |
            "face_size" | "bbox".
        flip_pairs: mirror pairs (a, b), a < b; points on no pair map to themselves. Empty:
            no pairs are known (flip augmentation then needs them passed explicitly).
        eye_corners: (left, right) outer eye corners for "inter_ocular", or None.
        pupils: (left eye indices, right eye indices) whose means are the pupils, or None.
        nose_tip: the nose tip's index (with ``eye_corners``: :func:`head_turn`), or None.
    """

    name: str
    num_points: int
    primary_norm: str
    flip_pairs: FlipPairs = ()
    eye_corners: tuple[int, int] | None = None
    pupils: EyeIndices | None = None
    nose_tip: int | None = None

    @property
    def norms(self) -> tuple[str, ...]:
        """Normalisers that can be computed for this scheme, the primary first."""
        out = [self.primary_norm]
        if self.eye_corners is not None and "inter_ocular" not in out:
            out.append("inter_ocular")
        if self.pupils is not None and "inter_pupil" not in out:
            out.append("inter_pupil")
        return tuple(out)


# iBUG 300-W / 300-VW, 68 points: jaw, brows, nose, eyes, outer lips, inner lips. Points on the
# vertical midline (8, 27-30, 33, 51, 57, 62, 66) map to themselves.
IBUG68_FLIP_PAIRS: FlipPairs = (
    (0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
    (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),
    (31, 35), (32, 34),
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
    (48, 54), (49, 53), (50, 52), (55, 59), (56, 58),
    (60, 64), (61, 63), (65, 67),
)

#: 300W / 300VW: inter-ocular 36/45 (SBR's choice, our headline); pupils = means of 36-41, 42-47.
IBUG68 = LandmarkScheme("ibug68", 68, "inter_ocular", IBUG68_FLIP_PAIRS, (36, 45),
                        (tuple(range(36, 42)), tuple(range(42, 48))), nose_tip=30)
#: WFLW: inter-ocular 60/72 (the usual choice, docs/method_notes.md 3.4); pupils = the annotated
#: pupil centres 96 and 97. No mirror pairs are recorded.
WFLW98 = LandmarkScheme("wflw98", 98, "inter_ocular", (), (60, 72), ((96,), (97,)), nose_tip=54)
#: iBUG without the jaw line (51), and without the inner mouth corners too (49; those come after
#: the eyes): inter-ocular 19/28, pupils = means of 19-24 and 25-30.
IBUG51 = LandmarkScheme("ibug51", 51, "inter_ocular", (), (19, 28),
                        (tuple(range(19, 25)), tuple(range(25, 31))), nose_tip=13)
IBUG49 = LandmarkScheme("ibug49", 49, "inter_ocular", (), (19, 28),
                        (tuple(range(19, 25)), tuple(range(25, 31))), nose_tip=13)
#: COFW: inter-ocular 8/9 (as the dASM code), no pupils.
COFW29 = LandmarkScheme("cofw29", 29, "inter_ocular", (), (8, 9), None)
#: AFLW (19-point CUHK re-annotation): face_size (sqrt(w * h) of the GT box, from the list file).
AFLW19 = LandmarkScheme("aflw19", 19, "face_size")

SCHEMES: dict[int, LandmarkScheme] = {s.num_points: s for s in
                                      (IBUG68, WFLW98, IBUG51, IBUG49, COFW29, AFLW19)}


def scheme_for(num_points: int) -> LandmarkScheme:
    """The scheme of a K-point layout: one of :data:`SCHEMES`, else ``generic<K>`` (normalised by
    "bbox", sqrt(w * h) of the visible GT points' box, with no pairs, corners or pupils).

    Raises:
        ValueError: ``num_points < 1``.
    """
    if num_points in SCHEMES:
        return SCHEMES[num_points]
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    return LandmarkScheme(f"generic{num_points}", num_points, "bbox")


def layout_problems(num_points: int, *, flip: bool = False, head_turn: bool = False) -> list[str]:
    """What a K-point layout cannot do that the settings ask of it, one ``"<key>: <why>"`` each
    (empty: nothing): ``data.flip`` needs mirror pairs, ``loss.pseudo_max_turn`` (``head_turn``)
    needs the eye corners and the nose tip. ``ExperimentConfig`` refuses the first of them, so
    that every entry point stops before any work starts."""
    scheme = scheme_for(num_points)
    out = []
    if flip and not scheme.flip_pairs:
        out.append(f"data.flip: the {scheme.name} layout ({num_points} points) has no known "
                   "mirror pairs; train without flip")
    if head_turn and (scheme.eye_corners is None or scheme.nose_tip is None):
        out.append(f"loss.pseudo_max_turn: the head turn needs the outer eye corners and the nose "
                   f"tip, not known for the {scheme.name} layout ({num_points} points); set it "
                   "to 0")
    return out


def head_turn(points: Any, scheme: LandmarkScheme) -> Any:
    """How far each face is turned sideways, from its landmarks alone: the nose tip's offset from
    the outer eye corners' midpoint along the line between them, in inter-ocular distances
    (signed; 0 for a frontal face, growing like tan(yaw); on the synthetic faces |turn| is at most
    ~0.13 for 95 % of faces within 15 deg of yaw, ~0.29 within 35 deg, ~0.5 within 55 deg).
    In-plane rotation and scale do not change it.

    Args:
        points: (..., K, 2) array or tensor of x, y.
        scheme: the layout; it needs ``eye_corners`` and ``nose_tip``.
    Returns:
        (...,) turn, the same type as ``points``.
    Raises:
        ValueError: the scheme has no eye corners or no nose tip.
    """
    if scheme.eye_corners is None or scheme.nose_tip is None:
        raise ValueError(f"landmark scheme {scheme.name}: head turn needs its outer eye corners "
                         "and nose tip, which are not known for it")
    a, b = points[..., scheme.eye_corners[0], :], points[..., scheme.eye_corners[1], :]
    e = b - a
    nose = points[..., scheme.nose_tip, :] - (a + b) / 2
    return (nose * e).sum(-1) / (e * e).sum(-1).clip(min=1e-12)

"""tsal_dist.data.schemes: the one table of landmark layouts, and the copies that must agree."""

from __future__ import annotations

import numpy as np
import pytest

from tsal_dist.data.schemes import IBUG68, SCHEMES, scheme_for
from tsal_dist.data.transforms import flip_permutation
from tsal_dist.eval import metrics


@pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=lambda s: s.name)
def test_every_scheme_is_consistent(scheme):
    k = scheme.num_points
    assert SCHEMES[k] is scheme and scheme_for(k) is scheme
    assert scheme.name.endswith(str(k))
    assert scheme.norms[0] == scheme.primary_norm
    assert set(scheme.norms) <= set(metrics.NORMS)
    # flip pairs: in range, a < b, each point in at most one pair, so the mirror is an involution
    for a, b in scheme.flip_pairs:
        assert 0 <= a < b < k
    perm = flip_permutation(k, scheme.flip_pairs)
    np.testing.assert_array_equal(perm[perm], np.arange(k))
    # the NME's points lie inside the layout, left and right distinct
    if scheme.eye_corners is not None:
        left, right = scheme.eye_corners
        assert 0 <= left < k and 0 <= right < k and left != right
    if scheme.pupils is not None:
        left_eye, right_eye = scheme.pupils
        assert left_eye and right_eye and not set(left_eye) & set(right_eye)
        assert all(0 <= i < k for i in (*left_eye, *right_eye))


def test_ibug68_mirror_maps_eyes_onto_each_other():
    perm = flip_permutation(68, IBUG68.flip_pairs)
    left, right = IBUG68.eye_corners
    assert perm[left] == right
    left_eye, right_eye = IBUG68.pupils
    assert sorted(int(perm[i]) for i in left_eye) == sorted(right_eye)


def test_scheme_norm_points():
    s68 = scheme_for(68)
    assert (s68.primary_norm, s68.eye_corners) == ("inter_ocular", (36, 45))
    assert s68.pupils == (tuple(range(36, 42)), tuple(range(42, 48)))
    s98 = scheme_for(98)
    assert (s98.primary_norm, s98.eye_corners, s98.name) == ("inter_ocular", (60, 72), "wflw98")
    assert scheme_for(7).primary_norm == "bbox"
    with pytest.raises(ValueError):
        scheme_for(0)


def test_generic_scheme_has_no_points():
    s = scheme_for(7)
    assert (s.name, s.norms, s.flip_pairs, s.eye_corners, s.pupils) == \
        ("generic7", ("bbox",), (), None, None)


def test_metrics_defaults_are_the_ibug68_scheme():
    """eval.metrics imports nothing of ours, so its iBUG-68 argument defaults are a copy."""
    assert metrics.DEFAULT_EYE_CORNERS == IBUG68.eye_corners
    assert metrics.DEFAULT_PUPILS == IBUG68.pupils


def test_export_writes_the_schemes():
    export = pytest.importorskip("tsal_dist.export")
    for k, (name, pairs, eyes) in export.SCHEMES.items():
        s = scheme_for(k)
        assert (name, pairs, eyes) == (s.name, s.flip_pairs, s.eye_corners or ())
    assert export.SCHEMES[68][1] == IBUG68.flip_pairs and len(IBUG68.flip_pairs) == 29


def test_head_turn_is_the_nose_offset_along_the_eye_line_whatever_the_rotation_and_scale():
    import math

    import numpy as np
    import pytest
    import torch

    from tsal_dist.data.schemes import AFLW19, IBUG68, WFLW98, head_turn

    pts = np.zeros((68, 2))
    pts[36], pts[45], pts[30] = (0.0, 0.0), (10.0, 0.0), (8.0, 7.0)  # 3 px right of the middle
    assert head_turn(pts, IBUG68) == pytest.approx(0.3)
    a = math.radians(40)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    moved = 2.5 * pts @ rot.T + (17.0, -4.0)
    assert head_turn(moved, IBUG68) == pytest.approx(0.3)
    other = pts.copy()
    other[30] = (2.0, 7.0)  # the nose tip 3 px towards the other corner: turned the other way
    assert head_turn(other, IBUG68) == pytest.approx(-0.3)
    both = torch.tensor(np.stack([pts, moved]))
    assert head_turn(both, IBUG68).tolist() == pytest.approx([0.3, 0.3])
    w = np.zeros((98, 2))
    w[60], w[72], w[54] = (0.0, 0.0), (4.0, 0.0), (1.0, 3.0)
    assert head_turn(w, WFLW98) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="aflw19.*nose tip"):
        head_turn(np.zeros((19, 2)), AFLW19)


def test_layout_problems_name_the_key_and_the_layout():
    from tsal_dist.data.schemes import layout_problems

    assert layout_problems(68, flip=True, head_turn=True) == []
    assert layout_problems(98, head_turn=True) == []  # WFLW: nose tip and eye corners known
    assert layout_problems(19) == []  # nothing asked
    (flip,) = layout_problems(98, flip=True)
    assert flip.startswith("data.flip: the wflw98 layout (98 points) has no known mirror pairs")
    for k, name in ((19, "aflw19"), (29, "cofw29"), (7, "generic7")):
        (turn,) = layout_problems(k, head_turn=True)
        assert turn.startswith("loss.pseudo_max_turn: ") and f"{name} layout ({k} points)" in turn
    assert [p.split(":")[0] for p in layout_problems(7, flip=True, head_turn=True)] == [
        "data.flip", "loss.pseudo_max_turn"]

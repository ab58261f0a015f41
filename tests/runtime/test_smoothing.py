import math

import numpy as np
import pytest

from tsal_runtime.smoothing import OneEuroFilter, smoothing_alpha


def test_alpha_hand_value() -> None:
    # tau = 1 / (2 pi fc); alpha = 1 / (1 + tau / dt); fc = 1 Hz, dt = 0.1 s
    tau = 1 / (2 * math.pi)
    assert smoothing_alpha(1.0, 0.1) == pytest.approx(1 / (1 + tau / 0.1))


def test_first_sample_passes_and_constant_stays() -> None:
    f = OneEuroFilter()
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(f(x, 0.0), x)
    for i in range(1, 10):
        assert np.allclose(f(x, i / 30), x)


def test_second_sample_hand_computed() -> None:
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0, d_cutoff=1.0)
    f(np.array([0.0]), 0.0)
    out = f(np.array([10.0]), 0.1)  # beta 0: plain low-pass at 1 Hz
    a = smoothing_alpha(1.0, 0.1)
    assert out[0] == pytest.approx(a * 10.0)


def test_reduces_jitter_and_beta_reduces_lag() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(200) / 30
    noisy = 100 + rng.normal(0, 1.0, size=(200, 1))
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    out = np.array([f(n, ti) for n, ti in zip(noisy, t)])
    assert np.diff(out[50:, 0]).std() < 0.3 * np.diff(noisy[50:, 0]).std()
    ramp = (t * 300)[:, None]  # fast motion, 300 px/s
    lag = {}
    for beta in (0.0, 1.0):
        f = OneEuroFilter(min_cutoff=1.0, beta=beta)
        out = np.array([f(r, ti, scale=100.0) for r, ti in zip(ramp, t)])
        lag[beta] = float(ramp[-1, 0] - out[-1, 0])
    assert lag[1.0] < 0.5 * lag[0.0]


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        OneEuroFilter(min_cutoff=0)


def test_face_filter_follows_rigid_motion_and_calms_the_shape() -> None:
    """A face translating at constant speed with per-point noise: the face filter keeps up with
    the translation like the point filter does, and removes more of the shape noise."""
    from tsal_runtime.smoothing import FaceFilter

    rng = np.random.default_rng(0)
    shape = rng.uniform(-50, 50, (68, 2))
    n, fps = 200, 25.0
    truth = np.stack([shape + [3.0 * t, 0.0] for t in range(n)])  # 75 px/s to the right
    noisy = truth + rng.normal(0, 1.5, truth.shape)
    outs = {}
    for name, f in (("points", OneEuroFilter(0.3, 20.0)), ("face", FaceFilter(0.3, 20.0, 1.0,
                                                                               0.1, 1.0))):
        outs[name] = np.stack([f(p, t / fps, scale=140.0) for t, p in enumerate(noisy)])
    for name, out in outs.items():
        lag = (truth[-50:] - out[-50:]).mean(axis=(0, 1))[0]
        assert abs(lag) < 3.0, (name, lag)  # follows the motion within a few px
    shape_err = {k: np.abs((o - o.mean(1, keepdims=True)) - (truth - truth.mean(1, keepdims=True))
                           )[50:].mean() for k, o in outs.items()}
    assert shape_err["face"] < 0.6 * shape_err["points"], shape_err
    # a still face stays where it is, exactly
    f = FaceFilter()
    for t in range(5):
        out = f(shape, t / fps, scale=140.0)
    np.testing.assert_allclose(out, shape, atol=1e-9)


def test_filters_equal_the_one_euro_definition_step_by_step() -> None:
    """The in-place filters against the textbook recursion written out here (alpha from the
    cutoff, speed low-passed at d_cutoff, cutoff = min_cutoff + beta |speed|), and the face
    filter against its definition: centre, size and shape each One-Euro filtered, output
    centre + size * shape. Irregular time steps, a repeated stamp, a jump."""
    import math

    from tsal_runtime.smoothing import FaceFilter

    def alpha(c, dt):
        return 1.0 / (1.0 + 1.0 / (2 * math.pi * np.asarray(c, float)) / dt)

    class Reference:
        def __init__(self, mc, beta, dc=1.0):
            self.mc, self.beta, self.dc, self.x = mc, beta, dc, None

        def __call__(self, x, t, scale=1.0):
            if self.x is None:
                self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
                return x.copy()
            dt = t - self.t
            if dt <= 0:
                return self.x.copy()
            ad = alpha(self.dc, dt)
            self.dx = ad * (x - self.x) / dt / scale + (1 - ad) * self.dx
            a = alpha(self.mc + self.beta * np.abs(self.dx), dt)
            self.x, self.t = a * x + (1 - a) * self.x, t
            return self.x.copy()

    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 200, (68, 2))
    stamps = np.cumsum(rng.uniform(0.01, 0.06, 120))
    stamps[40] = stamps[39]  # a repeated stamp returns the last output
    f, ref = OneEuroFilter(0.3, 20.0), Reference(0.3, 20.0)
    pos, size, shp = Reference(0.3, 20.0), Reference(0.3, 20.0), Reference(0.1, 1.0)
    face = FaceFilter(0.3, 20.0, 1.0, 0.1, 1.0)
    for i, t in enumerate(stamps):
        x = pts + rng.normal(0, 2, pts.shape) + (30.0 if i == 80 else 0.0) + 0.5 * i
        np.testing.assert_allclose(f(x, t, scale=140.0), ref(x, t, scale=140.0), atol=1e-9)
        c = x.mean(0)
        s = np.sqrt(((x - c) ** 2).sum(-1).mean())
        want = pos(c, t, 140.0) + size(np.array([s]), t, 140.0)[0] * shp((x - c) / s, t)
        np.testing.assert_allclose(face(x, t, scale=140.0), want, atol=1e-9)


def test_filter_faces_equals_one_filter_per_face() -> None:
    """The vectorised pass over several faces gives what each filter gives alone: faces that come
    and go, a repeated stamp, a degenerate face (all points equal), a points filter and a face
    filter with other parameters in the same call."""
    from tsal_runtime.smoothing import FaceFilter, filter_faces

    def make(kind: int):
        if kind == 0:
            return FaceFilter(0.3, 20.0, 1.0, 0.1, 1.0)
        if kind == 1:
            return OneEuroFilter(0.5, 5.0)
        return FaceFilter(1.0, 50.0, 1.0, 0.3, 1.0)

    rng = np.random.default_rng(7)
    base = [rng.uniform(0, 300, (68, 2)) for _ in range(6)]
    kinds = [0, 0, 0, 1, 2, 0]
    batched = [make(k) for k in kinds]
    alone = [make(k) for k in kinds]
    stamps = np.cumsum(rng.uniform(0.01, 0.05, 60))
    stamps[30] = stamps[29]
    for n, t in enumerate(stamps):
        present = [i for i in range(6) if not (i == 2 and 10 <= n < 20)]  # face 2 leaves
        if n == 20:
            batched[2], alone[2] = make(0), make(0)  # and comes back as a new track
        xs = [base[i] + rng.normal(0, 1.5, (68, 2)) + 0.7 * n for i in present]
        if n == 45:
            xs[0] = np.full((68, 2), 5.0)  # degenerate: size 0
        scales = [100.0 + 10 * i for i in present]
        got = filter_faces([batched[i] for i in present], xs, float(t), scales)
        want = [alone[i](x, float(t), scale=s) for i, x, s in zip(present, xs, scales)]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-9)
    # and the face filters of equal parameters really went through one pass (one state array)
    base = batched[0]._shape._x.base
    assert base is not None and batched[1]._shape._x.base is base
    assert batched[4]._shape._x.base is not base  # other parameters: filtered on its own
    with pytest.raises(ValueError, match="same filter twice"):
        filter_faces([batched[0], batched[0]], xs[:2], float(stamps[-1]) + 1.0, scales[:2])

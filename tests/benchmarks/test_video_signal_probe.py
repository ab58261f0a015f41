"""The video signal probe: the structure fit against exact and duplicated-frame computations, the
tracker against a known translation, the list's frames grouped per video, and the scores by
turn paired with the teacher's own."""

from __future__ import annotations

import numpy as np
import pytest
from _scripts import load_script


def _rigid_video(frames: int = 12, points: int = 68, seed: int = 0) -> np.ndarray:
    """One random 3D shape through a random affine camera per frame: exactly rank 3."""
    rng = np.random.default_rng(seed)
    shape = rng.normal(size=(points, 3))
    cams = rng.normal(size=(frames, 2, 3))
    shifts = rng.normal(size=(frames, 1, 2)) * 10
    return np.einsum("fij,nj->fni", cams, shape) + shifts


def test_structure_fit_reproduces_a_rigid_video_and_removes_independent_noise():
    mod = load_script("video_signal_probe")
    p = _rigid_video()
    np.testing.assert_allclose(mod.structure_fit(p, 3), p, atol=1e-9)
    noisy = p + np.random.default_rng(1).normal(scale=0.05, size=p.shape)
    err_noisy = np.linalg.norm(noisy - p, axis=-1).mean()
    err_fit = np.linalg.norm(mod.structure_fit(noisy, 3) - p, axis=-1).mean()
    assert err_fit < 0.5 * err_noisy  # 12 frames x 2 rows against rank 3
    # rank 2 cannot hold a 3D shape
    assert np.linalg.norm(mod.structure_fit(p, 2) - p, axis=-1).mean() > 0.1


def test_structure_fit_weight_is_a_duplicated_frame():
    """Weight 3 on frame 0 = frame 0 listed three times (the same weighted least squares)."""
    mod = load_script("video_signal_probe")
    p = _rigid_video(seed=2) + np.random.default_rng(3).normal(scale=0.3, size=(12, 68, 2))
    w = np.ones(12)
    w[0] = 3.0
    weighted = mod.structure_fit(p, 3, w)
    duplicated = mod.structure_fit(np.concatenate([p[:1], p[:1], p]), 3)
    np.testing.assert_allclose(weighted, duplicated[2:], atol=1e-9)
    assert not np.allclose(weighted, mod.structure_fit(p, 3))
    with pytest.raises(ValueError, match="positive frame weights"):
        mod.structure_fit(p, 3, np.zeros(12))
    with pytest.raises(ValueError, match="12 positive"):
        mod.structure_fit(p, 3, np.ones(5))


def test_track_follows_a_known_translation_both_ways():
    import cv2

    mod = load_script("video_signal_probe")
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.uniform(size=(160, 160)) * 255).astype(np.uint8), (0, 0), 2.0)
    step = np.array([1.5, -0.75])  # px per frame
    frames = []
    for t in range(7):
        m = np.float32([[1, 0, step[0] * t], [0, 1, step[1] * t]])
        frames.append(cv2.warpAffine(base, m, (160, 160), borderMode=cv2.BORDER_REFLECT))
    start = 3
    pts = rng.uniform(50, 110, size=(10, 2))
    got = mod.track(frames, pts, start)
    want = pts[None] + (np.arange(7) - start)[:, None, None] * step
    np.testing.assert_allclose(got, want, atol=0.1)
    np.testing.assert_array_equal(got[start], pts)


def test_video_frames_groups_rows_per_video_in_frame_order(tmp_path):
    mod = load_script("video_signal_probe")
    lst = tmp_path / "v.lst"
    lst.write_text("a.avi#1 a1.pts 0 0 9 9\nb.avi#0 b0.pts 0 0 9 9\na.avi#0 a0.pts 0 0 9 9\n")
    got = mod.video_frames(lst)
    assert got == [(tmp_path / "a.avi", [2, 0]), (tmp_path / "b.avi", [1])]
    lst.write_text("a.avi#1 a1.pts 0 0 9 9\n")
    with pytest.raises(SystemExit, match="a.avi does not list every frame"):
        mod.video_frames(lst)
    lst.write_text("a.png a.pts 0 0 9 9\n")
    with pytest.raises(SystemExit, match="row 1 is not a video frame"):
        mod.video_frames(lst)


def test_signals_on_a_rendered_video_with_exact_landmarks():
    """Given the ground truth as the teacher's landmarks: own is exact, the tracked and ground
    truth tracked targets are the same, the anchor frame is left out, and a richer shape model
    fits the ground truth closer."""
    from tsal_dist.data.synthetic.video import render_video

    mod = load_script("video_signal_probe")
    frames, lms, _ = render_video(np.random.default_rng(4), 10, 128)
    grey = [np.ascontiguousarray(f[..., 1]) for f in frames]
    videos = [("clip", list(range(10)))]
    got = mod.signals(lms, lms, videos, frames_of=lambda _path: grey)
    np.testing.assert_array_equal(got["own"], lms)
    np.testing.assert_array_equal(got["tracked"], got["gt tracked"])
    nan_rows = np.isnan(got["tracked"]).all((1, 2))
    assert nan_rows.sum() == 1
    scores = mod.by_turn(got, lms)
    assert scores["own"]["all"] == 0.0
    assert scores["gt structure-r5"]["all"] < scores["gt structure-r3"]["all"] < 0.05
    assert 0 < scores["tracked"]["all"] < 0.1
    with pytest.raises(SystemExit, match="9 frames decoded, 10 listed"):
        mod.signals(lms, lms, videos, frames_of=lambda _path: grey[:9])


def test_signals_follow_the_teacher_and_are_scored_against_the_ground_truth():
    """A teacher that sees the most turned frame as frontal (its nose tip on the eye line's
    midpoint there) and is off by a known shift elsewhere: the anchor is where the TEACHER sees
    the face most frontal, for its landmarks and the ground truth's alike; the frontal weights
    come from its turn; every score is the plain mean of the per-frame NME against the ground
    truth, by the true turn, and the tracked rows are compared with its own on the same frames."""
    from tsal_dist.data.schemes import IBUG68, head_turn
    from tsal_dist.data.synthetic.video import render_video

    mod = load_script("video_signal_probe")
    frames, lms, _ = render_video(np.random.default_rng(5), 10, 128)
    lms = np.asarray(lms, np.float64)
    grey = [np.ascontiguousarray(f[..., 1]) for f in frames]
    true_turn = np.abs(head_turn(lms, IBUG68))
    k = int(np.argmax(true_turn))
    assert k != int(np.argmin(true_turn)) and true_turn[k] > 0.05
    preds = lms + np.array([0.8, -0.5])
    a, b = preds[k, IBUG68.eye_corners[0]], preds[k, IBUG68.eye_corners[1]]
    preds[k, IBUG68.nose_tip] += (a + b) / 2 - preds[k, IBUG68.nose_tip]  # turn 0 for it
    got = mod.signals(preds, lms, [("clip", list(range(10)))], frames_of=lambda _path: grey)

    for name in ("tracked", "gt tracked"):
        assert np.flatnonzero(np.isnan(got[name]).all((1, 2))).tolist() == [k]
    # the ground truth carried from the teacher's anchor, not from the truly most frontal frame
    np.testing.assert_allclose(got["gt tracked"][k - 1 if k else 1],
                               mod.track(grey, lms[k], k)[k - 1 if k else 1])
    w = np.exp(-(np.abs(head_turn(preds, IBUG68)) / 0.1) ** 2) + 1e-3
    np.testing.assert_allclose(got["structure-frontal-r3"], mod.structure_fit(preds, 3, w))
    np.testing.assert_allclose(got["structure-r4"], mod.structure_fit(preds, 4))
    np.testing.assert_allclose(got["gt structure-r3"], mod.structure_fit(lms, 3))

    def nme(x: np.ndarray) -> np.ndarray:  # per frame, inter-ocular, written out
        iod = np.linalg.norm(lms[:, 36] - lms[:, 45], axis=-1)
        return np.linalg.norm(x - lms, axis=-1).mean(1) / iod

    scores = mod.by_turn(got, lms)
    own, tracked = nme(preds), nme(got["tracked"])
    keep = np.arange(10) != k
    assert scores["own"]["all"] == pytest.approx(own.mean())
    assert scores["tracked"]["all"] == pytest.approx(tracked[keep].mean())
    assert scores["tracked"]["own_same_frames"]["all"] == pytest.approx(own[keep].mean())
    assert scores["structure-r3"]["own_same_frames"]["all"] == pytest.approx(own.mean())
    for i, (lo, hi) in enumerate(zip(mod.TURN_BINS[:-1], mod.TURN_BINS[1:])):
        inside = (true_turn >= lo) & (true_turn < hi)
        if inside.any():
            assert scores["own"]["bins"][i] == pytest.approx(own[inside].mean())
        else:
            assert scores["own"]["bins"][i] is None
        inside &= keep
        if inside.any():
            assert scores["tracked"]["own_same_frames"]["bins"][i] == pytest.approx(
                own[inside].mean())
    assert scores["_share"] == pytest.approx([
        ((true_turn >= lo) & (true_turn < hi)).mean()
        for lo, hi in zip(mod.TURN_BINS[:-1], mod.TURN_BINS[1:])])


def test_summary_pairs_each_signal_with_the_teachers_own_per_run():
    mod = load_script("video_signal_probe")
    nb = len(mod.TURN_BINS) - 1

    def run(name: str, own: float, sig: float) -> dict:
        o = {"all": own, "bins": [own] * (nb - 1) + [None]}
        return {"run": name, "nme": {
            "own": {**o, "own_same_frames": o},
            "structure-r3": {"all": sig, "bins": [sig] * (nb - 1) + [None],
                             "own_same_frames": o},
            # a target missing on some frames: paired with the teacher's own on those frames
            "tracked": {"all": sig, "bins": [sig] * (nb - 1) + [None],
                        "own_same_frames": {"all": own + 0.01, "bins": [own] * (nb - 1) + [None]}},
            "_share": [1.0 / nb] * nb}}

    runs = [run("supervised-L50-s0", 0.06, 0.05), run("supervised-L50-s1", 0.07, 0.07),
            run("tsal-published-queue-L50-s0", 0.08, 0.09)]
    rows = mod.summarise(runs)
    sup = {r["signal"]: r for r in rows if r["method"] == "supervised"}
    assert sup["own"]["all"]["delta_vs_own"] is None
    d = sup["structure-r3"]["all"]["delta_vs_own"]
    assert d["per_seed"] == pytest.approx([-0.01, 0.0]) and d["n"] == 2
    assert sup["structure-r3"]["0"]["nme_mean"] == pytest.approx(0.06)
    assert sup["structure-r3"][str(nb - 1)]["nme_mean"] is None
    d = sup["tracked"]["all"]["delta_vs_own"]
    assert d["per_seed"] == pytest.approx([-0.02, -0.01])
    tsal = {r["signal"]: r for r in rows if r["method"] == "tsal-published-queue"}
    assert tsal["structure-r3"]["all"]["delta_vs_own"]["mean"] == pytest.approx(0.01)
    md = mod.markdown({"command": "x", "machine": "m", "seconds": 1.0, "summary": rows,
                       "runs": [{**r, "frames": 10, "videos": 1} for r in runs]})
    assert "| structure-r3 | 6.00, -0.50 [" in md
    assert "## supervised (2 runs)" in md and "## tsal-published-queue (1 runs)" in md


def test_track_window_is_used_and_the_cli_refuses_bad_sizes(capsys):
    """The window reaches the tracker (a 5 px window tracks a noisy texture differently from the
    default 21 px one, which follows it); the CLI refuses an even window and a frame under 32 px
    with one usage line, before any work."""
    import cv2

    mod = load_script("video_signal_probe")
    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur((rng.uniform(size=(160, 160)) * 255).astype(np.uint8), (0, 0), 1.0)
    base = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    frames = [cv2.warpAffine(base, np.float32([[1, 0, 2.5 * t], [0, 1, 0]]), (160, 160),
                             borderMode=cv2.BORDER_REFLECT) for t in range(3)]
    pts = rng.uniform(60, 100, size=(12, 2))
    want = pts[None] + np.arange(3)[:, None, None] * np.array([2.5, 0.0])
    default = mod.track(frames, pts, 0)
    np.testing.assert_array_equal(default, mod.track(frames, pts, 0, window=mod.LK_WINDOW))
    assert np.abs(default - want).max() < 0.2
    assert not np.allclose(mod.track(frames, pts, 0, window=5), default, atol=1e-3)
    for argv, msg in ((["--lk-window", "20"], "--lk-window 20: must be an odd"),
                      (["--video-size", "16"], "--video-size 16: must be at least 32")):
        with pytest.raises(SystemExit) as e:
            mod.main(["--runs", "nowhere", *argv])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err


def test_frame_width_reads_the_header(tmp_path):
    import cv2

    mod = load_script("video_signal_probe")
    path = tmp_path / "v.avi"
    vw = cv2.VideoWriter(str(path), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter_fourcc(*"MJPG"), 25.0,
                         (48, 32))
    for t in range(3):
        vw.write(np.full((32, 48, 3), 40 * t, np.uint8))
    vw.release()
    assert mod.frame_width(path) == 48 == mod.grey_frames(path)[0].shape[1]
    (tmp_path / "x.avi").write_bytes(b"not a video")
    with pytest.raises(SystemExit, match="x.avi: cannot read its frame size"):
        mod.frame_width(tmp_path / "x.avi")

"""The domain probe: each set widens exactly its factor, the sets show the same faces, the jaw /
inner split against a hand computation, and the paired summary."""

from __future__ import annotations

import dataclasses
import statistics

import numpy as np
import pytest
from _scripts import load_script

from tsal_dist.config.experiment import NARROW_DOMAIN, DomainConfig
from tsal_dist.data.formats import read_list, read_pts


def test_each_set_widens_only_its_factor():
    mod = load_script("domain_probe")
    sets = mod.factor_domains()
    assert sets["narrow"] == NARROW_DOMAIN and sets["wide"] == DomainConfig()
    changed = {name: {f.name for f in dataclasses.fields(d)
                      if getattr(d, f.name) != getattr(NARROW_DOMAIN, f.name)}
               for name, d in sets.items()}
    assert changed["yaw 55"] == changed["yaw 35"] == {"yaw_max_deg"}
    assert sets["yaw 35"].yaw_max_deg == 35 and sets["yaw 55"].yaw_max_deg == 55
    assert changed["pitch + roll"] == {"pitch_max_deg", "roll_max_deg"}
    for name, field in (("occluders", "occluder_rate"), ("side light", "side_light"),
                        ("expression", "expression"), ("blur", "blur_rate")):
        assert changed[name] == {field}
        assert getattr(sets[name], field) == getattr(DomainConfig(), field)


def test_sets_render_the_same_faces(tmp_path):
    """Blur changes pixels, not geometry: the blur set's landmarks are the narrow set's; a wider
    yaw moves them (the same identity turned further)."""
    mod = load_script("domain_probe")
    lists = mod.make_sets(tmp_path, images=3, size=64, seed=5)
    pts = {name: [read_pts(e.annotation)[0] for e in read_list(p)] for name, p in lists.items()}
    assert all(len(v) == 3 for v in pts.values())
    for a, b in zip(pts["narrow"], pts["blur"]):
        np.testing.assert_array_equal(a, b)
    assert any(not np.allclose(a, b) for a, b in zip(pts["narrow"], pts["yaw 55"]))
    before = {p: p.stat().st_mtime_ns for p in lists.values()}
    assert mod.make_sets(tmp_path, images=3, size=64, seed=5) == lists  # cached, not re-rendered
    assert {p: p.stat().st_mtime_ns for p in lists.values()} == before


def test_split_nme_by_hand():
    mod = load_script("domain_probe")
    gts = np.zeros((2, 68, 2))
    gts[:, 45, 0] = 10.0  # inter-ocular distance 10 (point 36 at the origin)
    preds = gts.copy()
    preds[0, 3] += (3.0, 4.0)  # a jaw point off by 5 -> 0.5
    preds[1, 50] += (0.0, 2.0)  # an inner point off by 2 -> 0.2
    got = mod.split_nme(preds, gts)
    assert got["jaw"] == pytest.approx(0.5 / (2 * 17))
    assert got["inner"] == pytest.approx(0.2 / (2 * 51))
    assert got["all"] == pytest.approx(0.7 / (2 * 68))


def test_summary_pairs_sets_with_the_narrow_set_per_run():
    mod = load_script("domain_probe")

    def run(name, narrow, yaw, wide):
        return {"run": name, "scores": {
            s: {"nme": v, "nme_jaw": v, "nme_inner": v, "fr@0.08": 0.0}
            for s, v in (("narrow", narrow), ("yaw 55", yaw), ("wide", wide))}}

    runs = [run("supervised-L50-s0", 0.04, 0.07, 0.12), run("supervised-L50-s1", 0.05, 0.09, 0.13),
            run("tsal-L50-s0", 0.04, 0.05, 0.10)]
    rows = {(r["method"], r["set"]): r for r in mod.summarise(runs)}
    yaw = rows[("supervised", "yaw 55")]
    assert yaw["delta"]["mean"] == pytest.approx(statistics.fmean([0.03, 0.04]))
    assert yaw["share_of_gap"] == pytest.approx(0.035 / statistics.fmean([0.08, 0.08]))
    assert rows[("supervised", "wide")]["share_of_gap"] == pytest.approx(1.0)
    assert "delta" not in rows[("supervised", "narrow")]
    assert rows[("tsal", "yaw 55")]["delta"]["n"] == 1  # one run: no interval
    assert "| supervised | yaw 55 |" in mod.markdown(
        {"command": "c", "machine": "m", "seconds": 1, "images": 3, "image_size": 64, "seed": 1,
         "runs": runs, "summary": mod.summarise(runs)})


def test_video_turns_bins_by_the_true_turn_and_limits_by_the_predicted_one():
    """Four frames with true |turn| 0, 0.1, 0.25, 0.5; the prediction halves each turn (a frontal
    bias) and 20 points are off by 1 px more on each frame: bins, slope and what a limit keeps,
    against values computed here."""
    mod = load_script("domain_probe")
    true_turns, pred_turns = [0.0, 0.1, 0.25, 0.5], [0.0, 0.05, 0.125, 0.25]
    gts, preds = np.zeros((4, 68, 2)), np.zeros((4, 68, 2))
    for i, (tt, tp) in enumerate(zip(true_turns, pred_turns)):
        for arr, t in ((gts, tt), (preds, tp)):
            arr[i, :, 1] = 50.0
            arr[i, 36], arr[i, 45] = (0.0, 0.0), (10.0, 0.0)
            arr[i, 30] = (5.0 + 10.0 * t, 6.0)
        preds[i, 48:, 1] += i
    got = mod.video_turns(preds, gts)
    # 20 points off by i px, the nose tip by 10 (true - predicted turn) px; inter-ocular 10
    nme = [(20 * i + 10 * (tt - tp)) / 68 / 10
           for i, (tt, tp) in enumerate(zip(true_turns, pred_turns))]
    assert got["frames"] == 4 and got["nme"] == pytest.approx(np.mean(nme))
    assert got["turn_slope"] == pytest.approx(0.5) and got["turn_corr"] == pytest.approx(1.0)
    bins = {(b["lo"], b["hi"]): b for b in got["bins"]}
    assert bins[(0.0, 0.13)]["share"] == 0.5
    assert bins[(0.0, 0.13)]["nme"] == pytest.approx(np.mean(nme[:2]))
    assert bins[(0.2, 0.29)]["nme"] == pytest.approx(nme[2])
    assert bins[(0.13, 0.2)]["nme"] is None
    lim = {x["limit"]: x for x in got["limits"]}
    assert lim[0.15]["kept"] == 0.75  # predicted 0, 0.05, 0.125 kept; 0.25 dropped
    assert lim[0.15]["nme_kept"] == pytest.approx(np.mean(nme[:3]))
    assert lim[0.15]["nme_dropped"] == pytest.approx(nme[3])
    assert lim[0.3]["kept"] == 1.0 and lim[0.3]["nme_dropped"] is None


def _video_points(lst) -> np.ndarray:
    """(videos, frames, 68, 2) from an annotated video list, in list order (video, then frame)."""
    entries = read_list(lst)
    videos = list(dict.fromkeys(e.image.rsplit("#", 1)[0] for e in entries))
    pts = np.stack([read_pts(e.annotation)[0] for e in entries])
    return pts.reshape(len(videos), -1, *pts.shape[1:])


def test_videos_at_renders_the_runs_own_videos_at_another_size(tmp_path, monkeypatch):
    """At the run's own size the re-rendered videos ARE the run's (same landmarks, same frames);
    at twice the size the landmarks are twice the run's up to one constant shift per video."""
    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.data.lists import resolve_data
    from tsal_dist.data.synthetic import dataset_lists

    mod = load_script("domain_probe")
    cfg = with_overrides(ExperimentConfig(), {
        "data.cache_dir": str(tmp_path / "cache"), "data.synthetic.images": 3,
        "data.synthetic.test_images": 2, "data.synthetic.videos": 2,
        "data.synthetic.test_videos": 1, "data.synthetic.frames": 4,
        "data.synthetic.image_size": 64, "data.synthetic.seed": 7})
    own_list = resolve_data(cfg).unlabeled[0].with_suffix(".lst")
    assert own_list == dataset_lists(own_list.parents[1])["videos_train"]
    own = _video_points(own_list)
    same = mod.videos_at(cfg, 64, tmp_path / "again")
    np.testing.assert_array_equal(_video_points(same), own)
    own_avi = [e.image.rsplit("#", 1)[0] for e in read_list(own_list)][0]
    same_avi = [e.image.rsplit("#", 1)[0] for e in read_list(same)][0]
    assert open(own_avi, "rb").read() == open(same_avi, "rb").read()

    big = _video_points(mod.videos_at(cfg, 128, tmp_path / "again"))
    shift = big - 2 * own
    assert shift.shape == (2, 4, 68, 2)
    # .pts files keep 3 decimals: each shift is within 0.0015 px of the exact one
    np.testing.assert_allclose(shift, shift[:, :1, :1].repeat(4, 1).repeat(68, 2), atol=3e-3)
    assert np.abs(shift).max() < 3  # px: the frame margin, not a different face
    # cached: the same folder is reused, not rendered again
    import tsal_dist.data.synthetic.dataset as dataset

    def no_render(*a, **k):
        raise AssertionError("rendered again")

    monkeypatch.setattr(dataset, "generate_dataset", no_render)
    again = mod.videos_at(cfg, 128, tmp_path / "again")
    np.testing.assert_array_equal(_video_points(again), big)


def test_videos_at_refuses_what_it_cannot_render(tmp_path):
    from tsal_dist.config import ExperimentConfig, with_overrides

    mod = load_script("domain_probe")
    real = with_overrides(ExperimentConfig(), {"data.root": str(tmp_path),
                                               "data.labeled_lists": ["a.lst"]})
    with pytest.raises(SystemExit, match="not synthetic"):
        mod.videos_at(real, 256)
    novideo = with_overrides(ExperimentConfig(), {"data.synthetic.videos": 0})
    with pytest.raises(SystemExit, match="no training videos"):
        mod.videos_at(novideo, 256)

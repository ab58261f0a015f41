"""Synthetic face generator: exact ground truth, real formats, determinism, smooth videos."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from tsal_dist.data import synthetic as syn
from tsal_dist.data.formats import landmark_box, read_list, read_pts, split_video_ref
from tsal_dist.data.synthetic import dataset as syn_dataset

SIZES = dict(images=5, test_images=3, videos=2, test_videos=1, frames=6, image_size=64, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return syn.generate_dataset(tmp_path_factory.mktemp("syn") / "d", **SIZES, progress=False)


def _norm(p: str) -> Path:
    return Path(os.path.normpath(p))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes(dataset: Path, tmp_path: Path) -> None:
    again = syn.generate_dataset(tmp_path / "again", **SIZES, progress=False)
    a, b = _files(dataset), _files(again)
    assert sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    other = syn.generate_dataset(tmp_path / "other", **{**SIZES, "seed": 4, "videos": 0,
                                                         "test_videos": 0}, progress=False)
    assert (other / "300W/train/00000.jpg").read_bytes() != a["300W/train/00000.jpg"]


def test_layout_and_lists_complete(dataset: Path) -> None:
    lists = syn.dataset_lists(dataset)
    assert set(lists) == {"train", "test", "videos_train_unlabeled", "videos_train", "videos_test"}
    train, test = read_list(lists["train"]), read_list(lists["test"])
    assert len(train) == SIZES["images"] and len(test) == SIZES["test_images"]
    assert _norm(train[0].image) == dataset / "300W/train/00000.jpg"
    assert _norm(test[2].annotation) == dataset / "300W/test/00002.pts"
    none = read_list(lists["videos_train_unlabeled"])
    lab = read_list(lists["videos_train"])
    vtest = read_list(lists["videos_test"])
    assert len(none) == len(lab) == SIZES["videos"] * SIZES["frames"]
    assert len(vtest) == SIZES["test_videos"] * SIZES["frames"]
    assert all(e.annotation is None for e in none)
    assert [(e.image, e.box) for e in none] == [(e.image, e.box) for e in lab]
    refs = [split_video_ref(e.image) for e in lab]
    assert [(_norm(v), t) for v, t in refs[:SIZES["frames"]]] == [
        (dataset / "300VW/v001/vid.avi", t) for t in range(SIZES["frames"])]
    for e, (vid, t) in zip(lab, refs):  # 1-based file numbering = frame index + 1
        assert _norm(e.annotation) == _norm(vid).parent / "annot" / f"{t + 1:06d}.pts"
    for e in train + test + lab + vtest:
        path = split_video_ref(e.image)[0] if e.is_video_frame else e.image
        assert Path(path).is_file() and Path(e.annotation).is_file()
    # the lists hold paths relative to lists/, so the dataset can be moved
    first = (dataset / "lists/synthetic.videos.train.none").read_text().split()[0]
    assert first == "../300VW/v001/vid.avi#0"


def test_ground_truth_round_trip(dataset: Path) -> None:
    """read_list + read_pts give back exactly what the renderer drew (to the 3 written decimals)."""
    for i, e in enumerate(read_list(syn.dataset_lists(dataset)["train"])):
        pts, vis = read_pts(e.annotation, 68)
        _, lm, _ = syn.render_image(np.random.default_rng([SIZES["seed"], 1, i]),
                                    SIZES["image_size"])
        assert pts.shape == (68, 2) and vis.tolist() == [1.0] * 68
        np.testing.assert_allclose(pts, lm, atol=6e-4)
        # detector-like box: near the tight landmark box, not equal to it
        tb = np.array(landmark_box(pts))
        size = max(tb[2] - tb[0], tb[3] - tb[1])
        assert np.abs(np.array(e.box) - tb).max() <= 0.16 * size
    frames, lms, _ = syn.render_video(np.random.default_rng([SIZES["seed"], 3, 0]),
                                      SIZES["frames"], SIZES["image_size"])
    lab = read_list(syn.dataset_lists(dataset)["videos_train"])[:SIZES["frames"]]
    for t, e in enumerate(lab):
        pts, _ = read_pts(e.annotation, 68)
        np.testing.assert_allclose(pts, lms[t], atol=6e-4)
        assert np.abs(np.array(e.box) - landmark_box(lms[t])).max() <= 1.0  # tight box


def test_points_inside_image(dataset: Path) -> None:
    s = SIZES["image_size"]
    for name in ("train", "test", "videos_test"):
        for e in read_list(syn.dataset_lists(dataset)[name]):
            pts, _ = read_pts(e.annotation, 68)
            inside = ((pts >= 0) & (pts <= s - 1)).all(1)
            assert inside.mean() >= 0.95, e.annotation


def test_videos_decode_with_decord_and_cv2(dataset: Path) -> None:
    import decord

    avi = dataset / "300VW/v002/vid.avi"
    cap = cv2.VideoCapture(str(avi))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == SIZES["frames"]
    cv_frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        cv_frames.append(f[..., ::-1])
    cap.release()
    assert len(cv_frames) == SIZES["frames"]
    vr = decord.VideoReader(str(avi))
    assert len(vr) == SIZES["frames"]
    last = vr[SIZES["frames"] - 1].asnumpy()  # random access
    assert last.shape == (SIZES["image_size"], SIZES["image_size"], 3)
    assert np.abs(last.astype(int) - cv_frames[-1].astype(int)).mean() < 4
    # the written frames are what render_video produced (up to MJPEG loss)
    frames, _, _ = syn.render_video(np.random.default_rng([SIZES["seed"], 3, 1]),
                                    SIZES["frames"], SIZES["image_size"])
    def smooth(x: np.ndarray) -> np.ndarray:  # MJPEG drops the sensor noise and chroma detail
        return cv2.GaussianBlur(x.astype(np.float32), (0, 0), 1.5)

    err = np.abs(smooth(frames[-1]) - smooth(last)).mean()
    other = syn.render_video(np.random.default_rng([SIZES["seed"], 3, 0]), 1, SIZES["image_size"])
    assert err < 4 and err < 0.25 * np.abs(smooth(other[0][0]) - smooth(last)).mean()


def test_video_motion_is_smooth() -> None:
    n = 40
    _, lms, _ = syn.render_video(np.random.default_rng(11), n, 64)
    iod = np.linalg.norm(lms[:, 36] - lms[:, 45], axis=1)  # outer eye corners
    step = np.linalg.norm(np.diff(lms, axis=0), axis=2)  # (n-1, 68)
    non_lid = np.setdiff1d(np.arange(68), [37, 38, 40, 41, 43, 44, 46, 47])  # blinks are fast
    assert (step[:, non_lid].mean(1) / iod[1:]).max() < 0.12
    assert (step[:, non_lid].max(1) / iod[1:]).max() < 0.3
    # but the face does move over the clip
    assert np.linalg.norm(lms[-1] - lms[0], axis=1).mean() > step[:, non_lid].mean()


def test_manifest_written_last(dataset: Path) -> None:
    man = dataset / "manifest.json"
    data = json.loads(man.read_text())
    assert data["fingerprint"] == syn.generator_fingerprint() and data["seed"] == SIZES["seed"]
    assert data["content_sha256"] == syn.content_digest(dataset)
    assert data["counts"]["videos_train_unlabeled"] == SIZES["videos"] * SIZES["frames"]
    last = man.stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= last for p in dataset.rglob("*") if p.is_file())
    assert (dataset / "contact_sheet.png").is_file()


def test_failed_generation_leaves_the_earlier_output_whole(tmp_path: Path, monkeypatch) -> None:
    """A generation that fails (killed, disk full) leaves the earlier output in --out as it was,
    manifest and all, and no temporary folder beside it."""
    out = syn.generate_dataset(tmp_path / "d", **{**SIZES, "videos": 0, "test_videos": 0},
                               progress=False)
    before = _files(out)

    def boom(*a, **k):
        raise RuntimeError("killed")

    monkeypatch.setattr(syn_dataset, "render_video", boom)
    with pytest.raises(RuntimeError):
        syn.generate_dataset(out, **SIZES, progress=False)
    assert _files(out) == before
    assert json.loads((out / "manifest.json").read_text())["content_sha256"] == \
        syn.content_digest(out)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_rerun_into_the_same_folder_gives_exactly_a_fresh_runs_files(tmp_path: Path) -> None:
    """``prepare synthetic`` again into an earlier output, with fewer images and videos: the
    folder then holds exactly what a run into a new folder writes (no image, video or .pts of
    the first run left over), so its digest is a fresh run's."""
    out = syn.generate_dataset(tmp_path / "out", **SIZES, progress=False)
    fewer = {**SIZES, "images": 2, "videos": 1, "frames": 4}
    assert syn.generate_dataset(out, **fewer, progress=False) == out
    fresh = syn.generate_dataset(tmp_path / "fresh", **fewer, progress=False)
    assert _files(out) == _files(fresh)
    digest = json.loads((out / "manifest.json").read_text())["content_sha256"]
    assert digest == syn.content_digest(out) == syn.content_digest(fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "out"]  # no temp folders


def test_content_digest_hashes_only_the_generators_files(dataset: Path, tmp_path: Path) -> None:
    """Files the generator does not write (a note, an editor's backup, an extra list) do not
    change the digest, so a dataset someone put a README into still checks as intact."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    digest = syn.content_digest(dataset)
    for extra in ("NOTES.txt", ".DS_Store", "lists/mine.lst", "300W/train/00000.jpg~",
                  "300VW/v001/annot/x.pts"):
        (copy / extra).write_text("not the generator's")
    assert syn.content_digest(copy) == digest
    assert json.loads((copy / "manifest.json").read_text())["content_sha256"] == digest


def test_generate_refuses_a_folder_that_is_not_an_earlier_output(tmp_path: Path) -> None:
    """--out that holds anything but an earlier output of the generator is refused before any
    rendering (FileExistsError naming the folder, and the foreign file) and left untouched."""
    small = {**SIZES, "videos": 0, "test_videos": 0}
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.tex").write_text("mine")
    with pytest.raises(FileExistsError, match="no manifest.json of the synthetic generator") as e:
        syn.generate_dataset(user, **small, progress=False)
    assert e.value.filename == str(user.resolve())
    assert [p.name for p in user.iterdir()] == ["thesis.tex"]
    # an earlier output with the user's file put into it: not replaced either
    out = syn.generate_dataset(tmp_path / "out", **small, progress=False)
    (out / "lists" / "mine.lst").write_text("mine")
    before = _files(out)
    with pytest.raises(FileExistsError, match=r"mine\.lst is not a file the generator writes"):
        syn.generate_dataset(out, **small, progress=False)
    assert _files(out) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        syn.generate_dataset(tmp_path / "file", **small, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out", "user"]
    # an empty folder is fine
    (tmp_path / "empty").mkdir()
    assert (syn.generate_dataset(tmp_path / "empty", **small, progress=False)
            / "manifest.json").is_file()


def test_ensure_synthetic_generates_once_and_atomically(tmp_path: Path, monkeypatch) -> None:
    sizes = dict(images=2, test_images=1, videos=1, test_videos=0, frames=3, image_size=48)
    root = syn.ensure_synthetic(tmp_path, progress=False, **sizes)
    assert root.parent == tmp_path and root.name == syn.synthetic_key(**sizes)
    assert (root / "manifest.json").is_file()
    assert len(read_list(syn.dataset_lists(root)["videos_train_unlabeled"])) == 3

    def boom(*a, **k):
        raise RuntimeError("must not regenerate")

    monkeypatch.setattr(syn_dataset, "generate_dataset", boom)
    assert syn.ensure_synthetic(tmp_path, progress=False, **sizes) == root
    # an interrupted generation leaves neither the final folder nor its temp folder
    with pytest.raises(RuntimeError):
        syn.ensure_synthetic(tmp_path, progress=False, **{**sizes, "seed": 9})
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]
    with pytest.raises(TypeError, match="imagez"):
        syn.ensure_synthetic(tmp_path, imagez=3)


def test_expression_geometry() -> None:
    t = syn.TEMPLATE
    closed = syn.apply_expression(t, blink_right=1.0, blink_left=1.0)
    for up, lo in ((37, 41), (38, 40), (43, 47), (44, 46)):
        np.testing.assert_allclose(closed[up], closed[lo], atol=1e-12)
    half = syn.apply_expression(t, blink_right=0.5)
    assert 0 < half[41, 1] - half[37, 1] < t[41, 1] - t[37, 1]
    np.testing.assert_allclose(half[43], t[43])  # left eye untouched
    opened = syn.apply_expression(t, mouth_open=1.0)
    assert opened[66, 1] - opened[62, 1] > t[66, 1] - t[62, 1] + 0.2
    assert opened[8, 1] > t[8, 1] + 0.2 and opened[0, 1] == t[0, 1]  # chin drops, ear stays
    # left/right symmetry of the template (x mirrored, y and z equal)
    mirror = [16 - i for i in range(17)] + [26 - i for i in range(10)] + [27, 28, 29, 30] + \
        [35, 34, 33, 32, 31] + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40] + \
        [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
    np.testing.assert_allclose(t[mirror] * [-1, 1, 1], t, atol=1e-12)


def test_pose_projection() -> None:
    r = syn.rotation_matrix(20, -10, 15)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    ident = syn.sample_identity(np.random.default_rng(0))
    front = syn.FaceState(yaw=0, pitch=0, roll=0, center=(100, 100), scale=50)
    lm0 = syn.face_landmarks(ident, front)
    lm_yaw = syn.face_landmarks(ident, replace(front, yaw=40))
    assert lm_yaw[30, 0] > lm0[30, 0] + 5  # nose tip swings to the image right
    lm_roll = syn.face_landmarks(ident, replace(front, roll=90))
    # 90 degrees clockwise roll: the chin (below the pivot) ends up left of the pivot
    assert lm_roll[8, 0] < 100 - 20 and abs(lm_roll[8, 1] - 100) < 25
    # the iBUG outer eye corners: 36 on the image left, 45 on the right, in a frontal view
    assert lm0[36, 0] < lm0[39, 0] < lm0[42, 0] < lm0[45, 0]


def test_rendered_features_sit_at_the_landmarks() -> None:
    """Independent check of the drawing: eyes are dark, lips are red, both where the GT says."""
    ident = syn.sample_identity(np.random.default_rng(1))
    st = syn.FaceState(yaw=0, pitch=0, roll=0, center=(128, 110), scale=80,
                       light=(0, 0, 1), ambient=0.5)
    img = np.full((256, 256, 3), 0.5, np.float32)
    lm = syn.render_face(img, ident, st)
    np.testing.assert_allclose(lm, syn.face_landmarks(ident, st))

    def at(p: np.ndarray) -> np.ndarray:
        x, y = np.round(p).astype(int)
        return img[y, x]

    cheek = at(0.5 * lm[3] + 0.5 * lm[31])
    pupil = at(lm[36:42].mean(0))
    assert pupil.sum() < 0.6 * cheek.sum()
    lip = at(0.5 * lm[51] + 0.5 * lm[62])
    assert lip[0] / lip[1:].mean() > cheek[0] / cheek[1:].mean()
    np.testing.assert_allclose(img[3, 3], 0.5)  # far from the person: background untouched


@pytest.mark.parametrize("bad", [dict(images=0), dict(frames=0), dict(videos=-1),
                                 dict(image_size=16)])
def test_bad_sizes_raise(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        syn.generate_dataset(tmp_path, **{**SIZES, **bad}, progress=False)


def test_render_is_a_pure_function_of_identity_and_state() -> None:
    """No hidden per-call randomness: a re-rendered video frame is identical (no flicker)."""
    ident = syn.sample_identity(np.random.default_rng(5))
    st = syn.FaceState(yaw=-30, pitch=10, roll=-12, center=(60, 70), scale=40, mouth_open=0.5)
    a, b = (np.full((128, 128, 3), 0.3, np.float32) for _ in range(2))
    syn.render_face(a, ident, st)
    syn.render_face(b, ident, st)
    assert np.array_equal(a, b) and np.abs(a - 0.3).max() > 0.1


def test_cache_keyed_by_the_generator_and_checked_on_reuse(tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    """A changed generator (or library) gets its own folder; a damaged folder is regenerated."""
    sizes = dict(images=2, test_images=1, videos=1, test_videos=0, frames=3, image_size=48)
    root = syn.ensure_synthetic(tmp_path, progress=False, **sizes)
    digest = syn.content_digest(root)
    with monkeypatch.context() as m:
        m.setattr(syn_dataset, "generator_fingerprint", lambda: "0" * 16)
        assert syn.synthetic_key(**sizes) != root.name
    jpg = next(root.rglob("*.jpg"))
    jpg.write_bytes(jpg.read_bytes()[:64])  # damaged after generation
    assert syn.ensure_synthetic(tmp_path, progress=False, **sizes) == root
    assert f"{root}: files differ from its manifest.json" in capsys.readouterr().err
    assert syn.content_digest(root) == digest


# sha256 of the smoke dataset (configs/smoke.yaml) as numpy 2.4.6 + opencv-python-headless
# 5.0.0.93 (the versions .ci/constraints.txt pins) write it. Every test that trains runs on this
# data, so a machine that generates other bytes would test something else: this says so. If the
# generator was changed on purpose, put the new digest here.
SMOKE_CONTENT_SHA256 = "4f25502c9e19de64c2349f902b78e86cd7fbb14e5c3f50d4d63086f380e043bb"


def test_smoke_dataset_is_the_same_on_every_machine(smoke_cfg) -> None:
    s = smoke_cfg.data.synthetic
    root = syn.ensure_synthetic(smoke_cfg.data.cache_dir, progress=False, images=s.images,
                                test_images=s.test_images, videos=s.videos,
                                test_videos=s.test_videos, frames=s.frames,
                                image_size=s.image_size, seed=s.seed)
    got = syn.content_digest(root)
    assert got == SMOKE_CONTENT_SHA256, (
        f"{root}: the smoke dataset's bytes differ from the pinned ones (numpy {np.__version__}, "
        f"opencv {cv2.__version__}): the generator or a library changed; digest {got}")

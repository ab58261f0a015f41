"""Datasets: item formats (CONTRACTS.md), determinism, bad-data policy, clips, batch order."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tsal_dist.data.batches import collate, seeded_batch_indices
from tsal_dist.data.clips import ClipDataset, build_clips
from tsal_dist.data.datasets import EvalImageDataset, LabeledImageDataset
from tsal_dist.data.formats import AnnotationError, ListEntry, write_pts
from tsal_dist.data.transforms import apply_affine_points, crop_matrix, invert_affine

K = 5  # small landmark count keeps fixtures readable
S = 64
BOX = (40.0, 30.0, 120.0, 110.0)
AUG = dict(rotate_max_deg=20.0, scale_min=0.9, scale_max=1.1, shift_max_frac=0.1)


def _points(dx: float = 0.0) -> np.ndarray:
    return np.array([[60, 50], [100, 50], [80, 70], [65, 95], [95, 95]], np.float64) + [dx, 0]


def _image(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """BGR image with smooth texture and a pure-red 5x5 square at every landmark."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 200, (160, 170, 3), dtype=np.uint8), (0, 0), 3)
    img[..., 2] = 0
    for x, y in points:
        xi, yi = int(round(x)), int(round(y))
        img[yi - 2:yi + 3, xi - 2:xi + 3] = (0, 0, 255)
    return img


@pytest.fixture
def images(tmp_path: Path) -> list[ListEntry]:
    out = []
    for i in range(4):
        pts = _points(dx=2.0 * i)
        cv2.imwrite(str(tmp_path / f"im{i}.png"), _image(pts, i))
        write_pts(tmp_path / f"im{i}.pts", pts)
        out.append(ListEntry(str(tmp_path / f"im{i}.png"), str(tmp_path / f"im{i}.pts"), BOX,
                             face_size=80.0 if i else None))
    return out


def _write_video(path: Path, n: int, shift_px: int = 0, size=(160, 170)) -> None:
    base = cv2.GaussianBlur(np.random.default_rng(9).integers(0, 256, (size[0], size[1] + 64, 3),
                                                              dtype=np.uint8), (0, 0), 2.0)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (size[1], size[0]))
    assert vw.isOpened()
    for t in range(n):
        vw.write(np.ascontiguousarray(base[:, 32 - shift_px * t:32 - shift_px * t + size[1]]))
    vw.release()


def _labeled(entries, **kw) -> LabeledImageDataset:
    args = dict(num_points=K, input_size=S, pre_crop_expand=0.2, augment=True, **AUG)
    args.update(kw)
    return LabeledImageDataset(entries, **args)


# ----------------------------------------------------------------------------- labeled images


def test_labeled_item_format_and_geometry(images):
    ds = _labeled(images, augment=False)
    it = ds.get(1, 0)
    assert set(it) == {"image", "landmarks", "visible", "labeled", "affine", "index"}
    assert it["image"].dtype == torch.uint8 and it["image"].shape == (3, S, S)
    assert it["landmarks"].dtype == torch.float32 and it["landmarks"].shape == (K, 2)
    assert it["visible"].dtype == torch.float32 and it["visible"].shape == (K,)
    assert it["labeled"].dtype == torch.bool and it["labeled"].shape == () and bool(it["labeled"])
    assert it["affine"].dtype == torch.float32 and it["affine"].shape == (2, 3)
    assert it["index"].dtype == torch.int64 and int(it["index"]) == 1
    # plain crop: box (40..120) grows 16 px per side -> 112 px onto 64: scale 4/7
    M = crop_matrix(BOX, S, 0.2)
    np.testing.assert_allclose(it["affine"].numpy(), M, atol=1e-5)
    expect = (_points(2.0) - [24.0, 14.0]) * (64 / 112) - 0.5
    np.testing.assert_allclose(it["landmarks"].numpy(), expect, atol=1e-4)
    np.testing.assert_array_equal(it["visible"].numpy(), 1.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_augmented_landmarks_sit_on_the_red_marks(images, seed):
    ds = _labeled(images)
    it = ds.get(0, seed)
    img = it["image"].numpy().transpose(1, 2, 0).astype(int)  # RGB
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    lm = it["landmarks"].numpy()
    # the stored affine maps the file points onto the landmarks
    np.testing.assert_allclose(apply_affine_points(it["affine"].numpy(), _points()), lm, atol=1e-3)
    for (x, y), v in zip(lm, it["visible"].numpy()):
        if v:
            xi, yi = int(round(x)), int(round(y))
            assert red[max(yi - 1, 0):yi + 2, max(xi - 1, 0):xi + 2].any()


def test_flip_swaps_pairs_and_mirrors(images):
    pairs = [(0, 1), (3, 4)]
    ds = _labeled(images, flip=True, flip_pairs=pairs, rotate_max_deg=0.0, scale_min=1.0,
                  scale_max=1.0, shift_max_frac=0.0)
    items = [ds.get(0, s) for s in range(12)]
    plain = _labeled(images, augment=False).get(0, 0)
    flipped = [it for it in items if it["affine"][0, 0] < 0]
    assert flipped and len(flipped) < len(items)
    f = flipped[0]
    # mirror image of the plain crop
    np.testing.assert_array_equal(f["image"].numpy(), plain["image"].numpy()[:, :, ::-1])
    # landmark j of the flipped crop is the mirror of the plain crop's partner of j
    perm = [1, 0, 2, 4, 3]
    mirrored = plain["landmarks"].numpy()[perm] * [-1, 1] + [S - 1, 0]
    np.testing.assert_allclose(f["landmarks"].numpy(), mirrored, atol=1e-4)
    with pytest.raises(ValueError, match="flip_pairs"):
        _labeled(images, flip=True)  # K=5 has no built-in pairs


def test_determinism_and_getitem_forms(images):
    ds = _labeled(images)
    a, b = ds.get(2, 17), ds.get(2, 17)
    for k in a:
        assert torch.equal(a[k], b[k])
    c = ds[(2, 18)]
    assert not torch.equal(a["image"], c["image"])
    d = ds[2]
    e = ds.get(2, 2)
    assert torch.equal(d["image"], e["image"]) and torch.equal(d["landmarks"], e["landmarks"])
    # a fresh dataset object gives the same item (no hidden state)
    assert torch.equal(_labeled(images).get(2, 17)["image"], a["image"])
    with pytest.raises(IndexError):
        ds.get(4, 0)


def test_unlabeled_entry(images):
    e = ListEntry(images[0].image, None, BOX)
    it = _labeled([e]).get(0, 5)
    assert not bool(it["labeled"])
    assert float(it["landmarks"].abs().sum()) == 0.0 and float(it["visible"].sum()) == 0.0


def test_points_off_the_crop_are_invisible(images, tmp_path):
    pts = _points()
    pts[2] = (5.0, 5.0)  # far outside the expanded box
    write_pts(tmp_path / "off.pts", pts)
    e = ListEntry(images[0].image, str(tmp_path / "off.pts"), BOX)
    it = _labeled([e], augment=False).get(0, 0)
    np.testing.assert_array_equal(it["visible"].numpy(), [1, 1, 0, 1, 1])
    np.testing.assert_array_equal(it["landmarks"].numpy()[2], [0, 0])


# ----------------------------------------------------------------------------- bad data


def _bad_entries(images, tmp_path):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 this is not a jpeg")
    bad_pts = tmp_path / "bad.pts"
    bad_pts.write_text("version: 1\nn_points: 5\n{\n1 2\n3 4\n}\n")
    return [
        images[0],
        ListEntry(str(tmp_path / "missing.png"), images[1].annotation, BOX),
        ListEntry(str(corrupt), images[1].annotation, BOX),
        ListEntry(images[1].image, str(bad_pts), BOX),
        images[2],
    ]


def test_bad_data_is_skipped_counted_and_reported_once(images, tmp_path):
    reports = []
    ds = _labeled(_bad_entries(images, tmp_path), report=lambda r, m: reports.append((r, m)))
    it = ds.get(1, 3)  # missing -> corrupt -> bad annotation -> entry 4
    assert int(it["index"]) == 4
    assert ds.problems == {"image": 2, "annotation": 1}
    assert [r for r, _ in reports] == ["image", "image", "annotation"]
    assert "missing.png" in reports[0][1] and "corrupt.jpg" in reports[1][1]
    assert "bad.pts" in reports[2][1]
    # deterministic: same answer again, nothing re-reported or re-counted
    again = ds.get(1, 3)
    assert torch.equal(again["image"], it["image"]) and len(reports) == 3
    assert ds.problems == {"image": 2, "annotation": 1}
    # equal to the good item built directly
    assert torch.equal(ds.get(4, 3)["image"], it["image"])
    # wrap-around: the last entry's successor is entry 0
    assert int(ds.get(0, 0)["index"]) == 0


@pytest.mark.parametrize("bad, name", [(1, "missing.png"), (2, "corrupt.jpg"), (3, "bad.pts")])
def test_strict_raises_naming_the_file(images, tmp_path, bad, name):
    ds = _labeled(_bad_entries(images, tmp_path), strict=True)
    with pytest.raises(AnnotationError, match=name):
        ds.get(bad, 0)


def test_all_bad_raises(tmp_path):
    ds = _labeled([ListEntry(str(tmp_path / "nope.png"), None, BOX)], report=lambda r, m: None)
    with pytest.raises(AnnotationError, match="none of the 1 items"):
        ds.get(0, 0)


def test_wrong_point_count_is_a_bad_annotation(images, tmp_path):
    write_pts(tmp_path / "four.pts", _points()[:4])
    e = ListEntry(images[0].image, str(tmp_path / "four.pts"), BOX)
    with pytest.raises(AnnotationError, match="four.pts"):
        _labeled([e], strict=True).get(0, 0)


# ----------------------------------------------------------------------------- eval


def test_eval_item_maps_back_to_image(images):
    ds = EvalImageDataset(images, num_points=K, input_size=S, pre_crop_expand=0.2)
    it = ds.get(1, 123)
    assert {"orig_landmarks", "orig_visible", "face_size"} <= set(it)
    np.testing.assert_allclose(it["orig_landmarks"].numpy(), _points(2.0), atol=1e-4)
    np.testing.assert_array_equal(it["orig_visible"].numpy(), 1.0)
    assert it["face_size"].dtype == torch.float32 and float(it["face_size"]) == 80.0
    assert math.isnan(float(ds.get(0, 0)["face_size"]))
    back = apply_affine_points(invert_affine(it["affine"].numpy().astype(np.float64)),
                               it["landmarks"].numpy())
    np.testing.assert_allclose(back, _points(2.0), atol=1e-3)
    # no augmentation: the seed does not matter
    assert torch.equal(ds.get(1, 0)["image"], it["image"])
    assert ds.path(int(it["index"])) == images[1].image
    batch = collate([ds[i] for i in range(4)])
    assert batch["orig_landmarks"].shape == (4, K, 2) and batch["face_size"].shape == (4,)


# ----------------------------------------------------------------------------- clips


def test_build_clips_grouping_and_windows():
    def v(path, i):
        return ListEntry(f"{path}#{i}", None, BOX)
    # two videos interleaved and out of order, then 5 frames of an image folder, then another
    entries = [v("a.avi", 3), v("b.avi", 0), v("a.avi", 0), v("a.avi", 1), v("b.avi", 1),
               v("a.avi", 2), v("a.avi", 4), v("b.avi", 2)]
    entries += [ListEntry(f"seq/{i:03d}.jpg", None, BOX) for i in range(5)]
    entries += [ListEntry(f"other/{i}.jpg", None, BOX) for i in range(2)]
    clips = build_clips(entries, 2)
    a = [2, 3, 5, 0, 6]  # entry indices of a.avi frames 0..4
    b = [1, 4, 7]
    assert clips == [[a[0], a[1]], [a[2], a[3]], [b[0], b[1]], [8, 9], [10, 11], [13, 14]]
    assert build_clips(entries, 3, all_starts=True) == [a[0:3], a[1:4], a[2:5], b, [8, 9, 10],
                                                         [9, 10, 11], [10, 11, 12]]
    assert build_clips(entries, 2, clip_stride=2) == [[a[0], a[2]], [b[0], b[2]], [8, 10]]
    assert build_clips(entries, 6) == []


def _video_entries(tmp_path, n=12, shift_px=2, labeled_every=0):
    path = tmp_path / "v.avi"
    _write_video(path, n, shift_px)
    out = []
    for i in range(n):
        ann = None
        if labeled_every and i % labeled_every == 0:
            write_pts(tmp_path / f"v{i}.pts", _points(dx=shift_px * i))
            ann = str(tmp_path / f"v{i}.pts")
        out.append(ListEntry(f"{path}#{i}", ann, (BOX[0] + shift_px * i, BOX[1],
                                                  BOX[2] + shift_px * i, BOX[3])))
    return out


def _clips(entries, **kw) -> ClipDataset:
    args = dict(num_points=K, clip_length=4, clip_stride=1, input_size=S, pre_crop_expand=0.2,
                augment=True, **AUG)
    args.update(kw)
    return ClipDataset(entries, **args)


def test_clip_item_format_one_augmentation_and_labels(tmp_path):
    entries = _video_entries(tmp_path, labeled_every=2)
    ds = _clips(entries)
    assert len(ds) == 3 and ds.clips[1] == [4, 5, 6, 7]
    it = ds.get(1, 11)
    assert set(it) == {"frames", "warped", "grid", "landmarks", "visible", "labeled", "index"}
    assert it["frames"].shape == (4, 3, S, S) and it["frames"].dtype == torch.uint8
    assert it["warped"].shape == (3, 3, S, S) and it["warped"].dtype == torch.uint8
    assert it["landmarks"].shape == (4, K, 2) and it["landmarks"].dtype == torch.float32
    assert it["visible"].shape == (4, K) and it["labeled"].dtype == torch.bool
    assert it["labeled"].tolist() == [True, False, True, False] and int(it["index"]) == 1
    assert float(it["visible"][1].sum()) == 0 and float(it["landmarks"][3].abs().sum()) == 0
    # ONE crop + augmentation for the clip: the same matrix maps every labeled frame's points.
    # Frames 4 and 6 move by 2 px/frame in the image, so their crop landmarks differ by M's
    # linear part applied to (4, 0).
    lm = it["landmarks"].numpy()
    d = lm[2] - lm[0]
    np.testing.assert_allclose(d, np.broadcast_to(d[0], d.shape), atol=1e-3)
    # mean box of frames 4..7, and the augmentation drawn from the seed
    from tsal_dist.data.transforms import sample_augmentation
    aug = sample_augmentation(np.random.default_rng(11), 20.0, 0.9, 1.1, 0.1, S, False)
    box = np.mean([e.box for e in entries[4:8]], axis=0)
    M = aug.matrix(box, S, 0.2)
    np.testing.assert_allclose(lm[0], apply_affine_points(M, _points(dx=8.0)), atol=1e-3)
    # deterministic
    again = ds.get(1, 11)
    for k in it:
        assert torch.equal(it[k], again[k])


def test_static_video_clip_frames_identical_and_warp_registers_motion(tmp_path):
    (tmp_path / "s").mkdir()
    static = _clips(_video_entries(tmp_path / "s", n=8, shift_px=0))
    it = static.get(0, 4)
    f = it["frames"].numpy().astype(int)
    assert np.abs(f - f[0]).max() == 0  # same crop and augmentation for every frame
    moving = _clips(_video_entries(tmp_path, n=8, shift_px=3), augment=False)
    # fixed box (same for all frames) so the content moves inside the crop
    for i, e in enumerate(moving.entries):
        moving.entries[i] = ListEntry(e.image, e.annotation, BOX)
    it = moving.get(0, 0)
    fr, wp = it["frames"].numpy().astype(float), it["warped"].numpy().astype(float)
    m = 8
    for t in range(3):
        before = ((fr[t] - fr[t + 1])[:, m:-m, m:-m] ** 2).mean()
        after = ((wp[t] - fr[t + 1])[:, m:-m, m:-m] ** 2).mean()
        assert after < 0.25 * before, (t, before, after)
    none = _clips(moving.entries, augment=False, flow="none").get(0, 0)
    assert torch.equal(none["warped"], none["frames"][:-1])


def test_clip_bad_video_and_frames(tmp_path):
    good = _video_entries(tmp_path, n=8, shift_px=1)
    missing = [ListEntry(f"{tmp_path}/gone.avi#{i}", None, BOX) for i in range(4)]
    beyond = [ListEntry(f"{good[0].image.split('#')[0]}#{i}", None, BOX) for i in (20, 21, 22, 23)]
    reports = []
    # sorted by first appearance: gone.avi (clip 0), v.avi frames 0..7 + 20..23 (clips 1..3)
    ds = _clips(missing + good + beyond, report=lambda r, m: reports.append((r, m)))
    assert len(ds) == 4
    it = ds.get(0, 0)
    assert int(it["index"]) == 1 and ds.problems == {"video": 1}
    assert "gone.avi" in reports[0][1]
    it = ds.get(3, 0)  # frames 20..23 do not exist -> wraps to clip 0 (bad) -> clip 1
    assert int(it["index"]) == 1 and ds.problems == {"video": 2}
    with pytest.raises(AnnotationError, match="gone.avi"):
        _clips(missing + good, strict=True).get(0, 0)
    with pytest.raises(AnnotationError, match="outside the video"):
        _clips(good + beyond, strict=True).get(2, 0)


def test_clip_collate_and_mixed_keys(tmp_path, images):
    ds = _clips(_video_entries(tmp_path, n=8))
    b = collate([ds[0], ds[(1, 5)]])
    assert b["frames"].shape == (2, 4, 3, S, S) and b["labeled"].shape == (2, 4)
    assert b["index"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="different keys"):
        collate([ds[0], _labeled(images)[0]])


# ----------------------------------------------------------------------------- batch order


def test_seeded_batch_indices_epoch_permutation_and_sharding():
    n, batch, world, seed = 12, 2, 3, 5
    steps_per_epoch = n // (batch * world)  # 2
    seen = []
    for step in range(steps_per_epoch):
        for rank in range(world):
            seen += [i for i, _ in seeded_batch_indices(step, rank, world, n, batch, seed)]
    # the epoch is exactly np.random.default_rng((seed, 0)).permutation(n), rank-major per step
    np.testing.assert_array_equal(seen, np.random.default_rng((seed, 0)).permutation(n))
    nxt = [i for i, _ in seeded_batch_indices(2, 0, world, n, batch, seed)]
    np.testing.assert_array_equal(nxt, np.random.default_rng((seed, 1)).permutation(n)[:2])
    # pure: the same call gives the same answer; seeds differ across steps, ranks and slots
    assert seeded_batch_indices(7, 1, 3, n, 2, 5) == seeded_batch_indices(7, 1, 3, n, 2, 5)
    seeds = [s for step in range(4) for r in range(3)
             for _, s in seeded_batch_indices(step, r, 3, n, 2, 5)]
    assert len(set(seeds)) == len(seeds)
    assert seeded_batch_indices(0, 0, 1, n, 4, 6) != seeded_batch_indices(0, 0, 1, n, 4, 5)


def test_seeded_batch_indices_straddles_epochs_and_small_n():
    out = seeded_batch_indices(1, 0, 1, 5, 3, 0)  # positions 3, 4 | 0 of epoch 1
    p0, p1 = (np.random.default_rng((0, e)).permutation(5) for e in (0, 1))
    assert [i for i, _ in out] == [p0[3], p0[4], p1[0]]
    big = seeded_batch_indices(0, 1, 2, 2, 4, 0)  # n smaller than the step
    assert len(big) == 4 and all(0 <= i < 2 for i, _ in big)
    with pytest.raises(ValueError):
        seeded_batch_indices(0, 2, 2, 10, 1, 0)
    with pytest.raises(ValueError):
        seeded_batch_indices(0, 0, 1, 0, 1, 0)


def test_datasets_pickle_with_open_video_readers(tmp_path):
    import pickle

    ds = _clips(_video_entries(tmp_path, n=8))
    a = ds.get(1, 2)  # opens a decord/cv2 reader
    clone = pickle.loads(pickle.dumps(ds))
    b = clone.get(1, 2)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_clip_view_jitter_grid_carries_points_between_views(tmp_path):
    # a labeled video moving 2 px/frame; every frame gets its own view jitter. The landmarks of
    # view t+1 read through the tracking grid must land on the landmarks of view t (flow + the
    # exact view change), although the views differ by several pixels
    entries = _video_entries(tmp_path, n=8, shift_px=2, labeled_every=1)
    jit = dict(jitter_rotate_deg=10.0, jitter_scale=0.1, jitter_shift_frac=0.05)
    ds = _clips(entries, **jit)
    it = ds.get(0, 5)
    lm, vis, grid = it["landmarks"].numpy(), it["visible"].numpy(), it["grid"].numpy()
    assert grid.shape == (3, S, S, 2) and grid.dtype == np.float32
    moved, errs = [], []
    for t in range(3):
        m = (vis[t] > 0) & (vis[t + 1] > 0)
        p = lm[t + 1][m].astype(np.float32)
        at = np.stack([cv2.remap(grid[t][..., c], p[:, :1], p[:, 1:], cv2.INTER_LINEAR)[:, 0]
                       for c in range(2)], axis=1)
        errs.append(np.abs(at - lm[t][m]).max())
        moved.append(np.abs(lm[t + 1][m] - lm[t][m]).max())
    assert max(errs) < 0.75, errs  # flow is estimated on a textured MJPG video
    assert min(moved) > 2.0, moved  # the views really differ
    # the warped image is view t resampled through the grid: it matches view t+1
    fr, wp = it["frames"].numpy().astype(float), it["warped"].numpy().astype(float)
    for t in range(3):
        before = ((fr[t] - fr[t + 1])[:, 8:-8, 8:-8] ** 2).mean()
        after = ((wp[t] - fr[t + 1])[:, 8:-8, 8:-8] ** 2).mean()
        assert after < 0.25 * before, (t, before, after)
    # no jitter: the grid is identity + flow and the item equals the jitter-free dataset's
    plain = _clips(entries).get(0, 5)
    assert torch.equal(plain["warped"], _clips(entries, jitter_rotate_deg=0.0).get(0, 5)["warped"])
    with pytest.raises(ValueError, match="view jitter"):
        _clips(entries, jitter_scale=1.5)


def test_tracking_grid_of_pure_view_changes_is_the_affine(tmp_path):
    from tsal_dist.data.flow import tracking_grids, warp_to_next
    from tsal_dist.data.transforms import view_jitter

    rng = np.random.default_rng(0)
    shared = np.repeat(rng.integers(0, 255, (1, S, S, 3), dtype=np.uint8), 3, axis=0)
    jit = [view_jitter(rng, S, 15.0, 0.1, 0.05) for _ in range(3)]
    grid = tracking_grids(shared, jit, "none")
    ys, xs = np.mgrid[0:S, 0:S].astype(np.float64)
    for t in range(2):
        full = [np.vstack([j, [0, 0, 1]]) for j in (jit[t], jit[t + 1])]
        A = full[0] @ np.linalg.inv(full[1])  # view t+1 px -> view t px
        want_x = A[0, 0] * xs + A[0, 1] * ys + A[0, 2]
        want_y = A[1, 0] * xs + A[1, 1] * ys + A[1, 2]
        np.testing.assert_allclose(grid[t][..., 0], want_x, atol=1e-3)
        np.testing.assert_allclose(grid[t][..., 1], want_y, atol=1e-3)
    # without jitter the grid resamples exactly like warp_to_next
    frames = rng.integers(0, 255, (3, S, S, 3), dtype=np.uint8)
    frames = np.stack([cv2.GaussianBlur(f, (0, 0), 2) for f in frames])
    from tsal_dist.data.flow import remap_with_grid
    g = tracking_grids(frames, None, "dis")
    want = warp_to_next(frames, "dis")
    for t in range(2):
        assert np.array_equal(remap_with_grid(frames[t], g[t]), want[t])
    with pytest.raises(ValueError, match="jitters for"):
        tracking_grids(frames, jit[:2], "none")

"""Tests for tsal_dist.data.layouts on tiny fake dataset folders built in tmp_path."""

from __future__ import annotations

import io
import math
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tsal_dist.data.formats import AnnotationError, read_list, read_pts
from tsal_dist.data.layouts import (
    VW300_TEST,
    VW300_TRAIN,
    W300_SUBSETS,
    Report,
    check_image,
    load_300w_boxes,
    prepare_300vw,
    prepare_300w,
    prepare_aflw,
    prepare_wflw,
    video_frame_count,
)

try:
    import scipy.io as sio
except ImportError:  # pragma: no cover - scipy is installed in our venv
    sio = None
needs_scipy = pytest.mark.skipif(sio is None, reason="scipy is not installed: cannot write .mat")


# ------------------------------------------------------------------------------------ helpers


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((size[0], size[1], 3), value, np.uint8)
    img[::4] = 255 - value
    assert cv2.imwrite(str(path), img)
    return path


def grid68(dx: float) -> list[tuple[float, float]]:
    """68 points: x = 10 + dx + 2.5 (j % 10), y = 12 + 3.25 (j // 10).

    For dx = 0.3 the tight landmark box (floor/ceil) is (10, 12, 33, 32) by hand:
    x in [10.3, 32.8], y in [12, 31.5].
    """
    return [(10 + dx + 2.5 * (j % 10), 12 + 3.25 * (j // 10)) for j in range(68)]


GRID_BOX = "10.0000 12.0000 33.0000 32.0000"


def write_pts_by_hand(path: Path, points: list[tuple[float, float]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"{x} {y}\n" for x, y in points)
    path.write_text(f"version: 1\nn_points: {len(points)}\n{{\n{body}}}\n")
    return path


def write_avi(path: Path, frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32))
    for i in range(frames):
        w.write(np.full((32, 32, 3), 30 * i, np.uint8))
    w.release()
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def quiet_report(strict: bool = False) -> tuple[Report, io.StringIO]:
    buf = io.StringIO()
    return Report(strict=strict, stream=buf, max_lines_per_reason=1000), buf


# ------------------------------------------------------------------------------------- Report


def test_report_counts_prints_and_summarises() -> None:
    report, buf = quiet_report()
    report.warn("a/b.jpg", "cannot decode image", "unreadable image")
    report.warn("a/c.jpg", "cannot decode image", "unreadable image")
    report.skip(AnnotationError("x.pts: has 3 points, expected 68"), "bad annotation")
    report.note("something odd")
    report.wrote("/o/300w.train.GTB", 12)
    assert buf.getvalue().splitlines() == [
        "skipped: a/b.jpg: cannot decode image",
        "skipped: a/c.jpg: cannot decode image",
        "skipped: x.pts: has 3 points, expected 68",
        "warning: something odd",
    ]
    assert report.skipped == {"unreadable image": 2, "bad annotation": 1}
    assert report.total_skipped == 3
    assert report.summary().splitlines() == [
        "wrote 1 list file(s):",
        "  300w.train.GTB  12 lines",
        "skipped 3 input(s):",
        "  bad annotation: 1",
        "  unreadable image: 2",
        "1 warning(s):",
        "  something odd",
    ]


def test_report_default_reason_is_the_problem() -> None:
    report, _ = quiet_report()
    report.warn("f", "empty box")
    assert report.skipped == {"empty box": 1}


def test_report_strict_raises_naming_the_file_and_counts_nothing() -> None:
    report, buf = quiet_report(strict=True)
    with pytest.raises(AnnotationError, match=r"^a/b\.jpg: cannot decode image$"):
        report.warn("a/b.jpg", "cannot decode image", "unreadable image")
    assert report.total_skipped == 0 and buf.getvalue() == ""
    report.note("notes are never fatal")


def test_report_caps_lines_per_reason_but_counts_all() -> None:
    buf = io.StringIO()
    report = Report(stream=buf, max_lines_per_reason=2)
    for i in range(5):
        report.warn(f"f{i}", "missing", "missing image")
    out = buf.getvalue().splitlines()
    assert out == ["skipped: f0: missing", "skipped: f1: missing",
                   "(further 'missing image' messages are not printed; see the summary)"]
    assert report.skipped["missing image"] == 5


# ------------------------------------------------------------------------------ file checks


def test_check_image(tmp_path: Path) -> None:
    check_image(write_image(tmp_path / "ok.jpg"))
    check_image(write_image(tmp_path / "ok.png"))
    with pytest.raises(AnnotationError, match=r"no\.jpg: image not found"):
        check_image(tmp_path / "no.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(AnnotationError, match=r"empty\.jpg: empty image file"):
        check_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(AnnotationError, match=r"junk\.jpg: cannot decode image"):
        check_image(tmp_path / "junk.jpg")


def test_video_frame_count(tmp_path: Path) -> None:
    assert video_frame_count(write_avi(tmp_path / "v.avi", 4)) == 4
    with pytest.raises(AnnotationError, match=r"none\.avi: video not found"):
        video_frame_count(tmp_path / "none.avi")
    (tmp_path / "e.avi").write_bytes(b"")
    with pytest.raises(AnnotationError, match=r"e\.avi: empty video file"):
        video_frame_count(tmp_path / "e.avi")
    (tmp_path / "g.avi").write_bytes(b"garbage" * 50)
    with pytest.raises(AnnotationError, match=r"g\.avi: cannot (decode|open) video"):
        video_frame_count(tmp_path / "g.avi")


def test_video_frame_count_opencv_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "decord", None)  # import decord -> ImportError
    assert video_frame_count(write_avi(tmp_path / "v.avi", 3)) == 3
    (tmp_path / "g.avi").write_bytes(b"garbage" * 50)
    with pytest.raises(AnnotationError, match=r"g\.avi: cannot (open video|decode)"):
        video_frame_count(tmp_path / "g.avi")


# ---------------------------------------------------------------------------------------- 300W


def _mat_boxes(path: Path, rows: list[tuple[str, list[float], list[float]]]) -> None:
    cell = np.empty((1, len(rows)), dtype=object)
    for i, (name, det, gt) in enumerate(rows):
        cell[0, i] = {"imgName": name, "bb_detector": np.array([det], float),
                      "bb_ground_truth": np.array([gt], float)}
    path.parent.mkdir(parents=True, exist_ok=True)
    sio.savemat(str(path), {"bounding_boxes": cell})


def make_300w(root: Path, with_mats: bool = True) -> None:
    """One or two faces per subset, with one bad input of each kind."""
    pts = grid68(0.3)
    write_image(root / "afw" / "a.jpg")
    write_pts_by_hand(root / "afw" / "a.pts", pts)
    (root / "afw" / "b.jpg").write_bytes(b"\xff\xd8 corrupt")  # undecodable
    write_pts_by_hand(root / "afw" / "b.pts", pts)
    write_image(root / "helen" / "trainset" / "c.png")
    write_pts_by_hand(root / "helen" / "trainset" / "c.pts", pts)
    write_image(root / "helen" / "trainset" / "d.jpg")  # no .pts
    write_pts_by_hand(root / "helen" / "trainset" / "e.pts", pts)  # no image
    write_image(root / "lfpw" / "trainset" / "f.jpg")
    write_pts_by_hand(root / "lfpw" / "trainset" / "f.pts", pts[:67])  # 67 points
    write_image(root / "helen" / "testset" / "g.jpg")
    write_pts_by_hand(root / "helen" / "testset" / "g.pts", pts)
    write_image(root / "helen" / "testset" / "h.jpg")
    write_pts_by_hand(root / "helen" / "testset" / "h.pts",
                      [(float("nan"), 1.0)] + pts[1:])  # NaN
    write_image(root / "lfpw" / "testset" / "i.jpg")
    write_pts_by_hand(root / "lfpw" / "testset" / "i.pts", pts)
    write_image(root / "ibug" / "image_092 _01.jpg")  # the known bad name
    write_pts_by_hand(root / "ibug" / "image_092 _01.pts", pts)
    if with_mats:
        bb = root / "Bounding Boxes"
        _mat_boxes(bb / "bounding_boxes_afw.mat", [("a.jpg", [1, 2, 30, 40], [3, 4, 31, 41]),
                                                   ("b.jpg", [1, 2, 3, 4], [1, 2, 3, 4])])
        _mat_boxes(bb / "bounding_boxes_helen_trainset.mat",
                   [("c.png", [5.5, 6, 20, 22], [5, 6.25, 21, 23])])
        _mat_boxes(bb / "bounding_boxes_lfpw_trainset.mat", [("f.jpg", [1, 1, 9, 9], [1, 1, 9, 9])])
        _mat_boxes(bb / "bounding_boxes_helen_testset.mat",
                   [("g.jpg", [0, 0, 10, 10], [1, 1, 11, 11]),
                    ("h.jpg", [0, 0, 1, 1], [0, 0, 1, 1])])
        _mat_boxes(bb / "bounding_boxes_lfpw_testset.mat",
                   [("other.jpg", [0, 0, 10, 10], [1, 1, 11, 11])])  # i.jpg has no box
        _mat_boxes(bb / "bounding_boxes_ibug.mat",
                   [("image_092 _01.jpg", [2, 3, 40, 50], [4, 5, 42, 52])])


@needs_scipy
def test_load_300w_boxes(tmp_path: Path) -> None:
    _mat_boxes(tmp_path / "b.mat", [("x y.jpg", [1, 2, 3, 4], [5, 6, 7, 8]),
                                    ("z.png", [0, 0, 1, 1], [2, 2, 3, 3])])
    boxes = load_300w_boxes(tmp_path / "b.mat")
    assert sorted(boxes) == ["xy.jpg", "z.png"]
    np.testing.assert_array_equal(boxes["xy.jpg"][0], [1, 2, 3, 4])
    np.testing.assert_array_equal(boxes["xy.jpg"][1], [5, 6, 7, 8])
    (tmp_path / "bad.mat").write_bytes(b"not a mat file")
    with pytest.raises(AnnotationError, match=r"bad\.mat: cannot read \.mat"):
        load_300w_boxes(tmp_path / "bad.mat")
    sio.savemat(str(tmp_path / "other.mat"), {"x": np.zeros(3)})
    with pytest.raises(AnnotationError, match="no 'bounding_boxes' variable"):
        load_300w_boxes(tmp_path / "other.mat")


@needs_scipy
def test_prepare_300w_lists_line_by_line(tmp_path: Path) -> None:
    root, out = tmp_path / "300W", tmp_path / "lists"
    make_300w(root)
    report, buf = quiet_report()
    written = prepare_300w(root, out, report)

    assert lines(out / "300w.train.GTB") == [
        "../300W/afw/a.jpg ../300W/afw/a.pts 3.0000 4.0000 31.0000 41.0000",
        "../300W/helen/trainset/c.png ../300W/helen/trainset/c.pts "
        "5.0000 6.2500 21.0000 23.0000",
    ]
    assert lines(out / "300w.train.DET") == [
        "../300W/afw/a.jpg ../300W/afw/a.pts 1.0000 2.0000 30.0000 40.0000",
        "../300W/helen/trainset/c.png ../300W/helen/trainset/c.pts "
        "5.5000 6.0000 20.0000 22.0000",
    ]
    assert lines(out / "300w.train.GTL") == [
        f"../300W/afw/a.jpg ../300W/afw/a.pts {GRID_BOX}",
        f"../300W/helen/trainset/c.png ../300W/helen/trainset/c.pts {GRID_BOX}",
    ]
    # i.jpg has no entry in its .mat: GTL only
    assert lines(out / "300w.test.common.GTB") == [
        "../300W/helen/testset/g.jpg ../300W/helen/testset/g.pts 1.0000 1.0000 11.0000 11.0000"]
    assert lines(out / "300w.test.common.GTL") == [
        f"../300W/helen/testset/g.jpg ../300W/helen/testset/g.pts {GRID_BOX}",
        f"../300W/lfpw/testset/i.jpg ../300W/lfpw/testset/i.pts {GRID_BOX}"]
    # the whitespace name is listed through a link without the space
    assert lines(out / "300w.test.challenge.GTB") == [
        "renamed/300w/ibug/image_092_01.jpg renamed/300w/ibug/image_092_01.pts "
        "4.0000 5.0000 42.0000 52.0000"]
    assert lines(out / "300w.test.full.DET") == [
        "../300W/helen/testset/g.jpg ../300W/helen/testset/g.pts 0.0000 0.0000 10.0000 10.0000",
        "renamed/300w/ibug/image_092_01.jpg renamed/300w/ibug/image_092_01.pts "
        "2.0000 3.0000 40.0000 50.0000"]
    assert written["300w.test.full.GTL"] == 3
    assert set(written) == {f"300w.{s}.{k}" for s in ("train", "test.common", "test.challenge",
                                                      "test.full") for k in ("DET", "GTB", "GTL")}

    # every written list reads back, and the renamed files are the originals' content
    for name in written:
        for e in read_list(out / name):
            assert Path(e.image).is_file() and Path(e.annotation).is_file()
    ibug = read_list(out / "300w.test.challenge.GTL")[0]
    assert Path(ibug.image).read_bytes() == (root / "ibug" / "image_092 _01.jpg").read_bytes()
    np.testing.assert_allclose(read_pts(ibug.annotation, 68)[0], grid68(0.3), atol=1e-5)

    assert report.skipped == {"unreadable image": 1, "missing annotation": 1,
                              "missing image": 1, "bad annotation": 2, "no official box": 1}
    msgs = buf.getvalue()
    assert "b.jpg: cannot decode image" in msgs
    assert "d.jpg: no annotation d.pts" in msgs
    assert "e.pts: annotation has no image" in msgs
    assert "f.pts: has 67 points, expected 68" in msgs
    assert "h.pts: contains NaN" in msgs
    assert "i.jpg: no entry in bounding_boxes_lfpw_testset.mat" in msgs
    assert "afw: 1 usable faces, the official count is 337" in msgs


@needs_scipy
def test_prepare_300w_strict_stops_at_first_bad_file(tmp_path: Path) -> None:
    make_300w(tmp_path / "300W")
    report, _ = quiet_report(strict=True)
    with pytest.raises(AnnotationError, match=r"afw/b\.jpg: cannot decode image"):
        prepare_300w(tmp_path / "300W", tmp_path / "out", report)


def test_prepare_300w_without_box_files_writes_landmark_boxes(tmp_path: Path) -> None:
    root, out = tmp_path / "300W", tmp_path / "out"
    make_300w(root, with_mats=False)
    report, buf = quiet_report()
    written = prepare_300w(root, out, report)
    assert sorted(written) == sorted(f"300w.{s}.GTL" for s in (
        "train", "test.common", "test.challenge", "test.full"))
    assert not list(out.glob("*.GTB")) and not list(out.glob("*.DET"))
    assert lines(out / "300w.test.challenge.GTL") == [
        f"renamed/300w/ibug/image_092_01.jpg renamed/300w/ibug/image_092_01.pts {GRID_BOX}"]
    assert "no 'Bounding Boxes' folder" in buf.getvalue()


@needs_scipy
def test_prepare_300w_without_scipy_explains(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root, out = tmp_path / "300W", tmp_path / "out"
    make_300w(root)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    report, buf = quiet_report()
    written = prepare_300w(root, out, report)
    assert all(name.endswith(".GTL") for name in written)
    assert "scipy is not installed" in buf.getvalue() and "pip install scipy" in buf.getvalue()


@needs_scipy
def test_prepare_300w_corrupt_box_file_is_reported(tmp_path: Path) -> None:
    root, out = tmp_path / "300W", tmp_path / "out"
    make_300w(root)
    (root / "Bounding Boxes" / "bounding_boxes_afw.mat").write_bytes(b"junk")
    (root / "Bounding Boxes" / "bounding_boxes_ibug.mat").unlink()
    report, buf = quiet_report()
    prepare_300w(root, out, report)
    assert report.skipped["bad box file"] == 1 and report.skipped["missing box file"] == 1
    assert "bounding_boxes_afw.mat: cannot read .mat file" in buf.getvalue()
    assert len(lines(out / "300w.train.GTB")) == 1  # only c.png (afw had no readable boxes)
    assert not (out / "300w.test.challenge.GTB").exists()


def test_prepare_300w_missing_subset_and_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "300W"
    write_image(root / "ibug" / "x.jpg")
    write_pts_by_hand(root / "ibug" / "x.pts", grid68(0.3))
    report, _ = quiet_report()
    written = prepare_300w(root, tmp_path / "out", report)
    assert report.skipped["missing folder"] == len(W300_SUBSETS) - 1
    assert written == {"300w.test.challenge.GTL": 1, "300w.test.full.GTL": 1}
    with pytest.raises(AnnotationError, match="no 300W folders found"):
        prepare_300w(tmp_path / "empty", tmp_path / "out2", quiet_report()[0])


def test_prepare_300w_private_test_set(tmp_path: Path) -> None:
    """The separate private test download (01_Indoor, 02_Outdoor): one GTL list, its bad files
    reported like the others'; with the main subsets beside it, their lists as before."""
    root, out = tmp_path / "300W", tmp_path / "out"
    write_image(root / "01_Indoor" / "indoor_001.png")
    write_pts_by_hand(root / "01_Indoor" / "indoor_001.pts", grid68(0.3))
    write_image(root / "01_Indoor" / "indoor_002.png")
    write_pts_by_hand(root / "01_Indoor" / "indoor_002.pts", grid68(0.3)[:60])  # 60 points
    write_image(root / "02_Outdoor" / "outdoor_001.png")
    write_pts_by_hand(root / "02_Outdoor" / "outdoor_001.pts", grid68(0.3))
    report, buf = quiet_report()
    written = prepare_300w(root, out, report)
    assert written == {"300w.test.private.GTL": 2}
    assert lines(out / "300w.test.private.GTL") == [
        f"../300W/01_Indoor/indoor_001.png ../300W/01_Indoor/indoor_001.pts {GRID_BOX}",
        f"../300W/02_Outdoor/outdoor_001.png ../300W/02_Outdoor/outdoor_001.pts {GRID_BOX}"]
    assert report.skipped["missing folder"] == len(W300_SUBSETS)  # the main subsets: elsewhere
    assert report.skipped["bad annotation"] == 1 and "indoor_002.pts" in buf.getvalue()
    # beside the main subsets; one private folder missing is reported
    shutil.rmtree(root / "02_Outdoor")
    write_image(root / "ibug" / "x.jpg")
    write_pts_by_hand(root / "ibug" / "x.pts", grid68(0.3))
    report, _ = quiet_report()
    written = prepare_300w(root, tmp_path / "out2", report)
    assert written == {"300w.test.challenge.GTL": 1, "300w.test.full.GTL": 1,
                       "300w.test.private.GTL": 1}
    assert report.skipped["missing folder"] == len(W300_SUBSETS) - 1 + 1


@needs_scipy
def test_prepare_300w_rerun_removes_the_lists_it_has_nothing_for(tmp_path: Path) -> None:
    """Rerun into the same --out without the box files: the DET/GTB lists of the first run would
    be read as this download's official boxes; they are removed, and the summary says so."""
    root, out = tmp_path / "300W", tmp_path / "out"
    make_300w(root)
    prepare_300w(root, out, quiet_report()[0])
    assert (out / "300w.train.DET").is_file() and (out / "300w.test.full.GTB").is_file()
    shutil.rmtree(root / "Bounding Boxes")
    report, _ = quiet_report()
    written = prepare_300w(root, out, report)
    assert sorted(p.name for p in out.glob("300w.*")) == sorted(written) == sorted(
        f"300w.{s}.GTL" for s in ("train", "test.common", "test.challenge", "test.full"))
    summary = report.summary().splitlines()
    i = summary.index("removed 8 list file(s) of an earlier run:")
    assert "  300w.train.DET           no official boxes read" in summary[i + 1:i + 9]


def test_rerun_with_another_root_repoints_the_links(tmp_path: Path) -> None:
    """``--root A`` then ``--root B`` into one --out: the whitespace-free links (roots/, renamed/)
    lead into B, not into A's files; each is replaced atomically (no temporary name left)."""
    out = tmp_path / "out"
    a, b = tmp_path / "first copy" / "300W", tmp_path / "second copy" / "300W"
    make_300w(a, with_mats=False)
    make_300w(b, with_mats=False)
    write_image(b / "afw" / "a.jpg", value=7)  # B's images differ from A's
    write_image(b / "ibug" / "image_092 _01.jpg", value=9)
    prepare_300w(a, out, quiet_report()[0])
    assert (out / "roots" / "300w").resolve() == a.resolve()
    report, buf = quiet_report()
    prepare_300w(b, out, report)
    assert (out / "roots" / "300w").resolve() == b.resolve()
    renamed = out / "renamed" / "300w" / "ibug" / "image_092_01.jpg"
    assert renamed.resolve() == (b / "ibug" / "image_092 _01.jpg").resolve()
    train = read_list(out / "300w.train.GTL")[0]
    assert Path(train.image).read_bytes() == (b / "afw" / "a.jpg").read_bytes()
    ibug = read_list(out / "300w.test.challenge.GTL")[0]
    assert Path(ibug.image).read_bytes() == (b / "ibug" / "image_092 _01.jpg").read_bytes()
    assert "replacing the earlier run's link to" in buf.getvalue()
    assert sorted(p.name for p in (out / "roots").iterdir()) == ["300w"]
    assert sorted(p.name for p in renamed.parent.iterdir()) == ["image_092_01.jpg",
                                                                "image_092_01.pts"]


# --------------------------------------------------------------------------------------- 300VW


def make_300vw(root: Path) -> None:
    pts = [grid68(0.3), grid68(1.3), grid68(2.3)]
    # 001 (train): 3 frames, frame 1 (0-based) has a NaN annotation
    write_avi(root / "001" / "vid.avi", 3)
    for i, p in enumerate(pts, 1):
        write_pts_by_hand(root / "001" / "annot" / f"{i:06d}.pts", p)
    write_pts_by_hand(root / "001" / "annot" / "000002.pts", [(float("nan"), 0.0)] + pts[1][1:])
    # 002 (train): 3 frames but 2 annotations
    write_avi(root / "002" / "vid.avi", 3)
    for i in (1, 2):
        write_pts_by_hand(root / "002" / "annot" / f"{i:06d}.pts", pts[0])
    # 114 (test-1, category A): 2 good frames
    write_avi(root / "114" / "vid.avi", 2)
    for i in (1, 2):
        write_pts_by_hand(root / "114" / "annot" / f"{i:06d}.pts", pts[i - 1])
    # 203 (test-2): empty video; 208 (test-2): garbage video; 410 (test-3): no video
    for vid, data in (("203", b""), ("208", b"garbage" * 40)):
        (root / vid / "annot").mkdir(parents=True)
        (root / vid / "vid.avi").write_bytes(data)
        write_pts_by_hand(root / vid / "annot" / "000001.pts", pts[0])
    write_pts_by_hand(root / "410" / "annot" / "000001.pts", pts[0])
    # 999: not an official id
    write_avi(root / "999" / "vid.avi", 1)


def test_300vw_official_split_sizes() -> None:
    assert len(VW300_TRAIN) == 50 and len(set(VW300_TRAIN)) == 50
    assert {k: len(v) for k, v in VW300_TEST.items()} == {"test-1": 31, "test-2": 19,
                                                          "test-3": 14}
    everything = set(VW300_TRAIN).union(*VW300_TEST.values())
    assert len(everything) == 114


def test_prepare_300vw_lists_line_by_line(tmp_path: Path) -> None:
    root, out = tmp_path / "300VW", tmp_path / "lists"
    make_300vw(root)
    report, buf = quiet_report()
    written = prepare_300vw(root, out, report)
    # frame 1's annotation is bad: kept as unlabeled, boxed like its nearest labeled neighbour
    # (frames 0 and 2 are equally near; the earlier wins). Box of grid68(1.3) = (11, 12, 34, 32).
    expected_001 = [
        f"../300VW/001/vid.avi#0 ../300VW/001/annot/000001.pts {GRID_BOX}",
        f"../300VW/001/vid.avi#1 None {GRID_BOX}",
        "../300VW/001/vid.avi#2 ../300VW/001/annot/000003.pts 12.0000 12.0000 35.0000 32.0000",
    ]
    assert lines(out / "300VW.train.lst001") == expected_001
    assert lines(out / "300VW.train.lst") == expected_001
    none_001 = [" ".join([ln.split()[0], "None", *ln.split()[2:]]) for ln in expected_001]
    assert lines(out / "300VW.train.lst001.none") == none_001
    assert lines(out / "300VW.train.lst.none") == none_001
    assert lines(out / "300VW.test-1.lst114") == [
        f"../300VW/114/vid.avi#0 ../300VW/114/annot/000001.pts {GRID_BOX}",
        "../300VW/114/vid.avi#1 ../300VW/114/annot/000002.pts 11.0000 12.0000 34.0000 32.0000",
    ]
    assert lines(out / "300VW.test-1.lst") == lines(out / "300VW.test-1.lst114")
    assert sorted(written) == sorted([
        "300VW.train.lst001", "300VW.train.lst001.none", "300VW.train.lst", "300VW.train.lst.none",
        "300VW.test-1.lst114", "300VW.test-1.lst114.none", "300VW.test-1.lst",
        "300VW.test-1.lst.none"])
    assert not (out / "300VW.test-2.lst").exists() and not (out / "300VW.test-3.lst").exists()

    entries = read_list(out / "300VW.train.lst")
    assert [e.image.rsplit("#", 1)[1] for e in entries] == ["0", "1", "2"]
    assert entries[1].annotation is None

    assert report.skipped == {
        "bad frame annotation (frame kept unlabeled)": 1,
        "frame count mismatch": 1,
        "unreadable video": 2,
        "missing video": 114 - 6 + 1,  # absent folders, plus 410 whose vid.avi is missing
    }
    msgs = buf.getvalue()
    assert "001/annot/000002.pts: contains NaN" in msgs
    assert "002/vid.avi: 3 frames but 2 annotation files" in msgs
    assert "203/vid.avi: empty video file" in msgs
    assert "208/vid.avi: cannot decode video" in msgs
    assert "410/vid.avi: video not found" in msgs
    assert "999: not an official 300VW video id" in msgs


def test_prepare_300vw_strict_and_empty_root(tmp_path: Path) -> None:
    root = tmp_path / "300VW"
    make_300vw(root)
    with pytest.raises(AnnotationError, match=r"000002\.pts: contains NaN"):
        prepare_300vw(root, tmp_path / "out", quiet_report(strict=True)[0])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("300VW.*"))
    # the first bad input after a good video: the good video's lists are not left behind either
    import shutil

    shutil.copy(root / "001" / "annot" / "000001.pts", root / "001" / "annot" / "000002.pts")
    with pytest.raises(AnnotationError, match=r"002/vid\.avi: 3 frames but 2 annotation"):
        prepare_300vw(root, tmp_path / "out", quiet_report(strict=True)[0])
    assert not any((tmp_path / "out").glob("300VW.*"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(AnnotationError, match="no 300VW video folders found"):
        prepare_300vw(tmp_path / "nothing", tmp_path / "out", quiet_report()[0])


def test_prepare_300vw_rerun_removes_the_lists_of_a_video_now_gone(tmp_path: Path) -> None:
    """Video 114 (the only usable test-1 video) gone from the download: a rerun removes its
    per-video lists and the test-1 lists (and their .none twins) of the first run."""
    root, out = tmp_path / "300VW", tmp_path / "lists"
    make_300vw(root)
    prepare_300vw(root, out, quiet_report()[0])
    assert (out / "300VW.test-1.lst114").is_file() and (out / "300VW.test-1.lst.none").is_file()
    shutil.rmtree(root / "114")
    report, _ = quiet_report()
    written = prepare_300vw(root, out, report)
    assert sorted(p.name for p in out.glob("300VW.*")) == sorted(written)
    assert {Path(p).name: why for p, why in report.dropped.items()} == {
        "300VW.test-1.lst114": "video not found", "300VW.test-1.lst114.none": "video not found",
        "300VW.test-1.lst": "no usable video", "300VW.test-1.lst.none": "no usable video"}


# ---------------------------------------------------------------------------------------- AFLW


def aflw_points(outside: bool = False) -> np.ndarray:
    """19 points x = 10 + j, y = 10 + j % 5, inside the box (5, 8, 45, 18) unless ``outside``."""
    pts = np.array([[10.0 + j, 10.0 + j % 5] for j in range(19)])
    if outside:
        pts[3] = [50.0, 12.0]
    return pts


def make_aflw(root: Path) -> None:
    n = 6
    names = np.empty((n, 1), dtype=object)
    data = np.zeros((n, 38))
    mask = np.ones((n, 19))
    bbox = np.tile([5.0, 45.0, 8.0, 18.0], (n, 1))  # columns x1 x2 y1 y2: w 40, h 10
    for i in range(n):
        names[i, 0] = f"{i % 3}/image{i:05d}.jpg"
        pts = aflw_points(outside=(i == 3))
        data[i, :19], data[i, 19:] = pts[:, 0], pts[:, 1]
        if i != 4:  # face 4's image is missing
            write_image(root / "flickr" / names[i, 0])
    mask[2, [4, 6]] = 0  # face 2: points 5 and 7 (1-based) hidden
    data[2, 4] = data[2, 19 + 4] = -1.0  # hidden points carry junk in the .mat
    bbox[5] = [30.0, 10.0, 8.0, 18.0]  # face 5: x2 < x1
    ra = np.array([[3, 1, 5, 2, 4, 6]])  # 1-based: train = faces 2, 0, 4; test = 1, 3, 5
    sio.savemat(str(root / "AFLWinfo_release.mat"),
                {"nameList": names, "data": data, "mask_new": mask, "bbox": bbox, "ra": ra})


@needs_scipy
def test_prepare_aflw_lists_line_by_line(tmp_path: Path) -> None:
    root, out = tmp_path / "AFLW", tmp_path / "lists"
    root.mkdir()
    make_aflw(root)
    report, buf = quiet_report()
    written = prepare_aflw(root, out, report, train_count=3)
    box_fs = "5.0000 8.0000 45.0000 18.0000 20.0000"  # sqrt(40 * 10) = 20
    assert math.sqrt(40 * 10) == 20
    assert lines(out / "aflw.train.GTB") == [
        f"../AFLW/flickr/2/image00002.jpg annotations/aflw/2/image00002-2.pts {box_fs}",
        f"../AFLW/flickr/0/image00000.jpg annotations/aflw/0/image00000-0.pts {box_fs}",
    ]
    assert lines(out / "aflw.test.GTB") == [
        f"../AFLW/flickr/1/image00001.jpg annotations/aflw/1/image00001-1.pts {box_fs}",
        f"../AFLW/flickr/0/image00003.jpg annotations/aflw/0/image00003-3.pts {box_fs}",
    ]
    assert lines(out / "aflw.test.front.GTB") == [
        f"../AFLW/flickr/1/image00001.jpg annotations/aflw/1/image00001-1.pts {box_fs}"]
    assert written == {"aflw.train.GTB": 2, "aflw.test.GTB": 2, "aflw.test.front.GTB": 1}

    hidden = out / "annotations" / "aflw" / "2" / "image00002-2.pts"
    text = lines(hidden)
    assert len(text) == 17 and text[0] == "1 10.000 10.000 True"
    assert not any(ln.startswith(("5 ", "7 ")) for ln in text)
    pts, vis = read_pts(hidden, 19)
    expected_vis = np.ones(19)
    expected_vis[[4, 6]] = 0
    np.testing.assert_array_equal(vis, expected_vis)
    np.testing.assert_allclose(pts[vis > 0], aflw_points()[expected_vis > 0])
    full, vis0 = read_pts(out / "annotations" / "aflw" / "0" / "image00000-0.pts", 19)
    np.testing.assert_allclose(full, aflw_points())
    assert vis0.all()

    assert report.skipped == {"missing image": 1, "bad box": 1}
    assert "image00004.jpg: image not found" in buf.getvalue()
    assert "face 5 (2/image00005.jpg): empty or non-finite box" in buf.getvalue()


@needs_scipy
def test_prepare_aflw_finds_images_in_mmposes_layout(tmp_path: Path) -> None:
    """mmpose unpacks AFLW's images to ``images/flickr/{0,2,3}/``, beside the .mat."""
    root, out = tmp_path / "AFLW", tmp_path / "lists"
    root.mkdir()
    make_aflw(root)
    (root / "images").mkdir()
    (root / "flickr").rename(root / "images" / "flickr")
    report, _ = quiet_report()
    written = prepare_aflw(root, out, report, train_count=3)
    assert written == {"aflw.train.GTB": 2, "aflw.test.GTB": 2, "aflw.test.front.GTB": 1}
    assert lines(out / "aflw.test.front.GTB")[0].startswith(
        "../AFLW/images/flickr/1/image00001.jpg ")
    assert report.skipped == {"missing image": 1, "bad box": 1}  # face 4's image, as before


@needs_scipy
def test_prepare_aflw_image_name_outside_the_root_is_a_bad_annotation(tmp_path: Path) -> None:
    """A nameList entry that is absolute or climbs out of the root (with or without its spaces)
    is reported and skipped: no image is read and no .pts written outside the root and --out."""
    root, out, elsewhere = tmp_path / "AFLW", tmp_path / "lists", tmp_path / "elsewhere"
    root.mkdir()
    make_aflw(root)
    mat = sio.loadmat(str(root / "AFLWinfo_release.mat"))
    write_image(elsewhere / "abs" / "x.jpg")
    mat["nameList"][0, 0] = str(elsewhere / "abs" / "x.jpg")  # absolute
    mat["nameList"][1, 0] = "../../elsewhere/abs/x.jpg"  # from root/flickr: outside
    mat["nameList"][2, 0] = "2/ .. / .. / .. /elsewhere/abs/x.jpg"  # ".." once spaces go
    sio.savemat(str(root / "AFLWinfo_release.mat"), {k: v for k, v in mat.items()
                                                     if not k.startswith("__")})
    report, buf = quiet_report()
    written = prepare_aflw(root, out, report, train_count=3)
    assert written == {"aflw.test.GTB": 1}  # face 3 only (face 4: no image, 5: bad box)
    assert report.skipped == {"bad annotation": 3, "missing image": 1, "bad box": 1}
    msgs = buf.getvalue()
    assert f"AFLWinfo_release.mat: face 0: image name '{elsewhere}/abs/x.jpg' is absolute or " \
        f"leaves {root}" in msgs
    assert "face 1: image name '../../elsewhere/abs/x.jpg' is absolute or leaves" in msgs
    assert "face 2: image name '2/ .. / .. / .. /elsewhere/abs/x.jpg' is absolute" in msgs
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["abs", "x.jpg"]
    assert [p.relative_to(out).as_posix() for p in out.rglob("*.pts")] == [
        "annotations/aflw/0/image00003-3.pts"]
    # strict: the first bad face in the ra order (face 2) is fatal
    with pytest.raises(AnnotationError, match=r"face 2: image name .* is absolute or leaves"):
        prepare_aflw(root, tmp_path / "strict", quiet_report(strict=True)[0], train_count=3)


@needs_scipy
def test_prepare_aflw_bad_mat(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="AFLWinfo_release.mat: AFLW annotation file not"):
        prepare_aflw(tmp_path, tmp_path / "out", quiet_report()[0])
    sio.savemat(str(tmp_path / "AFLWinfo_release.mat"), {"data": np.zeros((2, 38))})
    with pytest.raises(AnnotationError, match="missing variable.*nameList"):
        prepare_aflw(tmp_path, tmp_path / "out", quiet_report()[0])
    root = tmp_path / "r"
    root.mkdir()
    make_aflw(root)
    with pytest.raises(AnnotationError, match=r"image00004\.jpg: image not found"):
        prepare_aflw(root, tmp_path / "out", quiet_report(strict=True)[0], train_count=3)


# ---------------------------------------------------------------------------------------- WFLW


def wflw_line(name: str, attrs: list[int], coords: list[str] | None = None,
              box: str = "2 3 60 70") -> str:
    if coords is None:
        coords = [f"{1.5 + j * 0.5:g}" for j in range(196)]
    return " ".join([*coords, box, *map(str, attrs), name])


def make_wflw(root: Path) -> None:
    ann = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    imgs = root / "WFLW_images"
    write_image(imgs / "0--Parade" / "p1.jpg")
    write_image(imgs / "1--Handshaking" / "h1.jpg")
    train = [
        wflw_line("0--Parade/p1.jpg", [0, 0, 0, 0, 0, 0]),
        wflw_line("0--Parade/p1.jpg", [0] * 6, coords=["1"] * 195),  # 195 coordinates
        wflw_line("0--Parade/missing.jpg", [0] * 6),
    ]
    test = [
        wflw_line("1--Handshaking/h1.jpg", [1, 0, 0, 0, 1, 0]),
        "",
        wflw_line("1--Handshaking/h1.jpg", [0, 0, 0, 0, 1, 1], box="5 5 50 60"),
        wflw_line("1--Handshaking/h1.jpg", [0] * 6, coords=["nan"] + ["1"] * 195),
        wflw_line("1--Handshaking/h1.jpg", [0] * 6, box="10 3 10 70"),  # empty box
        wflw_line("1--Handshaking/h1.jpg", [0, 2, 0, 0, 0, 0]),  # bad flag
    ]
    (ann / "list_98pt_rect_attr_train.txt").write_text("\n".join(train) + "\n")
    (ann / "list_98pt_rect_attr_test.txt").write_text("\n".join(test) + "\n")


def test_prepare_wflw_lists_line_by_line(tmp_path: Path) -> None:
    root, out = tmp_path / "WFLW", tmp_path / "lists"
    make_wflw(root)
    report, buf = quiet_report()
    written = prepare_wflw(root, out, report)
    assert lines(out / "wflw.train") == [
        "../WFLW/WFLW_images/0--Parade/p1.jpg annotations/wflw/train/0--Parade/p1-0.pts "
        "2.0000 3.0000 60.0000 70.0000"]
    t0 = ("../WFLW/WFLW_images/1--Handshaking/h1.jpg annotations/wflw/test/1--Handshaking/h1-0.pts"
          " 2.0000 3.0000 60.0000 70.0000")
    t2 = ("../WFLW/WFLW_images/1--Handshaking/h1.jpg annotations/wflw/test/1--Handshaking/h1-2.pts"
          " 5.0000 5.0000 50.0000 60.0000")
    assert lines(out / "wflw.test") == [t0, t2]
    assert lines(out / "wflw.test.pose") == [t0]
    assert lines(out / "wflw.test.occlusion") == [t0, t2]
    assert lines(out / "wflw.test.blur") == [t2]
    for absent in ("expression", "illumination", "makeup"):
        assert not (out / f"wflw.test.{absent}").exists()
    assert written == {"wflw.train": 1, "wflw.test": 2, "wflw.test.pose": 1,
                       "wflw.test.occlusion": 2, "wflw.test.blur": 1}
    pts, vis = read_pts(out / "annotations" / "wflw" / "train" / "0--Parade" / "p1-0.pts", 98)
    coords = np.array([1.5 + j * 0.5 for j in range(196)]).reshape(98, 2)
    np.testing.assert_allclose(pts, coords)
    assert vis.all()
    assert report.skipped == {"bad annotation": 3, "missing image": 1, "bad box": 1}
    msgs = buf.getvalue()
    assert "list_98pt_rect_attr_train.txt:2: expected 207 fields" in msgs
    assert "list_98pt_rect_attr_test.txt:4: NaN or infinite" in msgs
    assert "list_98pt_rect_attr_test.txt:5: empty or non-finite box" in msgs
    assert "list_98pt_rect_attr_test.txt:6: attribute flags must be 0 or 1" in msgs
    assert "missing.jpg: image not found" in msgs


def test_prepare_wflw_image_name_outside_the_images_folder_is_a_bad_annotation(
        tmp_path: Path) -> None:
    """An image name that is absolute or climbs out of WFLW_images is reported (file:line) and
    skipped, fatal with strict: no .pts lands beside the named image, every one is under --out.
    A name with ``..`` that stays inside is normalised and kept."""
    root, out, elsewhere = tmp_path / "WFLW", tmp_path / "lists", tmp_path / "elsewhere"
    make_wflw(root)
    write_image(elsewhere / "abs" / "img.jpg")
    ann = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    (ann / "list_98pt_rect_attr_train.txt").write_text("\n".join([
        wflw_line(str(elsewhere / "abs" / "img.jpg"), [0] * 6),
        wflw_line("../../elsewhere/abs/img.jpg", [0] * 6),
        wflw_line("0--Parade/../0--Parade/p1.jpg", [0] * 6),
    ]) + "\n")
    report, buf = quiet_report()
    written = prepare_wflw(root, out, report)
    assert lines(out / "wflw.train") == [
        "../WFLW/WFLW_images/0--Parade/p1.jpg annotations/wflw/train/0--Parade/p1-2.pts "
        "2.0000 3.0000 60.0000 70.0000"]
    assert written["wflw.train"] == 1
    msgs = buf.getvalue()
    assert f"train.txt:1: image name '{elsewhere}/abs/img.jpg' is absolute or leaves " \
        f"{root / 'WFLW_images'}" in msgs
    assert "train.txt:2: image name '../../elsewhere/abs/img.jpg' is absolute or leaves" in msgs
    assert report.skipped["bad annotation"] == 4  # these two + the test file's two
    assert sorted(p.name for p in elsewhere.rglob("*")) == ["abs", "img.jpg"]
    assert all(p.resolve().is_relative_to(out.resolve()) for p in tmp_path.rglob("*.pts"))
    with pytest.raises(AnnotationError, match=r"train\.txt:1: image name .* is absolute"):
        prepare_wflw(root, tmp_path / "strict", quiet_report(strict=True)[0])


def test_prepare_wflw_rerun_removes_a_list_that_is_now_empty(tmp_path: Path) -> None:
    """A rerun whose annotations flag no face "pose" any more removes the earlier wflw.test.pose
    (training would read the old faces), and the summary says so; a run that writes no list at
    all (a wrong --root) leaves the earlier lists as they were."""
    root, out = tmp_path / "WFLW", tmp_path / "lists"
    make_wflw(root)
    prepare_wflw(root, out, quiet_report()[0])
    assert lines(out / "wflw.test.pose")
    test_txt = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test" / \
        "list_98pt_rect_attr_test.txt"
    test_txt.write_text(wflw_line("1--Handshaking/h1.jpg", [0, 0, 0, 0, 1, 0]) + "\n")
    report, _ = quiet_report()
    written = prepare_wflw(root, out, report)
    assert written == {"wflw.train": 1, "wflw.test": 1, "wflw.test.occlusion": 1}
    assert sorted(p.name for p in out.glob("wflw.*")) == sorted(written)
    summary = report.summary().splitlines()
    i = summary.index("removed 2 list file(s) of an earlier run:")
    assert summary[i + 1:i + 3] == ["  wflw.test.pose  no usable faces",
                                    "  wflw.test.blur  no usable faces"]
    shutil.rmtree(root / "WFLW_images")
    report, buf = quiet_report()
    assert prepare_wflw(root, out, report) == {}
    assert sorted(p.name for p in out.glob("wflw.*")) == sorted(written)
    assert f"{out}: no list written, so the 3 list file(s) of an earlier run there are left" \
        in buf.getvalue()


def test_whitespace_in_the_dataset_path_goes_through_one_link(tmp_path: Path) -> None:
    root, out = tmp_path / "my data" / "WFLW", tmp_path / "lists"
    make_wflw(root)
    report, buf = quiet_report()
    prepare_wflw(root, out, report)
    first = lines(out / "wflw.train")[0].split()
    assert first[0] == "roots/wflw/WFLW_images/0--Parade/p1.jpg" and len(first) == 6
    assert (out / "roots" / "wflw").resolve() == root.resolve()
    assert read_list(out / "wflw.train")[0].image == str(out / first[0])
    assert Path(read_list(out / "wflw.train")[0].image).is_file()
    assert buf.getvalue().count("whitespace in the dataset path") == 1


def test_prepare_wflw_missing_annotation_file_and_strict(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="list_98pt_rect_attr_train.txt: WFLW annotation"):
        prepare_wflw(tmp_path, tmp_path / "out", quiet_report()[0])
    make_wflw(tmp_path / "W")
    with pytest.raises(AnnotationError, match=r"train\.txt:2: expected 207 fields"):
        prepare_wflw(tmp_path / "W", tmp_path / "out", quiet_report(strict=True)[0])

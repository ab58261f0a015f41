"""Tests for tsal_dist.data.formats against hand-written .pts and SBR list files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tsal_dist.data.formats import (
    AnnotationError,
    ListEntry,
    landmark_box,
    parse_list_line,
    read_list,
    read_pts,
    split_video_ref,
    write_list,
    write_pts,
)

V0_3PTS = """version: 1
n_points:  3
{
10.5 20.25
30 40
-1.5 7e1
}
"""


def _w(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ read_pts


def test_read_pts_300w_format(tmp_path: Path) -> None:
    pts, vis = read_pts(_w(tmp_path / "a.pts", V0_3PTS))
    np.testing.assert_array_equal(pts, [[10.5, 20.25], [30, 40], [-1.5, 70]])
    np.testing.assert_array_equal(vis, [1, 1, 1])
    assert pts.dtype == np.float32 and vis.dtype == np.float32


def test_read_pts_300w_tolerates_crlf_blank_lines_version_1_0_and_trailing_text(
        tmp_path: Path) -> None:
    text = "version: 1.0\r\n\r\nn_points: 2\r\n{\r\n1 2\r\n\r\n3 4\r\n}\r\ntrailing words\r\n"
    pts, vis = read_pts(_w(tmp_path / "a.pts", text), 2)
    np.testing.assert_array_equal(pts, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(vis, [1, 1])


def test_read_pts_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"nope\.pts: annotation file not found"):
        read_pts(tmp_path / "nope.pts")


def test_read_pts_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "d.pts").mkdir()
    with pytest.raises(AnnotationError, match=r"d\.pts: cannot read annotation"):
        read_pts(tmp_path / "d.pts", 3)


def test_read_pts_binary_file_is_unreadable(tmp_path: Path) -> None:
    p = tmp_path / "b.pts"
    p.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\xff")
    with pytest.raises(AnnotationError, match=r"b\.pts: cannot read annotation"):
        read_pts(p, 3)


@pytest.mark.parametrize("text", ["", "\n\n   \n"])
def test_read_pts_empty_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(AnnotationError, match=r"e\.pts: empty annotation file"):
        read_pts(_w(tmp_path / "e.pts", text), 3)


@pytest.mark.parametrize("text, message", [
    ("version: 1\n", "expected 'n_points: N' on line 2"),
    ("version: 1\npoints: 2\n{\n1 2\n3 4\n}\n", "expected 'n_points: N' on line 2"),
    ("version: 1\nn_points: two\n{\n1 2\n3 4\n}\n", "bad n_points line"),
    ("version: 1\nn_points 2\n{\n1 2\n3 4\n}\n", "bad n_points line"),
    ("version: 1\nn_points: 2\n[\n1 2\n3 4\n}\n", "expected '{' on line 3"),
    ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", "missing closing '}'"),
])
def test_read_pts_bad_header(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=r"h\.pts: " + message.replace("{", r"\{")
                       .replace("}", r"\}").replace("[", r"\[")):
        read_pts(_w(tmp_path / "h.pts", text))


def test_read_pts_n_points_disagrees_with_listed_points(tmp_path: Path) -> None:
    text = "version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n"
    with pytest.raises(AnnotationError, match="header says 3 points but 2 are listed"):
        read_pts(_w(tmp_path / "a.pts", text))


def test_read_pts_wrong_count_vs_expected(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"a\.pts: has 3 points, expected 68"):
        read_pts(_w(tmp_path / "a.pts", V0_3PTS), 68)


@pytest.mark.parametrize("line, message", [
    ("1 2 3", "point 2: expected 'x y'"),
    ("7", "point 2: expected 'x y'"),
    ("1 abc", "point 2: not a number"),
    ("1,5 2", "point 2: not a number"),
])
def test_read_pts_malformed_point_lines(tmp_path: Path, line: str, message: str) -> None:
    text = f"version: 1\nn_points: 3\n{{\n1 2\n{line}\n5 6\n}}\n"
    with pytest.raises(AnnotationError, match=r"a\.pts: " + message):
        read_pts(_w(tmp_path / "a.pts", text))


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf"])
def test_read_pts_rejects_nan_and_inf(tmp_path: Path, value: str) -> None:
    text = f"version: 1\nn_points: 2\n{{\n1 2\n{value} 4\n}}\n"
    with pytest.raises(AnnotationError, match="NaN or infinite"):
        read_pts(_w(tmp_path / "a.pts", text))


def test_read_pts_aflw_variant_missing_indices_are_invisible(tmp_path: Path) -> None:
    text = "1 10.5 20 True\n3 30 40 True\n5 50 60\n"
    pts, vis = read_pts(_w(tmp_path / "a.pts", text), 5)
    np.testing.assert_array_equal(pts, [[10.5, 20], [0, 0], [30, 40], [0, 0], [50, 60]])
    np.testing.assert_array_equal(vis, [1, 0, 1, 0, 1])


def test_read_pts_aflw_variant_false_flag_is_invisible(tmp_path: Path) -> None:
    _, vis = read_pts(_w(tmp_path / "a.pts", "1 1 2 True\n2 3 4 False\n3 5 6 1\n"), 3)
    np.testing.assert_array_equal(vis, [1, 0, 1])


def test_read_pts_aflw_variant_needs_num_points(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="needs the number of points"):
        read_pts(_w(tmp_path / "a.pts", "1 1 2 True\n"))


@pytest.mark.parametrize("text, message", [
    ("1 2\n", "expected 'idx x y"),
    ("1 2 3 True extra\n", "expected 'idx x y"),
    ("one 2 3 True\n", "not a number"),
    ("1.0 2 3 True\n", "not a number"),
    ("1 2 y True\n", "not a number"),
    ("0 2 3 True\n", r"point index 0 outside 1\.\.3"),
    ("4 2 3 True\n", r"point index 4 outside 1\.\.3"),
    ("2 nan 3 True\n", "point 2 has NaN or infinite"),
    ("versoin: 1\nn_points: 3\n", "expected 'idx x y"),  # a corrupted 300W header
])
def test_read_pts_aflw_variant_malformed(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=r"a\.pts: " + message):
        read_pts(_w(tmp_path / "a.pts", text), 3)


def test_read_pts_aflw_variant_duplicate_index_raises(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="twice"):
        read_pts(_w(tmp_path / "a.pts", "1 1 2 True\n1 5 6 True\n"), 3)


def test_read_pts_aflw_variant_unknown_flag_raises(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="Tru"):
        read_pts(_w(tmp_path / "a.pts", "1 1 2 True\n2 5 6 Tru\n"), 3)


def test_read_pts_aflw_variant_false_points_are_zero(tmp_path: Path) -> None:
    pts, _ = read_pts(_w(tmp_path / "a.pts", "1 1 2 True\n2 5 6 False\n"), 2)
    np.testing.assert_array_equal(pts[1], [0, 0])


# ----------------------------------------------------------------------------------- write_pts


def test_write_pts_300w_round_trip_and_exact_text(tmp_path: Path) -> None:
    pts = np.array([[1.0, 2.5], [3.25, -4.0]])
    write_pts(tmp_path / "a.pts", pts)
    assert (tmp_path / "a.pts").read_text() == (
        "version: 1\nn_points: 2\n{\n1.000 2.500\n3.250 -4.000\n}\n")
    back, vis = read_pts(tmp_path / "a.pts", 2)
    np.testing.assert_array_equal(back, pts)
    np.testing.assert_array_equal(vis, [1, 1])


def test_write_pts_with_hidden_points_uses_aflw_variant_and_round_trips(tmp_path: Path) -> None:
    pts = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    write_pts(tmp_path / "sub" / "a.pts", pts, np.array([1, 0, 1]))
    assert (tmp_path / "sub" / "a.pts").read_text() == "1 1.000 2.000 True\n3 5.000 6.000 True\n"
    back, vis = read_pts(tmp_path / "sub" / "a.pts", 3)
    np.testing.assert_array_equal(back, [[1, 2], [0, 0], [5, 6]])
    np.testing.assert_array_equal(vis, [1, 0, 1])


def test_write_pts_is_atomic_no_temp_files_left(tmp_path: Path) -> None:
    write_pts(tmp_path / "a.pts", np.zeros((2, 2)))
    write_pts(tmp_path / "a.pts", np.ones((2, 2)))
    assert os.listdir(tmp_path) == ["a.pts"]
    np.testing.assert_array_equal(read_pts(tmp_path / "a.pts")[0], np.ones((2, 2)))


def test_write_pts_rejects_nan(tmp_path: Path) -> None:
    with pytest.raises((AnnotationError, ValueError)):
        write_pts(tmp_path / "a.pts", np.array([[np.nan, 1.0], [2.0, 3.0]]))


def test_write_pts_rejects_no_visible_point(tmp_path: Path) -> None:
    with pytest.raises((AnnotationError, ValueError)):
        write_pts(tmp_path / "a.pts", np.zeros((3, 2)), np.zeros(3))


# ------------------------------------------------------------------------------------- lists


def test_split_video_ref() -> None:
    assert split_video_ref("a/vid.avi#12") == ("a/vid.avi", 12)
    assert split_video_ref("/x#y/vid.avi#0") == ("/x#y/vid.avi", 0)
    assert split_video_ref("a/img.jpg") is None
    assert split_video_ref("a/vid.avi#") is None
    assert split_video_ref("a/vid.avi#-1") is None
    assert split_video_ref("a/vid.avi#1.5") is None


def test_parse_list_line_six_and_seven_fields() -> None:
    e = parse_list_line("img.jpg ann.pts 1 2 30.5 40", "f:1")
    assert e == ListEntry("img.jpg", "ann.pts", (1.0, 2.0, 30.5, 40.0), None)
    assert not e.is_video_frame
    e = parse_list_line("v/vid.avi#3 None 1 2 3 4 5.5", "f:2")
    assert e.annotation is None and e.face_size == 5.5
    assert e.is_video_frame


@pytest.mark.parametrize("line, message", [
    ("img.jpg ann.pts 1 2 3", "got 5 fields"),
    ("img.jpg ann.pts 1 2 3 4 5 6", "got 8 fields"),
    ("img.jpg", "got 1 fields"),
    ("img.jpg ann.pts 1 2 x 4", "box/face_size not numbers"),
    ("img.jpg ann.pts 1 2 3 4 big", "box/face_size not numbers"),
    ("img.jpg ann.pts 1 2 nan 4", "NaN/infinite"),
    ("img.jpg ann.pts 1 2 3 4 inf", "NaN/infinite"),
    ("img.jpg ann.pts 5 2 5 4", "empty box"),
    ("img.jpg ann.pts 1 9 3 4", "empty box"),
])
def test_parse_list_line_errors_name_the_place(line: str, message: str) -> None:
    with pytest.raises(AnnotationError, match=r"^lst:7: .*" + message):
        parse_list_line(line, "lst:7")


def test_read_list_resolves_relative_paths_and_video_refs(tmp_path: Path) -> None:
    lst = tmp_path / "lists" / "a.lst"
    lst.parent.mkdir()
    lst.write_text(
        "# a comment\n"
        "../imgs/a.jpg ../imgs/a.pts 1 2 3 4\n"
        "\n"
        "/abs/b.png None 1 2 3 4 2.0\n"
        "../vids/001/vid.avi#0 ../vids/001/annot/000001.pts 0 0 10 10\n"
        "/abs/vid.avi#7 None 0 0 10 10\n")
    entries = read_list(lst)
    base = tmp_path / "lists"
    assert entries == [
        ListEntry(str(base / "../imgs/a.jpg"), str(base / "../imgs/a.pts"), (1, 2, 3, 4)),
        ListEntry("/abs/b.png", None, (1, 2, 3, 4), 2.0),
        ListEntry(str(base / "../vids/001/vid.avi") + "#0",
                  str(base / "../vids/001/annot/000001.pts"), (0, 0, 10, 10)),
        ListEntry("/abs/vid.avi#7", None, (0, 0, 10, 10)),
    ]
    assert entries[2].is_video_frame and split_video_ref(entries[2].image)[1] == 0


def test_read_list_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"x\.lst: list file not found"):
        read_list(tmp_path / "x.lst")


def test_read_list_bad_line_names_file_and_line(tmp_path: Path) -> None:
    lst = _w(tmp_path / "a.lst", "a.jpg a.pts 1 2 3 4\n\na.jpg a.pts 1 2 3\n")
    with pytest.raises(AnnotationError, match=r"a\.lst:3: .*got 5 fields"):
        read_list(lst)


def test_read_list_empty_file_is_empty_list(tmp_path: Path) -> None:
    assert read_list(_w(tmp_path / "a.lst", "")) == []


def test_read_list_unreadable_file_raises_annotation_error(tmp_path: Path) -> None:
    (tmp_path / "bin.lst").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(AnnotationError):
        read_list(tmp_path / "bin.lst")


def test_write_list_round_trip_relative(tmp_path: Path) -> None:
    out = tmp_path / "out"
    entries = [
        ListEntry(str(tmp_path / "d" / "a.jpg"), str(tmp_path / "d" / "a.pts"), (1, 2, 3, 4)),
        ListEntry(str(tmp_path / "v" / "vid.avi") + "#5", None, (0.5, 0.25, 9, 9), 3.125),
    ]
    write_list(out / "x.lst", entries, relative_to=out)
    assert (out / "x.lst").read_text() == (
        "../d/a.jpg ../d/a.pts 1.0000 2.0000 3.0000 4.0000\n"
        "../v/vid.avi#5 None 0.5000 0.2500 9.0000 9.0000 3.1250\n")
    back = read_list(out / "x.lst")
    assert [os.path.normpath(e.image.split("#")[0]) for e in back] == [
        str(tmp_path / "d" / "a.jpg"), str(tmp_path / "v" / "vid.avi")]
    assert back[1].image.endswith("#5") and back[1].annotation is None
    assert [e.box for e in back] == [e.box for e in entries]
    assert back[1].face_size == 3.125 and back[0].face_size is None


def test_write_list_empty(tmp_path: Path) -> None:
    write_list(tmp_path / "e.lst", [])
    assert (tmp_path / "e.lst").read_text() == ""


def test_write_list_rejects_whitespace_in_paths(tmp_path: Path) -> None:
    with pytest.raises((AnnotationError, ValueError)):
        write_list(tmp_path / "w.lst", [ListEntry("a b.jpg", "a b.pts", (0, 0, 1, 1))])


# ------------------------------------------------------------------------------ landmark_box


def test_landmark_box_floor_ceil() -> None:
    pts = np.array([[10.2, 5.9], [20.5, 30.0], [15.0, 7.1]])
    assert landmark_box(pts) == (10.0, 5.0, 21.0, 30.0)


def test_landmark_box_ignores_invisible_points() -> None:
    pts = np.array([[10.2, 5.9], [0.0, 0.0], [15.5, 7.1]])
    assert landmark_box(pts, np.array([1, 0, 1])) == (10.0, 5.0, 16.0, 8.0)


def test_landmark_box_no_visible_point_clear_error() -> None:
    with pytest.raises(AnnotationError):
        landmark_box(np.zeros((3, 2)), np.zeros(3))

"""WFLW: the official 98-point annotation text files + ``WFLW_images`` ->
``wflw.{train,test}`` and ``wflw.test.<attribute>`` lists (one .pts written per face)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tsal_dist.data.formats import AnnotationError, ListEntry, write_pts
from tsal_dist.data.layouts.common import (
    _abs,
    _check_box,
    _lists_at_the_end,
    _ListPaths,
    _write_lists,
    check_inside,
    relative_name,
    usable_image,
)
from tsal_dist.data.layouts.report import Report

WFLW_POINTS = 98
#: WFLW attribute flags, in the order of the six columns after the box.
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
WFLW_LIST_DIR = "WFLW_annotations/list_98pt_rect_attr_train_test"


def _parse_wflw_line(line: str, where: str) -> tuple[np.ndarray, tuple[float, ...], list[int], str]:
    parts = line.split()
    expected = 2 * WFLW_POINTS + 4 + len(WFLW_ATTRIBUTES) + 1
    if len(parts) != expected:
        raise AnnotationError(f"{where}: expected {expected} fields (196 coordinates, 4 box, "
                              f"6 attributes, image name), got {len(parts)}")
    try:
        coords = np.array([float(v) for v in parts[:2 * WFLW_POINTS]], np.float64)
        box = tuple(float(v) for v in parts[2 * WFLW_POINTS:2 * WFLW_POINTS + 4])
        attrs = [int(v) for v in parts[2 * WFLW_POINTS + 4:-1]]
    except ValueError:
        raise AnnotationError(f"{where}: non-numeric coordinate, box or attribute") from None
    if not np.isfinite(coords).all():
        raise AnnotationError(f"{where}: NaN or infinite landmark coordinate")
    if any(a not in (0, 1) for a in attrs):
        raise AnnotationError(f"{where}: attribute flags must be 0 or 1, got {attrs}")
    return coords.reshape(WFLW_POINTS, 2), box, attrs, parts[-1]


@_lists_at_the_end
def prepare_wflw(root: str | os.PathLike[str], out: str | os.PathLike[str],
                 report: Report) -> dict[str, int]:
    """Write the WFLW lists from the official annotation text files and image folder.

    Layout: ``root/WFLW_annotations/list_98pt_rect_attr_train_test/list_98pt_rect_attr_{train,
    test}.txt`` (per line: 98 x,y pairs, box x1 y1 x2 y2, six 0/1 flags pose expression
    illumination makeup occlusion blur, image name) and ``root/WFLW_images/<image name>``.
    Line j of split s gets ``out/annotations/wflw/<s>/<subdir>/<stem>-<j>.pts`` (98 points, as
    written). Lists: ``wflw.train``, ``wflw.test`` and ``wflw.test.<attribute>`` for each flag.
    A line whose image name is absolute or leaves ``WFLW_images`` (``../x.jpg``) is a bad
    annotation: nothing is read or written outside the download and ``out``.

    Returns:
        list file name -> number of lines.
    Raises:
        AnnotationError: an annotation text file is missing, or (strict) any bad input.
    """
    root_p, out_p = _abs(root), _abs(out)
    list_dir = root_p / WFLW_LIST_DIR
    img_dir = root_p / "WFLW_images"
    out_p.mkdir(parents=True, exist_ok=True)
    fix = _ListPaths(out_p, "wflw", root_p, report)
    written: dict[str, int] = {}
    for split in ("train", "test"):
        txt = list_dir / f"list_98pt_rect_attr_{split}.txt"
        try:
            lines = txt.read_text().splitlines()
        except FileNotFoundError:
            raise AnnotationError(f"{txt}: WFLW annotation file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise AnnotationError(f"{txt}: cannot read: {e}") from None
        entries: list[ListEntry] = []
        by_attr: dict[str, list[ListEntry]] = {a: [] for a in WFLW_ATTRIBUTES}
        for j, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                points, box_raw, attrs, name = _parse_wflw_line(line, f"{txt}:{j + 1}")
            except AnnotationError as e:
                report.skip(e, "bad annotation")
                continue
            rel_name = relative_name(name)
            if rel_name is None:
                report.warn(f"{txt}:{j + 1}", f"image name {name!r} is absolute or leaves "
                            f"{img_dir}", "bad annotation")
                continue
            box = _check_box(box_raw)
            if box is None:
                report.warn(f"{txt}:{j + 1}", f"empty or non-finite box {box_raw}", "bad box")
                continue
            img = img_dir / rel_name
            if not usable_image(img, report):
                continue
            rel = Path(rel_name)
            pts_path = check_inside(out_p, out_p / "annotations" / "wflw" / split / rel.parent
                                    / f"{rel.stem}-{j}.pts")
            write_pts(pts_path, points)
            e = ListEntry(str(fix(img)), str(pts_path), box)
            entries.append(e)
            if split == "test":
                for a, flag in zip(WFLW_ATTRIBUTES, attrs):
                    if flag:
                        by_attr[a].append(e)
        lists = {f"wflw.{split}": entries}
        if split == "test":
            lists.update({f"wflw.test.{a}": v for a, v in by_attr.items()})
        written.update(_write_lists(out_p, lists, report))
    return written

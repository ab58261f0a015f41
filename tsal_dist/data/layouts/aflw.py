"""AFLW (19-point CUHK re-annotation): ``AFLWinfo_release.mat`` + the Flickr images ->
``aflw.{train,test,test.front}.GTB`` lists (one .pts written per face)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np

from tsal_dist.data.formats import AnnotationError, ListEntry, write_pts
from tsal_dist.data.layouts.common import (
    _abs,
    _check_box,
    _lists_at_the_end,
    _ListPaths,
    _mat_str,
    _write_lists,
    check_inside,
    relative_name,
    usable_image,
)
from tsal_dist.data.layouts.report import Report

AFLW_POINTS = 19
AFLW_TRAIN_COUNT = 20000  # first 20000 of the `ra` permutation train, the remaining 4386 test


def _find_aflw_image(root: Path, name: str) -> Path:
    for base in (root, root / "flickr", root / "data" / "flickr", root / "images",
                 root / "images" / "flickr"):  # the last: mmpose's layout
        if (base / name).is_file():
            return base / name
    return root / "flickr" / name  # not found: the error names the usual place


@_lists_at_the_end
def prepare_aflw(root: str | os.PathLike[str], out: str | os.PathLike[str], report: Report,
                 train_count: int = AFLW_TRAIN_COUNT) -> dict[str, int]:
    """Write the AFLW (19-point, CUHK re-annotation) lists from ``root/AFLWinfo_release.mat``.

    Images are looked up as ``<name>`` under ``root``, ``root/flickr``, ``root/data/flickr``,
    ``root/images`` or ``root/images/flickr`` (``name`` from ``nameList``, e.g.
    ``0/image00002.jpg``; a name that is absolute or leaves the root, with or without its
    whitespace, is a bad annotation: nothing is read or written outside ``root`` and ``out``).
    For face i, points are
    ``data[i, :19]`` (x) and ``data[i, 19:]`` (y), visibility ``mask_new[i]``, the box
    ``bbox[i]`` = [x1, x2, y1, y2]. The ``ra`` permutation (1-based) splits: its first
    ``train_count`` faces train, the rest test. Each face's visible points are written to
    ``out/annotations/aflw/<subdir>/<stem>-<i>.pts`` (one point per line when some are hidden).
    Lists (7 fields; face_size = sqrt(w * h) of the box): ``aflw.train.GTB``, ``aflw.test.GTB``,
    ``aflw.test.front.GTB`` (test faces with all 19 points visible and strictly inside the box).

    Returns:
        list file name -> number of lines.
    Raises:
        AnnotationError: missing/unreadable .mat or missing fields, or (strict) any bad input.
        ImportError: scipy is not installed (named with the fix in the message).
    """
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError("reading AFLWinfo_release.mat needs scipy: pip install scipy") from None
    root_p, out_p = _abs(root), _abs(out)
    mat_path = root_p / "AFLWinfo_release.mat"
    if not mat_path.is_file():
        raise AnnotationError(f"{mat_path}: AFLW annotation file not found")
    try:
        mat = loadmat(str(mat_path))
    except Exception as e:
        raise AnnotationError(f"{mat_path}: cannot read .mat file: {e}") from None
    missing = [k for k in ("nameList", "data", "mask_new", "bbox", "ra") if k not in mat]
    if missing:
        raise AnnotationError(f"{mat_path}: missing variable(s) {', '.join(missing)}")
    names_raw = np.asarray(mat["nameList"], dtype=object).ravel()
    n = len(names_raw)
    try:
        data = np.asarray(mat["data"], np.float64).reshape(n, 2, AFLW_POINTS).transpose(0, 2, 1)
        mask = np.asarray(mat["mask_new"], np.float64).reshape(n, AFLW_POINTS)
        bbox = np.asarray(mat["bbox"], np.float64).reshape(n, 4)
        ra = np.asarray(mat["ra"]).astype(np.int64).ravel() - 1
    except ValueError as e:
        raise AnnotationError(f"{mat_path}: {n} names but data/mask_new/bbox do not match "
                              f"({e})") from None
    if sorted(ra.tolist()) != list(range(n)):
        raise AnnotationError(f"{mat_path}: 'ra' is not a permutation of 1..{n}")
    out_p.mkdir(parents=True, exist_ok=True)
    annot_dir = out_p / "annotations" / "aflw"
    fix = _ListPaths(out_p, "aflw", root_p, report)

    usable: dict[int, ListEntry] = {}
    front: set[int] = set()
    for i in ra.tolist():  # split order; each face checked once
        try:
            name = _mat_str(names_raw[i])
        except ValueError:
            report.warn(mat_path, f"face {i}: bad nameList entry", "bad annotation")
            continue
        rel_name = relative_name(name)
        if rel_name is None or relative_name(re.sub(r"\s+", "", rel_name)) is None:
            report.warn(mat_path, f"face {i}: image name {name!r} is absolute or leaves "
                        f"{root_p}", "bad annotation")
            continue
        img = _find_aflw_image(root_p, rel_name)
        if not usable_image(img, report):
            continue
        pts, vis = data[i], mask[i] > 0
        x1, x2, y1, y2 = bbox[i]
        box = _check_box((x1, y1, x2, y2))
        if box is None:
            report.warn(mat_path, f"face {i} ({name}): empty or non-finite box "
                        f"{bbox[i].tolist()}", "bad box")
            continue
        if not vis.any():
            report.warn(mat_path, f"face {i} ({name}): no visible point", "no visible points")
            continue
        if not np.isfinite(pts[vis]).all():
            report.warn(mat_path, f"face {i} ({name}): NaN/infinite landmark", "bad annotation")
            continue
        rel = Path(os.path.normpath(re.sub(r"\s+", "", rel_name)))
        pts_path = check_inside(out_p, annot_dir / rel.parent / f"{rel.stem}-{i}.pts")
        write_pts(pts_path, np.where(vis[:, None], pts, 0.0), vis.astype(np.float32))
        img = fix(img)
        face_size = math.sqrt((box[2] - box[0]) * (box[3] - box[1]))
        usable[i] = ListEntry(str(img), str(pts_path), box, face_size)
        px, py = pts[:, 0], pts[:, 1]
        if vis.all() and ((px > box[0]) & (px < box[2]) & (py > box[1]) & (py < box[3])).all():
            front.add(i)

    train_idx, test_idx = ra[:train_count].tolist(), ra[train_count:].tolist()
    lists = {
        "aflw.train.GTB": [usable[i] for i in train_idx if i in usable],
        "aflw.test.GTB": [usable[i] for i in test_idx if i in usable],
        "aflw.test.front.GTB": [usable[i] for i in test_idx if i in usable and i in front],
    }
    return _write_lists(out_p, lists, report)

"""300VW: ``<vid>/vid.avi`` + ``<vid>/annot/%06d.pts`` folders -> per-video and per-split
``300VW.<split>.lst*`` lists (and their unlabeled ``.none`` twins); frames are never extracted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from tsal_dist.data.formats import AnnotationError, ListEntry, landmark_box, read_pts
from tsal_dist.data.layouts.common import (
    _abs,
    _check_box,
    _drop,
    _lists_at_the_end,
    _ListPaths,
    _write,
    video_frame_count,
)
from tsal_dist.data.layouts.report import Report

VW300_TRAIN: tuple[str, ...] = tuple(
    "009 059 002 033 020 035 018 119 120 025 205 047 007 013 004 143 034 028 053 225 041 010 031 "
    "046 049 011 027 003 016 160 113 001 029 043 112 138 144 204 057 015 044 048 017 115 223 037 "
    "123 019 039 022".split())
VW300_TEST: dict[str, tuple[str, ...]] = {
    "test-1": tuple("114 124 125 126 150 158 401 402 505 506 507 508 509 510 511 514 515 518 519 "
                    "520 521 522 524 525 537 538 540 541 546 547 548".split()),  # category A
    "test-2": tuple("203 208 211 212 213 214 218 224 403 404 405 406 407 408 409 412 550 551 "
                    "553".split()),  # category B
    "test-3": tuple("410 411 516 517 526 528 529 530 531 533 557 558 559 562".split()),  # cat. C
}


def _as_none(entries: Iterable[ListEntry]) -> list[ListEntry]:
    return [ListEntry(e.image, None, e.box, e.face_size) for e in entries]


def _video_entries(folder: Path, fix: _ListPaths, report: Report) -> list[ListEntry] | None:
    """Entries of one 300VW video folder (``vid.avi`` + ``annot/%06d.pts``), or None if skipped."""
    video = folder / "vid.avi"
    try:
        n = video_frame_count(video)
    except AnnotationError as e:
        report.skip(e, "unreadable video" if video.is_file() else "missing video")
        return None
    annot = folder / "annot"
    files = sorted(annot.glob("*.pts")) if annot.is_dir() else []
    numbers = sorted(int(p.stem) for p in files if p.stem.isdigit())
    if numbers != list(range(1, n + 1)):
        have = f"{len(files)} annotation files" if files else "no annotation files"
        if files and len(numbers) == n:
            have += " not numbered 000001..%06d" % n
        report.warn(video, f"{n} frames but {have} in {annot}", "frame count mismatch")
        return None
    listed = fix(video)
    entries: list[ListEntry | None] = []
    boxes: list[tuple[float, float, float, float] | None] = []
    for i in range(1, n + 1):
        pts = annot / f"{i:06d}.pts"
        try:
            points, _ = read_pts(pts, 68)
        except AnnotationError as e:
            report.skip(e, "bad frame annotation (frame kept unlabeled)")
            entries.append(None)
            boxes.append(None)
            continue
        box = landmark_box(points)
        if _check_box(box) is None:
            report.warn(pts, f"degenerate landmark box {box}",
                        "bad frame annotation (frame kept unlabeled)")
            entries.append(None)
            boxes.append(None)
            continue
        entries.append(ListEntry(f"{listed}#{i - 1}", str(fix(pts)), box))
        boxes.append(box)
    good = [j for j, b in enumerate(boxes) if b is not None]
    if not good:
        report.warn(video, "no frame has a usable annotation", "no usable frame")
        return None
    # A frame whose annotation is bad stays in the list (clips need consecutive frames) as an
    # unlabeled frame, boxed like its nearest labeled neighbour.
    result = []
    for j, e in enumerate(entries):
        if e is None:
            k = min(good, key=lambda g: (abs(g - j), g))
            e = ListEntry(f"{listed}#{j}", None, boxes[k])  # type: ignore[arg-type]
        result.append(e)
    return result


@_lists_at_the_end
def prepare_300vw(root: str | os.PathLike[str], out: str | os.PathLike[str],
                  report: Report) -> dict[str, int]:
    """Write the 300VW lists from ``root/<vid>/vid.avi`` + ``root/<vid>/annot/%06d.pts``.

    Frame i (0-based) of a video is annotated by ``annot/%06d.pts`` numbered i + 1 and listed as
    ``<vid folder>/vid.avi#i``; its box is the tight landmark box (floor of min, ceil of max).
    Writes, for split in train (50 videos) and test-1/2/3 (categories A/B/C): the per-video lists
    ``300VW.<split>.lst<vid>``, the concatenation ``300VW.<split>.lst``, and ``.none`` twins of
    both with every annotation ``None`` (the unlabeled view).

    Returns:
        list file name -> number of lines.
    Raises:
        AnnotationError: none of the official video folders exist, or (strict) any bad input.
    """
    root_p, out_p = _abs(root), _abs(out)
    splits = {"train": VW300_TRAIN, **VW300_TEST}
    official = {v for vids in splits.values() for v in vids}
    if not root_p.is_dir() or not any((root_p / v).is_dir() for v in official):
        raise AnnotationError(f"{root_p}: no 300VW video folders found (expected e.g. "
                              f"{root_p / '001' / 'vid.avi'})")
    out_p.mkdir(parents=True, exist_ok=True)
    for extra in sorted(p.name for p in root_p.iterdir() if p.is_dir() and p.name.isdigit()):
        if extra not in official:
            report.note(f"{root_p / extra}: not an official 300VW video id; ignored")
    written: dict[str, int] = {}
    fix = _ListPaths(out_p, "300vw", root_p, report)

    def emit(name: str, entries: list[ListEntry]) -> None:
        _write(out_p, name, entries, report)
        _write(out_p, name + ".none", _as_none(entries), report)
        written[name] = written[name + ".none"] = len(entries)

    def drop(name: str, why: str) -> None:  # the lists an earlier run wrote for it
        _drop(out_p, name, report, why)
        _drop(out_p, name + ".none", report, why)

    for split, vids in splits.items():
        all_entries: list[ListEntry] = []
        for vid in sorted(vids):
            folder = root_p / vid
            if not folder.is_dir():
                report.warn(folder, f"300VW video folder not found ({split})", "missing video")
                drop(f"300VW.{split}.lst{vid}", "video not found")
                continue
            entries = _video_entries(folder, fix, report)
            if entries is None:
                drop(f"300VW.{split}.lst{vid}", "video skipped")
                continue
            emit(f"300VW.{split}.lst{vid}", entries)
            all_entries += entries
        if not all_entries:
            report.note(f"300VW.{split}.lst: no usable video; not written")
            drop(f"300VW.{split}.lst", "no usable video")
            continue
        emit(f"300VW.{split}.lst", all_entries)
    return written

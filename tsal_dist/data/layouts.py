"""Official dataset layouts (300W, 300VW, AFLW, WFLW) -> SBR list files, with bad-input reporting.

What belongs here: walking the folders users download, checking every file that a list will name
(images decode, annotations parse with the right number of points, videos open and have one
annotation per frame), and writing the SBR lists of METHOD.md §2.3. What does not: parsing the
formats themselves (see formats.py) and reading crops for training (datasets.py).

Bad input never stops a run by default: each bad file gets a one-line message naming it and the
problem, is skipped, and is counted by reason in a :class:`Report`; with ``strict=True`` the first
one raises :class:`~tsal_dist.data.formats.AnnotationError` instead.

List paths are written relative to the folder of the list file (``read_list`` resolves them
against it), so the output folder and the dataset can move together. Video frames are referenced
as ``<path>/vid.avi#<0-based frame index>``; frames are never extracted.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import numpy as np

from tsal_dist.data.formats import (
    AnnotationError,
    ListEntry,
    landmark_box,
    read_pts,
    write_list,
    write_pts,
)
from tsal_dist.data.images import truncation

# ---------------------------------------------------------------------------------------------
# Official splits (METHOD.md §2.3)

#: 300W subsets: folder under the root -> (bounding-box .mat stem, official face count).
W300_SUBSETS: dict[str, tuple[str, int]] = {
    "afw": ("afw", 337),
    "helen/trainset": ("helen_trainset", 2000),
    "lfpw/trainset": ("lfpw_trainset", 811),
    "helen/testset": ("helen_testset", 330),
    "lfpw/testset": ("lfpw_testset", 224),
    "ibug": ("ibug", 135),
}
#: 300W list splits -> the subsets they concatenate (train 3148, common 554, challenge 135).
W300_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "test.common": ("helen/testset", "lfpw/testset"),
    "test.challenge": ("ibug",),
    "test.full": ("helen/testset", "lfpw/testset", "ibug"),
}
W300_BOX_DIRS = ("Bounding Boxes", "Bounding_Boxes", "bounding_boxes")

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

AFLW_POINTS = 19
AFLW_TRAIN_COUNT = 20000  # first 20000 of the `ra` permutation train, the remaining 4386 test

WFLW_POINTS = 98
#: WFLW attribute flags, in the order of the six columns after the box.
WFLW_ATTRIBUTES = ("pose", "expression", "illumination", "makeup", "occlusion", "blur")
WFLW_LIST_DIR = "WFLW_annotations/list_98pt_rect_attr_train_test"


# ---------------------------------------------------------------------------------------------
# Reporting


@dataclass
class Report:
    """Counts bad inputs by reason, prints one line per bad file, and raises in strict mode.

    Shared by the prepare step and the datasets. Usage::

        report = Report(strict=False)
        try:
            pts, vis = read_pts(path, 68)
        except AnnotationError as e:
            report.skip(e, "bad annotation")   # prints the message, counts, raises if strict
            continue

    Args:
        strict: raise :class:`AnnotationError` at the first bad input instead of skipping it.
        stream: where the one-line messages go (default ``sys.stderr``).
        max_lines_per_reason: after this many lines of one reason the rest are only counted, so a
            wrongly pointed root does not print 20 000 lines (the summary has the full count).
    """

    strict: bool = False
    stream: TextIO | None = None
    max_lines_per_reason: int = 50
    skipped: Counter[str] = field(default_factory=Counter)
    written: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # lists of the preparation under way, written only when it completes (see _lists_at_the_end)
    pending: list[tuple[Path, list[ListEntry], Path]] | None = field(default=None, repr=False)

    def _print(self, line: str) -> None:
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)

    def warn(self, path: str | os.PathLike[str], problem: str, reason: str | None = None) -> None:
        """Report one bad input ``path`` (skipped) with a human ``problem``; raise if strict.

        ``reason`` is the summary bucket (default: ``problem``).
        """
        self.skip(AnnotationError(f"{path}: {problem}"), reason or problem)

    def skip(self, error: AnnotationError, reason: str) -> None:
        """Like :meth:`warn` for an error whose message already names the file."""
        if self.strict:
            raise error
        self.skipped[reason] += 1
        n = self.skipped[reason]
        if n <= self.max_lines_per_reason:
            self._print(f"skipped: {error}")
        if n == self.max_lines_per_reason:
            self._print(f"(further '{reason}' messages are not printed; see the summary)")

    def note(self, message: str) -> None:
        """A warning that is not a bad file (never fatal): printed now and in the summary."""
        self.notes.append(message)
        self._print(f"warning: {message}")

    def wrote(self, path: str | os.PathLike[str], lines: int) -> None:
        """Record that list ``path`` was written with ``lines`` entries."""
        self.written[str(path)] = lines

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Multi-line summary: lists written (with line counts), skipped by reason, warnings."""
        out = [f"wrote {len(self.written)} list file(s):"]
        width = max((len(Path(p).name) for p in self.written), default=0)
        out += [f"  {Path(p).name:<{width}}  {n} lines" for p, n in self.written.items()]
        if self.skipped:
            out.append(f"skipped {self.total_skipped} input(s):")
            out += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        else:
            out.append("skipped nothing")
        if self.notes:
            out.append(f"{len(self.notes)} warning(s):")
            out += [f"  {n}" for n in self.notes]
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# File checks


def check_image(path: str | os.PathLike[str]) -> None:
    """Check that an image exists and decodes (cheap 1/8-scale grayscale decode with OpenCV).

    Raises:
        AnnotationError: missing, empty or undecodable file; the message names the file.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: image not found")
    if p.stat().st_size == 0:
        raise AnnotationError(f"{p}: empty image file")
    problem = truncation(p.read_bytes())
    if problem:
        raise AnnotationError(f"{p}: {problem}")
    img = cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if img is None or img.size == 0:
        raise AnnotationError(f"{p}: cannot decode image (corrupt or not an image)")


def video_frame_count(path: str | os.PathLike[str]) -> int:
    """Number of frames of a video, checking that its first and last frames decode.

    Uses decord when importable, else OpenCV (``CAP_PROP_FRAME_COUNT``, or counting by grabbing
    when the container does not say).

    Raises:
        AnnotationError: missing, empty or unreadable video; the message names the file.
    """
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: video not found")
    if p.stat().st_size == 0:
        raise AnnotationError(f"{p}: empty video file")
    try:
        import decord
    except ImportError:
        return _cv2_frame_count(p)
    try:
        vr = decord.VideoReader(str(p), num_threads=1)
        n = len(vr)
        if n <= 0:
            raise AnnotationError(f"{p}: video has no frames")
        vr[0].asnumpy()
        vr[n - 1].asnumpy()
    except AnnotationError:
        raise
    except Exception as e:  # decord raises its own DECORDError / RuntimeError types
        raise AnnotationError(f"{p}: cannot decode video: {str(e).splitlines()[0]}") from None
    return n


def _cv2_frame_count(p: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(p))
    try:
        if not cap.isOpened():
            raise AnnotationError(f"{p}: cannot open video")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, _ = cap.read()
        if not ok:
            raise AnnotationError(f"{p}: cannot decode the first frame")
        if n <= 0:  # container without a frame count: count by grabbing
            n = 1
            while cap.grab():
                n += 1
        return n
    finally:
        cap.release()


def _has_space(path: str) -> bool:
    return any(c.isspace() for c in path)


class _ListPaths:
    """Whitespace-free paths for list files (list fields are whitespace-separated).

    The download is never modified. If the dataset root's path (as seen from ``out``) contains
    whitespace, one link ``out/roots/<dataset>`` -> root is made and paths go through it. A file
    whose own name contains whitespace (300W iBUG's ``image_092 _01``) gets a link (or a copy,
    where links are not allowed) ``out/renamed/<dataset>/<path with the whitespace removed>``.
    """

    def __init__(self, out: Path, dataset: str, root: Path, report: Report) -> None:
        self.out, self.dataset, self.root, self.report = out, dataset, root, report
        self._base: Path | None = None

    def base(self) -> Path:
        """The root, or a whitespace-free link to it."""
        if self._base is None:
            self._base = self.root
            if _has_space(os.path.relpath(self.root, self.out)):
                link = self.out / "roots" / self.dataset
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(self.root, link, target_is_directory=True)
                self.report.note(f"{self.root}: whitespace in the dataset path; lists go through "
                                 f"the link {link}")
                self._base = link
        return self._base

    def __call__(self, path: Path) -> Path:
        try:
            sub = path.relative_to(self.root)
        except ValueError:  # outside the root: only its own name can be fixed
            sub = None
        if sub is not None and not _has_space(str(sub)):
            return self.base() / sub
        if sub is None and not _has_space(os.path.relpath(path, self.out)):
            return path
        parts = sub.parts if sub is not None else (path.name,)
        fixed = self.out / "renamed" / self.dataset / Path(*(re.sub(r"\s+", "", q) for q in parts))
        if _has_space(os.path.relpath(fixed, self.out)):  # pragma: no cover - defensive
            raise AnnotationError(f"{fixed}: cannot make a whitespace-free path")
        if not fixed.exists():
            fixed.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.symlink(os.path.abspath(path), fixed)
            except OSError:
                shutil.copyfile(path, fixed)
            self.report.note(f"{path}: whitespace in the file name; listed as {fixed}")
        return fixed


def _abs(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(p))))


def _write(out: Path, name: str, entries: list[ListEntry], report: Report) -> None:
    path = out / name
    if report.pending is not None:
        report.pending.append((path, list(entries), out))
        return
    write_list(path, entries, relative_to=out)
    report.wrote(path, len(entries))


def _lists_at_the_end(fn: Callable[..., dict[str, int]]) -> Callable[..., dict[str, int]]:
    """A preparer's list files are written after it has read everything: one that stops (a bad
    input under --strict, an error) leaves no list behind that looks complete but is not. Each
    file is itself written atomically."""
    @functools.wraps(fn)
    def wrapper(root: str | os.PathLike[str], out: str | os.PathLike[str], report: Report,
                *args: Any, **kwargs: Any) -> dict[str, int]:
        report.pending = []
        try:
            result = fn(root, out, report, *args, **kwargs)
            pending = report.pending
        finally:
            report.pending = None
        for path, entries, rel in pending:
            write_list(path, entries, relative_to=rel)
            report.wrote(path, len(entries))
        return result
    return wrapper


def _as_none(entries: Iterable[ListEntry]) -> list[ListEntry]:
    return [ListEntry(e.image, None, e.box, e.face_size) for e in entries]


def _check_box(box: Iterable[float]) -> tuple[float, float, float, float] | None:
    b = tuple(float(v) for v in box)
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] <= b[0] or b[3] <= b[1]:
        return None
    return b  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# 300W


@dataclass(frozen=True)
class _Face300W:
    image: Path
    pts: Path
    points: np.ndarray  # (68, 2)


def _mat_str(x: Any) -> str:
    while isinstance(x, np.ndarray):
        if x.size != 1:
            raise ValueError(f"expected one string, got an array of shape {x.shape}")
        x = x.ravel()[0]
    return str(x)


def load_300w_boxes(mat_path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read an official 300W ``bounding_boxes_<subset>.mat``.

    Returns:
        image name with whitespace removed -> (bb_detector, bb_ground_truth), each (4,) float64
        x1 y1 x2 y2 as stored (Matlab pixel coordinates, used as-is like the .pts).
    Raises:
        ImportError: scipy is not installed.
        AnnotationError: unreadable file or unexpected structure.
    """
    from scipy.io import loadmat

    p = Path(mat_path)
    try:
        mat = loadmat(str(p), squeeze_me=True, struct_as_record=False)
    except Exception as e:  # scipy raises ValueError/TypeError/MatReadError on bad files
        raise AnnotationError(f"{p}: cannot read .mat file: {e}") from None
    if "bounding_boxes" not in mat:
        raise AnnotationError(f"{p}: no 'bounding_boxes' variable")
    items = mat["bounding_boxes"]
    items = items.ravel() if isinstance(items, np.ndarray) else [items]
    boxes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, it in enumerate(items):
        try:
            name = _mat_str(it.imgName)
            det = np.asarray(it.bb_detector, np.float64).ravel()
            gt = np.asarray(it.bb_ground_truth, np.float64).ravel()
        except (AttributeError, ValueError, TypeError) as e:
            raise AnnotationError(f"{p}: entry {i}: expected imgName, bb_detector, "
                                  f"bb_ground_truth ({e})") from None
        boxes[re.sub(r"\s+", "", name)] = (det, gt)
    return boxes


def _find_box_dir(root: Path) -> Path | None:
    for name in W300_BOX_DIRS:
        if (root / name).is_dir():
            return root / name
    return None


def _scan_300w_subset(folder: Path, fix: _ListPaths, report: Report) -> list[_Face300W]:
    faces = []
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = {p.stem: p for p in files if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    pts_files = {p.stem: p for p in files if p.suffix.lower() == ".pts"}
    for stem in sorted(pts_files.keys() - images.keys()):
        report.warn(pts_files[stem], "annotation has no image next to it", "missing image")
    for stem in sorted(images):
        img = images[stem]
        if stem not in pts_files:
            report.warn(img, f"no annotation {stem}.pts next to the image", "missing annotation")
            continue
        try:
            check_image(img)
        except AnnotationError as e:
            report.skip(e, "unreadable image")
            continue
        try:
            points, _ = read_pts(pts_files[stem], 68)
        except AnnotationError as e:
            report.skip(e, "bad annotation")
            continue
        faces.append(_Face300W(fix(img), fix(pts_files[stem]), points))
    return faces


@_lists_at_the_end
def prepare_300w(root: str | os.PathLike[str], out: str | os.PathLike[str],
                 report: Report) -> dict[str, int]:
    """Write the 300W lists from the official download.

    Layout: ``root/{afw, helen/trainset, helen/testset, lfpw/trainset, lfpw/testset, ibug}/`` with
    ``.jpg``/``.png`` + ``.pts`` pairs, and ``root/Bounding Boxes/bounding_boxes_<subset>.mat``.
    Writes ``300w.<split>.DET`` (organisers' detector box) and ``300w.<split>.GTB`` (ground-truth
    box) for split in train (3148), test.common (554), test.challenge (135), test.full (689), when
    the .mat files can be read; always ``300w.<split>.GTL`` (tight landmark box, floor/ceil). Each
    image is listed once (TSAL's 10x repetition is a sampler matter, not a list matter).

    Returns:
        list file name -> number of lines.
    Raises:
        AnnotationError: no 300W subset folder under ``root`` at all, or (strict) any bad input.
    """
    root_p, out_p = _abs(root), _abs(out)
    if not any((root_p / s).is_dir() for s in W300_SUBSETS):
        raise AnnotationError(f"{root_p}: no 300W folders found (expected "
                              f"{', '.join(W300_SUBSETS)} under it)")
    out_p.mkdir(parents=True, exist_ok=True)

    box_dir = _find_box_dir(root_p)
    use_mat = box_dir is not None
    if box_dir is None:
        report.note(f"{root_p}: no 'Bounding Boxes' folder with bounding_boxes_*.mat; writing only "
                    "the landmark-box lists 300w.*.GTL (the official DET/GTB boxes need the .mat "
                    "files from the 300W site)")
    else:
        try:
            import scipy.io  # noqa: F401
        except ImportError:
            use_mat = False
            report.note("scipy is not installed, so bounding_boxes_*.mat cannot be read; writing "
                        "only the landmark-box lists 300w.*.GTL (pip install scipy for DET/GTB)")

    fix = _ListPaths(out_p, "300w", root_p, report)
    subsets: dict[str, list[tuple[_Face300W, tuple | None, tuple | None]]] = {}
    for sub, (mat_stem, expected) in W300_SUBSETS.items():
        folder = root_p / sub
        if not folder.is_dir():
            report.warn(folder, "300W subset folder not found", "missing folder")
            subsets[sub] = []
            continue
        faces = _scan_300w_subset(folder, fix, report)
        boxes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        if use_mat:
            assert box_dir is not None
            mat_path = box_dir / f"bounding_boxes_{mat_stem}.mat"
            if not mat_path.is_file():
                report.warn(mat_path, "bounding-box file not found; this subset gets GTL lists "
                            "only", "missing box file")
            else:
                try:
                    boxes = load_300w_boxes(mat_path)
                except AnnotationError as e:
                    report.skip(e, "bad box file")
        rows = []
        for face in faces:
            det = gt = None
            if boxes is not None:
                key = re.sub(r"\s+", "", face.image.name)
                if key not in boxes:
                    report.warn(face.image, f"no entry in bounding_boxes_{mat_stem}.mat; left out "
                                "of the DET/GTB lists", "no official box")
                else:
                    det, gt = _check_box(boxes[key][0]), _check_box(boxes[key][1])
                    if det is None or gt is None:
                        report.warn(face.image, f"empty or non-finite box in bounding_boxes_"
                                    f"{mat_stem}.mat; left out of the DET/GTB lists", "bad box")
                        det = gt = None
            rows.append((face, det, gt))
        if len(rows) != expected:
            report.note(f"{folder}: {len(rows)} usable faces, the official count is {expected}")
        subsets[sub] = rows

    written: dict[str, int] = {}
    for split, subs in W300_SPLITS.items():
        rows = [r for s in subs for r in subsets[s]]
        kinds: dict[str, list[ListEntry]] = {"GTL": [], "DET": [], "GTB": []}
        for face, det, gt in rows:
            kinds["GTL"].append(ListEntry(str(face.image), str(face.pts),
                                          landmark_box(face.points)))
            if det is not None and gt is not None:
                kinds["DET"].append(ListEntry(str(face.image), str(face.pts), det))
                kinds["GTB"].append(ListEntry(str(face.image), str(face.pts), gt))
        for kind, entries in kinds.items():
            if kind != "GTL" and not use_mat:
                continue
            name = f"300w.{split}.{kind}"
            if not entries:
                report.note(f"{name}: no usable faces; not written")
                continue
            _write(out_p, name, entries, report)
            written[name] = len(entries)
    return written


# ---------------------------------------------------------------------------------------------
# 300VW


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

    for split, vids in splits.items():
        all_entries: list[ListEntry] = []
        for vid in sorted(vids):
            folder = root_p / vid
            if not folder.is_dir():
                report.warn(folder, f"300VW video folder not found ({split})", "missing video")
                continue
            entries = _video_entries(folder, fix, report)
            if entries is None:
                continue
            emit(f"300VW.{split}.lst{vid}", entries)
            all_entries += entries
        if not all_entries:
            report.note(f"300VW.{split}.lst: no usable video; not written")
            continue
        emit(f"300VW.{split}.lst", all_entries)
    return written


# ---------------------------------------------------------------------------------------------
# AFLW


def _find_aflw_image(root: Path, name: str) -> Path:
    for base in (root, root / "flickr", root / "data" / "flickr", root / "images"):
        if (base / name).is_file():
            return base / name
    return root / "flickr" / name  # not found: the error names the usual place


@_lists_at_the_end
def prepare_aflw(root: str | os.PathLike[str], out: str | os.PathLike[str], report: Report,
                 train_count: int = AFLW_TRAIN_COUNT) -> dict[str, int]:
    """Write the AFLW (19-point, CUHK re-annotation) lists from ``root/AFLWinfo_release.mat``.

    Images are looked up as ``<name>`` under ``root``, ``root/flickr``, ``root/data/flickr`` or
    ``root/images`` (``name`` from ``nameList``, e.g. ``0/image00002.jpg``). For face i, points are
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
        img = _find_aflw_image(root_p, name)
        try:
            check_image(img)
        except AnnotationError as e:
            report.skip(e, "missing image" if not img.is_file() else "unreadable image")
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
        rel = Path(re.sub(r"\s+", "", name))
        pts_path = annot_dir / rel.parent / f"{rel.stem}-{i}.pts"
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
    written = {}
    for name, entries in lists.items():
        if not entries:
            report.note(f"{name}: no usable faces; not written")
            continue
        _write(out_p, name, entries, report)
        written[name] = len(entries)
    return written


# ---------------------------------------------------------------------------------------------
# WFLW


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
            box = _check_box(box_raw)
            if box is None:
                report.warn(f"{txt}:{j + 1}", f"empty or non-finite box {box_raw}", "bad box")
                continue
            img = img_dir / name
            try:
                check_image(img)
            except AnnotationError as e:
                report.skip(e, "missing image" if not img.is_file() else "unreadable image")
                continue
            rel = Path(name)
            pts_path = out_p / "annotations" / "wflw" / split / rel.parent / f"{rel.stem}-{j}.pts"
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
        for name, ents in lists.items():
            if not ents:
                report.note(f"{name}: no usable faces; not written")
                continue
            _write(out_p, name, ents, report)
            written[name] = len(ents)
    return written


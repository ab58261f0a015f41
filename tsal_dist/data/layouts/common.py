"""What the dataset preparers share: file checks (images decode, videos open), whitespace-free
list paths (a link, or an atomic copy where links are not allowed), writing a preparer's lists
only when it completes, and box / .mat string helpers.

What does not belong here: one dataset's layout or splits (``w300.py``, ``vw300.py``,
``aflw.py``, ``wflw.py``) and the bad-input counting itself (``report.py``).
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from tsal_dist.atomic import PLAIN, atomic_path
from tsal_dist.data.formats import AnnotationError, ListEntry, write_list
from tsal_dist.data.images import truncation
from tsal_dist.data.layouts.report import Report


def _nonempty_file(path: str | os.PathLike[str], kind: str) -> Path:
    """``path`` as a Path; AnnotationError naming it when it is missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: {kind} not found")
    if p.stat().st_size == 0:
        raise AnnotationError(f"{p}: empty {kind} file")
    return p


def check_image(path: str | os.PathLike[str]) -> None:
    """Check that an image exists and decodes (cheap 1/8-scale grayscale decode with OpenCV).

    Raises:
        AnnotationError: missing, empty or undecodable file; the message names the file.
    """
    import cv2

    p = _nonempty_file(path, "image")
    problem = truncation(p.read_bytes())
    if problem:
        raise AnnotationError(f"{p}: {problem}")
    img = cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if img is None or img.size == 0:
        raise AnnotationError(f"{p}: cannot decode image (corrupt or not an image)")


def usable_image(path: Path, report: Report) -> bool:
    """:func:`check_image`, with a bad image reported (skipped as "missing image" or
    "unreadable image") instead of raised."""
    try:
        check_image(path)
    except AnnotationError as e:
        report.skip(e, "missing image" if not path.is_file() else "unreadable image")
        return False
    return True


def video_frame_count(path: str | os.PathLike[str]) -> int:
    """Number of frames of a video, checking that its first and last frames decode.

    Uses decord when importable, else OpenCV (``CAP_PROP_FRAME_COUNT``, or counting by grabbing
    when the container does not say).

    Raises:
        AnnotationError: missing, empty or unreadable video; the message names the file.
    """
    p = _nonempty_file(path, "video")
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
                with atomic_path(fixed, mode=PLAIN) as tmp:  # complete or absent
                    shutil.copyfile(path, tmp)
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


def _write_lists(out: Path, lists: Mapping[str, list[ListEntry]], report: Report
                 ) -> dict[str, int]:
    """:func:`_write` each non-empty list (an empty one is noted, not written), in order.

    Returns:
        list file name -> number of lines, for the lists written.
    """
    written: dict[str, int] = {}
    for name, entries in lists.items():
        if not entries:
            report.note(f"{name}: no usable faces; not written")
            continue
        _write(out, name, entries, report)
        written[name] = len(entries)
    return written


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


def _check_box(box: Iterable[float]) -> tuple[float, float, float, float] | None:
    b = tuple(float(v) for v in box)
    if len(b) != 4 or not all(math.isfinite(v) for v in b) or b[2] <= b[0] or b[3] <= b[1]:
        return None
    return b  # type: ignore[return-value]


def _mat_str(x: Any) -> str:
    while isinstance(x, np.ndarray):
        if x.size != 1:
            raise ValueError(f"expected one string, got an array of shape {x.shape}")
        x = x.ravel()[0]
    return str(x)

"""What the dataset preparers share: file checks (images decode, videos open), image names from
annotations kept inside their folder, whitespace-free list paths (a link, or an atomic copy where
links are not allowed), writing a preparer's lists only when it completes (and removing the lists
of an earlier run that this run has nothing for), and box / .mat string helpers.

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

from tsal_dist.atomic import PLAIN, atomic_path, atomic_symlink
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


def relative_name(name: str) -> str | None:
    """An image name from an annotation file, normalised (``a//b``, ``a/./b``, ``a/x/../b`` ->
    ``a/b``), or None when it is empty, absolute, or leaves the folder it is relative to (``..``,
    ``../x``, ``a/../../x``): joined to a folder, the result stays inside that folder."""
    if not name or os.path.isabs(name):
        return None
    norm = os.path.normpath(name)
    if norm in (os.curdir, os.pardir) or norm.startswith(os.pardir + os.sep):
        return None
    return norm


def _inside(folder: Path, path: Path) -> bool:
    """True when ``path`` (normalised, not following links) is ``folder`` or below it."""
    base, p = os.path.abspath(folder), os.path.abspath(path)
    return os.path.commonpath([base, p]) == base


def check_inside(out: Path, path: Path) -> Path:
    """``path``, after checking that it lies inside the output folder ``out``.

    Raises:
        AnnotationError: naming the path, when it would be written outside ``out``.
    """
    if not _inside(out, path):
        raise AnnotationError(f"{path}: would be written outside the output folder {out}")
    return path


def _set_link(link: Path, target: str, is_dir: bool = False) -> str | None:
    """Make ``link`` a symbolic link to ``target``.

    A link that already points at ``target`` is kept. Anything else there (a link to another
    target, a file: an earlier copy) is replaced atomically (``atomic_symlink``).

    Returns:
        None when the link was kept; else what was there before: ``""`` (nothing), the old link's
        target, or ``"a file"``.
    Raises:
        OSError: links are not allowed here, or ``link`` is a folder (never replaced).
    """
    if link.is_symlink():
        old = os.readlink(link)
        if old == target:
            return None
    else:
        old = "a file" if link.exists() else ""
    atomic_symlink(link, target, is_dir=is_dir)
    return old


def _replaced(old: str | None) -> str:
    """What :func:`_set_link` replaced, for a note ("" when nothing was there)."""
    if not old:
        return ""
    return " (replacing a copy made by an earlier run)" if old == "a file" else \
        f" (replacing the earlier run's link to {old})"


class _ListPaths:
    """Whitespace-free paths for list files (list fields are whitespace-separated).

    The download is never modified. If the dataset root's path (as seen from ``out``) contains
    whitespace, one link ``out/roots/<dataset>`` -> root is made and paths go through it. A file
    whose own name contains whitespace (300W iBUG's ``image_092 _01``) gets a link (or a copy,
    where links are not allowed) ``out/renamed/<dataset>/<path with the whitespace removed>``.
    A link (or copy) left there by an earlier run for another root or file is replaced.
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
                old = _set_link(link, str(self.root), is_dir=True)
                self.report.note(f"{self.root}: whitespace in the dataset path; lists go through "
                                 f"the link {link}{_replaced(old)}")
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
        renamed = self.out / "renamed" / self.dataset
        fixed = renamed / Path(*(re.sub(r"\s+", "", q) for q in parts))
        if _has_space(os.path.relpath(fixed, self.out)):  # pragma: no cover - defensive
            raise AnnotationError(f"{fixed}: cannot make a whitespace-free path")
        check_inside(renamed, fixed)  # a part " .. " loses its spaces: never leave the folder
        try:
            old = _set_link(fixed, os.path.abspath(path))
        except OSError:  # no links here: an atomic copy
            if fixed.is_dir() and not fixed.is_symlink():
                raise
            if fixed.is_symlink():  # an earlier run's link: atomic_path would write through it
                fixed.unlink()
            with atomic_path(fixed, mode=PLAIN) as tmp:  # complete or absent
                shutil.copyfile(path, tmp)
            old = ""
        if old is not None:
            self.report.note(f"{path}: whitespace in the file name; listed as {fixed}"
                             f"{_replaced(old)}")
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


def _drop(out: Path, name: str, report: Report, why: str) -> None:
    """Remove the list ``out/name`` that an earlier run wrote, when this run has nothing for it
    (``why`` says what, in the summary); nothing to do when there is none."""
    path = out / name
    if not (path.is_file() or path.is_symlink()):
        return
    if report.pending is not None:
        report.pending.append((path, why, out))
        return
    path.unlink(missing_ok=True)
    report.removed(path, why)


def _write_lists(out: Path, lists: Mapping[str, list[ListEntry]], report: Report
                 ) -> dict[str, int]:
    """:func:`_write` each non-empty list, in order; an empty one is noted, not written, and the
    file of that name that an earlier run wrote into ``out`` is removed (:func:`_drop`).

    Returns:
        list file name -> number of lines, for the lists written.
    """
    written: dict[str, int] = {}
    for name, entries in lists.items():
        if not entries:
            report.note(f"{name}: no usable faces; not written")
            _drop(out, name, report, "no usable faces")
            continue
        _write(out, name, entries, report)
        written[name] = len(entries)
    return written


def _lists_at_the_end(fn: Callable[..., dict[str, int]]) -> Callable[..., dict[str, int]]:
    """A preparer's list files are written after it has read everything: one that stops (a bad
    input under --strict, an error) leaves no list behind that looks complete but is not. Each
    file is itself written atomically. The lists of an earlier run that this run has nothing for
    are removed then too, unless the run wrote no list at all (a wrong --root, which the CLI
    reports as an error): a failed run leaves the earlier lists as they were."""
    @functools.wraps(fn)
    def wrapper(root: str | os.PathLike[str], out: str | os.PathLike[str], report: Report,
                *args: Any, **kwargs: Any) -> dict[str, int]:
        report.pending = []
        try:
            result = fn(root, out, report, *args, **kwargs)
            pending = report.pending
        finally:
            report.pending = None
        writes = [(p, e, rel) for p, e, rel in pending if not isinstance(e, str)]
        for path, entries, rel in writes:
            write_list(path, entries, relative_to=rel)
            report.wrote(path, len(entries))
        stale = [(p, why, rel) for p, why, rel in pending if isinstance(why, str)]
        if stale and not writes:
            report.note(f"{stale[0][2]}: no list written, so the {len(stale)} list file(s) of an "
                        "earlier run there are left as they were")
        elif stale:
            for path, why, _ in stale:
                path.unlink(missing_ok=True)
                report.removed(path, why)
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

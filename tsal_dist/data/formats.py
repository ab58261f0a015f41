"""On-disk annotation formats: iBUG .pts files and SBR list files.

What belongs here: parsing and writing the real formats, with errors that name the file and the
problem. What does not: image decoding, cropping, augmentation (see datasets.py / transforms.py).

Coordinates are kept exactly as written on disk (300W/300VW .pts are 1-based Matlab-style pixel
coordinates; like SBR we use them as they are, and we write them the same way).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsal_dist.atomic import atomic_write_text


class AnnotationError(ValueError):
    """A data file is missing, unreadable or malformed. The message names the file."""


@dataclass(frozen=True)
class ListEntry:
    """One line of an SBR list: ``image annotation x1 y1 x2 y2 [face_size]``.

    ``image`` is a path, or ``<video path>#<0-based frame index>`` for a frame read straight from a
    video file. ``annotation`` is a .pts path or None (the literal ``None``: unlabeled). Relative
    paths in a list file are resolved against the list file's folder when read.
    """

    image: str
    annotation: str | None
    box: tuple[float, float, float, float]  # x1 y1 x2 y2, image pixels
    face_size: float | None = None

    @property
    def is_video_frame(self) -> bool:
        return split_video_ref(self.image) is not None


def split_video_ref(image: str) -> tuple[str, int] | None:
    """``"a/vid.avi#12"`` -> ``("a/vid.avi", 12)``; a plain image path -> None."""
    if "#" not in image:
        return None
    path, _, idx = image.rpartition("#")
    if not idx.isdigit():
        return None
    return path, int(idx)


def read_pts(path: str | Path, num_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an iBUG .pts file.

    Supports the 300W/300VW "version: 1" format (all points visible) and the AFLW one-point-per-line
    variant ``idx x y True`` (1-based idx; missing indices are invisible; needs ``num_points``).

    Returns:
        points: (K, 2) float32 x, y as written in the file (invisible points are 0).
        visible: (K,) float32 in {0, 1}.
    Raises:
        AnnotationError: missing/unreadable file, malformed header or lines, wrong point count, NaN.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except FileNotFoundError:
        raise AnnotationError(f"{p}: annotation file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{p}: cannot read annotation: {e}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise AnnotationError(f"{p}: empty annotation file")
    if lines[0].lower().startswith("version"):
        return _read_pts_v0(p, lines, num_points)
    return _read_pts_v1(p, lines, num_points)


def _read_pts_v0(p: Path, lines: list[str],
                 num_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    if len(lines) < 3 or not lines[1].lower().startswith("n_points"):
        raise AnnotationError(f"{p}: expected 'n_points: N' on line 2")
    try:
        n = int(lines[1].split(":", 1)[1])
    except (IndexError, ValueError):
        raise AnnotationError(f"{p}: bad n_points line {lines[1]!r}") from None
    if lines[2] != "{":
        raise AnnotationError(f"{p}: expected '{{' on line 3")
    if "}" not in lines:
        raise AnnotationError(f"{p}: missing closing '}}'")
    body = lines[3:lines.index("}")]
    if len(body) != n:
        raise AnnotationError(f"{p}: header says {n} points but {len(body)} are listed")
    if num_points is not None and n != num_points:
        raise AnnotationError(f"{p}: has {n} points, expected {num_points}")
    pts = np.zeros((n, 2), np.float32)
    for i, ln in enumerate(body):
        parts = ln.split()
        if len(parts) != 2:
            raise AnnotationError(f"{p}: point {i + 1}: expected 'x y', got {ln!r}")
        try:
            pts[i] = [float(parts[0]), float(parts[1])]
        except ValueError:
            raise AnnotationError(f"{p}: point {i + 1}: not a number: {ln!r}") from None
    if not np.isfinite(pts).all():
        raise AnnotationError(f"{p}: contains NaN or infinite coordinates")
    return pts, np.ones(n, np.float32)


def _read_pts_v1(p: Path, lines: list[str],
                 num_points: int | None) -> tuple[np.ndarray, np.ndarray]:
    if num_points is None:
        raise AnnotationError(f"{p}: one-point-per-line (AFLW) format needs the number of points")
    pts = np.zeros((num_points, 2), np.float32)
    vis = np.zeros(num_points, np.float32)
    seen: set[int] = set()
    for ln in lines:
        parts = ln.split()
        if len(parts) not in (3, 4):
            raise AnnotationError(f"{p}: expected 'idx x y [True|False]', got {ln!r}")
        try:
            idx = int(parts[0])
            x, y = float(parts[1]), float(parts[2])
        except ValueError:
            raise AnnotationError(f"{p}: not a number in line {ln!r}") from None
        if not 1 <= idx <= num_points:
            raise AnnotationError(f"{p}: point index {idx} outside 1..{num_points}")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AnnotationError(f"{p}: point {idx} has NaN or infinite coordinates")
        if idx in seen:
            raise AnnotationError(f"{p}: point {idx} listed twice")
        seen.add(idx)
        if len(parts) == 4 and parts[3].lower() not in ("true", "false", "1", "0"):
            raise AnnotationError(f"{p}: point {idx}: visibility flag {parts[3]!r} is not "
                                  "True/False/1/0")
        visible = len(parts) == 3 or parts[3].lower() in ("true", "1")
        if visible:
            pts[idx - 1] = [x, y]
            vis[idx - 1] = 1.0
    return pts, vis


def write_pts(path: str | Path, points: np.ndarray, visible: np.ndarray | None = None) -> None:
    """Write points in the 300W "version: 1" format, or the AFLW variant if some are invisible."""
    pts = np.asarray(points, dtype=np.float64)
    if not np.isfinite(pts).all():
        raise ValueError(f"{path}: refusing to write NaN/infinite coordinates")
    if visible is not None and not np.any(np.asarray(visible) > 0):
        raise ValueError(f"{path}: refusing to write an annotation with no visible point")
    if visible is None or np.all(np.asarray(visible) > 0):
        body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in pts)
        text = f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n"
    else:
        text = "".join(f"{i + 1} {x:.3f} {y:.3f} True\n"
                       for i, ((x, y), v) in enumerate(zip(pts, visible)) if v > 0)
    atomic_write_text(path, text)


def parse_list_line(line: str, where: str) -> ListEntry:
    """Parse one SBR list line; ``where`` (``file:line``) prefixes any error."""
    parts = line.split()
    if len(parts) not in (6, 7):
        raise AnnotationError(f"{where}: expected 'image annotation x1 y1 x2 y2 [face_size]', "
                              f"got {len(parts)} fields")
    try:
        box = tuple(float(v) for v in parts[2:6])
        face_size = float(parts[6]) if len(parts) == 7 else None
    except ValueError:
        raise AnnotationError(f"{where}: box/face_size not numbers: {line.strip()!r}") from None
    if not all(math.isfinite(v) for v in box) or (face_size is not None
                                                 and not math.isfinite(face_size)):
        raise AnnotationError(f"{where}: box or face_size is NaN/infinite")
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise AnnotationError(f"{where}: empty box {box}")
    ann = None if parts[1] == "None" else parts[1]
    return ListEntry(parts[0], ann, box, face_size)  # type: ignore[arg-type]


def read_list(path: str | Path) -> list[ListEntry]:
    """Read an SBR list file; relative paths are resolved against the list file's folder.

    Raises AnnotationError (naming file and line) on the first malformed line; skipping bad
    entries is the datasets' job (they know strict mode).
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise AnnotationError(f"{p}: list file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{p}: cannot read list file: {e}") from None
    base = p.parent
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        e = parse_list_line(line, f"{p}:{i}")
        out.append(ListEntry(_resolve(base, e.image), None if e.annotation is None
                             else _resolve(base, e.annotation), e.box, e.face_size))
    return out


def _resolve(base: Path, ref: str) -> str:
    vid = split_video_ref(ref)
    path, suffix = (vid[0], f"#{vid[1]}") if vid else (ref, "")
    if os.path.isabs(path):
        return ref
    return str(base / path) + suffix


def write_list(path: str | Path, entries: list[ListEntry],
               relative_to: str | Path | None = None) -> None:
    """Write an SBR list file atomically; paths are written relative to ``relative_to`` if given."""
    lines = []
    for e in entries:
        img, ann = e.image, e.annotation
        if relative_to is not None:
            img = _relpath(img, relative_to)
            ann = None if ann is None else _relpath(ann, relative_to)
        for ref in (img, ann):
            if ref is not None and any(c.isspace() for c in ref):
                raise ValueError(f"{path}: path contains whitespace, which the list format "
                                 f"cannot represent: {ref!r}")
        fields = [img, ann or "None", *(f"{v:.4f}" for v in e.box)]
        if e.face_size is not None:
            fields.append(f"{e.face_size:.4f}")
        lines.append(" ".join(fields))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def _relpath(ref: str, base: str | Path) -> str:
    vid = split_video_ref(ref)
    path, suffix = (vid[0], f"#{vid[1]}") if vid else (ref, "")
    return os.path.relpath(path, base) + suffix


def landmark_box(points: np.ndarray,
                 visible: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Tight box of the (visible) points: floor of the minimum, ceil of the maximum (300VW/SBR)."""
    pts = points if visible is None else points[np.asarray(visible) > 0]
    if len(pts) == 0:
        raise AnnotationError("landmark_box: no visible point to box")
    x1, y1 = np.floor(pts.min(0))
    x2, y2 = np.ceil(pts.max(0))
    return float(x1), float(y1), float(x2), float(y2)

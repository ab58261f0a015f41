"""300W: the official download (six subset folders of image + .pts pairs, and the organisers'
bounding-box .mat files) -> ``300w.<split>.{GTL,DET,GTB}`` lists."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tsal_dist.data.formats import AnnotationError, ListEntry, landmark_box, read_pts
from tsal_dist.data.layouts.common import (
    _abs,
    _check_box,
    _drop,
    _lists_at_the_end,
    _ListPaths,
    _mat_str,
    _write_lists,
    check_image,
)
from tsal_dist.data.layouts.report import Report

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
#: The 300W private test set (a separate download, 600 faces, no box files): folder -> count.
#: Listed as ``300w.test.private.GTL`` when its folders are under the root.
W300_PRIVATE: dict[str, int] = {"01_Indoor": 300, "02_Outdoor": 300}


@dataclass(frozen=True)
class _Face300W:
    image: Path
    pts: Path
    points: np.ndarray  # (68, 2)


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
    image is listed once (TSAL's 10x repetition is a sampler matter, not a list matter). The
    private test set (``root/{01_Indoor, 02_Outdoor}/``, 600 faces), when there, becomes
    ``300w.test.private.GTL``.

    Returns:
        list file name -> number of lines.
    Raises:
        AnnotationError: no 300W subset folder under ``root`` at all, or (strict) any bad input.
    """
    root_p, out_p = _abs(root), _abs(out)
    if not any((root_p / s).is_dir() for s in (*W300_SUBSETS, *W300_PRIVATE)):
        raise AnnotationError(f"{root_p}: no 300W folders found (expected "
                              f"{', '.join((*W300_SUBSETS, *W300_PRIVATE))} under it)")
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
        written.update(_write_lists(out_p, {f"300w.{split}.{kind}": entries
                                            for kind, entries in kinds.items()
                                            if kind == "GTL" or use_mat}, report))
        if not use_mat:
            for kind in ("DET", "GTB"):
                _drop(out_p, f"300w.{split}.{kind}", report, "no official boxes read")
    if not any((root_p / sub).is_dir() for sub in W300_PRIVATE):
        _drop(out_p, "300w.test.private.GTL", report, "no private test set under the root")
    else:
        private: list[ListEntry] = []
        for sub, expected in W300_PRIVATE.items():
            folder = root_p / sub
            if not folder.is_dir():
                report.warn(folder, "300W private test folder not found", "missing folder")
                continue
            faces = _scan_300w_subset(folder, fix, report)
            if len(faces) != expected:
                report.note(f"{folder}: {len(faces)} usable faces, the official count is "
                            f"{expected}")
            private += [ListEntry(str(f.image), str(f.pts), landmark_box(f.points))
                        for f in faces]
        written.update(_write_lists(out_p, {"300w.test.private.GTL": private}, report))
    return written

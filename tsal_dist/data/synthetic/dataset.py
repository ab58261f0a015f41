"""The dataset on disk: rendering every item into 300W / 300VW / SBR-list layout (in a temporary
folder renamed into place), its manifest and contact sheet, and the cache folder keyed by the
sizes, the labeled domain (when not the default) and ``generator_fingerprint()``."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from tsal_dist.atomic import atomic_write_bytes
from tsal_dist.config import SyntheticConfig, to_dict
from tsal_dist.config.experiment import DomainConfig
from tsal_dist.data import formats
from tsal_dist.data.formats import ListEntry, landmark_box, write_list, write_pts
from tsal_dist.data.synthetic.face import NUM_POINTS
from tsal_dist.data.synthetic.scene import render_image
from tsal_dist.data.synthetic.video import _write_video, render_video

LIST_FILES = {
    "train": "synthetic.train.lst",
    "test": "synthetic.test.lst",
    "videos_train_unlabeled": "synthetic.videos.train.none",
    "videos_train": "synthetic.videos.train.lst",
    "videos_test": "synthetic.videos.test.lst",
}

# Random streams: each item draws from default_rng([seed, stream, index]) (99: the identity basis,
# face.py).
_STREAM_TRAIN, _STREAM_TEST, _STREAM_VIDEO, _STREAM_TEST_VIDEO = 1, 2, 3, 4

# The sizes and their defaults: SyntheticConfig's fields, nowhere else. The labeled domain is no
# size: it is its own argument, and enters the cache key only when it is not the default.
_DEFAULTS = SyntheticConfig()
_SIZE_DEFAULTS = {f.name: getattr(_DEFAULTS, f.name) for f in dataclasses.fields(_DEFAULTS)
                  if f.name != "labeled_domain"}
_WIDE = DomainConfig()  # the test images' and the videos' domain, whatever the labeled one

_GENERATOR = "tsal_dist.data.synthetic"  # manifest.json's "generator"
# What the generator writes (paths relative to the dataset root, "/"-separated): its files, and
# the folders that hold them. content_digest hashes these files only; a folder holding nothing
# else (and a manifest.json of the generator) is a previous output generate_dataset may replace.
_OWN_FILE = re.compile(
    r"300W/(train|test)/\d{5,}\.(jpg|pts)|300VW/[vt]\d{3,}/(vid\.avi|annot/\d{6,}\.pts)"
    r"|lists/(" + "|".join(re.escape(n) for n in LIST_FILES.values()) + r")|contact_sheet\.png")
_OWN_DIR = re.compile(r"300W(/(train|test))?|300VW(/[vt]\d{3,}(/annot)?)?|lists")


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise OSError(f"{path}: JPEG encoding failed")
    atomic_write_bytes(path, buf.tobytes())


def detector_box(lm: np.ndarray, rng: np.random.Generator, size: int
                 ) -> tuple[float, float, float, float]:
    """A detector-like box: the tight landmark box, expanded ~0-10% and jittered ~+-5% per side."""
    x1, y1, x2, y2 = landmark_box(lm)
    w, h = x2 - x1, y2 - y1
    e = rng.uniform(0.0, 0.10)
    j = rng.uniform(-0.05, 0.05, 4)
    b = [x1 - (e + j[0]) * w, y1 - (e + j[1]) * h, x2 + (e + j[2]) * w, y2 + (e + j[3]) * h]
    b = [float(np.clip(v, 0, size - 1)) for v in b]
    if b[2] - b[0] < 2 or b[3] - b[1] < 2:
        return landmark_box(lm)
    return (round(b[0], 2), round(b[1], 2), round(b[2], 2), round(b[3], 2))


def dataset_lists(root: str | Path) -> dict[str, Path]:
    """Paths of the synthetic dataset's list files under ``root`` (not checked for existence).

    Keys: "train", "test", "videos_train_unlabeled", "videos_train", "videos_test".
    """
    lists = Path(root) / "lists"
    return {k: lists / v for k, v in LIST_FILES.items()}


def _contact_sheet(samples: list[tuple[np.ndarray, np.ndarray]], cols: int = 6) -> np.ndarray:
    """RGB grid of images with landmarks drawn (jaw, brows, nose, eyes, mouth coloured apart)."""
    groups = [(range(0, 17), (255, 255, 0)), (range(17, 27), (255, 128, 0)),
              (range(27, 36), (0, 255, 255)), (range(36, 48), (0, 255, 0)),
              (range(48, 68), (255, 0, 255))]
    tiles = []
    for img, lm in samples:
        t = img.copy()
        r = max(1, img.shape[0] // 128)
        for idx, col in groups:
            for i in idx:
                cv2.circle(t, (int(round(lm[i, 0] * 4)), int(round(lm[i, 1] * 4))), r * 4, col, -1,
                           cv2.LINE_AA, 2)
        tiles.append(t)
    h, w = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * h, cols * w, 3), np.uint8)
    for k, t in enumerate(tiles):
        sheet[(k // cols) * h:(k // cols + 1) * h, (k % cols) * w:(k % cols + 1) * w] = t
    return sheet


def generate_dataset(out: str | Path, *, images: int, test_images: int, videos: int,
                     test_videos: int, frames: int, image_size: int = _DEFAULTS.image_size,
                     seed: int = _DEFAULTS.seed,
                     labeled_domain: DomainConfig = _DEFAULTS.labeled_domain,
                     progress: bool = True) -> Path:
    """Render the whole synthetic dataset into ``out``.

    The labeled training images come from ``labeled_domain``; the test images and all videos from
    the wide (default) domain. The default domain gives the same bytes as before it existed.

    The dataset is rendered into a temporary sibling folder ``.<out name>.tmp-*`` that is renamed
    to ``out`` when complete, so ``out`` holds exactly this run's files (a run that fails leaves
    ``out`` as it was). ``out`` may be missing, an empty folder, or the output of an earlier run
    (``manifest.json`` of this generator, and no file the generator does not write), which is
    replaced. Anything else is refused before rendering: no user folder is ever deleted.

    Layout::

        out/300W/{train,test}/NNNNN.jpg + NNNNN.pts
        out/300VW/<vid>/vid.avi + out/300VW/<vid>/annot/000001.pts ...  (file number = frame + 1)
        out/lists/synthetic.{train,test}.lst, synthetic.videos.train.{none,lst},
                  synthetic.videos.test.lst   (paths relative to lists/)
        out/contact_sheet.png
        out/manifest.json   (written last, atomically: its presence means the dataset is complete)

    Returns:
        ``out`` as a Path.
    Raises:
        ValueError: a size is out of range.
        FileExistsError: ``out`` is not a folder, or not empty and not an earlier output (the
            message names it and the first foreign file).
    """
    for name, v, lo in (("images", images, 1), ("test_images", test_images, 1),
                        ("videos", videos, 0), ("test_videos", test_videos, 0),
                        ("frames", frames, 1), ("image_size", image_size, 32)):
        if int(v) < lo:
            raise ValueError(f"generate_dataset: {name}={v} must be >= {lo}")
    final = Path(out).resolve()  # a link to a folder: replace the folder, keep the link
    _check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        _render(tmp, images=images, test_images=test_images, videos=videos,
                test_videos=test_videos, frames=frames, image_size=image_size, seed=seed,
                labeled_domain=labeled_domain, progress=progress)
        _install(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return Path(out)


def _foreign(root: Path) -> str | None:
    """Why ``root`` (an existing, non-empty folder) is not an earlier output of the generator
    that may be replaced, or None when it is one."""
    try:
        man = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return "it holds no manifest.json of the synthetic generator"
    if not isinstance(man, dict) or man.get("generator") != _GENERATOR:
        return "its manifest.json is not the synthetic generator's"
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        own = (_OWN_DIR.fullmatch(rel) if p.is_dir() and not p.is_symlink()
               else p.is_file() and not p.is_symlink()
               and (rel == "manifest.json" or _OWN_FILE.fullmatch(rel)))
        if not own:
            return f"{p} is not a file the generator writes"
    return None


def _check_replaceable(final: Path) -> None:
    """Raise FileExistsError (one line naming ``final``) unless ``final`` is missing, an empty
    folder or an earlier output of the generator."""
    if not final.exists():
        return
    if not final.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a folder; not writing the "
                              "synthetic dataset there", str(final))
    if not any(final.iterdir()):
        return
    why = _foreign(final)
    if why is not None:
        raise FileExistsError(errno.EEXIST, f"not empty and not an earlier synthetic output "
                              f"({why}); not replacing it: choose a new or empty folder",
                              str(final))


def _install(tmp: Path, final: Path) -> None:
    """Rename the complete dataset ``tmp`` to ``final``, replacing an empty folder or an earlier
    output there (checked again now; moved aside, then deleted once the new one is in place)."""
    _check_replaceable(final)
    if not final.exists() or not any(final.iterdir()):
        os.replace(tmp, final)  # over a missing name or an empty folder
        return
    old = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _render(root: Path, *, images: int, test_images: int, videos: int, test_videos: int,
            frames: int, image_size: int, seed: int, labeled_domain: DomainConfig,
            progress: bool) -> None:
    """Render the dataset into the (new, empty) folder ``root``: see :func:`generate_dataset`."""
    lists_dir = root / "lists"
    lists_dir.mkdir(exist_ok=True)
    total = images + test_images + (videos + test_videos) * frames
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="synthetic faces", unit="img", file=sys.stderr)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    sheet: list[tuple[np.ndarray, np.ndarray]] = []
    try:
        entries: dict[str, list[ListEntry]] = {k: [] for k in LIST_FILES}
        for split, count, stream in (("train", images, _STREAM_TRAIN),
                                     ("test", test_images, _STREAM_TEST)):
            d = root / "300W" / split
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, stream, i])
                img, lm, q = render_image(rng, image_size,
                                          labeled_domain if split == "train" else _WIDE)
                jpg, pts = d / f"{i:05d}.jpg", d / f"{i:05d}.pts"
                _write_jpeg(jpg, img, q)
                write_pts(pts, lm)
                entries[split].append(ListEntry(str(jpg), str(pts), detector_box(lm, rng,
                                                                                  image_size)))
                if split == "train" and len(sheet) < 18:
                    sheet.append((img, lm))
                if bar is not None:
                    bar.update(1)
        for split, count, stream, prefix in (("train", videos, _STREAM_VIDEO, "v"),
                                             ("test", test_videos, _STREAM_TEST_VIDEO, "t")):
            for j in range(count):
                rng = np.random.default_rng([seed, stream, j])
                vframes, lms, q = render_video(rng, frames, image_size)
                vdir = root / "300VW" / f"{prefix}{j + 1:03d}"
                avi = vdir / "vid.avi"
                _write_video(avi, vframes, q)
                for t, lm in enumerate(lms):
                    pts = vdir / "annot" / f"{t + 1:06d}.pts"
                    write_pts(pts, lm)
                    box = landmark_box(lm)
                    ref = f"{avi}#{t}"
                    if split == "train":
                        entries["videos_train_unlabeled"].append(ListEntry(ref, None, box))
                        entries["videos_train"].append(ListEntry(ref, str(pts), box))
                    else:
                        entries["videos_test"].append(ListEntry(ref, str(pts), box))
                if j < 3 and split == "train":
                    sheet += [(vframes[t], lms[t]) for t in (0, frames // 2)]
                if bar is not None:
                    bar.update(frames)
        paths = dataset_lists(root)
        for k, p in paths.items():
            write_list(p, entries[k], relative_to=lists_dir)
        png = cv2.imencode(".png", cv2.cvtColor(_contact_sheet(sheet), cv2.COLOR_RGB2BGR))[1]
        atomic_write_bytes(root / "contact_sheet.png", png.tobytes())
        manifest = {
            "generator": "tsal_dist.data.synthetic", "fingerprint": generator_fingerprint(),
            "numpy": np.__version__, "opencv": cv2.__version__,
            "content_sha256": content_digest(root), "seed": seed,
            "images": images, "test_images": test_images, "videos": videos,
            "test_videos": test_videos, "frames": frames, "image_size": image_size,
            "labeled_domain": to_dict(labeled_domain), "num_points": NUM_POINTS,
            "landmark_scheme": "ibug68",
            "pts_coordinates": "0-based pixel centres (x right, y down)",
            "lists": {k: str(p.relative_to(root)) for k, p in paths.items()},
            "counts": {k: len(v) for k, v in entries.items()},
        }
        atomic_write_bytes(root / "manifest.json",
                           (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    finally:
        cv2.setNumThreads(threads)
        if bar is not None:
            bar.close()


def generator_fingerprint() -> str:
    """16 hex of what decides the bytes the generator writes.

    That is the source of this package (every .py file of it, by name) and of the writers it calls
    (``formats.py``), and the numpy (random streams) and OpenCV (drawing, libjpeg, MJPEG)
    versions. A cache folder is keyed by it, so any change to the generator -- with nobody
    remembering to bump a version -- or another library version gives a folder of its own instead
    of silently reusing other data.
    """
    h = hashlib.sha256()
    package = sorted(Path(__file__).resolve().parent.glob("*.py"), key=lambda p: p.name)
    for path in [*package, Path(formats.__file__)]:
        h.update(path.name.encode() + b"\0")
        h.update(path.read_bytes())
    h.update(f"numpy {np.__version__} opencv {cv2.__version__}".encode())
    return h.hexdigest()[:16]


def content_digest(root: str | Path) -> str:
    """sha256 over the files of a generated dataset that the generator writes, except
    manifest.json (relative paths + bytes); other files in ``root`` are not the dataset's.

    Equal digests mean byte-identical datasets wherever they were generated.
    """
    root = Path(root)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*")
                    if q.is_file() and _OWN_FILE.fullmatch(q.relative_to(root).as_posix())):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def synthetic_key(labeled_domain: DomainConfig = _DEFAULTS.labeled_domain, **sizes: int) -> str:
    """Folder name for these sizes: ``synthetic-<12 hex>`` of sizes, seed, generator and (only
    when it is not the default, so default folders keep their names) the labeled domain."""
    unknown = set(sizes) - set(_SIZE_DEFAULTS)
    if unknown:
        raise TypeError(f"ensure_synthetic: unknown size argument(s) {sorted(unknown)}; "
                        f"expected {sorted(_SIZE_DEFAULTS)}")
    full: dict = {**_SIZE_DEFAULTS, **{k: int(v) for k, v in sizes.items()},
                  "generator": generator_fingerprint()}
    if labeled_domain != _DEFAULTS.labeled_domain:
        full["labeled_domain"] = to_dict(labeled_domain)
    return "synthetic-" + hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:12]


def _intact(root: Path) -> bool:
    """True when ``root`` holds a complete dataset whose files still match its manifest."""
    try:
        man = json.loads((root / "manifest.json").read_text())
        return man.get("content_sha256") == content_digest(root)
    except (OSError, ValueError):
        return False


def ensure_synthetic(cache_dir: str | Path, *, progress: bool = True,
                     labeled_domain: DomainConfig = _DEFAULTS.labeled_domain, **sizes: int) -> Path:
    """Generate the dataset once into ``cache_dir/synthetic-<hash>`` and reuse it afterwards.

    Generation goes to a temporary sibling folder that is renamed into place when complete, so an
    interrupted run never leaves a half dataset under the final name. The folder is keyed by the
    sizes and ``generator_fingerprint()``; a reused folder is checked against the content digest
    in its manifest (about 0.1 s for the default dataset) and generated again if it differs.

    Args:
        cache_dir: parent folder (``~`` expanded, created if missing).
        progress: show a progress bar while generating.
        labeled_domain: the labeled training images' domain (default: wide, like the rest).
        **sizes: any of images, test_images, videos, test_videos, frames, image_size, seed
            (defaults as in ``SyntheticConfig``).
    Returns:
        The dataset root (contains manifest.json).
    """
    key = synthetic_key(labeled_domain, **sizes)
    cache = Path(cache_dir).expanduser()
    final = cache / key
    if (final / "manifest.json").is_file():
        if _intact(final):
            return final
        print(f"tsal_dist: {final}: files differ from its manifest.json (changed or damaged "
              "since generation); generating it again", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    if final.exists():  # left by something that did not finish, or damaged: not ours to trust
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{key}.tmp-"))
    try:
        generate_dataset(tmp, **{**_SIZE_DEFAULTS, **sizes}, labeled_domain=labeled_domain,
                         progress=progress)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "manifest.json").is_file():  # lost a race to a broken folder
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final

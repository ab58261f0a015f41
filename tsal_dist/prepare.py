"""``python -m tsal_dist.prepare``: turn a dataset download into SBR list files.

    python -m tsal_dist.prepare synthetic --out DIR [--images N --test-images N --videos V
                                                     --test-videos V --frames F --seed S]
    python -m tsal_dist.prepare {300w,300vw,aflw,wflw} --root DIR --out DIR [--strict]

Bad inputs (corrupt images, malformed or missing annotations, wrong point counts, NaNs, unreadable
videos, annotation/frame count mismatches) are reported one line each and skipped; ``--strict``
makes the first one fatal (exit status 2, one-line message, no traceback). A summary (lists
written, lists of an earlier run removed, inputs skipped by reason, warnings) is printed at the
end. ``synthetic`` renders into a temporary folder beside ``--out`` and renames it into place,
replacing an earlier synthetic output; any other non-empty ``--out`` is refused in one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from tsal_dist.config import SyntheticConfig
from tsal_dist.data.formats import AnnotationError
from tsal_dist.data.layouts import Report, prepare_300vw, prepare_300w, prepare_aflw, prepare_wflw

REAL_DATASETS: dict[str, Callable[..., dict[str, int]]] = {
    "300w": prepare_300w,
    "300vw": prepare_300vw,
    "aflw": prepare_aflw,
    "wflw": prepare_wflw,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (one sub-command per dataset)."""
    parser = argparse.ArgumentParser(prog="python -m tsal_dist.prepare",
                                     description="Write SBR list files for a dataset.")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    syn = sub.add_parser("synthetic", help="generate the synthetic dataset (real on-disk formats)")
    syn.add_argument("--out", required=True, help="output folder")
    d = SyntheticConfig()  # defaults live in the config schema only
    syn.add_argument("--images", type=int, default=d.images, help="labeled training images")
    syn.add_argument("--test-images", type=int, default=d.test_images, help="test images")
    syn.add_argument("--videos", type=int, default=d.videos, help="unlabeled training videos")
    syn.add_argument("--test-videos", type=int, default=d.test_videos, help="test videos")
    syn.add_argument("--frames", type=int, default=d.frames, help="frames per video")
    syn.add_argument("--seed", type=int, default=d.seed, help="random seed")
    helps = {"300w": "300W (afw, helen, lfpw, ibug + Bounding Boxes/*.mat)",
             "300vw": "300VW (<vid>/vid.avi + <vid>/annot/%%06d.pts)",
             "aflw": "AFLW 19 points (AFLWinfo_release.mat + flickr images)",
             "wflw": "WFLW 98 points (WFLW_annotations + WFLW_images)"}
    for name, text in helps.items():
        p = sub.add_parser(name, help=text)
        p.add_argument("--root", required=True, help="folder of the official download")
        p.add_argument("--out", required=True, help="folder for the list files")
        p.add_argument("--strict", action="store_true",
                       help="stop at the first bad input (default: report, skip, count)")
    return parser


def _quiet_opencv() -> None:
    """OpenCV prints its own decoder warnings for corrupt files; our messages replace them."""
    try:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input or arguments)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out).expanduser()
    if args.dataset == "synthetic":
        try:  # heavy, and only this branch needs it
            from tsal_dist.data.synthetic import generate_dataset
        except ImportError as e:
            print(f"error: cannot import the synthetic generator: {e}", file=sys.stderr)
            return 2
        try:
            result = generate_dataset(out, images=args.images, test_images=args.test_images,
                                      videos=args.videos, test_videos=args.test_videos,
                                      frames=args.frames, seed=args.seed)
        except ValueError as e:  # a size out of range; the message names it
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # the output folder cannot be made or written
            print(f"error: {e.filename or out}: {e.strerror or e}", file=sys.stderr)
            return 2
        where = Path(result) if isinstance(result, (str, Path)) else out
        print(f"synthetic dataset written to {where}")
        lists = sorted(p.name for p in (where / "lists").glob("*")) if (where / "lists").is_dir() \
            else []
        if lists:
            print(f"list files in {where / 'lists'}: {' '.join(lists)}")
        return 0

    root = Path(args.root).expanduser()
    if not root.is_dir():
        print(f"error: {root}: dataset root is not a folder", file=sys.stderr)
        return 2
    _quiet_opencv()
    report = Report(strict=args.strict)
    try:
        written = REAL_DATASETS[args.dataset](root, out, report)
    except AnnotationError as e:
        hint = " (--strict: stopping at the first bad input)" if args.strict else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the output folder is not writable
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"prepare {args.dataset}: {root} -> {out}")
    print(report.summary())
    if not written:  # e.g. --root one folder too high or low: every face's image "missing"
        print(f"error: {root}: no list written, not one usable face found (is it the "
              f"{args.dataset} download's folder? docs/data.md says what it holds)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

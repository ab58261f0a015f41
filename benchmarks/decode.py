"""Which heatmap decode to use at inference: the SBR window mean vs DARK, chosen on validation.

For each checkpoint, runs the teacher ONCE per image on (a) the run's own validation split (the
held-out tail of the labeled training list, never trained on), (b) the held-out test images and
(c) the held-out test video frames, keeps the final-stage heatmaps, and decodes them with

  window r   the SBR/TSAL weighted mean over a (2r+1)^2 window (r = 1..4; 4 was the default)
  dark b     DARK (codec.decode_dark): Gaussian blur of b cells, then a log-Taylor step

The choice is made on (a) only; (b) and (c) show whether it carries over. Writes
benchmarks/results/decode.{json,md,png}.

    python benchmarks/decode.py RUN/checkpoints/ckpt-00001500.pt [more checkpoints ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_io import save_figure, strict_json, write_text  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
WINDOWS = (1, 2, 3, 4)
BLURS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)


def heatmaps_of(model, entries, cfg):
    """(maps (N, K, h, w), gts, visible, face_size, inverse affines) for labeled entries."""
    import numpy as np
    import torch

    from tsal_dist.data.datasets import EvalImageDataset
    from tsal_dist.data.transforms import invert_affine
    from tsal_dist.eval.run import predict

    k = cfg.data.num_points
    ds = EvalImageDataset(entries, num_points=k, input_size=cfg.model.input_size,
                          pre_crop_expand=cfg.data.pre_crop_expand)
    maps: list = []

    def keep(m):
        maps.append(m.detach().clone())
        return torch.zeros(m.shape[0], k, 2), m.flatten(2).amax(2)

    out = predict(model, ds, decode=keep, batch_size=32)
    inv = invert_affine(np.stack([ds.get(int(i), 0)["affine"] for i in out["indices"]]))
    return torch.cat(maps), out, inv


def score(crop_xy, out, inv, k) -> float:

    from tsal_dist.eval.run import apply_affine, score_predictions

    preds = apply_affine(inv, crop_xy.double().numpy())
    summary, _ = score_predictions(preds, out["gts"], out["visible"], out["face_size"], k)
    return float(summary["nme_inter_ocular"])


def evaluate(checkpoint: Path) -> dict:

    from tsal_dist.codec import decode_dark, decode_peaks
    from tsal_dist.config import ExperimentConfig
    from tsal_dist.data.formats import read_list
    from tsal_dist.loop.checkpoint import load_checkpoint
    from tsal_dist.data.lists import resolve_data, split_labeled
    from tsal_dist.models import build_model

    ckpt = load_checkpoint(checkpoint)
    cfg = ExperimentConfig.from_dict(ckpt["config"])
    model = build_model(cfg.model, cfg.data.num_points)
    model.load_state_dict(ckpt["teacher"])
    lists = resolve_data(cfg)
    labeled = [e for p in lists.labeled for e in read_list(p)]
    _, val = split_labeled(labeled, cfg.run.val_images, cfg.data.labeled_limit)
    sets = {"validation": val}
    for p in lists.eval:
        sets[Path(p).name] = [e for e in read_list(p) if e.annotation is not None]
    stride = int(model.stride)
    res: dict[str, dict[str, float]] = {}
    for name, entries in sets.items():
        maps, out, inv = heatmaps_of(model, entries, cfg)
        row = {}
        for r in WINDOWS:
            row[f"window r={r}"] = score(decode_peaks(maps, r, stride)[0], out, inv,
                                         cfg.data.num_points)
        for b in BLURS:
            row[f"dark blur={b:g}"] = score(decode_dark(maps, stride, b)[0], out, inv,
                                            cfg.data.num_points)
        res[name] = row
        print(checkpoint.name, name, " ".join(f"{k}: {100 * v:.2f}" for k, v in row.items()),
              flush=True)
    return {"checkpoint": str(checkpoint), "step": int(ckpt.get("step", -1)),
            "model": f"{cfg.model.backbone} x{cfg.model.width} @ {cfg.model.input_size} px, "
                     f"stride {stride}, sigma {cfg.model.heatmap_sigma_px} px",
            "nme_inter_ocular": res}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--label", action="append", default=[],
                   help="a name per checkpoint for the table (default: the run folder)")
    args = p.parse_args()
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    labels = args.label or [c.parent.parent.name for c in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        p.error("give one --label per checkpoint")
    runs = {lab: evaluate(c) for lab, c in zip(labels, args.checkpoints)}
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                       f"{platform.python_version()}",
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / "decode.json", strict_json({"meta": meta, "runs": runs}, indent=2))
    write_text(RESULTS / "decode.md", markdown(runs, meta))
    plot(runs, RESULTS / "decode.png")
    print(markdown(runs, meta))
    return 0


def markdown(runs: dict, meta: dict) -> str:
    lines = ["# Inference decode: window mean vs DARK (teacher NME inter-ocular, %)", "",
             f"{meta['machine']}. `{meta['command']}`. The choice is made on the validation "
             "column (the run's held-out tail of the labeled training list); the test columns "
             "only check that it carries over.", ""]
    for lab, r in runs.items():
        sets = list(r["nme_inter_ocular"])
        lines += [f"## {lab} (step {r['step']}; {r['model']})", "",
                  "| decode | " + " | ".join(sets) + " |",
                  "| --- | " + " | ".join("---" for _ in sets) + " |"]
        methods = list(r["nme_inter_ocular"][sets[0]])
        best = min(methods, key=lambda m: r["nme_inter_ocular"]["validation"][m])
        for m in methods:
            cells = [f"{100 * r['nme_inter_ocular'][s][m]:.2f}" for s in sets]
            lines.append(f"| {m}{' (best on validation)' if m == best else ''} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), squeeze=False)
    for ax, (lab, r) in zip(axes[0], runs.items()):
        for s, row in r["nme_inter_ocular"].items():
            ax.plot(BLURS, [100 * row[f"dark blur={b:g}"] for b in BLURS], "o-", label=f"dark, {s}")
            ax.axhline(100 * row["window r=4"], ls="--", lw=0.8,
                       color=ax.lines[-1].get_color())
        ax.set_xlabel("DARK blur sigma (heatmap cells); dashed: window mean r=4")
        ax.set_ylabel("NME inter-ocular, %")
        ax.set_title(lab)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)



if __name__ == "__main__":
    sys.exit(main())

"""tsal_dist.eval.run and the CLI, with a fake detector + fake eval dataset (no real model needed),
plus an end-to-end CLI run on real files once tsal_dist.models / tsal_dist.data.datasets exist."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tsal_dist.codec import HeatmapCodec, px_to_norm
from tsal_dist.data.formats import AnnotationError, ListEntry, read_list, write_list
from tsal_dist.data.transforms import invert_affine
from tsal_dist.eval import run as R
from tsal_dist.models import LandmarkDetector, LandmarkModel, Prediction

REPO = Path(__file__).resolve().parents[3]
K = 68
S = 32

LEFT_EYE = [(10, 50), (20, 45), (40, 45), (50, 50), (40, 55), (20, 55)]
RIGHT_EYE = [(70, 50), (80, 45), (100, 45), (110, 50), (100, 55), (80, 55)]


def face68(seed: int = 0) -> np.ndarray:
    """(68, 2) image px with inter-ocular distance 100 and inter-pupil distance 60."""
    gt = np.random.default_rng(seed).uniform(0, 120, size=(68, 2))
    gt[36:42] = LEFT_EYE
    gt[42:48] = RIGHT_EYE
    return gt


def crop_affine(seed: int) -> np.ndarray:
    """A rotated, scaled, shifted image->crop affine (2, 3)."""
    rng = np.random.default_rng(seed)
    a, s = rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.5)
    c, si = np.cos(a) * s, np.sin(a) * s
    return np.array([[c, -si, rng.uniform(-5, 5)], [si, c, rng.uniform(-5, 5)]])


class FakeDetector(LandmarkModel):
    """Reads the 'prediction' the fake dataset wrote into the image: channel 0 row 0 = x, row 1 = y
    (crop px). Returns two stages; the FIRST is garbage so that using it would fail the tests.
    Decodes its last stage with :func:`fake_decode`, as a LandmarkDetector does with its codec."""

    stride, heatmap_size = 4, S // 4

    def __init__(self) -> None:
        super().__init__(num_points=K, input_size=S)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        b = images.shape[0]
        last = torch.zeros(b, K + 1, 2, 1, dtype=torch.float64)
        last[:, :K, 0, 0] = images[:, 0, 0, :K].double()
        last[:, :K, 1, 0] = images[:, 0, 1, :K].double()
        last[:, K] = 1e9  # background channel: must be sliced off before decode
        return {"heatmaps": [torch.full_like(last, -1e6), last]}

    def decode(self, outputs: dict[str, list[torch.Tensor]]) -> Prediction:
        last = outputs["heatmaps"][-1]
        px, scores = fake_decode(last[:, :K])
        return Prediction(px_to_norm(px, S), scores, last)


def fake_decode(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    assert maps.shape[1] == K, "the background channel must be dropped"
    coords = torch.stack([maps[:, :, 0, 0], maps[:, :, 1, 0]], dim=-1)
    return coords, torch.ones(maps.shape[:2])


class FakeEvalDataset:
    """EvalImageDataset-like: entry i has GT face68(i); the 'prediction' is GT + err_px[i] along x
    (image px), stored in crop px inside a float image. Bad entries are answered by the next good
    one (as the real non-strict dataset does)."""

    def __init__(self, entries, *, num_points=K, input_size=S, pre_crop_expand=0.2, strict=False,
                 err_px=None, bad=()):
        self.entries = list(entries)
        self.err = np.zeros(len(self.entries)) if err_px is None else np.asarray(err_px, float)
        self.bad = set(bad) | {i for i, e in enumerate(self.entries) if "bad" in e.annotation}
        self.problems = {"annotation": len(self.bad)} if self.bad else {}
        self.calls = []

    def __len__(self):
        return len(self.entries)

    def bad_items(self):
        return {i: "annotation" for i in self.bad}

    def get(self, index, seed):
        self.calls.append((index, seed))
        if len(self.bad) == len(self):
            raise AnnotationError(f"none of the {len(self)} items is readable")
        while index in self.bad:
            index = (index + 1) % len(self)
        gt = face68(index)
        M = crop_affine(index)
        pred_img = gt + np.array([self.err[index], 0.0])
        pred_crop = pred_img @ M[:, :2].T + M[:, 2]
        img = torch.zeros(3, S, S + K, dtype=torch.float64)  # wide enough to hold K values
        img[0, 0, :K] = torch.from_numpy(pred_crop[:, 0])
        img[0, 1, :K] = torch.from_numpy(pred_crop[:, 1])
        fs = self.entries[index].face_size
        return {"image": img, "affine": torch.from_numpy(M.astype(np.float32)),
                "orig_landmarks": torch.from_numpy(gt.astype(np.float32)),
                "orig_visible": torch.ones(K), "index": torch.tensor(index),
                "face_size": torch.tensor(np.nan if fs is None else fs)}


def entries(n: int, video: str | None = None) -> list[ListEntry]:
    return [ListEntry(f"{video}#{i}" if video else f"img{i}.png", f"a{i}.pts", (0, 0, 120, 120))
            for i in range(n)]


# ----------------------------------------------------------------------------- pure helpers


def test_affine_inverse_round_trip():
    M = np.stack([crop_affine(s) for s in range(4)])
    pts = np.random.default_rng(1).uniform(-50, 200, size=(4, 7, 2))
    back = R.apply_affine(invert_affine(M), R.apply_affine(M, pts))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    # hand case: crop = 2 * img + (3, -1)  =>  img = (crop - (3, -1)) / 2
    A = np.array([[[2.0, 0, 3], [0, 2, -1]]])
    np.testing.assert_allclose(R.apply_affine(invert_affine(A), np.array([[[5.0, 1.0]]])),
                               [[[1.0, 1.0]]])
    with pytest.raises(ValueError, match="singular"):
        invert_affine(np.zeros((1, 2, 3)))


def test_list_names_unique():
    assert R.list_names(["a/x.lst", "b/y.lst"]) == ["x.lst", "y.lst"]
    assert R.list_names(["a/x.lst", "b/x.lst"]) == ["a/x.lst", "b/x.lst"]


# ----------------------------------------------------------------------------- predict


@pytest.mark.parametrize("decode", [None, fake_decode], ids=["model", "override"])
def test_predict_maps_back_to_image_px_and_batches(decode):
    """The model's own Prediction, or a replacement decode of its last-stage maps."""
    ds = FakeEvalDataset(entries(5), err_px=[0, 1, 2, 3, 4])
    model = FakeDetector().train()
    out = R.predict(model, ds, batch_size=2, decode=decode)
    assert model.training  # training flag restored
    assert out["preds"].shape == (5, K, 2) and out["indices"].tolist() == [0, 1, 2, 3, 4]
    for i in range(5):
        np.testing.assert_allclose(out["preds"][i], face68(i) + [i, 0], atol=1e-3)
        np.testing.assert_allclose(out["gts"][i], face68(i), atol=1e-4)
    assert np.isnan(out["face_size"]).all() and out["visible"].min() == 1
    assert {seed for _, seed in ds.calls} == {0}


class FakeRegressor(LandmarkModel):
    """A coordinate regressor reading the fake dataset's 'prediction' like FakeDetector, but
    returning (B, K, 2) crop-normalised ``(px + 0.5) / S`` as MobileNetV2Regressor does."""

    def __init__(self) -> None:
        super().__init__(num_points=K, input_size=S)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        px = torch.stack([images[:, 0, 0, :K], images[:, 0, 1, :K]], dim=-1).double()
        return (px + 0.5) / S

    def decode(self, outputs: torch.Tensor) -> Prediction:
        return Prediction(outputs, torch.ones_like(outputs[..., 0]))


def test_predict_runs_a_coordinate_regressor():
    """A regressor needs no decode: its coordinates map back to image px, scores are 1."""
    ds = FakeEvalDataset(entries(3), err_px=[0, 1, 2])
    out = R.predict(FakeRegressor(), ds, batch_size=2)
    for i in range(3):
        np.testing.assert_allclose(out["preds"][i], face68(i) + [i, 0], atol=1e-3)
    assert np.all(out["scores"] == 1.0)
    with pytest.raises(ValueError, match="heatmaps"):  # nothing to re-decode
        R.predict(FakeRegressor(), ds, decode=fake_decode)


def test_predict_drops_replacement_items_of_bad_entries():
    ds = FakeEvalDataset(entries(5), bad={1, 2})
    out = R.predict(FakeDetector(), ds, batch_size=3, decode=fake_decode)
    assert out["indices"].tolist() == [0, 3, 4]


def test_predict_empty_dataset():
    out = R.predict(FakeDetector(), FakeEvalDataset([]), decode=fake_decode)
    assert out["preds"].shape == (0, K, 2)


class _Identity(torch.nn.Module):
    """A backbone stand-in of a given stride (its output is ignored by the stub heads)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x


class _NoCentroid(torch.nn.Module):
    def __init__(self, k: int, h: int) -> None:
        super().__init__()
        self.k, self.h = k, h

    def forward(self, x):
        b = x.shape[0]
        return torch.zeros(b, 1, self.h, self.h), torch.zeros(b, 2 * self.k, self.h, self.h)


def stub_detector(heatmap_head: torch.nn.Module, codec: HeatmapCodec) -> LandmarkDetector:
    """A real LandmarkDetector (so its own codec decodes) whose heads are stand-ins."""
    return LandmarkDetector(backbone=_Identity(codec.stride), heatmap_head=heatmap_head,
                            centroid_head=_NoCentroid(codec.num_points, codec.heatmap_size),
                            codec=codec)


def test_predict_default_decode_uses_heatmap_codec():
    class OneHot(torch.nn.Module):
        def forward(self, features):
            maps = torch.zeros(features.shape[0], 4, 8, 8)
            maps[:, 0, 2, 5] = 1.0  # row v=2, column u=5 -> crop px (5*4+1.5, 2*4+1.5)
            maps[:, 1, 0, 0] = 1.0
            maps[:, 2, 7, 3] = 1.0
            return [maps]

    class DS:
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"image": torch.zeros(3, 32, 32, dtype=torch.uint8),
                    "affine": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]),
                    "orig_landmarks": torch.zeros(3, 2), "orig_visible": torch.ones(3)}

    codec = HeatmapCodec(input_size=32, stride=4, num_points=3, sigma_px=2.0, window=0)
    out = R.predict(stub_detector(OneHot(), codec), DS())
    np.testing.assert_allclose(out["preds"][0], [[21.5, 9.5], [1.5, 1.5], [13.5, 29.5]], atol=1e-5)
    assert out["indices"].tolist() == [0, 1]


# ----------------------------------------------------------------------------- evaluate_list(s)


@pytest.fixture
def fake_datasets(monkeypatch):
    """Install a fake tsal_dist.data.datasets whose EvalImageDataset makes errors by entry."""
    made = []
    errors: dict[str, float] = {}

    def factory(entries, **kw):
        err = [errors.get(e.image, 0.0) for e in entries]
        ds = FakeEvalDataset(entries, err_px=err, **kw)
        made.append((ds, kw))
        return ds

    mod = types.ModuleType("tsal_dist.data.datasets")
    mod.EvalImageDataset = factory
    monkeypatch.setitem(sys.modules, "tsal_dist.data.datasets", mod)
    return types.SimpleNamespace(made=made, errors=errors)


def write_video_list(tmp_path: Path, errors: dict[str, float]) -> Path:
    """Category list: video A (3 frames, 1 px error each = NME 0.01), video B (1 frame, 9 px =
    NME 0.09), one unlabeled frame and one bad annotation."""
    a, b = tmp_path / "vids" / "001" / "vid.avi", tmp_path / "vids" / "002" / "vid.avi"
    es = [ListEntry(f"{a}#{i}", str(tmp_path / f"a{i}.pts"), (0, 0, 120, 120)) for i in range(3)]
    es.append(ListEntry(f"{b}#0", str(tmp_path / "b0.pts"), (0, 0, 120, 120)))
    es.append(ListEntry(f"{b}#1", None, (0, 0, 120, 120)))
    es.append(ListEntry(f"{b}#2", str(tmp_path / "bad.pts"), (0, 0, 120, 120)))
    for e in es[:3]:
        errors[e.image] = 1.0
    errors[es[3].image] = 9.0
    p = tmp_path / "300VW.test-3.lst"
    write_list(p, es, relative_to=tmp_path)
    return p


def test_evaluate_list_category_aggregates_all_frames(tmp_path, fake_datasets):
    p = write_video_list(tmp_path, fake_datasets.errors)
    res = R.evaluate_list(FakeDetector(), p, input_size=S, pre_crop_expand=0.2, num_points=K,
                          sigma_px=3.0, window=4, batch_size=2, strict=False)
    ds, kw = fake_datasets.made[0]
    assert kw == dict(num_points=K, input_size=S, pre_crop_expand=0.2, strict=False)
    assert len(ds.entries) == 5  # the unlabeled entry never reaches the dataset
    s = res.summary
    counts = (s["count"], s["n_entries"], s["n_unlabeled_skipped"], s["n_bad_skipped"])
    assert counts == (4, 6, 1, 1)
    # all frames pooled: (3 * 0.01 + 0.09) / 4 = 0.03, NOT the per-video mean (0.01 + 0.09) / 2
    assert s["nme_inter_ocular"] == pytest.approx(0.03, abs=1e-5)
    assert s["nme_inter_pupil"] == pytest.approx(0.03 * 100 / 60, abs=1e-5)
    assert s["fr@0.08"] == pytest.approx(0.25)
    assert s["n_videos"] == 2 and s["problems"] == {"annotation": 1}
    vids = s["videos"]
    assert set(vids) == {"vids/001/vid.avi", "vids/002/vid.avi"}
    assert vids["vids/001/vid.avi"]["count"] == 3
    assert vids["vids/001/vid.avi"]["nme_inter_ocular"] == pytest.approx(0.01, abs=1e-5)
    assert vids["vids/002/vid.avi"]["nme_inter_ocular"] == pytest.approx(0.09, abs=1e-5)
    assert res.primary_nmes.shape == (4,)
    json.dumps(s, allow_nan=False)


def test_evaluate_list_reports_video_jitter(tmp_path, fake_datasets):
    p = write_video_list(tmp_path, fake_datasets.errors)
    a1 = next(k for k in fake_datasets.errors if k.endswith("#1"))
    fake_datasets.errors[a1] = 3.0  # video A's error in x: 1, 3, 1 px at an inter-ocular of 100
    s = R.evaluate_list(FakeDetector(), p, input_size=S, pre_crop_expand=0.2, num_points=K,
                        sigma_px=3.0, window=4, batch_size=2, strict=False).summary
    # every point's normalised error changes by 0.02 between consecutive frames of A; video B
    # has one labeled frame (no pair) and adds nothing to the pooled figure
    assert s["videos"]["vids/001/vid.avi"]["nmj"] == pytest.approx(0.02, rel=1e-4)
    assert s["videos"]["vids/002/vid.avi"]["nmj"] is None
    assert s["nmj"] == pytest.approx(0.02, rel=1e-4)
    json.dumps(s, allow_nan=False)


def test_evaluate_list_of_images(tmp_path, fake_datasets):
    imgs = [ListEntry(str(tmp_path / f"i{i}.png"), str(tmp_path / f"i{i}.pts"), (0, 0, 9, 9))
            for i in range(2)]
    fake_datasets.errors[imgs[1].image] = 2.0
    p1 = tmp_path / "common.lst"
    write_list(p1, imgs)
    res = R.evaluate_list(FakeDetector(), p1, input_size=S, pre_crop_expand=0.1,
                          num_points=K, sigma_px=3.0, window=4)
    assert res.name == "common.lst"
    s = res.summary
    assert s["nme"] == pytest.approx(0.01, abs=1e-5) and "videos" not in s
    assert s["norm"] == "inter_ocular"


def test_evaluate_list_checks_model_geometry(tmp_path, fake_datasets):
    p = write_video_list(tmp_path, fake_datasets.errors)
    with pytest.raises(ValueError, match="64 px"):
        R.evaluate_list(FakeDetector(), p, input_size=64, pre_crop_expand=0.2, num_points=K,
                        sigma_px=3.0, window=4)


def test_evaluate_list_checks_the_models_codec(tmp_path, fake_datasets):
    """A detector decodes with its own codec: decode settings that differ from it are an error,
    not silently ignored."""
    codec = HeatmapCodec(input_size=S, stride=4, num_points=K, sigma_px=3.0, window=4,
                         locate="dark", blur_cells=2.5)
    model = stub_detector(torch.nn.Identity(), codec)  # never run: the check comes first
    p = write_video_list(tmp_path, fake_datasets.errors)
    with pytest.raises(ValueError, match="window=2"):
        R.evaluate_list(model, p, input_size=S, pre_crop_expand=0.2, num_points=K, sigma_px=3.0,
                        window=2, locate="dark", blur_cells=2.5)


# ----------------------------------------------------------------------------- CLI


def _fake_checkpoint(path: Path, cfg_over: dict | None = None) -> None:
    from tsal_dist.config import ExperimentConfig, with_overrides

    cfg = with_overrides(ExperimentConfig(), {"model.input_size": S, **(cfg_over or {})})
    sd = FakeDetector().state_dict()
    torch.save({"config": cfg.to_dict(), "teacher": sd, "student": sd, "step": 7}, path)


def test_cli_with_fake_model(tmp_path, fake_datasets, monkeypatch, capsys):
    import tsal_dist.models
    from tsal_dist.eval.__main__ import main

    built = []

    def fake_build(model_cfg, num_points):
        built.append((model_cfg.input_size, num_points))
        return FakeDetector()

    monkeypatch.setattr(tsal_dist.models, "build_model", fake_build, raising=False)
    p = write_video_list(tmp_path, fake_datasets.errors)
    ck = tmp_path / "ck.pt"
    _fake_checkpoint(ck)
    out_json, out_png = tmp_path / "r" / "eval.json", tmp_path / "r" / "ced.png"
    rc = main(["--checkpoint", str(ck), "--list", str(p), "--json", str(out_json),
               "--plot", str(out_png), "--which", "student", "--set", "model.decode_window=2"])
    assert rc == 0 and built == [(S, K)]
    doc = json.loads(out_json.read_text())
    assert doc["step"] == 7 and doc["which"] == "student"
    s = doc["lists"]["300VW.test-3.lst"]
    for key in ("count", "nme_inter_ocular", "nme_inter_pupil", "auc@0.08", "fr@0.08"):
        assert key in s
    assert s["nme_inter_ocular"] == pytest.approx(0.03, abs=1e-5)
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "300VW.test-3.lst" in table and "3.00" in table


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "no-config"])
def test_cli_bad_checkpoint_exit_2(tmp_path, capsys, content):
    from tsal_dist.eval.__main__ import main

    ck = tmp_path / "ck.pt"
    if content == "no-config":
        torch.save({"teacher": {}}, ck)
    elif content is not None:
        ck.write_bytes(content)
    rc = main(["--checkpoint", str(ck), "--list", str(tmp_path / "x.lst")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and str(ck) in err and err.count("\n") == 1


def test_cli_bad_list_and_override_exit_2(tmp_path, monkeypatch, capsys):
    import tsal_dist.models
    from tsal_dist.eval.__main__ import main

    monkeypatch.setattr(tsal_dist.models, "build_model", lambda c, k: FakeDetector(), raising=False)
    ck = tmp_path / "ck.pt"
    _fake_checkpoint(ck)
    assert main(["--checkpoint", str(ck), "--list", str(tmp_path / "missing.lst")]) == 2
    assert "missing.lst" in capsys.readouterr().err
    assert main(["--checkpoint", str(ck), "--list", "x", "--set", "model.nope=1"]) == 2
    assert "model.nope" in capsys.readouterr().err
    assert main(["--checkpoint", str(ck)]) == 2  # no --list and no data.eval_lists
    assert "eval_lists" in capsys.readouterr().err


def test_cli_list_without_a_face_to_score_is_exit_2(tmp_path, fake_datasets, monkeypatch,
                                                    capsys):
    """An empty list or one of unlabeled frames only (a table of dashes and exit 0 before): one
    line naming the list, exit 2, refused before any list is scored (a good list given first is
    not scored for nothing); a list whose every annotation is bad: one line naming the list (its
    line named no file before). No JSON written."""
    import tsal_dist.eval.run as run_mod
    import tsal_dist.models
    from tsal_dist.eval.__main__ import main

    monkeypatch.setattr(tsal_dist.models, "build_model", lambda c, k: FakeDetector(), raising=False)
    ck = tmp_path / "ck.pt"
    _fake_checkpoint(ck)
    good = write_video_list(tmp_path, fake_datasets.errors)
    full = read_list(good)
    cases = {"empty.lst": ([], "the list has no entries; nothing to evaluate", 0),
             "unlabeled.lst": ([full[4]], "none of its 1 entries has an annotation", 0),
             "bad.lst": (full[4:], "none of the 1 items is readable", 2)}
    real = run_mod.evaluate_list
    for name, (entries, match, n_scored) in cases.items():
        lst = tmp_path / name
        write_list(lst, entries, relative_to=tmp_path)
        scored = []
        monkeypatch.setattr(run_mod, "evaluate_list",
                            lambda *a, **k: scored.append(a) or real(*a, **k))
        out = tmp_path / f"{name}.json"
        assert main(["--checkpoint", str(ck), "--list", str(good), "--list", str(lst),
                     "--json", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {lst}: {match}\n" or (
            err.startswith(f"error: {lst}: {match}") and err.count("\n") == 1), err
        assert len(scored) == n_scored and not out.exists()
    # a message about the list itself names it once, however the path is spelled
    monkeypatch.chdir(tmp_path)
    assert main(["--checkpoint", str(ck), "--list", "./missing.lst"]) == 2
    assert capsys.readouterr().err == "error: missing.lst: list file not found\n"


def test_cli_refuses_bad_devices_and_outputs_before_the_work(tmp_path, fake_datasets,
                                                             monkeypatch, capsys):
    """Each a one-line exit 2 before any list is scored (they were tracebacks, or a result
    written over the list it scored, or a device node replaced by a JSON file)."""
    import os

    import tsal_dist.eval.run as run_mod
    import tsal_dist.models
    from tsal_dist.eval.__main__ import main

    monkeypatch.setattr(tsal_dist.models, "build_model", lambda c, k: FakeDetector(), raising=False)
    scored = []
    monkeypatch.setattr(run_mod, "evaluate_list", lambda *a, **k: scored.append(a))
    ck = tmp_path / "ck.pt"
    _fake_checkpoint(ck)
    lst = write_video_list(tmp_path, fake_datasets.errors)
    list_bytes = lst.read_bytes()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    common = ["--checkpoint", str(ck), "--list", str(lst)]
    for extra, match in [
            (["--device", "foo"], "--device foo: not a torch device"),
            (["--device", "meta"], "--device meta: evaluation runs on cpu or cuda"),
            (["--device", "cuda:0"], "CUDA is not available"),
            (["--json", str(lst)], "--json would overwrite an input of this evaluation"),
            (["--plot", str(ck)], "would overwrite an input"),
            (["--json", str(tmp_path / "r.x"), "--plot", str(tmp_path / "r.x")],
             "given to both --json and --plot"),
            (["--plot", str(tmp_path / "ced.xyz")], "not xyz"),
            (["--json", str(fifo)], "exists and is not a regular file"),
    ]:
        assert main(common + extra) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and match in err and err.count("\n") == 1, err
    assert scored == [] and lst.read_bytes() == list_bytes
    assert fifo.exists() and not fifo.is_file()


def test_cli_module_entry_point_bad_file(tmp_path):
    ck = tmp_path / "garbage.pt"
    ck.write_text("garbage")
    r = subprocess.run([sys.executable, "-m", "tsal_dist.eval", "--checkpoint", str(ck),
                        "--list", "x.lst"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "garbage.pt" in r.stderr


# ----------------------------------------------------------------------------- end to end


def _real_modules():
    try:
        from tsal_dist.data.datasets import EvalImageDataset  # noqa: F401
        from tsal_dist.models import build_model
    except ImportError as e:
        pytest.skip(f"needs tsal_dist.models.build_model and data.datasets: {e}")
    return build_model


def _write_images(tmp_path: Path, n: int = 3) -> Path:
    """n random 96x96 images with 68-point .pts (inter-ocular 30 px) and an SBR list. The points
    (25..61 px) stay > 2 heatmap cells inside the crop, where the decode is not edge-biased."""
    import cv2

    from tsal_dist.data.formats import write_pts

    rng = np.random.default_rng(0)
    es = []
    for i in range(n):
        img = rng.integers(0, 255, size=(96, 96, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"f{i}.png"), img)
        write_pts(tmp_path / f"f{i}.pts", face68(i) * 0.3 + 25)
        es.append(ListEntry(str(tmp_path / f"f{i}.png"), str(tmp_path / f"f{i}.pts"),
                            (5.0 + i, 5.0, 75.0, 75.0 + 2 * i)))
    lst = tmp_path / "test.lst"
    write_list(lst, es, relative_to=tmp_path)
    return lst


def test_oracle_heatmaps_on_real_dataset_map_back_to_gt(tmp_path):
    """Real EvalImageDataset + real codec: a model that outputs the encoded GT heatmaps must give
    image-px predictions within the codec's sub-pixel error (crop scale ~0.65 here)."""
    _real_modules()
    from tsal_dist.codec import HeatmapCodec
    from tsal_dist.data.datasets import EvalImageDataset
    from tsal_dist.data.formats import read_list

    lst = _write_images(tmp_path)
    ds = EvalImageDataset(read_list(lst), num_points=K, input_size=64, pre_crop_expand=0.2)
    # sigma of one cell: the Gaussian is well sampled, so the decode is accurate to << 0.5 crop px
    codec = HeatmapCodec(input_size=64, stride=8, num_points=K, sigma_px=8.0, window=4)
    items = [ds.get(i, 0) for i in range(len(ds))]
    targets = [codec.encode(it["landmarks"][None], it["visible"][None])[0] for it in items]

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, features):
            out = targets[self.calls: self.calls + features.shape[0]]
            self.calls += features.shape[0]
            return [torch.cat(out)]

    out = R.predict(stub_detector(Oracle(), codec), ds, batch_size=2)
    crop_gt = np.stack([it["landmarks"].numpy() for it in items])
    crop_err = np.linalg.norm(out["crop_preds"] - crop_gt, axis=-1)
    assert crop_err.max() < 0.5, crop_err.max()
    # image->crop scale is 64 / (70 * 1.4) ~ 0.65 (or a bit less): image error <= crop error / 0.6
    err = np.linalg.norm(out["preds"] - out["gts"], axis=-1)
    assert err.max() < 0.5 / 0.6, err.max()
    # independent mapping check: the dataset's affine takes our image-px predictions back to crop px
    from tsal_dist.data.transforms import apply_affine_points

    for i, it in enumerate(items):
        np.testing.assert_allclose(apply_affine_points(it["affine"].numpy(), out["preds"][i]),
                                   out["crop_preds"][i], atol=1e-3)
    summary, nmes = R.score_predictions(out["preds"], out["gts"], out["visible"],
                                        out["face_size"], K)
    assert summary["count"] == 3 and summary["nme_inter_ocular"] < 0.01


def test_cli_end_to_end_real_model(tmp_path):
    """Real files on disk -> real EvalImageDataset + build_model -> CLI JSON and plot (~5 s)."""
    build_model = _real_modules()
    from tsal_dist.config import ExperimentConfig, with_overrides

    cfg = with_overrides(ExperimentConfig(), {"model.input_size": 64, "model.width": 0.25})
    lst = _write_images(tmp_path)
    model = build_model(cfg.model, cfg.data.num_points)
    sd = model.state_dict()
    ck = tmp_path / "ck.pt"
    torch.save({"config": cfg.to_dict(), "teacher": sd, "student": sd, "step": 3}, ck)
    out_json = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "tsal_dist.eval", "--checkpoint", str(ck), "--list",
                        str(lst), "--json", str(out_json), "--plot", str(tmp_path / "ced.png")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "test.lst" in r.stdout
    s = json.loads(out_json.read_text())["lists"]["test.lst"]
    assert s["count"] == 3 and s["n_degenerate"] == 0
    assert s["nme_inter_ocular"] > 0 and s["nme_inter_pupil"] > s["nme_inter_ocular"]
    assert (tmp_path / "ced.png").is_file()


@pytest.mark.parametrize("arch", ["regressor", "heatmap"])
def test_cli_scores_a_distilled_student(tmp_path, arch):
    """``python -m tsal_dist.eval --which student`` on a distillation checkpoint rebuilds the
    student its checkpoint describes (student_arch / width / input size, not the experiment's
    teacher architecture) and scores it like a teacher."""
    _real_modules()
    from tsal_dist.config import ExperimentConfig, with_overrides
    from tsal_dist.eval.__main__ import main
    from tsal_dist.models import build_model, build_student_model

    cfg = with_overrides(ExperimentConfig(), {"model.backbone": "resnet", "model.input_size": 64,
                                              "model.width": 0.25, "model.cpm_stages": 1})
    torch.manual_seed(0)
    teacher = build_model(cfg.model, K)
    head = "regression" if arch == "regressor" else "heatmap"
    student = build_student_model(head, cfg.model, K, width=0.35, input_size=64).eval()
    ck = tmp_path / "ckpt-00000005.pt"
    torch.save({"config": cfg.to_dict(), "step": 5, "teacher": teacher.state_dict(),
                "student": student.state_dict(), "student_arch": arch, "student_width": 0.35,
                "student_input_size": 64, "format": "tsal_dist.distill_checkpoint/1"}, ck)
    lst = _write_images(tmp_path)
    out_json = tmp_path / "eval.json"
    assert main(["--checkpoint", str(ck), "--list", str(lst), "--which", "student",
                 "--json", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["which"] == "student" and doc["head"] == head and doc["step"] == 5
    got = doc["lists"]["test.lst"]
    want = R.evaluate_list(student, lst, input_size=64, pre_crop_expand=cfg.data.pre_crop_expand,
                           num_points=K, sigma_px=cfg.model.heatmap_sigma_px,
                           window=cfg.model.decode_window, locate=cfg.model.decode,
                           blur_cells=cfg.model.decode_blur_cells).summary
    assert got["count"] == 3 and got["nme_inter_ocular"] == pytest.approx(
        want["nme_inter_ocular"], rel=1e-6)

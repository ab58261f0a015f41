"""Tests of tsal_dist.models: shapes, parameter counts, gradients, input convention, init."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tsal_dist.config import ModelConfig
from tsal_dist.models import (
    LandmarkModel,
    MobileNetV2Regressor,
    Prediction,
    build_model,
    count_parameters,
)
from tsal_dist.models.heads import CenterNetBranch, CPMStages

# (backbone, input size, expected stride): cpm_vgg16 runs at 64 px to keep the test fast
_CASES = [("mobilenetv2", 64, 4), ("resnet", 64, 4), ("cpm_vgg16", 64, 8)]


def _model(backbone: str, size: int, k: int, stages: int = 3, width: float = 1.0):
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(), backbone=backbone, input_size=size, cpm_stages=stages,
                              width=width)
    return build_model(cfg, k)


@pytest.mark.parametrize("backbone,size,stride", _CASES)
@pytest.mark.parametrize("k", [68, 19])
def test_output_shapes(backbone: str, size: int, stride: int, k: int) -> None:
    model = _model(backbone, size, k, stages=2)
    assert (model.num_points, model.input_size, model.stride) == (k, size, stride)
    h = size // stride
    assert model.heatmap_size == h
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    with torch.no_grad():
        out = model.eval()(x)
    assert set(out) == {"heatmaps", "center", "offsets"}
    assert len(out["heatmaps"]) == 2
    for hm in out["heatmaps"]:
        assert hm.shape == (2, k + 1, h, h) and hm.dtype == torch.float32
    assert out["center"].shape == (2, 1, h, h)
    assert out["offsets"].shape == (2, 2 * k, h, h)


@pytest.mark.parametrize("backbone,size,stride", _CASES)
def test_gradients_reach_every_head(backbone: str, size: int, stride: int) -> None:
    model = _model(backbone, size, 19).train()
    x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    out = model(x)
    loss = sum(h.square().mean() for h in out["heatmaps"])
    loss = loss + torch.sigmoid(out["center"]).mean() + out["offsets"].square().mean() * 1e3
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]

    def norm(module: torch.nn.Module) -> float:
        return sum(float(p.grad.abs().sum()) for p in module.parameters())

    head = model.heatmap_head
    for stage in head.stages:
        assert norm(stage) > 0
    assert norm(model.centroid_head.hm) > 0 and norm(model.centroid_head.offset) > 0
    assert norm(model.backbone) > 0


def test_centroid_loss_alone_trains_the_backbone() -> None:
    model = _model("mobilenetv2", 64, 19).train()
    out = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    torch.sigmoid(out["center"]).mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0
               for p in model.heatmap_head.parameters())
    assert sum(float(p.grad.abs().sum()) for p in model.backbone.parameters()) > 0


def test_cpm_vgg16_parameter_counts_by_hand() -> None:
    model = _model("cpm_vgg16", 64, 68)
    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
           (256, 512), (512, 512), (512, 512), (512, 256), (256, 128)]  # + CPM_feature
    assert count_parameters(model.backbone) == sum(a * b * 9 + b for a, b in vgg)
    assert count_parameters(model.backbone) - (512 * 256 * 9 + 256 + 256 * 128 * 9 + 128) \
        == 7_635_264  # torchvision vgg16 features[:23]
    c = 69
    s1 = 4 * (128 * 128 * 9 + 128) + (128 * 512 + 512) + (512 * c + c)
    s2 = ((128 + c) * 128 * 49 + 128) + 2 * (128 * 128 * 49 + 128) + 4 * (128 * 128 * 9 + 128) \
        + (128 * 128 + 128) + (128 * c + c)
    assert count_parameters(model.heatmap_head) == s1 + 2 * s2
    assert isinstance(model.heatmap_head, CPMStages) and isinstance(model.centroid_head,
                                                                    CenterNetBranch)
    assert len(model.centroid_head.layer3) == 6 and len(model.centroid_head.layer4) == 3


def test_light_model_parameter_counts() -> None:
    mb = count_parameters(_model("mobilenetv2", 128, 68))
    assert 1_000_000 < mb < 2_500_000, mb
    half = count_parameters(_model("mobilenetv2", 128, 68, width=0.5))
    assert half < 0.5 * mb
    rn = count_parameters(_model("resnet", 128, 68))
    assert 11_000_000 < rn < 13_000_000, rn  # ResNet-18 trunk (11.2 M) + FPN + heads


def test_input_convention_uint8_equals_float_and_normalisation() -> None:
    model = _model("mobilenetv2", 64, 19).eval()
    torch.testing.assert_close(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]) * 255)
    torch.testing.assert_close(model.std.flatten(), torch.tensor([0.229, 0.224, 0.225]) * 255)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a = model(x)
        b = model(x.float())
        feats = model.forward_features(x)
        c = model.forward_head(feats)
    torch.testing.assert_close(a["center"], b["center"])
    torch.testing.assert_close(a["heatmaps"][-1], c["heatmaps"][-1])
    grey = torch.zeros(1, 3, 64, 64)
    grey[0, 0], grey[0, 1], grey[0, 2] = 0.485 * 255, 0.456 * 255, 0.406 * 255
    assert model.normalize(grey).abs().max() < 1e-5
    with pytest.raises(ValueError, match="images must be"):
        model(torch.zeros(1, 64, 64, 3))


@pytest.mark.parametrize("backbone", ["mobilenetv2", "resnet"])
def test_head_initialisation(backbone: str) -> None:
    model = _model(backbone, 64, 19)
    assert torch.all(model.centroid_head.hm[-1].bias == -2.19)
    off = model.centroid_head.offset[-1]
    assert off.bias.abs().sum() == 0 and 0.0005 < off.weight.std() < 0.002
    assert 0.005 < model.heatmap_head.stages[0][-1].weight.std() < 0.02


def test_build_model_rejects_unknown_backbone() -> None:
    cfg = dataclasses.replace(ModelConfig(), backbone="vit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model.backbone"):
        build_model(cfg, 68)


def test_regressor_outputs_crop_normalised_coords() -> None:
    torch.manual_seed(0)
    model = MobileNetV2Regressor(num_points=19, input_size=64, width=0.5)
    assert (model.num_points, model.input_size) == (19, 64)
    assert model.fc.bias is None and model.fc.out_features == 38
    assert model.features.out_channels == 1280
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    y = model.train()(x)
    assert y.shape == (3, 19, 2)
    y.square().mean().backward()
    assert model.fc.weight.grad is not None and model.features.stem[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x.float()))  # uint8 == float, no dropout
        f = model.forward_features(x)
        # coordinates are 0.5 + W f: the linear layer regresses the offset from the crop centre
        want = 0.5 + (f @ model.fc.weight.T).view(3, 19, 2)
        torch.testing.assert_close(model.forward_head(f), want)
    n = count_parameters(MobileNetV2Regressor(num_points=68, input_size=224, width=1.0))
    # Keras MobileNetV2(alpha=1, include_top=False) has 2,223,872 trainable params + Dense 1280x136
    assert n == 2_223_872 + 1280 * 136


class _ExportWrapper(torch.nn.Module):
    """uint8 crops -> last-stage heatmaps -> decoded landmarks (what tsal_dist.export does)."""

    def __init__(self, model: torch.nn.Module, codec: object) -> None:
        super().__init__()
        self.model = model
        self.codec = codec

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(crops)
        return self.codec.decode(out["heatmaps"][-1])  # type: ignore[attr-defined]


@pytest.mark.parametrize("dynamo,opset",
                         [(False, 17), pytest.param(True, 18, marks=pytest.mark.slow)])
def test_detector_with_decode_exports_to_onnx(tmp_path, dynamo: bool, opset: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    from tsal_dist.codec import HeatmapCodec

    model = _model("mobilenetv2", 64, 19, stages=2).eval()
    codec = HeatmapCodec(input_size=64, stride=4, num_points=19, sigma_px=3.0, window=4)
    wrapper = _ExportWrapper(model, codec).eval()
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    path = tmp_path / "det.onnx"
    kwargs: dict = dict(input_names=["crops"], output_names=["landmarks", "scores"],
                        opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs["dynamic_shapes"] = {"crops": {0: torch.export.Dim("batch", min=1, max=64)}}
    else:
        kwargs["dynamic_axes"] = {"crops": {0: "batch"}}
    torch.onnx.export(wrapper, (x,), str(path), **kwargs)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    test = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    got, got_s = sess.run(None, {"crops": test.numpy()})
    with torch.no_grad():
        want, want_s = wrapper(test)
    torch.testing.assert_close(torch.from_numpy(got_s), want_s, atol=1e-4, rtol=1e-4)
    # a near-tie argmax may flip between engines; all but a tiny fraction must agree closely
    close = (torch.from_numpy(got) - want).abs().amax(-1) < 1e-2
    assert close.float().mean() > 0.95


# ----------------------------------------------------------------------------- one interface


def _any_model(kind: str) -> LandmarkModel:
    if kind == "regressor":
        torch.manual_seed(0)
        return MobileNetV2Regressor(num_points=19, input_size=64, width=0.35)
    return _model(kind, 64, 19, stages=2)


@pytest.mark.parametrize("kind", ["mobilenetv2", "resnet", "cpm_vgg16", "regressor"])
def test_every_model_predicts_the_same_structure(kind: str) -> None:
    model = _any_model(kind).eval()
    assert isinstance(model, LandmarkModel) and (model.num_points, model.input_size) == (19, 64)
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        pred = model.predict(x)
        again = model.decode(model(x))
    assert isinstance(pred, Prediction)
    assert pred.landmarks.shape == (2, 19, 2) and pred.landmarks.dtype == torch.float32
    assert pred.scores.shape == (2, 19) and pred.scores.dtype == torch.float32
    if kind == "regressor":
        assert pred.heatmaps is None
    else:
        assert pred.heatmaps is not None
        assert pred.heatmaps.shape == (2, 20, model.heatmap_size, model.heatmap_size)
    for a, b in zip(pred, again):  # predict = decode(forward)
        assert a is b is None or torch.equal(a, b)


@pytest.mark.parametrize("decode", ["window", "dark"])
def test_detector_landmarks_are_its_codecs_locate_of_the_last_stage(decode: str) -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(ModelConfig(), input_size=64, cpm_stages=2, decode=decode,
                              decode_window=3, decode_blur_cells=1.5, heatmap_sigma_px=2.5)
    model = build_model(cfg, 19).eval()
    codec = model.codec  # the config's codec, built with the detector
    assert (codec.locate_method, codec.window, codec.blur_cells, codec.sigma_px) == (
        decode, 3, 1.5, 2.5)
    assert (codec.num_points, codec.input_size, codec.stride) == (19, 64, model.stride)
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        out = model(x)
        pred = model.predict(x)
    last = out["heatmaps"][-1]
    px, scores = codec.locate(last)
    assert torch.equal(pred.heatmaps, last)
    assert torch.equal(pred.landmarks, (px + 0.5) / 64.0)  # crop-normalised
    assert torch.equal(pred.scores, scores)


def test_regressor_prediction_is_its_forward_with_unit_scores() -> None:
    model = _any_model("regressor").eval()
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        pred = model.predict(x)
        want = model(x)
    assert torch.equal(pred.landmarks, want)
    assert torch.equal(pred.scores, torch.ones(3, 19))


def test_detector_and_codec_must_agree_on_the_stride() -> None:
    from tsal_dist.codec import HeatmapCodec
    from tsal_dist.models import LandmarkDetector
    from tsal_dist.models.backbones import MobileNetV2Backbone
    from tsal_dist.models.heads import CentroidHead, RefineHeatmapHead

    backbone = MobileNetV2Backbone(width=0.35)
    c = backbone.out_channels
    with pytest.raises(ValueError, match="stride"):
        LandmarkDetector(backbone=backbone,
                         heatmap_head=RefineHeatmapHead(in_channels=c, out_channels=20, stages=1,
                                                        mid_channels=c),
                         centroid_head=CentroidHead(in_channels=c, num_points=19, mid_channels=c,
                                                    separable=True),
                         codec=HeatmapCodec(input_size=64, stride=8, num_points=19, sigma_px=3.0,
                                            window=4))


def test_heatmap_student_decodes_at_its_own_input_size() -> None:
    from tsal_dist.models import build_student_model

    cfg = dataclasses.replace(ModelConfig(), backbone="resnet", input_size=64, decode="window")
    student = build_student_model("heatmap", cfg, 19, width=0.35, input_size=96)
    assert (student.codec.input_size, student.codec.locate_method) == (96, "window")
    assert student.predict(torch.zeros(1, 3, 96, 96)).landmarks.shape == (1, 19, 2)

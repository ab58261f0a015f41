"""model.init_from: a user's state dict file, read safely, matched by name and shape."""

from __future__ import annotations

import pickle

import pytest
import torch

from tsal_dist.config import ConfigError, ModelConfig
from tsal_dist.models import build_model
from tsal_dist.models.backbones import VGG16CPMBackbone
from tsal_dist.models.pretrained import load_init_weights_


def _small():
    return build_model(ModelConfig(input_size=64, width=0.35, cpm_stages=1), 68)


def test_backbone_weights_load_and_heads_keep_their_init(tmp_path):
    torch.manual_seed(0)
    src = _small()
    torch.manual_seed(1)
    dst = _small()
    head_before = {k: v.clone() for k, v in dst.state_dict().items()
                   if not k.startswith("backbone.")}
    path = tmp_path / "backbone.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.backbone.state_dict().items()}},
               path)
    report = load_init_weights_(dst, path)
    for k, v in src.backbone.state_dict().items():
        assert torch.equal(dst.state_dict()[f"backbone.{k}"], v), k
    for k, v in head_before.items():
        assert torch.equal(dst.state_dict()[k], v), k
    assert report.loaded == len(src.backbone.state_dict()) and not report.unused


def test_torchvision_vgg16_names_map_onto_cpm_vgg16(tmp_path):
    trunk = {f"features.{k}": v for k, v in VGG16CPMBackbone().features.state_dict().items()}
    file_sd = {k: torch.randn_like(v) for k, v in trunk.items()}
    # what an ImageNet VGG-16 also holds: conv5 and the classifier, which the model lacks
    file_sd["features.24.weight"] = torch.randn(512, 512, 3, 3)
    file_sd["classifier.0.weight"] = torch.randn(8, 8)
    torch.save(file_sd, tmp_path / "vgg16.pth")
    model = build_model(ModelConfig(backbone="cpm_vgg16", input_size=64, cpm_stages=1), 68)
    report = load_init_weights_(model, tmp_path / "vgg16.pth")
    assert report.loaded == 20  # 10 convolutions, weight and bias
    assert set(report.unused) == {"features.24.weight", "classifier.0.weight"}
    assert torch.equal(model.state_dict()["backbone.features.21.weight"],
                       file_sd["features.21.weight"])


def test_shape_mismatch_names_the_keys(tmp_path):
    model = _small()
    sd = {k: v for k, v in model.state_dict().items()}
    name = next(k for k, v in sd.items() if v.ndim == 4)
    sd[name] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=rf"model.init_from: .*bad.pt: shapes differ.*{name}"):
        load_init_weights_(_small(), tmp_path / "bad.pt")


def test_unrelated_unsafe_and_missing_files_are_one_line_errors(tmp_path):
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none of its 1 tensors is named as the model's"):
        load_init_weights_(_small(), tmp_path / "other.pt")

    class Payload:
        def __reduce__(self):
            return (print, ("executed",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(ConfigError, match="cannot be read as weights"):
        load_init_weights_(_small(), tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="no such file"):
        load_init_weights_(_small(), tmp_path / "absent.pt")

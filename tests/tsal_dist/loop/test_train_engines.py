"""Engines without a process group: precision of the forward, the fp16 gradient scaler, the input
cast of the models, and the config rule for fp16. (DeepSpeed's multi-rank ZeRO paths are in
tests/integration/test_deepspeed.py and test_precision.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tsal_dist.config import ConfigError, ExperimentConfig, with_overrides
from tsal_dist.loop.engines import DDPEngine, PrecisionForward, build_engine, float_outputs
from tsal_dist.models import build_model
from tsal_dist.models.detector import normalize_images


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 3))


def test_float_outputs_casts_low_precision_only() -> None:
    out = float_outputs({"a": [torch.ones(2, dtype=torch.bfloat16)],
                         "b": torch.ones(2, dtype=torch.float64), "i": torch.ones(2, dtype=int)})
    assert out["a"][0].dtype == torch.float32 and out["b"].dtype == torch.float64
    assert out["i"].dtype == torch.int64


def test_bf16_autocast_forward_runs_the_convolution_in_bf16_and_returns_fp32() -> None:
    net = _net()
    seen: list[torch.dtype] = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    out = PrecisionForward(net, torch.device("cpu"), torch.bfloat16)(torch.rand(2, 3, 6, 6))
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in net.parameters())  # weights stay fp32


def test_precision_is_not_ignored_by_the_ddp_engine(smoke_cfg) -> None:
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        cfg = with_overrides(smoke_cfg, {"train.precision": precision})
        model = build_model(cfg.model, cfg.data.num_points)
        seen: list[torch.dtype] = []
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        first.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        eng = build_engine(model, cfg.train, cfg.optim, torch.device("cpu"))
        s = cfg.model.input_size
        out = eng.module(torch.randint(0, 255, (2, 3, s, s), dtype=torch.uint8))
        assert seen == [dtype], precision
        assert out["heatmaps"][-1].dtype == torch.float32


def test_fp16_gradient_scaler_steps_and_round_trips_its_state() -> None:
    net = _net()
    eng = DDPEngine(net, torch.optim.SGD(net.parameters(), lr=0.1), grad_clip=1.0,
                    device=torch.device("cpu"), precision="fp16")
    assert eng.scaler is not None
    x, y = torch.rand(4, 3, 6, 6), torch.randn(4, 3)
    before = [p.detach().clone() for p in net.parameters()]
    eng.backward(nn.functional.mse_loss(eng.module(x), y))
    eng.step(0.1)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    sd = eng.optimizer_state()
    assert sd["grad_scaler"]["scale"] == eng.scaler.get_scale()
    net2 = _net()
    eng2 = DDPEngine(net2, torch.optim.SGD(net2.parameters(), lr=0.1), grad_clip=1.0,
                     device=torch.device("cpu"), precision="fp16")
    sd["grad_scaler"]["scale"] = 128.0
    eng2.load_optimizer_state(sd)
    assert eng2.scaler.get_scale() == 128.0


def test_input_cast_follows_the_weights_dtype() -> None:
    mean = torch.full((1, 3, 1, 1), 100.0)
    std = torch.full((1, 3, 1, 1), 50.0)
    u8 = torch.full((1, 3, 2, 2), 150, dtype=torch.uint8)
    for dtype in (torch.float32, torch.bfloat16):
        x = normalize_images(u8, mean, std, dtype)
        assert x.dtype == dtype and torch.all(x.float() == 1.0)
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        normalize_images(torch.zeros(3, 2, 2), mean, std, torch.float32)


def test_a_bf16_model_accepts_uint8_images(smoke_cfg) -> None:
    """DeepSpeed casts parameters to bf16 but keeps the mean/std buffers fp32 (the input must
    follow the weights, not the buffers)."""
    model = build_model(smoke_cfg.model, smoke_cfg.data.num_points)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    model.eval()
    s = smoke_cfg.model.input_size
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.to(torch.bfloat16)
    out = model(torch.randint(0, 255, (1, 3, s, s), dtype=torch.uint8))
    assert out["heatmaps"][-1].dtype == torch.bfloat16


def test_fp16_without_gpu_workers_fails_at_config_load() -> None:
    with pytest.raises(ConfigError, match=r"train\.precision.*scaling\.use_gpu"):
        ExperimentConfig.from_dict({"train": {"precision": "fp16"}})
    cfg = ExperimentConfig.from_dict({"train": {"precision": "fp16"},
                                      "scaling": {"use_gpu": True}})
    assert cfg.train.precision == "fp16"


def test_gpu_workers_each_need_a_whole_gpu_for_nccl() -> None:
    """Two ranks packed onto one GPU fail NCCL's init ("Duplicate GPU detected") only once the
    cluster has started: refused when the config loads."""
    with pytest.raises(ConfigError, match=r"scaling\.gpus_per_worker.*whole number >= 1.*0\.5"):
        ExperimentConfig.from_dict({"scaling": {"use_gpu": True, "num_workers": 2,
                                                "gpus_per_worker": 0.5}})
    with pytest.raises(ConfigError, match=r"scaling\.gpus_per_worker"):
        ExperimentConfig.from_dict({"scaling": {"use_gpu": True, "num_workers": 4,
                                                "gpus_per_worker": 1.5}})
    for ok in ({"use_gpu": True, "num_workers": 1, "gpus_per_worker": 0.25},  # a Tune trial
               {"use_gpu": True, "num_workers": 4, "gpus_per_worker": 2},
               {"use_gpu": False, "num_workers": 2, "gpus_per_worker": 0.5}):  # unused on CPU
        assert ExperimentConfig.from_dict({"scaling": ok}).scaling.num_workers == ok["num_workers"]


def test_deepspeed_runs_on_the_workers_own_gpu_not_local_rank(monkeypatch) -> None:
    """DeepSpeed moves the module to cuda:LOCAL_RANK unless ``args.device_rank`` names the
    device; with 2 GPUs per worker Ray Train gives worker 1 cuda:2 while its LOCAL_RANK is 1."""
    from types import SimpleNamespace

    deepspeed = pytest.importorskip("deepspeed")
    from tsal_dist.loop.engines import DeepSpeedEngine, deepspeed_args

    assert deepspeed_args(torch.device("cuda", 2)).device_rank == 2
    assert deepspeed_args(torch.device("cpu")) is None
    # and the engine hands it to deepspeed.initialize (stopped there: no GPU to go on with)
    seen = {}

    def initialize(**kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(deepspeed, "initialize", initialize)
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kw: None)
    monkeypatch.setattr("tsal_dist.loop.engines.deepspeed_args",
                        lambda d: SimpleNamespace(device_rank=7))
    model = nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="stop"):
        DeepSpeedEngine(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_clip=0.0,
                        zero_stage=0, precision="fp32", micro_batch=1, device=torch.device("cpu"))
    assert seen["args"].device_rank == 7 and seen["model"] is model

"""The DDP / DeepSpeed switch: one small interface over a model + its optimizer.

What belongs here: wrapping, backward/step, full (unwrapped, gathered) state dicts, optimizer state,
and telling the engine that its weights were changed from outside (the teacher blend). What does
not: losses, the schedule (lr is set by the loop each step), Ray. DeepSpeed is imported lazily
inside the one class that needs it.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from tsal_dist.config import OptimConfig, TrainConfig
from tsal_dist.loop.checkpoint import weights_only_safe
from tsal_dist.loop.optimizers import build_optimizer, param_groups


PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def float_outputs(out: Any) -> Any:
    """Model outputs (tensor, or dict/list/tuple of them) with floating tensors in fp32.

    Losses and decoders (focal log terms, soft-argmax, DARK's log-Taylor step) run in fp32 whatever
    precision the forward pass used; fp32 tensors pass through without a copy.
    """
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
    if isinstance(out, dict):
        return {k: float_outputs(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(float_outputs(v) for v in out)
    return out


class PrecisionForward:
    """What a training step calls: ``module(x)`` under ``torch.autocast`` (when ``dtype``), with
    the outputs returned in fp32 (:func:`float_outputs`)."""

    def __init__(self, module: nn.Module, device: torch.device, dtype: torch.dtype | None) -> None:
        self.module, self.device_type, self.dtype = module, device.type, dtype

    def __call__(self, x: torch.Tensor) -> Any:
        if self.dtype is None:
            return float_outputs(self.module(x))
        with torch.autocast(self.device_type, dtype=self.dtype):
            return float_outputs(self.module(x))


class Engine:
    """Interface; see DDPEngine and DeepSpeedEngine.

    State dicts crossing this interface (``full_state_dict``, ``load_full_state_dict``,
    ``modify_weights_``) hold the FULL-precision weights: under DeepSpeed fp16/bf16 those are the
    optimizer's fp32 masters, so a teacher blend, a push to the teacher server and a checkpoint
    never see the rounded low-precision copy.
    """

    module: Callable[[torch.Tensor], Any]  # what a training forward is called on
    optimizer: Any  # the torch optimizer, or DeepSpeed's wrapper around it
    # True when full_state_dict() is a collective (ZeRO-3 gathers): every rank must call it.
    collective_state: bool = False
    # True when the module's own weights are not the full-precision ones (DeepSpeed fp16/bf16):
    # evaluate a copy built from full_state_dict().
    low_precision_weights: bool = False

    def unwrapped(self) -> nn.Module:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, lr: float) -> float:
        """Clip, step, zero grads with learning rate ``lr``; return the grad norm (0: unknown)."""
        raise NotImplementedError

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Unwrapped module state on CPU (gathered under ZeRO-3). Identical on every rank."""
        return {k: v.detach().cpu().clone() for k, v in self.unwrapped().state_dict().items()}

    def load_full_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.unwrapped().load_state_dict(sd)
        self.weights_changed()

    def optimizer_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_optimizer_state(self, sd: dict[str, Any]) -> None:
        raise NotImplementedError

    def weights_changed(self) -> None:
        """Called after module weights were modified in place from outside the optimizer."""

    def reset_optimizer_state(self) -> None:
        """Forget the optimizer's running state (Adam's moments and step count; SGD's momentum)
        as if no step had been taken, keeping weights, learning rates and param groups. Under
        DeepSpeed the state lives in the torch optimizer that ZeRO / bf16 wrap (per rank, on its
        partition): that one is cleared. The torch optimizers rebuild their state lazily."""
        base: Any = self.optimizer
        while not isinstance(base, torch.optim.Optimizer):
            inner = getattr(base, "optimizer", None)
            if inner is None:
                raise TypeError(f"{type(self.optimizer).__name__}: no torch optimizer inside "
                                "to reset")
            base = inner
        base.state.clear()

    def modify_weights_(self, fn: Callable[[dict[str, torch.Tensor]], None]) -> None:
        """Apply ``fn`` in place to the FULL module state dict (parameters and buffers), then
        tell the optimizer (``weights_changed``). ``fn`` must compute the same result on every
        rank (the teacher blend does: every rank applies the same server version)."""
        fn(self.unwrapped().state_dict())
        self.weights_changed()

    def broadcast_buffers(self) -> None:
        """Make every rank's buffers (BN running stats) equal to rank 0's."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            broadcast_flat_([b.data for b in self.unwrapped().buffers()], src=0)


def broadcast_flat_(tensors: list[torch.Tensor], *, src: int) -> None:
    """Broadcast ``tensors`` from rank ``src`` in place with one collective per dtype (a model
    has ~100 small BN buffers: one gloo round trip each would dominate the sync cost)."""
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors(group)
        dist.broadcast(flat, src)
        for t, v in zip(group, _unflatten_dense_tensors(flat, group)):
            t.copy_(v)


class DDPEngine(Engine):
    """Plain module (one process) or DistributedDataParallel (gloo on CPU, NCCL on GPU)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip: float,
                 device: torch.device, precision: str = "fp32") -> None:
        self._model = model.to(device)
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            wrapped: nn.Module = nn.parallel.DistributedDataParallel(self._model, device_ids=ids)
        else:
            wrapped = self._model
        # fp32 weights, autocast forwards; fp16 needs loss scaling (bf16 has fp32's range)
        self.module = PrecisionForward(wrapped, device, PRECISION_DTYPES[precision])
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None

    def unwrapped(self) -> nn.Module:
        return self._model

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        norm = 0.0
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self._model.parameters(), self.grad_clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def optimizer_state(self) -> dict[str, Any]:
        sd = self.optimizer.state_dict()
        if self.scaler is not None:  # the loss scale is part of where training stands
            sd = {**sd, "grad_scaler": self.scaler.state_dict()}
        return sd

    def load_optimizer_state(self, sd: dict[str, Any]) -> None:
        sd = dict(sd)
        scaler = sd.pop("grad_scaler", None)
        self.optimizer.load_state_dict(sd)
        if self.scaler is not None and scaler is not None:
            self.scaler.load_state_dict(scaler)


def deepspeed_args(device: torch.device) -> SimpleNamespace | None:
    """``deepspeed.initialize``'s ``args``: on a GPU, the worker's own device. DeepSpeed otherwise
    moves the module to ``cuda:LOCAL_RANK``, which is not the worker's GPU when Ray Train gives a
    worker more than one (worker 1 of 2 with 2 GPUs each runs on cuda:2, LOCAL_RANK is 1)."""
    if device.type == "cuda" and device.index is not None:
        return SimpleNamespace(device_rank=device.index)
    return None


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO 0-3 around a torch optimizer; fp32, bf16 (CPU and GPU) or fp16 (GPU).

    Checkpoints stay in our own format: the module state is gathered to a full state dict (ZeRO-3
    gathers partitions), and the optimizer state is saved per rank (ZeRO partitions it).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, grad_clip: float,
                 zero_stage: int, precision: str, micro_batch: int, device: torch.device) -> None:
        import deepspeed
        import deepspeed.ops

        # The shared-memory comm op JIT-compiles for ~66 s on first use and is not needed.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        world = dist.get_world_size() if dist.is_initialized() else 1
        ds_config: dict[str, Any] = {
            "train_micro_batch_size_per_gpu": micro_batch,
            "train_batch_size": micro_batch * world,
            "gradient_accumulation_steps": 1,
            # Buckets of 2e7 elements instead of DeepSpeed's 5e8 (2 GB of fp32 per buffer on CPU).
            "zero_optimization": {"stage": zero_stage, "reduce_bucket_size": int(2e7),
                                  "allgather_bucket_size": int(2e7)},
            # SGD is not on DeepSpeed's tested list; the ZeRO tests check its steps numerically.
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": grad_clip if grad_clip > 0 else 0.0,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        if precision == "fp16":
            ds_config["fp16"] = {"enabled": True, "initial_scale_power": 12}
        elif precision == "bf16":
            ds_config["bf16"] = {"enabled": True}
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
        model = model.to(device)
        self._raw = model
        self.zero_stage = zero_stage
        engine, opt, _, _ = deepspeed.initialize(args=deepspeed_args(device), model=model,
                                                 optimizer=optimizer, config=ds_config)
        self.engine = engine
        self.optimizer = opt
        self.low_precision_weights = precision != "fp32"
        # ZeRO 1-2 masters are partitioned too: reading them whole is an all-reduce
        self.collective_state = zero_stage == 3 or (self.low_precision_weights and zero_stage > 0)
        if self.low_precision_weights:
            _batchnorm_in_fp32(engine.module)
        # DeepSpeed casts the weights itself (the model casts its input to them): no autocast
        self.module = PrecisionForward(engine, device, None)

    def unwrapped(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    def _gathered(self, *, modify: bool):
        """Context with the full parameters present (ZeRO-3 gathers them; a no-op otherwise).
        With ``modify``, rank 0's values are written back into every rank's partitions."""
        import contextlib

        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.unwrapped().parameters()),
                                                 modifier_rank=0 if modify else None)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Module state on CPU with the fp32 master weights in place of fp16/bf16 parameters
        (a collective under ZeRO-3 and for ZeRO masters: call on every rank)."""
        masters = self._master_params()
        with self._gathered(modify=False):
            sd = {k: v.detach().cpu().clone() for k, v in self.unwrapped().state_dict().items()}
        for name, (get, _set) in masters.items():
            sd[name] = get().detach().cpu().float().clone()
        return sd

    def load_full_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a full-precision state: the module gets it (rounded to its dtype) and the
        optimizer's fp32 masters get it exactly, at every ZeRO stage."""
        with self._gathered(modify=True):
            self.unwrapped().load_state_dict(sd)
        masters = self._master_params()
        if masters:
            for name, (_get, set_) in masters.items():
                set_(sd[name])
        elif self.zero_stage > 0:
            # fp32 ZeRO 1-3: the flat fp32 partitions are copies of the (fp32) module weights
            refresh = getattr(self.optimizer, "refresh_fp32_params", None)
            if refresh is not None:
                refresh()

    def modify_weights_(self, fn: Callable[[dict[str, torch.Tensor]], None]) -> None:
        """``fn`` on the full-precision state (fp32 masters under fp16/bf16), written back to
        masters and module alike: a teacher blend is computed in fp32 and no rounding of the
        module's low-precision copy ever reaches the masters."""
        sd = self.full_state_dict()
        fn(sd)
        self.load_full_state_dict(sd)

    def weights_changed(self) -> None:
        # Only reached through Engine.load_full_state_dict's contract; the work is done above.
        pass

    def _master_params(self) -> dict[str, tuple[Callable[[], torch.Tensor],
                                                 Callable[[torch.Tensor], None]]]:
        """{parameter name: (get full fp32 master, set it from a full tensor)} when the optimizer
        keeps fp32 masters of low-precision weights; {} in fp32 (the weights are the masters).

        ZeRO 1-3 and DeepSpeed's BF16 optimizer expose them through ``safe_get/set_full_fp32_
        param``; stage 0 with a torch optimizer uses the unfused FP16 optimizer (fp16 and bf16
        alike), whose ``fp32_groups`` mirror ``fp16_groups`` parameter by parameter.
        """
        if not self.low_precision_weights:
            return {}
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

        named = list(self.unwrapped().named_parameters())
        out: dict[str, tuple[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]]] = {}
        pairs: dict[int, torch.Tensor] = {}
        for lp_group, fp_group in zip(getattr(self.optimizer, "fp16_groups", []),
                                      getattr(self.optimizer, "fp32_groups", [])):
            if isinstance(fp_group, (list, tuple)):
                pairs.update({id(lp): fp for lp, fp in zip(lp_group, fp_group)})
        for name, p in named:
            if id(p) in pairs:
                fp = pairs[id(p)]
                out[name] = (lambda fp=fp: fp.data,
                             lambda v, fp=fp: fp.data.copy_(v.to(fp.device, fp.dtype)))
            elif hasattr(p, "ds_id"):
                out[name] = (lambda p=p: safe_get_full_fp32_param(p),
                             lambda v, p=p: _set_zero3_master(p, v))
            elif hasattr(p, "_hp_mapping"):
                out[name] = (lambda p=p: safe_get_full_fp32_param(p),
                             lambda v, p=p: safe_set_full_fp32_param(
                                 p, v.to(p.device, torch.float32)))
            elif p.requires_grad:
                raise RuntimeError(f"DeepSpeed {type(self.optimizer).__name__}: no fp32 master "
                                   f"weight found for {name!r}")
        return out

    def optimizer_state(self) -> dict[str, Any]:
        """This rank's optimizer state (its ZeRO partition), made loadable with weights_only:
        the loss-scaler object is dropped (it is rebuilt from the config on load) and enums
        become ints."""
        sd = dict(self.optimizer.state_dict())
        sd.pop("loss_scaler", None)
        return weights_only_safe(sd)

    def load_optimizer_state(self, sd: dict[str, Any]) -> None:
        if self.zero_stage == 0:
            self.optimizer.load_state_dict(sd)
            return
        sd = dict(sd)
        sd["loss_scaler"] = self.optimizer.loss_scaler
        world = dist.get_world_size() if dist.is_initialized() else 1
        # DeepSpeed indexes the list by data-parallel rank; each rank passes its own shard.
        if self.zero_stage in (1, 2):
            self.optimizer.load_state_dict([sd] * world, load_from_fp32_weights=True)
        else:
            self.optimizer.load_state_dict([sd] * world)


def _set_zero3_master(p: nn.Parameter, value: torch.Tensor) -> None:
    """This rank's slice of ZeRO-3's fp32 master of ``p`` from the full ``value``.

    DeepSpeed's own ``set_full_hp_param`` (0.19.8) narrows the unpadded value with the padded
    partition size, which fails on the last rank whenever ``numel`` is not a multiple of the
    world size; this copies only the real elements of the slice.
    """
    opt = p._z3_optimizer  # type: ignore[attr-defined]
    part, _ = opt._get_fp32_opt_state_partition(p, release_swap_buffers=False)
    start = part.numel() * opt._get_param_partition_rank(p)
    chunk = value.detach().flatten()[start:start + part.numel()]
    part.data[: chunk.numel()].copy_(chunk.to(part.device, torch.float32))


def _batchnorm_in_fp32(model: nn.Module) -> None:
    """BatchNorm layers of a DeepSpeed fp16/bf16 model compute in fp32.

    DeepSpeed casts the BN weights to fp16/bf16 but keeps the running statistics (buffers) in
    fp32, a mix ``batch_norm`` rejects on CPU; and the statistics of a low-precision batch are
    imprecise anyway. Input, weight and bias go in as fp32, the output leaves in the input's dtype
    (gradients flow back through the casts to the low-precision weights).
    """
    import torch.nn.functional as F

    def forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        y = F.batch_norm(x.float(), self.running_mean if not self.training or
                         self.track_running_stats else None,
                         self.running_var if not self.training or self.track_running_stats
                         else None, w, b, use_batch, momentum, self.eps)
        return y.to(x.dtype)

    import types

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.forward = types.MethodType(forward, m)  # type: ignore[method-assign]


def build_engine(model: nn.Module, train: TrainConfig, optim: OptimConfig, device: torch.device,
                 *, lr: float | None = None, micro_batch: int | None = None,
                 weight_decay: float | None = None) -> Engine:
    """``model``'s optimizer and engine (``train.engine``, ``train.precision``): the one builder
    of training and distillation. ``lr``, ``micro_batch`` and ``weight_decay`` default to the
    optim section's."""
    wd = optim.weight_decay if weight_decay is None else weight_decay
    groups = param_groups(model, weight_decay=wd, layer_lr=optim.layer_lr,
                          bias_decay=optim.bias_decay)
    opt = build_optimizer(groups, name=optim.name, lr=optim.lr if lr is None else lr,
                          weight_decay=wd, momentum=optim.momentum)
    if train.engine == "deepspeed":
        return DeepSpeedEngine(model, opt, grad_clip=optim.grad_clip, zero_stage=train.zero_stage,
                               precision=train.precision, device=device,
                               micro_batch=optim.batch_size if micro_batch is None
                               else micro_batch)
    if train.channels_last:
        # in place on the same Parameter objects, so the optimizer built above still holds them
        model.to(memory_format=torch.channels_last)
    return DDPEngine(model, opt, grad_clip=optim.grad_clip, device=device,
                     precision=train.precision)

"""The DDP / DeepSpeed switch: one small interface over a model + its optimizer.

What belongs here: wrapping, backward/step, full (unwrapped, gathered) state dicts, optimizer state,
and telling the engine that its weights were changed from outside (the teacher blend). What does
not: losses, the schedule (lr is set by the loop each step), Ray. DeepSpeed is imported lazily
inside the one class that needs it.
"""

from __future__ import annotations

import enum

from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn


def build_optimizer(params: Iterator[nn.Parameter] | list, *, name: str, lr: float,
                    weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    """Torch optimizer by name (DeepSpeed is given this object: no JIT-built ops on CPU)."""
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True,
                               weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


class Engine:
    """Interface; see DDPEngine and DeepSpeedEngine."""

    module: nn.Module  # what forward is called on (possibly wrapped)
    # True when full_state_dict() is a collective (ZeRO-3 gathers): every rank must call it.
    collective_state: bool = False

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
                 device: torch.device) -> None:
        self._model = model.to(device)
        self.optimizer = optimizer
        self.grad_clip = grad_clip
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.module = nn.parallel.DistributedDataParallel(self._model, device_ids=ids)
        else:
            self.module = self._model

    def unwrapped(self) -> nn.Module:
        return self._model

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        norm = 0.0
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self._model.parameters(), self.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def optimizer_state(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, sd: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(sd)


class DeepSpeedEngine(Engine):
    """DeepSpeed ZeRO 0-3 around a torch optimizer (fp32 on CPU; fp16/bf16 on GPU).

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
        self.collective_state = zero_stage == 3
        engine, opt, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                 config=ds_config)
        self.engine = engine
        self.module = engine
        self.optimizer = opt

    def unwrapped(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, lr: float) -> float:
        for g in self.optimizer.param_groups:
            g["lr"] = lr
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
        with self._gathered(modify=False):  # collective under ZeRO-3: call on every rank
            return {k: v.detach().cpu().clone() for k, v in self.unwrapped().state_dict().items()}

    def load_full_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        with self._gathered(modify=True):
            self.unwrapped().load_state_dict(sd)
        self.weights_changed()

    def modify_weights_(self, fn: Callable[[dict[str, torch.Tensor]], None]) -> None:
        with self._gathered(modify=True):
            fn(self.unwrapped().state_dict())
        self.weights_changed()

    def weights_changed(self) -> None:
        # ZeRO 1-3 keep fp32 master partitions (flat copies) that the next optimizer step would
        # write back over the module weights; copy the modified weights into them. Stage 0 in
        # fp32 steps the module parameters themselves (nothing to refresh).
        refresh = getattr(self.optimizer, "refresh_fp32_params", None)
        if self.zero_stage > 0 and refresh is not None:
            refresh()

    def optimizer_state(self) -> dict[str, Any]:
        """This rank's optimizer state (its ZeRO partition), made loadable with weights_only:
        the loss-scaler object is dropped (it is rebuilt from the config on load) and enums
        become ints."""
        sd = dict(self.optimizer.state_dict())
        sd.pop("loss_scaler", None)
        return _plain(sd)

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


def _plain(obj: Any) -> Any:
    """Nested optimizer state -> values ``torch.load(weights_only=True)`` accepts: enums become
    ints, dataclasses (DeepSpeed's fragment addresses, metadata for its universal checkpoints,
    not read on load) plain dicts."""
    import dataclasses

    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj

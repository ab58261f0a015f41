"""Checkpoints, every kind, read and written here only: complete or absent, never half-written;
loadable with weights_only=True.

A checkpoint is one file ``ckpt-<step>.pt`` holding a dict with explicit keys. Every kind has
``config`` (the resolved experiment, nested dict), ``step`` (optimizer steps done), ``rng``,
``format`` and, per trained network, its full state dict under its role name and its optimizer
state under ``<role>_optim``:

- ``tsal_dist.checkpoint/1`` (training): ``student``, ``teacher``, ``server`` (teacher-server
  state), ``metrics`` (last logged row), ``engine``.
- ``tsal_dist.distill_teacher/1`` (a distillation teacher being trained): ``teacher``, ``role``.
- ``tsal_dist.distill_checkpoint/1`` (distillation): ``student`` described by ``student_arch``
  ("regressor" | "heatmap"), ``student_width`` and ``student_input_size``; ``distill_config``;
  the frozen ``teacher`` (Tough) and ``tolerant`` teachers; ``metrics``.

Per-rank optimizer shards (DeepSpeed ZeRO 1-3) go next to it as ``ckpt-<step>.optim-rank<r>.pt``
and are written BEFORE the main file, whose presence marks the checkpoint complete. The
learning-rate schedule and the data position are pure functions of ``step``, so restoring the
step restores them. :func:`model_from_checkpoint` rebuilds a network of any kind from the
checkpoint's own fields (eval, export, ``teachers.tough_from``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import numpy as np
import torch
from torch import nn

from tsal_dist import models
from tsal_dist.atomic import atomic_path
from tsal_dist.config import ConfigError, DistillConfig, ExperimentConfig, with_overrides

if TYPE_CHECKING:
    from tsal_dist.loop.engines import Engine

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model. The message names it."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over ``path``."""
    with atomic_path(path, fsync=True) as tmp:
        # through a file object: the archive's inner folder is then "archive", not the temp name
        with open(tmp, "wb") as f:
            torch.save(obj, f)


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:08d}.pt"


def shard_path(folder: str | Path, step: int, rank: int) -> Path:
    return Path(folder) / f"ckpt-{step:08d}.optim-rank{rank}.pt"


def list_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of complete checkpoints, oldest first."""
    p = Path(folder)
    if not p.is_dir():
        return []
    out = [(int(m.group(1)), p / n) for n in os.listdir(p) if (m := _NAME.match(n))]
    return sorted(out)


def latest_checkpoint(folder: str | Path) -> Path | None:
    ck = list_checkpoints(folder)
    return ck[-1][1] if ck else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (and their shards)."""
    ck = list_checkpoints(folder)
    for step, path in ck[:-keep] if keep > 0 else []:
        for f in Path(folder).glob(f"ckpt-{step:08d}*"):
            f.unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True); errors name the file."""
    obj = _read(path)
    if "config" not in obj or "step" not in obj:
        raise CheckpointError(f"{path}: not a tsal_dist checkpoint (missing 'config'/'step')")
    return obj


def _read(path: str | Path) -> dict[str, Any]:
    """The dict a checkpoint file holds (weights_only=True, on the CPU); errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{p}: not a readable tsal_dist checkpoint "
                              f"({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: not a tsal_dist checkpoint (a {type(obj).__name__}, "
                              "not a dict)")
    return obj


def _state_dict_error(e: BaseException, limit: int = 300) -> str:
    """``load_state_dict``'s error in one line: what does not fit (its first line is only
    "Error(s) in loading state_dict for X:")."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = " ".join(lines[1:]) if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
    return detail if len(detail) <= limit else detail[:limit - 3] + "..."


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def rng_state() -> dict[str, Any]:
    """Torch/numpy/python RNG states as weights_only-safe values (tensors, lists, ints), and the
    current CUDA device's generator (dropout on a GPU draws from it) once CUDA is in use."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a CPU resume of a GPU run: not needed
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    random.setstate((3, tuple(state["python"]), None))


def numpy_state_to_torch(state: Any) -> Any:
    """Recursively convert numpy arrays to tensors (weights_only-safe); leaves others alone."""
    if isinstance(state, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(state))
    if isinstance(state, dict):
        return {k: numpy_state_to_torch(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(numpy_state_to_torch(v) for v in state)
    return state


def torch_state_to_numpy(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.numpy()
    if isinstance(state, dict):
        return {k: torch_state_to_numpy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(torch_state_to_numpy(v) for v in state)
    return state


def save_engine_checkpoint(folder: str | Path, *, step: int, engines: Mapping[str, "Engine"],
                           payload: dict[str, Any], rank: int, sharded: bool, keep: int,
                           barrier: Callable[[], None]) -> Path | None:
    """Write ``ckpt-<step>.pt``: ``payload`` plus each engine's full state under its role name
    and its optimizer state under ``<role>_optim``; called on EVERY rank.

    Full states are gathered on every rank (a collective under ZeRO). With ``sharded`` (ZeRO
    1-3) each rank writes its optimizer partition to ``ckpt-<step>.optim-rank<r>.pt`` first, and
    only then rank 0 writes the main file, whose presence marks the checkpoint complete.

    Returns:
        The main file's path on rank 0, None elsewhere.
    """
    fulls = {role: eng.full_state_dict() for role, eng in engines.items()}
    if sharded:
        atomic_torch_save({f"{role}_optim": eng.optimizer_state() for role, eng in engines.items()},
                          shard_path(folder, step, rank))
        barrier()
    path = None
    if rank == 0:
        out = {**payload, **fulls}
        if not sharded:
            out.update({f"{role}_optim": eng.optimizer_state() for role, eng in engines.items()})
        path = checkpoint_path(folder, step)
        atomic_torch_save(out, path)
        prune_checkpoints(folder, keep)
    barrier()
    return path


def optimizer_state_of(state: Mapping[str, Any], role: str, ckpt: str | Path, rank: int
                       ) -> dict[str, Any]:
    """``<role>_optim`` of a checkpoint: from the main file, or this rank's shard."""
    key = f"{role}_optim"
    if key in state:
        return state[key]
    shard = shard_path(Path(ckpt).parent, int(state["step"]), rank)
    return torch.load(shard, map_location="cpu", weights_only=True)[key]


def is_sharded(cfg: ExperimentConfig) -> bool:
    """Whether optimizer states are per-rank partitions (DeepSpeed ZeRO 1-3): shard files."""
    return cfg.train.engine == "deepspeed" and cfg.train.zero_stage > 0


# ----------------------------------------------------------------------------- the three kinds


def save_training_checkpoint(folder: str | Path, *, step: int, cfg: ExperimentConfig,
                             student: "Engine", teacher: "Engine",
                             server: dict[str, Any] | None, metrics: dict[str, Any], rank: int,
                             barrier: Callable[[], None]) -> Path | None:
    """A TSAL checkpoint of both models, the teacher server, RNG and metrics (every rank calls).

    Args:
        server: the teacher server's state (``TeacherClient.state_dict()``), on rank 0; None
            elsewhere.
    """
    payload: dict[str, Any] = {"config": cfg.to_dict(), "step": step, "rng": rng_state(),
                               "metrics": metrics, "format": "tsal_dist.checkpoint/1",
                               "engine": cfg.train.engine}
    if server is not None:
        payload["server"] = numpy_state_to_torch(server)
    return save_engine_checkpoint(folder, step=step, engines={"student": student,
                                                              "teacher": teacher},
                                  payload=payload, rank=rank, sharded=is_sharded(cfg),
                                  keep=cfg.run.keep_checkpoints, barrier=barrier)


def save_teacher_checkpoint(folder: str | Path, *, step: int, role: str, cfg: ExperimentConfig,
                            teacher: "Engine", rank: int,
                            barrier: Callable[[], None]) -> Path | None:
    """A checkpoint of one distillation teacher in training (``role`` "tough" | "tolerant")."""
    return save_engine_checkpoint(folder, step=step, engines={"teacher": teacher}, payload={
        "config": cfg.to_dict(), "step": step, "role": role, "rng": rng_state(),
        "format": "tsal_dist.distill_teacher/1"}, rank=rank, sharded=is_sharded(cfg),
        keep=cfg.run.keep_checkpoints, barrier=barrier)


# student.arch of the distillation config (the student's head) -> the checkpoint's student_arch
_STUDENT_ARCH = {"regression": "regressor", "heatmap": "heatmap"}
_HEAD_OF_ARCH: dict[str, Literal["regression", "heatmap"]] = {"regressor": "regression",
                                                              "heatmap": "heatmap"}


def save_student_checkpoint(folder: str | Path, *, step: int, dcfg: DistillConfig,
                            student: "Engine", tough: nn.Module, tolerant: nn.Module,
                            metrics: dict[str, Any], rank: int,
                            barrier: Callable[[], None],
                            kd_scale: float | None = None) -> Path | None:
    """A distillation checkpoint: the student (and what rebuilds it), both frozen teachers, and
    the KD-Loss scale of a ``kd.switch: matched`` run once it is set."""
    e = dcfg.experiment
    arch = _STUDENT_ARCH[dcfg.student.arch]
    return save_engine_checkpoint(folder, step=step, engines={"student": student}, payload={
        "config": e.to_dict(), "distill_config": dcfg.to_dict(), "step": step,
        "student_arch": arch, "student_input_size": e.model.input_size,
        "student_width": dcfg.student_width(),
        "teacher": {k: v.detach().cpu().clone() for k, v in tough.state_dict().items()},
        "tolerant": {k: v.detach().cpu().clone() for k, v in tolerant.state_dict().items()},
        "rng": rng_state(), "metrics": metrics, "format": "tsal_dist.distill_checkpoint/1",
        **({} if kd_scale is None else {"kd_scale": kd_scale})},
        rank=rank, sharded=is_sharded(e), keep=e.run.keep_checkpoints, barrier=barrier)


def restore_engines_(state: Mapping[str, Any], ckpt: str | Path,
                     engines: Mapping[str, "Engine"], *, rank: int,
                     optimizers: bool = True) -> None:
    """Load each engine's weights from ``state[role]`` and, with ``optimizers``, its optimizer
    state (from the main file, or this rank's shard); the step and RNG are the caller's.

    Raises:
        CheckpointError: the weights do not fit the engines' models (naming the file).
    """
    try:
        for role, eng in engines.items():
            eng.load_full_state_dict(state[role])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{ckpt}: its weights do not fit this model ({_one_line(e)}); "
                              "resume it with the config it was trained with") from None
    if optimizers:
        for role, eng in engines.items():
            eng.load_optimizer_state(optimizer_state_of(state, role, ckpt, rank))


# ----------------------------------------------------------------------------- networks


@dataclass(frozen=True)
class CheckpointModel:
    """One network of a checkpoint, rebuilt.

    Attributes:
        model: in eval mode, fp32, on the CPU: a ``LandmarkDetector`` (head "heatmap") or a
            ``MobileNetV2Regressor`` (head "regression").
        head: "heatmap" (decode its last heatmap stage with ``config.model``'s decode) or
            "regression" (outputs (B, K, 2) crop-normalised coordinates, no scores).
        config: the experiment the checkpoint was trained with (overrides applied).
        checkpoint: the whole checkpoint dict (``step``, ``metrics``, ...).
    """

    model: nn.Module
    head: Literal["heatmap", "regression"]
    config: ExperimentConfig
    checkpoint: dict[str, Any]

    @property
    def input_size(self) -> int:
        return int(self.model.input_size)

    @property
    def step(self) -> int:
        """Optimizer steps of the source checkpoint (-1 when it does not say)."""
        return int(self.checkpoint.get("step", -1))


def model_from_checkpoint(path: str | Path, which: str, *,
                          overrides: Mapping[str, Any] | None = None) -> CheckpointModel:
    """Rebuild the ``which`` network ("teacher" | "student") of a checkpoint of any kind.

    The architecture comes from the checkpoint's own fields: the experiment's detector
    (``config.model``), or for a distilled network the one ``<which>_arch`` names at
    ``<which>_width`` and ``<which>_input_size``.

    Args:
        overrides: dotted overrides of the checkpoint's experiment config applied first
            (``--set model.decode=window``).
    Raises:
        FileNotFoundError, CheckpointError: missing or unreadable file, missing keys, unknown
            architecture, weights that do not fit (each naming the file).
        ConfigError: a bad config in the checkpoint or a bad override (naming file and key).
    """
    p = Path(path)
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    ckpt = _read(p)
    if "config" not in ckpt or which not in ckpt:
        raise CheckpointError(f"{p}: expected a dict with 'config' and {which!r}, "
                              f"got {sorted(ckpt)}")
    try:
        cfg = with_overrides(ExperimentConfig.from_dict(ckpt["config"]), overrides or {})
    except ConfigError as e:
        raise ConfigError(f"{p}: config: {e}") from None
    state = ckpt[which]
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: {which!r} is not a state dict ({type(state).__name__})")
    step = ckpt.get("step", -1)
    if type(step) is not int:  # bool is an int subclass, never a step
        raise CheckpointError(f"{p}: step must be a whole number, got {step!r}")
    k = cfg.data.num_points
    arch = ckpt.get(f"{which}_arch")
    head: Literal["heatmap", "regression"]
    if arch is None:  # the experiment's own detector (a TSAL teacher or student, a KD teacher)
        model, head = models.build_model(cfg.model, k), "heatmap"
    elif isinstance(arch, str) and arch in _HEAD_OF_ARCH:
        missing = [f for f in (f"{which}_width", f"{which}_input_size") if f not in ckpt]
        if missing:
            raise CheckpointError(f"{p}: {which}_arch {arch!r} without {', '.join(missing)}")
        head = _HEAD_OF_ARCH[arch]
        width, size = ckpt[f"{which}_width"], ckpt[f"{which}_input_size"]
        if not (isinstance(width, (int, float)) and not isinstance(width, bool)
                and math.isfinite(width)) or type(size) is not int:
            raise CheckpointError(f"{p}: {which}_width must be a number and {which}_input_size "
                                  f"a whole number, got {width!r} and {size!r}")
        try:
            model = models.build_student_model(head, cfg.model, k, width=float(width),
                                               input_size=size)
        except ValueError as e:
            raise CheckpointError(f"{p}: {which}: {_one_line(e)}") from None
    else:
        raise CheckpointError(f"{p}: unknown {which}_arch {arch!r} (expected "
                              f"{' or '.join(_HEAD_OF_ARCH)})")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{p}: {which} weights do not fit the configured model "
                              f"({_state_dict_error(e)})") from None
    return CheckpointModel(model=model.eval(), head=head, config=cfg, checkpoint=ckpt)


def weights_only_safe(obj: Any) -> Any:
    """Nested optimizer state -> values ``torch.load(weights_only=True)`` accepts: enums become
    ints, dataclasses (DeepSpeed's fragment addresses, metadata for its universal checkpoints,
    not read on load) plain dicts."""
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: weights_only_safe(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: weights_only_safe(v) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(weights_only_safe(v) for v in obj)
    if isinstance(obj, list):
        return [weights_only_safe(v) for v in obj]
    return obj

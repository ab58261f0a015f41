"""Checkpoints: complete or absent, never half-written; loadable with weights_only=True.

A checkpoint is one file ``ckpt-<step>.pt`` holding a dict with explicit keys:
``config`` (resolved, nested dict), ``step`` (optimizer steps done), ``student``, ``teacher`` (full
state dicts), ``student_optim``, ``teacher_optim``, ``server`` (teacher-server state), ``rng``,
``metrics`` (last logged row). Per-rank optimizer shards (DeepSpeed ZeRO 1-3) go next to it as
``ckpt-<step>.optim-rank<r>.pt`` and are written BEFORE the main file, whose presence marks the
checkpoint complete. The learning-rate schedule and the data position are pure functions of
``step``, so restoring the step restores them.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch

from tsal_dist.atomic import atomic_path

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
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: checkpoint not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise CheckpointError(f"{p}: not a readable tsal_dist checkpoint "
                              f"({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(obj, dict) or "config" not in obj or "step" not in obj:
        raise CheckpointError(f"{p}: not a tsal_dist checkpoint (missing 'config'/'step')")
    return obj


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def rng_state() -> dict[str, Any]:
    """Torch/numpy/python RNG states as weights_only-safe values (tensors, lists, ints)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": list(random.getstate()[1]),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
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

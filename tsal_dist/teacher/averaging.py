"""Parameter-averaging math for the teacher: pure, in-place functions under ``torch.no_grad``.

States are ``dict[str, Tensor | np.ndarray]`` (a ``model.state_dict()`` or its numpy copy).
In-place functions end in ``_``. No module, optimizer, server or Ray code lives here.

Coefficient convention (the same in every function here): ``weight_old`` is the weight
on the OLD value, ``new = weight_old * old + (1 - weight_old) * source``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArrayLike",
    "buffer_keys_of",
    "check_compatible",
    "lerp_state_",
    "lerp_state_np_",
    "mean_states",
    "state_nbytes",
    "to_numpy_state",
]

ArrayLike = Union[Tensor, np.ndarray]


def _shape(value: ArrayLike) -> tuple[int, ...]:
    return tuple(value.shape)


def check_compatible(target: Mapping[str, Any], source: Mapping[str, Any],
                     *, what: str = "state") -> None:
    """Raise ValueError naming the key if two states differ in keys or shapes."""
    missing = sorted(set(target) - set(source))
    extra = sorted(set(source) - set(target))
    if missing or extra:
        raise ValueError(f"{what}: key mismatch: missing from source {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected in source "
                         f"{extra[:5]}{'...' if len(extra) > 5 else ''}")
    for key, value in target.items():
        if _shape(value) != _shape(source[key]):
            raise ValueError(f"{what}: shape mismatch for key {key!r}: "
                             f"{_shape(value)} vs {_shape(source[key])}")


def _is_float(value: ArrayLike) -> bool:
    if isinstance(value, Tensor):
        return value.is_floating_point() or value.is_complex()
    return bool(np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype,
                                                                          np.complexfloating))


def _as_tensor_like(value: ArrayLike, like: Tensor) -> Tensor:
    if isinstance(value, np.ndarray):
        # (np.ascontiguousarray would turn a 0-d array into 1-d; read-only arrays are copied
        # because torch.from_numpy cannot share them safely.)
        if not (value.flags.c_contiguous and value.flags.writeable):
            value = value.copy(order="C")
        value = torch.from_numpy(value)
    return value.to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def lerp_state_(
    target: Mapping[str, Tensor],
    source: Mapping[str, ArrayLike],
    weight_old: float,
    *,
    average_buffers: bool = True,
    buffer_keys: Collection[str] = frozenset(),
) -> None:
    """Blend ``source`` into ``target`` in place: ``target <- w * target + (1 - w) * source``.

    Floating entries are updated with ONE ``torch._foreach_lerp_`` (weight ``1 - weight_old``);
    integer/bool entries (e.g. BatchNorm ``num_batches_tracked``) are copied from ``source``.
    Entries named in ``buffer_keys`` (BatchNorm running statistics, usually
    :func:`buffer_keys_of`) follow the same rule when ``average_buffers`` is True and are left
    untouched when it is False (the original TSAL code averaged ``.parameters()`` only).
    ``target`` keeps its dtypes and devices; ``source`` values are converted.

    Args:
        target: state to update in place (e.g. ``teacher.state_dict()``, whose tensors share
            storage with the module).
        source: state with the same keys and shapes (tensors or numpy arrays).
        weight_old: weight on the OLD target value, in [0, 1]; 0 copies ``source``, 1 keeps
            ``target``.
        average_buffers: whether entries in ``buffer_keys`` are averaged/copied (True) or kept.
        buffer_keys: names of buffer entries.

    Raises:
        ValueError: on a key or shape mismatch (naming the key), or ``weight_old`` outside [0, 1].
    """
    if not 0.0 <= weight_old <= 1.0:
        raise ValueError(f"lerp_state_: weight_old is the weight on the OLD value and must be in "
                         f"[0, 1], got {weight_old}")
    check_compatible(target, source, what="lerp_state_")
    lerp_dst: list[Tensor] = []
    lerp_src: list[Tensor] = []
    for key, dst in target.items():
        if not isinstance(dst, Tensor):
            raise TypeError(f"lerp_state_: target[{key!r}] must be a torch.Tensor, got "
                            f"{type(dst).__name__} (use lerp_state_np_ for numpy states)")
        if key in buffer_keys and not average_buffers:
            continue
        src = _as_tensor_like(source[key], dst)
        if _is_float(dst):
            lerp_dst.append(dst)
            lerp_src.append(src)
        else:
            dst.copy_(src)
    if lerp_dst:
        torch._foreach_lerp_(lerp_dst, lerp_src, 1.0 - float(weight_old))


def lerp_state_np_(
    target: Mapping[str, np.ndarray],
    source: Mapping[str, ArrayLike],
    weight_old: float,
    *,
    average_buffers: bool = True,
    buffer_keys: Collection[str] = frozenset(),
) -> None:
    """:func:`lerp_state_` for a numpy ``target`` (writable arrays, updated in place)."""
    check_compatible(target, source, what="lerp_state_np_")
    views: dict[str, Tensor] = {}
    for key, arr in target.items():
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"lerp_state_np_: target[{key!r}] must be a numpy array, got "
                            f"{type(arr).__name__}")
        if not arr.flags.writeable:
            raise ValueError(f"lerp_state_np_: target[{key!r}] is read-only")
        if not arr.flags.c_contiguous:
            raise ValueError(f"lerp_state_np_: target[{key!r}] must be C-contiguous")
        views[key] = torch.from_numpy(arr)  # shares memory: updating the view updates the array
    lerp_state_(views, source, weight_old, average_buffers=average_buffers,
                buffer_keys=buffer_keys)


@torch.no_grad()
def mean_states(states: Sequence[Mapping[str, ArrayLike]]) -> dict[str, ArrayLike]:
    """Element-wise mean of several states (the queue of student snapshots).

    Floating entries are averaged (accumulated in float64, cast back to their dtype); integer and
    bool entries are taken from the NEWEST state (the last one). Each output entry has the type
    (numpy or torch), dtype and device of the newest state's entry; the result never aliases the
    inputs.

    Args:
        states: one or more states with identical keys and shapes, oldest first.

    Raises:
        ValueError: if ``states`` is empty or the states differ in keys or shapes.
    """
    if len(states) == 0:
        raise ValueError("mean_states: no states to average")
    newest = states[-1]
    for i, state in enumerate(states[:-1]):
        check_compatible(newest, state, what=f"mean_states (state {i} vs newest)")
    out: dict[str, ArrayLike] = {}
    for key, ref in newest.items():
        if _is_float(ref):
            if isinstance(ref, np.ndarray):
                acc = np.zeros(ref.shape, dtype=np.complex128 if np.iscomplexobj(ref)
                               else np.float64)
                for state in states:
                    acc += np.asarray(state[key])
                out[key] = (acc / len(states)).astype(ref.dtype)
            else:
                acc_t = torch.zeros(ref.shape, dtype=torch.complex128 if ref.is_complex()
                                    else torch.float64, device=ref.device)
                for state in states:
                    acc_t += _as_tensor_like(state[key], acc_t)
                out[key] = (acc_t / len(states)).to(ref.dtype)
        else:
            out[key] = ref.copy() if isinstance(ref, np.ndarray) else ref.detach().clone()
    return out


def to_numpy_state(state: Mapping[str, ArrayLike]) -> dict[str, np.ndarray]:
    """Detached CPU numpy copy of a state (what is pushed to the teacher server).

    bfloat16 entries (no numpy dtype) become float32.
    """
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if isinstance(value, Tensor):
            t = value.detach().cpu()
            if t.dtype == torch.bfloat16:
                t = t.float()
            out[key] = t.numpy().copy()
        elif isinstance(value, np.ndarray):
            out[key] = np.array(value, copy=True, order="C")
        else:
            raise TypeError(f"to_numpy_state: state[{key!r}] is a {type(value).__name__}, "
                            f"expected a tensor or numpy array")
    return out


def state_nbytes(state: Mapping[str, ArrayLike]) -> int:
    """Total bytes of a state's arrays."""
    total = 0
    for value in state.values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        else:
            total += value.numel() * value.element_size()
    return total


def buffer_keys_of(module: torch.nn.Module) -> frozenset[str]:
    """State-dict keys of a module's buffers (BatchNorm running stats, normalisation constants)."""
    return frozenset(name for name, _ in module.named_buffers())

"""TeacherServer: holds the filtered student F and its versions. A plain class, no Ray.

``tsal_dist.distributed`` wraps it in a Ray actor; the training loop uses it directly when local.
Rank 0 pushes student snapshots (numpy states: cheap to ship through Ray); every rank pulls one
version and blends it into its local teacher (``teacher <- blend * teacher + (1 - blend) * F``,
done by the worker with :func:`tsal_dist.teacher.averaging.lerp_state_`, not here).

Versions are the optimizer STEP of the push, never a wall-clock or arrival counter, so a
repeated or resumed run (server restored from its checkpointed ``state_dict``) replays exactly.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch

from tsal_dist.teacher.averaging import (ArrayLike, check_compatible, lerp_state_np_, mean_states,
                                         state_nbytes, to_numpy_state)

__all__ = ["TeacherServer"]

Mode = Literal["queue", "ema", "mutual", "mutual_step"]
_MODES = ("queue", "ema", "mutual", "mutual_step")
_FORMAT = 1

State = dict[str, np.ndarray]


def versions_to_keep(max_staleness: int) -> int:
    """How many filtered versions a server keeps for ``teacher.max_staleness``.

    At sync k every rank applies the version pushed ``max_staleness`` syncs earlier, while the
    pushes of the syncs since then are already stored: ``max_staleness + 1`` versions must be
    there. One more covers the push of sync k landing before the last pull of sync k, and two
    more are a margin for a resumed run replaying its last syncs against a restored server.
    """
    return max_staleness + 4


def _copy(state: Mapping[str, np.ndarray]) -> State:
    return {k: v.copy() for k, v in state.items()}


def _to_tensors(state: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    # torch tensors (not numpy) so that checkpoints load with torch.load(weights_only=True).
    return {k: torch.from_numpy(v.copy()) for k, v in state.items()}


def _from_saved(state: Mapping[str, ArrayLike]) -> State:
    return to_numpy_state(state)


class TeacherServer:
    """Recursive average filtering of pushed student snapshots into a filtered student F.

    Per push of student state S at step s:
      - ``queue``:  F = mean of the last ``queue_length`` pushed snapshots (the paper's "students
        in queue"); integer entries come from the newest snapshot.
      - ``ema``:    F <- ema_decay * F + (1 - ema_decay) * S (ema_decay = weight on the OLD F);
        the first push sets F = S.
      - ``mutual`` and ``mutual_step``: F = S (the two-way lerp happens on the worker; the
        training loop pushes nothing in ``mutual_step``, whose lerp needs no server version).
    F is then stored, immutable, as version ``s``; the newest ``keep_versions`` are held.

    Args:
        mode: ``"queue"``, ``"ema"``, ``"mutual"`` or ``"mutual_step"``.
        queue_length: N snapshots averaged in queue mode, >= 1.
        ema_decay: weight on the old F in ema mode, in [0, 1].
        keep_versions: versions held for pulls, >= 1.
    """

    def __init__(self, *, mode: Mode, queue_length: int = 4, ema_decay: float = 0.9,
                 keep_versions: int = 4) -> None:
        if mode not in _MODES:
            raise ValueError(f"TeacherServer: mode must be one of {_MODES}, got {mode!r}")
        if queue_length < 1:
            raise ValueError(f"TeacherServer: queue_length must be >= 1, got {queue_length}")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"TeacherServer: ema_decay is the weight on the OLD F and must be in "
                             f"[0, 1], got {ema_decay}")
        if keep_versions < 1:
            raise ValueError(f"TeacherServer: keep_versions must be >= 1, got {keep_versions}")
        self.mode: Mode = mode
        self.queue_length = int(queue_length)
        self.ema_decay = float(ema_decay)
        self.keep_versions = int(keep_versions)
        self._queue: deque[State] = deque(maxlen=self.queue_length)
        self._filtered: State | None = None
        self._versions: OrderedDict[int, State] = OrderedDict()
        self._pushes = 0
        self._pulls = 0
        self._bytes_pushed = 0
        self._bytes_served = 0

    # ------------------------------------------------------------------ push
    def push(self, state: Mapping[str, ArrayLike], step: int) -> int:
        """Filter a student snapshot into F and store F as version ``step``.

        Args:
            state: the student's full state (numpy arrays; tensors are converted). Copied: the
                caller may reuse its buffers afterwards.
            step: optimizer step of the snapshot; must be >= 0 and greater than every earlier
                push (a version never changes once made).

        Returns:
            The new version (= ``step``).

        Raises:
            ValueError: on a non-increasing step, or keys/shapes differing from earlier pushes.
        """
        step = int(step)
        if step < 0:
            raise ValueError(f"TeacherServer.push: step must be >= 0, got {step}")
        if step <= self.latest_version():
            raise ValueError(f"TeacherServer.push: step {step} is not newer than the latest "
                             f"version {self.latest_version()}; versions are push steps and "
                             f"must increase (restore the server from the checkpoint on resume)")
        snapshot = to_numpy_state(state)
        if self._filtered is not None:
            check_compatible(self._filtered, snapshot, what="TeacherServer.push")
        if self.mode == "queue":
            self._queue.append(snapshot)
            new_f: State = mean_states(list(self._queue))  # type: ignore[assignment]
        elif self.mode == "ema":
            if self._filtered is None:
                new_f = _copy(snapshot)
            else:
                # Versions are immutable: the new F is a copy of the old one, blended in place.
                new_f = _copy(self._filtered)
                lerp_state_np_(new_f, snapshot, self.ema_decay)
        else:
            new_f = snapshot
        self._filtered = new_f
        self._versions[step] = new_f
        while len(self._versions) > self.keep_versions:
            self._versions.popitem(last=False)
        self._pushes += 1
        self._bytes_pushed += state_nbytes(snapshot)
        return step

    # ------------------------------------------------------------------ read
    def latest_version(self) -> int:
        """Newest version (push step), or -1 if nothing was pushed."""
        return next(reversed(self._versions)) if self._versions else -1

    def versions(self) -> list[int]:
        """Versions currently held, oldest first."""
        return list(self._versions)

    def get(self, version: int) -> State | None:
        """F as of version ``version`` (a fresh copy), or None if it does not exist YET.

        Raises:
            KeyError: if the version is older than the newest one and not held: evicted
                (older than every held version) or never pushed (a step without a push).
        """
        version = int(version)
        if version in self._versions:
            state = _copy(self._versions[version])
            self._pulls += 1
            self._bytes_served += state_nbytes(state)
            return state
        if version > self.latest_version():
            return None
        held = list(self._versions)
        if version < held[0]:
            raise KeyError(f"TeacherServer: version {version} is no longer held (evicted: only the "
                           f"newest keep_versions={self.keep_versions} are kept, held {held}); "
                           f"the worker fell too far behind")
        raise KeyError(f"TeacherServer: version {version} was never pushed (held {held}); "
                       f"versions are the steps of pushes")

    def pull(self, newer_than: int = -1) -> tuple[int, State] | None:
        """The latest version and its F if it is newer than ``newer_than``, else None.

        Workers pass the version they already hold, so unchanged weights are never re-sent.
        """
        latest = self.latest_version()
        if latest < 0 or latest <= int(newer_than):
            return None
        state = self.get(latest)
        assert state is not None
        return latest, state

    def stats(self) -> dict[str, Any]:
        """Counters for logging: pushes, pulls, bytes pushed/served, versions held."""
        return {
            "mode": self.mode,
            "pushes": self._pushes,
            "pulls": self._pulls,
            "bytes_pushed": self._bytes_pushed,
            "bytes_served": self._bytes_served,
            "latest_version": self.latest_version(),
            "versions_held": list(self._versions),
            "queue_fill": len(self._queue),
        }

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: settings, queue, F, versions, counters.

        Arrays are stored as CPU torch tensors and the rest as plain Python values, so the result
        can be saved with ``torch.save`` and read back with ``torch.load(weights_only=True)``.
        """
        return {
            "format": _FORMAT,
            "mode": self.mode,
            "queue_length": self.queue_length,
            "ema_decay": self.ema_decay,
            "keep_versions": self.keep_versions,
            "queue": [_to_tensors(s) for s in self._queue],
            "filtered": None if self._filtered is None else _to_tensors(self._filtered),
            "versions": [[v, _to_tensors(s)] for v, s in self._versions.items()],
            "counters": {"pushes": self._pushes, "pulls": self._pulls,
                         "bytes_pushed": self._bytes_pushed, "bytes_served": self._bytes_served},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`. The settings must equal this server's.

        Raises:
            ValueError: on an unknown format or a settings mismatch (naming the setting).
        """
        if state.get("format") != _FORMAT:
            raise ValueError(f"TeacherServer.load_state_dict: unknown format "
                             f"{state.get('format')!r} (expected {_FORMAT})")
        for name in ("mode", "queue_length", "ema_decay", "keep_versions"):
            if state[name] != getattr(self, name):
                raise ValueError(f"TeacherServer.load_state_dict: checkpoint has {name}="
                                 f"{state[name]!r} but this server has {getattr(self, name)!r}; "
                                 f"build the server with the checkpoint's teacher settings")
        self._queue = deque((_from_saved(s) for s in state["queue"]), maxlen=self.queue_length)
        self._filtered = None if state["filtered"] is None else _from_saved(state["filtered"])
        self._versions = OrderedDict((int(v), _from_saved(s)) for v, s in state["versions"])
        counters = state["counters"]
        self._pushes = int(counters["pushes"])
        self._pulls = int(counters["pulls"])
        self._bytes_pushed = int(counters["bytes_pushed"])
        self._bytes_served = int(counters["bytes_served"])

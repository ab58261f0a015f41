"""How a training worker reaches the teacher server: the ``TeacherClient`` interface, and
``LocalTeacher``, the server in the worker's own process (single-process runs and tests).

What does not belong here: the server (``server.py``) and its Ray actor
(``tsal_dist.distributed.teacher_actor``, whose ``RayTeacherClient`` is the other client).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from tsal_dist.teacher.server import TeacherServer

__all__ = ["TeacherClient", "LocalTeacher"]


class TeacherClient(Protocol):
    """How a worker reaches the teacher server (in process, or a Ray actor)."""

    def push(self, state: dict[str, np.ndarray], step: int) -> None: ...

    def get(self, version: int) -> dict[str, np.ndarray]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


class LocalTeacher:
    """TeacherServer in this process (single-process runs and tests)."""

    def __init__(self, *, mode: str, queue_length: int, ema_decay: float, keep_versions: int = 8):
        self.server = TeacherServer(mode=mode, queue_length=queue_length, ema_decay=ema_decay,
                                    keep_versions=keep_versions)

    def push(self, state: dict[str, np.ndarray], step: int) -> None:
        self.server.push(state, step)

    def get(self, version: int) -> dict[str, np.ndarray]:
        st = self.server.get(version)
        if st is None:
            raise RuntimeError(f"teacher server has no version {version} yet")
        return st

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.server.load_state_dict(sd)

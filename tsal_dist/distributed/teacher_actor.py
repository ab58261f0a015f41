"""The teacher parameter server as a named Ray actor, and the worker-side client.

The math and the state live in ``tsal_dist.teacher.server.TeacherServer`` (no Ray); this module only
puts it behind ``ray.remote`` (the Ray parameter-server pattern). The actor restarts on failure
(``max_restarts``); a restarted actor restores itself from the newest checkpoint of the run, and
gets a new ``incarnation`` id so that workers notice the restart: a worker that finds the server's
history gone raises ``TeacherStateLost``, Ray Train restarts the worker group from that same
checkpoint, and the pair (weights, server state) is consistent again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import ray

from tsal_dist.teacher.server import TeacherServer


class TeacherStateLost(RuntimeError):
    """The teacher server restarted and no longer holds the version a worker needs."""


class TeacherPushFailed(RuntimeError):
    """The teacher actor rejected a pushed student snapshot (its error is in the message)."""


def _first_line(e: BaseException) -> str:
    """The actor's own error without Ray's traceback wrapping: the last non-empty line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


class TeacherActorImpl:
    """Plain class wrapped by ray.remote below (kept importable for tests)."""

    def __init__(self, *, mode: str, queue_length: int, ema_decay: float, keep_versions: int,
                 checkpoint_dir: str | None = None) -> None:
        self.server = TeacherServer(mode=mode, queue_length=queue_length, ema_decay=ema_decay,
                                    keep_versions=keep_versions)
        self.incarnation = uuid.uuid4().hex
        self.restored_from: str | None = None
        self.push_seconds = 0.0
        if checkpoint_dir:
            self._restore_latest(Path(checkpoint_dir))

    def _restore_latest(self, folder: Path) -> None:
        from tsal_dist.loop.checkpoint import (latest_checkpoint, load_checkpoint,
                                               torch_state_to_numpy)

        ckpt = latest_checkpoint(folder)
        if ckpt is not None:
            state = load_checkpoint(ckpt)
            self.server.load_state_dict(torch_state_to_numpy(state["server"]))
            self.restored_from = str(ckpt)

    def push(self, state: dict[str, np.ndarray], step: int) -> int:
        t = time.perf_counter()
        v = self.server.push(state, step)
        self.push_seconds += time.perf_counter() - t
        return v

    def get(self, version: int) -> tuple[str, dict[str, np.ndarray] | None, int]:
        """(incarnation, state or None if not there yet, latest version)."""
        try:
            st = self.server.get(version)
        except KeyError:
            st = None
        return self.incarnation, st, self.server.latest_version()

    def state_dict(self) -> dict[str, Any]:
        return self.server.state_dict()

    def load_state_dict(self, sd: dict[str, Any]) -> str:
        self.server.load_state_dict(sd)
        return self.incarnation

    def info(self) -> dict[str, Any]:
        # "pushes" comes from the server's counters (restored with its state on a restart)
        return {"incarnation": self.incarnation, "restored_from": self.restored_from,
                "latest_version": self.server.latest_version(),
                "push_seconds": self.push_seconds, **self.server.stats()}

    def ping(self) -> str:
        return self.incarnation


TeacherActor = ray.remote(num_cpus=0)(TeacherActorImpl)


def actor_name(run_name: str) -> str:
    return f"tsal-teacher-{run_name}"


NAMESPACE = "tsal_dist"


def start_teacher_actor(*, run_name: str, mode: str, queue_length: int, ema_decay: float,
                        keep_versions: int, checkpoint_dir: str, max_restarts: int = -1
                        ) -> ray.actor.ActorHandle:
    """Create (or replace) the run's named teacher actor."""
    name = actor_name(run_name)
    try:
        old = ray.get_actor(name, namespace=NAMESPACE)
        ray.kill(old, no_restart=True)
        for _ in range(50):  # wait until the name is free
            try:
                ray.get_actor(name, namespace=NAMESPACE)
                time.sleep(0.1)
            except ValueError:
                break
    except ValueError:
        pass
    return TeacherActor.options(name=name, namespace=NAMESPACE, max_restarts=max_restarts,
                                max_task_retries=-1, lifetime=None).remote(
        mode=mode, queue_length=queue_length, ema_decay=ema_decay, keep_versions=keep_versions,
        checkpoint_dir=checkpoint_dir)


class RayTeacherClient:
    """Worker-side client: fire-and-forget pushes, step-determined pulls, restart detection."""

    def __init__(self, run_name: str, *, timeout_s: float = 300.0) -> None:
        self.handle = ray.get_actor(actor_name(run_name), namespace=NAMESPACE)
        self.timeout_s = timeout_s
        self.incarnation = ray.get(self.handle.ping.remote())
        self._pending: list[tuple[int, ray.ObjectRef]] = []

    def push(self, state: dict[str, np.ndarray], step: int) -> None:
        """Send a student snapshot without waiting; a failed earlier push raises here or at the
        next ``get`` (TeacherPushFailed, with the actor's own error)."""
        # Serialisation happens here, in the caller (numpy: ~10 ms for 10 MB); no round trip.
        self.check_pushes()
        ref = ray.put(state)
        self._pending.append((step, self.handle.push.remote(ref, step)))

    def check_pushes(self) -> None:
        """Collect the finished pushes; raise TeacherPushFailed for one that failed."""
        still = []
        for step, ref in self._pending:
            if not _ready(ref):
                still.append((step, ref))
                continue
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as e:
                raise TeacherStateLost(f"teacher actor died during the push of step {step}: "
                                       f"{e}") from e
            except ray.exceptions.RayError as e:
                raise TeacherPushFailed(f"teacher push of step {step} failed: "
                                        f"{_first_line(e)}") from e
        self._pending = still

    def get(self, version: int) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        self.check_pushes()
        while True:
            try:
                inc, st, latest = ray.get(self.handle.get.remote(version))
            except ray.exceptions.RayActorError as e:
                raise TeacherStateLost(f"teacher actor died: {e}") from e
            if inc != self.incarnation:
                raise TeacherStateLost(
                    f"teacher actor restarted (incarnation {self.incarnation[:8]} -> {inc[:8]}); "
                    "restarting the worker group from the last checkpoint")
            if st is not None:
                return st
            self.check_pushes()  # the version may be missing because its push failed
            if time.perf_counter() - t0 > self.timeout_s:
                raise TeacherStateLost(f"teacher version {version} not available after "
                                       f"{self.timeout_s:.0f} s (latest {latest})")
            time.sleep(0.01)

    def state_dict(self) -> dict[str, Any]:
        return ray.get(self.handle.state_dict.remote())

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.incarnation = ray.get(self.handle.load_state_dict.remote(sd))


def _ready(ref: ray.ObjectRef) -> bool:
    done, _ = ray.wait([ref], timeout=0)
    return bool(done)

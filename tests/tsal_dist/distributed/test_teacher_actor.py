"""The teacher actor behind Ray: a push the server rejects surfaces at the next sync with the
server's own message (not 300 s later as a lost state)."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_failed_push_surfaces_at_the_next_get_with_the_actors_message(ray_local):
    from tsal_dist.distributed.teacher_actor import (RayTeacherClient, TeacherPushFailed,
                                                     start_teacher_actor)

    handle = start_teacher_actor(run_name="push-test", mode="ema", queue_length=2, ema_decay=0.5,
                        keep_versions=4, checkpoint_dir="")
    client = RayTeacherClient("push-test", timeout_s=5.0)
    client.push({"w": np.ones(3, np.float32)}, 1)
    assert np.allclose(client.get(1)["w"], 1.0)
    client.push({"w": np.ones(4, np.float32)}, 2)  # another shape: the server refuses it
    with pytest.raises(TeacherPushFailed) as err:
        client.get(2)
    msg = str(err.value)
    assert msg.startswith("teacher push of step 2 failed") and "'w'" in msg
    assert "\n" not in msg
    ray.kill(handle, no_restart=True)

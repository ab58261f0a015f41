"""Recursive average filtering of the student into the teacher.

``averaging`` holds the pure in-place math; ``server`` the plain-Python parameter server. No Ray
code (that is ``tsal_dist.distributed``) and no model or optimizer construction here.
"""

from tsal_dist.teacher.averaging import (buffer_keys_of, check_compatible, lerp_state_,
                                         lerp_state_np_, mean_states, state_nbytes,
                                         to_numpy_state)
from tsal_dist.teacher.server import TeacherServer

__all__ = [
    "TeacherServer",
    "buffer_keys_of",
    "check_compatible",
    "lerp_state_",
    "lerp_state_np_",
    "mean_states",
    "state_nbytes",
    "to_numpy_state",
]

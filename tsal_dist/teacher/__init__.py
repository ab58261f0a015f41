"""Recursive average filtering of the student into the teacher.

``averaging`` holds the pure in-place math; ``server`` the plain-Python parameter server. No Ray
code (that is ``tsal_dist.distributed``) and no model or optimizer construction here.
"""

from tsal_dist.teacher import averaging
from tsal_dist.teacher.averaging import *  # noqa: F403 -- the names of averaging.__all__
from tsal_dist.teacher.server import TeacherServer

__all__ = ["TeacherServer", *averaging.__all__]

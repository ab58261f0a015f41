"""TSAL loss terms. Each function takes tensors and keyword args and returns ONE unweighted
scalar; the training step weights and sums them in one place and logs each by name.

No targets are built here (that is ``tsal_dist.codec``) and no config object is read.
"""

from tsal_dist.losses.consistency import (
    nearest_candidate,
    student_consistency,
    student_pseudo_target,
    teacher_consistency,
)
from tsal_dist.losses.focal import centroid_focal_loss
from tsal_dist.losses.heatmap import heatmap_loss
from tsal_dist.losses.offset import gather_at, offset_loss
from tsal_dist.losses.structure import structure_descriptor_terms, structure_loss

__all__ = [
    "centroid_focal_loss",
    "gather_at",
    "heatmap_loss",
    "nearest_candidate",
    "offset_loss",
    "structure_descriptor_terms",
    "structure_loss",
    "student_consistency",
    "student_pseudo_target",
    "teacher_consistency",
]

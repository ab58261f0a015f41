"""Synthetic faces with exact 68-point (iBUG) ground truth, written in the real on-disk formats.

What belongs here: a small procedural face renderer (3D landmark template + identity, expression,
head pose, perspective projection, shading, clutter, occlusion, degradations) and the writer that
lays the result out like 300W (images + .pts), 300VW (videos + per-frame .pts) and SBR list files.
What does not: reading the data back (formats.py / datasets.py), augmentation (transforms.py).

Modules: ``face`` (template, identity, expression, pose, camera), ``raster`` (antialiased masks
and blending), ``render`` (``render_face``, layer by layer), ``scene`` (background, occluders,
degradations; one still photo), ``video`` (clip motion, the MJPG writer), ``dataset`` (the files
on disk, manifest, cache folder). This module re-exports what other code uses.

Landmark convention (0-based indices): 0-16 jaw, 17-21 right brow, 22-26 left brow, 27-30 nose
bridge, 31-35 nostrils, 36-41 right eye, 42-47 left eye (outer corners 36 and 45), 48-59 outer lips,
60-67 inner lips. "Right" is the subject's right, which appears on the image's left.

Coordinates in the written .pts files follow docs/CONTRACTS.md: x right, y down, pixel i's centre
at coordinate i (0-based), i.e. exactly the coordinates the renderer drew with (OpenCV's raster
convention), so a loader that uses .pts values as written is pixel-exact. Points self-occluded by a
large yaw keep their projected positions and stay marked visible (as 300W does).

Everything is deterministic for a seed: every image / video draws from its own
``np.random.default_rng([seed, stream, index])``, and the encoders (libjpeg, OpenCV's built-in MJPEG
writer) are deterministic, so the same seed gives the same bytes.
"""

from __future__ import annotations

from tsal_dist.data.synthetic.dataset import (
    content_digest,
    dataset_lists,
    ensure_synthetic,
    generate_dataset,
    generator_fingerprint,
    synthetic_key,
)
from tsal_dist.data.synthetic.face import (
    TEMPLATE,
    FaceState,
    apply_expression,
    face_landmarks,
    rotation_matrix,
    sample_identity,
)
from tsal_dist.data.synthetic.render import render_face
from tsal_dist.data.synthetic.scene import render_image
from tsal_dist.data.synthetic.video import render_video

__all__ = [
    "TEMPLATE", "FaceState", "apply_expression", "content_digest", "dataset_lists",
    "ensure_synthetic", "face_landmarks", "generate_dataset", "generator_fingerprint",
    "render_face", "render_image", "render_video", "rotation_matrix", "sample_identity",
    "synthetic_key",
]

"""Training targets and map decoding: the only place heatmaps and centroid maps are made and read.

Two codecs, each one object both ways (mmpose style), batched torch, CPU or GPU:

- :class:`HeatmapCodec` (``heatmap``): landmark Gaussians + background channel (TSAL/SBR
  ``heatmap_type=gaussian``) and the SBR/TSAL ``find_tensor_peak_batch`` decode (argmax, then a
  weighted mean offset over a ``(2 * window + 1)^2`` window). The decode is differentiable
  w.r.t. the map values and exports to ONNX; training's consistency terms use it. For inference
  (evaluation, validation, export) :meth:`HeatmapCodec.locate` can instead use the DARK
  refinement (:func:`decode_dark`): Gaussian smoothing, then a second-order Taylor step on the
  log map around the smoothed peak. The decoders themselves are pure functions (``decode``).
- :class:`CentroidCodec` (``centroid``): the CenterNet branch's facial-centroid Gaussian and
  per-landmark offsets (TSAL ``hm`` / ``hmhp_offset``) with the target bugs T1-T5 of
  docs/method_notes.md §1.3 fixed, and the top-k candidate decode the student's multi-source
  pseudo-label uses.

Units follow docs/CONTRACTS.md (``cells``): "crop px" are pixels of the S x S crop (pixel i's
centre at i); "cells" are heatmap cells, cell u's centre at crop px
``u * stride + (stride - 1) / 2``; "crop-normalised" is ``(px + 0.5) / S``.

Not here: losses (tsal_dist.losses), networks (tsal_dist.models; a detector carries its
HeatmapCodec and returns crop-normalised landmarks from ``predict``).
"""

from tsal_dist.codec.cells import cell_to_px, norm_to_px, px_to_cell, px_to_norm
from tsal_dist.codec.centroid import CentroidCodec, gaussian_radius
from tsal_dist.codec.decode import decode_dark, decode_peaks
from tsal_dist.codec.heatmap import LOCATE_METHODS, HeatmapCodec, peak_map

__all__ = [
    "HeatmapCodec",
    "CentroidCodec",
    "decode_peaks",
    "decode_dark",
    "peak_map",
    "LOCATE_METHODS",
    "gaussian_radius",
    "px_to_cell",
    "cell_to_px",
    "px_to_norm",
    "norm_to_px",
]

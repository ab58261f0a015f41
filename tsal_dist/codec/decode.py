"""Peak decoders of landmark heatmaps: the SBR/TSAL window mean and DARK, both exportable to ONNX.

Pure functions of a batch of maps (B, C, h, w) -> (coords (B, C, 2) crop px, scores (B, C)).
:class:`~tsal_dist.codec.heatmap.HeatmapCodec` picks one of them from its configuration.

Not here: making targets, which channels are landmarks (the codec's), cells <-> px (``cells``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from tsal_dist.codec.cells import FLOAT64_EPS

__all__ = ["decode_peaks", "decode_dark", "blur_maps"]

# find_tensor_peak_batch: window values <= this become machine epsilon (np.finfo(float).eps).
_PEAK_THRESHOLD = 1e-6
# decode_dark: map values are floored here before the log
_LOG_FLOOR = 1e-10


def _at_least_float32(t: Tensor) -> Tensor:
    """fp16/bf16 -> float32, float32/float64 unchanged. Always a ``.to()`` call, so a graph
    traced in float32 (torch.export) keeps the cast for inputs that autocast makes fp16."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def decode_peaks(maps: Tensor, window: int, stride: int) -> tuple[Tensor, Tensor]:
    """Windowed weighted-mean peak of every channel; see
    :meth:`~tsal_dist.codec.heatmap.HeatmapCodec.decode`.

    Args:
        maps: (B, C, h, w) float.
        window: radius r in cells.
        stride: crop px per cell.

    Returns:
        coords (B, C, 2) crop px, scores (B, C).
    """
    b, c, h, w = maps.shape
    r = window
    maps = _at_least_float32(maps)  # fp16 (autocast): the epsilon below is 0 (0 / 0 = NaN)
    flat = maps.reshape(b, c, h * w)
    scores, index = flat.max(dim=2)  # (B, C)
    # row, column of a non-negative flat index without Mod (which TensorRT's ONNX parser lacks)
    v = torch.div(index, w, rounding_mode="trunc")
    u = index - v * w
    wp = w + 2 * r
    padded = F.pad(maps, (r, r, r, r)).reshape(b, c, (h + 2 * r) * wp)
    d = torch.arange(-r, r + 1, device=maps.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    dx = dx.reshape(-1)
    dy = dy.reshape(-1)
    # padded cell (v + r + dy, u + r + dx) for every window offset
    window_index = ((v + r)[..., None] + dy) * wp + (u + r)[..., None] + dx  # (B, C, n)
    values = torch.gather(padded, 2, window_index)
    values = torch.where(values > _PEAK_THRESHOLD, values, torch.full_like(values, FLOAT64_EPS))
    total = values.sum(dim=2)
    du = (values * dx.to(values.dtype)).sum(dim=2) / total
    dv = (values * dy.to(values.dtype)).sum(dim=2) / total
    x = (u.to(values.dtype) + du) * stride + (stride - 1) / 2.0
    y = (v.to(values.dtype) + dv) * stride + (stride - 1) / 2.0
    return torch.stack([x, y], dim=-1), scores


def _gaussian_kernel1d(sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(2.0 * sigma)))
    d = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(d ** 2) / (2.0 * sigma ** 2))
    return k / k.sum()


def _blur_operator(n: int, sigma: float) -> Tensor:
    """(n, n) matrix A with ``A @ v`` = v blurred by a Gaussian of ``sigma`` samples, the
    signal's ends replicated (the same as padding with edge values, then convolving)."""
    k = _gaussian_kernel1d(sigma)
    r = (k.numel() - 1) // 2
    # row i gathers k[j + r] from column clamp(i + j); one scatter-add, not (2r+1) n element
    # writes: traced graphs (torch.export, TorchScript ONNX) get a handful of ops instead of
    # hundreds (a per-element loop made the eager and exported torch decode ~30x slower)
    cols = (torch.arange(n)[:, None] + torch.arange(-r, r + 1)[None, :]).clamp(0, n - 1)
    return torch.zeros(n, n, dtype=torch.float32).scatter_add_(1, cols,
                                                               k.expand(n, -1).contiguous())


def blur_maps(maps: Tensor, sigma_cells: float) -> Tensor:
    """(B, C, h, w) maps smoothed by a separable Gaussian of ``sigma_cells`` > 0, edges
    replicated: two small matmuls with the edge replication folded into the operator (much
    faster in ONNX Runtime than a 1-channel conv over B*C images)."""
    h, w = maps.shape[-2:]
    ay = _blur_operator(h, sigma_cells).to(device=maps.device, dtype=maps.dtype)
    ax = _blur_operator(w, sigma_cells).to(device=maps.device, dtype=maps.dtype)
    return torch.matmul(torch.matmul(ay, maps), ax.t())


def decode_dark(maps: Tensor, stride: int, blur_cells: float) -> tuple[Tensor, Tensor]:
    """DARK sub-cell decode (Zhang et al., "Distribution-Aware Coordinate Representation for
    Human Pose Estimation", CVPR 2020), for inference.

    Per channel: smooth the map with a separable Gaussian of sigma ``blur_cells`` (edge
    replicated; skipped when 0), take the integer argmax (u*, v*) of the smoothed map, and move
    to the maximum of the second-order Taylor expansion of ``log(max(map, 1e-10))`` there:
    ``offset = -H^-1 g`` with central differences for the gradient g and Hessian H. When H is not
    negative definite the offset is 0; offsets are clamped to +-1 cell. For a map that IS a
    Gaussian the offset is exact; on a trained network's noisy low-resolution maps the smoothing
    makes it find the centre of the dominant blob (on the default 24 x 24 maps a blur of 2.5 cells,
    chosen on held-out training images, cut the inter-ocular NME by ~0.45 pp vs the window
    mean; benchmarks/results/decode.md). Exports to ONNX (matmul, pad, gather).

    Args:
        maps: (B, C, h, w) float.
        stride: crop px per cell.
        blur_cells: smoothing sigma in cells, >= 0.

    Returns:
        coords (B, C, 2) crop px, scores (B, C) = the raw maps' maxima.
    """
    b, c, h, w = maps.shape
    # float32 from here on, whatever the network's precision: under fp16 autocast the 1e-10 log
    # floor is 0 (log -> -inf), and the blur's matmul returns fp16 again
    maps = _at_least_float32(maps)
    scores = maps.reshape(b, c, h * w).amax(dim=2)
    x = blur_maps(maps, blur_cells) if blur_cells > 0 else maps
    x = _at_least_float32(x)
    index = x.reshape(b, c, h * w).argmax(dim=2)
    # row, column of a non-negative flat index without Mod (which TensorRT's ONNX parser lacks)
    v = torch.div(index, w, rounding_mode="trunc")
    u = index - v * w
    wp = w + 2
    padded = F.pad(x.reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    padded = padded.reshape(b, c, (h + 2) * wp)
    # the 3 x 3 neighbourhood of the peak in one gather, and the log of those 9 values only
    # (the log commutes with the edge replication, and a log of the whole map is work for
    # every cell the decode never reads)
    d = torch.tensor([-1, 0, 1], device=maps.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    near = ((v + 1)[..., None] + dy.reshape(-1)) * wp + (u + 1)[..., None] + dx.reshape(-1)
    logm = torch.log(torch.gather(padded, 2, near).clamp(min=_LOG_FLOOR))  # (B, C, 9)

    def at(ddx: int, ddy: int) -> Tensor:
        return logm[..., (ddy + 1) * 3 + ddx + 1]

    centre = at(0, 0)
    gx = 0.5 * (at(1, 0) - at(-1, 0))
    gy = 0.5 * (at(0, 1) - at(0, -1))
    hxx = at(1, 0) - 2.0 * centre + at(-1, 0)
    hyy = at(0, 1) - 2.0 * centre + at(0, -1)
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = hxx * hyy - hxy * hxy
    ok = (det > 1e-12) & (hxx < 0) & (hyy < 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    zero = torch.zeros_like(det)
    du = torch.where(ok, -(hyy * gx - hxy * gy) / safe, zero).clamp(-1.0, 1.0)
    dv = torch.where(ok, -(hxx * gy - hxy * gx) / safe, zero).clamp(-1.0, 1.0)
    px = (u.to(maps.dtype) + du) * stride + (stride - 1) / 2.0
    py = (v.to(maps.dtype) + dv) * stride + (stride - 1) / 2.0
    return torch.stack([px, py], dim=-1), scores

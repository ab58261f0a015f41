"""The centroid codec of TSAL's CenterNet branch: facial-centroid Gaussian + per-landmark offsets.

Not here: landmark heatmaps (``heatmap``), the focal and offset losses (tsal_dist.losses).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tsal_dist.codec.cells import FLOAT64_EPS, cell_to_px, check_points, map_size, px_to_cell

__all__ = ["CentroidCodec", "gaussian_radius"]


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet ``gaussian_radius`` (the original formula, including its ``/ 2`` quirk).

    Args:
        height, width: (...) box sizes (cells).
        min_overlap: minimum IoU a box at a shifted corner must keep.

    Returns:
        (...) radius, same units as the inputs.
    """
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt((b1 ** 2 - 4 * a1 * c1).clamp(min=0))) / 2
    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt((b2 ** 2 - 4 * a2 * c2).clamp(min=0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt((b3 ** 2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class CentroidCodec:
    """Facial-centroid Gaussian + per-landmark offsets (TSAL's CenterNet branch), fixed T1-T5.

    Encode (per frame): the centroid cell c = nearest cell of landmark ``centroid_index`` (the
    argmax cell of its Gaussian heatmap, as TSAL); a CenterNet "umich" Gaussian with peak 1 at
    c in a separate (B, 1, h, w) map, radius ``min(4, floor(gaussian_radius(ceil(bh), ceil(bw),
    0.7)))`` of the visible landmarks' box in cells, sigma = (2r + 1) / 6; index ``c_y * w + c_x``
    (not transposed); offsets ``cell(p_j) - c`` interleaved (dx0, dy0, dx1, ...). Frames that are
    unlabeled, or whose centroid landmark is invisible or off the map, get ``valid=False``, an
    all-zero map and an all-zero offset mask.

    Args:
        input_size: crop side S in px.
        stride: crop px per cell.
        num_points: K.
        centroid_index: 0-based landmark used as the centroid (30 = nose tip for iBUG-68).
        topk: candidates returned by :meth:`decode`.
        max_radius: cap of the Gaussian radius in cells (TSAL 4).
        min_overlap: CenterNet ``gaussian_radius`` IoU (TSAL 0.7).
    """

    def __init__(self, *, input_size: int, stride: int, num_points: int, centroid_index: int,
                 topk: int, max_radius: int = 4, min_overlap: float = 0.7) -> None:
        self.heatmap_size = map_size(input_size, stride)
        if not 0 <= centroid_index < num_points:
            raise ValueError(f"centroid_index ({centroid_index}) must be in [0, {num_points})")
        if not 1 <= topk <= self.heatmap_size ** 2:
            raise ValueError(f"topk ({topk}) must be in [1, {self.heatmap_size ** 2}] "
                             f"(cells of a {self.heatmap_size}x{self.heatmap_size} map)")
        if max_radius < 0:
            raise ValueError(f"max_radius must be >= 0, got {max_radius}")
        self.input_size = input_size
        self.stride = stride
        self.num_points = num_points
        self.centroid_index = centroid_index
        self.topk = topk
        self.max_radius = max_radius
        self.min_overlap = min_overlap

    def encode(self, landmarks: Tensor, visible: Tensor, labeled: Tensor) -> dict[str, Tensor]:
        """Centroid map, gather index and offset targets of a batch.

        Args:
            landmarks: (B, K, 2) crop px; invisible entries are ignored (may be NaN).
            visible: (B, K) in {0, 1}.
            labeled: (B,) bool; unlabeled frames get no target (T4).

        Returns:
            dict with ``center`` (B, 1, h, w) float32 in [0, 1]; ``center_index`` (B,) long
            ``c_y * w + c_x`` (0 when not valid); ``offsets`` (B, 2K) float32 cells;
            ``offset_mask`` (B, 2K) float32 (visible, on the map and frame valid);
            ``valid`` (B,) bool.
        """
        check_points(landmarks, visible, self.num_points)
        if labeled.shape != landmarks.shape[:1]:
            raise ValueError(f"labeled must be (B,), got {tuple(labeled.shape)}")
        dev = landmarks.device
        b, k = visible.shape
        h = w = self.heatmap_size
        vis = visible > 0.5
        pts = torch.where(vis[..., None], landmarks.to(torch.float32), torch.zeros((), device=dev))
        cells = px_to_cell(pts, self.stride)  # (B, K, 2)
        on_map = vis & (pts >= 0).all(-1) & (pts < self.input_size).all(-1)

        # centroid cell = argmax cell of its Gaussian = nearest cell centre (ties round up)
        c = torch.floor(cells[:, self.centroid_index] + 0.5)  # (B, 2) float
        c_ok = ((c >= 0) & (c < h)).all(-1) & vis[:, self.centroid_index]
        valid = labeled.to(dev).bool() & c_ok
        c = torch.where(valid[:, None], c, torch.zeros((), device=dev))
        center_index = (c[:, 1] * w + c[:, 0]).long()

        # Gaussian radius from the visible landmarks' box, in cells
        big = torch.tensor(float("inf"), device=dev)
        lo = torch.where(vis[..., None], cells, big).amin(dim=1)
        hi = torch.where(vis[..., None], cells, -big).amax(dim=1)
        size = torch.where(valid[:, None], (hi - lo).clamp(min=0), torch.zeros((), device=dev))
        radius = gaussian_radius(torch.ceil(size[:, 1]), torch.ceil(size[:, 0]), self.min_overlap)
        radius = torch.floor(radius).clamp(0, self.max_radius)  # (B,)
        sigma = (2 * radius + 1) / 6.0
        grid = torch.arange(h, device=dev, dtype=torch.float32)
        gx = grid.view(1, 1, w) - c[:, 0].view(b, 1, 1)
        gy = grid.view(1, h, 1) - c[:, 1].view(b, 1, 1)
        r = radius.view(b, 1, 1)
        g = torch.exp(-(gx ** 2 + gy ** 2) / (2 * sigma.view(b, 1, 1) ** 2))
        inside = (gx.abs() <= r) & (gy.abs() <= r) & (g >= FLOAT64_EPS)  # umich: g < eps * max -> 0
        center = torch.where(inside, g, torch.zeros((), device=dev)) * valid.view(b, 1, 1)

        offsets = cells - c[:, None, :]  # (B, K, 2), interleaves to (dx0, dy0, dx1, ...)
        mask = (on_map & valid[:, None]).to(torch.float32)
        offsets = offsets * mask[..., None]
        return {
            "center": center[:, None].contiguous(),
            "center_index": center_index,
            "offsets": offsets.reshape(b, 2 * k),
            "offset_mask": mask[..., None].expand(b, k, 2).reshape(b, 2 * k).contiguous(),
            "valid": valid,
        }

    def decode(self, center_logits: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k centroid peaks and the landmark shapes they vote for.

        sigmoid, 3x3 max-pool NMS, top-k cells p; candidate k's landmark j is
        ``cell_to_px(p_k + offsets[:, 2j:2j+2, p_k])``.

        Args:
            center_logits: (B, 1, h, w) logits.
            offsets: (B, 2K, h, w) cells, interleaved (dx0, dy0, dx1, ...).

        Returns:
            candidates: (B, topk, K, 2) crop px, best peak first; differentiable w.r.t. offsets.
            peak_scores: (B, topk) sigmoid scores of the peaks (0 for suppressed cells).
        """
        h = w = self.heatmap_size
        k = self.num_points
        if center_logits.dim() != 4 or center_logits.shape[1:] != (1, h, w):
            raise ValueError(f"center_logits must be (B, 1, {h}, {w}), "
                             f"got {tuple(center_logits.shape)}")
        if offsets.shape != (center_logits.shape[0], 2 * k, h, w):
            raise ValueError(f"offsets must be (B, {2 * k}, {h}, {w}), got {tuple(offsets.shape)}")
        b = center_logits.shape[0]
        heat = torch.sigmoid(center_logits.float())
        peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
        heat = heat * (peaks == heat).to(heat.dtype)
        scores, index = heat.reshape(b, h * w).topk(self.topk, dim=1)  # (B, T)
        px = (index % w).to(torch.float32)
        py = torch.div(index, w, rounding_mode="floor").to(torch.float32)
        off = offsets.float().reshape(b, 2 * k, h * w)
        off = torch.gather(off, 2, index[:, None, :].expand(b, 2 * k, self.topk))  # (B, 2K, T)
        off = off.permute(0, 2, 1).reshape(b, self.topk, k, 2)
        cells = off + torch.stack([px, py], dim=-1)[:, :, None, :]
        return cell_to_px(cells, self.stride), scores


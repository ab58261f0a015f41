"""The landmark heatmap codec: Gaussian targets with a background channel, and their decode.

Not here: the peak decoders themselves (``decode``), the centroid branch's codec (``centroid``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsal_dist.codec.cells import cell_to_px, check_points, map_size
from tsal_dist.codec.decode import blur_maps, decode_dark, decode_peaks

__all__ = ["HeatmapCodec", "LOCATE_METHODS", "peak_map"]

# Heatmap values below this fraction are zeroed (SBR generate_label_map threshold).
_HEATMAP_CUTOFF = 0.01
LOCATE_METHODS = ("window", "dark")


class HeatmapCodec:
    """Gaussian landmark heatmaps with a background channel, and their sub-cell decode.

    Args:
        input_size: crop side S in px.
        stride: crop px per heatmap cell; maps are h = w = S / stride.
        num_points: K landmarks; maps have K + 1 channels (channel K = background).
        sigma_px: Gaussian sigma in crop px (TSAL 6 at 256 px, SBR 4).
        window: decode window radius r in cells (SBR 4; TSAL hard-codes 20).
        locate: the inference decode of :meth:`locate`: "window" (= :meth:`decode`) or "dark"
            (:func:`~tsal_dist.codec.decode.decode_dark`).
        blur_cells: Gaussian smoothing sigma in cells for "dark" (0 = none).
    """

    def __init__(self, *, input_size: int, stride: int, num_points: int, sigma_px: float,
                 window: int, locate: str = "window", blur_cells: float = 0.0) -> None:
        self.heatmap_size = map_size(input_size, stride)
        if num_points <= 0:
            raise ValueError(f"num_points must be > 0, got {num_points}")
        if sigma_px <= 0:
            raise ValueError(f"sigma_px must be > 0, got {sigma_px}")
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.input_size = input_size
        self.stride = stride
        self.num_points = num_points
        if locate not in LOCATE_METHODS:
            raise ValueError(f"locate must be one of {LOCATE_METHODS}, got {locate!r}")
        if not blur_cells >= 0:
            raise ValueError(f"blur_cells must be >= 0, got {blur_cells}")
        self.sigma_px = float(sigma_px)
        self.window = int(window)
        self.locate_method = locate
        self.blur_cells = float(blur_cells)

    @classmethod
    def for_model(cls, model_cfg: "object", *, stride: int, num_points: int,
                  input_size: int | None = None) -> "HeatmapCodec":
        """The codec a ``ModelConfig`` describes (sigma, window, locate method, blur)."""
        return cls(input_size=int(input_size or model_cfg.input_size), stride=int(stride),
                   num_points=int(num_points), sigma_px=model_cfg.heatmap_sigma_px,
                   window=model_cfg.decode_window, locate=model_cfg.decode,
                   blur_cells=model_cfg.decode_blur_cells)

    def encode(self, landmarks: Tensor, visible: Tensor) -> tuple[Tensor, Tensor]:
        """Make the heatmap targets of a batch.

        Args:
            landmarks: (B, K, 2) crop px (x, y); invisible entries are ignored (may be NaN).
            visible: (B, K) in {0, 1}.

        Returns:
            heatmaps: (B, K + 1, h, w) float32. Channel j < K is
                ``exp(-d^2 / (2 sigma^2))`` at the cell centres, zeroed below 0.01, times visible_j;
                channel K is ``max(0, 1 - max_j H_j)``, all zero for a frame with no visible point.
            mask: (B, K + 1) float32: visible_j for landmark channels, 1 for the background channel
                when the frame has any visible point (else 0).
        """
        check_points(landmarks, visible, self.num_points)
        dev = landmarks.device
        vis = (visible > 0.5).to(torch.float32)
        pts = torch.where(vis[..., None] > 0, landmarks.to(torch.float32),
                          torch.zeros((), device=dev))  # NaN-safe for invisible points
        h = self.heatmap_size
        centres = cell_to_px(torch.arange(h, device=dev, dtype=torch.float32), self.stride)
        dx2 = (centres.view(1, 1, 1, h) - pts[..., 0, None, None]) ** 2  # (B, K, 1, w)
        dy2 = (centres.view(1, 1, h, 1) - pts[..., 1, None, None]) ** 2  # (B, K, h, 1)
        maps = torch.exp(-(dx2 + dy2) / (2.0 * self.sigma_px ** 2))
        maps = torch.where(maps < _HEATMAP_CUTOFF, torch.zeros((), device=dev), maps).clamp(max=1.0)
        maps = maps * vis[..., None, None]
        any_vis = vis.amax(dim=1)  # (B,)
        background = (1.0 - maps.amax(dim=1, keepdim=True)).clamp(min=0.0)
        background = background * any_vis.view(-1, 1, 1, 1)
        mask = torch.cat([vis, any_vis[:, None]], dim=1)
        return torch.cat([maps, background], dim=1), mask

    def decode(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """Sub-cell peak of every landmark channel (SBR/TSAL ``find_tensor_peak_batch``).

        Per channel: integer argmax (u*, v*) (first maximum in row-major order); the window
        ``[u* - r, u* + r] x [v* - r, v* + r]`` with cells outside the map read as 0 and values
        <= 1e-6 replaced by machine epsilon; the weighted mean offset (du, dv) over the window;
        coordinate ``(u* + du) * stride + (stride - 1) / 2``. This equals SBR's bilinear
        ``grid_sample`` with ``align_corners=True`` (the window samples fall on integer cells) and
        floor division of the flat index, written with a gather so that it exports to ONNX.

        Args:
            heatmaps: (B, K + 1, h, w) or (B, K, h, w) map values; the background channel, if
                present, is ignored.

        Returns:
            coords: (B, K, 2) crop px (x, y), float32; differentiable w.r.t. ``heatmaps``.
            scores: (B, K) the maximum value of each channel.
        """
        return decode_peaks(self._landmark_maps(heatmaps), self.window, self.stride)

    def locate(self, heatmaps: Tensor) -> tuple[Tensor, Tensor]:
        """Inference decode: landmark coordinates with the configured method.

        "window" is :meth:`decode`; "dark" is :func:`~tsal_dist.codec.decode.decode_dark` with
        ``blur_cells``. Same arguments and returns as :meth:`decode` (scores are the raw channel
        maxima either way).
        """
        if self.locate_method == "window":
            return self.decode(heatmaps)
        return decode_dark(self._landmark_maps(heatmaps), self.stride, self.blur_cells)

    def _landmark_maps(self, heatmaps: Tensor) -> Tensor:
        """(B, K[+1], h, w) -> the K landmark channels in float32 (raises on another shape)."""
        if heatmaps.dim() != 4 or heatmaps.shape[1] not in (self.num_points, self.num_points + 1):
            raise ValueError(f"heatmaps must be (B, {self.num_points}[+1], h, w), "
                             f"got {tuple(heatmaps.shape)}")
        return heatmaps[:, : self.num_points].float()


def peak_map(codec: HeatmapCodec, heatmaps: Tensor) -> tuple[Tensor, float]:
    """The map whose integer argmax :meth:`HeatmapCodec.locate` takes, and how far (cells) the
    sub-cell step can move from that argmax: (raw maps, window radius) for "window", (blurred
    maps, 1) for "dark". Used to tell a numerical tie between two cells from a real difference.

    Args:
        heatmaps: (B, K[+1], h, w).
    Returns:
        ((B, K, h, w) float maps, reach in cells).
    """
    maps = heatmaps[:, : codec.num_points].float()
    if codec.locate_method == "window":
        return maps, float(codec.window)
    if codec.blur_cells > 0:
        maps = blur_maps(maps, codec.blur_cells)
    return maps, 1.0

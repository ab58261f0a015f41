"""Tests of tsal_dist.codec against hand computations and independent reference code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tsal_dist.codec import CentroidCodec, HeatmapCodec, decode_peaks, gaussian_radius


def _hm(**kw: object) -> HeatmapCodec:
    args = dict(input_size=128, stride=4, num_points=5, sigma_px=3.0, window=4)
    args.update(kw)
    return HeatmapCodec(**args)  # type: ignore[arg-type]


def _sbr_find_peak(heatmap: torch.Tensor, radius: int, downsample: int) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """SBR ``find_tensor_peak_batch`` (C, H, W), fixed as METHOD §1.10 says (align_corners=True,
    floor division); the independent reference for the gather implementation."""
    num_pts, h, w = heatmap.shape
    score, index = torch.max(heatmap.view(num_pts, -1), 1)
    index_w = (index % w).float()
    index_h = torch.div(index, w, rounding_mode="floor").float()

    def normalize(x: torch.Tensor, length: int) -> torch.Tensor:
        return -1.0 + 2.0 * x / (length - 1)

    boxes = [normalize(index_w - radius, w), normalize(index_h - radius, h),
             normalize(index_w + radius, w), normalize(index_h + radius, h)]
    theta = torch.zeros((num_pts, 2, 3))
    theta[:, 0, 0] = (boxes[2] - boxes[0]) / 2
    theta[:, 0, 2] = (boxes[2] + boxes[0]) / 2
    theta[:, 1, 1] = (boxes[3] - boxes[1]) / 2
    theta[:, 1, 2] = (boxes[3] + boxes[1]) / 2
    size = torch.Size([num_pts, 1, radius * 2 + 1, radius * 2 + 1])
    grid = F.affine_grid(theta, size, align_corners=True)
    sub = F.grid_sample(heatmap.unsqueeze(1), grid, align_corners=True).squeeze(1)
    sub = F.threshold(sub, 1e-6, np.finfo(float).eps)
    xs = torch.arange(-radius, radius + 1).view(1, 1, radius * 2 + 1).float()
    ys = torch.arange(-radius, radius + 1).view(1, radius * 2 + 1, 1).float()
    total = sub.view(num_pts, -1).sum(1)
    x = (sub * xs).view(num_pts, -1).sum(1) / total + index_w
    y = (sub * ys).view(num_pts, -1).sum(1) / total + index_h
    x = x * downsample + downsample / 2.0 - 0.5
    y = y * downsample + downsample / 2.0 - 0.5
    return torch.stack([x, y], 1), score


# ------------------------------------------------------------------------------- HeatmapCodec


def test_encode_values_match_hand_computation() -> None:
    codec = HeatmapCodec(input_size=32, stride=8, num_points=2, sigma_px=6.0, window=4)
    pts = torch.tensor([[[10.0, 5.0], [20.5, 27.25]]])
    maps, mask = codec.encode(pts, torch.ones(1, 2))
    assert maps.shape == (1, 3, 4, 4) and mask.tolist() == [[1.0, 1.0, 1.0]]
    for j in range(2):
        for v in range(4):
            for u in range(4):
                cx, cy = 8 * u + 3.5, 8 * v + 3.5
                d2 = (cx - pts[0, j, 0].item()) ** 2 + (cy - pts[0, j, 1].item()) ** 2
                want = math.exp(-d2 / 72.0)
                want = 0.0 if want < 0.01 else want
                assert maps[0, j, v, u].item() == pytest.approx(want, abs=1e-6)
    want_bg = (1 - torch.maximum(maps[0, 0], maps[0, 1])).clamp(min=0)
    torch.testing.assert_close(maps[0, 2], want_bg)


def test_invisible_points_give_zero_maps_and_mask() -> None:
    codec = _hm()
    pts = torch.rand(2, 5, 2) * 128
    pts[0, 3] = float("nan")  # invisible entries may hold anything
    vis = torch.ones(2, 5)
    vis[0, 3] = 0
    vis[1] = 0
    maps, mask = codec.encode(pts, vis)
    assert torch.isfinite(maps).all()
    assert maps[0, 3].abs().sum() == 0 and mask[0, 3] == 0
    assert mask[0].tolist() == [1, 1, 1, 0, 1, 1]
    assert maps[1].abs().sum() == 0 and mask[1].abs().sum() == 0  # no visible point: no target


@pytest.mark.parametrize("stride,sigma,size", [(4, 3.0, 128), (8, 6.0, 256), (4, 2.0, 64)])
def test_encode_decode_round_trip_subcell(stride: int, sigma: float, size: int) -> None:
    k = 68
    codec = HeatmapCodec(input_size=size, stride=stride, num_points=k, sigma_px=sigma, window=4)
    g = torch.Generator().manual_seed(0)
    margin = 4 * stride  # keep the Gaussian off the map border
    pts = margin + torch.rand(8, k, 2, generator=g) * (size - 2 * margin)
    maps, _ = codec.encode(pts, torch.ones(8, k))
    coords, scores = codec.decode(maps)
    assert coords.shape == (8, k, 2) and scores.shape == (8, k)
    err_cells = (coords - pts).abs().amax() / stride
    assert err_cells < 0.1, float(err_cells)
    # the best cell centre is at most stride / sqrt(2) px from the point
    assert (scores >= math.exp(-(stride ** 2) / (4 * sigma ** 2)) - 1e-6).all()
    assert (scores <= 1).all()


def test_one_hot_decodes_to_cell_centre() -> None:
    codec = _hm(input_size=64, num_points=3)  # 16 x 16 maps
    maps = torch.zeros(1, 4, 16, 16)
    cells = [(0, 0), (7, 3), (15, 15)]  # (u, v), corners included
    for j, (u, v) in enumerate(cells):
        maps[0, j, v, u] = 1.0
    coords, scores = codec.decode(maps)
    want = torch.tensor([[[4 * u + 1.5, 4 * v + 1.5] for u, v in cells]])
    torch.testing.assert_close(coords, want, atol=1e-9, rtol=0)
    assert scores.tolist() == [[1.0, 1.0, 1.0]]


def test_crop_normalised_units() -> None:
    """(px + 0.5) / S: the crop's outer edges are 0 and 1, its centre 0.5; and back."""
    from tsal_dist.codec import norm_to_px, px_to_norm

    px = torch.tensor([[-0.5, 63.5], [31.5, 0.0]])
    norm = px_to_norm(px, 64)
    torch.testing.assert_close(norm, torch.tensor([[0.0, 1.0], [0.5, 0.5 / 64]]), atol=0, rtol=0)
    torch.testing.assert_close(norm_to_px(norm, 64), px, atol=0, rtol=0)


def test_window_at_border_hand_computed() -> None:
    codec = HeatmapCodec(input_size=32, stride=8, num_points=1, sigma_px=6.0, window=1)
    maps = torch.zeros(1, 1, 4, 4)
    maps[0, 0, 0, 0] = 1.0
    maps[0, 0, 0, 1] = 0.5  # right neighbour; the upper-left window cells lie outside the map
    coords, _ = codec.decode(maps)
    # window = 9 cells: 1.0 at dx=0 and 0.5 at dx=+1; the other 7 (5 of them outside the map)
    # read as machine eps, negligible: du = 0.5 / 1.5, dv = 0
    assert coords[0, 0, 0].item() == pytest.approx((1 / 3) * 8 + 3.5, abs=1e-5)
    assert coords[0, 0, 1].item() == pytest.approx(3.5, abs=1e-5)


def test_window_excludes_far_values() -> None:
    codec = HeatmapCodec(input_size=128, stride=4, num_points=1, sigma_px=3.0, window=2)
    base = torch.zeros(1, 1, 32, 32)
    base[0, 0, 10, 10] = 1.0
    far = base.clone()
    far[0, 0, 10, 13] = 0.9  # 3 cells away: outside a radius-2 window
    near = base.clone()
    near[0, 0, 10, 12] = 0.9  # 2 cells away: inside
    c0, _ = codec.decode(base)
    c_far, _ = codec.decode(far)
    c_near, _ = codec.decode(near)
    torch.testing.assert_close(c_far, c0)
    assert c_near[0, 0, 0].item() == pytest.approx((10 + 2 * 0.9 / 1.9) * 4 + 1.5, abs=1e-5)


@pytest.mark.parametrize("radius", [1, 4, 20])
def test_decode_matches_sbr_grid_sample_reference(radius: int) -> None:
    g = torch.Generator().manual_seed(radius)
    maps = torch.rand(2, 7, 16, 16, generator=g) ** 4
    maps[0, 0, 0, 15] = 5.0  # peaks on corners / edges
    maps[1, 3, 15, 0] = 5.0
    maps[0, 2, 7, 0] = 5.0
    maps[1, 1] = 0.0  # all-zero channel: argmax 0, all-eps window
    coords, scores = decode_peaks(maps, radius, 8)
    for bi in range(2):
        want_c, want_s = _sbr_find_peak(maps[bi], radius, 8)
        torch.testing.assert_close(coords[bi], want_c, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(scores[bi], want_s)


def test_decode_is_differentiable() -> None:
    g = torch.Generator().manual_seed(1)
    maps = (0.1 + torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: decode_peaks(m, 2, 4)[0], (maps,))
    codec = _hm(input_size=32, num_points=3)
    m = torch.rand(2, 4, 8, 8, requires_grad=True)
    codec.decode(m)[0].sum().backward()
    assert m.grad is not None and m.grad[:, :3].abs().sum() > 0
    assert m.grad[:, 3].abs().sum() == 0  # the background channel is not decoded


def test_decode_rejects_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="heatmaps must be"):
        _hm().decode(torch.zeros(1, 9, 32, 32))
    with pytest.raises(ValueError, match="multiple of stride"):
        _hm(input_size=130)


class _DecodeModule(torch.nn.Module):
    def __init__(self, codec: HeatmapCodec) -> None:
        super().__init__()
        self.codec = codec

    def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.codec.decode(maps)


@pytest.mark.parametrize("dynamo,opset",
                         [(False, 17), pytest.param(True, 18, marks=pytest.mark.slow)])
def test_decode_onnx_export_matches_torch(tmp_path, dynamo: bool, opset: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    codec = _hm(input_size=64, num_points=5, window=3)
    module = _DecodeModule(codec).eval()
    g = torch.Generator().manual_seed(2)
    example = torch.rand(2, 6, 16, 16, generator=g)
    path = tmp_path / "decode.onnx"
    kwargs: dict = dict(input_names=["maps"], output_names=["coords", "scores"],
                        opset_version=opset, dynamo=dynamo)
    if dynamo:
        kwargs["dynamic_shapes"] = {"maps": {0: torch.export.Dim("batch", min=1, max=64)}}
    else:
        kwargs["dynamic_axes"] = {"maps": {0: "batch"}, "coords": {0: "batch"},
                                  "scores": {0: "batch"}}
    torch.onnx.export(module, (example,), str(path), **kwargs)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    test = torch.rand(3, 6, 16, 16, generator=g)  # another batch size
    test[0, 0, 0, 0] = 3.0  # a border peak
    got_c, got_s = sess.run(None, {"maps": test.numpy()})
    want_c, want_s = codec.decode(test)
    np.testing.assert_allclose(got_c, want_c.numpy(), atol=1e-4)
    np.testing.assert_allclose(got_s, want_s.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------ CentroidCodec


def _cc(**kw: object) -> CentroidCodec:
    args = dict(input_size=64, stride=4, num_points=4, centroid_index=1, topk=3)
    args.update(kw)
    return CentroidCodec(**args)  # type: ignore[arg-type]


def _reference_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet utils/image.py gaussian_radius, transcribed with math."""
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


@pytest.mark.parametrize("h,w", [(3.0, 3.0), (7.0, 5.0), (20.0, 16.0), (1.0, 1.0)])
def test_gaussian_radius_matches_centernet(h: float, w: float) -> None:
    got = gaussian_radius(torch.tensor(h), torch.tensor(w)).item()
    assert got == pytest.approx(_reference_radius(h, w), rel=1e-6)


def test_centroid_not_transposed_and_gaussian_shape() -> None:
    codec = _cc()
    # centroid landmark (index 1) at x=10, y=50 px -> cell (2.125, 12.125) -> integer cell (2, 12)
    pts = torch.tensor([[[4.0, 30.0], [10.0, 50.0], [30.0, 40.0], [20.0, 60.0]]])
    out = codec.encode(pts, torch.ones(1, 4), torch.tensor([True]))
    center = out["center"]
    assert center.shape == (1, 1, 16, 16)
    assert center[0, 0, 12, 2] == 1.0 and center[0, 0, 2, 12] == 0.0
    assert out["center_index"].tolist() == [12 * 16 + 2]
    assert center.flatten().argmax().item() == 12 * 16 + 2
    # radius from the landmark box in cells: ceil((60-30)/4)=8 high, ceil((30-4)/4)=7 wide
    r = min(4, math.floor(_reference_radius(8.0, 7.0)))
    sigma = (2 * r + 1) / 6
    assert center[0, 0, 12, 3].item() == pytest.approx(math.exp(-1 / (2 * sigma ** 2)), rel=1e-5)
    corner = math.exp(-2 * r * r / (2 * sigma ** 2))
    assert center[0, 0, 12 + r, 2 + r].item() == pytest.approx(corner, rel=1e-4, abs=1e-12)
    assert center[0, 0, 12, 2 + r + 1] == 0.0  # outside the (2r+1)^2 patch
    # offsets in cells from the integer cell, interleaved (dx0, dy0, dx1, dy1, ...)
    cells = (pts[0] - 1.5) / 4
    want = (cells - torch.tensor([2.0, 12.0])).reshape(-1)
    torch.testing.assert_close(out["offsets"][0], want)
    assert out["offset_mask"].tolist() == [[1.0] * 8] and out["valid"].tolist() == [True]


def test_centroid_masks_unlabeled_invisible_and_off_map() -> None:
    codec = _cc()
    pts = torch.tensor([[[4.0, 30.0], [10.0, 50.0], [70.0, 40.0], [20.0, 60.0]]] * 3)
    vis = torch.ones(3, 4)
    vis[0, 3] = 0  # frame 0: landmark 3 invisible
    vis[2, 1] = 0  # frame 2: the centroid landmark itself is invisible
    out = codec.encode(pts, vis, torch.tensor([True, False, True]))
    assert out["valid"].tolist() == [True, False, False]
    # frame 0: landmark 2 lies off the crop (x=70 >= 64), landmark 3 invisible
    assert out["offset_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert out["offsets"][0, 4:].abs().sum() == 0
    for i in (1, 2):  # no target at all (T4): no fake peak at cell (0, 0)
        assert out["center"][i].abs().sum() == 0
        assert out["offset_mask"][i].abs().sum() == 0
        assert out["center_index"][i] == 0


def test_centroid_round_trip_exact() -> None:
    k = 68
    codec = CentroidCodec(input_size=128, stride=4, num_points=k, centroid_index=30, topk=8)
    g = torch.Generator().manual_seed(3)
    pts = 16 + torch.rand(4, k, 2, generator=g) * 96
    out = codec.encode(pts, torch.ones(4, k), torch.ones(4, dtype=torch.bool))
    assert out["valid"].all()
    b, h = 4, 32
    dense = torch.zeros(b, 2 * k, h * h)
    dense[torch.arange(b), :, out["center_index"]] = out["offsets"]
    logits = torch.logit(out["center"].clamp(1e-6, 1 - 1e-6))
    cand, scores = codec.decode(logits, dense.reshape(b, 2 * k, h, h))
    assert cand.shape == (4, 8, k, 2) and scores.shape == (4, 8)
    torch.testing.assert_close(cand[:, 0], pts, atol=1e-4, rtol=0)
    assert (scores[:, 0] > 0.99).all()
    assert (scores[:, 1:] < 1e-5).all()  # NMS suppressed the rest of the single Gaussian


def test_centroid_decode_nms_and_order() -> None:
    codec = _cc(num_points=1, centroid_index=0, topk=2)
    logits = torch.full((1, 1, 16, 16), -10.0)
    logits[0, 0, 3, 4] = 2.0
    logits[0, 0, 3, 5] = 1.5  # neighbour of the best peak: suppressed
    logits[0, 0, 10, 11] = 1.0  # second, separate peak
    offsets = torch.zeros(1, 2, 16, 16)
    offsets[0, :, 10, 11] = torch.tensor([0.5, -0.25])
    cand, scores = codec.decode(logits, offsets)
    torch.testing.assert_close(scores[0], torch.sigmoid(torch.tensor([2.0, 1.0])))
    torch.testing.assert_close(cand[0, :, 0], torch.tensor([[4 * 4 + 1.5, 3 * 4 + 1.5],
                                                            [11.5 * 4 + 1.5, 9.75 * 4 + 1.5]]))


def test_centroid_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="topk"):
        _cc(topk=257)
    with pytest.raises(ValueError, match="centroid_index"):
        _cc(centroid_index=4)
    with pytest.raises(ValueError, match="offsets must be"):
        _cc().decode(torch.zeros(1, 1, 16, 16), torch.zeros(1, 6, 16, 16))


@pytest.mark.gpu
def test_codecs_on_cuda_match_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    k = 68
    hm = HeatmapCodec(input_size=128, stride=4, num_points=k, sigma_px=3.0, window=4)
    cc = CentroidCodec(input_size=128, stride=4, num_points=k, centroid_index=30, topk=8)
    g = torch.Generator().manual_seed(4)
    pts = 8 + torch.rand(4, k, 2, generator=g) * 112
    vis = (torch.rand(4, k, generator=g) > 0.1).float()
    vis[:, 30] = 1
    labeled = torch.tensor([True, True, False, True])
    maps, mask = hm.encode(pts, vis)
    maps_g, mask_g = hm.encode(pts.cuda(), vis.cuda())
    torch.testing.assert_close(maps_g.cpu(), maps)
    torch.testing.assert_close(mask_g.cpu(), mask)
    torch.testing.assert_close(hm.decode(maps_g)[0].cpu(), hm.decode(maps)[0])
    out = cc.encode(pts, vis, labeled)
    out_g = cc.encode(pts.cuda(), vis.cuda(), labeled.cuda())
    for key in out:
        torch.testing.assert_close(out_g[key].cpu(), out[key])
    logits = torch.randn(4, 1, 32, 32, generator=g)
    offsets = torch.randn(4, 2 * k, 32, 32, generator=g)
    cand, sc = cc.decode(logits, offsets)
    cand_g, sc_g = cc.decode(logits.cuda(), offsets.cuda())
    torch.testing.assert_close(cand_g.cpu(), cand)
    torch.testing.assert_close(sc_g.cpu(), sc)


# ------------------------------------------------------------------------------- DARK decode


def _gaussian_maps(centres_cells: torch.Tensor, size: int, sigma_cells: float) -> torch.Tensor:
    """(1, C, size, size) untruncated Gaussians at sub-cell centres (u, v) in cells."""
    grid = torch.arange(size, dtype=torch.float64)
    u = centres_cells[:, 0].double().view(-1, 1, 1)
    v = centres_cells[:, 1].double().view(-1, 1, 1)
    d2 = (grid.view(1, 1, -1) - u) ** 2 + (grid.view(1, -1, 1) - v) ** 2
    return torch.exp(-d2 / (2 * sigma_cells ** 2)).float()[None]


@pytest.mark.parametrize("blur", [0.0, 1.0, 2.5])
def test_dark_recovers_subcell_gaussian_centres(blur: float) -> None:
    # log of a Gaussian is an exact quadratic, so the Taylor step lands on the centre; a Gaussian
    # blur keeps the centre (away from the border), so the smoothed decode does too.
    from tsal_dist.codec import decode_dark

    g = torch.Generator().manual_seed(3)
    centres = 20 + torch.rand(6, 2, generator=g) * 24  # cells, inside a 64-cell map
    maps = _gaussian_maps(centres, 64, sigma_cells=1.5)
    coords, scores = decode_dark(maps, 4, blur)
    want = centres * 4 + 1.5  # cells -> crop px
    err_cells = ((coords[0] - want).abs() / 4).amax()
    assert err_cells < (1e-3 if blur == 0 else 0.02), float(err_cells)
    torch.testing.assert_close(scores[0], maps[0].flatten(1).amax(1))


def test_dark_beats_window_mean_on_a_skewed_peak_and_falls_back_on_flat_maps() -> None:
    from tsal_dist.codec import decode_dark

    # a Gaussian at sub-cell 0.4 plus a broad pedestal: the window mean is pulled to the window
    # centre, the log-Taylor step is not fooled by the pedestal's flat part
    centre = torch.tensor([[10.4, 12.0]])
    maps = _gaussian_maps(centre, 24, 0.9) + 0.05
    dark_xy, _ = decode_dark(maps, 4, 0.0)
    mean_xy, _ = decode_peaks(maps, 4, 4)
    want = centre * 4 + 1.5
    assert (dark_xy[0] - want).abs().amax() < (mean_xy[0] - want).abs().amax()
    # a flat (or all-zero) channel has no negative-definite Hessian: cell centre of the argmax
    flat = torch.zeros(1, 1, 8, 8)
    xy, s = decode_dark(flat, 4, 1.0)
    assert xy.tolist() == [[[1.5, 1.5]]] and s.tolist() == [[0.0]]


def test_codec_locate_dispatches_and_validates() -> None:
    from tsal_dist.codec import decode_dark

    maps = _gaussian_maps(torch.tensor([[5.3, 6.7], [9.1, 2.2]]), 16, 1.0)
    window = _hm(input_size=64, num_points=2)
    dark = _hm(input_size=64, num_points=2, locate="dark", blur_cells=1.5)
    torch.testing.assert_close(window.locate(maps)[0], window.decode(maps)[0])
    torch.testing.assert_close(dark.locate(maps)[0], decode_dark(maps, 4, 1.5)[0])
    with_bg = torch.cat([maps, torch.zeros(1, 1, 16, 16)], dim=1)  # background channel ignored
    torch.testing.assert_close(dark.locate(with_bg)[0], dark.locate(maps)[0])
    with pytest.raises(ValueError, match="locate must be one of"):
        _hm(locate="argmax")
    with pytest.raises(ValueError, match="blur_cells"):
        _hm(locate="dark", blur_cells=-1.0)
    with pytest.raises(ValueError, match="heatmaps must be"):
        dark.locate(torch.zeros(1, 5, 16, 16))


def test_dark_blur_operator_equals_edge_padded_convolution():
    from tsal_dist.codec.decode import _blur_operator, _gaussian_kernel1d

    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 5, 24, 20, generator=g)
    k = _gaussian_kernel1d(2.5)
    r = (k.numel() - 1) // 2
    f = x.reshape(10, 1, 24, 20)
    f = F.conv2d(F.pad(f, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    f = F.conv2d(F.pad(f, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    got = _blur_operator(24, 2.5) @ x @ _blur_operator(20, 2.5).t()
    torch.testing.assert_close(got, f.reshape(2, 5, 24, 20), atol=1e-6, rtol=0)
    assert torch.allclose(_blur_operator(24, 2.5).sum(dim=1), torch.ones(24))  # keeps mass


def test_dark_decode_traces_to_a_small_graph():
    """The exported torch program (``model.pt2``, the runtime's torch engine) and a TorchScript
    ONNX export trace the decode op by op: building the blur operator element by element put
    thousands of element writes into every traced decode (40 ms a face in the torch engine; 15x the
    latency in ONNX Runtime). About a hundred nodes is what the maths needs."""
    from tsal_dist.codec.decode import decode_dark

    class Decode(torch.nn.Module):
        def forward(self, maps):
            return decode_dark(maps, 4, 2.5)

    maps = torch.rand(2, 68, 24, 24)
    ep = torch.export.export(Decode(), (maps,))
    calls = [n for n in ep.graph.nodes if n.op == "call_function"]
    assert len(calls) < 200, len(calls)  # 3810 when the operator was built element by element
    torch.testing.assert_close(ep.module()(maps), decode_dark(maps, 4, 2.5))


@pytest.mark.parametrize("decoder", ["window", "dark", "dark-blur"])
def test_fp16_maps_decode_as_their_float32_values(decoder: str) -> None:
    """A network run under fp16 autocast (the torch engine on CUDA) hands the decode fp16 maps:
    the decode is the float32 decode of the same values, never fp16 arithmetic (whose 0 epsilon
    made the window mean 0 / 0 = NaN on an empty channel, and whose 1e-10 log floor is 0)."""
    from tsal_dist.codec import decode_dark

    yy, xx = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    maps = torch.zeros(2, 4, 24, 24)
    for i, (cx, cy, s) in enumerate([(5.3, 7.6, 0.6), (12.0, 12.4, 1.5), (20.7, 3.2, 0.15)]):
        maps[:, i] = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s ** 2))
    # channel 3 stays all zero: a point with no peak at all
    half = maps.half()
    run = {"window": lambda m: decode_peaks(m, 4, 4), "dark": lambda m: decode_dark(m, 4, 0.0),
           "dark-blur": lambda m: decode_dark(m, 4, 2.5)}[decoder]
    xy16, s16 = run(half)
    xy32, s32 = run(half.float())
    assert xy16.dtype == torch.float32 and torch.isfinite(xy16).all()
    torch.testing.assert_close(xy16, xy32, rtol=0, atol=0)
    torch.testing.assert_close(s16, s32, rtol=0, atol=0)

"""Image and video-frame reading: RGB order, decord/cv2 agreement, errors naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from tsal_dist.data.formats import AnnotationError
from tsal_dist.data.images import VideoCache, read_image


def _video(path: Path, n: int = 6) -> list[np.ndarray]:
    """MJPG .avi whose frame t is flat grey 20 * t + 30, with a blue (BGR) left half."""
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    frames = []
    for t in range(n):
        f = np.full((48, 64, 3), 20 * t + 30, np.uint8)
        f[:, :32] = (200, 0, 0)
        vw.write(f)
        frames.append(f)
    vw.release()
    return frames


def test_read_image_is_rgb_and_errors_name_the_file(tmp_path):
    bgr = np.zeros((10, 12, 3), np.uint8)
    bgr[..., 0] = 255  # blue in BGR
    cv2.imwrite(str(tmp_path / "b.png"), bgr)
    rgb = read_image(tmp_path / "b.png")
    assert rgb.shape == (10, 12, 3) and rgb.dtype == np.uint8
    assert (rgb[..., 2] == 255).all() and (rgb[..., 0] == 0).all()
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert read_image(tmp_path / "g.png").shape == (5, 6, 3)
    with pytest.raises(AnnotationError, match="nope.png: image file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(AnnotationError, match="bad.jpg: cannot decode"):
        read_image(tmp_path / "bad.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(AnnotationError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize("backend", ["auto", "cv2"])
def test_video_frames_random_and_sequential(tmp_path, backend):
    truth = _video(tmp_path / "v.avi")
    vc = VideoCache(max_open=2, backend=backend)
    assert vc.num_frames(str(tmp_path / "v.avi")) == 6
    frames = vc.read_frames(str(tmp_path / "v.avi"), [4, 1, 2, 3])
    for f, t in zip(frames, [4, 1, 2, 3]):
        assert f.shape == (48, 64, 3)
        rgb = truth[t][..., ::-1].astype(int)
        assert np.abs(f.astype(int) - rgb).mean() < 4  # MJPG is lossy
    one = vc.read_frames(str(tmp_path / "v.avi"), [5])[0]
    assert abs(int(one[40, 50, 1]) - 130) < 6 and one[5, 5, 2] > 150  # right grey, left blue
    with pytest.raises(AnnotationError, match="outside the video"):
        vc.read_frames(str(tmp_path / "v.avi"), [6])
    with pytest.raises(AnnotationError, match="gone.avi: video file not found"):
        vc.read_frames(str(tmp_path / "gone.avi"), [0])


def test_decord_and_cv2_agree(tmp_path):
    _video(tmp_path / "v.avi")
    a = VideoCache(backend="auto").read_frames(str(tmp_path / "v.avi"), [0, 3, 5])
    b = VideoCache(backend="cv2").read_frames(str(tmp_path / "v.avi"), [0, 3, 5])
    for x, y in zip(a, b):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 2


def test_cache_evicts_and_pickles(tmp_path):
    paths = []
    for i in range(3):
        _video(tmp_path / f"v{i}.avi", 2)
        paths.append(str(tmp_path / f"v{i}.avi"))
    vc = VideoCache(max_open=2)
    for p in paths:
        vc.read_frames(p, [1])
    assert list(vc._readers) == paths[1:]
    clone = pickle.loads(pickle.dumps(vc))
    assert clone.max_open == 2 and not clone._readers
    assert clone.read_frames(paths[0], [0])[0].shape == (48, 64, 3)
    vc.close()
    assert not vc._readers
    with pytest.raises(ValueError, match="backend"):
        VideoCache(backend="ffmpeg")


def test_corrupt_video(tmp_path):
    (tmp_path / "bad.avi").write_bytes(b"not a video at all" * 10)
    with pytest.raises(AnnotationError, match="bad.avi"):
        VideoCache().read_frames(str(tmp_path / "bad.avi"), [0])


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_images_are_reported_not_grey_filled(tmp_path, ext):
    """libjpeg/libpng decode a cut-short file and fill the rest with grey (only a warning that
    names no file): such a file must be a reported problem naming it, in training and prepare."""
    import cv2

    from tsal_dist.data.formats import AnnotationError
    from tsal_dist.data.images import read_image, truncation
    from tsal_dist.data.layouts import check_image

    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    full = tmp_path / f"full{ext}"
    cv2.imwrite(str(full), img)
    data = full.read_bytes()
    assert truncation(data) is None and read_image(full).shape == (64, 64, 3)
    (tmp_path / f"padded{ext}").write_bytes(data + b"\x00" * 16)  # padding is not truncation
    assert truncation((tmp_path / f"padded{ext}").read_bytes()) is None
    cut = tmp_path / f"cut{ext}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    if ext == ".jpg":
        assert cv2.imread(str(cut)) is not None  # libjpeg alone would accept it, grey-filled
    for reader in (read_image, check_image):
        with pytest.raises(AnnotationError, match=rf"cut{ext}: truncated"):
            reader(cut)

from pathlib import Path

import cv2
import numpy as np
import pytest

from tsal_runtime.errors import SourceError
from tsal_runtime.sources import CameraSource, ImageFolderSource, VideoSource


def write_video(path: Path, n: int = 5, size: tuple[int, int] = (64, 48)) -> list[np.ndarray]:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25, size)
    frames = []
    for i in range(n):
        f = np.full((size[1], size[0], 3), 40 * i, np.uint8)
        w.write(f)
        frames.append(f)
    w.release()
    return frames


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_video_reads_all_frames(tmp_path: Path, backend: str) -> None:
    write_video(tmp_path / "v.mp4")
    src = VideoSource(tmp_path / "v.mp4", backend=backend)
    frames = list(src)
    src.close()
    assert [f.index for f in frames] == list(range(5))
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert abs(int(frames[3].image.mean()) - 120) <= 3  # grey level of frame 3
    assert frames[1].time_s == pytest.approx(1 / 25, rel=1e-3)


def test_video_bad_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        VideoSource(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        VideoSource(tmp_path / "empty.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match="cannot read video") as e:
        VideoSource(tmp_path / "bad.mp4")
    assert "bad.mp4" in str(e.value) and "\n" not in str(e.value)


def test_image_folder(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        ImageFolderSource(tmp_path / "none")
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(tmp_path)
    cv2.imwrite(str(tmp_path / "b.png"), np.full((10, 12, 3), (255, 0, 0), np.uint8))  # BGR blue
    (tmp_path / "a.jpg").write_bytes(b"broken")
    src = ImageFolderSource(tmp_path)
    frames = list(src)
    assert len(frames) == 1 and frames[0].image[0, 0].tolist() == [0, 0, 255]  # RGB blue
    assert src.skipped == [tmp_path / "a.jpg"] and src.frame_name(0) == "b.png"


def test_no_camera() -> None:
    with pytest.raises(SourceError, match="camera 97: cannot open"):
        CameraSource(97)


class FakeCapture:
    """Delivers ``good`` frames, then fails forever (a camera unplugged mid-stream)."""

    def __init__(self, good: int) -> None:
        self.good, self.released = good, False

    def isOpened(self) -> bool:  # noqa: N802 - cv2 API
        return True

    def get(self, prop: int) -> float:
        return 30.0

    def set(self, prop: int, value: float) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.good > 0:
            self.good -= 1
            return True, np.zeros((8, 8, 3), np.uint8)
        return False, None

    def release(self) -> None:
        self.released = True


def test_camera_disconnect_after_frames() -> None:
    cap = FakeCapture(3)
    src = CameraSource(0, max_failures=2, capture=cap)  # type: ignore[arg-type]
    got = []
    with pytest.raises(SourceError, match="stopped delivering frames after 3 frame"):
        for f in src:
            got.append(f.index)
    src.close()
    assert got == [0, 1, 2] and cap.released

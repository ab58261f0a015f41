"""CLI end to end with the constant model, and every bad-input case of issue 4 section 4."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from runtime_fixtures import ROOT, model_json, write_const_onnx
from test_sources import FakeCapture, write_video

from tsal_runtime import cli, sources

BOX = [20.0, 12.0, 44.0, 36.0]


@pytest.fixture
def video(tmp_path: Path) -> Path:
    p = tmp_path / "in.mp4"
    write_video(p, n=6, size=(64, 48))
    return p


@pytest.fixture
def boxes(tmp_path: Path) -> Path:
    p = tmp_path / "boxes.jsonl"
    p.write_text("".join(json.dumps({"frame": i, "boxes": [BOX]}) + "\n" for i in range(6)))
    return p


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    rc = cli.main(list(args))
    return rc, capsys.readouterr().err


def test_video_headless_all_outputs(tmp_path: Path, const_model: Path, video: Path, boxes: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    out, js, cs = tmp_path / "out.mp4", tmp_path / "o.jsonl", tmp_path / "o.csv"
    rc, err = run_cli(capsys, "--model", str(const_model), "--video", str(video), "--headless",
                      "--detector", f"boxes:{boxes}", "--min-score", "0", "--output", str(out),
                      "--json", str(js), "--csv", str(cs))
    assert rc == 0, err
    recs = [json.loads(line) for line in js.read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(6))
    assert all(len(r["faces"]) == 1 for r in recs)
    assert set(recs[0]["timings_ms"]) == {"decode", "detect", "landmark", "smooth", "draw"}
    lm = np.array(recs[3]["faces"][0]["landmarks"])
    assert lm.shape == (5, 2) and np.allclose(lm.min(0), BOX[:2], atol=0.02)
    rows = list(csv.reader(cs.open()))
    assert rows[0][:6] == ["frame", "time_s", "face_id", "score", "x0", "y0"] and len(rows) == 7
    cap = cv2.VideoCapture(str(out))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert n == 6


def test_images_folder(tmp_path: Path, const_model: Path, boxes: Path,
                       capsys: pytest.CaptureFixture) -> None:
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        cv2.imwrite(str(d / f"{i}.png"), np.full((48, 64, 3), 100, np.uint8))
    js = tmp_path / "o.jsonl"
    rc, err = run_cli(capsys, "--model", str(const_model), "--images", str(d), "--headless",
                      "--detector", f"boxes:{boxes}", "--json", str(js))
    assert rc == 0, err
    recs = [json.loads(line) for line in js.read_text().splitlines()]
    assert [r["source"] for r in recs] == ["0.png", "1.png"] and all(r["detected"] for r in recs)


def one_line_error(rc: int, err: str, match: str) -> None:
    assert rc == 1
    lines = [x for x in err.splitlines() if x.startswith("tsal-runtime: error:")]
    assert len(lines) == 1 and match in lines[0], err


def test_no_camera(const_model: Path, capsys: pytest.CaptureFixture) -> None:
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--camera", "97", "--headless",
                            "--detector", "boxes:/dev/null"), "camera 97: cannot open")


def test_camera_disconnects_mid_stream(tmp_path: Path, const_model: Path, boxes: Path,
                                       monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: FakeCapture(4))
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    js, cs = tmp_path / "o.jsonl", tmp_path / "o.csv"
    rc, err = run_cli(capsys, "--model", str(const_model), "--camera", "0", "--headless",
                      "--detector", f"boxes:{boxes}", "--json", str(js), "--csv", str(cs),
                      "--output", str(tmp_path / "o.mp4"))
    one_line_error(rc, err, "stopped delivering frames after 4 frame(s)")
    recs = [json.loads(line) for line in js.read_text().splitlines()]  # complete, parseable
    assert [r["frame"] for r in recs] == [0, 1, 2, 3]
    assert len(list(csv.reader(cs.open()))) >= 1
    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert cap.isOpened() and cap.read()[0]  # the writer was released: the file is playable
    cap.release()


@pytest.mark.parametrize("content, match", [
    (None, "video file not found"),
    (b"", "video file is empty"),
    (b"\x00\x01garbage" * 64, "cannot read video"),
])
def test_bad_video(tmp_path: Path, const_model: Path, capsys: pytest.CaptureFixture,
                   content: bytes | None, match: str) -> None:
    p = tmp_path / "v.mp4"
    if content is not None:
        p.write_bytes(content)
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--video", str(p), "--headless",
                            "--detector", "boxes:/dev/null"), match)


def test_bad_model(tmp_path: Path, const_model: Path, video: Path,
                   capsys: pytest.CaptureFixture) -> None:
    (const_model / "model.json").write_text(json.dumps(model_json(schema_version=7)))
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--video", str(video),
                            "--headless"), "schema_version 7 is not supported")
    (const_model / "model.json").write_text(json.dumps(model_json()))
    write_const_onnx(const_model / "model.onnx", size=48)
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--video", str(video),
                            "--headless"), "model.json says uint8[B, 32, 32, 3]")


def test_frames_without_faces(tmp_path: Path, const_model: Path, video: Path,
                              capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "none.jsonl"
    empty.write_text("")
    js = tmp_path / "o.jsonl"
    rc, err = run_cli(capsys, "--model", str(const_model), "--video", str(video), "--headless",
                      "--detector", f"boxes:{empty}", "--json", str(js))
    assert rc == 0, err
    recs = [json.loads(line) for line in js.read_text().splitlines()]
    assert len(recs) == 6 and all(r["faces"] == [] and r["detected"] for r in recs)


def test_missing_output_folder(tmp_path: Path, const_model: Path, video: Path, boxes: Path,
                               capsys: pytest.CaptureFixture) -> None:
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--video", str(video),
                            "--headless", "--detector", f"boxes:{boxes}", "--json",
                            str(tmp_path / "no" / "o.jsonl")), "does not exist")


def test_window_without_display(const_model: Path, video: Path, boxes: Path,
                                monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    rc, err = run_cli(capsys, "--model", str(const_model), "--video", str(video),
                      "--detector", f"boxes:{boxes}")
    if rc == 0:  # an OpenCV with a GUI backend could open a window: nothing to check
        return
    one_line_error(rc, err, "use --headless")


def test_module_entry_point(tmp_path: Path, const_model: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    r = subprocess.run([sys.executable, "-m", "tsal_runtime", "--model", str(const_model),
                        "--video", str(tmp_path / "missing.mp4"), "--headless",
                        "--detector", "boxes:/dev/null"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1 and r.stderr.strip().endswith("video file not found")
    assert r.stderr.count("error:") == 1


def _subprocess_cli(*args: str, code: str | None = None, **kw) -> subprocess.Popen:
    """The CLI in a child process (``code``: Python run instead of ``-m tsal_runtime``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "runtime")}
    cmd = ["-c", code] if code is not None else ["-m", "tsal_runtime"]
    return subprocess.Popen([sys.executable, *cmd, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _only_our_lines(err: str) -> None:
    """Every stderr line is ours: no OpenCV '[ WARN:...]', FFmpeg '[mjpeg @ ...]' or decord
    line printed by native code before the one-line error."""
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and all(x.startswith("tsal-runtime: ") for x in lines), err


def test_library_noise_never_reaches_the_user(tmp_path: Path, const_model: Path) -> None:
    src = tmp_path / "in.avi"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 25, (96, 96))
    rng = np.random.default_rng(0)
    for _ in range(12):
        w.write(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    w.release()
    data = src.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 2 // 3])  # header says 12 frames; 8 or so remain
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(data[:3000])
    common = ["--model", str(const_model), "--headless", "--detector", "boxes:/dev/null"]
    p = _subprocess_cli(*common, "--camera", "97")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "camera 97: cannot open" in err
    _only_our_lines(err)
    p = _subprocess_cli(*common, "--video", str(garbage))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "cannot read video" in err
    _only_our_lines(err)
    p = _subprocess_cli(*common, "--video", str(cut), "--json", str(tmp_path / "o.jsonl"))
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    _only_our_lines(err)
    n = len((tmp_path / "o.jsonl").read_text().splitlines())
    assert 0 < n < 12 and f"ended after {n} of its 12 frames" in err  # the user is told


def test_sigterm_finalises_the_mp4(tmp_path: Path, const_model: Path) -> None:
    """SIGTERM (what `timeout`, systemd and `docker stop` send) ends the run like Ctrl-C: the
    annotated mp4 is finalised and plays (it used to be 44 bytes, 'moov atom not found').

    The source is an endless camera (cv2.VideoCapture replaced in the child by one that never
    runs out), so only the signal can end the run however fast the machine is (a 3000-frame file
    used to end on its own before the signal on a fast machine)."""
    import signal
    import time

    out, js = tmp_path / "out.mp4", tmp_path / "o.jsonl"
    child = (
        "import sys, time, numpy as np, cv2\n"
        "class EndlessCamera:\n"
        "    def __init__(self, index): self.i = 0\n"
        "    def isOpened(self): return True\n"
        "    def get(self, prop): return 30.0\n"
        "    def set(self, prop, value): return True\n"
        "    def read(self):\n"
        "        time.sleep(0.002); self.i += 1\n"
        "        return True, np.full((48, 64, 3), self.i % 200, np.uint8)\n"
        "    def release(self): pass\n"
        "cv2.VideoCapture = EndlessCamera\n"
        "from tsal_runtime.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n")
    p = _subprocess_cli("--model", str(const_model), "--camera", "0", "--headless",
                        "--detector", "boxes:/dev/null", "--output", str(out), "--json", str(js),
                        code=child)
    deadline = time.time() + 180  # a loaded machine starts the CLI slowly
    while time.time() < deadline and (not js.exists() or len(js.read_text()) < 2000):
        assert p.poll() is None, p.communicate()[1]
        time.sleep(0.05)
    assert js.exists() and len(js.read_text()) >= 2000, "the CLI wrote no frames in 180 s"
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "terminated (outputs finalised)" in err
    written = len(js.read_text().splitlines())
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    cap.release()
    # a camera's video is paced to real time (frames repeated or dropped): not one per line
    assert frames > 0 and written > 0, (frames, written)


def test_a_camera_video_plays_in_real_time(tmp_path: Path) -> None:
    """An mp4 has one frame rate: a camera loop slower or faster than the camera's nominal rate
    made a video that played too fast or too slow. Frames at 0, 0.1, 0.15 and 0.16 s at 30 FPS
    are written 1, 3, 1 and 0 times: output frame n (at n/30 s) shows the first frame at or
    after that time."""
    from tsal_runtime.outputs import VideoSink

    out = tmp_path / "cam.mp4"
    sink = VideoSink(out, 30.0, paced=True)
    for i, t in enumerate((0.0, 0.1, 0.15, 0.16)):
        sink.write(np.full((48, 64, 3), 40 * (i + 1), np.uint8), t)
    sink.close()
    cap = cv2.VideoCapture(str(out))
    levels = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        levels.append(int(round(float(img.mean()) / 40)))
    cap.release()
    assert levels == [1, 2, 2, 2, 3], levels
    files = VideoSink(tmp_path / "file.mp4", 30.0)  # a file's frames: each written once
    for t in (0.0, 0.5, 0.51):
        files.write(np.zeros((48, 64, 3), np.uint8), t)
    assert files.frames == 3
    files.close()


def test_detection_mode_defaults_and_async_video(tmp_path: Path, const_model: Path, video: Path,
                                                 boxes: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Cameras detect asynchronously by default, files synchronously; ``--detection async`` on a
    file gives every frame (with faces once the first detection is merged: when that happens
    depends on the machine's load, so it is checked with a fixed lag in test_async_detect.py)."""
    import logging

    caplog.set_level(logging.INFO, logger="tsal_runtime")
    monkeypatch.setattr(sources.cv2, "VideoCapture", lambda index: FakeCapture(3))
    monkeypatch.setattr(sources.time, "sleep", lambda s: None)
    common = ["--model", str(const_model), "--headless", "--detector", f"boxes:{boxes}"]
    run_cli(capsys, *common, "--camera", "0")
    assert "detection async" in caplog.text
    caplog.clear()
    js = tmp_path / "a.jsonl"
    rc, err = run_cli(capsys, *common, "--video", str(video), "--detection", "async",
                      "--min-score", "0", "--json", str(js))
    assert rc == 0 and "detection async" in caplog.text, err
    recs = [json.loads(line) for line in js.read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(6))
    caplog.clear()
    rc, err = run_cli(capsys, *common, "--video", str(video), "--json", str(js))
    assert rc == 0 and "detection sync" in caplog.text, err


def test_negative_camera_index_is_a_command_line_error(const_model: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    """OpenCV's VideoCapture(-1) crashes the process (SIGSEGV) where there is no camera."""
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(const_model), "--camera", "-1", "--headless"])
    assert e.value.code == 2 and "a camera index is >= 0, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, match", [
    ("--refine", "-1", "--refine must be >= 0, got -1"),
    ("--min-cutoff", "0", "--min-cutoff must be > 0 (Hz), got 0.0"),
    ("--beta", "nan", "--beta must be >= 0, got nan"),
    ("--shape-cutoff", "inf", "--shape-cutoff must be > 0 (Hz), got inf"),
    ("--max-frames", "-1", "--max-frames must be >= 0 (0 = all), got -1"),
])
def test_bad_numbers_are_one_line_before_any_work(tmp_path: Path, const_model: Path, video: Path,
                                                  boxes: Path, capsys: pytest.CaptureFixture,
                                                  flag: str, value: str, match: str) -> None:
    js = tmp_path / "o.jsonl"
    js.write_text("kept\n")
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--video", str(video),
                            "--headless", "--detector", f"boxes:{boxes}", "--json", str(js),
                            flag, value), match)
    assert js.read_text() == "kept\n"  # refused before any output was opened


def test_outputs_never_overwrite_an_input_or_each_other(tmp_path: Path, const_model: Path,
                                                        video: Path, boxes: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    video_bytes, keep = video.read_bytes(), tmp_path / "keep.jsonl"
    keep.write_text("an earlier run\n")
    common = ["--model", str(const_model), "--video", str(video), "--headless",
              "--detector", f"boxes:{boxes}"]
    for extra, match in [
            (["--json", str(video)], "--json would overwrite an input of this run"),
            (["--output", str(video)], "--output would overwrite an input of this run"),
            (["--csv", str(boxes)], "--csv would overwrite an input of this run"),
            (["--json", str(const_model / "model.json")], "would overwrite an input"),
            (["--json", str(keep), "--csv", str(keep)], "given to both --json and --csv"),
            (["--output", str(tmp_path)], "--output names a folder, not a file"),
            (["--json", str(keep), "--output", str(tmp_path / "no" / "o.mp4")], "does not exist"),
            (["--json", str(keep), "--output", str(tmp_path / "o.xyz")], "cannot write an mp4v"),
    ]:
        one_line_error(*run_cli(capsys, *common, *extra), match)
        assert video.read_bytes() == video_bytes and keep.read_text() == "an earlier run\n"
        assert (const_model / "model.json").stat().st_size > 0
    assert not list(tmp_path.glob(".*partial*"))


def test_the_video_takes_its_name_only_when_finalised(tmp_path: Path, const_model: Path,
                                                      video: Path, boxes: Path,
                                                      capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An mp4 is unreadable until finalised: it is written under a hidden partial name, so an
    earlier video of the same name stays whole until the new one replaces it."""
    from tsal_runtime import outputs

    out = tmp_path / "out.mp4"
    out.write_bytes(b"an earlier video")
    seen: list[tuple[bool, bytes]] = []
    real_write = outputs.VideoSink.write

    def spy(self: outputs.VideoSink, bgr: np.ndarray, time_s: float | None = None) -> None:
        real_write(self, bgr, time_s)
        seen.append((self.partial.exists(), out.read_bytes()))

    monkeypatch.setattr(outputs.VideoSink, "write", spy)
    rc, err = run_cli(capsys, "--model", str(const_model), "--video", str(video), "--headless",
                      "--detector", f"boxes:{boxes}", "--output", str(out))
    assert rc == 0, err
    assert len(seen) == 6 and all(p and b == b"an earlier video" for p, b in seen)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    cap.release()
    assert not list(tmp_path.glob(".*partial*"))


def test_images_are_always_detected_synchronously(tmp_path: Path, const_model: Path,
                                                  boxes: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Asynchronous detection merged a result on a later frame; every image is reset, so no
    image ever got its faces (zero faces, exit 0)."""
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(2):
        cv2.imwrite(str(d / f"{i}.png"), np.full((48, 64, 3), 100, np.uint8))
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(const_model), "--images", str(d), "--headless",
                  "--detector", f"boxes:{boxes}", "--detection", "async"])
    assert e.value.code == 2 and "does not apply to --images" in capsys.readouterr().err


def test_a_folder_given_as_video_is_named_as_such(tmp_path: Path, const_model: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    one_line_error(*run_cli(capsys, "--model", str(const_model), "--video", str(tmp_path),
                            "--headless", "--detector", "boxes:/dev/null"),
                   "--video names a folder (use --images")


def test_every_flag_is_in_the_runtime_docs() -> None:
    doc = (ROOT / "docs" / "runtime.md").read_text()
    flags = [o for a in cli.build_parser()._actions for o in a.option_strings  # noqa: SLF001
             if o.startswith("--") and o != "--help"]
    assert len(flags) >= 25
    missing = [f for f in flags if f"`{f}" not in doc and f"{f}`" not in doc]
    assert not missing, f"docs/runtime.md does not describe {missing}"

"""Tests for the ``python -m tsal_dist.prepare`` entry point."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from tsal_dist.config import SyntheticConfig
from tsal_dist.prepare import build_parser, main

REPO = Path(__file__).resolve().parents[2]


def _wflw(root: Path, bad_image: bool) -> None:
    """A WFLW download with one train face and one test face (optionally a corrupt image)."""
    ann = root / "WFLW_annotations" / "list_98pt_rect_attr_train_test"
    ann.mkdir(parents=True)
    (root / "WFLW_images" / "0--Parade").mkdir(parents=True)
    cv2.imwrite(str(root / "WFLW_images" / "0--Parade" / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    bad = root / "WFLW_images" / "0--Parade" / "b.jpg"
    if bad_image:
        bad.write_bytes(b"corrupt bytes")
    else:
        cv2.imwrite(str(bad), np.zeros((20, 20, 3), np.uint8))
    coords = " ".join(f"{j % 17}" for j in range(196))
    (ann / "list_98pt_rect_attr_train.txt").write_text(f"{coords} 1 2 30 40 0 0 0 0 0 0 "
                                                        "0--Parade/a.jpg\n")
    (ann / "list_98pt_rect_attr_test.txt").write_text(f"{coords} 1 2 30 40 1 0 0 0 0 0 "
                                                       "0--Parade/b.jpg\n")


def test_cli_wflw_writes_lists_and_prints_summary(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _wflw(tmp_path / "W", bad_image=False)
    rc = main(["wflw", "--root", str(tmp_path / "W"), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rc == 0
    assert (tmp_path / "out" / "wflw.train").read_text().split()[0] == \
        "../W/WFLW_images/0--Parade/a.jpg"
    assert "wrote 3 list file(s):" in out
    assert "wflw.test.pose  1 lines" in out and "skipped nothing" in out


def test_cli_bad_input_skipped_by_default(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _wflw(tmp_path / "W", bad_image=True)
    rc = main(["wflw", "--root", str(tmp_path / "W"), "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 0
    assert "b.jpg: cannot decode image" in cap.err
    assert "skipped 1 input(s):\n  unreadable image: 1" in cap.out
    assert not (tmp_path / "out" / "wflw.test").exists()


def test_cli_root_with_no_usable_face_is_an_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The annotations found but not one image (the images unpacked elsewhere): every face is a
    reported skip, no list is written, and the command fails instead of reporting success."""
    import shutil

    _wflw(tmp_path / "W", bad_image=False)
    shutil.rmtree(tmp_path / "W" / "WFLW_images")
    rc = main(["wflw", "--root", str(tmp_path / "W"), "--out", str(tmp_path / "out")])
    cap = capsys.readouterr()
    assert rc == 2
    assert "0--Parade/a.jpg: image not found" in cap.err
    assert "missing image: 2" in cap.out
    err = [ln for ln in cap.err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "no list written, not one usable face found" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("wflw.*"))


def test_cli_strict_is_fatal_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    _wflw(tmp_path / "W", bad_image=True)
    proc = subprocess.run(
        [sys.executable, "-m", "tsal_dist.prepare", "wflw", "--root", str(tmp_path / "W"),
         "--out", str(tmp_path / "out"), "--strict"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "b.jpg: cannot decode image" in err[0] and "--strict" in err[0]


def test_cli_missing_root_and_unusable_root(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["300w", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope: dataset root is not a folder" in capsys.readouterr().err
    assert main(["300vw", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no 300VW video folders found" in capsys.readouterr().err


def test_cli_aflw_without_mat(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["aflw", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "AFLWinfo_release.mat" in err and ("not found" in err or "scipy" in err)


def test_cli_requires_root_and_out(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["300w", "--out", "x"])
    assert e.value.code == 2
    assert "--root" in capsys.readouterr().err


def test_synthetic_defaults_come_from_the_config_schema() -> None:
    args = build_parser().parse_args(["synthetic", "--out", "x"])
    d = SyntheticConfig()
    assert (args.images, args.test_images, args.videos, args.test_videos, args.frames,
            args.seed) == (d.images, d.test_images, d.videos, d.test_videos, d.frames, d.seed)


def test_synthetic_calls_generate_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[Path, dict[str, int]]] = []

    def fake_generate(out: Path, **kw: int) -> Path:
        calls.append((Path(out), kw))
        (Path(out) / "lists").mkdir(parents=True)
        (Path(out) / "lists" / "synthetic.train.lst").write_text("")
        return Path(out)

    fake = types.ModuleType("tsal_dist.data.synthetic")
    fake.generate_dataset = fake_generate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tsal_dist.data.synthetic", fake)
    rc = main(["synthetic", "--out", str(tmp_path / "s"), "--images", "3", "--test-images", "2",
               "--videos", "1", "--test-videos", "0", "--frames", "5", "--seed", "7"])
    assert rc == 0
    assert calls == [(tmp_path / "s", dict(images=3, test_images=2, videos=1, test_videos=0,
                                           frames=5, seed=7))]
    out = capsys.readouterr().out
    assert "synthetic dataset written to" in out and "synthetic.train.lst" in out


def test_synthetic_bad_size_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def fake_generate(out: Path, **kw: int) -> Path:
        raise ValueError("generate_dataset: frames=1 must be >= 2")

    fake = types.ModuleType("tsal_dist.data.synthetic")
    fake.generate_dataset = fake_generate  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tsal_dist.data.synthetic", fake)
    assert main(["synthetic", "--out", str(tmp_path), "--frames", "1"]) == 2
    assert "error: generate_dataset: frames=1 must be >= 2" in capsys.readouterr().err


def test_synthetic_refuses_a_user_folder_in_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``prepare synthetic --out`` a folder of the user's (not empty, not an earlier synthetic
    output): one error line naming it, exit 2, and the folder untouched (a rerun replaces the
    whole --out, so it must never be someone's folder)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    rc = main(["synthetic", "--out", str(mine), "--images", "1", "--test-images", "1",
               "--videos", "0", "--test-videos", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {mine.resolve()}: not empty and not an earlier synthetic output")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]

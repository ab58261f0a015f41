"""Bad input a user can cause, against the real CLI: each ends in ONE line naming the file or key,
exit code 2, no traceback, and nothing written before is lost."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tsal_dist.config import load_config
from tsal_dist.data.formats import read_list
from tsal_dist.data.lists import resolve_data

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def _train(*args: str, cwd: Path = REPO, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsal_dist.train", "--config", SMOKE, *args],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _assert_one_line(proc: subprocess.CompletedProcess, *needles: str,
                     worker_logs: bool = False) -> str:
    """``worker_logs``: Ray streams its workers' own output (their traceback included) to the
    driver's stderr before our line; only the driver's last word is ours then."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    if not worker_logs:
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == errors[0]  # the last thing the user sees
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A data root with a good list, a list with a malformed line, and one whose first image is a
    corrupt JPEG (annotation and box fine)."""
    cfg = load_config(SMOKE)
    good = read_list(resolve_data(cfg).labeled[0])
    root = tmp_path_factory.mktemp("data")
    lines = [f"{e.image} {e.annotation} {' '.join(str(v) for v in e.box)}" for e in good]
    (root / "good.lst").write_text("\n".join(lines) + "\n")
    (root / "malformed.lst").write_text("\n".join(lines[:3] + ["only_an_image.jpg"]) + "\n")
    bad_jpg = root / "corrupt.jpg"
    bad_jpg.write_bytes(Path(good[0].image).read_bytes()[:200])  # truncated: undecodable
    first = good[0]
    (root / "corrupt.lst").write_text("\n".join(
        [f"{bad_jpg} {first.annotation} {' '.join(str(v) for v in first.box)}"] + lines[1:])
        + "\n")
    return root


CASES = {
    "malformed list line": (["--set", "data.labeled_lists=[malformed.lst]"], ["malformed.lst:4"]),
    "missing list": (["--set", "data.labeled_lists=[nope.lst]"], ["nope.lst", "not found"]),
    "data root without lists": ([], ["data.labeled_lists"]),
    "strict meets a bad file": (["--set", "data.labeled_lists=[corrupt.lst]",
                                 "--set", "data.strict=true"], ["corrupt.jpg"]),
    "infinite number": (["--set", "loss.unsup_weight=inf"], ["loss.unsup_weight"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_local_training_bad_input_is_one_line(case, data_root, tmp_path):
    args, needles = CASES[case]
    proc = _train("--local", "--output", str(tmp_path / "runs"), "--set",
                  f"data.root={data_root}", "--set", "data.unlabeled_lists=[]", "--set",
                  "data.eval_lists=[good.lst]", *args)
    _assert_one_line(proc, *needles)


@pytest.mark.slow
def test_output_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("keep me")
    proc = _train("--local", "--output", str(tmp_path / "file" / "runs"))
    _assert_one_line(proc, str(tmp_path / "file"))
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.ray
def test_bad_file_in_a_ray_worker_is_one_line(data_root, tmp_path):
    """The strict-mode error is raised inside a Ray Train worker; the driver prints its line."""
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
    proc = _train("--output", str(tmp_path / "runs"), "--set", f"data.root={data_root}",
                  "--set", "data.labeled_lists=[corrupt.lst]", "--set", "data.strict=true",
                  "--set", "data.unlabeled_lists=[]", "--set", "data.eval_lists=[good.lst]",
                  "--set", "run.max_failures=0", "--set", "scaling.num_workers=1", timeout=600)
    _assert_one_line(proc, "corrupt.jpg", worker_logs=True)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from tsal_dist.config import with_overrides
    from tsal_dist.loop.checkpoint import latest_checkpoint
    from tsal_dist.loop.loop import run

    out = tmp_path_factory.mktemp("ck")
    cfg = with_overrides(load_config(SMOKE), {"optim.steps": 2, "run.export": False,
                                              "run.eval_every": 0})
    run(cfg, run_dir=out / "r", progress=False, final_eval=False)
    return latest_checkpoint(out / "r" / "checkpoints")


def _cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["export --out", "eval --json", "eval --plot folder",
                                  "prepare synthetic --out"])
def test_bad_output_paths_fail_before_the_work_in_one_line(what, tiny_checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    test_list = str(resolve_data(load_config(SMOKE)).eval[0])
    if what == "export --out":
        proc = _cli("tsal_dist.export", "--checkpoint", str(tiny_checkpoint), "--out",
                    str(blocker / "model"))
    elif what == "eval --json":
        proc = _cli("tsal_dist.eval", "--checkpoint", str(tiny_checkpoint), "--list", test_list,
                    "--json", str(blocker / "r.json"))
    elif what == "eval --plot folder":
        proc = _cli("tsal_dist.eval", "--checkpoint", str(tiny_checkpoint), "--list", test_list,
                    "--plot", str(tmp_path))
    else:
        proc = _cli("tsal_dist.prepare", "synthetic", "--out", str(blocker / "syn"),
                    "--images", "2", "--test-images", "1", "--videos", "0", "--test-videos", "0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0], proc.stderr
    assert str(tmp_path) in lines[0]
    assert proc.stdout.strip() == ""  # eval printed no results it then could not write
    assert blocker.read_text() == "keep me"


@pytest.mark.slow
def test_resuming_a_checkpoint_of_another_model_is_one_line(tiny_checkpoint, tmp_path):
    """--force past the config check: the weights still cannot fit; one line, not 67."""
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run_dir / "checkpoints" / tiny_checkpoint.name)
    proc = _train("--local", "--output", str(tmp_path / "runs"), "--name", "r", "--force",
                  "--set", "model.width=1.0")
    _assert_one_line(proc, tiny_checkpoint.name, "do not fit this model")

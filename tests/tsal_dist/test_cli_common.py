"""tsal_dist.cli: the flags, overrides, exit statuses and summary every entry point shares."""

from __future__ import annotations

import argparse
import json

import pytest

from tsal_dist.cli import add_config_args, print_summary, run_and_report, run_overrides
from tsal_dist.config import ConfigError


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p, config_help="c", set_help="s")
    p.add_argument("--output")
    p.add_argument("--name")
    return p.parse_args(argv)


def test_run_flags_are_overrides_of_their_section():
    args = _args(["--set", "optim.steps=3", "--set", "a.b=x=y", "--output", "o", "--name", "n"])
    assert args.config is None
    assert run_overrides(args, section="experiment.run") == {
        "optim.steps": "3", "a.b": "x=y", "experiment.run.output": "o",
        "experiment.run.name": "n"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        run_overrides(_args(["--set", "novalue"]), section="run")


def test_a_flag_and_a_set_of_the_same_key_must_agree():
    """--output and --set run.output name one setting: a disagreement is refused, not won
    silently by whichever the code reads last; the same value twice is fine."""
    with pytest.raises(ConfigError, match=r"--output b and --set run.output=a disagree"):
        run_overrides(_args(["--set", "run.output=a", "--output", "b"]), section="run")
    with pytest.raises(ConfigError, match=r"--name n2 and --set experiment.run.name=n1"):
        run_overrides(_args(["--set", "experiment.run.name=n1", "--name", "n2"]),
                      section="experiment.run")
    assert run_overrides(_args(["--set", "run.name=n", "--name", "n"]),
                         section="run") == {"run.name": "n"}


class ExportError(RuntimeError):
    """Named like tsal_dist.export's: sorted by name, as a Ray worker's would be."""


@pytest.mark.parametrize("exc, status, line", [
    (ConfigError("optim.steps: must be >= 1"), 2, "error: optim.steps: must be >= 1\n"),
    (FileNotFoundError(2, "No such file", "/x.lst"), 2, "error: /x.lst: No such file\n"),
    (ExportError("model.onnx: parity 0.3 > 0.01"), 1,
     "error: the teacher's export failed: model.onnx: parity 0.3 > 0.01\n"),
])
def test_failures_are_one_line_with_their_status(exc, status, line, capsys):
    def job() -> dict:
        raise exc

    assert run_and_report(job, deliverable="the teacher's export") == status
    assert capsys.readouterr().err == line


def test_a_system_failure_keeps_its_traceback():
    def job() -> dict:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError):
        run_and_report(job, deliverable="the export")


def test_summary_and_status(capsys):
    row = {"count": 3, "nme_inter_ocular": 0.05, "nme_inter_pupil": 0.07, "auc@0.08": 0.4,
           "fr@0.08": 0.1}
    ok = {"run_dir": "/r", "eval": {"teacher": {"test.lst": row}}}
    assert run_and_report(lambda: ok, deliverable="x") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "run folder: /r" and "NME(io)=5.00%" in out[1]
    assert json.loads(out[-1]) == {"ok": True, "run_dir": "/r"}
    assert run_and_report(lambda: {"run_dir": "/r", "error": "boom"}, deliverable="x") == 1
    assert capsys.readouterr().err == "error: boom\n"
    print_summary({})
    assert capsys.readouterr().out.startswith("run folder: None")


@pytest.mark.parametrize("entry", ["tsal_dist.train", "tsal_dist.distill"])
def test_local_gpu_config_without_cuda_is_one_line_not_a_cpu_run(entry, tmp_path, capsys,
                                                                 monkeypatch):
    """``--local`` with ``scaling.use_gpu`` ran on the CPU (fp16 autocast on the CPU included);
    it takes the CUDA device, and without one says so before any work."""
    import importlib

    import torch

    from tsal_dist.config import ScalingConfig
    from tsal_dist.loop.context import local_context

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    key = "scaling.use_gpu" if entry == "tsal_dist.train" else "experiment.scaling.use_gpu"
    status = importlib.import_module(entry).main(
        ["--local", "--output", str(tmp_path), "--set", f"{key}=true"])
    err = capsys.readouterr().err
    assert status == 2 and "torch sees no CUDA device for --local" in err, err
    assert not any(tmp_path.rglob("*.pt"))  # nothing trained
    assert local_context(ScalingConfig()).device == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert local_context(ScalingConfig(use_gpu=True)).device == torch.device("cuda", 3)


def test_distillation_refuses_a_run_folder_made_by_another_config(tmp_path, capsys):
    """It resumed the folder's checkpoints under the new config and overwrote its distill.yaml;
    a run folder is its config's, as for training (--force continues it anyway)."""
    from tsal_dist.config import load_distill_config, save_config
    from tsal_dist.distill import main

    run = tmp_path / "X"
    run.mkdir()
    earlier = load_distill_config(None, {"kd.variant": "code"})
    save_config(earlier, run / "distill.yaml")
    status = main(["--local", "--output", str(tmp_path), "--name", "X",
                   "--set", "kd.variant=paper"])
    err = capsys.readouterr().err
    assert status == 2 and "this run was started with another config" in err, err
    assert "kd.variant: 'code' -> 'paper'" in err
    assert load_distill_config(run / "distill.yaml") == earlier  # untouched


def test_ray_is_shut_down_before_the_error_line(monkeypatch, capsys):
    """Ray streams its workers' output to the driver's stderr a moment late: the driver stops
    Ray before it prints its line, so that the line is the last thing the user sees."""
    import sys
    import types

    events = []
    fake = types.SimpleNamespace(is_initialized=lambda: True,
                                 shutdown=lambda: events.append(("shutdown", capsys.readouterr())))
    monkeypatch.setitem(sys.modules, "ray", fake)

    def failing() -> dict:
        raise ConfigError("data.root: not found")

    assert run_and_report(failing, deliverable="x") == 2
    assert events and events[0][1].err == ""  # nothing printed before Ray stopped
    assert capsys.readouterr().err == "error: data.root: not found\n"
    events.clear()
    assert run_and_report(lambda: {"run_dir": "r", "error": "rank 1 died"}, deliverable="x") == 1
    assert len(events) == 1 and "rank 1 died" in capsys.readouterr().err
    events.clear()
    assert run_and_report(lambda: {"run_dir": "r"}, deliverable="x") == 0
    assert events == []  # a run that ended well leaves Ray to its owner


def test_a_failing_or_hanging_ray_shutdown_still_prints_the_line(monkeypatch, capsys):
    import sys
    import threading
    import types

    import tsal_dist.cli as cli

    def broken() -> None:
        raise RuntimeError("GCS unreachable")

    release = threading.Event()
    for shutdown in (broken, lambda: release.wait(30)):
        monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(
            is_initialized=lambda: True, shutdown=shutdown))
        monkeypatch.setattr(cli, "RAY_SHUTDOWN_WAIT_S", 0.2)

        def failing() -> dict:
            raise ConfigError("data.root: not found")

        assert run_and_report(failing, deliverable="x") == 2
        assert capsys.readouterr().err == "error: data.root: not found\n"
    release.set()

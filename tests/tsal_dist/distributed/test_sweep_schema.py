"""The sweep file's schema (tsal_dist.config.sweep) and its loading (tsal_dist.distributed.sweep):
strict like every config, defaults in the schema only. No Ray (seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tsal_dist.config import (ConfigError, SchedulerConfig, SweepConfig, load_sweep_config,
                              to_dict)
from tsal_dist.distributed.sweep import load_sweep, write_sweep_file

REPO = Path(__file__).resolve().parents[3]
SPACE = {"teacher.blend": {"uniform": [0.4, 0.8]}}


def _write(tmp: Path, d: dict, name: str = "s.yaml") -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(d))
    return p


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_sweep_file_is_its_schema(path):
    spec = load_sweep_config(path)
    raw = yaml.safe_load(path.read_text())
    assert spec.space == raw["space"] and spec.num_samples == raw["num_samples"]
    assert to_dict(spec)["scheduler"]["type"] == spec.scheduler.kind


def test_defaults_come_from_the_schema(tmp_path):
    p = _write(tmp_path, {"space": SPACE}, "mine.yaml")
    sweep = load_sweep(p)
    d = SweepConfig()
    assert sweep.name == "mine" and sweep.output == "runs/sweeps/mine"  # "" = the file's stem
    assert (sweep.num_samples, sweep.max_concurrent_trials, sweep.metric, sweep.mode,
            sweep.seed) == (d.num_samples, d.max_concurrent_trials, d.metric, d.mode, d.seed)
    assert sweep.scheduler == SchedulerConfig() and sweep.scheduler.kind == "asha"


def test_scheduler_name_is_short_for_its_type(tmp_path):
    p = _write(tmp_path, {"space": SPACE, "scheduler": "fifo"})
    assert load_sweep_config(p).scheduler == SchedulerConfig(type="fifo")


@pytest.mark.parametrize("bad, msg", [
    ({"spaces": {}}, r"spaces: unknown sweep key \(known: \['base', "),
    ({"scheduler": {"type": "asha", "grace": 2}}, "scheduler.grace: unknown sweep key"),
    ({"scheduler": {"grace_period": 0}}, r"scheduler\.grace_period: must be >= 1"),
    ({"scheduler": {"reduction_factor": 1}}, r"scheduler\.reduction_factor: must be > 1"),
    ({"scheduler": 3}, "scheduler: expected a mapping"),
    ({"num_samples": "many"}, "num_samples: expected an int"),
    ({"max_concurrent_trials": 0}, "max_concurrent_trials: must be >= 1"),
    ({"seed": -1}, "seed: must be >= 0"),
    ({"mode": "best"}, r"mode: 'best' is not one of \['min', 'max'\]"),
    ({"space": [1, 2]}, "space: expected a mapping"),
    ({"set": "optim.steps=3"}, "set: expected a mapping"),
])
def test_bad_sweep_files_fail_in_one_line_naming_file_and_key(tmp_path, bad, msg):
    p = _write(tmp_path, {"space": SPACE, **bad})
    with pytest.raises(ConfigError, match=msg) as e:
        load_sweep(p)
    assert str(e.value).startswith(f"{p}: ") and "\n" not in str(e.value)


def test_settings_replace_file_values_and_are_checked(tmp_path):
    p = _write(tmp_path, {"space": SPACE, "num_samples": 3, "output": "a"})
    sweep = load_sweep(p, settings={"num_samples": 5, "output": str(tmp_path / "o")})
    assert sweep.num_samples == 5 and sweep.output == str(tmp_path / "o")
    with pytest.raises(ConfigError, match=r"num_samples: must be >= 1"):
        load_sweep(p, settings={"num_samples": 0})
    with pytest.raises(ConfigError, match=r"nope: unknown config key"):
        load_sweep(p, settings={"nope": 1})


def test_tune_cli_check_uses_the_same_loader(tmp_path, capsys):
    from tsal_dist.tune import main

    p = _write(tmp_path, {"base": str(REPO / "configs" / "smoke.yaml"), "space": SPACE,
                          "set": {"run.eval_every": 6, "run.checkpoint_every": 6}})
    assert main(["--config", str(p), "--check", "--num-samples", "2",
                 "--output", str(tmp_path / "out")]) == 0
    assert "2 trials over ['teacher.blend']" in capsys.readouterr().out
    assert main(["--config", str(p), "--check", "--max-concurrent-trials", "0"]) == 2
    assert "max_concurrent_trials: must be >= 1" in capsys.readouterr().err


def test_check_refuses_what_would_fail_once_ray_started(tmp_path, capsys):
    """A grace period longer than the trials (ASHA asserted it inside Tune) and an output that is
    a file (the sweep failed at mkdir with a traceback) are refused by --check itself."""
    from tsal_dist.tune import main

    base = {"base": str(REPO / "configs" / "smoke.yaml"), "space": SPACE,
            "set": {"run.eval_every": 6, "run.checkpoint_every": 6, "optim.steps": 12}}
    p = _write(tmp_path, {**base, "scheduler": {"type": "asha", "grace_period": 500}})
    assert main(["--config", str(p), "--check"]) == 2
    assert "scheduler.grace_period: 500 > the trials' 12 steps" in capsys.readouterr().err
    p = _write(tmp_path, {**base, "scheduler": "fifo"})
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        assert main(["--config", str(p), "--check", "--output", str(out)]) == 2
        err = capsys.readouterr().err
        assert str(afile) in err and err.count("\n") == 1, err


def test_written_sweep_file_records_the_resolved_sweep(tmp_path):
    sweep = load_sweep(REPO / "configs" / "sweeps" / "smoke.yaml")
    write_sweep_file(sweep, tmp_path / "sweep.yaml")
    d = yaml.safe_load((tmp_path / "sweep.yaml").read_text())
    assert d["scheduler"] == {"type": "fifo", "grace_period": 1, "reduction_factor": 2.0,
                              "max_t": 0}
    assert d["trials"] == 2 and d["base"] == sweep.base_overrides and d["space"] == sweep.space


def test_a_rerun_continues_only_its_own_sweep(tmp_path, capsys):
    """--check of a sweep whose output holds Tune's saved state of the same sweep says it
    continues it; another name, space, sample count, concurrency or base config is refused,
    naming what differs (also without Tune's state: one output, one sweep); Tune's state without
    sweep.yaml, and a sweep.yaml of an older version, are refused too."""
    from tsal_dist.tune import main

    base = {"base": str(REPO / "configs" / "smoke.yaml"), "space": SPACE,
            "set": {"run.eval_every": 6, "run.checkpoint_every": 6}}
    p = _write(tmp_path, base)
    out = tmp_path / "out"
    check = ["--config", str(p), "--check", "--output", str(out)]
    sweep = load_sweep(p, settings={"output": str(out)})
    exp = out / "_tune" / sweep.name
    exp.mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"")
    assert main(check) == 0  # a driver that died before Tune's first save: starts afresh
    assert "continuing" not in capsys.readouterr().out
    (exp / "experiment_state-2026-12-08_00-00-00.json").write_text("{}")
    assert main(check) == 2
    assert "holds a Tune experiment but no sweep.yaml" in capsys.readouterr().err
    write_sweep_file(sweep, out / "sweep.yaml")
    assert main(check) == 0
    assert f"continuing the sweep in {out}" in capsys.readouterr().out
    for args, what in [(["--num-samples", "3"], "num_samples differs"),
                       (["--max-concurrent-trials", "2"], "max_concurrent_trials differs"),
                       (["--set", "optim.steps=7"], "base_config_hash differs")]:
        assert main([*check, *args]) == 2
        err = capsys.readouterr().err
        assert f"{out}: holds another sweep (its {what})" in err and err.count("\n") == 1, err
    p2 = _write(tmp_path, {**base, "space": {"teacher.blend": {"uniform": [0.4, 0.9]}}}, "s.yaml")
    assert main(["--config", str(p2), "--check", "--output", str(out)]) == 2
    assert "(its space differs)" in capsys.readouterr().err
    other_name = _write(tmp_path, base, "other.yaml")  # its Tune state would be elsewhere
    assert main(["--config", str(other_name), "--check", "--output", str(out)]) == 2
    assert "(its name differs)" in capsys.readouterr().err
    old = yaml.safe_load((out / "sweep.yaml").read_text())
    del old["base_config_hash"]
    (out / "sweep.yaml").write_text(yaml.safe_dump(old))
    assert main(check) == 2
    assert "written by an older tsal_dist" in capsys.readouterr().err


def test_tune_state_is_restored_only_from_a_folder_no_one_else_can_write(tmp_path,
                                                                         monkeypatch):
    """Tune's experiment state is a pickle: a folder, a file in it or a parent up to the sweep's
    output that others can write is refused before Tune reads it, and so is a symbolic link;
    group-writable passes only for the user's own private group."""
    import tsal_dist.distributed.tune_driver as td

    out = tmp_path / "out"
    folder = out / "_tune" / "exp"
    folder.mkdir(parents=True)
    for p in (out, out / "_tune", folder):
        p.chmod(0o755)
    state = folder / "experiment_state.json"
    state.write_text("{}")
    state.chmod(0o644)
    td.check_trusted_folder(folder, up_to=out)  # the user's own, written by no one else: fine
    for p, mode in [(state, 0o646), (folder, 0o757), (out / "_tune", 0o757), (out, 0o757)]:
        p.chmod(mode)
        with pytest.raises(ConfigError, match=f"{p}: others can write it"):
            td.check_trusted_folder(folder, up_to=out)
        p.chmod(0o755 if p.is_dir() else 0o644)
    tmp_path.chmod(0o777)  # above the output: not the sweep's to check
    td.check_trusted_folder(folder, up_to=out)
    tmp_path.chmod(0o755)
    state.chmod(0o664)
    monkeypatch.setattr(td, "_private_group", lambda gid: False)
    with pytest.raises(ConfigError, match="others can write it"):
        td.check_trusted_folder(folder, up_to=out)
    monkeypatch.setattr(td, "_private_group", lambda gid: True)
    td.check_trusted_folder(folder, up_to=out)  # umask 002 with a private group: fine
    (folder / "tuner.pkl").symlink_to(tmp_path / "elsewhere.pkl")
    with pytest.raises(ConfigError, match="tuner.pkl: is a symbolic link"):
        td.check_trusted_folder(folder, up_to=out)


def test_an_interrupted_sweep_exits_1_and_says_how_to_continue(tmp_path, monkeypatch, capsys):
    """Tune returns normally after a Ctrl-C: the CLI must not report the partial sweep as done."""
    import tsal_dist.distributed.tune_driver as td
    from tsal_dist.tune import main

    p = _write(tmp_path, {"base": str(REPO / "configs" / "smoke.yaml"), "space": SPACE,
                          "set": {"run.eval_every": 6, "run.checkpoint_every": 6}})
    best = {"trial": "s_1", "val_nme": 0.05, "teacher.blend": 0.5}
    monkeypatch.setattr(td, "run_sweep", lambda sweep: {
        "files": {}, "best": best, "tune": {"s_0": {}, "s_1": {}}, "unfinished": 1})
    assert main(["--config", str(p), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err == ("error: the sweep stopped with 1 of 2 trials unfinished; rerun the same "
                   "command to continue it\n")


def test_an_override_of_a_swept_key_is_refused(tmp_path, capsys):
    """The trials' samples are applied last: a --set or set: of a swept key changed nothing."""
    from tsal_dist.tune import main

    smoke = str(REPO / "configs" / "sweeps" / "smoke.yaml")
    assert main(["--config", smoke, "--check", "--set", "teacher.blend=0.95"]) == 2
    err = capsys.readouterr().err
    assert "--set teacher.blend: teacher.blend is swept (space:)" in err and err.count("\n") == 1
    p = _write(tmp_path, {"base": str(REPO / "configs" / "smoke.yaml"), "space": SPACE,
                          "set": {"run.eval_every": 6, "run.checkpoint_every": 6,
                                  "teacher.blend": 0.5}})
    assert main(["--config", str(p), "--check"]) == 2
    assert "set.teacher.blend: teacher.blend is swept" in capsys.readouterr().err


def test_a_bad_base_key_is_blamed_on_the_file_that_holds_it(tmp_path):
    """A bad key of the base: file names that file, a bad --set says --set, a bad set: the sweep
    file (every one was blamed on the sweep file)."""
    base = tmp_path / "b" / "bad.yaml"
    base.parent.mkdir()
    base.write_text("optim:\n  bogus: 1\n")
    sweep = {"base": "b/bad.yaml", "space": SPACE}
    p = _write(tmp_path, sweep)
    with pytest.raises(ConfigError, match=rf"^{base}: optim.bogus: unknown config key"):
        load_sweep(p)
    p = _write(tmp_path, {**sweep, "base": str(REPO / "configs" / "smoke.yaml")})
    with pytest.raises(ConfigError, match=r"^--set optim.lr: must be a finite number"):
        load_sweep(p, {"optim.lr": "1e400"})
    p = _write(tmp_path, {**sweep, "base": str(REPO / "configs" / "smoke.yaml"),
                          "set": {"optim.steps": 0}})
    with pytest.raises(ConfigError, match=rf"^{p}: optim.steps: "):
        load_sweep(p)

from pathlib import Path

import pytest

from tsal_dist.config import (ConfigError, ExperimentConfig, load_config, load_distill_config,
                              parse_set_args, save_config, with_overrides)

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_round_trip():
    cfg = ExperimentConfig()
    assert ExperimentConfig.from_dict(cfg.to_dict()) == cfg


def test_override_coerces_cli_strings_by_annotation():
    cfg = with_overrides(ExperimentConfig(), parse_set_args(
        ["teacher.blend=0.5", "optim.steps=7", "data.flip=true", "model.backbone=resnet",
         "data.eval_lists=a.lst,b.lst", "optim.milestones=[0.5, 0.8]"]))
    assert cfg.teacher.blend == 0.5 and cfg.optim.steps == 7 and cfg.data.flip is True
    assert cfg.model.backbone == "resnet"
    assert cfg.data.eval_lists == ("a.lst", "b.lst")
    assert cfg.optim.milestones == (0.5, 0.8)


def test_int_is_accepted_for_float():
    assert with_overrides(ExperimentConfig(), {"optim.lr": 1}).optim.lr == 1.0


@pytest.mark.parametrize("key,value,needle", [
    ("teacher.ema_decay", 1.5, "teacher.ema_decay"),
    ("teacher.blend", 0.0, "teacher.blend"),
    ("teacher.blend", 1.0, "teacher.blend"),
    ("teacher.nope", 1, "teacher.nope"),
    ("nope.x", 1, "nope.x"),
    ("optim.steps", "ten", "optim.steps"),
    ("optim.steps", 1.5, "optim.steps"),
    ("model.backbone", "vgg", "model.backbone"),
    ("data.flip", "maybe", "data.flip"),
    ("model.input_size", 100, "model.input_size"),
    ("loss.unsup_weight", float("inf"), "loss.unsup_weight: must be a finite"),
    ("optim.grad_clip", "nan", "optim.grad_clip: must be a finite"),
    ("optim.lr", "-inf", "optim.lr: must be a finite"),
    ("data.loader_workers", -2, "data.loader_workers"),
    ("loss.pseudo_max_turn", -0.1, "loss.pseudo_max_turn: must be >= 0"),
    ("loss.pseudo_max_turn", 0.3, "loss.pseudo_max_turn: applies to loss.student_consistency"),
])
def test_bad_values_name_the_key(key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        with_overrides(ExperimentConfig(), {key: value})


def test_cross_section_check():
    with pytest.raises(ConfigError, match="centroid_index"):
        with_overrides(ExperimentConfig(), {"data.num_points": 19})
    cfg = with_overrides(ExperimentConfig(), {"data.num_points": 19, "model.centroid_index": 9})
    assert cfg.data.num_points == 19


def test_what_the_point_layout_cannot_serve_is_refused_by_the_config_itself():
    """Every entry point builds an ExperimentConfig (distillation embeds one), so a flip without
    mirror pairs or a turn limit without a nose tip stops there, named by its key."""
    with pytest.raises(ConfigError, match=r"^data\.flip: the wflw98 layout \(98 points\) has no "):
        with_overrides(ExperimentConfig(), {"data.num_points": 98, "data.flip": True})
    turn = {"data.num_points": 19, "model.centroid_index": 9,
            "loss.student_consistency": "pseudo_label", "loss.pseudo_max_turn": 0.25}
    with pytest.raises(ConfigError, match=r"^loss\.pseudo_max_turn: .*aflw19 layout \(19 points\)"):
        with_overrides(ExperimentConfig(), turn)
    with pytest.raises(ConfigError, match=r"^experiment\.data\.flip: the wflw98 layout"):
        load_distill_config(None, {"experiment.data.num_points": 98, "experiment.data.flip": True})
    # what the layout can serve passes: 98 points without flip, a turn limit on 68 or 98 points
    assert with_overrides(ExperimentConfig(), {"data.num_points": 98}).data.num_points == 98
    for k in (68, 98):
        cfg = with_overrides(ExperimentConfig(), {**turn, "data.num_points": k})
        assert cfg.loss.pseudo_max_turn == 0.25


def test_yaml_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher:\n  blend: 2.0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*teacher\.blend"):
        load_config(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_config(unknown)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(notmap)


def test_a_binary_file_or_a_folder_as_config_is_one_line(tmp_path):
    binary = tmp_path / "ckpt.pt"
    binary.write_bytes(b"\x80\x02\xff\xfe" * 8)
    with pytest.raises(ConfigError, match="ckpt.pt: not a text file"):
        load_config(binary)
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML at line \d+, column \d+") as e:
        load_config(bad)
    assert "\n" not in str(e.value)


def test_yaml_is_never_executed(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("run:\n  name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(evil)


def test_every_shipped_config_loads():
    files = sorted((REPO / "configs").rglob("*.yaml"))
    assert len(files) >= 3
    for f in files:
        if "sweeps" in f.parts or f.name.startswith("distill"):
            continue  # sweep and distillation files have their own schemas, tested with them
        load_config(f)


def test_save_then_load_is_identity(tmp_path):
    cfg = with_overrides(ExperimentConfig(), {"teacher.mode": "ema", "data.eval_lists": ["x"]})
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert cfg.hash() == load_config(tmp_path / "c.yaml").hash()


def test_set_args_need_equals():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_args(["teacher.blend"])


def test_run_names_survive_fields_added_later():
    """Run folders are named by the config hash and a rerun resumes them: a field added later
    (schema.later) leaves every older config's name unchanged while it holds its default."""
    from tsal_dist.config import run_name_for

    default = ExperimentConfig()
    assert run_name_for(default) == "tsal-bb18f7116f"  # the name before the later fields existed
    for key, value in (("optim.layer_lr", "tsal"), ("loss.structure_on", "labeled"),
                       ("model.init_from", "/w.pt"), ("teacher.optimize", False),
                       ("data.synthetic.labeled_domain.yaw_max_deg", 15.0)):
        changed = with_overrides(default, {key: value})
        assert changed.hash() != default.hash(), key
        back = with_overrides(changed, {key: getattr_path(default, key)})
        assert back.hash() == default.hash(), key


def getattr_path(obj, dotted):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_run_name_is_one_folder_and_the_output_spelling_is_one_run():
    """``--name ../x`` left run.output and ``--name /etc`` made /etc the run folder; ``runs``,
    ``./runs`` and ``runs/`` gave three run names for one folder (a rerun did not resume)."""
    from tsal_dist.config import ExperimentConfig, run_name_for, with_overrides

    c = ExperimentConfig()
    for bad in ("../x", "/etc", ".", "..", "a/b", "~x"):
        with pytest.raises(ConfigError, match="run.name: must be one folder name"):
            with_overrides(c, {"run.name": bad})
    assert with_overrides(c, {"run.name": "my-run_1"}).run.name == "my-run_1"
    names = {run_name_for(with_overrides(c, {"run.output": o}))
             for o in ("runs", "./runs", "runs/", "runs//")}
    assert names == {run_name_for(c)} == {"tsal-bb18f7116f"}  # the default run keeps its name


def test_a_file_and_its_overrides_are_checked_together(tmp_path):
    """A file's value that depends on another field is checked against that field's --set (it
    was checked against the default first: the pair was refused though valid); an error of the
    file's own key still names the file."""
    p = tmp_path / "turn.yaml"
    p.write_text("loss:\n  pseudo_max_turn: 0.2\n")
    cfg = load_config(p, {"loss.student_consistency": "pseudo_label"})
    assert cfg.loss.pseudo_max_turn == 0.2 and cfg.loss.student_consistency == "pseudo_label"
    with pytest.raises(ConfigError, match=rf"^{p}: loss.pseudo_max_turn: applies to"):
        load_config(p)
    with pytest.raises(ConfigError, match=r"^optim.steps: "):  # the --set's: not the file's
        load_config(p, {"loss.student_consistency": "pseudo_label", "optim.steps": "0"})


def test_a_key_given_twice_in_a_file_is_refused(tmp_path):
    """PyYAML keeps the last silently: a second ``optim:`` dropped the first one's lr and steps."""
    p = tmp_path / "dup.yaml"
    p.write_text("optim:\n  lr: 0.1\n  steps: 50\noptim:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match=rf"^{p}: invalid YAML at line 4, column 1: "
                                          r"duplicate key 'optim'"):
        load_config(p)
    p.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match="line 3, column 3: duplicate key 'lr'"):
        load_config(p)
    # a << merge's keys may be overridden, as YAML says
    p.write_text("x: &o {lr: 0.1, steps: 50}\n")
    from tsal_dist.config.loading import load_yaml

    p.write_text("a: &o {lr: 0.1, steps: 50}\nb:\n  <<: *o\n  lr: 0.2\n")
    assert load_yaml(p)["b"] == {"lr": 0.2, "steps": 50}
    p.write_text("optim: &a {x: *a}\n")
    with pytest.raises(ConfigError, match=rf"^{p}: invalid YAML"):
        load_config(p)


def test_huge_numbers_and_quoted_lists(tmp_path):
    p = tmp_path / "big.yaml"
    p.write_text("optim:\n  lr: 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError, match=rf"^{p}: optim.lr: must be a finite number"):
        load_config(p)
    cfg = with_overrides(ExperimentConfig(),
                         {"data.labeled_lists": "['a b.lst', \"c.lst\"]",
                          "data.eval_lists": "x.lst,y.lst"})
    assert cfg.data.labeled_lists == ("a b.lst", "c.lst")  # quotes are YAML's, not the path's
    assert cfg.data.eval_lists == ("x.lst", "y.lst")
    with pytest.raises(ConfigError, match=r"data.labeled_lists: expected a list like \[a, b\]"):
        with_overrides(ExperimentConfig(), {"data.labeled_lists": "[a,b]x"})

"""The config-to-arguments mappings the loop owns: evaluate_list's crop and decode arguments, and
the teacher server's arguments (each read from the config in one place)."""

from __future__ import annotations

import inspect

from tsal_dist.config import ExperimentConfig, with_overrides
from tsal_dist.eval.run import evaluate_list
from tsal_dist.loop.evaluation import list_eval_args
from tsal_dist.loop.loop import teacher_server_args
from tsal_dist.teacher.client import LocalTeacher
from tsal_dist.teacher.server import TeacherServer, versions_to_keep


def test_list_eval_args_are_evaluate_lists_keywords():
    cfg = with_overrides(ExperimentConfig(), {"model.decode_window": 3, "data.strict": True,
                                              "data.pre_crop_expand": 0.3})
    args = list_eval_args(cfg)
    params = inspect.signature(evaluate_list).parameters
    assert set(args) <= set(params) and all(params[k].kind is params[k].KEYWORD_ONLY
                                            for k in args)
    assert args["window"] == 3 and args["strict"] is True and args["pre_crop_expand"] == 0.3
    assert args["input_size"] == cfg.model.input_size
    assert list_eval_args(cfg, input_size=96)["input_size"] == 96  # a student's own crop side


def test_teacher_server_args_build_the_server():
    cfg = with_overrides(ExperimentConfig(), {"teacher.mode": "ema", "teacher.ema_decay": 0.7,
                                              "teacher.max_staleness": 2})
    args = teacher_server_args(cfg.teacher)
    assert set(args) <= set(inspect.signature(TeacherServer).parameters)
    assert args["keep_versions"] == versions_to_keep(2)
    LocalTeacher(**args)  # what the in-process run builds

"""Evaluation: pure-numpy metrics, model runs over SBR lists, CED plots, and the CLI.

- :mod:`tsal_dist.eval.metrics`: NME (inter-ocular / inter-pupil / face_size / bbox), CED, AUC,
  failure rate, summaries. Pure numpy; depends on nothing of ours (re-exported here).
- :mod:`tsal_dist.eval.run`: ``predict`` / ``evaluate_list(s)`` (torch; imported on demand).
- :mod:`tsal_dist.eval.plots`: ``plot_ced``, ``plot_training_curves`` (matplotlib, lazily).
- ``python -m tsal_dist.eval``: score a checkpoint (see ``__main__.py``).
"""

from tsal_dist.eval.metrics import (
    NormSpec,
    auc,
    ced,
    count_degenerate,
    failure_rate,
    mean_nme,
    nme,
    nme_by_norm,
    summarize,
)

__all__ = ["NormSpec", "auc", "ced", "count_degenerate", "failure_rate", "mean_nme", "nme",
           "nme_by_norm", "summarize"]

"""Load a benchmark script (benchmarks/*.py is not a package) as a module, for its tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str, *, importable: bool = False) -> ModuleType:
    """``benchmarks/<name>.py`` imported fresh under the module name ``<name>_bench``.

    ``importable=True``: under its own name ``<name>``, with benchmarks/ on ``sys.path``, so a
    spawned worker process can import it again to unpickle the functions it is sent.
    """
    if importable and str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name if importable else f"{name}_bench",
                                                  BENCHMARKS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod

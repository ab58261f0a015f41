"""The tree passes ``ruff check`` with the rules and line length in pyproject.toml.

pyflakes' rules find undefined names, unused variables and imports that tests do not reach; the
pycodestyle rules keep lines at the house length (100).
"""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes() -> None:
    try:
        import ruff  # noqa: F401
    except ImportError:
        pytest.fail("ruff is not installed: pip install -e '.[dev]' (pyproject.toml pins it)")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                        "--output-format", "concise", "."],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr

"""Which failures are the user's to fix, and their one line.

Entry points catch exceptions and print ``error: <one line naming the file or key>`` with exit
code 2 for these (bad config, bad data, bad checkpoint, a path that cannot be written), whether
raised in this process or in a Ray worker (whose exception reaches the driver inside Ray's own
error text). Anything else is a failure of the system: exit 1 with the full traceback.
"""

from __future__ import annotations

import re

from tsal_dist.config import ConfigError
from tsal_dist.data.formats import AnnotationError
from tsal_dist.loop.checkpoint import CheckpointError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, AnnotationError, CheckpointError, FileNotFoundError, PermissionError,
    NotADirectoryError, IsADirectoryError, FileExistsError)
_NAMES = {c.__name__ for c in USER_ERRORS} | {"RunConfigChanged"}
_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+): (.+)$")


def user_error(e: BaseException) -> str | None:
    """The one-line message of a user-fixable failure, or None for anything else."""
    if isinstance(e, USER_ERRORS):
        return _first_line(e)
    return named_error(e, *_NAMES)


def named_error(e: BaseException, *names: str) -> str | None:
    """The message of an exception class named ``names`` in ``e`` itself or, for a worker's
    exception wrapped by Ray Train (WorkerGroupError / TrainingFailedError), in its text, which
    ends with the worker's traceback: its last matching line is the original error."""
    if type(e).__name__ in names:
        return _first_line(e)
    for line in reversed(str(e).splitlines()):
        m = _LINE.match(line)
        if m and m.group(1) in names:
            return m.group(2).strip()
    return None


def _first_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or type(e).__name__}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__

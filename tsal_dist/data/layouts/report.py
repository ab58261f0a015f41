"""Bad-input reporting shared by the prepare step and the datasets: :class:`Report`.

What does not belong here: the checks that find bad inputs (``common.py`` and the preparers).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tsal_dist.data.formats import AnnotationError, ListEntry


@dataclass
class Report:
    """Counts bad inputs by reason, prints one line per bad file, and raises in strict mode.

    Shared by the prepare step and the datasets. Usage::

        report = Report(strict=False)
        try:
            pts, vis = read_pts(path, 68)
        except AnnotationError as e:
            report.skip(e, "bad annotation")   # prints the message, counts, raises if strict
            continue

    Args:
        strict: raise :class:`AnnotationError` at the first bad input instead of skipping it.
        stream: where the one-line messages go (default ``sys.stderr``).
        max_lines_per_reason: after this many lines of one reason the rest are only counted, so a
            wrongly pointed root does not print 20 000 lines (the summary has the full count).
    """

    strict: bool = False
    stream: TextIO | None = None
    max_lines_per_reason: int = 50
    skipped: Counter[str] = field(default_factory=Counter)
    written: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # list path -> why: lists of an earlier run removed because this run has nothing for them
    dropped: dict[str, str] = field(default_factory=dict)
    # lists of the preparation under way, written (entries) or removed (a reason) only when it
    # completes (see _lists_at_the_end); the last item is the folder the list paths are relative to
    pending: list[tuple[Path, list[ListEntry] | str, Path]] | None = field(default=None,
                                                                          repr=False)

    def _print(self, line: str) -> None:
        print(line, file=self.stream if self.stream is not None else sys.stderr, flush=True)

    def warn(self, path: str | os.PathLike[str], problem: str, reason: str | None = None) -> None:
        """Report one bad input ``path`` (skipped) with a human ``problem``; raise if strict.

        ``reason`` is the summary bucket (default: ``problem``).
        """
        self.skip(AnnotationError(f"{path}: {problem}"), reason or problem)

    def skip(self, error: AnnotationError, reason: str) -> None:
        """Like :meth:`warn` for an error whose message already names the file."""
        if self.strict:
            raise error
        self.skipped[reason] += 1
        n = self.skipped[reason]
        if n <= self.max_lines_per_reason:
            self._print(f"skipped: {error}")
        if n == self.max_lines_per_reason:
            self._print(f"(further '{reason}' messages are not printed; see the summary)")

    def note(self, message: str) -> None:
        """A warning that is not a bad file (never fatal): printed now and in the summary."""
        self.notes.append(message)
        self._print(f"warning: {message}")

    def wrote(self, path: str | os.PathLike[str], lines: int) -> None:
        """Record that list ``path`` was written with ``lines`` entries."""
        self.written[str(path)] = lines

    def removed(self, path: str | os.PathLike[str], why: str) -> None:
        """Record that list ``path``, left by an earlier run, was removed (``why``: this run has
        nothing for it, e.g. "no usable faces")."""
        self.dropped[str(path)] = why

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """Multi-line summary: lists written (with line counts), lists of an earlier run removed
        (with the reason), skipped by reason, warnings."""
        out = [f"wrote {len(self.written)} list file(s):"]
        width = max((len(Path(p).name) for p in self.written), default=0)
        out += [f"  {Path(p).name:<{width}}  {n} lines" for p, n in self.written.items()]
        if self.dropped:
            out.append(f"removed {len(self.dropped)} list file(s) of an earlier run:")
            width = max(len(Path(p).name) for p in self.dropped)
            out += [f"  {Path(p).name:<{width}}  {why}" for p, why in self.dropped.items()]
        if self.skipped:
            out.append(f"skipped {self.total_skipped} input(s):")
            out += [f"  {reason}: {n}" for reason, n in sorted(self.skipped.items())]
        else:
            out.append("skipped nothing")
        if self.notes:
            out.append(f"{len(self.notes)} warning(s):")
            out += [f"  {n}" for n in self.notes]
        return "\n".join(out)

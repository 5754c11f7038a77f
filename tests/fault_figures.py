"""Figures from the fault suite: each test reports what it measured, pytest prints them at the end.

The suite runs in CI at its default size; ``FAULT_SOAK=1`` (or a number, the multiplier)
makes every fault test run longer and harder, for a soak on a spare machine:

    FAULT_SOAK=10 bash scripts/test.sh -m faults

Figures are printed in the terminal summary and appended, one JSON line per report, to
``$FAULT_FIGURES`` when it names a file. (Not ``PLOINKY_*``: ploinkyd reads every variable of
that prefix as configuration, and the tests run its CLI with their own environment.)
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any


def soak_factor() -> int:
    """1 in CI; ``FAULT_SOAK=1`` means 10, any other number is taken as the multiplier."""
    raw = os.environ.get("FAULT_SOAK", "").strip()
    if not raw or raw == "0":
        return 1
    if raw == "1":
        return 10
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"FAULT_SOAK must be a whole number, not {raw!r}") from None


def scaled(ci: int) -> int:
    """``ci`` in a CI run, ``ci`` times the soak factor in a soak."""
    return ci * soak_factor()


@dataclass
class FigureBook:
    """What the fault tests measured in this session, in the order they reported it."""

    lines: list[tuple[str, str]] = field(default_factory=list)

    def report(self, test: str, summary: str, **figures: Any) -> None:
        self.lines.append((test, summary))
        target = os.environ.get("FAULT_FIGURES")
        if target:
            entry = {"test": test, "summary": summary, "at": time.time(), **figures}
            with open(target, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=str) + "\n")


BOOK = FigureBook()

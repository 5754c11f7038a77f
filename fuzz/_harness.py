"""What every harness shares: the repository on ``sys.path``, a scratch directory on tmpfs,
and the run itself. The checks are those of ``tests/test_fuzz.py``, so a crash here is a
failure there too once its input is added as an ``@example``."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Only ploinkyd (and the pure-Python parsers it hands input to) are worth coverage feedback;
# pydantic's core and json's scanner are compiled code atheris cannot see into.
INSTRUMENT = ["ploinkyd", "tomllib", "packaging"]


def scratch() -> Path:
    """A directory for the files the target reads: under ``$FUZZ_SCRATCH`` (scripts/fuzz.sh
    sets it and removes it afterwards; libFuzzer exits without running ``atexit``), else
    on tmpfs when there is one, for cheap writes."""
    tmpfs = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    base = os.environ.get("FUZZ_SCRATCH") or tmpfs
    return Path(tempfile.mkdtemp(prefix="ploinky-fuzz-", dir=base))


def main(one_input: Callable[[bytes], object]) -> None:
    """Run ``one_input`` under libFuzzer; ``sys.argv`` takes libFuzzer's flags
    (``-runs=N``, ``-max_total_time=S``, corpus directories)."""
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()

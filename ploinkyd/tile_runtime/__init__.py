"""The tile runtime: built-in operators and the line protocol of a warm tile (SPEC §6).

Standard library only, with relative imports only: the same package runs in the daemon
(``ploinkyd.tile_runtime``), as a local worker, and read-only mounted into containers at
``/opt/ploinky/tile_runtime`` where it starts as ``PYTHONPATH=/opt/ploinky python3 -m
tile_runtime``.

In-process use::

    from ploinkyd.tile_runtime import run_stages, OpError
    run_stages([{"op": "map", "params": {"expr": "x * 2"}}], [1, 2])   # [2, 4]

User operators: see ``registry`` (``@operator(name, version)`` on ``fn(data, params)``).
"""

from __future__ import annotations

from . import exec_mode, ops  # noqa: F401  (imported for their registrations)
from .errors import OpError
from .registry import Operator, describe, load_modules, operator
from .stages import run_stages

__all__ = ["OpError", "Operator", "describe", "load_modules", "operator", "run_stages"]

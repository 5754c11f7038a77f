"""``run_stages``: apply a chain of operators in order, each output feeding the next."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterable
from typing import Any

from .errors import OpError, json_type
from .registry import BUILTIN, lookup


def _stage_parts(stage: Any, index: int) -> tuple[str, dict[str, Any]]:
    if isinstance(stage, dict):
        name, params = stage.get("op"), stage.get("params")
    else:
        # Also accept objects with ``op``/``params`` attributes (the daemon's Stage model).
        name, params = getattr(stage, "op", None), getattr(stage, "params", None)
    if not isinstance(name, str) or not name:
        raise OpError(
            "BAD_REQUEST",
            f"stage {index} needs an 'op' string, got {stage!r:.200}",
            {"stage": index},
        )
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise OpError(
            "BAD_PARAMS",
            f"{name}: 'params' must be an object, got {json_type(params)}",
            {"stage": index, "op": name},
        )
    return name, params


def run_stages(stages: Iterable[Any], data: Any) -> Any:
    """The output of applying ``stages`` (``[{"op", "params"}, ...]``) to ``data`` in order.

    Raises ``OpError``; a stage's error carries ``details.stage`` (its index) and
    ``details.op``. An exception other than ``OpError`` becomes ``OP_FAILED`` and a
    ``MemoryError`` becomes ``OUT_OF_MEMORY``.
    """
    if isinstance(stages, str | bytes | dict) or not isinstance(stages, Iterable):
        raise OpError(
            "BAD_REQUEST", f"'stages' must be an array of stages, got {json_type(stages)}"
        )
    for index, stage in enumerate(stages):
        name, params = _stage_parts(stage, index)
        try:
            data = lookup(name).fn(data, params)
        except OpError as exc:
            exc.details.setdefault("stage", index)
            exc.details.setdefault("op", name)
            raise
        except MemoryError:
            raise OpError(
                "OUT_OF_MEMORY",
                f"stage {index} ({name}) ran out of memory",
                {"stage": index, "op": name},
            ) from None
        except Exception as exc:
            if lookup(name).module != BUILTIN:
                sys.stderr.write(f"tile_runtime: operator {name!r} raised:\n")
                sys.stderr.write("".join(traceback.format_exception(exc)))
                sys.stderr.flush()
            raise OpError(
                "OP_FAILED",
                f"{name} raised {type(exc).__name__}: {exc}",
                {"stage": index, "op": name, "exception": type(exc).__name__},
            ) from None
    return data

"""Python expressions in operator params (``map``'s ``x * 2``), compiled once per source.

Expressions see a small set of builtins plus ``math``, ``re`` and ``json``. That keeps
mistakes readable (``open`` is simply not defined) but is not a security boundary: the
container around the runtime is.
"""

from __future__ import annotations

import builtins
import json
import math
import re
from collections.abc import Callable
from typing import Any

from .errors import OpError, json_type

SAFE_BUILTIN_NAMES = (
    "len", "min", "max", "sum", "abs", "round", "int", "float", "str", "bool", "list", "dict",
    "tuple", "set", "sorted", "any", "all", "range", "enumerate", "zip", "isinstance", "map",
    "filter", "reversed",
)  # fmt: skip

_GLOBALS: dict[str, Any] = {
    "__builtins__": {name: getattr(builtins, name) for name in SAFE_BUILTIN_NAMES},
    "math": math,
    "re": re,
    "json": json,
}
_CACHE: dict[tuple[str, str], Callable[..., Any]] = {}
_CACHE_MAX = 4096


def compile_expr(source: object, param: str, args: str = "x") -> Callable[..., Any]:
    """A function of ``args`` (``"x"`` or ``"acc, x"``) evaluating ``source``.

    Raises ``BAD_PARAMS`` naming ``param`` when the source is not one Python expression.
    """
    if isinstance(source, str):
        fn = _CACHE.get((args, source))
        if fn is not None:
            return fn
    if not isinstance(source, str) or not source.strip():
        raise OpError(
            "BAD_PARAMS",
            f"param {param!r} must be a non-empty Python expression over {args}, "
            f"got {json_type(source)} {source!r}",
            {"param": param},
        )
    try:
        # Compiling the bare source first guarantees it is exactly one expression, so
        # wrapping it in a lambda below cannot change its meaning.
        compile(source, "<expr>", "eval")
    except SyntaxError as exc:
        raise OpError(
            "BAD_PARAMS",
            f"param {param!r} is not a valid Python expression: {exc.msg} in {source!r}",
            {"param": param, "expr": source},
        ) from None
    # A lambda rather than eval() with locals: comprehensions inside the expression can
    # then see ``x``, and a call is cheaper than eval per element.
    code = compile(f"lambda {args}: (\n{source}\n)", "<expr>", "eval")
    fn = eval(code, _GLOBALS)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[(args, source)] = fn
    return fn


def expr_failed(exc: Exception, source: str, index: int | None = None) -> OpError:
    """``OP_FAILED`` for an exception an expression raised (on element ``index``)."""
    where = "" if index is None else f" on element {index}"
    details: dict[str, Any] = {"exception": type(exc).__name__, "expr": source}
    if index is not None:
        details["index"] = index
    return OpError(
        "OP_FAILED",
        f"expression {source!r} raised {type(exc).__name__}{where}: {exc}",
        details,
    )

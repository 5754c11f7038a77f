"""Operators by name: the ``@operator`` decorator and the loader of user modules.

An operator is a plain function ``fn(data, params) -> output``: ``data`` is the stage input
(any JSON value), ``params`` the stage's ``params`` object as a ``dict``. It returns the
stage output (a JSON value) or raises ``OpError`` for a failure it can name; any other
exception becomes ``OP_FAILED``. A user module registers operators on import::

    from tile_runtime import operator, OpError

    @operator("word_count", version="2")
    def word_count(data, params):
        if not isinstance(data, str):
            raise OpError("BAD_INPUT", "word_count needs a string")
        return len(data.split())

``PLOINKY_TILE_MODULES`` (comma-separated module names) lists the modules the runtime
imports at start, with ``PLOINKY_TILE_PATH`` (colon-separated directories) put in front of
``sys.path``. A module that fails to import does not stop the runtime: requests for an
operator it would have provided fail with ``MODULE_IMPORT_FAILED`` naming the module and its
error, which is clearer than a worker that never answers.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import OpError

OpFunc = Callable[[Any, dict[str, Any]], Any]
F = TypeVar("F", bound=OpFunc)

BUILTIN = "builtin"


@dataclass(frozen=True)
class Operator:
    name: str
    version: str
    fn: OpFunc
    module: str


_OPERATORS: dict[str, Operator] = {}
_FAILED_MODULES: dict[str, str] = {}


def operator(name: str, version: str = "1") -> Callable[[F], F]:
    """Register ``fn(data, params)`` as the operator ``name``.

    Registering a name twice from the same module replaces it (a reload); from another
    module it raises ``ValueError``, so two plugins cannot silently shadow each other.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"an operator name must be a non-empty string, got {name!r}")

    def register(fn: F) -> F:
        module = _module_of(fn)
        existing = _OPERATORS.get(name)
        if existing is not None and existing.module != module:
            raise ValueError(
                f"operator {name!r} is already registered by {existing.module!r}; "
                f"{module!r} must pick another name"
            )
        _OPERATORS[name] = Operator(name, str(version), fn, module)
        return fn

    return register


def _module_of(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    # The built-ins live in this package, imported as ``tile_runtime`` in a container and as
    # ``ploinkyd.tile_runtime`` in the daemon; both count as built-in.
    package = __package__ or ""
    if module == package or module.startswith(package + "."):
        return BUILTIN
    return module


def lookup(name: str) -> Operator:
    found = _OPERATORS.get(name)
    if found is not None:
        return found
    if _FAILED_MODULES:
        failures = "; ".join(f"{mod}: {err}" for mod, err in _FAILED_MODULES.items())
        raise OpError(
            "MODULE_IMPORT_FAILED",
            f"operator {name!r} is not registered and user module(s) failed to import: {failures}",
            {"modules": dict(_FAILED_MODULES)},
        )
    known = sorted(n for n in _OPERATORS if not n.startswith("__"))
    raise OpError(
        "UNKNOWN_OP",
        f"unknown operator {name!r}; known operators: {', '.join(known)}",
        {"known": known},
    )


def describe() -> list[dict[str, str]]:
    """``[{"name", "version"}, ...]`` of every registered operator, sorted by name."""
    return [{"name": op.name, "version": op.version} for _, op in sorted(_OPERATORS.items())]


def failed_modules() -> dict[str, str]:
    return dict(_FAILED_MODULES)


def load_modules(names: Iterable[str], paths: Iterable[str] = ()) -> dict[str, str]:
    """Import user modules; return ``{module: error}`` for the ones that failed."""
    # User modules say ``from tile_runtime import operator``; when this package runs as
    # ``ploinkyd.tile_runtime`` that name must still reach this very registry.
    package = __package__ or "tile_runtime"
    if package != "tile_runtime":
        sys.modules.setdefault("tile_runtime", sys.modules[package])
    for path in reversed([p for p in paths if p]):
        if path not in sys.path:
            sys.path.insert(0, path)
    failed: dict[str, str] = {}
    for name in (n.strip() for n in names):
        if not name:
            continue
        before = set(_OPERATORS)
        try:
            importlib.import_module(name)
        except (Exception, SystemExit) as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
            # A half-imported module may have registered some operators; serving those
            # would hide that the module is broken.
            for added in set(_OPERATORS) - before:
                del _OPERATORS[added]
            sys.stderr.write(f"tile_runtime: cannot import user module {name!r}:\n")
            sys.stderr.write("".join(traceback.format_exception(exc)))
            sys.stderr.flush()
    _FAILED_MODULES.update(failed)
    return failed


def load_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    modules = environ.get("PLOINKY_TILE_MODULES", "").split(",")
    paths = environ.get("PLOINKY_TILE_PATH", "").split(":")
    return load_modules(modules, paths)

"""The built-in tile operators, as the daemon sees them: names, versions and params models.

The operators themselves run inside the sandbox (``ploinkyd.tile_runtime.ops``). Validating
their params here as well means a typo in a task (``"exprr"``, a syntax error in ``expr``)
becomes an ``INVALID_PIPELINE`` record at once, without a container round trip. The models are
strict, like the runtime: ``"yes"`` is not a boolean here either.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ploinkyd.tiles.model import CostHints, OperatorSpec

# Part of every cache key: bump when a built-in's output for the same input may change.
BUILTIN_VERSION = "1"


def _check_expr(value: str) -> str:
    try:
        compile(value, "<expr>", "eval")
    except SyntaxError as exc:
        raise ValueError(f"is not a Python expression: {exc.msg} in {value!r}") from None
    return value


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ExprParams(_Params):
    expr: str = Field(min_length=1, description="Python expression over x")

    _expr = field_validator("expr")(_check_expr)


class ReduceParams(_Params):
    expr: str = Field(min_length=1, description="Python expression over acc and x")
    initial: Any = None

    _expr = field_validator("expr")(_check_expr)


class SortParams(_Params):
    key: str | None = Field(None, description="Python expression over x")
    reverse: bool = False

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else _check_expr(value)


class GroupByParams(_Params):
    key: str = Field(min_length=1, description="Python expression over x")

    _key = field_validator("key")(_check_expr)


class TakeParams(_Params):
    n: int = Field(ge=0)


class SelectParams(_Params):
    path: str = Field(description="dotted path such as 'a.b.0.c'")
    each: bool = False
    default: Any = None


class CsvParseParams(_Params):
    delimiter: str = Field(",", min_length=1, max_length=1)
    header: bool = True


class CsvFormatParams(_Params):
    delimiter: str = Field(",", min_length=1, max_length=1)
    columns: list[str] | None = None
    header: bool = True


class NoParams(_Params):
    pass


_SPECS: tuple[tuple[str, type[BaseModel], CostHints, str], ...] = (
    ("identity", NoParams, CostHints(0.05), "returns its input"),
    ("map", ExprParams, CostHints(0.5), "expr over each element x of a list"),
    ("filter", ExprParams, CostHints(0.5, size_ratio=0.5), "keeps elements where expr is true"),
    ("reduce", ReduceParams, CostHints(0.5, size_ratio=0.01), "folds a list with expr(acc, x)"),
    ("sort", SortParams, CostHints(1.0), "sorts by key expr, optionally reversed"),
    ("group_by", GroupByParams, CostHints(0.7), "object of lists keyed by str(key expr)"),
    ("count", NoParams, CostHints(0.01, size_ratio=0.0), "length of a list or object"),
    ("take", TakeParams, CostHints(0.01, size_ratio=0.1), "the first n elements"),
    ("flatten", NoParams, CostHints(0.2), "one level of nested lists"),
    ("select", SelectParams, CostHints(0.1, size_ratio=0.2), "value at a dotted path"),
    ("json_path", SelectParams, CostHints(0.1, size_ratio=0.2), "alias of select"),
    ("csv_parse", CsvParseParams, CostHints(2.0, size_ratio=1.5), "CSV text to objects"),
    ("csv_format", CsvFormatParams, CostHints(2.0, size_ratio=0.7), "objects to CSV text"),
)


def builtin_operators() -> list[OperatorSpec]:
    """Descriptors of every built-in operator (image None = the configured tile image)."""
    return [
        OperatorSpec(
            name=name,
            version=BUILTIN_VERSION,
            params_model=model,
            cost=cost,
            description=text,
            owner="builtin",
        )
        for name, model, cost, text in _SPECS
    ]

"""``csv_report``: count, total and mean of one column per group of a CSV table.

Input: CSV text with a header row, or the list of objects that ``csv_parse`` produces.

Params:

- ``group_by`` (required): the column whose values form the groups;
- ``sum`` (optional): the numeric column to total and average; without it, only counts;
- ``order`` (optional): ``"group"`` (default, by group value) or ``"total"`` (largest first);
- ``digits`` (optional): decimal places of ``mean`` (default 2).

Output: ``[{"group": ..., "count": n, "total": t, "mean": m}, ...]`` (``total`` and ``mean``
only with ``sum``).
"""

from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from tile_runtime import OpError, operator

ORDERS = ("group", "total")


@operator("csv_report", version="1")
def csv_report(data: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    group_by = _column(params, "group_by")
    sum_column = _column(params, "sum") if "sum" in params else None
    order = params.get("order", "group")
    if order not in ORDERS:
        raise OpError(
            "BAD_PARAMS",
            f"param 'order' must be one of {', '.join(ORDERS)}, got {order!r}",
            {"param": "order"},
        )
    digits = params.get("digits", 2)
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 12:
        raise OpError(
            "BAD_PARAMS",
            f"param 'digits' must be an integer from 0 to 12, got {digits!r}",
            {"param": "digits"},
        )
    if order == "total" and sum_column is None:
        raise OpError("BAD_PARAMS", "order 'total' needs param 'sum'", {"param": "order"})
    rows, columns = _rows(data)
    for column in (group_by, sum_column):
        if column is not None and columns and column not in columns:
            raise OpError(
                "BAD_PARAMS",
                f"column {column!r} is not in the input; columns: {', '.join(columns)}",
                {"column": column, "columns": columns},
            )
    counts: dict[Any, int] = {}
    totals: dict[Any, Decimal] = {}
    for number, row in enumerate(rows, start=1):
        group = _group_value(row.get(group_by), number, group_by)
        counts[group] = counts.get(group, 0) + 1
        if sum_column is not None:
            value = _number(row.get(sum_column), number, sum_column)
            totals[group] = totals.get(group, Decimal(0)) + value
    report = []
    for group, count in counts.items():
        entry: dict[str, Any] = {"group": group, "count": count}
        if sum_column is not None:
            # Decimal arithmetic: 0.1 + 0.2 must total 0.3 in a report a person reads.
            entry["total"] = _json_number(totals[group])
            with localcontext(prec=100):  # quantize fails once digits exceed the precision
                mean = (totals[group] / count).quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)
            entry["mean"] = float(mean)
        report.append(entry)
    report.sort(key=lambda e: _sort_key(e["group"]))
    if order == "total":
        report.sort(key=lambda e: e["total"], reverse=True)
    return report


def _column(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise OpError(
            "BAD_PARAMS", f"param {name!r} must name a column, got {value!r}", {"param": name}
        )
    return value


def _rows(data: Any) -> tuple[list[dict[str, Any]], list[str]]:
    if isinstance(data, str):
        reader = csv.DictReader(io.StringIO(data))
        rows = list(reader)
        return rows, list(reader.fieldnames or [])
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return data, sorted({key for row in data for key in row})
    raise OpError(
        "BAD_INPUT",
        "csv_report needs CSV text with a header row, or a list of objects (csv_parse output)",
    )


def _group_value(value: Any, row: int, column: str) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise OpError("BAD_INPUT", f"row {row}: {column!r} must be a plain value, got {value!r}")


def _number(value: Any, row: int, column: str) -> Decimal:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else None
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite():
        raise OpError(
            "BAD_INPUT",
            f"row {row}: {column!r} must be a number, got {value!r}; "
            "filter such rows out first or fix the data",
            {"row": row, "column": column},
        )
    return number


def _json_number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    # Groups from a list input may mix types; order them null, booleans, numbers, text.
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, value)
    if isinstance(value, int | float):
        return (2, value)
    return (3, value)

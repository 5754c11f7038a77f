"""The built-in operators (SPEC §6), each ``fn(data, params)`` like a user operator."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from typing import Any

from .errors import OpError, json_type
from .expr import compile_expr, expr_failed
from .registry import describe, operator


def check_params(op: str, params: dict[str, Any], allowed: Iterable[str]) -> None:
    """Reject unknown params, so a typo (``revers``) fails instead of being ignored."""
    unknown = params.keys() - set(allowed)
    if unknown:
        raise OpError(
            "BAD_PARAMS",
            f"{op}: unknown param(s) {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(allowed) or 'none'}",
            {"unknown": sorted(unknown), "allowed": list(allowed)},
        )


def require(op: str, params: dict[str, Any], name: str, what: str) -> Any:
    if name not in params:
        raise OpError("BAD_PARAMS", f"{op}: missing param {name!r} ({what})", {"param": name})
    return params[name]


def bool_param(op: str, params: dict[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if not isinstance(value, bool):
        raise OpError(
            "BAD_PARAMS",
            f"{op}: param {name!r} must be true or false, got {json_type(value)} {value!r}",
            {"param": name},
        )
    return value


def list_input(op: str, data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, tuple):
        return list(data)
    raise OpError(
        "BAD_INPUT",
        f"{op} needs an array as input, got {json_type(data)}",
        {"got": json_type(data)},
    )


def _each(fn: Callable[[Any], Any], source: str, items: list[Any]) -> list[Any]:
    out: list[Any] = []
    append = out.append
    try:
        for item in items:
            append(fn(item))
    except MemoryError:
        raise
    except Exception as exc:
        raise expr_failed(exc, source, len(out)) from None
    return out


@operator("identity")
def identity(data: Any, params: dict[str, Any]) -> Any:
    check_params("identity", params, ())
    return data


@operator("map")
def map_(data: Any, params: dict[str, Any]) -> list[Any]:
    check_params("map", params, ("expr",))
    source = require("map", params, "expr", "a Python expression over x, e.g. 'x * 2'")
    fn = compile_expr(source, "expr")
    return _each(fn, source, list_input("map", data))


@operator("filter")
def filter_(data: Any, params: dict[str, Any]) -> list[Any]:
    check_params("filter", params, ("expr",))
    source = require("filter", params, "expr", "a Python expression over x, e.g. 'x > 0'")
    fn = compile_expr(source, "expr")
    items = list_input("filter", data)
    keep = _each(fn, source, items)
    return [item for item, kept in zip(items, keep, strict=True) if kept]


@operator("reduce")
def reduce_(data: Any, params: dict[str, Any]) -> Any:
    check_params("reduce", params, ("expr", "initial"))
    source = require("reduce", params, "expr", "a Python expression over acc and x")
    fn = compile_expr(source, "expr", "acc, x")
    items = list_input("reduce", data)
    initial = params.get("initial")
    start = 0
    if initial is None:
        if not items:
            raise OpError(
                "BAD_INPUT",
                "reduce of an empty array needs param 'initial'",
                {"param": "initial"},
            )
        acc, start = items[0], 1
    else:
        acc = initial
    index = start
    try:
        for index in range(start, len(items)):
            acc = fn(acc, items[index])
    except MemoryError:
        raise
    except Exception as exc:
        raise expr_failed(exc, source, index) from None
    return acc


@operator("sort")
def sort(data: Any, params: dict[str, Any]) -> list[Any]:
    check_params("sort", params, ("key", "reverse"))
    items = list_input("sort", data)
    reverse = bool_param("sort", params, "reverse", False)
    source = params.get("key")
    try:
        if source is None:
            return sorted(items, reverse=reverse)
        keys = _each(compile_expr(source, "key"), source, items)
        order = sorted(range(len(items)), key=keys.__getitem__, reverse=reverse)
        return [items[i] for i in order]
    except TypeError as exc:
        raise OpError(
            "OP_FAILED",
            f"sort: values cannot be compared ({exc}); give a 'key' expression that maps "
            "every element to comparable values",
            {"exception": "TypeError"},
        ) from None


@operator("group_by")
def group_by(data: Any, params: dict[str, Any]) -> dict[str, list[Any]]:
    check_params("group_by", params, ("key",))
    source = require("group_by", params, "key", "a Python expression over x, e.g. 'x[\"kind\"]'")
    items = list_input("group_by", data)
    keys = _each(compile_expr(source, "key"), source, items)
    groups: dict[str, list[Any]] = {}
    for key, item in zip(keys, items, strict=True):
        name = key if isinstance(key, str) else str(key)
        group = groups.get(name)
        if group is None:
            groups[name] = [item]
        else:
            group.append(item)
    return groups


@operator("count")
def count(data: Any, params: dict[str, Any]) -> int:
    check_params("count", params, ())
    if isinstance(data, list | tuple | dict):
        return len(data)
    raise OpError(
        "BAD_INPUT",
        f"count needs an array or an object as input, got {json_type(data)}",
        {"got": json_type(data)},
    )


@operator("take")
def take(data: Any, params: dict[str, Any]) -> list[Any]:
    check_params("take", params, ("n",))
    n = require("take", params, "n", "how many elements to keep, an integer >= 0")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise OpError(
            "BAD_PARAMS",
            f"take: param 'n' must be an integer >= 0, got {json_type(n)} {n!r}",
            {"param": "n"},
        )
    return list_input("take", data)[:n]


@operator("flatten")
def flatten(data: Any, params: dict[str, Any]) -> list[Any]:
    check_params("flatten", params, ())
    out: list[Any] = []
    for item in list_input("flatten", data):
        if isinstance(item, list | tuple):
            out.extend(item)
        else:
            out.append(item)
    return out


_MISSING = object()


def _parse_path(op: str, path: Any) -> list[str]:
    if not isinstance(path, str) or not path:
        raise OpError(
            "BAD_PARAMS",
            f"{op}: param 'path' must be a dotted path like 'a.b.0.c', got "
            f"{json_type(path)} {path!r}",
            {"param": "path"},
        )
    parts = path.split(".")
    # JSONPath habits: "$.a.b" and "$" mean the same as "a.b" and the whole input.
    if parts[0] == "$":
        parts = parts[1:]
    return parts


def _walk(value: Any, parts: list[str]) -> tuple[Any, int]:
    """The value at ``parts``, or ``(_MISSING, index of the first missing part)``."""
    for i, part in enumerate(parts):
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list | tuple):
            try:
                value = value[int(part)]
            except (ValueError, IndexError):
                value = _MISSING
        else:
            value = _MISSING
        if value is _MISSING:
            return _MISSING, i
    return value, -1


@operator("select")
def select(data: Any, params: dict[str, Any], op: str = "select") -> Any:
    check_params(op, params, ("path", "each", "default"))
    path = require(op, params, "path", "a dotted path like 'a.b.0.c'")
    parts = _parse_path(op, path)
    each = bool_param(op, params, "each", False)
    items = list_input(op, data) if each else [data]
    out = []
    for index, item in enumerate(items):
        value, missing_at = _walk(item, parts)
        if value is _MISSING:
            if "default" in params:
                value = params["default"]
            else:
                details: dict[str, Any] = {
                    "path": path,
                    "missing": ".".join(parts[: missing_at + 1]),
                }
                where = ""
                if each:
                    details["index"] = index
                    where = f" in element {index}"
                raise OpError(
                    "PATH_NOT_FOUND",
                    f"{op}: path {path!r} not found{where} (no {details['missing']!r}); "
                    "give param 'default' to use a value instead",
                    details,
                )
        out.append(value)
    return out if each else out[0]


@operator("json_path")
def json_path(data: Any, params: dict[str, Any]) -> Any:
    return select(data, params, op="json_path")


def _delimiter(op: str, params: dict[str, Any]) -> str:
    value = params.get("delimiter", ",")
    if not isinstance(value, str) or len(value) != 1:
        raise OpError(
            "BAD_PARAMS",
            f"{op}: param 'delimiter' must be a single character, got {value!r}",
            {"param": "delimiter"},
        )
    return value


@operator("csv_parse")
def csv_parse(data: Any, params: dict[str, Any]) -> list[Any]:
    check_params("csv_parse", params, ("delimiter", "header"))
    delimiter = _delimiter("csv_parse", params)
    header = bool_param("csv_parse", params, "header", True)
    if not isinstance(data, str):
        raise OpError(
            "BAD_INPUT", f"csv_parse needs a string as input, got {json_type(data)}",
            {"got": json_type(data)},
        )  # fmt: skip
    try:
        rows = [row for row in csv.reader(io.StringIO(data), delimiter=delimiter) if row]
    except csv.Error as exc:
        raise OpError("BAD_INPUT", f"csv_parse: invalid CSV: {exc}") from None
    if not header:
        return rows
    if not rows:
        return []
    names, out = rows[0], []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) > len(names):
            raise OpError(
                "BAD_INPUT",
                f"csv_parse: row {number} has {len(row)} fields but the header has {len(names)}",
                {"row": number},
            )
        record: dict[str, Any] = dict(zip(names, row, strict=False))
        for name in names[len(row) :]:
            record[name] = None
        out.append(record)
    return out


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


@operator("csv_format")
def csv_format(data: Any, params: dict[str, Any]) -> str:
    check_params("csv_format", params, ("delimiter", "columns", "header"))
    delimiter = _delimiter("csv_format", params)
    header = bool_param("csv_format", params, "header", True)
    rows = list_input("csv_format", data)
    columns = params.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise OpError(
            "BAD_PARAMS",
            f"csv_format: param 'columns' must be an array of strings, got {columns!r}",
            {"param": "columns"},
        )
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    if rows and all(isinstance(r, list | tuple) for r in rows):
        if columns is not None and header:
            writer.writerow(columns)
        writer.writerows([_cell(v) for v in row] for row in rows)
        return buffer.getvalue()
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise OpError(
                "BAD_INPUT",
                f"csv_format needs an array of objects (or of arrays); element {index} is "
                f"{json_type(row)}",
                {"index": index},
            )
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    if header and columns:
        writer.writerow(columns)
    writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)
    return buffer.getvalue()


@operator("__describe__")
def describe_ops(data: Any, params: dict[str, Any]) -> list[dict[str, str]]:
    return describe()

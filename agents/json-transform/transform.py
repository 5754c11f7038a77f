"""``normalize``: give records exported by spreadsheets and forms one predictable shape.

Input: a list of objects (or one object). For each object:

- keys become snake_case: ``"Full Name"`` and ``"fullName"`` both become ``"full_name"``;
- strings are trimmed, and an empty string becomes ``null``;
- strings that are plain decimal numbers become numbers (``"42"`` → ``42``, ``"-1.5"`` →
  ``-1.5``); ones with a leading zero such as ``"007"`` stay text, as codes and ZIPs do.

Params (all optional):

- ``rename``: ``{"old_key": "new_key"}``, applied after snake-casing;
- ``fields``: keep only these keys, in this order; a missing one becomes ``null``;
- ``numbers``: ``false`` keeps numeric strings as text (default ``true``).
"""

from __future__ import annotations

import re
from typing import Any

from tile_runtime import OpError, operator

PARAMS = ("rename", "fields", "numbers")
_INTEGER = re.compile(r"-?(?:0|[1-9][0-9]*)")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")


@operator("normalize", version="1")
def normalize(data: Any, params: dict[str, Any]) -> Any:
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise OpError(
            "BAD_PARAMS",
            f"normalize: unknown param(s) {', '.join(unknown)}; allowed: {', '.join(PARAMS)}",
            {"params": unknown},
        )
    rename = params.get("rename", {})
    fields = params.get("fields")
    numbers = params.get("numbers", True)
    if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
        raise OpError("BAD_PARAMS", "normalize: 'rename' must map keys to new key names")
    if fields is not None and not (
        isinstance(fields, list) and all(isinstance(f, str) for f in fields)
    ):
        raise OpError("BAD_PARAMS", "normalize: 'fields' must be a list of key names")
    if not isinstance(numbers, bool):
        raise OpError("BAD_PARAMS", "normalize: 'numbers' must be true or false")
    if isinstance(data, dict):
        return _record(data, 0, rename, fields, numbers)
    if not isinstance(data, list):
        raise OpError("BAD_INPUT", "normalize needs a list of objects or one object")
    return [_record(item, i, rename, fields, numbers) for i, item in enumerate(data)]


def snake_case(key: str) -> str:
    return _NOT_WORD.sub("_", _CAMEL.sub(r"\1_\2", key.strip()).lower()).strip("_")


def _record(
    item: Any, index: int, rename: dict[str, str], fields: list[str] | None, numbers: bool
) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise OpError("BAD_INPUT", f"normalize: element {index} is not an object: {item!r}")
    out: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in item.items():
        name = snake_case(key)
        name = rename.get(name, name)
        if name in out:
            # Silently keeping one of two columns would lose data nobody asked to drop.
            raise OpError(
                "BAD_INPUT",
                f"normalize: element {index}: keys {origin[name]!r} and {key!r} both become "
                f"{name!r}; rename one of them",
                {"index": index, "keys": [origin[name], key]},
            )
        out[name] = _value(value, numbers)
        origin[name] = key
    if fields is None:
        return out
    return {name: out.get(name) for name in fields}


def _value(value: Any, numbers: bool) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    if numbers and _INTEGER.fullmatch(text):
        return int(text)
    if numbers and _DECIMAL.fullmatch(text):
        return float(text)
    return text

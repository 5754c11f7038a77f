"""The ``textstats.wordfreq`` operator, as the tile runtime inside a container runs it.

Imported by the runtime (``PLOINKY_TILE_MODULES=textstats_ops``) from the mounted
``tile_ops`` directory, never by the daemon.

Input: a string, or a list of strings counted as one text. Output: the ``top`` most frequent
words, ``[{"word": "the", "count": 3}, ...]``, most frequent first, ties alphabetical.
"""

from __future__ import annotations

from typing import Any

# Both resolve only inside the tile runtime: ``tile_runtime`` is the mounted runtime package and
# ``textstats_words`` sits beside this file on the runtime's module path.
from textstats_words import VERSION, TextCounter, options_from_params  # type: ignore[import-not-found]
from tile_runtime import OpError, operator  # type: ignore[import-not-found]

NAME = "textstats.wordfreq"


@operator(NAME, version=VERSION)
def wordfreq(data: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        options = options_from_params(params)
    except ValueError as exc:
        raise OpError("BAD_PARAMS", f"{NAME}: {exc}", {"op": NAME}) from None
    counter = TextCounter(options)
    if isinstance(data, str):
        counter.feed_text(data)
    elif isinstance(data, list) and all(isinstance(item, str) for item in data):
        for item in data:
            counter.feed_text(item)
    else:
        raise OpError(
            "BAD_INPUT",
            f"{NAME} needs a string or a list of strings as input, got {_json_type(data)}",
            {"got": _json_type(data)},
        )
    return counter.top_words()


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "a list with non-string items"
    names = {type(None): "null", bool: "boolean", int: "number", float: "number", dict: "object"}
    return names.get(type(value), type(value).__name__)

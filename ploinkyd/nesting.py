"""How deep a parsed JSON or TOML value nests, measured without recursion.

Readers of untrusted documents (task files, API bodies, config files) refuse values nested
past a limit: deeper ones crash code that recurses over them (pydantic, ``json.dumps``).
"""

from __future__ import annotations

from typing import Any


def nesting(value: Any, stop_above: int) -> int:
    """The depth of arrays and objects (lists and dicts) in ``value``; a scalar is 0.

    Stops walking once past ``stop_above``: the answer is then some depth above it.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        deepest = max(deepest, depth)
        if depth > stop_above:
            break
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest

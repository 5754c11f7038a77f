"""The control API's roles, ranked: a viewer reads, an operator submits, cancels and backs up,
an admin also manages plugins, agents, tokens and keys."""

from __future__ import annotations

from typing import Literal

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def allows(role: str | None, needed: Role | None) -> bool:
    """Whether ``role`` may call an endpoint needing ``needed`` (None: public)."""
    return needed is None or (role is not None and ROLE_RANK[role] >= ROLE_RANK[needed])

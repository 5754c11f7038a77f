"""Tiles: operators run in warm sandboxed containers, compiled, cached (SPEC §6)."""

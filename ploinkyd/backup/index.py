"""The in-memory index: where every blob lives, built from the ``index/`` files (and from pack
headers for packs no index lists yet).

Memory is the constraint on big repositories (restic's most common complaint), so an entry is
one dict slot: a 33-byte key (type || id) and one int packing pack number, offset, length and
raw length, about 150 bytes per blob instead of the ~400 a tuple of objects would take.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ploinkyd.backup.format import IndexPack

_BITS = 40
_MASK = (1 << _BITS) - 1


@dataclass(frozen=True)
class BlobLocation:
    pack: str
    key_id: bytes
    offset: int
    length: int
    raw_length: int


class Index:
    def __init__(self) -> None:
        self._blobs: dict[bytes, int] = {}
        self.packs: list[str] = []
        self.pack_keys: list[bytes] = []
        self.pack_sizes: list[int] = []
        self._pack_no: dict[str, int] = {}
        self.files: set[str] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, key: bytes) -> bool:
        return key in self._blobs

    def has_pack(self, pack_id: str) -> bool:
        return pack_id in self._pack_no

    def add_pack(self, pack: IndexPack) -> None:
        no = self._pack_no.get(pack.id)
        if no is None:
            no = len(self.packs)
            self._pack_no[pack.id] = no
            self.packs.append(pack.id)
            self.pack_keys.append(bytes.fromhex(pack.key))
            self.pack_sizes.append(pack.size)
        for btype, bid, offset, length, raw_length in pack.blobs:
            key = bytes([btype]) + bytes.fromhex(bid)
            # A blob stored twice (two concurrent backups) keeps its first location.
            self._blobs.setdefault(
                key,
                (((no << _BITS | offset) << _BITS | length) << _BITS) | raw_length,
            )

    def get(self, key: bytes) -> BlobLocation | None:
        packed = self._blobs.get(key)
        if packed is None:
            return None
        raw_length = packed & _MASK
        length = (packed >> _BITS) & _MASK
        offset = (packed >> 2 * _BITS) & _MASK
        no = packed >> 3 * _BITS
        return BlobLocation(self.packs[no], self.pack_keys[no], offset, length, raw_length)

    def keys(self) -> Iterator[bytes]:
        return iter(self._blobs)

    def by_pack(self, keys: Iterable[bytes]) -> dict[str, list[tuple[bytes, BlobLocation]]]:
        """Group blob keys by the pack that holds them, each group sorted by offset."""
        groups: dict[str, list[tuple[bytes, BlobLocation]]] = {}
        for key in keys:
            loc = self.get(key)
            if loc is not None:
                groups.setdefault(loc.pack, []).append((key, loc))
        for group in groups.values():
            group.sort(key=lambda item: item[1].offset)
        return groups

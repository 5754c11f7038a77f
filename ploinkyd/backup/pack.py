"""Packs: many sealed blobs in one immutable object, with a sealed header listing them.

Layout (``docs/backup-format.md``)::

    blob_0 || blob_1 || ... || sealed header || trailer
    blob_i  = nonce(12) || AES-256-GCM(zstd(data) or data) || tag(16),  AAD = type || blob id
    header  = nonce || AES-GCM(entries) || tag,                          AAD = b"pack" || key id
    entry   = type (u8) || blob id (32) || stored length (u32) || raw length (u32, 0 = stored raw)
    trailer = b"PKP1" || key id (4) || header length (u32 LE)

Offsets are implicit (blobs are back to back), so the header alone rebuilds a pack's index
entries: ``rebuild-index`` and orphan-pack adoption read only the tail of each pack. The pack's
name is the SHA-256 of all its bytes, which ``verify --read-data`` checks without any key.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from ploinkyd.backup.crypto import Keyring
from ploinkyd.backup.format import IndexPack
from ploinkyd.errors import RepositoryDamaged

MAGIC = b"PKP1"
TRAILER = struct.Struct("<4s4sI")
ENTRY = struct.Struct("<B32sII")
# Read this much of a pack's tail in one request: it holds the header of any pack with up to
# ~400 blobs, so usually one round trip reads a whole header.
TAIL_GUESS = 16 * 1024


def blob_aad(btype: int, bid: bytes) -> bytes:
    return bytes([btype]) + bid


@dataclass
class PackEntry:
    type: int
    id: bytes
    offset: int
    length: int
    raw_length: int


@dataclass
class PackBuilder:
    """Collects sealed blobs for one pack under one data key."""

    key_id: bytes
    parts: list[bytes] = field(default_factory=list)
    entries: list[PackEntry] = field(default_factory=list)
    size: int = 0

    def add(self, btype: int, bid: bytes, sealed: bytes, raw_length: int) -> None:
        self.entries.append(PackEntry(btype, bid, self.size, len(sealed), raw_length))
        self.parts.append(sealed)
        self.size += len(sealed)

    def finish(self, ring: Keyring) -> tuple[str, bytes, IndexPack]:
        header = b"".join(ENTRY.pack(e.type, e.id, e.length, e.raw_length) for e in self.entries)
        sealed = ring.seal(header, b"pack" + self.key_id, self.key_id)
        self.parts.append(sealed)
        self.parts.append(TRAILER.pack(MAGIC, self.key_id, len(sealed)))
        data = b"".join(self.parts)
        self.parts = []
        pack_id = hashlib.sha256(data).hexdigest()
        return pack_id, data, index_entry(pack_id, self.key_id, len(data), self.entries)


def index_entry(pack_id: str, key_id: bytes, size: int, entries: list[PackEntry]) -> IndexPack:
    return IndexPack(
        id=pack_id,
        key=key_id.hex(),
        size=size,
        blobs=[(e.type, e.id.hex(), e.offset, e.length, e.raw_length) for e in entries],
    )


def parse_trailer(tail: bytes, what: str) -> tuple[bytes, int]:
    if len(tail) < TRAILER.size:
        raise RepositoryDamaged(f"{what} is too short to be a pack", details={"object": what})
    magic, key_id, header_len = TRAILER.unpack(tail[-TRAILER.size :])
    if magic != MAGIC:
        raise RepositoryDamaged(f"{what} has no pack trailer", details={"object": what})
    return key_id, header_len


def parse_header(ring: Keyring, key_id: bytes, sealed: bytes, what: str) -> list[PackEntry]:
    plain = ring.open(sealed, b"pack" + key_id, key_id, f"header of {what}")
    if len(plain) % ENTRY.size:
        raise RepositoryDamaged(f"header of {what} has a partial entry", details={"object": what})
    entries = []
    offset = 0
    for btype, bid, length, raw_length in ENTRY.iter_unpack(plain):
        entries.append(PackEntry(btype, bid, offset, length, raw_length))
        offset += length
    return entries


def split_pack(ring: Keyring, data: bytes, what: str) -> tuple[bytes, list[PackEntry]]:
    """Key id and entries of a whole pack held in memory, with its layout checked."""
    key_id, header_len = parse_trailer(data, what)
    start = len(data) - TRAILER.size - header_len
    if start < 0:
        raise RepositoryDamaged(f"{what}: header length exceeds the pack", details={"object": what})
    entries = parse_header(ring, key_id, data[start : start + header_len], what)
    if entries and entries[-1].offset + entries[-1].length != start:
        raise RepositoryDamaged(f"{what}: blobs do not fill the pack", details={"object": what})
    return key_id, entries

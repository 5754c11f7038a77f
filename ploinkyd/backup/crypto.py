"""Keys and sealing: the master keyring, password-wrapped key files, AES-256-GCM objects.

A repository has one keyring (see ``docs/backup-format.md``):

- ``id_key``: the HMAC-SHA256 key chunk ids are computed with, so ids reveal nothing about
  content to someone without the key (plain SHA-256 ids would let anyone confirm a guessed file);
- ``chunker_seed``: keys the FastCDC gear table, so chunk boundaries do not leak file structure;
- ``data_keys``: AES-256 keys by 4-byte key id. Exactly one is ``current`` and encrypts every new
  object; the others were rotated out and only decrypt what they wrote until ``prune --rewrite``
  re-encrypts it.

The keyring is stored once per password in ``keys/<id>``, wrapped by a key derived from the
password with scrypt (cost calibrated at ``init`` and recorded in the file).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ploinkyd.errors import RepositoryDamaged, UserError

NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
KEY_ID_BYTES = 4
OBJECT_VERSION = 1
_WRAP_AAD = b"ploinkyd keyring v1"

# scrypt cost: r=8, p=1 and the largest power-of-two N whose derivation stays under the target
# time, capped so memory (128 * r * N bytes) stays at 64 MiB (restic caps at 60 MiB): every
# command on a small machine pays it, and the cost to an attacker grows with N only linearly.
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_MIN_LOG_N = 10
SCRYPT_MAX_LOG_N = 16
SCRYPT_TARGET_S = 0.3


class WrongPassword(UserError):
    code = "WRONG_PASSWORD"
    exit_code = 2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass
class Keyring:
    """Every secret of one repository. ``current`` names the data key new objects use."""

    id_key: bytes
    chunker_seed: int
    data_keys: dict[bytes, bytes]
    current: bytes
    created: dict[bytes, float] = field(default_factory=dict)
    _ciphers: dict[bytes, AESGCM] = field(default_factory=dict, repr=False)

    @classmethod
    def generate(cls) -> Keyring:
        kid = secrets.token_bytes(KEY_ID_BYTES)
        # A zero seed would select the library's default, unkeyed gear table; the chunker
        # shifts the seed left by one inside 64 bits, so it must fit in 63.
        seed = (int.from_bytes(secrets.token_bytes(8), "little") >> 1) | 1
        return cls(
            id_key=secrets.token_bytes(32),
            chunker_seed=seed,
            data_keys={kid: AESGCM.generate_key(256)},
            current=kid,
            created={kid: time.time()},
        )

    def rotate(self) -> bytes:
        """Add a fresh data key and make it current; the old ones stay for reading."""
        kid = secrets.token_bytes(KEY_ID_BYTES)
        while kid in self.data_keys:
            kid = secrets.token_bytes(KEY_ID_BYTES)
        self.data_keys[kid] = AESGCM.generate_key(256)
        self.created[kid] = time.time()
        self.current = kid
        return kid

    def drop(self, kids: set[bytes]) -> None:
        for kid in kids - {self.current}:
            self.data_keys.pop(kid, None)
            self.created.pop(kid, None)
            self._ciphers.pop(kid, None)

    def blob_id(self, data: bytes | memoryview) -> bytes:
        return hmac.digest(self.id_key, data, hashlib.sha256)

    def cipher(self, kid: bytes) -> AESGCM:
        aead = self._ciphers.get(kid)
        if aead is None:
            key = self.data_keys.get(kid)
            if key is None:
                # Every key file holds every data key still in use (rotation removes the other
                # passwords' files; `prune --rewrite` drops a key only once nothing uses it),
                # so an unknown key id means a damaged or foreign object, not a missing grant.
                raise RepositoryDamaged(
                    f"an object names data key {kid.hex()}, which this repository's keyring "
                    "does not hold: the object is damaged or comes from another repository",
                    code="KEY_NOT_HELD",
                    details={"key_id": kid.hex()},
                )
            aead = self._ciphers[kid] = AESGCM(key)
        return aead

    def seal(self, plaintext: bytes | memoryview, aad: bytes, kid: bytes | None = None) -> bytes:
        """nonce || AES-256-GCM(plaintext) || tag under ``kid`` (default: the current key)."""
        nonce = os.urandom(NONCE)
        return nonce + self.cipher(kid or self.current).encrypt(nonce, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, kid: bytes, what: str) -> bytes:
        view = memoryview(sealed)
        if len(view) < OVERHEAD:
            raise RepositoryDamaged(f"{what} is truncated", details={"object": what})
        try:
            aead = self.cipher(kid)
        except RepositoryDamaged as exc:
            raise RepositoryDamaged(
                f"{what}: {exc.message}", code=exc.code, details={"object": what, **exc.details}
            ) from None
        try:
            # Slices of a memoryview: no copy of a multi-megabyte blob before decrypting it.
            return aead.decrypt(view[:NONCE], view[NONCE:], aad)
        except InvalidTag:
            raise RepositoryDamaged(
                f"{what} fails authentication: its bytes changed after it was written",
                details={"object": what},
            ) from None

    def to_json(self) -> dict[str, object]:
        return {
            "id_key": b64(self.id_key),
            "chunker_seed": self.chunker_seed,
            "current": self.current.hex(),
            "data_keys": [
                {"id": k.hex(), "key": b64(v), "created": self.created.get(k, 0.0)}
                for k, v in self.data_keys.items()
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Keyring:
        ring = _KeyringModel.model_validate(data)
        keys = {bytes.fromhex(k.id): unb64(k.key) for k in ring.data_keys}
        return cls(
            id_key=unb64(ring.id_key),
            chunker_seed=ring.chunker_seed,
            data_keys=keys,
            current=bytes.fromhex(ring.current),
            created={bytes.fromhex(k.id): k.created for k in ring.data_keys},
        )


class _DataKey(BaseModel):
    id: str
    key: str
    created: float = 0.0


class _KeyringModel(BaseModel):
    id_key: str
    chunker_seed: int
    current: str
    data_keys: list[_DataKey]


class KeyFile(BaseModel):
    """``keys/<id>``: the keyring wrapped under one password (plaintext JSON, the only
    unencrypted object besides ``config``)."""

    model_config = ConfigDict(extra="forbid")

    version: int = 1
    created: float
    host: str = ""
    user: str = ""
    kdf: str = "scrypt"
    log_n: int = Field(ge=SCRYPT_MIN_LOG_N, le=SCRYPT_MAX_LOG_N + 4)
    r: int = Field(ge=1, le=32)
    p: int = Field(ge=1, le=16)
    salt: str
    data: str

    @field_validator("salt", "data")
    @classmethod
    def _base64(cls, value: str, info: ValidationInfo) -> str:
        # A damaged key file must be reported as damaged, not crash unwrap() with a
        # binascii error or a too-short nonce.
        raw = unb64(value)
        if info.field_name == "data" and len(raw) < OVERHEAD:
            raise ValueError("too short to hold a wrapped keyring")
        return value


def derive(password: str, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    kdf = Scrypt(salt=salt, length=32, n=2**log_n, r=r, p=p)
    return kdf.derive(password.encode("utf-8"))


def calibrate(target_s: float = SCRYPT_TARGET_S) -> int:
    """The largest scrypt log2(N) within ``target_s`` on this machine (restic calibrates too)."""
    log_n = 14
    start = time.perf_counter()
    derive("calibrate", b"0" * 16, log_n, SCRYPT_R, SCRYPT_P)
    elapsed = max(time.perf_counter() - start, 1e-4)
    while log_n < SCRYPT_MAX_LOG_N and elapsed * 2 <= target_s:
        log_n += 1
        elapsed *= 2
    return log_n


def wrap(ring: Keyring, password: str, log_n: int, host: str = "", user: str = "") -> KeyFile:
    import json

    salt = secrets.token_bytes(16)
    key = derive(password, salt, log_n, SCRYPT_R, SCRYPT_P)
    nonce = os.urandom(NONCE)
    body = json.dumps(ring.to_json()).encode()
    sealed = nonce + AESGCM(key).encrypt(nonce, body, _WRAP_AAD)
    return KeyFile(
        created=time.time(),
        host=host,
        user=user,
        log_n=log_n,
        r=SCRYPT_R,
        p=SCRYPT_P,
        salt=b64(salt),
        data=b64(sealed),
    )


def unwrap(keyfile: KeyFile, password: str) -> Keyring | None:
    """The keyring, or None when ``password`` is not this key file's password."""
    import json

    key = derive(password, unb64(keyfile.salt), keyfile.log_n, keyfile.r, keyfile.p)
    sealed = unb64(keyfile.data)
    try:
        body = AESGCM(key).decrypt(sealed[:NONCE], sealed[NONCE:], _WRAP_AAD)
    except InvalidTag:
        return None
    return Keyring.from_json(json.loads(body))


# Sealed repository objects other than packs (index, snapshots, locks):
#   version (1 byte) || key id (4 bytes) || nonce || AES-GCM(zstd(json)) || tag
# with the object's kind ("index", "snapshot", "lock") as associated data, so an index file
# renamed into snapshots/ does not decrypt.
_zc = zstandard.ZstdCompressor(level=3)


def seal_object(ring: Keyring, kind: str, plaintext: bytes) -> bytes:
    header = bytes([OBJECT_VERSION]) + ring.current
    return header + ring.seal(_zc.compress(plaintext), kind.encode() + header)


def open_object(ring: Keyring, kind: str, data: bytes, what: str) -> bytes:
    if len(data) < 1 + KEY_ID_BYTES + OVERHEAD or data[0] != OBJECT_VERSION:
        raise RepositoryDamaged(f"{what} is not a ploinkyd {kind} object", details={"object": what})
    header = data[: 1 + KEY_ID_BYTES]
    body = ring.open(data[len(header) :], kind.encode() + header, header[1:], what)
    try:
        return zstandard.ZstdDecompressor().decompress(body)
    except zstandard.ZstdError as exc:
        raise RepositoryDamaged(f"{what} does not decompress: {exc}") from None


def object_key_id(data: bytes) -> bytes:
    return data[1 : 1 + KEY_ID_BYTES]

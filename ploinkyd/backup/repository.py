"""A backup repository on a storage backend: open, index, blobs, trees and snapshots.

Write ordering is what keeps the repository consistent without a journal: packs first, then
the index file naming them, then the snapshot naming the root tree. A backup killed at any
point leaves at most packs no index lists; the next backup adopts them (reads their headers
and indexes them), so their data is not uploaded again, and ``prune`` removes what stays unused.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import zstandard
from pydantic import ValidationError

from ploinkyd.backup import crypto
from ploinkyd.backup.crypto import KeyFile, Keyring, WrongPassword
from ploinkyd.backup.format import (
    CONFIG,
    DATA_DIR,
    FORMAT_VERSION,
    INDEX,
    KEYS,
    SNAPSHOTS,
    TREE,
    ChunkerParams,
    IndexFile,
    IndexPack,
    Node,
    RepoConfig,
    Snapshot,
    Tree,
    pack_name,
)
from ploinkyd.backup.index import BlobLocation, Index
from ploinkyd.backup.pack import (
    TAIL_GUESS,
    TRAILER,
    blob_aad,
    index_entry,
    parse_header,
    parse_trailer,
)
from ploinkyd.backup.storage import Backend
from ploinkyd.errors import (
    ConflictError,
    NotFoundError,
    ObjectNotFound,
    RepositoryDamaged,
    UserError,
)

log = logging.getLogger("ploinkyd.backup")

TREE_CACHE = 2048


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


class Repository:
    """An open repository: its config, keyring and in-memory index.

    Thread-safe for concurrent blob reads and (through :class:`BlobWriter`) writes.
    """

    def __init__(
        self, backend: Backend, config: RepoConfig, keyring: Keyring, key_name: str
    ) -> None:
        self.backend = backend
        self.config = config
        self.keyring = keyring
        self.key_name = key_name
        self.index = Index()
        self._trees: OrderedDict[bytes, Tree] = OrderedDict()
        self._tree_lock = threading.Lock()
        self._dctx = threading.local()
        # Kept so key operations can re-wrap the keyring for the password that opened it.
        self._password = ""

    @property
    def url(self) -> str:
        return self.backend.url

    # -- creation and opening ----------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: str,
        *,
        compression: str = "auto",
        chunker: ChunkerParams | None = None,
        pack_size: int | None = None,
        log_n: int | None = None,
    ) -> Repository:
        """Create a repository. Refuses when ``config`` exists (never overwrite a repository)."""
        _check_password(password)
        try:
            backend.stat(CONFIG)
        except ObjectNotFound:
            pass
        else:
            raise ConflictError(
                f"a repository already exists at {backend.url}",
                code="REPOSITORY_EXISTS",
                details={"url": backend.url},
            )
        from ploinkyd.backup.writer import parse_compression

        parse_compression(compression)
        config = RepoConfig(
            id=secrets.token_hex(16),
            created=time.time(),
            chunker=chunker or ChunkerParams(),
            compression=compression,
            **({"pack_size": pack_size} if pack_size else {}),
        )
        ring = Keyring.generate()
        keyfile = crypto.wrap(
            ring, password, log_n or crypto.calibrate(), socket.gethostname(), _user()
        )
        key_name = _put_keyfile(backend, keyfile)
        # config last: a repository without config is an unfinished init, not a repository.
        backend.put(CONFIG, config.model_dump_json(indent=2).encode())
        repo = cls(backend, config, ring, key_name)
        repo._password = password
        return repo

    @classmethod
    def open(cls, backend: Backend, password: str) -> Repository:
        """Open with any password that has a key file; :class:`WrongPassword` otherwise."""
        try:
            raw = backend.get(CONFIG)
        except ObjectNotFound:
            raise NotFoundError(
                f"no repository at {backend.url}: create one with `ploinkyd backup init`",
                code="REPOSITORY_NOT_FOUND",
                details={"url": backend.url},
            ) from None
        try:
            config = RepoConfig.model_validate_json(raw)
        except ValidationError as exc:
            raise RepositoryDamaged(
                f"{backend.url}/config is not a ploinkyd repository config: {exc.errors()[0]}",
                details={"object": CONFIG},
            ) from None
        if config.version != FORMAT_VERSION:
            raise UserError(
                f"{backend.url} is a version {config.version} repository; this ploinkyd "
                f"reads version {FORMAT_VERSION} only",
                code="UNSUPPORTED_VERSION",
                details={"url": backend.url, "version": config.version},
            )
        damaged: list[str] = []
        for name, keyfile in _keyfiles(backend, damaged):
            ring = crypto.unwrap(keyfile, password)
            if ring is not None:
                repo = cls(backend, config, ring, name)
                repo._password = password
                return repo
        if damaged:
            raise RepositoryDamaged(
                f"no key file of {backend.url} opens with this password, and "
                f"{', '.join(damaged)} {'is' if len(damaged) == 1 else 'are'} damaged: the "
                "password may be wrong or its key file damaged; try another password",
                details={"url": backend.url, "objects": damaged},
            )
        raise WrongPassword(
            f"wrong password for the repository at {backend.url}: no key file opens with it",
            details={"url": backend.url},
        )

    # -- keys --------------------------------------------------------------------------------

    def key_list(self) -> list[dict[str, Any]]:
        out = []
        for name, keyfile in _keyfiles(self.backend):
            out.append(
                {
                    "id": name.removeprefix(KEYS),
                    "current": name == self.key_name,
                    "created": keyfile.created,
                    "host": keyfile.host,
                    "user": keyfile.user,
                    "kdf": f"scrypt N=2^{keyfile.log_n} r={keyfile.r} p={keyfile.p}",
                }
            )
        return out

    def key_add(self, password: str, log_n: int | None = None) -> str:
        _check_password(password)
        keyfile = crypto.wrap(
            self.keyring, password, log_n or crypto.calibrate(), socket.gethostname(), _user()
        )
        return _put_keyfile(self.backend, keyfile).removeprefix(KEYS)

    def key_remove(self, key_id: str) -> None:
        name = self._key_name(key_id)
        if name == self.key_name:
            raise UserError(
                "refusing to remove the key this password opened; use another password to "
                "remove it, or `key passwd` to change this one",
                code="KEY_IN_USE",
            )
        self.backend.delete(name)

    def key_passwd(self, password: str, log_n: int | None = None) -> str:
        old = self.key_name
        new = self.key_add(password, log_n)
        self.key_name = KEYS + new
        self._password = password
        self.backend.delete(old)
        return new

    def key_rotate(self, log_n: int | None = None) -> dict[str, Any]:
        """Make a new data key current, re-wrap the keyring for this password and remove every
        other password's key file (after a compromise the old passwords must stop opening new
        data; re-add them with ``key add``). Old data stays readable under the old keys until
        ``prune --rewrite`` re-encrypts it."""
        old_name = self.key_name
        others = [n for n, _ in _keyfiles(self.backend) if n != old_name]
        new_kid = self.keyring.rotate()
        self._rewrap(log_n)
        for name in others:
            self.backend.delete(name)
        return {
            "key": self.key_name.removeprefix(KEYS),
            "data_key": new_kid.hex(),
            "removed_keys": [n.removeprefix(KEYS) for n in others],
            "old_data_keys": [k.hex() for k in self.keyring.data_keys if k != new_kid],
        }

    def _rewrap(self, log_n: int | None) -> None:
        old = self.key_name
        current = _read_keyfile(self.backend, old)
        password = self._password
        keyfile = crypto.wrap(
            self.keyring, password, log_n or current.log_n, socket.gethostname(), _user()
        )
        self.key_name = _put_keyfile(self.backend, keyfile)
        self.backend.delete(old)

    def drop_keys(self, kids: set[bytes]) -> None:
        """Forget rotated-out data keys nothing is encrypted with any more."""
        if kids - {self.keyring.current}:
            self.keyring.drop(kids)
            self._rewrap(None)

    def _key_name(self, key_id: str) -> str:
        matches = [n for n, _ in _keyfiles(self.backend) if n.removeprefix(KEYS).startswith(key_id)]
        if len(matches) != 1:
            raise NotFoundError(
                f"no single key matches {key_id!r} ({len(matches)} do); see `backup key list`",
                code="KEY_NOT_FOUND",
            )
        return matches[0]

    # -- index -------------------------------------------------------------------------------

    def load_index(self, on_damaged: Callable[[str], None] | None = None) -> Index:
        """Read every index file not read yet (new ones appear while concurrent backups run).

        A damaged index file raises, unless ``on_damaged`` is given: then it is reported there
        and skipped (a restore then finds its packs through :meth:`adopt_orphans`)."""
        names = [o.name for o in self.backend.list(INDEX) if o.name not in self.index.files]

        def read(name: str) -> IndexFile | None:
            try:
                return self.read_index_file(name)
            except (RepositoryDamaged, UserError) as exc:  # UserError: a key id it lacks
                if on_damaged is None:
                    raise
                on_damaged(f"{name} is damaged and was skipped: {exc.message}")
                return None

        with ThreadPoolExecutor(4) as pool:
            for name, idx in zip(names, pool.map(read, names), strict=True):
                if idx is None:
                    continue
                for pack in idx.packs:
                    self.index.add_pack(pack)
                self.index.files.add(name)
        return self.index

    def read_index_file(self, name: str) -> IndexFile:
        data = crypto.open_object(self.keyring, "index", self.backend.get(name), name)
        try:
            return IndexFile.model_validate_json(data)
        except ValidationError as exc:
            raise RepositoryDamaged(f"{name} is not a valid index: {exc.errors()[0]}") from None

    def save_index(self, packs: list[IndexPack], supersedes: Iterable[str] = ()) -> str:
        body = IndexFile(packs=packs, supersedes=sorted(supersedes)).model_dump_json().encode()
        sealed = crypto.seal_object(self.keyring, "index", body)
        name = INDEX + hashlib.sha256(sealed).hexdigest()
        self.backend.put(name, sealed)
        self.index.files.add(name)
        return name

    def orphan_packs(self) -> list[tuple[str, int]]:
        """Packs in ``data/`` that no loaded index lists, with their sizes."""
        out = []
        for info in self.backend.list(DATA_DIR):
            pack_id = info.name.rsplit("/", 1)[-1]
            if not self.index.has_pack(pack_id):
                out.append((pack_id, info.size))
        return out

    def read_pack_header(self, pack_id: str, size: int | None = None) -> IndexPack:
        name = pack_name(pack_id)
        tail = self.backend.get(name, -TAIL_GUESS)
        key_id, header_len = parse_trailer(tail, name)
        need = TRAILER.size + header_len
        if need > len(tail):
            tail = self.backend.get(name, -need)
            if len(tail) < need:
                raise RepositoryDamaged(f"{name}: header length exceeds the pack")
        sealed = tail[len(tail) - need : len(tail) - TRAILER.size]
        entries = parse_header(self.keyring, key_id, sealed, name)
        if size is None:
            size = self.backend.stat(name).size
        return index_entry(pack_id, key_id, size, entries)

    def adopt_orphans(self) -> list[IndexPack]:
        """Index the packs an interrupted backup left behind so their blobs are reused.
        A pack that does not parse is left for ``verify`` and ``prune`` to report and remove."""
        adopted = []
        for pack_id, size in self.orphan_packs():
            try:
                entry = self.read_pack_header(pack_id, size)
            except (RepositoryDamaged, UserError, ObjectNotFound) as exc:
                log.warning("pack %s is not usable and is left for prune: %s", pack_id, exc)
                continue
            self.index.add_pack(entry)
            adopted.append(entry)
        return adopted

    # -- blobs -------------------------------------------------------------------------------

    def locate(self, btype: int, bid: bytes) -> BlobLocation:
        loc = self.index.get(bytes([btype]) + bid)
        if loc is None:
            raise RepositoryDamaged(
                f"blob {bid.hex()} is referenced but no index lists it",
                code="BLOB_MISSING",
                details={"blob": bid.hex()},
            )
        return loc

    def load_blob(self, btype: int, bid: bytes) -> bytes:
        loc = self.locate(btype, bid)
        sealed = self.backend.get(pack_name(loc.pack), loc.offset, loc.length)
        return self.decode_blob(btype, bid, loc, sealed)

    def decode_blob(
        self, btype: int, bid: bytes, loc: BlobLocation, sealed: bytes | memoryview
    ) -> bytes:
        """Decrypt, decompress and check one blob against its id."""
        what = f"blob {bid.hex()[:16]} in pack {loc.pack[:16]}"
        if len(sealed) != loc.length:
            raise RepositoryDamaged(f"{what} is truncated", details={"pack": loc.pack})
        payload = self.keyring.open(sealed, blob_aad(btype, bid), loc.key_id, what)
        if loc.raw_length:
            dctx = getattr(self._dctx, "d", None)
            if dctx is None:
                dctx = self._dctx.d = zstandard.ZstdDecompressor()
            try:
                payload = dctx.decompress(payload, max_output_size=loc.raw_length)
            except zstandard.ZstdError as exc:
                raise RepositoryDamaged(f"{what} does not decompress: {exc}") from None
        if not hmac.compare_digest(self.keyring.blob_id(payload), bid):
            raise RepositoryDamaged(f"{what} does not match its id", details={"pack": loc.pack})
        return payload

    # -- trees -------------------------------------------------------------------------------

    def load_tree(self, tree_id: str | bytes) -> Tree:
        bid = bytes.fromhex(tree_id) if isinstance(tree_id, str) else tree_id
        with self._tree_lock:
            tree = self._trees.get(bid)
            if tree is not None:
                self._trees.move_to_end(bid)
                return tree
        raw = self.load_blob(TREE, bid)
        try:
            # json.loads, not model_validate_json: names that are not UTF-8 travel as lone
            # surrogates (``\udcXX``), which pydantic's JSON parser rejects.
            tree = Tree.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            raise RepositoryDamaged(f"tree {bid.hex()} is not valid: {_first_error(exc)}") from None
        with self._tree_lock:
            self._trees[bid] = tree
            while len(self._trees) > TREE_CACHE:
                self._trees.popitem(last=False)
        return tree

    @staticmethod
    def encode_tree(nodes: list[Node]) -> bytes:
        # Equivalent to model_dump(exclude_defaults=True), at a fraction of its cost per node.
        return json.dumps(
            {
                "nodes": [
                    {k: v for k, v in n.__dict__.items() if v != _NODE_DEFAULTS.get(k, _REQUIRED)}
                    for n in nodes
                ]
            },
            separators=(",", ":"),
        ).encode()

    # -- snapshots ---------------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        body = _snapshot_body(snap)
        # The id is keyed on the plaintext, so re-encrypting (prune --rewrite) keeps it.
        sid = hmac.digest(self.keyring.id_key, b"snapshot" + body, hashlib.sha256).hex()
        self.backend.put(SNAPSHOTS + sid, crypto.seal_object(self.keyring, "snapshot", body))
        return sid

    def rewrite_snapshot(self, sid: str, snap: Snapshot) -> None:
        """Re-seal a snapshot under the current key, keeping its name."""
        body = _snapshot_body(snap)
        self.backend.put(SNAPSHOTS + sid, crypto.seal_object(self.keyring, "snapshot", body))

    def read_snapshot(self, sid: str) -> Snapshot:
        name = SNAPSHOTS + sid
        data = crypto.open_object(self.keyring, "snapshot", self.backend.get(name), name)
        try:
            return Snapshot.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            raise RepositoryDamaged(
                f"{name} is not a valid snapshot: {_first_error(exc)}"
            ) from None

    def snapshots(self) -> list[tuple[str, Snapshot]]:
        """Every snapshot, oldest first."""
        names = [o.name.removeprefix(SNAPSHOTS) for o in self.backend.list(SNAPSHOTS)]
        with ThreadPoolExecutor(4) as pool:
            snaps = list(zip(names, pool.map(self.read_snapshot, names), strict=True))
        snaps.sort(key=lambda item: (item[1].time, item[0]))
        return snaps

    def find_snapshot(self, ref: str) -> tuple[str, Snapshot]:
        """``latest``, ``latest:JOB`` or an id prefix of at least 4 characters."""
        if ref == "latest" or ref.startswith("latest:"):
            snaps = self.snapshots()
            job = ref.partition(":")[2]
            chosen = [s for s in snaps if not job or s[1].job == job]
            if not chosen:
                raise NotFoundError(
                    f"no snapshot{' of job ' + job if job else ''} in {self.url}",
                    code="SNAPSHOT_NOT_FOUND",
                )
            return chosen[-1]
        # Read only the snapshots the prefix names: one damaged snapshot file must not make
        # every other snapshot unrestorable.
        names = [o.name.removeprefix(SNAPSHOTS) for o in self.backend.list(SNAPSHOTS)]
        matches = sorted(n for n in names if n.startswith(ref.lower())) if len(ref) >= 4 else []
        if len(matches) != 1:
            raise NotFoundError(
                f"{'no' if not matches else 'more than one'} snapshot matches {ref!r}; "
                "give more of the id (see `ploinkyd backup list`) or `latest`",
                code="SNAPSHOT_NOT_FOUND",
                details={"ref": ref, "matches": [m[:12] for m in matches]},
            )
        return matches[0], self.read_snapshot(matches[0])

    def delete_snapshot(self, sid: str) -> None:
        self.backend.delete(SNAPSHOTS + sid)


_REQUIRED = object()
_NODE_DEFAULTS = {
    name: field.default for name, field in Node.model_fields.items() if not field.is_required()
}


def _snapshot_body(snap: Snapshot) -> bytes:
    # json.dumps, not model_dump_json: paths and warnings may hold file names that are not
    # UTF-8 (lone surrogates), which pydantic refuses to serialise; json escapes them.
    return json.dumps(snap.model_dump(), separators=(",", ":")).encode()


def _first_error(exc: ValueError) -> object:
    return exc.errors()[0] if isinstance(exc, ValidationError) else exc


def _check_password(password: str) -> None:
    if not password:
        raise UserError("an empty password is not allowed", code="EMPTY_PASSWORD")


def _put_keyfile(backend: Backend, keyfile: KeyFile) -> str:
    body = keyfile.model_dump_json(indent=2).encode()
    name = KEYS + hashlib.sha256(body).hexdigest()
    backend.put(name, body)
    return name


def _read_keyfile(backend: Backend, name: str) -> KeyFile:
    try:
        return KeyFile.model_validate_json(backend.get(name))
    except ValidationError as exc:
        raise RepositoryDamaged(f"{name} is not a key file: {exc.errors()[0]}") from None


def _keyfiles(backend: Backend, damaged: list[str] | None = None) -> list[tuple[str, KeyFile]]:
    """Every readable key file. With ``damaged`` given, unreadable ones are listed there and
    skipped, so one damaged key file does not lock out every other password."""
    out = []
    for info in sorted(backend.list(KEYS), key=lambda o: o.name):
        try:
            out.append((info.name, _read_keyfile(backend, info.name)))
        except ObjectNotFound:
            continue  # removed by a concurrent `key remove`
        except RepositoryDamaged as exc:
            if damaged is None:
                raise
            log.warning("%s", exc.message)
            damaged.append(info.name)
    if not out and not damaged:
        raise RepositoryDamaged(f"{backend.url} has no key files", details={"object": KEYS})
    return out

"""The backup engine's safety promises: restore never writes outside its target, every changed
byte is caught and confined to the files it affects, a wrong password is a clean error, a
killed backup leaves a repository the next one builds on, concurrent backups both land, and
restore(backup(tree)) == tree for any tree."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ploinkyd.backup import crypto, ops
from ploinkyd.backup.format import (
    CONFIG,
    DATA,
    INDEX,
    KEYS,
    SNAPSHOTS,
    TREE,
    IndexPack,
    Node,
    Snapshot,
    pack_name,
)
from ploinkyd.backup.pack import ENTRY, MAGIC, TRAILER, split_pack
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.restorer import UnsafePath
from ploinkyd.backup.storage_memory import MemoryBackend
from ploinkyd.backup.writer import BlobWriter
from ploinkyd.errors import PloinkyError, RepositoryDamaged, UserError
from tests.backup_helpers import (
    LOG_N,
    PASSWORD,
    MiB,
    backup,
    init_repo,
    listing,
    pack_ids,
    restored,
)

ROOT_DIR = Path(__file__).resolve().parent.parent
ROOT = os.geteuid() == 0


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# -- (a) restore never escapes its target ----------------------------------------------------


def forge(repo: Repository, build: Callable[[BlobWriter], str]) -> str:
    """Store the trees ``build`` writes (it returns the root tree id) and a snapshot of them,
    as a malicious or buggy writer with the key could."""
    writer = BlobWriter(repo)
    try:
        root = build(writer)
        packs = writer.flush()
    finally:
        writer.close()
    repo.save_index(packs)
    return repo.save_snapshot(Snapshot(time=time.time(), host="mallory", paths=["/"], tree=root))


def tree(writer: BlobWriter, *nodes: Node) -> str:
    return writer.add(TREE, writer.repo.encode_tree(list(nodes)))[0].hex()


def file_node(writer: BlobWriter, name: str, data: bytes = b"pwned\n") -> Node:
    cid = writer.add(DATA, data)[0].hex()
    return Node(name=name, type="file", mode=0o644, size=len(data), content=[cid])


def dir_node(name: str, subtree: str) -> Node:
    return Node(name=name, type="dir", mode=0o755, subtree=subtree)


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(target, outside): ``outside`` is a sentinel directory beside the target that must stay
    empty; after the test ``tmp_path`` must hold nothing but these and the repository."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    yield target, outside
    assert list(outside.iterdir()) == []
    assert {p.name for p in tmp_path.iterdir()} <= {"outside", "repo", "src", "target"}


EVIL: dict[str, Callable[[BlobWriter, Path], str]] = {
    "dotdot file": lambda w, out: tree(w, file_node(w, "..")),
    "dotdot dir": lambda w, out: tree(
        w, dir_node("..", tree(w, file_node(w, "escaped"), dir_node("outside", tree(w))))
    ),
    "dot dir": lambda w, out: tree(w, dir_node(".", tree(w, file_node(w, "x")))),
    "slash in name": lambda w, out: tree(w, file_node(w, "a/b")),
    "dotdot path": lambda w, out: tree(w, file_node(w, "../outside/pwned")),
    "absolute name": lambda w, out: tree(w, file_node(w, str(out / "pwned"))),
    "absolute /etc": lambda w, out: tree(w, file_node(w, "/etc")),
    # An absolute directory name leads to the sentinel, not to /etc: should the guard ever
    # break, the test must fail without writing into the machine's /etc.
    "absolute dir": lambda w, out: tree(w, dir_node(str(out), tree(w, file_node(w, "pwned")))),
    "empty name": lambda w, out: tree(w, file_node(w, "")),
    "nul in name": lambda w, out: tree(w, file_node(w, "a\0b")),
    "duplicate file": lambda w, out: tree(w, file_node(w, "dup"), file_node(w, "dup", b"2")),
    "symlink then dir of the same name": lambda w, out: tree(
        w,
        Node(name="dup", type="symlink", mode=0o777, target=str(out)),
        dir_node("dup", tree(w, file_node(w, "pwned"))),
    ),
    "deep dotdot": lambda w, out: tree(
        w,
        dir_node("ok", tree(w, dir_node("deeper", tree(w, dir_node("..", tree(w)))))),
    ),
}


@pytest.mark.parametrize("case", sorted(EVIL))
def test_restore_refuses_entries_that_escape(
    tmp_path: Path, jail: tuple[Path, Path], case: str
) -> None:
    target, outside = jail
    repo = init_repo(f"file://{tmp_path}/repo")
    sid = forge(repo, lambda w: EVIL[case](w, outside))
    with pytest.raises(UnsafePath) as err:
        ops.restore(ops.open_repository(repo.url, PASSWORD), sid, str(target))
    assert isinstance(err.value, UserError) and err.value.code == "UNSAFE_PATH"
    assert not (tmp_path / "escaped").exists()


def test_restore_refuses_a_symlinked_directory_in_the_target(
    tmp_path: Path, jail: tuple[Path, Path]
) -> None:
    target, outside = jail
    src = tmp_path / "src"
    write(src / "sub/deeper/file", "inside")
    write(src / "plain", "a file where the target has a symlink")
    repo = init_repo(f"file://{tmp_path}/repo")
    sid, _ = backup(repo, src)
    out = restored(target, src)
    out.mkdir(parents=True)
    # An attacker who can write in the target plants symlinks to outside.
    os.symlink(outside, out / "sub")
    os.symlink(outside / "plain", out / "plain")
    with pytest.raises(UnsafePath, match="not a directory"):
        ops.restore(repo, sid, str(target))
    # A symlink at an ancestor of the restored tree is refused the same way.
    target2 = tmp_path / "target" / "second"
    target2.mkdir()
    top = os.path.abspath(src).strip("/").split("/")[0]
    os.symlink(outside, target2 / top)
    with pytest.raises(UnsafePath):
        ops.restore(repo, sid, str(target2))
    # Where the snapshot has a file, a planted symlink is replaced, never followed.
    (out / "sub").unlink()
    (out / "plain").unlink()
    os.symlink(outside / "plain", out / "plain")
    ops.restore(repo, sid, str(target), include=[str(src / "plain")])
    assert not (out / "plain").is_symlink()
    assert (out / "plain").read_text() == "a file where the target has a symlink"


# -- (b) a flipped byte anywhere -------------------------------------------------------------


@dataclass
class Small:
    """A small file repository with two snapshots, and what each restores to."""

    root: Path
    src: Path
    snaps: dict[str, dict[bytes, Any]]  # snapshot id → listing of src at backup time
    # blob key (type || id) → restored-relative paths that need it, per snapshot
    needs: dict[bytes, dict[str, set[str]]]
    packs: dict[str, IndexPack]
    index_files: list[str]


def _needs(
    repo: Repository, sid: str, tree_id: str, path: str, out: dict[bytes, dict[str, set[str]]]
) -> None:
    key = bytes([TREE]) + bytes.fromhex(tree_id)
    out.setdefault(key, {}).setdefault(sid, set()).add(path)
    for node in repo.load_tree(tree_id).nodes:
        child = f"{path}/{node.name}" if path else node.name
        if node.subtree:
            _needs(repo, sid, node.subtree, child, out)
        for cid in node.content or []:
            key = bytes([DATA]) + bytes.fromhex(cid)
            out.setdefault(key, {}).setdefault(sid, set()).add(child)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    root = tmp_path_factory.mktemp("small")
    src = root / "src"
    rng = random.Random(1)
    write(src / "a", rng.randbytes(3000))
    write(src / "b", rng.randbytes(2500))
    write(src / "sub/c", rng.randbytes(1800))
    write(src / "sub/d", b"compressible line\n" * 1000)
    write(src / "sub/same-as-b", (src / "b").read_bytes())
    write(src / "empty", b"")
    (src / "e1").mkdir()
    (src / "sub/e2").mkdir()
    os.symlink("sub/c", src / "link")
    # Small packs, so blobs spread over several packs and some share one.
    repo = init_repo(f"file://{root}/repo", pack_size=4096)
    snaps = {}
    first, _ = backup(repo, src)
    snaps[first] = listing(src)
    write(src / "a", rng.randbytes(3100))
    second, _ = backup(repo, src)
    snaps[second] = listing(src)
    repo.load_index()
    needs: dict[bytes, dict[str, set[str]]] = {}
    for sid, snap in repo.snapshots():
        _needs(repo, sid, snap.tree, "", needs)
    packs = {}
    for obj in repo.backend.list(INDEX):
        for p in repo.read_index_file(obj.name).packs:
            packs[p.id] = p
    assert len(packs) >= 4
    index_files = sorted(o.name for o in repo.backend.list(INDEX))
    return Small(root, src, snaps, needs, packs, index_files)


def flipped_copy(small: Small, dest: Path, name: str, offset: int) -> Repository:
    shutil.copytree(small.root / "repo", dest)
    path = dest / name
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return ops.open_repository(f"file://{dest}", PASSWORD)


def check_restores(
    small: Small, repo: Repository, target: Path, damaged: dict[str, set[str]]
) -> None:
    """Restore every snapshot; those with ``damaged`` paths must raise RepositoryDamaged naming
    exactly them, and every other entry must come back intact."""
    src_rel = os.path.abspath(small.src).lstrip("/")
    for n, (sid, expected) in enumerate(small.snaps.items()):
        out = target / str(n)
        bad = damaged.get(sid, set())
        if bad:
            with pytest.raises(RepositoryDamaged) as err:
                ops.restore(repo, sid, str(out))
            named = {
                os.path.relpath(p, out) if p != str(out) else "" for p in err.value.details["files"]
            }
            assert named == bad, err.value.message
            for p in bad:
                assert str(out / p) in err.value.message or len(bad) > 10
        else:
            _, result = ops.restore(repo, sid, str(out))
            assert result.damaged_files == []
        lost = [p for p in bad if p == "" or src_rel == p or src_rel.startswith(p + "/")]
        if lost:
            continue  # the whole source tree hung below a damaged directory listing
        inside = {os.fsencode(p[len(src_rel) + 1 :]) for p in bad if p.startswith(src_rel + "/")}

        got = listing(out / src_rel)
        assert _outside(got, inside) == _outside(expected, inside)


def _outside(entries: dict[bytes, Any], damaged: set[bytes]) -> dict[bytes, Any]:
    """``entries`` without the damaged paths and what lies below them."""
    return {
        rel: entry
        for rel, entry in entries.items()
        if not any(rel == d or rel.startswith(d + b"/") for d in damaged)
    }


def blob_at(pack: IndexPack, offset: int) -> bytes | None:
    for btype, bid, off, length, _raw in pack.blobs:
        if off <= offset < off + length:
            return bytes([btype]) + bytes.fromhex(bid)
    return None


def pack_offsets(small: Small) -> list[tuple[str, int, str]]:
    cases = []
    for pack in small.packs.values():
        for _btype, bid, off, length, _raw in pack.blobs:
            cases.append((pack.id, off + length // 2, f"blob {bid[:8]}"))
        cases.append((pack.id, 3, "blob nonce"))  # the first blob's nonce
        body_end = pack.size - TRAILER.size
        header_start = sum(b[3] for b in pack.blobs)
        cases.append((pack.id, header_start + 5, "header nonce"))
        cases.append((pack.id, (header_start + body_end) // 2, "header"))
        cases.append((pack.id, body_end - 1, "header tag"))
        cases.append((pack.id, body_end, "trailer magic"))
        cases.append((pack.id, body_end + 5, "trailer key id"))
        cases.append((pack.id, body_end + 8, "trailer header length"))
    return cases


def test_a_flipped_byte_in_any_pack_is_caught_and_confined(small: Small, tmp_path: Path) -> None:
    cases = pack_offsets(small)
    assert len(cases) >= 30
    hit = set()
    for n, (pack_id, offset, where) in enumerate(cases):
        repo = flipped_copy(small, tmp_path / f"repo{n}", pack_name(pack_id), offset)
        report = ops.verify(repo, read_data=True)
        assert not report.ok, where
        assert any(e["object"] == pack_id for e in report.errors), (where, report.errors)
        key = blob_at(small.packs[pack_id], offset)
        hit.add("header or trailer" if key is None else "tree" if key[0] == TREE else "data")
        # A damaged header or trailer costs no data: restores read blobs through the index.
        damaged = small.needs.get(key, {}) if key is not None else {}
        if key is not None:
            reported = {(d["snapshot"], d["path"]) for d in report.damaged_files}
            for sid, paths in damaged.items():
                for p in paths:
                    suffix = " (directory listing)" if key[0] == TREE else ""
                    assert (sid[:12], "/" + p + suffix) in reported, (where, reported)
        check_restores(small, repo, tmp_path / f"t{n}", damaged)
        shutil.rmtree(tmp_path / f"repo{n}")
    assert hit == {"header or trailer", "tree", "data"}


def test_a_flipped_byte_in_an_index_file_is_caught_and_costs_nothing(
    small: Small, tmp_path: Path
) -> None:
    for n, name in enumerate(small.index_files):
        size = (small.root / "repo" / name).stat().st_size
        for offset in (0, 2, 8, size // 2, size - 1):
            dest = tmp_path / f"repo{n}-{offset}"
            repo = flipped_copy(small, dest, name, offset)
            report = ops.verify(repo)
            assert any(e["kind"] == "index" and e["object"] == name for e in report.errors)
            assert not ops.verify(repo, read_data=True).ok
            # Restore skips the damaged index and finds its packs by their headers.
            warnings: list[str] = []
            for m, (sid, expected) in enumerate(small.snaps.items()):
                out = tmp_path / f"t{n}-{offset}-{m}"
                ops.restore(
                    ops.open_repository(repo.url, PASSWORD), sid, str(out), warn=warnings.append
                )
                assert listing(restored(out, small.src)) == expected
            assert any(name in w for w in warnings), warnings
            shutil.rmtree(dest)


def test_a_flipped_byte_in_a_snapshot_is_caught(small: Small, tmp_path: Path) -> None:
    sids = list(small.snaps)
    for n, sid in enumerate(sids):
        name = SNAPSHOTS + sid
        size = (small.root / "repo" / name).stat().st_size
        for offset in (0, 3, size // 2, size - 1):
            dest = tmp_path / f"repo{n}-{offset}"
            repo = flipped_copy(small, dest, name, offset)
            report = ops.verify(repo, read_data=True)
            assert [(e["kind"], e["object"]) for e in report.errors] == [("snapshot", sid)]
            with pytest.raises(RepositoryDamaged, match=name):
                ops.restore(repo, sid, str(tmp_path / "never"))
            # The other snapshot is untouched and still restores.
            other = sids[1 - n]
            out = tmp_path / f"t{n}-{offset}"
            ops.restore(repo, other, str(out))
            assert listing(restored(out, small.src)) == small.snaps[other]
            shutil.rmtree(dest)


def _flip_each_byte(path: Path) -> Iterator[int]:
    original = path.read_bytes()
    try:
        for offset in range(len(original)):
            data = bytearray(original)
            data[offset] ^= 0x01
            path.write_bytes(bytes(data))
            yield offset
    finally:
        path.write_bytes(original)


def test_a_flipped_byte_in_a_key_file_never_opens_a_wrong_keyring(
    small: Small, tmp_path: Path
) -> None:
    dest = tmp_path / "repo"
    shutil.copytree(small.root / "repo", dest)
    good = ops.open_repository(f"file://{dest}", PASSWORD).keyring
    (name,) = [p for p in (dest / "keys").iterdir()]
    outcomes = {"refused": 0, "opened": 0}
    for offset in _flip_each_byte(name):
        try:
            repo = ops.open_repository(f"file://{dest}", PASSWORD)
        except PloinkyError as exc:
            assert exc.code in ("WRONG_PASSWORD", "REPOSITORY_DAMAGED"), (offset, exc)
            outcomes["refused"] += 1
            continue
        # Only unauthenticated labels (created, host, user, kdf name) may change harmlessly.
        assert repo.keyring.to_json() == good.to_json(), offset
        outcomes["opened"] += 1
    assert outcomes["refused"] > 0.7 * sum(outcomes.values()), outcomes


def test_one_damaged_key_file_does_not_lock_out_other_passwords(tmp_path: Path) -> None:
    repo = init_repo(f"file://{tmp_path}/repo")
    other = repo.key_add("other password", log_n=LOG_N)
    path = tmp_path / "repo" / KEYS / other
    path.write_bytes(path.read_bytes()[:-20])
    ops.open_repository(repo.url, PASSWORD)
    with pytest.raises(RepositoryDamaged, match=other):
        ops.open_repository(repo.url, "other password")


def test_a_flipped_byte_in_the_config_is_a_clean_error_or_harmless(
    small: Small, tmp_path: Path
) -> None:
    dest = tmp_path / "repo"
    shutil.copytree(small.root / "repo", dest)
    config = dest / CONFIG
    text = config.read_text()
    structural = {text.index("{"), text.index('"version": 1') + len('"version": ')}
    sid = next(iter(small.snaps))
    original = ops.open_repository(f"file://{dest}", PASSWORD).config
    big = write(tmp_path / "big/file", random.Random(2).randbytes(700 * 1024))
    refused = set()
    for offset in _flip_each_byte(config):
        try:
            repo = ops.open_repository(f"file://{dest}", PASSWORD)
        except PloinkyError as exc:
            assert exc.code in ("REPOSITORY_DAMAGED", "UNSUPPORTED_VERSION"), (offset, exc)
            refused.add(offset)
            continue
        # The config is plaintext and unauthenticated: what it holds (chunker and pack
        # parameters, compression) shapes new data only. Old snapshots still read, and a
        # backup (big enough for the chunker) either works or fails with a clean error.
        labels = {"id", "created"}
        if repo.config.model_dump(exclude=labels) != original.model_dump(exclude=labels):
            ops.restore(repo, sid, str(tmp_path / f"t{offset}"))
            try:
                backup(repo, big.parent)
            except PloinkyError:
                pass
    assert structural <= refused
    assert len(refused) > len(text) / 3


# -- (c) wrong password ----------------------------------------------------------------------


def test_wrong_password_is_a_clean_user_error(tmp_path: Path) -> None:
    repo = init_repo(f"file://{tmp_path}/repo")
    with pytest.raises(crypto.WrongPassword) as err:
        ops.open_repository(repo.url, "not the password")
    exc = err.value
    assert isinstance(exc, UserError) and exc.code == "WRONG_PASSWORD"
    assert exc.exit_code == 2
    assert "wrong password" in exc.message and str(tmp_path / "repo") in exc.message
    assert exc.__cause__ is None and exc.__context__ is None  # no chained traceback
    with pytest.raises(UserError, match="no repository"):
        ops.open_repository(f"file://{tmp_path}/nothing-here", PASSWORD)


# -- (d) SIGKILL mid-backup, (e) concurrent backups ------------------------------------------

CHILD = """
import json, os, sys
from ploinkyd.backup import ops
repo = ops.open_repository(sys.argv[1], os.environ["PLOINKY_PASSWORD"])
sid, snap = ops.create(repo, sys.argv[2:], strategy=ops.strategy_named("full"))
print(json.dumps({"id": sid, "added": snap.summary.bytes_added_raw}), flush=True)
"""


def child_backup(url: str, *paths: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PLOINKY_PASSWORD": PASSWORD, "PYTHONPATH": str(ROOT_DIR)}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, *map(str, paths)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stored_bytes(repo_dir: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(repo_dir / "data"):
        for f in files:
            if not f.startswith("."):
                try:
                    total += os.stat(os.path.join(dirpath, f)).st_size
                except FileNotFoundError:
                    pass
    return total


def tree_digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_mid_backup_leaves_a_repository_the_next_backup_builds_on(
    tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    total = 200 * MiB
    for i in range(20):
        write(src / f"part{i:02d}", os.urandom(total // 20))
    pack_size = 4 * MiB
    for attempt in range(3):
        repo_dir = tmp_path / f"repo{attempt}"
        repo = init_repo(f"file://{repo_dir}", pack_size=pack_size)
        proc = child_backup(repo.url, src)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if stored_bytes(repo_dir) >= 0.85 * total:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        proc.communicate()
        if proc.returncode == -signal.SIGKILL:
            break
        assert proc.returncode == 0, "child backup failed"  # finished before the kill: again
    else:
        pytest.fail("the backup always finished before it could be killed")

    assert list(repo.backend.list(SNAPSHOTS)) == []
    assert list(repo.backend.list(INDEX)) == []
    orphans = pack_ids(repo)
    orphan_bytes = stored_bytes(repo_dir)
    assert orphans and orphan_bytes >= 0.85 * total
    assert len(list(repo.backend.list("locks/"))) == 1  # the dead process's, now stale

    fresh = ops.open_repository(repo.url, PASSWORD)
    for read_data in (False, True):
        report = ops.verify(fresh, read_data=read_data)
        assert report.ok, report.errors
        assert any("no index lists" in w for w in report.warnings)

    sid, snap = backup(fresh, src)
    s = snap.summary
    assert s.bytes_read == total
    # Everything the killed run uploaded is reused: only its unfinished tail is stored again.
    slack = 3 * pack_size + MiB
    assert s.bytes_added_raw <= total - orphan_bytes + slack, (s.bytes_added_raw, orphan_bytes)
    assert s.bytes_added_raw < 0.25 * total
    new_packs = pack_ids(fresh) - orphans
    assert len(new_packs) <= (total - orphan_bytes + slack) // pack_size + 2

    report = ops.prune(ops.open_repository(repo.url, PASSWORD))
    assert report.packs_deleted <= 3
    assert list(repo.backend.list("locks/")) == []  # prune removed the dead process's lock
    final = ops.open_repository(repo.url, PASSWORD)
    check = ops.verify(final, read_data=True)
    assert check.ok and check.warnings == [], (check.errors, check.warnings)
    ops.restore(final, sid, str(tmp_path / "t"))
    assert tree_digest(restored(tmp_path / "t", src)) == tree_digest(src)


@pytest.mark.timeout(120)
def test_two_backups_at_once_into_one_repository(tmp_path: Path) -> None:
    shared = os.urandom(6 * MiB)
    trees = []
    for name in ("left", "right"):
        src = tmp_path / name
        for i in range(6):
            write(src / f"f{i}", os.urandom(3 * MiB))
        write(src / "shared", shared)  # both upload it: the index must cope with duplicates
        trees.append(src)
    repo = init_repo(f"file://{tmp_path}/repo", pack_size=2 * MiB)
    procs = [child_backup(repo.url, src) for src in trees]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0, err
        results.append(out)
    ids = [json.loads(line)["id"] for line in results]
    fresh = ops.open_repository(repo.url, PASSWORD)
    assert {sid for sid, _ in fresh.snapshots()} == set(ids)
    assert ops.verify(fresh, read_data=True).ok
    for n, (sid, src) in enumerate(zip(ids, trees, strict=True)):
        ops.restore(fresh, sid, str(tmp_path / f"t{n}"))
        assert listing(restored(tmp_path / f"t{n}", src)) == listing(src)
    ops.prune(fresh, max_unused=0.0)
    after = ops.open_repository(repo.url, PASSWORD)
    assert ops.verify(after, read_data=True).ok
    for n, (sid, src) in enumerate(zip(ids, trees, strict=True)):
        ops.restore(after, sid, str(tmp_path / f"u{n}"))
        assert listing(restored(tmp_path / f"u{n}", src)) == listing(src)


# -- (f) restore(backup(tree)) == tree -------------------------------------------------------

_name = (
    st.lists(st.integers(1, 255).filter(lambda c: c != ord("/")), min_size=1, max_size=24)
    .map(bytes)
    .filter(lambda b: b not in (b".", b".."))
)
_mtime = st.integers(min_value=0, max_value=4_000_000_000 * 10**9)
_file_mode = st.sampled_from(
    [0o644, 0o600, 0o755, 0o400, 0o000, 0o4755, 0o2711, 0o1644] if ROOT else [0o644, 0o600]
)
_dir_mode = st.sampled_from([0o755, 0o700, 0o555, 0o1777, 0o2750, 0o000] if ROOT else [0o755])
_file = st.tuples(
    st.just("file"), st.integers(0, 300 * 1024), st.integers(0, 2**32), _file_mode, _mtime
)
_link = st.tuples(
    st.just("symlink"), st.lists(st.integers(1, 255), min_size=1, max_size=40).map(bytes), _mtime
)
_tree = st.recursive(
    st.one_of(_file, _link),
    lambda children: st.tuples(
        st.just("dir"), st.dictionaries(_name, children, max_size=5), _dir_mode, _mtime
    ),
    max_leaves=12,
)
_root = st.dictionaries(_name, _tree, max_size=6)


def _content(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if seed % 3 == 0:  # compressible
        return (rng.randbytes(64) * (size // 64 + 1))[:size]
    return rng.randbytes(size)


def _build(path: bytes, entries: dict[bytes, Any]) -> None:
    for name, spec in entries.items():
        child = os.path.join(path, name)
        if spec[0] == "file":
            _, size, seed, mode, mtime = spec
            with open(child, "wb") as f:
                f.write(_content(size, seed))
            os.chmod(child, mode)
            os.utime(child, ns=(mtime, mtime))
        elif spec[0] == "symlink":
            _, target, mtime = spec
            os.symlink(target, child)
            os.utime(child, ns=(mtime, mtime), follow_symlinks=False)
        else:
            _, children, mode, mtime = spec
            os.mkdir(child)
            _build(child, children)
            os.chmod(child, mode)
            os.utime(child, ns=(mtime, mtime))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(entries=_root, root_mtime=_mtime)
def test_restore_of_backup_is_the_same_tree(entries: dict[bytes, Any], root_mtime: int) -> None:
    name = f"prop-{uuid4().hex}"
    work = Path(tempfile.mkdtemp(prefix="ploinkyd-prop-"))
    try:
        src = work / "src"
        src.mkdir()
        _build(os.fsencode(str(src)), entries)
        os.utime(src, ns=(root_mtime, root_mtime))
        expected = listing(src)
        repo = ops.init_repository(f"mem://{name}", PASSWORD, log_n=LOG_N)
        sid, snap = ops.create(repo, [str(src)], strategy=ops.strategy_named("full"))
        assert snap.status == "complete", snap.warnings
        ops.restore(ops.open_repository(f"mem://{name}", PASSWORD), sid, str(work / "t"))
        assert listing(restored(work / "t", src)) == expected
        assert listing(src) == expected  # backing up changed nothing, not even atimes' mtimes
    finally:
        MemoryBackend.discard(name)
        shutil.rmtree(work, ignore_errors=True)


# -- (g) blobs bound to their place ----------------------------------------------------------


@pytest.mark.parametrize("how", ["swap bodies", "swap header entries"])
def test_blobs_moved_within_a_pack_fail_authentication(tmp_path: Path, how: str) -> None:
    src = tmp_path / "src"
    write(src / "one", os.urandom(5000))
    write(src / "two", os.urandom(5000))
    write(src / "three", os.urandom(7000))
    repo = init_repo(f"file://{tmp_path}/repo", compression="off")
    sid, _snap = backup(repo, src)
    repo.load_index()
    (index_name,) = [o.name for o in repo.backend.list(INDEX)]
    (pack,) = repo.read_index_file(index_name).packs
    data = repo.backend.get(pack_name(pack.id))
    kid, entries = split_pack(repo.keyring, data, pack.id)
    a, b = [e for e in entries if e.length == 5000 + crypto.OVERHEAD]
    body = bytearray(data[: entries[-1].offset + entries[-1].length])
    if how == "swap bodies":
        body[a.offset : a.offset + a.length], body[b.offset : b.offset + b.length] = (
            data[b.offset : b.offset + b.length],
            data[a.offset : a.offset + a.length],
        )
    else:
        a.id, b.id = b.id, a.id
    # A consistent pack, header and index around the moved blobs, as someone holding the key
    # (or a bug) would write: only the AAD binding a sealed blob to its id can notice.
    header = b"".join(ENTRY.pack(e.type, e.id, e.length, e.raw_length) for e in entries)
    sealed = repo.keyring.seal(header, b"pack" + kid, kid)
    tampered = bytes(body) + sealed + TRAILER.pack(MAGIC, kid, len(sealed))
    new_id = hashlib.sha256(tampered).hexdigest()
    repo.backend.put(pack_name(new_id), tampered)
    repo.backend.delete(pack_name(pack.id))
    blobs = [(e.type, e.id.hex(), e.offset, e.length, e.raw_length) for e in entries]
    repo.save_index([IndexPack(id=new_id, key=kid.hex(), size=len(tampered), blobs=blobs)])
    repo.backend.delete(index_name)

    fresh = ops.open_repository(repo.url, PASSWORD)
    report = ops.verify(fresh, read_data=True)
    assert {e["object"] for e in report.errors} == {a.id.hex(), b.id.hex()}
    assert all("fails authentication" in e["message"] for e in report.errors)
    prefix = os.path.abspath(src)
    assert sorted(d["path"] for d in report.damaged_files) == [f"{prefix}/one", f"{prefix}/two"]
    target = tmp_path / "t"
    with pytest.raises(RepositoryDamaged) as err:
        ops.restore(fresh, sid, str(target))
    out = restored(target, src)
    assert sorted(err.value.details["files"]) == [str(out / "one"), str(out / "two")]
    assert (out / "three").read_bytes() == (src / "three").read_bytes()

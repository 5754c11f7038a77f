"""The backup engine end to end on real directories: what a restore gives back, what each
strategy reads, dedup, compression, keyed ids, excludes, keys and rotation, retention, diff,
locks, and riding out a flaky backend."""

from __future__ import annotations

import errno
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from ploinkyd.backup import crypto, ops
from ploinkyd.backup.format import DATA, INDEX, KEYS, LOCKS, SNAPSHOTS
from ploinkyd.backup.locks import STALE_AFTER_S, LockInfo, RepoLock, list_locks
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.retention import RetentionPolicy
from ploinkyd.backup.storage import RetryingBackend
from ploinkyd.backup.storage_memory import MemoryBackend
from ploinkyd.errors import ConflictError, NotFoundError, StorageError, UserError
from tests.backup_helpers import (
    LOG_N,
    PASSWORD,
    MiB,
    backup,
    chunk_sizes,
    data_size,
    file_chunks,
    hardlink_groups,
    init_repo,
    listing,
    node_at,
    pack_ids,
    pack_key_id,
    restored,
)

ROOT = os.geteuid() == 0
MTIME = 1_600_000_000_123_456_789


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return init_repo(f"file://{tmp_path}/repo")


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def text(size: int, seed: int = 0) -> bytes:
    """Compressible (about 3:1), yet varied enough for content-defined cut points."""
    rng = random.Random(seed)
    words = [b"%s%d" % (w, i) for w in (b"alpha", b"bravo", b"echo", b"golf") for i in range(16)]
    out = bytearray()
    while len(out) < size:
        out += b" ".join(rng.choices(words, k=10)) + b"\n"
    return bytes(out[:size])


def set_times(root: Path) -> None:
    """Give every entry a distinct nanosecond mtime, children before their directory (creating
    a child touches its directory's mtime)."""
    top = os.fsencode(str(root))
    n = 0
    for dirpath, dirs, files in os.walk(top, topdown=False):
        for name in files + dirs:
            n += 1
            os.utime(os.path.join(dirpath, name), ns=(MTIME, MTIME + n), follow_symlinks=False)
    os.utime(top, ns=(MTIME, MTIME - 1))


def xattrs_supported(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return False
        raise
    finally:
        probe.unlink()
    return True


# -- round trip ------------------------------------------------------------------------------


def build_rich_tree(src: Path) -> None:
    write(src / "empty", b"")
    write(src / "small.txt", "hello\n")
    # Above the chunker's 8 MiB maximum, so certainly more than one chunk.
    write(src / "big-random", os.urandom(9 * MiB))
    write(src / "big-text", text(9 * MiB))
    write(src / "nested/deep/er/file", "deep\n")
    (src / "empty-dir").mkdir()
    (src / "nested/deep/empty").mkdir(parents=True)
    os.symlink("nested/deep/er/file", src / "link-rel")
    os.symlink("/etc/hostname", src / "link-abs")
    os.symlink("does/not/exist", src / "link-dangling")
    write(src / "hard/one", "linked\n")
    os.link(src / "hard/one", src / "hard/two")
    os.link(src / "hard/one", src / "nested/three")
    write(src / "modes/none", "no permissions\n").chmod(0o000)
    write(src / "modes/setuid", "#!/bin/sh\n").chmod(0o4755)
    write(src / "modes/setgid", "#!/bin/sh\n").chmod(0o2711)
    (src / "modes/sticky").mkdir()
    (src / "modes/sticky").chmod(0o1777)
    write(src / "modes/locked/inside", "in a 000 directory\n")
    (src / "modes/locked").chmod(0o000)
    weird = os.fsencode(str(src)) + b"/caf\xe9-\xff"
    os.mkdir(weird)
    with open(weird + b"/\xfe\xfdname", "wb") as f:
        f.write(b"non-UTF-8 names\n")
    if ROOT:
        os.chown(src / "small.txt", 1234, 5678)
        os.chown(src / "empty-dir", 1234, 5678)
        os.lchown(src / "link-rel", 1234, 5678)
        # chown clears setuid: set the mode again afterwards, as an admin would.
        os.chown(src / "modes/setuid", 1234, 5678)
        (src / "modes/setuid").chmod(0o4755)
    if xattrs_supported(src):
        os.setxattr(src / "small.txt", "user.comment", b"kept \x00 binary \xff")
        os.setxattr(src / "nested", "user.dir", b"on a directory")
    set_times(src)


def test_round_trip_restores_every_attribute(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    build_rich_tree(src)
    before = listing(src)
    sid, snap = backup(repo, src)
    assert snap.status == "complete", snap.warnings
    assert snap.summary.files_new == 13  # hardlinked names count once each
    for name in ("big-random", "big-text"):
        assert len(file_chunks(repo, snap.tree, src / name)) > 1, name

    fresh = ops.open_repository(repo.url, PASSWORD)
    target = tmp_path / "target"
    rid, result = ops.restore(fresh, sid[:8], str(target))
    assert rid == sid
    assert result.warnings == []
    out = restored(target, src)
    assert listing(out) == before
    assert hardlink_groups(out) == {frozenset({b"hard/one", b"hard/two", b"nested/three"})}
    assert result.hardlinks == 2
    if ROOT:
        st = os.lstat(out / "modes/setuid")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1234, 5678, 0o4755)
    # "latest" names the same snapshot.
    target2 = tmp_path / "target2"
    ops.restore(fresh, "latest", str(target2))
    assert listing(restored(target2, src)) == before


def test_restoring_twice_into_one_target_gives_the_same_tree(
    tmp_path: Path, repo: Repository
) -> None:
    src = tmp_path / "src"
    write(src / "d/f", os.urandom(1000))
    os.link(src / "d/f", src / "d/g")
    os.symlink("d/f", src / "link")
    write(src / "ro/x", "in a read-only directory")
    (src / "ro").chmod(0o555)
    set_times(src)
    sid, _ = backup(repo, src)
    for _ in range(2):
        ops.restore(repo, sid, str(tmp_path / "t"))
        out = restored(tmp_path / "t", src)
        assert listing(out) == listing(src)
        assert hardlink_groups(out) == {frozenset({b"d/f", b"d/g"})}


def test_backing_up_single_files_and_several_paths(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "single", "one file on its own")
    write(src / "d/inner", "a directory")
    write(src / "elsewhere/not-requested", "left out")
    sid, snap = backup(repo, src / "single", src / "d", src / "d/inner")
    # A path inside another requested path is covered by it.
    assert snap.paths == [str(src / "d"), str(src / "single")]
    ops.restore(repo, sid, str(tmp_path / "t"))
    out = restored(tmp_path / "t", src)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "d",
        "d/inner",
        "single",
    ]
    assert (out / "single").read_text() == "one file on its own"
    with pytest.raises(UserError) as err:
        backup(repo, src / "missing")
    assert err.value.code == "PATH_NOT_FOUND"


def test_xattrs_round_trip(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    if not xattrs_supported(src):
        pytest.skip("no user.* extended attributes on this file system")
    f = write(src / "f", "x")
    os.setxattr(f, "user.a", b"")
    os.setxattr(f, "user.b", os.urandom(200))
    sid, _ = backup(repo, src)
    ops.restore(repo, sid, str(tmp_path / "t"))
    out = restored(tmp_path / "t", src) / "f"
    assert {n: os.getxattr(out, n) for n in os.listxattr(out)} == {
        n: os.getxattr(f, n) for n in os.listxattr(f)
    }


def test_sparse_file_comes_back_sparse(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sparse = src / "disk.img"
    size = 64 * MiB
    with open(sparse, "wb") as f:
        f.write(os.urandom(MiB))
        f.seek(40 * MiB + 12345)
        f.write(os.urandom(300 * 1024))
        f.truncate(size)
    if os.stat(sparse).st_blocks * 512 > 8 * MiB:
        pytest.skip("this file system does not keep holes")
    sid, _ = backup(repo, src)
    ops.restore(repo, sid, str(tmp_path / "t"))
    out = restored(tmp_path / "t", src) / "disk.img"
    st = os.stat(out)
    assert st.st_size == size
    assert st.st_blocks * 512 < 4 * MiB, "restored file is not sparse"
    assert listing(restored(tmp_path / "t", src)) == listing(src)


def test_sockets_and_fifos_are_skipped_with_a_warning(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "kept", "kept")
    os.mkfifo(src / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    warnings: list[str] = []
    try:
        sid, snap = backup(repo, src, warn=warnings.append)
    finally:
        sock.close()
    assert snap.summary.skipped == 2
    assert snap.status == "partial"
    assert any("fifo" in w and w.startswith(str(src / "fifo")) for w in warnings), warnings
    assert any("socket" in w and w.startswith(str(src / "sock")) for w in warnings), warnings
    assert set(warnings) <= set(snap.warnings)
    ops.restore(repo, sid, str(tmp_path / "t"))
    assert sorted(os.listdir(restored(tmp_path / "t", src))) == ["kept"]


# -- strategies ------------------------------------------------------------------------------


def test_incremental_reads_only_changed_files(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    for i in range(10):
        write(src / f"f{i}", os.urandom(100_000 + i))
    full_id, full = backup(repo, src, job="j")
    assert full.summary.bytes_read == sum(100_000 + i for i in range(10))

    write(src / "f3", os.urandom(50_000))
    write(src / "new", os.urandom(7_000))
    inc_id, inc = backup(repo, src, strategy="incremental", job="j")
    assert inc.parent == full_id
    assert inc.strategy == "incremental"
    assert inc.summary.bytes_read == 57_000
    assert (inc.summary.files_new, inc.summary.files_changed) == (1, 1)
    assert inc.summary.files_unmodified == 9
    assert inc.summary.bytes_logical == sum(os.path.getsize(p) for p in src.iterdir())

    # Nothing changed: nothing read, and the same root tree.
    again_id, again = backup(repo, src, strategy="incremental", job="j")
    assert again.parent == inc_id
    assert again.summary.bytes_read == 0
    # (Compared below the source: the root tree also records /tmp, which others touch.)
    assert node_at(repo, again.tree, src).subtree == node_at(repo, inc.tree, src).subtree
    ops.restore(repo, again_id, str(tmp_path / "t"))
    assert listing(restored(tmp_path / "t", src)) == listing(src)


def test_differential_compares_against_the_last_full(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    for name in "abcd":
        write(src / name, os.urandom(40_000))
    full_id, _ = backup(repo, src, job="j")
    write(src / "a", os.urandom(41_000))
    _inc_id, inc = backup(repo, src, strategy="incremental", job="j")
    assert inc.parent == full_id and inc.summary.bytes_read == 41_000
    write(src / "b", os.urandom(42_000))
    _diff_id, diff = backup(repo, src, strategy="differential", job="j")
    # Against the full: both a and b changed since then.
    assert diff.parent == full_id
    assert diff.summary.bytes_read == 41_000 + 42_000
    write(src / "c", os.urandom(43_000))
    diff2_id, diff2 = backup(repo, src, strategy="differential", job="j")
    assert diff2.parent == full_id
    assert diff2.summary.bytes_read == 41_000 + 42_000 + 43_000
    # An incremental follows the newest snapshot of the job, whatever its strategy.
    _inc2_id, inc2 = backup(repo, src, strategy="incremental", job="j")
    assert inc2.parent == diff2_id and inc2.summary.bytes_read == 0
    # Another job has its own series: its first differential has no full to compare against.
    _other_id, other = backup(repo, src, strategy="differential", job="other")
    assert other.parent is None and other.summary.bytes_read == 40_000 + 41_000 + 42_000 + 43_000


def test_every_snapshot_restores_on_its_own_after_pruning_each_parent(
    tmp_path: Path, repo: Repository
) -> None:
    src = tmp_path / "src"
    for i in range(4):
        write(src / f"f{i}", os.urandom(20_000))
    states = []
    for step, strategy in enumerate(["full", "incremental", "incremental", "differential"]):
        write(src / f"f{step}", os.urandom(21_000 + step))
        sid, snap = backup(repo, src, strategy=strategy, job="j")
        states.append((sid, snap.parent, listing(src)))
    for sid, parent, expected in states[1:]:
        # A fresh copy of the story each time: forget just this snapshot's parent, prune.
        assert parent is not None
        target = tmp_path / f"t-{sid[:8]}"
        parent_repo = ops.open_repository(repo.url, PASSWORD)
        if any(s == parent for s, _ in parent_repo.snapshots()):
            parent_repo.delete_snapshot(parent)
        ops.prune(parent_repo, max_unused=0.0)
        ops.restore(ops.open_repository(repo.url, PASSWORD), sid, str(target))
        assert listing(restored(target, src)) == expected


# -- dedup, compression, keyed ids -----------------------------------------------------------


def test_same_data_in_two_paths_is_stored_once(tmp_path: Path, repo: Repository) -> None:
    data = os.urandom(6 * MiB)
    write(tmp_path / "one/a", data)
    _, _first = backup(repo, tmp_path / "one")
    stored = data_size(repo)
    write(tmp_path / "two/b", data)
    write(tmp_path / "two/c", data)
    _, second = backup(repo, tmp_path / "two")
    assert second.summary.bytes_read == 2 * len(data)
    # Only trees are new: the chunks are stored already.
    assert second.summary.bytes_added_raw < 4096
    assert data_size(repo) - stored < 8192
    assert stored < len(data) * 1.01


def test_shifted_data_is_mostly_deduplicated(tmp_path: Path, repo: Repository) -> None:
    data = os.urandom(16 * MiB)
    write(tmp_path / "v1/file", data)
    _, first = backup(repo, tmp_path / "v1")
    # Bytes inserted near the front: fixed-size blocks would all shift, FastCDC realigns.
    write(tmp_path / "v2/file", data[:300_000] + b"inserted!" * 11 + data[300_000:])
    _, second = backup(repo, tmp_path / "v2")
    assert first.summary.bytes_added_raw >= len(data)
    assert second.summary.bytes_added_raw < 0.3 * len(data), second.summary


@pytest.mark.parametrize(
    ("compression", "max_ratio"),
    [("off", None), ("auto", 0.3), ("max", 0.3), ("1", 0.35), ("9", 0.3)],
)
def test_compression_settings(tmp_path: Path, compression: str, max_ratio: float | None) -> None:
    src = tmp_path / "src"
    write(src / "text", text(MiB))
    write(src / "random", os.urandom(MiB))
    repo = init_repo(f"file://{tmp_path}/repo", compression=compression)
    sid, snap = backup(repo, src / "text")
    s = snap.summary
    repo.load_index()
    locs = [repo.index.get(k) for k in repo.index.keys() if k[0] == DATA]  # noqa: SIM118
    if max_ratio is None:
        assert s.bytes_added_stored >= s.bytes_added_raw
        assert all(loc is not None and loc.raw_length == 0 for loc in locs)
    else:
        assert s.bytes_added_stored < max_ratio * s.bytes_added_raw, s
    # Random data stays raw whatever the setting: compressing it would only grow it.
    _, rnd = backup(repo, src / "random")
    assert rnd.summary.bytes_added_stored >= MiB
    ops.restore(repo, sid, str(tmp_path / "t"))
    assert (restored(tmp_path / "t", src) / "text").read_bytes() == (src / "text").read_bytes()


def test_compression_max_beats_auto_and_per_backup_override(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "text", text(MiB, seed=7))
    sizes = {}
    for mode in ("auto", "max"):
        repo = init_repo(f"file://{tmp_path}/repo-{mode}", compression="off")
        _, snap = backup(repo, src, compression=mode)
        sizes[mode] = snap.summary.bytes_added_stored
    assert sizes["max"] < sizes["auto"] < MiB / 3
    with pytest.raises(UserError, match="compression"):
        init_repo(f"file://{tmp_path}/bad", compression="fast")
    repo = init_repo(f"file://{tmp_path}/repo-x")
    with pytest.raises(UserError) as err:
        backup(repo, src, compression="23")
    assert err.value.code == "INVALID_COMPRESSION"


def test_chunk_ids_and_boundaries_are_keyed_per_repository(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write(src / "f", os.urandom(12 * MiB))
    ids, sizes = [], []
    for n in (1, 2):
        repo = init_repo(f"file://{tmp_path}/repo{n}", compression="off")
        _, snap = backup(repo, src)
        chunks = file_chunks(repo, snap.tree, src / "f")
        ids.append(chunks)
        sizes.append(chunk_sizes(repo, chunks))
        # Deterministic within one repository: a second backup finds the same chunks.
        _, again = backup(repo, src)
        assert file_chunks(repo, again.tree, src / "f") == chunks
        assert sum(sizes[-1]) == 12 * MiB
    assert not set(ids[0]) & set(ids[1]), "chunk ids are not keyed"
    assert sizes[0] != sizes[1], "chunk boundaries are not keyed"
    assert len(sizes[0]) > 3 and len(sizes[1]) > 3


# -- selecting what to back up and restore ---------------------------------------------------


def test_excludes(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "keep.txt", "keep")
    write(src / "scratch.tmp", "by name pattern")
    write(src / "sub/deeper.tmp", "by name pattern, deeper")
    write(src / "cache/blob", "by absolute path")
    write(src / "sub/node_modules/x/y", "by exact name")
    write(src / "sub/keep/also", "keep")
    excludes = ["*.tmp", str(src / "cache"), "node_modules"]
    sid, snap = backup(repo, src, excludes=excludes)
    assert snap.excludes == excludes
    ops.restore(repo, sid, str(tmp_path / "t"))
    out = restored(tmp_path / "t", src)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "keep.txt",
        "sub",
        "sub/keep",
        "sub/keep/also",
    ]


def test_restore_include_selects_a_subtree(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "a/b/one", "1")
    write(src / "a/b/c/two", "2")
    write(src / "a/other", "no")
    write(src / "z", "no")
    write(src / "solo", "3")
    set_times(src)
    sid, _ = backup(repo, src)
    target = tmp_path / "t"
    ops.restore(repo, sid, str(target), include=[str(src / "a/b"), "/" + str(src / "solo")])
    out = restored(target, src)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "a",
        "a/b",
        "a/b/c",
        "a/b/c/two",
        "a/b/one",
        "solo",
    ]
    got = listing(out / "a/b")
    assert got == listing(src / "a/b")


# -- keys and rotation -----------------------------------------------------------------------


def test_key_add_remove_passwd(tmp_path: Path, repo: Repository) -> None:
    url = repo.url
    second = repo.key_add("second password", log_n=LOG_N)
    keys = repo.key_list()
    assert len(keys) == 2 and [k["current"] for k in keys].count(True) == 1
    other = ops.open_repository(url, "second password")
    assert other.keyring.id_key == repo.keyring.id_key
    assert other.key_name == KEYS + second

    first = repo.key_name.removeprefix(KEYS)
    with pytest.raises(UserError) as err:
        repo.key_remove(first)
    assert err.value.code == "KEY_IN_USE"
    with pytest.raises(NotFoundError):
        other.key_remove("ffffffffff")
    other.key_remove(first[:10])
    with pytest.raises(crypto.WrongPassword):
        ops.open_repository(url, PASSWORD)

    third = other.key_passwd("third password", log_n=LOG_N)
    with pytest.raises(crypto.WrongPassword):
        ops.open_repository(url, "second password")
    reopened = ops.open_repository(url, "third password")
    assert reopened.key_name == KEYS + third
    assert [k["id"] for k in reopened.key_list()] == [third]
    with pytest.raises(UserError) as err:
        reopened.key_add("", log_n=LOG_N)
    assert err.value.code == "EMPTY_PASSWORD"


def test_key_rotation_and_rewrite(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "old", os.urandom(300_000))
    repo.key_add("other password", log_n=LOG_N)
    old_kid = repo.keyring.current
    old_id, _ = backup(repo, src)
    old_listing = listing(src)
    old_packs = pack_ids(repo)
    assert {pack_key_id(repo, p) for p in old_packs} == {old_kid}

    info = ops.rotate_key(repo)
    new_kid = repo.keyring.current
    assert info["data_key"] == new_kid.hex() != old_kid.hex()
    assert info["old_data_keys"] == [old_kid.hex()]
    assert len(info["removed_keys"]) == 1
    # After a compromise the other passwords must stop opening the repository.
    with pytest.raises(crypto.WrongPassword):
        ops.open_repository(repo.url, "other password")
    assert len(list(repo.backend.list(KEYS))) == 1

    write(src / "new", os.urandom(300_000))
    new_id, _ = backup(repo, src)
    new_listing = listing(src)
    new_packs = pack_ids(repo) - old_packs
    assert new_packs and {pack_key_id(repo, p) for p in new_packs} == {new_kid}
    # Old data stays readable with the keyring that now holds both keys.
    reopened = ops.open_repository(repo.url, PASSWORD)
    assert set(reopened.keyring.data_keys) == {old_kid, new_kid}
    ops.restore(reopened, old_id, str(tmp_path / "t-old"))
    assert listing(restored(tmp_path / "t-old", src)) == old_listing

    report = ops.prune(reopened, rewrite=True)
    assert report.keys_dropped == [old_kid.hex()]
    assert report.snapshots_rewritten >= 1
    final = ops.open_repository(repo.url, PASSWORD)
    assert set(final.keyring.data_keys) == {new_kid}
    assert {pack_key_id(final, p) for p in pack_ids(final)} == {new_kid}
    for prefix in (INDEX, SNAPSHOTS):
        for obj in final.backend.list(prefix):
            assert crypto.object_key_id(final.backend.get(obj.name)) == new_kid, obj.name
    # Snapshot ids are keyed on the plaintext, so re-encryption keeps them.
    assert [sid for sid, _ in final.snapshots()] == [old_id, new_id]
    assert ops.verify(final, read_data=True).ok
    ops.restore(final, old_id, str(tmp_path / "t-old2"))
    ops.restore(final, new_id, str(tmp_path / "t-new"))
    assert listing(restored(tmp_path / "t-old2", src)) == old_listing
    assert listing(restored(tmp_path / "t-new", src)) == new_listing


def test_snapshot_ids_are_stable_across_prune_rewrite(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    ids = []
    for i in range(3):
        write(src / f"f{i}", os.urandom(10_000))
        ids.append(backup(repo, src, tags=[f"t{i}"])[0])
    before = {sid: snap for sid, snap in repo.snapshots()}
    ops.rotate_key(repo)
    ops.prune(repo, rewrite=True)
    after = {sid: snap for sid, snap in ops.open_repository(repo.url, PASSWORD).snapshots()}
    assert list(after) == ids
    assert after == before


# -- retention, diff -------------------------------------------------------------------------


def test_forget_applies_retention_then_prune_frees_space(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    ids, listings = [], []
    for i in range(4):
        write(src / "data", os.urandom(200_000 + i))
        ids.append(backup(repo, src, job="j")[0])
        listings.append(listing(src))
    unrelated, _ = backup(repo, src, job="other")

    dry = ops.forget(repo, RetentionPolicy(keep_last=2), job="j", dry_run=True)
    assert len(repo.snapshots()) == 5 and len(dry) == 4
    decisions = ops.forget(repo, RetentionPolicy(keep_last=2), job="j")
    assert {d.id for d in decisions if d.keep} == set(ids[2:])
    assert {d.id for d in decisions if not d.keep} == set(ids[:2])
    assert {sid for sid, _ in repo.snapshots()} == {*ids[2:], unrelated}
    with pytest.raises(UserError):
        ops.forget(repo, RetentionPolicy())

    size = data_size(repo)
    assert ops.prune(repo, dry_run=True).dry_run and data_size(repo) == size
    report = ops.prune(repo)
    assert report.packs_deleted + report.packs_repacked > 0
    assert size - data_size(repo) > 350_000
    for sid, expected in zip(ids[2:], listings[2:], strict=True):
        target = tmp_path / f"t-{sid[:8]}"
        ops.restore(repo, sid, str(target))
        assert listing(restored(target, src)) == expected
    assert ops.verify(repo, read_data=True).ok


def test_diff_names_every_kind_of_change(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "same", "same")
    write(src / "removed", "bye")
    write(src / "modified", "v1")
    write(src / "meta", "chmod only")
    write(src / "retyped", "file, then a directory")
    write(src / "olddir/inside", "x")
    a, _ = backup(repo, src)
    (src / "removed").unlink()
    write(src / "added", "hi")
    write(src / "modified", "v2")
    (src / "meta").chmod(0o600)
    (src / "retyped").unlink()
    write(src / "retyped/child", "now a directory")
    (src / "olddir/inside").unlink()
    (src / "olddir").rmdir()
    write(src / "newdir/x", "x")
    b, _ = backup(repo, src)
    prefix = os.path.abspath(src)
    changes = [
        (c.op, c.path.removeprefix(prefix))
        for c in ops.diff(repo, a[:8], b)
        if c.path.startswith(prefix + "/")
    ]
    assert changes == [
        ("U", "/"),  # src itself: entries came and went, so its mtime changed
        ("+", "/added"),
        ("U", "/meta"),
        ("M", "/modified"),
        ("+", "/newdir/"),
        ("+", "/newdir/x"),
        ("-", "/olddir/"),
        ("-", "/olddir/inside"),
        ("-", "/removed"),
        ("T", "/retyped"),
    ]
    assert ops.diff(repo, b, b) == []


# -- locks -----------------------------------------------------------------------------------


def put_lock(repo: Repository, info: LockInfo) -> str:
    name = LOCKS + uuid4().hex
    sealed = crypto.seal_object(repo.keyring, "lock", info.model_dump_json().encode())
    repo.backend.put(name, sealed)
    return name


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_shared_locks_coexist_and_exclusive_waits(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "f", "x")
    with (
        RepoLock(repo, exclusive=False, purpose="backup nightly"),
        RepoLock(repo, exclusive=False, purpose="restore"),
    ):
        assert len(list_locks(repo)) == 2
        backup(repo, src)  # a third shared locker
        with pytest.raises(ConflictError) as err:
            ops.prune(repo)
        assert err.value.code == "REPOSITORY_LOCKED"
        message = err.value.message
        assert "backup nightly" in message or "restore" in message
        assert f"PID {os.getpid()} on {socket.gethostname()}" in message
        assert err.value.details["holder"]["pid"] == os.getpid()
    assert list_locks(repo) == []
    with RepoLock(repo, exclusive=True, purpose="prune"):
        with pytest.raises(ConflictError, match="an exclusive lock for prune"):
            backup(repo, src)
        with pytest.raises(ConflictError):
            ops.rotate_key(repo)
    ops.prune(repo)
    assert list(repo.backend.list(LOCKS)) == []


def test_stale_locks_are_ignored_and_removed(tmp_path: Path, repo: Repository) -> None:
    src = tmp_path / "src"
    write(src / "f", "x")
    host = socket.gethostname()
    now = time.time()
    dead = put_lock(repo, LockInfo(time=now, host=host, pid=dead_pid(), exclusive=True))
    old = put_lock(
        repo,
        LockInfo(time=now - STALE_AFTER_S - 60, host="elsewhere", pid=1, exclusive=True),
    )
    # Shared lockers step over stale locks without removing them ...
    backup(repo, src)
    names = {o.name for o in repo.backend.list(LOCKS)}
    assert names == {dead, old}
    # ... exclusive lockers remove them.
    ops.prune(repo)
    assert list(repo.backend.list(LOCKS)) == []

    # A live lock from another host is respected: its process cannot be checked from here.
    live = put_lock(
        repo, LockInfo(time=now, host="other-host", pid=4242, exclusive=False, purpose="backup")
    )
    with pytest.raises(ConflictError, match="PID 4242 on other-host"):
        ops.prune(repo)
    assert {o.name for o in repo.backend.list(LOCKS)} == {live}


# -- a flaky backend -------------------------------------------------------------------------


@pytest.fixture
def flaky() -> Iterator[tuple[MemoryBackend, RetryingBackend, list[float]]]:
    name = f"flaky-{uuid4().hex}"
    inner = MemoryBackend(name)
    sleeps: list[float] = []
    yield inner, RetryingBackend(inner, sleep=sleeps.append), sleeps
    MemoryBackend.discard(name)


def test_retrying_backend_rides_out_transient_faults(
    tmp_path: Path, flaky: tuple[MemoryBackend, RetryingBackend, list[float]]
) -> None:
    inner, backend, sleeps = flaky
    src = tmp_path / "src"
    for i in range(8):
        write(src / f"f{i}", os.urandom(400_000))
    write(src / "big", os.urandom(3 * MiB))
    repo = Repository.init(backend, PASSWORD, log_n=LOG_N, pack_size=MiB)
    faults = inner.faults
    faults.fail_next("list", 2)
    faults.fail_next("put", 3)
    faults.fail_next("put", 2, after=True)  # stored, but the reply was lost
    faults.fail_next("get", 1)
    sid, snap = ops.create(repo, [str(src)], strategy=ops.strategy_named("full"))
    assert snap.status == "complete"
    for op in ("list", "put"):
        assert faults.pending(op) == 0, op
    faults.fail_next("get", 4)
    faults.fail_next("list", 1)
    faults.fail_next("delete", 2)
    fresh = Repository.open(backend, PASSWORD)
    ops.restore(fresh, sid, str(tmp_path / "t"))
    assert listing(restored(tmp_path / "t", src)) == listing(src)
    assert faults.pending("get") == 0 and faults.pending("list") == 0
    assert backend.retries >= 9 and len(sleeps) == backend.retries
    assert ops.verify(fresh, read_data=True).ok

    # A permanent failure is not retried and fails the backup before any snapshot is written.
    write(src / "more", os.urandom(200_000))
    faults.fail_next("put", 1, transient=False, message="bucket is gone")
    retries = backend.retries
    before = [sid for sid, _ in fresh.snapshots()]
    with pytest.raises(StorageError, match="bucket is gone"):
        ops.create(fresh, [str(src)], strategy=ops.strategy_named("full"))
    assert backend.retries == retries
    assert [sid for sid, _ in fresh.snapshots()] == before

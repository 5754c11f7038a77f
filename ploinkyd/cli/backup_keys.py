"""``ploinkyd backup key list | add | remove | passwd | rotate``: the passwords of a repository.

Each password has a key file wrapping the one keyring. ``add`` takes a shared lock, ``remove``
and ``passwd`` an exclusive one, so none of them races a ``rotate`` (which rewrites the
keyring and removes every other password's key file).
"""

from __future__ import annotations

import argparse
from typing import Any

from ploinkyd.backup import ops
from ploinkyd.backup.format import KEYS
from ploinkyd.backup.locks import RepoLock
from ploinkyd.cli import output
from ploinkyd.cli.backup_repo import BackupCli, kdf_log_n, read_new_password

EXAMPLES = """\
examples:
  ploinkyd backup key list                                   every password's key file
  ploinkyd backup key add --new-password-file /root/pw2      a second password
  ploinkyd backup key remove 3f2a                            by id prefix (not the current one)
  ploinkyd backup key passwd                                 change this password (asks twice)
  ploinkyd backup key rotate && ploinkyd backup prune --rewrite
"""


def register(bsub: argparse._SubParsersAction[Any], parents: list[argparse.ArgumentParser]) -> None:
    key = bsub.add_parser(
        "key",
        help="passwords: list, add, remove, passwd, rotate",
        description="The repository's passwords and master-key rotation.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    def cmd(name: str, fn: Any, help_: str) -> argparse.ArgumentParser:
        p = ksub.add_parser(name, help=help_, description=help_, parents=parents)
        p.set_defaults(func=fn)
        return p

    cmd("list", cmd_list, "list the key files (one per password)")
    new_password: dict[str, Any] = {
        "metavar": "FILE",
        "help": "read the new password from FILE (default: ask twice on the terminal)",
    }
    cmd("add", cmd_add, "add a password").add_argument("--new-password-file", **new_password)
    cmd("remove", cmd_remove, "remove another password's key file").add_argument(
        "id", help="key id or a unique prefix of it"
    )
    cmd("passwd", cmd_passwd, "change the password in use").add_argument(
        "--new-password-file", **new_password
    )
    cmd(
        "rotate",
        cmd_rotate,
        "new master data key; removes every other password (re-add them with key add)",
    )


def cmd_list(args: argparse.Namespace) -> int:
    repo = BackupCli(args).open()
    keys = repo.key_list()
    if args.json:
        output.emit_json({"data": keys})
        return 0
    rows = [
        {
            **k,
            "id": ("*" if k["current"] else " ") + k["id"][:8],
            "created": output.when(k["created"]),
        }
        for k in keys
    ]
    output.table(rows, ["id", "created", "host", "user", "kdf"])
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    log_n = kdf_log_n()
    repo = cli.open()
    password = read_new_password(args.new_password_file)
    with RepoLock(repo, exclusive=False, purpose="key add", wait_s=cli.lock_wait_s):
        key_id = repo.key_add(password, log_n)
    if args.json:
        output.emit_json({"id": key_id})
    else:
        print(f"added key {key_id[:8]}: the new password opens the repository too")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    repo = cli.open()
    with RepoLock(repo, exclusive=True, purpose="key remove", wait_s=cli.lock_wait_s):
        repo.key_remove(args.id)
    if args.json:
        output.emit_json({"removed": args.id})
    else:
        print(f"removed key {args.id}: its password no longer opens the repository")
    return 0


def cmd_passwd(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    log_n = kdf_log_n()
    repo = cli.open()
    password = read_new_password(args.new_password_file)
    old = repo.key_name.removeprefix(KEYS)
    with RepoLock(repo, exclusive=True, purpose="key passwd", wait_s=cli.lock_wait_s):
        new = repo.key_passwd(password, log_n)
    if args.json:
        output.emit_json({"id": new, "removed": old})
    else:
        print(
            f"changed the password: key {old[:8]} replaced by {new[:8]}; "
            "the old password no longer opens the repository"
        )
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    cli = BackupCli(args)
    repo = cli.open()
    result = ops.rotate_key(repo, lock_wait_s=cli.lock_wait_s)
    if args.json:
        output.emit_json(result)
        return 0
    print(
        f"rotated the master key: new data is encrypted under data key {result['data_key']}; "
        f"this password's key file is now {result['key'][:8]}"
    )
    removed = result["removed_keys"]
    if removed:
        print(
            f"REMOVED the key files of {len(removed)} other password(s): "
            + ", ".join(k[:8] for k in removed)
            + ". Those passwords no longer open the repository; re-add each one that should "
            "with `ploinkyd backup key add`"
        )
    else:
        print("no other password had a key file")
    if result["old_data_keys"]:
        print(
            f"existing data is still encrypted under {len(result['old_data_keys'])} old data "
            "key(s); `ploinkyd backup prune --rewrite` re-encrypts it under the new key and "
            "then drops the old ones"
        )
    return 0

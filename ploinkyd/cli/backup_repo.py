"""What every ``ploinkyd backup`` command needs: the repository URL, the password, the storage
backends and strategies from plugins, and the lock wait — all without a daemon.

``PLOINKY_BACKUP_KDF_LOG_N`` sets the scrypt cost (log2 N, at least 10) of key files this CLI
writes (``init``, ``key add``, ``key passwd``) instead of calibrating it to ~0.3 s: a knob for
tests and low-power machines, read here only. A lower cost makes a stolen key file cheaper to
attack.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from ploinkyd.backup import ops
from ploinkyd.backup.crypto import SCRYPT_MAX_LOG_N, SCRYPT_MIN_LOG_N
from ploinkyd.backup.repository import Repository
from ploinkyd.backup.storage import BackendFactory
from ploinkyd.backup.strategies import BackupStrategy
from ploinkyd.cli.common import load
from ploinkyd.config import parse_duration
from ploinkyd.errors import PloinkyError, UserError
from ploinkyd.plugins import PluginHost

KDF_ENV = "PLOINKY_BACKUP_KDF_LOG_N"


def kdf_log_n(env: Mapping[str, str] | None = None) -> int | None:
    env = os.environ if env is None else env
    text = env.get(KDF_ENV, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not SCRYPT_MIN_LOG_N <= value <= SCRYPT_MAX_LOG_N:
        raise UserError(
            f"{KDF_ENV}={text!r}: the scrypt cost must be a whole number from "
            f"{SCRYPT_MIN_LOG_N} to {SCRYPT_MAX_LOG_N} (log2 of N); unset it to calibrate",
            code="INVALID_KDF_COST",
        )
    return value


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value


def repo_options(suppress: bool) -> argparse.ArgumentParser:
    """``--repo``, ``--password-file``, ``--password-command``, ``--lock-wait``: accepted before
    and after the action (``main``'s trick: the copy given to actions has no defaults, so a
    value given before the action is kept)."""
    parser = argparse.ArgumentParser(add_help=False)
    g = parser.add_argument_group("repository options")
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g.add_argument("--repo", metavar="URL", help="repository (env PLOINKY_REPOSITORY)", **kw)
    g.add_argument("--password-file", metavar="FILE", help="read the password from FILE", **kw)
    g.add_argument(
        "--password-command", metavar="CMD", help="run CMD, its output is the password", **kw
    )
    option_default: dict[str, Any] = {"default": argparse.SUPPRESS if suppress else []}
    g.add_argument(
        "-o",
        "--option",
        metavar="KEY=VALUE",
        action="append",
        type=_option,
        help="a storage backend option, e.g. -o endpoint=http://127.0.0.1:9000 (repeatable; "
        "see the backend plugin's README)",
        **option_default,
    )
    g.add_argument(
        "--lock-wait",
        metavar="DURATION",
        type=_duration,
        help="wait up to DURATION (30s, 5m) for another operation's lock (default: fail)",
        **kw,
    )
    return parser


def interactive() -> bool:
    return sys.stdin.isatty()


def ask(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except EOFError:
        raise UserError("no password was typed", code="PASSWORD_REQUIRED") from None


def ask_new_password(what: str) -> str:
    """Ask twice on the terminal; a typo in a new password would lock the data away."""
    first = ask(f"enter {what}: ")
    if ask(f"enter {what} again: ") != first:
        raise UserError("the passwords do not match; nothing was changed", code="PASSWORD_MISMATCH")
    return first


def read_new_password(file: str | None) -> str:
    """The new password of ``key add`` / ``key passwd``: ``--new-password-file`` or a prompt."""
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                return f.read().rstrip("\r\n")
        except OSError as exc:
            raise UserError(f"cannot read password file {file}: {exc.strerror}") from None
    if interactive():
        return ask_new_password("the new password")
    raise UserError(
        "no new password: pass --new-password-file FILE, or run on a terminal to be asked",
        code="PASSWORD_REQUIRED",
    )


class BackupCli:
    """The repository a ``backup`` command names, opened on first use."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = ops.resolve_repo(getattr(args, "repo", None))
        self.lock_wait_s: float = getattr(args, "lock_wait", 0.0) or 0.0

    @cached_property
    def plugins(self) -> PluginHost:
        try:  # a broken config file must not stand between an operator and a restore
            host = PluginHost.from_config(load(self.args).config)
        except PloinkyError:
            host = PluginHost()
        host.load()
        return host

    @cached_property
    def schemes(self) -> dict[str, BackendFactory]:
        return self.plugins.storage_backends()

    @cached_property
    def options(self) -> dict[str, str]:
        return dict(getattr(self.args, "option", None) or [])

    def strategy(self, name: str) -> BackupStrategy:
        return ops.strategy_named(name, self.plugins.backup_strategies())

    def password(self, *, new: bool = False) -> str:
        def prompt() -> str:
            if new:
                return ask_new_password("a password for the new repository")
            return ask(f"password for {self.url}: ")

        return ops.resolve_password(
            password_file=getattr(self.args, "password_file", None),
            password_command=getattr(self.args, "password_command", None),
            prompt=prompt if interactive() else None,
        )

    def open(self) -> Repository:
        return ops.open_repository(
            self.url, self.password(), schemes=self.schemes, options=self.options
        )

    def init(self, compression: str) -> Repository:
        log_n = kdf_log_n()
        return ops.init_repository(
            self.url,
            self.password(new=True),
            compression=compression,
            schemes=self.schemes,
            options=self.options,
            log_n=log_n,
        )

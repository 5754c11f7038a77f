"""Opening one authenticated SFTP session, with every way that can fail told apart.

Unreachable or dropped servers are transient; a host key nobody vouched for, a changed host
key, rejected credentials and a missing repository directory are permanent, and each message
names the option or URL part the operator must change.
"""

from __future__ import annotations

import errno
import logging
import posixpath
import socket
import stat as statmod
from dataclasses import dataclass, field

import paramiko  # type: ignore[import-untyped]

from ploinkyd.errors import StorageError

from .settings import PASSPHRASE_ENV, PASSWORD_ENV, SftpSettings

log = logging.getLogger("ploinky_sftp")


@dataclass
class Session:
    """One SSH connection carrying one SFTP channel, used by one thread at a time."""

    client: paramiko.SSHClient
    sftp: paramiko.SFTPClient
    root: str  # the repository directory, absolute on the server
    broken: bool = field(default=False)

    def alive(self) -> bool:
        transport = self.client.get_transport()
        return (
            not self.broken
            and transport is not None
            and transport.is_active()
            and not self.sftp.sock.closed
        )

    def close(self) -> None:
        try:
            self.client.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass  # the connection is being thrown away; a dead socket has nothing to flush


class _UnknownHostKey(paramiko.SSHException):
    pass


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise _UnknownHostKey(hostname, key)


class _AcceptUnknown(paramiko.MissingHostKeyPolicy):
    """``accept_unknown_host=true``: trust the key, but say so in the log every time."""

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        log.warning(
            "accepting unknown %s host key %s of %s (accept_unknown_host=true); add it to "
            "known_hosts to have it checked",
            key.get_name(),
            key.fingerprint,
            hostname,
        )
        client.get_host_keys().add(hostname, key.get_name(), key)


def open_session(settings: SftpSettings) -> Session:
    """Connect, check the host key, log in and find the repository directory."""
    pkey = _load_key(settings)
    client = paramiko.SSHClient()
    _load_known_hosts(client, settings)
    client.set_missing_host_key_policy(
        _AcceptUnknown() if settings.accept_unknown_host else _RefuseUnknown()
    )
    use_defaults = pkey is None and settings.password is None
    timeout = settings.connect_timeout
    try:
        client.connect(
            settings.host,
            port=settings.port,
            username=settings.user,
            pkey=pkey,
            password=settings.password,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            channel_timeout=timeout,
            # Like ssh(1): without an explicit credential, try the agent and ~/.ssh/id_*.
            allow_agent=use_defaults,
            look_for_keys=use_defaults,
        )
        sftp = client.open_sftp()
    except BaseException as exc:
        client.close()
        if isinstance(exc, OSError | EOFError | paramiko.SSHException):
            raise _connect_error(settings, exc, client) from exc
        raise
    session = Session(client, sftp, root="")
    try:
        sftp.get_channel().settimeout(settings.io_timeout)
        session.root = _repository_dir(settings, sftp)
    except BaseException as exc:
        session.close()
        if isinstance(exc, OSError | EOFError | paramiko.SSHException):
            raise StorageError(
                f"lost the connection to {settings.where} while opening the repository: "
                f"{describe(exc)}",
                code="SFTP_UNREACHABLE",
                details={"url": settings.url, "host": settings.host, "port": settings.port},
                transient=True,
            ) from exc
        raise
    return session


def _load_key(settings: SftpSettings) -> paramiko.PKey | None:
    if settings.key_file is None:
        return None
    path = settings.key_file
    try:
        return paramiko.PKey.from_path(path, password=settings.key_passphrase)
    except paramiko.PasswordRequiredException as exc:
        problem = (
            f"key_file {path} is encrypted: give its passphrase with -o key_passphrase=... or "
            f"{PASSPHRASE_ENV}"
        )
        raise _permanent(settings, problem, "SFTP_KEY_FILE") from exc
    except FileNotFoundError as exc:
        raise _permanent(settings, f"key_file {path} does not exist", "SFTP_KEY_FILE") from exc
    except (OSError, ValueError, paramiko.SSHException) as exc:
        problem = f"cannot read key_file {path} ({exc}): point key_file at an OpenSSH private key"
        raise _permanent(settings, problem, "SFTP_KEY_FILE") from exc


def _load_known_hosts(client: paramiko.SSHClient, settings: SftpSettings) -> None:
    path = settings.known_hosts
    try:
        client.load_host_keys(str(path))
    except FileNotFoundError as exc:
        if settings.known_hosts_given:
            problem = f"known_hosts file {path} does not exist: fix the known_hosts option"
            raise _permanent(settings, problem, "SFTP_KNOWN_HOSTS") from exc
        # The default file is optional: the unknown-host error below says what to do.
    except (OSError, UnicodeDecodeError, paramiko.SSHException) as exc:
        problem = f"cannot read known_hosts file {path} ({exc}): fix the known_hosts option"
        raise _permanent(settings, problem, "SFTP_KNOWN_HOSTS") from exc


def _connect_error(
    settings: SftpSettings, exc: BaseException, client: paramiko.SSHClient
) -> StorageError:
    where = settings.where
    if isinstance(exc, _UnknownHostKey):
        hostname, key = exc.args
        return _permanent(
            settings,
            f"the {key.get_name()} host key {key.fingerprint} of {hostname} is not in "
            f"known_hosts file {settings.known_hosts}: add it (ssh-keyscan -p {settings.port} "
            f"{settings.host} >> {settings.known_hosts}, after checking the fingerprint), point "
            "-o known_hosts=... at a file that has it, or trust it blindly with "
            "-o accept_unknown_host=true",
            "SFTP_UNKNOWN_HOST_KEY",
        )
    if isinstance(exc, paramiko.BadHostKeyException):
        return _permanent(
            settings,
            f"the host key of {settings.host} ({exc.key.get_name()} {exc.key.fingerprint}) does "
            f"not match the one in known_hosts file {settings.known_hosts}: if the server's key "
            "changed on purpose, update that entry; otherwise someone may be intercepting the "
            "connection",
            "SFTP_HOST_KEY_MISMATCH",
        )
    if isinstance(exc, paramiko.AuthenticationException):
        if settings.key_file is not None:
            how = (
                f"with key_file {settings.key_file}: check that its public key is in the "
                f"authorized_keys of user {settings.user!r} on the server, and the user in the URL"
            )
        elif settings.password is not None:
            how = (
                f"with a password: check the password (option password or {PASSWORD_ENV}) "
                f"and the user {settings.user!r} in the URL"
            )
        else:
            how = (
                "with the ssh agent's and ~/.ssh/id_* keys: give a key with -o key_file=... "
                "and check the user in the URL"
            )
        return _permanent(settings, f"authentication as {where} failed {how}", "SFTP_AUTH_FAILED")
    if isinstance(exc, socket.gaierror) and exc.errno in (socket.EAI_NONAME, socket.EAI_FAIL):
        return _permanent(
            settings, f"unknown host {settings.host!r}: fix the host in the URL", "SFTP_NO_HOST"
        )
    transport = client.get_transport()
    if transport is not None and transport.is_authenticated():
        return _permanent(
            settings,
            f"{where} accepted the login but refused an SFTP session ({describe(exc)}):"
            " enable the sftp subsystem in the server's sshd_config",
            "SFTP_NO_SUBSYSTEM",
        )
    return StorageError(
        f"cannot connect to {where}: {describe(exc)}",
        code="SFTP_UNREACHABLE",
        details={"url": settings.url, "host": settings.host, "port": settings.port},
        transient=True,
    )


def _repository_dir(settings: SftpSettings, sftp: paramiko.SFTPClient) -> str:
    """The absolute repository directory; a missing one is the operator's to create."""
    path = settings.path
    if path.startswith("~"):
        home = sftp.normalize(".")
        path = posixpath.normpath(posixpath.join(home, path[2:])) if path != "~" else home
    try:
        st = sftp.stat(path)
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError | PermissionError):
            raise
        if exc.errno == errno.EACCES:
            problem = (
                f"permission denied reading the repository directory {path} as {settings.user}:"
                " fix its permissions on the server or the user in the URL"
            )
            raise _permanent(settings, problem, "SFTP_PERMISSION_DENIED") from exc
        problem = (
            f"the repository directory {path} (the path in the URL) does not exist on "
            f"{settings.host}: create it (mkdir -p {path}) or fix the path in the URL"
        )
        raise _permanent(settings, problem, "SFTP_NO_REPOSITORY_DIR") from exc
    if not statmod.S_ISDIR(st.st_mode or 0):
        problem = (
            f"the repository path {path} (the path in the URL) on {settings.host} is not a "
            "directory: fix the path in the URL"
        )
        raise _permanent(settings, problem, "SFTP_NO_REPOSITORY_DIR")
    return path


def describe(exc: BaseException) -> str:
    """The words of an error, without Python's ``[Errno N]`` decoration."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _permanent(settings: SftpSettings, problem: str, code: str) -> StorageError:
    return StorageError(
        f"sftp repository {settings.url}: {problem}",
        code=code,
        details={"url": settings.url, "host": settings.host, "port": settings.port},
        transient=False,
    )

"""Plugins installed from git: the repository cache, ``plugins.lock`` and the source policy.

Layout under the state directory::

    plugins/plugins.lock             JSON: every installed plugin, its source and pinned commit
    plugins/repos/<name>-<hash8>/    the clone, checked out (detached) at the pinned commit
    plugins/site/<name>-<hash8>/     its pip requirements, only with ``--with-requires``

A REF (branch, tag or commit) is resolved once to a commit SHA and pinned; only ``update``
moves the pin. Loading at start never touches the network: the cached checkout is used as it
is, so a remote that is down or gone does not take an installed plugin away.

Git is driven through GitPython with a hardened environment: no terminal or askpass prompts,
only the plain transports (``GIT_ALLOW_PROTOCOL``; never ``ext::``/``fd::``), no options smuggled
in through the URL, no submodules, a timeout on every network call, and HEAD checked against
the pin after each checkout.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, ValidationError

from ploinkyd.config import PluginsConfig
from ploinkyd.errors import ConflictError, NotFoundError, PluginError
from ploinkyd.plugin_manifest import PluginManifest, read_manifest

if TYPE_CHECKING:
    import git

    from ploinkyd.plugins import PluginHost, PluginInfo

log = logging.getLogger("ploinkyd.plugins.repos")

# GitPython refuses to import without a git executable; a daemon with no plugins from git
# must still start, so the missing program is reported only when git is needed.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

LOCK_NAME = "plugins.lock"
_SHA = re.compile(r"[0-9a-f]{40}")
_SCHEMES = frozenset({"https", "http", "git", "ssh", "file"})
# Transport-helper syntax (``ext::sh -c ...``, ``fd::3``) runs commands; never a plugin source.
_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")


class LockEntry(BaseModel):
    """One installed plugin as ``plugins.lock`` records it."""

    name: str
    version: str
    url: str
    ref: str | None = None
    subdirectory: str = ""
    commit: str = Field(pattern=r"^[0-9a-f]{40}$")
    dir: str
    requires_installed: bool = False
    installed_at: str
    updated_at: str


class LockFile(BaseModel):
    version: int = 1
    plugins: dict[str, LockEntry] = Field(default_factory=dict)


class Source(BaseModel):
    """A parsed ``URL[@REF][#subdirectory=DIR]``."""

    url: str
    ref: str | None = None
    subdirectory: str = ""

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"{self.url}#{self.subdirectory}".encode()).hexdigest()
        return digest[:8]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _git_env() -> dict[str, str]:
    return {
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_SSH_COMMAND": "ssh -oBatchMode=yes",
        "GIT_ALLOW_PROTOCOL": ":".join(sorted(_SCHEMES)),
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_LFS_SKIP_SMUDGE": "1",
    }


def _git_error(what: str, exc: Exception) -> str:
    import git

    if isinstance(exc, git.GitCommandError):
        lines = [
            line.strip()
            for line in str(exc.stderr or "").splitlines()
            if line.strip() and not line.strip().startswith("stderr:")
        ]
        detail = "; ".join(lines[-3:]) or f"git exited with {exc.status}"
        detail = detail.strip("' ")
    else:
        detail = str(exc)
    return f"{what}: {detail}"


def parse_source(spec: str) -> Source:
    """Split ``URL[@REF][#subdirectory=DIR]``, keeping ``user@host`` and scp-style URLs intact
    and leaving local paths that exist as they are (a directory may contain ``@``)."""
    spec = spec.strip()
    subdirectory = ""
    if "#" in spec:
        spec, fragment = spec.split("#", 1)
        for part in fragment.split("&"):
            key, _, value = part.partition("=")
            if key != "subdirectory" or not value:
                raise PluginError(
                    f"unknown URL fragment {fragment!r}; the only one is #subdirectory=DIR",
                    code="PLUGIN_SOURCE",
                )
            subdirectory = value.strip("/")
    ref: str | None = None
    if "://" in spec:
        parts = urlsplit(spec)
        if "@" in parts.path:
            path, ref = parts.path.rsplit("@", 1)
            spec = urlunsplit(parts._replace(path=path))
    elif "@" in spec and not os.path.exists(spec):
        head, tail = spec.rsplit("@", 1)
        # ``git@host:repo`` has no ref; ``git@host:repo@v1`` and ``/path/repo@v1`` do.
        if ":" not in tail and ("/" in head or ":" in head):
            spec, ref = head, tail
    if ref is not None and (not ref or ref.startswith("-") or ".." in ref):
        raise PluginError(f"{ref!r} is not a branch, tag or commit", code="PLUGIN_SOURCE")
    return Source(url=spec, ref=ref, subdirectory=subdirectory)


def check_source(source: Source, allow: list[str]) -> Source:
    """Apply the source policy; local paths become absolute and are pointed at their
    repository's top level (with ``subdirectory`` set) when they lie inside one."""
    url = source.url
    if not url or url.startswith("-") or _HELPER.match(url) or "\x00" in url:
        raise PluginError(
            f"plugin source {url!r} is refused: git transport helpers (ext::, fd::) and "
            "option-like URLs can run commands on this host",
            code="PLUGIN_SOURCE_FORBIDDEN",
            details={"url": url},
        )
    subdirectory = source.subdirectory
    if url.startswith("file://"):
        url = urlsplit(url).path
    if "://" in url:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in _SCHEMES:
            raise PluginError(
                f"plugin source {url!r} uses the {scheme}:// transport; allowed transports are "
                "https, http, git, ssh and local paths",
                code="PLUGIN_SOURCE_FORBIDDEN",
                details={"url": url},
            )
    # scp-style ``git@host:repo`` is ssh.
    remote = "://" in url or (
        not url.startswith(("/", ".")) and re.match(r"^[\w.-]+@[\w.-]+:", url) is not None
    )
    if not remote:
        path = Path(url).resolve()
        if not path.is_dir():
            raise PluginError(
                f"plugin source {url!r} is neither a URL (https://...) nor a local directory",
                code="PLUGIN_SOURCE",
                details={"url": url},
            )
        top = _toplevel(path)
        if top is not None and top != path:
            subdirectory = "/".join(filter(None, [str(path.relative_to(top)), subdirectory]))
            path = top
        url = str(path)
    if not any(fnmatch.fnmatchcase(url, pattern) for pattern in allow):
        raise PluginError(
            f"plugin source {url!r} is not allowed by plugins.allow ({', '.join(allow)}); add "
            "a pattern matching it to [plugins] allow in the config",
            code="PLUGIN_SOURCE_FORBIDDEN",
            details={"url": url, "allow": allow},
        )
    if subdirectory and (
        subdirectory.startswith("/") or ".." in Path(subdirectory).parts or "\\" in subdirectory
    ):
        raise PluginError(
            f"subdirectory {subdirectory!r} must be a relative path inside the repository",
            code="PLUGIN_SOURCE",
        )
    return Source(url=url, ref=source.ref, subdirectory=subdirectory)


def _toplevel(path: Path) -> Path | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **_git_env()},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out.stdout.strip()).resolve() if out.returncode == 0 else None


class PluginRepos:
    """The git plugin cache under ``<state>/plugins``; all methods block (git, pip, disk)."""

    def __init__(self, state_dir: Path, config: PluginsConfig | None = None) -> None:
        config = config or PluginsConfig()
        self.root = Path(state_dir) / "plugins"
        self.repos = self.root / "repos"
        self.site = self.root / "site"
        self.lock_path = self.root / LOCK_NAME
        self.allow: list[str] = list(config.allow)
        self.timeout_s: float = config.git_timeout_s
        # Problems met while loading at start (a missing checkout, say), for status and list.
        self.problems: dict[str, str] = {}

    # ---- plugins.lock -------------------------------------------------------------------

    def read_lock(self) -> LockFile:
        try:
            text = self.lock_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return LockFile()
        try:
            return LockFile.model_validate_json(text)
        except ValidationError as exc:
            raise PluginError(
                f"{self.lock_path} is damaged ({exc.error_count()} problems); restore it from a "
                "backup or remove it and install the plugins again",
                code="PLUGIN_LOCK_DAMAGED",
            ) from None

    def _write_lock(self, lock: LockFile) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.lock_path.with_name(f".{LOCK_NAME}.{uuid.uuid4().hex}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(lock.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.lock_path)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def mutation(self) -> Iterator[LockFile]:
        """Serialise installs, updates and removes (daemon and CLI alike) on a file lock and
        hand out the current lock file; the caller writes it back with :meth:`save`."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".mutex", "a") as mutex:
            fcntl.flock(mutex, fcntl.LOCK_EX)
            yield self.read_lock()

    def save(self, lock: LockFile) -> None:
        self._write_lock(lock)

    def entries(self) -> list[LockEntry]:
        return list(self.read_lock().plugins.values())

    def entry(self, name: str) -> LockEntry:
        found = self.read_lock().plugins.get(name)
        if found is None:
            raise NotFoundError(
                f"no plugin named {name!r} is installed from git; `ploinkyd plugin list` "
                "shows what is",
                details={"plugin": name},
            )
        return found

    def checkout_dir(self, entry: LockEntry) -> Path:
        return self.repos / entry.dir

    def plugin_dir(self, entry: LockEntry) -> Path:
        return self.checkout_dir(entry) / entry.subdirectory

    def site_dir(self, entry: LockEntry) -> Path | None:
        path = self.site / entry.dir
        return path if entry.requires_installed else None

    # ---- git ----------------------------------------------------------------------------

    def _git(self, repo: git.Repo, *args: str, network: bool = False) -> str:
        with repo.git.custom_environment(**_git_env()):
            out: str = repo.git.execute(
                ["git", "-c", "core.fsmonitor=false", "-c", "submodule.recurse=false", *args],
                kill_after_timeout=self.timeout_s if network else None,
            )
        return out

    def _fetch(self, repo: git.Repo, url: str) -> None:
        import git

        git.Git.check_unsafe_protocols(url)
        self._git(
            repo,
            "fetch",
            "--force",
            "--prune",
            "--no-recurse-submodules",
            "origin",
            "+refs/heads/*:refs/remotes/origin/*",
            "+refs/tags/*:refs/tags/*",
            network=True,
        )
        with contextlib.suppress(git.GitCommandError):
            # The remote's default branch, for installs without a REF; an empty repository
            # has none, which the resolve step reports.
            self._git(repo, "remote", "set-head", "origin", "--auto", network=True)

    def _clone(self, root: Path, url: str, what: str) -> git.Repo:
        """A new repository at ``root`` with ``url`` as origin, fetched; a fetch failure is a
        :class:`PluginError` that starts with ``what``."""
        _require_git()
        import git

        repo = git.Repo.init(root)
        git.Git.check_unsafe_protocols(url)
        self._git(repo, "remote", "add", "origin", "--", url)
        try:
            self._fetch(repo, url)
        except git.GitCommandError as exc:
            raise PluginError(
                _git_error(what, exc), code="PLUGIN_FETCH_FAILED", details={"url": url}
            ) from None
        return repo

    def _resolve(self, repo: git.Repo, ref: str | None, url: str) -> str:
        import git

        candidates = (
            ["refs/remotes/origin/HEAD"]
            if ref is None
            else [f"refs/remotes/origin/{ref}", f"refs/tags/{ref}", ref]
        )
        for candidate in candidates:
            if candidate == ref and not re.fullmatch(r"[0-9a-f]{7,40}", ref):
                continue
            try:
                sha = self._git(repo, "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}")
            except git.GitCommandError:
                continue
            if _SHA.fullmatch(sha.strip()):
                return sha.strip()
        what = "its default branch" if ref is None else f"{ref!r}"
        raise PluginError(
            f"{url} has no branch, tag or commit {what}"
            if ref is not None
            else f"{url} has no default branch (is it empty?); give one: URL@BRANCH",
            code="PLUGIN_REF",
            details={"url": url, "ref": ref},
        )

    def _checkout(self, repo: git.Repo, sha: str) -> None:
        self._git(repo, "checkout", "--quiet", "--force", "--detach", sha)
        self._git(repo, "clean", "-qfdx")
        head = repo.head.commit.hexsha
        if head != sha:
            raise PluginError(
                f"after checking out {sha} HEAD is {head}; the clone was modified, refusing it",
                code="PLUGIN_PIN_MISMATCH",
            )

    def _manifest(self, root: Path, source: Source) -> PluginManifest:
        plugin_root = root / source.subdirectory
        manifest = read_manifest(plugin_root)
        manifest.check_compatible()
        return manifest

    def _install_requires(self, manifest: PluginManifest, site: Path) -> None:
        if not manifest.requires:
            return
        tmp = site.with_name(f".{site.name}.{uuid.uuid4().hex[:8]}")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-input",
            "--disable-pip-version-check",
            "--target",
            str(tmp),
            *manifest.requires,
        ]
        log.info("plugin %s: installing %s into %s", manifest.name, manifest.requires, site)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            shutil.rmtree(tmp, ignore_errors=True)
            raise PluginError(
                f"installing the requirements of {manifest.name!r} took over 15 minutes",
                code="PLUGIN_REQUIREMENTS",
            ) from None
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tail = "; ".join(res.stderr.strip().splitlines()[-3:])
            raise PluginError(
                f"pip could not install {', '.join(manifest.requires)} for {manifest.name!r}: "
                f"{tail}",
                code="PLUGIN_REQUIREMENTS",
            )
        shutil.rmtree(site, ignore_errors=True)
        os.replace(tmp, site)

    # ---- install / update / remove ------------------------------------------------------

    def fetch_new(self, spec: str, with_requires: bool = False) -> LockEntry:
        """Clone, pin and check out ``spec`` into the cache and install its requirements when
        asked. The plugin is not in ``plugins.lock`` yet: :meth:`record` or :meth:`discard`."""

        source = check_source(parse_source(spec), self.allow)
        self.repos.mkdir(parents=True, exist_ok=True)
        tmp = self.repos / f".clone-{uuid.uuid4().hex[:12]}"
        try:
            repo = self._clone(tmp, source.url, f"cannot fetch {source.url}")
            sha = self._resolve(repo, source.ref, source.url)
            self._checkout(repo, sha)
            manifest = self._manifest(tmp, source)
            key = f"{manifest.name}-{source.key}"
            if manifest.name in self.read_lock().plugins:
                raise ConflictError(
                    f"plugin {manifest.name!r} is already installed; use `ploinkyd plugin "
                    f"update {manifest.name}` or remove it first",
                    details={"plugin": manifest.name},
                )
            if with_requires:
                self._install_requires(manifest, self.site / key)
            final = self.repos / key
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        now = _now()
        return LockEntry(
            name=manifest.name,
            version=manifest.version,
            url=source.url,
            ref=source.ref,
            subdirectory=source.subdirectory,
            commit=sha,
            dir=key,
            requires_installed=with_requires and bool(manifest.requires),
            installed_at=now,
            updated_at=now,
        )

    def record(self, entry: LockEntry) -> None:
        with self.mutation() as lock:
            lock.plugins[entry.name] = entry
            self.save(lock)
        self.problems.pop(entry.name, None)

    def discard(self, entry: LockEntry) -> None:
        """Delete a checkout (and requirements) that is not, or no longer, installed."""
        shutil.rmtree(self.repos / entry.dir, ignore_errors=True)
        shutil.rmtree(self.site / entry.dir, ignore_errors=True)

    def fetch_update(self, name: str, ref: str | None = None) -> tuple[LockEntry, LockEntry]:
        """Fetch the plugin's remote and check out the new pin (``ref``, else the ref it was
        installed from). Returns ``(old, new)``; the lock is not changed yet. A fetch failure
        leaves the cached checkout exactly as it was and says so."""
        _require_git()
        import git

        old = self.entry(name)
        root = self.checkout_dir(old)
        repo = git.Repo(root)
        try:
            self._fetch(repo, old.url)
        except git.GitCommandError as exc:
            raise PluginError(
                _git_error(f"cannot fetch {old.url}", exc)
                + f"; plugin {name!r} keeps running from its cached checkout at "
                f"{old.commit[:12]}",
                code="PLUGIN_FETCH_FAILED",
                details={"plugin": name, "url": old.url, "commit": old.commit},
            ) from None
        want = ref if ref is not None else old.ref
        sha = self._resolve(repo, want, old.url)
        self._checkout(repo, sha)
        try:
            manifest = self._manifest(root, Source(url=old.url, subdirectory=old.subdirectory))
            if manifest.name != name:
                raise PluginError(
                    f"the new commit renames the plugin from {name!r} to {manifest.name!r}; "
                    "remove it and install it again",
                    code="PLUGIN_RENAMED",
                )
            if old.requires_installed:
                self._install_requires(manifest, self.site / old.dir)
        except BaseException:
            self._checkout(repo, old.commit)
            raise
        new = old.model_copy(
            update={
                "commit": sha,
                "ref": want,
                "version": manifest.version,
                "updated_at": _now(),
            }
        )
        return old, new

    def roll_back(self, entry: LockEntry) -> None:
        """Check the cached clone out at ``entry``'s commit again (after a failed update)."""
        import git

        self._checkout(git.Repo(self.checkout_dir(entry)), entry.commit)

    def forget(self, name: str) -> LockEntry:
        """Drop ``name`` from the lock and delete its checkout and requirements."""
        with self.mutation() as lock:
            entry = lock.plugins.pop(name, None)
            if entry is None:
                raise NotFoundError(
                    f"no plugin named {name!r} is installed from git", details={"plugin": name}
                )
            self.save(lock)
        self.discard(entry)
        self.problems.pop(name, None)
        return entry

    # ---- start-up -----------------------------------------------------------------------

    def prepare(self, entry: LockEntry) -> Path:
        """Make sure the checkout is at its pin without the network when possible; re-clone a
        missing checkout (that needs the remote). Returns the plugin directory."""
        root = self.checkout_dir(entry)
        try:
            # The common case, read without importing GitPython: every CLI command loads
            # plugins, and a detached HEAD file holds the commit itself.
            if (root / ".git" / "HEAD").read_text().strip() == entry.commit:
                return self.plugin_dir(entry)
        except OSError:
            pass
        import git

        if (root / ".git").is_dir():
            repo = git.Repo(root)
            if repo.head.is_valid() and repo.head.commit.hexsha == entry.commit:
                return self.plugin_dir(entry)
            try:
                self._checkout(repo, entry.commit)
                return self.plugin_dir(entry)
            except git.GitCommandError:
                pass  # the pinned commit is not in the clone: fetch it below
        started = time.monotonic()
        fresh = self.fetch_new_at(entry)
        log.info("plugin %s: checkout restored in %.1fs", entry.name, time.monotonic() - started)
        return fresh

    def fetch_new_at(self, entry: LockEntry) -> Path:
        import git

        root = self.checkout_dir(entry)
        shutil.rmtree(root, ignore_errors=True)
        what = f"the checkout of plugin {entry.name!r} is missing and {entry.url} cannot be fetched"
        try:
            repo = self._clone(root, entry.url, what)
            try:
                self._checkout(repo, entry.commit)
            except git.GitCommandError as exc:
                raise PluginError(_git_error(what, exc), code="PLUGIN_FETCH_FAILED") from None
        except PluginError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return self.plugin_dir(entry)

    def source_of(self, entry: LockEntry) -> str:
        return f"git:{entry.url}@{entry.commit[:12]}"

    def activate(self, host: PluginHost, entry: LockEntry) -> PluginInfo:
        """Load a fetched checkout into ``host``. A plugin that is quarantined on load (import
        error, bad hook, a hook that raises) or that would replace a task kind, operator,
        runner, strategy or storage scheme another plugin provides is unloaded again and
        refused with the reason."""
        info = host.register_directory(
            self.plugin_dir(entry), self.source_of(entry), site=self.site_dir(entry)
        )
        problem = None
        if info.status == "active":
            problem = host.clashes(entry.name)
            info = next(i for i in host.report() if i.name == entry.name)
        if info.status == "quarantined" and info.error is not None:
            where = f" (hook {info.error.hook})" if info.error.hook else ""
            problem = f"plugin {entry.name!r} is broken{where}: {info.error.message}"
        elif info.status == "disabled":
            problem = f"plugin {entry.name!r} is listed in plugins.disabled"
        if problem is not None:
            host.unregister(entry.name)
            raise PluginError(problem, code="PLUGIN_REFUSED", details={"plugin": entry.name})
        return info

    def load_into(self, host: PluginHost) -> None:
        """Register every locked plugin with ``host`` (a PluginHost); a plugin that cannot be
        prepared is reported as quarantined, the others load."""
        import git

        try:
            entries = self.entries()
        except PluginError as exc:
            log.error("%s", exc.message)
            self.problems["plugins.lock"] = exc.message
            return
        for entry in entries:
            source = self.source_of(entry)
            infos = {info.name: info for info in host.report()}
            if entry.name in infos and infos[entry.name].source == source:
                continue
            try:
                plugin_dir = self.prepare(entry)
            except (PluginError, git.GitError, OSError) as exc:
                message = exc.message if isinstance(exc, PluginError) else str(exc)
                self.problems[entry.name] = message
                host.record_unavailable(entry.name, source, entry.version, message)
                continue
            host.register_directory(plugin_dir, source, site=self.site_dir(entry))


def _require_git() -> None:
    if shutil.which("git") is None:
        raise PluginError(
            "plugins from git need the git program, which is not installed (on Debian: "
            "apt-get install git)",
            code="GIT_MISSING",
        )

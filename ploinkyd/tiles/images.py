"""Base tile images, built on this machine with no registry.

Two recipes: ``ploinky/busybox`` (the static busybox of Debian's ``busybox-static`` package and
its applet symlinks, nothing else) and ``ploinky/python`` (a ``debootstrap --variant=minbase``
root filesystem with Python 3, fetched from the apt mirror this machine already uses). Each is
imported with ``docker import`` and tagged ``<name>:<sha256(recipe)[:12]>``: the tag changes
exactly when the recipe does, so an unchanged recipe is never rebuilt, and ``<name>:latest``
follows the newest build. The runner asks ``resolve`` which tag a bare built-in name means.

Building needs root (debootstrap creates device nodes and chowns files) and blocks for minutes;
the daemon calls it from a thread.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import docker
import docker.errors

from ploinkyd.tiles import apt_sources
from ploinkyd.tiles.docker_engine import ImageToolError, connect, image_exists

# Part of every recipe's hash: bump it whenever the build steps below change what they produce.
BUILD_STEPS_VERSION = "1"
BUSYBOX_PACKAGE = "busybox-static"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"

# Trimmed after debootstrap: nothing in a tile reads them, and they are most of the size.
TRIM_PATHS = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/common-licenses",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Recipe:
    """What goes into an image; its JSON form is what the tag hashes."""

    name: str
    kind: Literal["busybox", "debootstrap"]
    description: str
    suite: str = ""
    variant: str = ""
    packages: tuple[str, ...] = ()
    changes: tuple[str, ...] = ()

    def text(self) -> str:
        body: dict[str, Any] = asdict(self)
        body["build_steps_version"] = BUILD_STEPS_VERSION
        if self.kind == "busybox":
            # The binary is copied from the installed package, so its version is the content.
            body["busybox_version"] = installed_version(BUSYBOX_PACKAGE) or "not-installed"
        return json.dumps(body, sort_keys=True)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()[:12]

    def tag(self) -> str:
        return f"{self.name}:{self.digest()}"


@dataclass
class BuildResult:
    name: str
    tag: str
    image_id: str
    built: bool
    seconds: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImageInfo:
    name: str
    tag: str
    present: bool
    image_id: str | None = None
    size_bytes: int | None = None
    created: str | None = None
    description: str = ""
    extra_tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RECIPES: tuple[Recipe, ...] = (
    Recipe(
        name="ploinky/busybox",
        kind="busybox",
        description="static busybox and its applets; no Python (exec-mode tiles only)",
        changes=(f"ENV {PATH_ENV}", 'CMD ["/bin/sh"]'),
    ),
    Recipe(
        name="ploinky/python",
        kind="debootstrap",
        description="minimal Debian with python3 (json, csv, re, math, subprocess)",
        suite="bookworm",
        variant="minbase",
        packages=("python3-minimal", "python3"),
        changes=(f"ENV {PATH_ENV}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
    ),
)


def recipes() -> dict[str, Recipe]:
    """The built-in recipes by image name."""
    return {r.name: r for r in _RECIPES}


def tag_for(name: str) -> str:
    """The content tag of a built-in image, e.g. ``ploinky/python:3f2a9c0d1b7e``."""
    try:
        return recipes()[name].tag()
    except KeyError:
        raise ImageToolError(
            f"unknown built-in image {name!r}; known: {', '.join(recipes())}",
            code="UNKNOWN_IMAGE",
        ) from None


def is_builtin(image: str) -> bool:
    """True for a built-in name, bare or with ``:latest`` or its content tag."""
    repo, _, tag = image.partition(":")
    return repo in recipes() and tag in ("", "latest", tag_for(repo).partition(":")[2])


def resolve(image: str) -> str:
    """A bare built-in name → its content tag; any other reference is returned unchanged."""
    return tag_for(image) if image in recipes() else image


def installed_version(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return None
    status, _, version = out.stdout.partition("\t")
    if out.returncode != 0 or not status.endswith(" installed"):
        return None
    return version.strip() or None


def inspect(
    names: Sequence[str] | None = None, api: docker.APIClient | None = None
) -> list[ImageInfo]:
    """Whether each built-in image is present in the engine, under its current content tag."""
    api = api or connect()
    out = []
    for recipe in _select(names):
        tag = recipe.tag()
        info = image_exists(api, tag)
        if info is None:
            out.append(ImageInfo(recipe.name, tag, False, description=recipe.description))
            continue
        out.append(
            ImageInfo(
                recipe.name,
                tag,
                True,
                image_id=info["Id"],
                size_bytes=int(info.get("Size") or 0),
                created=info.get("Created"),
                description=recipe.description,
                extra_tags=sorted(t for t in info.get("RepoTags") or [] if t != tag),
            )
        )
    return out


def build(
    names: Sequence[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
    api: docker.APIClient | None = None,
) -> list[BuildResult]:
    """Build the named built-in images (all by default) unless their content tag exists.

    Raises ``ImageToolError`` (code ``IMAGE_BUILD_FAILED``) with what to fix: not root, a tool
    or package missing, no usable apt source, debootstrap failing.
    """
    say = progress or (lambda _msg: None)
    api = api or connect()
    results = []
    for recipe in _select(names):
        started = time.monotonic()
        tag = recipe.tag()
        repo = recipe.name
        previous = image_exists(api, tag)
        info = None if force else previous
        built = info is None
        if info is None:
            info = _build_one(api, recipe, say)
        else:
            say(f"{recipe.name}: {tag} is up to date")
        api.tag(info["Id"], repo, "latest", force=True)
        if previous is not None and previous["Id"] != info["Id"]:
            _remove_if_dangling(api, previous["Id"])
        results.append(
            BuildResult(
                name=recipe.name,
                tag=tag,
                image_id=info["Id"],
                built=built,
                seconds=round(time.monotonic() - started, 3),
                size_bytes=int(info.get("Size") or 0),
            )
        )
    return results


def _build_one(api: docker.APIClient, recipe: Recipe, say: Progress) -> dict[str, Any]:
    tag = recipe.tag()
    repo, _, digest = tag.partition(":")
    say(f"{recipe.name}: building {tag}")
    with tempfile.TemporaryDirectory(prefix="ploinkyd-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        if recipe.kind == "busybox":
            _busybox_rootfs(rootfs, say)
        else:
            _debootstrap_rootfs(recipe, rootfs, Path(tmp), say)
        say(f"{recipe.name}: importing into the engine")
        _import(api, rootfs, repo, digest, recipe.changes)
    info = image_exists(api, tag)
    if info is None:
        raise ImageToolError(f"{tag}: the engine accepted the import but has no such image")
    return info


def _remove_if_dangling(api: docker.APIClient, image_id: str) -> None:
    """A forced rebuild leaves the old image untagged; drop it unless something uses it."""
    info = image_exists(api, image_id)
    if info is not None and not info.get("RepoTags"):
        try:
            api.remove_image(image_id)
        except docker.errors.APIError:
            pass  # a container still uses it: the engine keeps it, which is right


def _select(names: Sequence[str] | None) -> list[Recipe]:
    known = recipes()
    if not names:
        return list(known.values())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ImageToolError(
            f"unknown built-in image(s) {', '.join(unknown)}; known: {', '.join(known)}",
            code="UNKNOWN_IMAGE",
        )
    return [known[n] for n in dict.fromkeys(names)]


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise ImageToolError(
            f"{what} must run as root (it creates device nodes and root-owned files); "
            "run 'sudo ploinkyd images build'"
        )


def _run(argv: list[str], what: str, log: Path | None = None) -> str:
    """Run a build step; on failure the error carries the end of its output."""
    try:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise ImageToolError(f"{what}: {argv[0]} is not installed") from None
    if log is not None:
        log.write_text(proc.stdout + proc.stderr, encoding="utf-8")
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise ImageToolError(
            f"{what} failed (exit {proc.returncode}): {tail[-1] if tail else 'no output'}",
            details={"argv": argv, "output_tail": tail},
        )
    return proc.stdout


def _busybox_rootfs(root: Path, say: Progress) -> None:
    _require_root("building ploinky/busybox")
    if installed_version(BUSYBOX_PACKAGE) is None:
        raise ImageToolError(
            f"{BUSYBOX_PACKAGE} is not installed; install it with "
            f"'apt-get install -y {BUSYBOX_PACKAGE}' and build again"
        )
    files = _run(["dpkg-query", "-L", BUSYBOX_PACKAGE], "listing busybox-static").splitlines()
    binary = next((Path(f) for f in files if f.endswith("/bin/busybox")), None)
    if binary is None or not binary.is_file():
        raise ImageToolError(f"{BUSYBOX_PACKAGE} is installed but ships no bin/busybox")
    say(f"ploinky/busybox: {binary} ({installed_version(BUSYBOX_PACKAGE)})")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)  # mkdir's mode is filtered by the umask
    shutil.copy2(binary, root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    # What `busybox --install -s` does inside the image, done from outside: running the
    # binary under chroot would need /proc there, and the host's busybox may differ.
    applets = _run([str(binary), "--list-full"], "listing busybox applets").split()
    for rel in applets:
        link = root / rel
        if rel == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc/passwd").write_text(PASSWD, encoding="utf-8")
    (root / "etc/group").write_text(GROUP, encoding="utf-8")


def _debootstrap_rootfs(recipe: Recipe, root: Path, tmp: Path, say: Progress) -> None:
    _require_root(f"building {recipe.name}")
    if shutil.which("debootstrap") is None:
        raise ImageToolError(
            "debootstrap is not installed; install it with 'apt-get install -y debootstrap' "
            "and build again"
        )
    source = apt_sources.find_mirror(recipe.suite)
    say(f"{recipe.name}: debootstrap {recipe.suite} from {source.uri} (a few minutes)")
    argv = [
        "debootstrap",
        f"--variant={recipe.variant}",
        f"--include={','.join(recipe.packages)}",
    ]
    if source.keyring:
        argv.append(f"--keyring={source.keyring}")
    argv += [recipe.suite, str(root), source.uri]
    _run(argv, f"debootstrap {recipe.suite}", log=tmp / "debootstrap.log")
    for rel in TRIM_PATHS:
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
            path.mkdir()
    for cache in root.glob("usr/lib/python3*/**/__pycache__"):
        shutil.rmtree(cache, ignore_errors=True)
    check = _run(
        ["chroot", str(root), "python3", "-c", "import json, csv, re, math, subprocess; print(1)"],
        f"checking python3 in {recipe.name}",
    )
    if check.strip() != "1":
        raise ImageToolError(f"{recipe.name}: python3 in the new root filesystem does not work")


def _tar_stream(root: Path) -> Iterator[bytes]:
    """The root filesystem as a tar stream, read as ``tar`` writes it (nothing on disk)."""
    proc = subprocess.Popen(
        ["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", "-", "."],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := proc.stdout.read(1 << 20):
            yield chunk
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        if proc.wait() != 0:
            raise ImageToolError(f"tar of {root} failed: {err.strip()}")


def _import(api: docker.APIClient, root: Path, repo: str, tag: str, changes: Sequence[str]) -> None:
    try:
        api.import_image(
            src=_tar_stream(root), repository=repo, tag=tag, changes=list(changes), stream_src=True
        )
    except docker.errors.APIError as exc:
        raise ImageToolError(f"docker import of {repo}:{tag} failed: {exc}") from exc

"""Which Debian mirror this machine already trusts, read from its apt configuration.

The python image is bootstrapped from the same mirror apt uses here, so a machine behind a
local mirror or proxy builds without any extra setting and no host name lives in this repo.
Both formats are read: deb822 ``*.sources`` files and one-line ``sources.list`` entries.
``PLOINKY_DEBIAN_MIRROR`` overrides the choice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ploinkyd.tiles.docker_engine import ImageToolError

APT_DIR = Path("/etc/apt")
MIRROR_ENV = "PLOINKY_DEBIAN_MIRROR"


@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]
    keyring: str | None = None
    origin: str = ""


def find_mirror(suite: str, apt_dir: Path = APT_DIR) -> AptSource:
    """The first enabled ``deb`` source that carries ``suite`` with component ``main``.

    Raises ``ImageToolError`` naming the files read when there is none.
    """
    override = os.environ.get(MIRROR_ENV)
    if override:
        return AptSource(override, (suite,), ("main",), origin=MIRROR_ENV)
    files = sorted((apt_dir / "sources.list.d").glob("*.sources"))
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    sources = [*_deb822_sources(files), *_one_line_sources(one_line)]
    for src in sources:
        if suite in src.suites and "main" in src.components and _usable(src.uri):
            return src
    read = ", ".join(str(f) for f in [*files, *one_line] if f.exists()) or "no apt source files"
    raise ImageToolError(
        f"no apt source for Debian {suite!r} (component main) in {read}; "
        f"add one, or set {MIRROR_ENV} to a Debian mirror URL"
    )


def _usable(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "file")


def _deb822_sources(files: Iterable[Path]) -> Iterator[AptSource]:
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            continue
        for para in re.split(r"\n\s*\n", text):
            fields = _deb822_fields(para)
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in fields.get("types", "").split():
                continue
            keyring = fields.get("signed-by", "").strip()
            # Signed-By may embed the key itself; only a file path can be handed to debootstrap.
            key_path = keyring if keyring.startswith("/") and "\n" not in keyring else None
            for uri in fields.get("uris", "").split():
                yield AptSource(
                    uri=uri.rstrip("/"),
                    suites=tuple(fields.get("suites", "").split()),
                    components=tuple(fields.get("components", "").split()),
                    keyring=key_path if key_path and Path(key_path).is_file() else None,
                    origin=str(path),
                )


def _deb822_fields(para: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = None
    for line in para.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and key is not None:
            fields[key] += "\n" + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        fields[key] = value.strip()
    return fields


_ONE_LINE = re.compile(
    r"^deb\s+(?:\[(?P<opts>[^\]]*)\]\s+)?(?P<uri>\S+)\s+(?P<suite>\S+)\s*(?P<comps>.*)$"
)


def _one_line_sources(files: Iterable[Path]) -> Iterator[AptSource]:
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for raw in lines:
            m = _ONE_LINE.match(raw.split("#", 1)[0].strip())
            if not m:
                continue
            opts = dict(o.split("=", 1) for o in (m.group("opts") or "").split() if "=" in o)
            keyring = opts.get("signed-by")
            yield AptSource(
                uri=m.group("uri").rstrip("/"),
                suites=(m.group("suite"),),
                components=tuple(m.group("comps").split()),
                keyring=keyring if keyring and Path(keyring).is_file() else None,
                origin=str(path),
            )

"""Importing a plugin directory (a checkout with ``ploinky-plugin.toml``) and unloading it again.

The directory goes on ``sys.path`` and its manifest's ``modules`` are imported; the hook
functions of all of them are gathered on one namespace object, which is what pluggy registers,
so a plugin is one entry however many modules it has. Unloading removes the path and every
module imported from the directory, so an ``update`` imports the new commit's code, not a
cached copy.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ploinkyd.errors import PluginError
from ploinkyd.hookspecs import PROJECT
from ploinkyd.plugin_manifest import PluginManifest


@dataclass
class LoadedDir:
    """What importing a plugin directory changed, so :func:`unload` can undo exactly that."""

    root: Path
    manifest: PluginManifest
    paths: list[str] = field(default_factory=list)
    # Modules already imported before (by a test, or the plugin's own code imported directly):
    # not ours to drop.
    preexisting: frozenset[str] = frozenset()


def _inside(module: ModuleType, roots: list[Path]) -> bool:
    file = getattr(module, "__file__", None)
    if not file:
        return False
    path = Path(file).resolve()
    return any(path.is_relative_to(root) for root in roots)


def _roots(loaded: LoadedDir) -> list[Path]:
    return [Path(p).resolve() for p in [str(loaded.root), *loaded.paths]]


def check_module_names(root: Path, manifest: PluginManifest) -> None:
    """Refuse modules whose names are taken by code elsewhere (another plugin, a library):
    Python keeps one module per name, so one of the two would silently get the other's code."""
    for dotted in manifest.modules:
        top = dotted.split(".")[0]
        existing = sys.modules.get(top)
        if existing is not None and not _inside(existing, [root.resolve()]):
            where = getattr(existing, "__file__", None) or "a built-in module"
            raise PluginError(
                f"plugin {manifest.name!r}: module name {top!r} is already used by {where}; "
                "rename the plugin's module (e.g. ploinky_<plugin name>) in the repository and "
                "in modules of ploinky-plugin.toml",
                code="PLUGIN_MODULE_CLASH",
                details={"plugin": manifest.name, "module": top, "existing": where},
            )


def import_dir(root: Path, manifest: PluginManifest, site: Path | None = None) -> ModuleType:
    """Import the manifest's modules from ``root`` (and requirements from ``site``).

    Returns the namespace to register. Any exception from the plugin's own code propagates (the
    host quarantines it); on failure nothing stays on ``sys.path``.
    """
    loaded = LoadedDir(root, manifest, preexisting=frozenset(sys.modules))
    check_module_names(root, manifest)
    if str(root) not in sys.path:
        loaded.paths.append(str(root))
        sys.path.insert(0, str(root))
    if site is not None and site.is_dir() and str(site) not in sys.path:
        # After the daemon's own site-packages: a plugin's requirement never replaces a library
        # ploinkyd itself runs on.
        loaded.paths.append(str(site))
        sys.path.append(str(site))
    importlib.invalidate_caches()
    namespace = ModuleType(f"{PROJECT}_plugin_{manifest.name}")
    namespace.__dict__["__loaded_dir__"] = loaded
    owners: dict[str, str] = {}
    try:
        for dotted in manifest.modules:
            module = importlib.import_module(dotted)
            for attr, value in vars(module).items():
                if not attr.startswith(f"{PROJECT}_"):
                    continue
                if attr in owners and getattr(namespace, attr) is not value:
                    raise PluginError(
                        f"plugin {manifest.name!r}: {attr} is defined in both {owners[attr]} "
                        f"and {dotted}; a plugin implements each hook once",
                        code="PLUGIN_DUPLICATE_HOOK",
                    )
                owners[attr] = dotted
                setattr(namespace, attr, value)
    except BaseException:
        unload(loaded)
        raise
    return namespace


def loaded_dir(plugin: object) -> LoadedDir | None:
    """The :class:`LoadedDir` behind a namespace made by :func:`import_dir`, if it is one."""
    value = getattr(plugin, "__loaded_dir__", None)
    return value if isinstance(value, LoadedDir) else None


def unload(loaded: LoadedDir) -> None:
    """Forget the directory's modules and take its paths off ``sys.path``."""
    roots = _roots(loaded)
    for name, module in list(sys.modules.items()):
        if name not in loaded.preexisting and module is not None and _inside(module, roots):
            del sys.modules[name]
    for path in loaded.paths:
        while path in sys.path:
            sys.path.remove(path)
    importlib.invalidate_caches()

"""``ploinky-plugin.toml``: the manifest at the root of every plugin repository.

::

    name = "s3"                       # [a-z0-9][a-z0-9_-]*, unique among loaded plugins
    version = "0.1.0"
    description = "S3 and S3-compatible storage for backups"
    modules = ["ploinky_s3"]          # imported from the repository root, in order
    requires = ["boto3>=1.28"]        # pip requirements (optional)
    ploinkyd = ">=0.1"                # the ploinkyd versions it works with (optional)

Reading one turns every problem into a :class:`~ploinkyd.errors.PluginError` that names the
file, the key and what is allowed, so a plugin author can fix it from the message alone.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails

from ploinkyd import __version__
from ploinkyd.errors import PluginError

MANIFEST = "ploinky-plugin.toml"

_NAME = r"[a-z0-9][a-z0-9_-]{0,63}"
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class PluginManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=f"^{_NAME}$")
    version: str
    description: str = ""
    modules: list[str] = Field(min_length=1)
    requires: list[str] = Field(default_factory=list)
    ploinkyd: str = ""

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(f"{value!r} is not a version such as 1.0 or 0.2.1") from None
        return value

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[str]) -> list[str]:
        for module in value:
            if not _MODULE.fullmatch(module):
                raise ValueError(f"{module!r} is not a dotted Python module name")
        return value

    @field_validator("requires")
    @classmethod
    def _requires(cls, value: list[str]) -> list[str]:
        for req in value:
            try:
                marker = Requirement(req).marker
            except InvalidRequirement as exc:
                raise ValueError(f"{req!r} is not a pip requirement: {exc}") from None
            try:  # what missing_requirements will do on install, refused here rather than there
                if marker is not None:
                    marker.evaluate()
            except (UndefinedComparison, UndefinedEnvironmentName) as exc:
                raise ValueError(f"{req!r} has a marker pip cannot evaluate: {exc}") from None
        return value

    @field_validator("ploinkyd")
    @classmethod
    def _ploinkyd(cls, value: str) -> str:
        try:
            SpecifierSet(value)
        except InvalidSpecifier:
            raise ValueError(f"{value!r} is not a version range such as '>=0.1,<1'") from None
        return value

    def check_compatible(self, running: str = __version__) -> None:
        """Refuse a plugin that needs another ploinkyd, saying which one it needs."""
        if self.ploinkyd and not SpecifierSet(self.ploinkyd).contains(running, prereleases=True):
            raise PluginError(
                f"plugin {self.name!r} {self.version} needs ploinkyd {self.ploinkyd}; this is "
                f"ploinkyd {running}. Upgrade ploinkyd or install an older release of the plugin "
                "(URL@TAG).",
                code="PLUGIN_INCOMPATIBLE",
                details={"plugin": self.name, "needs": self.ploinkyd, "running": running},
            )

    def missing_requirements(self, extra_paths: Sequence[str] = ()) -> list[str]:
        """The ``requires`` not satisfied by what is installed (here or in ``extra_paths``)."""
        missing = []
        for text in self.requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate():
                continue
            versions = [
                dist.version
                for dist in importlib.metadata.distributions(name=req.name)
                if dist.version
            ]
            for path in extra_paths:
                versions += [
                    dist.version
                    for dist in importlib.metadata.distributions(name=req.name, path=[path])
                ]
            if not any(req.specifier.contains(v, prereleases=True) for v in versions):
                missing.append(text)
        return missing


def read_manifest(root: Path) -> PluginManifest:
    """Read and validate ``root/ploinky-plugin.toml``."""
    path = root / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PluginError(
            f"{root} has no {MANIFEST}; a plugin repository needs one at its root with at least "
            "name, version and modules",
            code="PLUGIN_MANIFEST",
            details={"path": str(path)},
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PluginError(f"cannot read {path}: {exc}", code="PLUGIN_MANIFEST") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PluginError(
            f"{path} is not valid TOML: {exc}",
            code="PLUGIN_MANIFEST",
            details={"path": str(path)},
        ) from None
    except (ValueError, RecursionError):  # tomllib lets int()'s own error through
        raise PluginError(
            f"{path} is not a TOML file ploinkyd can read: a number with more than "
            f"{sys.get_int_max_str_digits()} digits, or arrays nested too deeply",
            code="PLUGIN_MANIFEST",
            details={"path": str(path)},
        ) from None
    try:
        return PluginManifest.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {_explain(err)}"
            for err in exc.errors()
        ]
        raise PluginError(
            f"{path} is invalid: " + "; ".join(problems),
            code="PLUGIN_MANIFEST",
            details={"path": str(path), "problems": problems},
        ) from None


def _explain(err: ErrorDetails) -> str:
    kind = err.get("type")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return (
            "is not a manifest key (allowed: name, version, description, modules, requires, "
            "ploinkyd)"
        )
    if kind == "string_pattern_mismatch":
        return "must be lower-case letters, digits, '-' or '_' (at most 64), starting with one"
    return str(err.get("msg", "is invalid")).removeprefix("Value error, ")

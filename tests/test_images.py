"""Base tile images built locally: content tags, reuse, resolve, and that they really run."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from ploinkyd.cli import images as images_cli
from ploinkyd.tiles import apt_sources, images
from ploinkyd.tiles.docker_engine import ImageToolError
from tests.docker_env import api, busybox_image, python_image

TAG = re.compile(r"^ploinky/(python|busybox):[0-9a-f]{12}$")


def _run(image: str, *argv: str) -> str:
    """``docker run --rm image argv`` through the API; stdout as text."""
    c = api().create_container(image, command=list(argv), user="65534:65534")
    try:
        api().start(c["Id"])
        assert api().wait(c["Id"], timeout=60)["StatusCode"] == 0, api().logs(c["Id"])
        out: bytes = api().logs(c["Id"], stdout=True, stderr=False)
        return out.decode()
    finally:
        api().remove_container(c["Id"], force=True)


def test_recipes_have_content_tags() -> None:
    assert set(images.recipes()) == {"ploinky/python", "ploinky/busybox"}
    for name in images.recipes():
        assert TAG.match(images.tag_for(name)), images.tag_for(name)
        assert images.tag_for(name) == images.tag_for(name)  # stable


def test_tag_changes_with_the_recipe() -> None:
    recipe = images.recipes()["ploinky/python"]
    assert replace(recipe, packages=(*recipe.packages, "less")).tag() != recipe.tag()
    assert replace(recipe, suite="trixie").tag() != recipe.tag()
    assert "busybox_version" in json.loads(images.recipes()["ploinky/busybox"].text())


def test_resolve() -> None:
    assert images.resolve("ploinky/python") == images.tag_for("ploinky/python")
    assert images.resolve("ploinky/busybox") == images.tag_for("ploinky/busybox")
    for other in ("ploinky/python:latest", "alpine", "alpine:3.20", "reg.invalid/x/y:1"):
        assert images.resolve(other) == other
    assert images.is_builtin("ploinky/python:latest")
    assert not images.is_builtin("alpine")


def test_unknown_name_is_a_clear_error() -> None:
    with pytest.raises(ImageToolError) as err:
        images.build(["ploinky/nope"], api=api())
    assert err.value.code == "UNKNOWN_IMAGE"
    assert "ploinky/python" in err.value.message


def test_building_twice_reuses_the_image() -> None:
    busybox_image()
    (first,) = images.build(["ploinky/busybox"], api=api())
    (second,) = images.build(["ploinky/busybox"], api=api())
    assert not second.built
    assert second.image_id == first.image_id
    assert second.tag == images.tag_for("ploinky/busybox")
    latest = api().inspect_image("ploinky/busybox:latest")
    assert latest["Id"] == second.image_id


def test_force_rebuilds_busybox(tmp_path: Path) -> None:
    busybox_image()
    messages: list[str] = []
    (result,) = images.build(["ploinky/busybox"], force=True, progress=messages.append, api=api())
    assert result.built
    assert result.size_bytes > 0
    assert any("building" in m for m in messages)
    assert images.inspect(["ploinky/busybox"], api=api())[0].present


def test_busybox_image_runs_echo() -> None:
    tag = busybox_image()
    assert _run(tag, "echo", "hello from busybox") == "hello from busybox\n"
    # The applets are symlinks to the one static binary; nobody exists for the sandbox user.
    assert _run(tag, "sh", "-c", "readlink /bin/sh; id -u; test -d /tmp && echo tmp").split() == [
        "/bin/busybox",
        "65534",
        "tmp",
    ]


def test_python_image_has_the_stdlib_tiles_need() -> None:
    tag = python_image()
    out = _run(
        tag, "python3", "-c", "import json, csv, re, math, subprocess; print(json.dumps([1]))"
    )
    assert out == "[1]\n"
    info = api().inspect_image(tag)
    assert info["Config"]["Cmd"] == ["python3"]
    # Trimmed: no documentation or apt lists in the image.
    assert (
        _run(tag, "sh", "-c", "find /usr/share/doc /var/lib/apt/lists -mindepth 1 | wc -l").strip()
        == "0"
    )


def test_images_list_command(capsys: pytest.CaptureFixture[str]) -> None:
    python_image()
    busybox_image()
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    images_cli.register(sub, argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["--json", "images", "list"])
    assert args.func(args) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["data"]}
    assert rows["ploinky/python"]["present"] and rows["ploinky/busybox"]["present"]
    assert rows["ploinky/python"]["tag"] == images.tag_for("ploinky/python")

    args = parser.parse_args(["images", "build", "--only", "ploinky/busybox"])
    assert args.func(args) == 0
    assert "up to date" in capsys.readouterr().out


# ---- apt sources ---------------------------------------------------------------------------


def test_mirror_from_deb822_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(apt_sources.MIRROR_ENV, raising=False)
    d = tmp_path / "sources.list.d"
    d.mkdir()
    keyring = tmp_path / "key.gpg"
    keyring.write_bytes(b"")
    (d / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://src.invalid/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: http://security.invalid/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://off.invalid/debian\nSuites: bookworm\nComponents: main\n"
        "Enabled: no\n\n"
        f"Types: deb\nURIs: http://mirror.invalid/debian/\nSuites: bookworm bookworm-updates\n"
        f"Components: main contrib\nSigned-By: {keyring}\n"
    )
    src = apt_sources.find_mirror("bookworm", apt_dir=tmp_path)
    assert src.uri == "http://mirror.invalid/debian"
    assert src.keyring == str(keyring)


def test_mirror_from_one_line_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(apt_sources.MIRROR_ENV, raising=False)
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.invalid/debian bookworm main\n"
        "deb cdrom:[Debian]/ bookworm main\n"
        "deb [arch=amd64] http://one.invalid/debian bookworm main non-free\n"
    )
    assert apt_sources.find_mirror("bookworm", apt_dir=tmp_path).uri == "http://one.invalid/debian"
    with pytest.raises(ImageToolError) as err:
        apt_sources.find_mirror("trixie", apt_dir=tmp_path)
    assert apt_sources.MIRROR_ENV in err.value.message
    monkeypatch.setenv(apt_sources.MIRROR_ENV, "http://override.invalid/debian")
    assert apt_sources.find_mirror("trixie", apt_dir=tmp_path).uri == (
        "http://override.invalid/debian"
    )


def test_this_machine_has_a_mirror_for_the_python_recipe() -> None:
    suite = images.recipes()["ploinky/python"].suite
    src = apt_sources.find_mirror(suite)
    assert src.uri.split(":", 1)[0] in ("http", "https", "file")

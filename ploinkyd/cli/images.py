"""``ploinkyd images``: build and list the base tile images on this machine.

These commands talk to the Docker engine directly, not to the daemon: building needs root and
minutes, and must work before any daemon has ever started.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ploinkyd.cli import output
from ploinkyd.errors import DaemonUnavailable

EXAMPLES = """\
examples:
  sudo ploinkyd images build                     build every base image that is missing
  sudo ploinkyd images build --only ploinky/python --force
  ploinkyd images list --json
"""


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    """Add ``images build`` and ``images list`` to the top-level subparsers ``sub``."""
    images = sub.add_parser(
        "images",
        help="build and list the base tile images",
        description="Build and list the base tile images (no registry needed).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    isub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)

    b = isub.add_parser(
        "build",
        help="build the base images whose recipe changed (needs root)",
        description="Build the base tile images; an image whose recipe is unchanged is kept.",
        parents=[common],
    )
    b.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="build only this image (repeatable), e.g. ploinky/python",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    b.set_defaults(func=cmd_images_build)

    ls = isub.add_parser(
        "list",
        help="each base image, its content tag and whether it is built",
        parents=[common],
    )
    ls.set_defaults(func=cmd_images_list)


def _engine_error(exc: Exception) -> DaemonUnavailable:
    # Same exit code as an unreachable daemon (69, EX_UNAVAILABLE): a service is down.
    return DaemonUnavailable(str(exc), code="ENGINE_UNAVAILABLE")


def _progress(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def cmd_images_build(args: argparse.Namespace) -> int:
    # Imported here: the docker SDK slows every other command's start.
    from ploinkyd.tiles import images
    from ploinkyd.tiles.docker_engine import EngineUnavailable

    try:
        results = images.build(names=args.only, force=args.force, progress=_progress)
    except EngineUnavailable as exc:
        raise _engine_error(exc) from None
    rows = [r.to_dict() for r in results]
    if args.json:
        output.emit_json({"data": rows})
        return 0
    output.table(
        [
            {
                "name": r.name,
                "tag": r.tag,
                "action": "built" if r.built else "up to date",
                "size": _size(r.size_bytes),
                "seconds": f"{r.seconds:.1f}",
            }
            for r in results
        ],
        ["name", "tag", "action", "size", "seconds"],
    )
    return 0


def cmd_images_list(args: argparse.Namespace) -> int:
    # Imported here: the docker SDK slows every other command's start.
    from ploinkyd.tiles import images
    from ploinkyd.tiles.docker_engine import EngineUnavailable

    try:
        infos = images.inspect()
    except EngineUnavailable as exc:
        raise _engine_error(exc) from None
    if args.json:
        output.emit_json({"data": [i.to_dict() for i in infos]})
        return 0
    output.table(
        [
            {
                "name": i.name,
                "tag": i.tag,
                "built": "yes" if i.present else "no",
                "size": _size(i.size_bytes) if i.size_bytes is not None else "",
                "description": i.description,
            }
            for i in infos
        ],
        ["name", "tag", "built", "size", "description"],
    )
    if not all(i.present for i in infos):
        print("build the missing ones with: sudo ploinkyd images build", file=sys.stderr)
    return 0


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"

"""``ploinkyd plugin list | install | update | remove``.

With a daemon running, every change goes through its API (it loads or unloads the plugin at
once, no restart); without one, the CLI does the same steps on the state directory itself and
the daemon loads the result at its next start.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ploinkyd.cli import output
from ploinkyd.cli.common import client, load
from ploinkyd.errors import DaemonUnavailable

if TYPE_CHECKING:
    from ploinkyd.plugins import PluginHost

EXAMPLES = """\
examples:
  ploinkyd plugin list
  ploinkyd plugin install https://example.org/team/ploinky-thumbnails.git@v1.2.0
  ploinkyd plugin install /srv/git/my-plugin.git             a local repository (a branch head)
  ploinkyd plugin install ./plugins/s3 --with-requires       pip-installs boto3 for it
  ploinkyd plugin install https://example.org/mono.git#subdirectory=plugins/sftp
  ploinkyd plugin update thumbnails                          fetch, move the pin, reload
  ploinkyd plugin update thumbnails --ref v1.3.0
  ploinkyd plugin remove thumbnails
"""

# pip may run for minutes on a plugin's requirements.
INSTALL_TIMEOUT_S = 1200.0


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    plug = sub.add_parser(
        "plugin",
        help="plugins: list, install, update, remove",
        description="Plugins: built-in, from entry points, from plugins.paths and from git.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    psub = plug.add_subparsers(dest="plugin_command", metavar="ACTION", required=True)
    psub.add_parser(
        "list", help="each plugin, its hooks, its git pin and any error", parents=[common]
    ).set_defaults(func=cmd_list)
    inst = psub.add_parser(
        "install", help="clone URL[@REF], pin the commit and load it", parents=[common]
    )
    inst.add_argument("url", metavar="URL[@REF]")
    inst.add_argument(
        "--with-requires",
        action="store_true",
        help="pip-install the manifest's requires into the plugin's own directory",
    )
    inst.set_defaults(func=cmd_install)
    upd = psub.add_parser("update", help="fetch, move the pin and reload", parents=[common])
    upd.add_argument("name")
    upd.add_argument("--ref", help="pin this branch, tag or commit instead of the installed ref")
    upd.set_defaults(func=cmd_update)
    rem = psub.add_parser("remove", help="unload and delete an installed plugin", parents=[common])
    rem.add_argument("name")
    rem.set_defaults(func=cmd_remove)


def _offline_host(args: argparse.Namespace) -> PluginHost:
    from ploinkyd.plugins import PluginHost

    host = PluginHost.from_config(load(args).config)
    host.load()
    return host


def _change(args: argparse.Namespace, method: str, path: str, body: Any, offline: Any) -> int:
    try:
        result = client(args).request(method, path, body=body, timeout=INSTALL_TIMEOUT_S)
        where = "loaded into the running daemon"
    except DaemonUnavailable:
        from ploinkyd import plugin_admin

        change = plugin_admin.run_offline(offline(_offline_host(args)))
        result = change.model_dump(mode="json")
        where = "no daemon is running; it takes effect when one starts"
    if args.json:
        output.emit_json(result)
        return 0
    entry = result.get("installed") or result.get("previous") or {}
    pin = f"{entry.get('url', '')} @ {str(entry.get('commit', ''))[:12]}"
    if result["action"] == "remove":
        print(f"removed {entry.get('name')} ({pin}); {where}")
    elif not result.get("changed", True):
        print(f"{entry.get('name')} is already at {pin}")
    else:
        verb = "installed" if result["action"] == "install" else "updated"
        print(f"{verb} {entry.get('name')} {entry.get('version')} from {pin}; {where}")
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    from ploinkyd import plugin_admin

    return _change(
        args,
        "POST",
        "/v1/plugins",
        {"url": args.url, "with_requires": args.with_requires},
        lambda host: plugin_admin.install(host, args.url, with_requires=args.with_requires),
    )


def cmd_update(args: argparse.Namespace) -> int:
    from ploinkyd import plugin_admin

    return _change(
        args,
        "POST",
        f"/v1/plugins/{args.name}/update",
        {"ref": args.ref},
        lambda host: plugin_admin.update(host, args.name, ref=args.ref),
    )


def cmd_remove(args: argparse.Namespace) -> int:
    from ploinkyd import plugin_admin

    return _change(
        args,
        "DELETE",
        f"/v1/plugins/{args.name}",
        None,
        lambda host: plugin_admin.remove(host, args.name),
    )


def cmd_list(args: argparse.Namespace) -> int:
    """Ask the running daemon; without one, load the plugins here and report them."""
    try:
        res = client(args).get("/v1/plugins", per_page=1000)
    except DaemonUnavailable:
        from ploinkyd import plugin_admin

        host = _offline_host(args)
        host.task_kinds()  # calling the hook is what reveals a raising plugin
        data = plugin_admin.listing(host)
        problems = dict(host.repos.problems) if host.repos is not None else {}
        res = {"data": data, "problems": problems}
    plugins = res["data"]
    if args.json:
        output.emit_json(res)
    else:
        rows = [
            {
                "name": p["name"],
                "version": p.get("version") or "",
                "status": p["status"],
                "source": p["source"],
                "hooks": ", ".join(h.removeprefix("ploinkyd_") for h in p["hooks"]),
                "error": (p.get("error") or {}).get("message", ""),
            }
            for p in plugins
        ]
        output.table(rows, ["name", "version", "status", "source", "hooks", "error"])
        for name, problem in (res.get("problems") or {}).items():
            print(f"problem: {name}: {problem}", file=sys.stderr)
    return 1 if any(p["status"] == "quarantined" for p in plugins) else 0

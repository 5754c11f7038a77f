"""What every CLI command needs: the layered config, a control-API client, JSON input."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ploinkyd.client import Client
from ploinkyd.config import LoadedConfig, load_config
from ploinkyd.errors import UserError


def _flags(args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
    return {
        "daemon.state_dir": (args.state_dir, "flag --state-dir"),
        "daemon.runtime_dir": (args.runtime_dir, "flag --runtime-dir"),
        "daemon.node_id": (args.node_id, "flag --node-id"),
        "daemon.log_level": (args.log_level, "flag --log-level"),
        "api.socket": (args.socket, "flag --socket"),
        "tiles.runner": (getattr(args, "runner", None), "flag --runner"),
    }


def load(args: argparse.Namespace) -> LoadedConfig:
    config_file = args.config
    if config_file is None and os.environ.get("PLOINKY_CONFIG"):
        config_file = Path(os.environ["PLOINKY_CONFIG"])
    return load_config(config_file=config_file, flags=_flags(args))


def client(args: argparse.Namespace) -> Client:
    """The daemon's API: over TCP with ``--url``/``PLOINKY_API_URL``, else the socket."""
    url = getattr(args, "api_url", None) or os.environ.get("PLOINKY_API_URL")
    token = os.environ.get("PLOINKY_TOKEN")
    token_file = getattr(args, "token_file", None)
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UserError(f"cannot read --token-file {token_file}: {exc.strerror}") from None
    cafile = os.environ.get("PLOINKY_API_CACERT")
    if url:
        return Client(url=url, token=token, cafile=cafile)
    return Client(load(args).config.resolved_socket(), token=token)


def read_json_arg(file: str) -> Any:
    text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{'stdin' if file == '-' else file}: not valid JSON: {exc}", code="INVALID_JSON"
        ) from None

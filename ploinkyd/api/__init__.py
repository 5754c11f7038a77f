"""The control API (aiohttp) on the daemon's unix socket."""

"""Agents (SPEC §5): directories with an ``agent.toml`` that serve operators or a command.

``manifest`` reads and checks one agent directory; ``discovery`` finds every agent under the
configured search paths. Neither starts containers or queues: the daemon does that.
"""

"""ploinkyd: a local job daemon that turns directories into durable work queues."""

from __future__ import annotations

__version__ = "0.1.0"

"""Counters a queue keeps about itself; the metrics and status endpoints read them."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Seconds from file drop to durable record.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass
class QueueStats:
    succeeded: Counter[str] = field(default_factory=Counter)  # by kind
    failed: Counter[str] = field(default_factory=Counter)  # by error code
    cancelled: int = 0
    retries: int = 0
    deferrals: int = 0
    rescans: int = 0
    lock_takeovers: int = 0
    record_failures: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def count(self, status: str, kind: str | None, error: dict[str, Any] | None) -> None:
        if status == "succeeded":
            self.succeeded[kind or ""] += 1
        elif status == "cancelled":
            self.cancelled += 1
        else:
            self.failed[(error or {}).get("code", "UNKNOWN")] += 1

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    @property
    def completed(self) -> int:
        return sum(self.succeeded.values())

    @property
    def failures(self) -> int:
        return sum(self.failed.values())

"""Prometheus exposition of the daemon's counters, built at scrape time from live state."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from ploinkyd.queue.stats import LATENCY_BUCKETS

if TYPE_CHECKING:
    from ploinkyd.daemon import Daemon


class DaemonCollector:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Any]:
        d = self.daemon
        depth = GaugeMetricFamily(
            "ploinkyd_queue_depth", "Tasks waiting in a queue", labels=["queue"]
        )
        inflight = GaugeMetricFamily(
            "ploinkyd_tasks_in_flight", "Tasks running on this node", labels=["queue"]
        )
        done = CounterMetricFamily(
            "ploinkyd_tasks_completed", "Tasks that succeeded", labels=["queue", "kind"]
        )
        failed = CounterMetricFamily(
            "ploinkyd_tasks_failed", "Tasks that failed, by error code", labels=["queue", "code"]
        )
        cancelled = CounterMetricFamily(
            "ploinkyd_tasks_cancelled", "Tasks cancelled", labels=["queue"]
        )
        retries = CounterMetricFamily(
            "ploinkyd_task_retries", "Retries scheduled", labels=["queue"]
        )
        deferrals = CounterMetricFamily(
            "ploinkyd_task_deferrals",
            "Tasks put back without spending an attempt (a dependency such as Docker was down)",
            labels=["queue"],
        )
        takeovers = CounterMetricFamily(
            "ploinkyd_lock_takeovers", "Stale locks broken and taken over", labels=["queue"]
        )
        rescans = CounterMetricFamily("ploinkyd_rescans", "Names-only rescans", labels=["queue"])
        record_failures = CounterMetricFamily(
            "ploinkyd_record_write_failures",
            "Failed attempts to write a record or a retried task (disk full?); each is retried",
            labels=["queue"],
        )
        disk_full = GaugeMetricFamily(
            "ploinkyd_queue_disk_full",
            "1 while a queue's filesystem has no space (or quota) left: claims are paused and "
            "records wait in memory",
            labels=["queue"],
        )
        records_waiting = GaugeMetricFamily(
            "ploinkyd_queue_records_waiting",
            "Records and retried tasks held in memory until they can be written",
            labels=["queue"],
        )
        latency = HistogramMetricFamily(
            "ploinkyd_task_latency_seconds",
            "From task file to durable record",
            labels=["queue"],
        )
        for name, h in sorted(d.queues.items()):
            snap = h.runner.snapshot()
            s = h.stats
            depth.add_metric([name], snap["pending"])
            inflight.add_metric([name], snap["running"])
            for kind, n in sorted(s.succeeded.items()):
                done.add_metric([name, kind], n)
            for code, n in sorted(s.failed.items()):
                failed.add_metric([name, code], n)
            cancelled.add_metric([name], s.cancelled)
            retries.add_metric([name], s.retries)
            deferrals.add_metric([name], s.deferrals)
            takeovers.add_metric([name], s.lock_takeovers)
            rescans.add_metric([name], s.rescans)
            record_failures.add_metric([name], s.record_failures)
            space = h.runner.space
            disk_full.add_metric([name], 1 if space.full else 0)
            records_waiting.add_metric([name], space.records_waiting + space.retries_waiting)
            cumulative, buckets = 0, []
            for bound, n in zip((*LATENCY_BUCKETS, float("inf")), s.latency_counts, strict=True):
                cumulative += n
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            latency.add_metric([name], buckets, s.latency_sum)
        overflows = CounterMetricFamily(
            "ploinkyd_inotify_overflows", "Kernel inotify queue overflows (events lost)"
        )
        overflows.add_metric([], d.watcher.overflows if d.watcher else 0)
        up = GaugeMetricFamily("ploinkyd_ready", "1 when the daemon is ready")
        up.add_metric([], 1 if d.ready else 0)
        yield from (depth, inflight, done, failed, cancelled, retries, takeovers, rescans)
        yield from (deferrals, record_failures, disk_full, records_waiting, latency, overflows, up)
        tiles = getattr(d, "tiles", None)
        if tiles is not None:
            yield from tiles.metrics()
        backup = getattr(d, "backup", None)
        if backup is not None:
            yield from backup.metrics()


def render(daemon: Daemon) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    return generate_latest(registry)

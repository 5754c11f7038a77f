"""Benchmark: the control API's ``GET /v1/health`` and ``GET /v1/status`` over TCP loopback.

    python tests/bench_api.py [--seconds 10] [--rate 500] [--connections 50] [--no-install]
                              [--transport auto|tcp|unix]

Starts a real ``ploinkyd run`` (process runner, scratch dirs) with ``[api] listen_tcp`` on a
free loopback port and a viewer token, then for each endpoint measures, every request carrying
``Authorization: Bearer`` so that token lookup, role check, rate limiter (set far above the
load) and the audit hook are all on the measured path:

- ``saturation``: requests/s with Debian's ``wrk`` (2 threads, ``--connections`` connections,
  ``--seconds``); installed with apt-get when missing and run as root, unless ``--no-install``;
- ``fixed_rate``: p50/p90/p99/max latency at ``--rate`` requests/s from an open-loop aiohttp
  generator. Request i is due at ``t0 + i / rate`` and its latency runs from that due time, not
  from when it was sent, so a stalled server cannot hide its stall by slowing the generator
  (coordinated omission). Requests sent more than one interval late count as ``missed_slot``.

Prints one JSON object per figure, then a summary table beside the targets (>= 3000 rps at
saturation, p99 <= 5 ms at 500 rps).

``--transport auto`` (the default) falls back to the unix control socket when the daemon does
not listen on TCP; wrk cannot reach a unix socket, so saturation is then measured by a
closed-loop aiohttp generator (``--connections`` workers) instead, and the daemon's and the
generator's CPU use are printed so one can see which side was the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ploinkyd.testing.servers import free_port
from ploinkyd.tokens import TokenStore
from tests.daemon_harness import DaemonProc, new_daemon

ENDPOINTS = ("/v1/health", "/v1/status")
TARGET_RPS = 3000.0
TARGET_P99_MS = 5.0
TARGET_RATE = 500.0
WRK_THREADS = 2
WARMUP_S = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
HEADERS: dict[str, str] = {}  # the bearer token, once main() has made it


@dataclass(frozen=True)
class Transport:
    """Where the generators connect: TCP ``host:port``, or the daemon's unix socket."""

    kind: str
    host: str = "127.0.0.1"
    port: int = 0
    socket_path: str = ""

    def url(self, path: str) -> str:
        return (
            f"http://{self.host}:{self.port}{path}"
            if self.kind == "tcp"
            else f"http://localhost{path}"
        )

    def connector(self, limit: int) -> aiohttp.BaseConnector:
        if self.kind == "tcp":
            return aiohttp.TCPConnector(limit=limit, force_close=False)
        return aiohttp.UnixConnector(path=self.socket_path, limit=limit, force_close=False)


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def tcp_listening(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s, contextlib.suppress(OSError):
            s.connect((host, port))
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` from /proc, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def ensure_wrk(no_install: bool) -> str | None:
    found = shutil.which("wrk")
    if found or no_install or os.geteuid() != 0:
        return found
    print("installing wrk with apt-get ...", file=sys.stderr, flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*cmd: str) -> int:
        return subprocess.run(
            ["apt-get", *cmd], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        ).returncode

    if apt("install", "-y", "wrk") != 0:
        apt("update")
        apt("install", "-y", "wrk")
    return shutil.which("wrk")


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match[1]) * _WRK_UNITS[match[2]]


def saturation_wrk(
    wrk: str, transport: Transport, path: str, seconds: float, connections: int, daemon_pid: int
) -> dict[str, Any]:
    url = transport.url(path)
    subprocess.run(
        [wrk, "-t1", "-c4", f"-d{WARMUP_S:g}s", *[f"-H{k}: {v}" for k, v in HEADERS.items()], url],
        capture_output=True,
        check=True,
        timeout=60,
    )
    cpu0 = cpu_seconds(daemon_pid)
    out = subprocess.run(
        [
            wrk,
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--timeout",
            "5s",
            "--latency",
            *[f"-H{k}: {v}" for k, v in HEADERS.items()],
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    daemon_cpu = cpu_seconds(daemon_pid) - cpu0
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:\s+(.*)", out)
    latency = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    if rps is None or total is None:
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    return {
        "tool": f"wrk -t{WRK_THREADS} -c{connections} -d{seconds:g}s",
        "rps": round(float(rps[1]), 1),
        "requests": int(total[1]),
        "non_2xx": int(non2xx[1]) if non2xx else 0,
        "socket_errors": errors[1].strip() if errors else None,
        "latency_ms": {f"p{k}": round(_wrk_ms(v), 3) for k, v in latency.items()},
        "daemon_cpu_pct": round(100 * daemon_cpu / seconds, 1),
    }


async def saturation_closed_loop(
    transport: Transport, path: str, seconds: float, connections: int, daemon_pid: int
) -> dict[str, Any]:
    """``connections`` workers, each sending its next request as soon as the last one answered."""
    url = transport.url(path)
    counts = {"ok": 0, "bad": 0}

    async def worker(session: aiohttp.ClientSession, until: float) -> None:
        while time.perf_counter() < until:
            async with session.get(url) as resp:
                await resp.read()
                counts["ok" if resp.status == 200 else "bad"] += 1

    connector = transport.connector(connections)
    async with aiohttp.ClientSession(connector=connector, headers=HEADERS) as session:
        until = time.perf_counter() + WARMUP_S
        await asyncio.gather(*(worker(session, until) for _ in range(min(4, connections))))
        counts.update(ok=0, bad=0)
        cpu0, self0 = cpu_seconds(daemon_pid), time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, t0 + seconds) for _ in range(connections)))
        elapsed = time.perf_counter() - t0
        daemon_cpu, self_cpu = cpu_seconds(daemon_pid) - cpu0, time.process_time() - self0
    total = counts["ok"] + counts["bad"]
    return {
        "tool": f"aiohttp closed loop, {connections} connections (wrk cannot use a unix socket)",
        "rps": round(total / elapsed, 1),
        "requests": total,
        "non_2xx": counts["bad"],
        "daemon_cpu_pct": round(100 * daemon_cpu / elapsed, 1),
        "generator_cpu_pct": round(100 * self_cpu / elapsed, 1),
    }


async def fixed_rate(
    transport: Transport, path: str, rate: float, seconds: float, connections: int
) -> dict[str, Any]:
    url = transport.url(path)
    interval = 1.0 / rate
    n = int(rate * seconds)
    latencies: list[float] = []
    failures = {"non_2xx": 0, "errors": 0}
    missed = 0

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    failures["non_2xx"] += 1
        except (aiohttp.ClientError, OSError):
            failures["errors"] += 1
            return
        latencies.append((time.perf_counter() - due) * 1000)

    connector = transport.connector(connections)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=HEADERS
    ) as session:
        # Open a few keep-alive connections first so the run does not time TCP handshakes.
        await asyncio.gather(
            *(one(session, time.perf_counter()) for _ in range(min(8, connections)))
        )
        latencies.clear()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter() + 0.05
        for i in range(n):
            due = t0 + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > interval:
                missed += 1
            task = loop.create_task(one(session, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks)
        elapsed = time.perf_counter() - t0
    ordered = sorted(latencies)
    return {
        "tool": f"aiohttp open loop, 1 request every {interval * 1000:g} ms, pool {connections}",
        "rate": rate,
        "scheduled": n,
        "completed": len(latencies),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "missed_slot": missed,
        **failures,
        "latency_ms": {
            "p50": round(percentile(ordered, 0.50), 3),
            "p90": round(percentile(ordered, 0.90), 3),
            "p99": round(percentile(ordered, 0.99), 3),
            "max": round(ordered[-1], 3) if ordered else float("nan"),
        },
    }


def start_daemon(root: Path, port: int) -> DaemonProc:
    daemon = new_daemon(
        root,
        config={
            "api": {"listen_tcp": f"127.0.0.1:{port}", "rate_limit": 1e9, "rate_burst": 10**9},
            "tiles": {"runner": "process"},
            "daemon": {"log_level": "warning"},
        },
    )
    made = TokenStore(daemon.state / "api" / "tokens.json").create(
        "bench", "viewer", created_by="bench_api"
    )
    HEADERS["Authorization"] = f"Bearer {made.token}"
    return daemon.start()


def choose_transport(daemon: DaemonProc, port: int, wanted: str) -> Transport:
    bound = tcp_listening("127.0.0.1", port, timeout=2.0)
    emit(
        {
            "figure": "tcp_listener",
            "listen_tcp": f"127.0.0.1:{port}",
            "listening": bound,
            "note": None
            if bound
            else "the daemon accepted api.listen_tcp but does not listen on it",
        }
    )
    if bound and wanted in ("auto", "tcp"):
        return Transport("tcp", port=port)
    if wanted == "tcp":
        raise SystemExit("api.listen_tcp is not being served; rerun with --transport unix or auto")
    return Transport("unix", socket_path=str(daemon.socket))


def summary(rows: list[dict[str, Any]], transport: Transport) -> str:
    lines = [
        f"control API over {'TCP loopback' if transport.kind == 'tcp' else 'the unix socket (TCP not served)'}",
        f"{'endpoint':<12} {'figure':<26} {'result':>12} {'target':>12}  ok",
    ]
    for r in rows:
        lines.append(
            f"{r['endpoint']:<12} {r['figure']:<26} {r['result']:>12} {r['target']:>12}  "
            f"{'yes' if r['ok'] else 'NO' if r['ok'] is False else '-'}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each measurement")
    ap.add_argument("--rate", type=float, default=TARGET_RATE, help="fixed-rate requests/s")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections / client pool")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install wrk")
    ap.add_argument("--transport", choices=("auto", "tcp", "unix"), default="auto")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    port = free_port()
    daemon = start_daemon(root, port)
    rows: list[dict[str, Any]] = []
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        transport = choose_transport(daemon, port, args.transport)
        wrk = ensure_wrk(args.no_install) if transport.kind == "tcp" else None
        if transport.kind == "tcp" and wrk is None:
            print(
                "wrk not found (--no-install or not root): saturation uses aiohttp", file=sys.stderr
            )
        for path in ENDPOINTS:
            if wrk is not None:
                sat = saturation_wrk(wrk, transport, path, args.seconds, args.connections, pid)
            else:
                sat = asyncio.run(
                    saturation_closed_loop(transport, path, args.seconds, args.connections, pid)
                )
            emit(
                {
                    "figure": "saturation",
                    "endpoint": path,
                    "transport": transport.kind,
                    **sat,
                    "target_rps": TARGET_RPS,
                }
            )
            rows.append(
                {
                    "endpoint": path,
                    "figure": "saturation rps",
                    "result": f"{sat['rps']:,.0f}",
                    "target": f">= {TARGET_RPS:,.0f}",
                    "ok": sat["rps"] >= TARGET_RPS,
                }
            )
            rows.append(
                {
                    "endpoint": path,
                    "figure": "  daemon CPU at saturation",
                    "result": f"{sat['daemon_cpu_pct']:.0f} %",
                    "target": "",
                    "ok": None,
                }
            )
            fr = asyncio.run(fixed_rate(transport, path, args.rate, args.seconds, args.connections))
            emit(
                {
                    "figure": "fixed_rate",
                    "endpoint": path,
                    "transport": transport.kind,
                    **fr,
                    "target_p99_ms": TARGET_P99_MS,
                }
            )
            lat = fr["latency_ms"]
            for q in ("p50", "p90", "p99", "max"):
                rows.append(
                    {
                        "endpoint": path,
                        "figure": f"{q} ms at {args.rate:g} rps",
                        "result": f"{lat[q]:.2f}",
                        "target": f"<= {TARGET_P99_MS:g}" if q == "p99" else "",
                        "ok": lat[q] <= TARGET_P99_MS if q == "p99" else None,
                    }
                )
            rows.append(
                {
                    "endpoint": path,
                    "figure": "  missed slots / errors",
                    "result": f"{fr['missed_slot']} / {fr['non_2xx'] + fr['errors']}",
                    "target": "",
                    "ok": None,
                }
            )
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(summary(rows, transport))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

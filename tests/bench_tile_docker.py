"""Benchmark: what one tile task costs in Docker, three ways.

    python tests/bench_tile_docker.py [--cold 20] [--exec 50] [--warm 2000]

Prints one JSON object with p50/p99/mean milliseconds per task for:
- ``cold_run``: a container per task, as ``docker run -i --rm`` would do it: create, attach,
  start, one request through the tile runtime, close stdin, wait for the exit, remove;
- ``docker_exec``: ``docker exec`` into a warm container (``exec_run`` of ``python3 -c``);
- ``warm_stream``: one request/response line over the attach stream of a warm container,
  through ``DockerRunner.call`` (what the daemon does);
- ``busybox_exec_once``: an exec-mode call in the busybox image through the runner (a
  container per call, since the image has no Python).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ploinkyd.config import TilesConfig
from ploinkyd.tiles import docker_containers as dc
from ploinkyd.tiles.attach import open_attached
from ploinkyd.tiles.docker_runner import DockerRunner, default_runtime_dir
from ploinkyd.tiles.model import Limits, Stage, TileCall
from tests.docker_env import api, busybox_image, python_image, remove_node_containers

NODE = "bench-tile-docker"
REQUEST = b'{"id":"b","stages":[{"op":"count","params":{}}],"input":[1,2,3]}\n'


def summary(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)
    return {
        "n": len(ms),
        "p50_ms": round(ms[len(ms) // 2], 3),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "mean_ms": round(statistics.fmean(ms), 3),
    }


async def timed(n: int, one: Callable[[], Awaitable[Any]]) -> dict[str, Any]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await one()
        samples.append(time.perf_counter() - started)
    return summary(samples)


def spec(image: str) -> dc.ContainerSpec:
    return dc.ContainerSpec(
        image=image,
        command=dc.RUNTIME_COMMAND,
        limits=Limits(),
        user="65534:65534",
        labels={dc.LABEL_MANAGED: "true", dc.LABEL_NODE: NODE},
        env=dc.runtime_env((), ()),
        runtime_dir=default_runtime_dir(),
    )


async def cold_once(image: str) -> None:
    client = api()
    cid, sock = await asyncio.to_thread(dc.create_attached, client, spec(image))
    stream = await open_attached(sock, cid[:12])
    try:
        await asyncio.to_thread(dc.start, client, cid)
        line = await stream.request(REQUEST, 1 << 20)
        assert json.loads(line)["output"] == 3, line
        assert stream.transport is not None
        stream.transport.write_eof()  # StdinOnce: the runtime sees EOF and exits
        await asyncio.to_thread(client.wait, cid, 30)
    finally:
        stream.close()
        sock.close()
        await asyncio.to_thread(dc.remove_quietly, client, cid)


async def bench_exec(image: str, n: int) -> dict[str, Any]:
    client = api()
    cid, sock = await asyncio.to_thread(dc.create_attached, client, spec(image))
    stream = await open_attached(sock, cid[:12])
    try:
        await asyncio.to_thread(dc.start, client, cid)

        async def one() -> None:
            def run() -> None:
                ex = client.exec_create(cid, ["python3", "-c", "print(len([1, 2, 3]))"])
                out = client.exec_start(ex["Id"])
                assert out.strip() == b"3", out

            await asyncio.to_thread(run)

        await one()
        return await timed(n, one)
    finally:
        stream.close()
        sock.close()
        await asyncio.to_thread(dc.remove_quietly, client, cid)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    image = python_image()
    busybox = busybox_image()
    result: dict[str, Any] = {"image": image}
    remove_node_containers(NODE)
    try:
        await cold_once(image)  # the first start pays for loading the image's layers
        result["cold_run"] = await timed(args.cold, lambda: cold_once(image))
        result["docker_exec"] = await bench_exec(image, args.exec)
        with tempfile.TemporaryDirectory() as tmp:
            runner = DockerRunner(TilesConfig(image=image), Path(tmp), node=NODE)
            await runner.start()
            try:
                call = TileCall(image=image, stages=(Stage(op="count"),), input=[1, 2, 3])
                for _ in range(50):
                    await runner.call(call)
                result["warm_stream"] = await timed(args.warm, lambda: runner.call(call))
                once = TileCall(
                    image=busybox,
                    stages=(),
                    input="abc",
                    exec=("tr", "a-z", "A-Z"),
                    exec_format="text",
                )
                result["busybox_exec_once"] = await timed(args.cold, lambda: runner.call(once))
            finally:
                await runner.close()
    finally:
        remove_node_containers(NODE)
    for key in ("cold_run", "docker_exec"):
        result[f"{key}_vs_warm"] = round(
            result[key]["p50_ms"] / max(result["warm_stream"]["p50_ms"], 1e-6), 1
        )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=20, help="cold containers (and busybox)")
    parser.add_argument("--exec", type=int, default=50, help="docker exec calls")
    parser.add_argument("--warm", type=int, default=2000, help="warm stream round trips")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))

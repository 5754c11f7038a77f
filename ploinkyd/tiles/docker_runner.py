"""The ``docker`` tile runner: warm, sandboxed containers speaking the tile protocol.

Each pool key gets up to ``pool_max`` containers running ``python3 -u -m tile_runtime`` as
PID 1, with the runtime package bind-mounted read-only. A call borrows one idle container,
writes one request line on its stdin and awaits one response line: on the event loop, with
no Docker API call at all, so a warm round trip is a fraction of a millisecond. Creating,
starting, inspecting and removing containers go through threads.

Failure handling follows ``TileRunner``'s contract: a container that dies mid-call is
diagnosed (OOM or crash) and replaced; an idle one that dies (the engine stopped, say) is
dropped at once and its pool brought back to ``pool_min``; a cancelled call kills its
container, so a late answer can never reach the next caller; an unreachable engine defers the
task and is reconnected to lazily, by the next call or the housekeeping loop, which also warms
pools again once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ploinkyd.config import TilesConfig
from ploinkyd.errors import PloinkyError, TaskDeferred, TaskFailed
from ploinkyd.tiles import docker_containers as dc
from ploinkyd.tiles import images
from ploinkyd.tiles.attach import OutputTooLarge, StreamClosed, open_attached
from ploinkyd.tiles.docker_engine import (
    connect,
    deferred,
    engine_url,
    is_unreachable,
    release_sockets,
)
from ploinkyd.tiles.docker_exec import EXEC_POOL, run_once
from ploinkyd.tiles.docker_pool import Pool, Worker, output_too_large, pool_hash
from ploinkyd.tiles.model import TileCall

log = logging.getLogger("ploinkyd.tiles")

HOUSEKEEPING_MAX_S = 10.0
RECENT_CONTAINERS = 32


def default_runtime_dir() -> Path:
    import ploinkyd.tile_runtime

    return Path(ploinkyd.tile_runtime.__file__).resolve().parent


class DockerRunner:
    """``TileRunner`` on a Docker (or Podman-compatible) engine."""

    name = "docker"
    sandboxed = True

    def __init__(
        self,
        config: TilesConfig,
        state_dir: Path | None = None,
        *,
        node: str | None = None,
        base_url: str | None = None,
        runtime_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.node = node or socket.gethostname()
        self.daemon_id = uuid.uuid4().hex[:12]
        self.base_url = engine_url(base_url)
        self._base_url_arg = base_url
        self._runtime_dir = runtime_dir
        self._clock = clock
        self._api: docker.APIClient | None = None
        self._engine_version: str | None = None
        self._reason: str | None = "not connected yet"
        self._connect_lock: asyncio.Lock | None = None
        # Keyed by TileCall.pool_key() itself: hashing that tuple is cheaper per call than
        # the label hash, which is computed once per pool.
        self._pools: dict[tuple[Any, ...], Pool] = {}
        self._resolved: dict[str, str] = {}
        self._no_python: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._oneshots: dict[str, Worker] = {}
        self._retiring: dict[str, Worker] = {}  # being killed and removed in a thread
        # Pool keys that have had a container running: housekeeping keeps them at pool_min
        # (a pool whose image is missing is not retried for ever).
        self._warmed: set[str] = set()
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_CONTAINERS)
        self._ids = itertools.count(1)
        self._housekeeper: asyncio.Task[None] | None = None
        self._closed = False
        where = str(state_dir.resolve()) if state_dir is not None else ""
        self._state_label = hashlib.sha256(where.encode()).hexdigest()[:12]

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and remove orphans when the engine is up; never raises when it is down."""
        self._closed = False
        try:
            await self._ensure_api()
        except TaskDeferred as exc:
            log.warning("docker runner: %s", exc.message)
        if self._housekeeper is None:
            self._housekeeper = asyncio.create_task(self._housekeeping(), name="tiles-docker")

    async def close(self) -> None:
        self._closed = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
            self._housekeeper = None
        workers = [w for pool in self._pools.values() for w in pool.close()]
        workers += list(self._oneshots.values())
        self._pools.clear()
        for worker in workers:
            self._discard(worker, "runner closed")
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        if self._api is not None:
            api, self._api = self._api, None
            # Whatever an outage or an abandoned start left behind carries our label.
            with contextlib.suppress(Exception):
                for c in await asyncio.to_thread(dc.list_managed, api, self.node):
                    if (c.get("Labels") or {}).get(dc.LABEL_DAEMON) == self.daemon_id:
                        await asyncio.to_thread(dc.remove_quietly, api, c["Id"])
            await asyncio.to_thread(api.close)
        self._reason = "closed"

    # ---- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sandboxed": self.sandboxed,
            "ready": self._api is not None and self._reason is None,
            "reason": self._reason,
            "engine": self._engine_version,
            "engine_url": self.base_url,
            "node": self.node,
            "daemon_id": self.daemon_id,
            "pools": [pool.status() for pool in self._pools.values()],
        }

    def containers(self) -> list[dict[str, Any]]:
        """Every container this runner holds (running, or stopped and being removed), then
        the most recently removed ones with ``removed_because``."""
        live = [w.to_dict() for pool in self._pools.values() for w in pool.workers]
        live += [w.to_dict() for w in self._oneshots.values()]
        live += [w.to_dict() for w in self._retiring.values()]
        return live + list(self._recent)

    def logs(self, pool: str, lines: int) -> list[str]:
        """The last ``lines`` stderr lines of the containers of ``pool`` (e.g. an agent's),
        each prefixed with its container's short id."""
        workers = [w for p in self._pools.values() if p.owner == pool for w in p.workers]
        workers += [w for w in self._retiring.values() if w.owner == pool]
        out = [
            f"{w.short_id} {line}"
            for w in workers
            if w.stream is not None
            for line in w.stream.stderr_tail
        ]
        return out[-lines:]

    async def retire(self, pool: str) -> int:
        """Stop and remove every container of ``pool`` (an agent stopped or removed)."""
        keys = [key for key, p in self._pools.items() if p.owner == pool]
        closed = [self._pools.pop(key) for key in keys]
        self._warmed -= {p.key for p in closed}
        workers = [w for p in closed for w in p.close()]
        for worker in workers:
            self._discard(worker, f"pool {pool} retired")
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        return len(workers)

    async def freeze(self, pool: str) -> int:
        """Pause (cgroup freezer) the running containers of ``pool`` (an agent, for a
        snapshot backup); returns how many. A call in flight on one waits until ``thaw``."""
        api = await self._ensure_api()
        found = await self._containers_of(api, pool)
        ids = [c["Id"] for c in found if c.get("State") == "running"]
        for cid in ids:
            await asyncio.to_thread(api.pause, cid)
        return len(ids)

    async def thaw(self, pool: str) -> int:
        """Unpause every paused container of ``pool``; returns how many."""
        api = await self._ensure_api()
        found = await self._containers_of(api, pool)
        thawed = 0
        for c in found:
            if c.get("State") != "paused":
                continue
            try:
                await asyncio.to_thread(api.unpause, c["Id"])
            except docker.errors.NotFound:
                continue  # removed meanwhile (idle reaping): nothing left to thaw
            thawed += 1
        return thawed

    async def _containers_of(self, api: docker.APIClient, pool: str) -> list[dict[str, Any]]:
        # Containers carry their pool key, not the agent: map the agent's pools to their keys.
        keys = {p.key for p in self._pools.values() if p.owner == pool}
        found = await asyncio.to_thread(dc.list_managed, api, self.node)
        return [
            c
            for c in found
            if (c.get("Labels") or {}).get(dc.LABEL_POOL) in keys
            and (c.get("Labels") or {}).get(dc.LABEL_DAEMON) == self.daemon_id
        ]

    async def image_id(self, image: str) -> str | None:
        """The engine's id of ``image`` (after resolving built-in names), for cache keys: a
        re-pulled tag gets a new id, so results of the old image are not served."""
        api = await self._ensure_api()
        resolved = self._resolved.get(image) or images.resolve(image)
        try:
            info = await asyncio.to_thread(api.inspect_image, resolved)
        except docker.errors.ImageNotFound:
            return None
        return str(info.get("Id") or "") or None

    # ---- calls ----------------------------------------------------------------------------

    async def call(self, call: TileCall) -> Any:
        if self._closed:
            raise TaskDeferred("the docker tile runner is closed", code="RUNNER_CLOSED")
        api = await self._ensure_api()
        image = self._resolved.get(call.image)
        if image is None:
            # Resolving the busybox recipe asks dpkg for a version: once per runner is enough.
            image = self._resolved[call.image] = images.resolve(call.image)
        if call.exec is not None and not self._has_python(call.image, image):
            return await self._run_once(api, call, image)
        rid = f"r{next(self._ids)}"
        if call.exec is not None:
            stages: list[dict[str, Any]] = [
                {"op": "__exec__", "params": {"argv": list(call.exec), "format": call.exec_format}}
            ]
        else:
            stages = [s.model_dump() for s in call.stages]
        try:
            line = (
                json.dumps(
                    {"id": rid, "stages": stages, "input": call.input},
                    separators=(",", ":"),
                    ensure_ascii=False,
                )
                + "\n"
            ).encode()
        except (TypeError, ValueError) as exc:
            raise TaskFailed(
                f"the tile input is not JSON: {exc}", code="BAD_INPUT", retryable=False
            ) from None
        pool = self._pool_for(call, image)
        try:
            worker = await pool.acquire()
        except TaskFailed as exc:
            if exc.code == "NO_TILE_RUNTIME" and call.exec is not None:
                # Learned just now that this image has no python3: exec calls still work,
                # one container each.
                return await self._run_once(api, call, image)
            raise
        assert worker.stream is not None
        try:
            raw = await worker.stream.request(line, call.max_output_bytes)
        except asyncio.CancelledError:
            self._replace(pool, worker, "call cancelled")
            raise
        except OutputTooLarge as exc:
            self._replace(pool, worker, "output too large")
            raise output_too_large("the tile's response", exc.limit, worker) from None
        except StreamClosed:
            try:
                failure = await self._diagnose(api, worker)
            finally:  # even when cancelled while diagnosing: the slot must come back
                self._replace(pool, worker, "exited mid-call")
            raise failure from None
        worker.calls += 1
        return self._decode(raw, rid, worker, pool)

    def _replace(self, pool: Pool, worker: Worker, why: str) -> None:
        """Drop a worker whose state is unknown (or dead) and start its successor."""
        pool.drop(worker, why)
        self._refill(pool)

    def _decode(self, raw: bytes, rid: str, worker: Worker, pool: Pool) -> Any:
        try:
            msg = json.loads(raw)
            ok = msg["ok"]
            if msg.get("id") != rid:
                raise ValueError(f"answer for {msg.get('id')!r}, expected {rid!r}")
        except (ValueError, KeyError, TypeError) as exc:
            self._replace(pool, worker, "protocol error")
            raise TaskFailed(
                f"the tile runtime broke the protocol ({exc}); its container was replaced",
                code="PROTOCOL_ERROR",
                details={"container": worker.short_id, "line": raw[:200].decode(errors="replace")},
            ) from None
        if ok:
            pool.release(worker)
            return msg.get("output")
        err = msg.get("error") or {}
        code = str(err.get("code") or "OP_FAILED")
        details = dict(err.get("details") or {})
        details.setdefault("container", worker.short_id)
        if code == "OUT_OF_MEMORY":
            self._replace(pool, worker, "out of memory")
            raise TaskFailed(
                f"the tile ran out of memory ({err.get('message', '')}); "
                "raise limits.memory_mb or give it less data",
                code="CONTAINER_OOM",
                details=details,
            )
        pool.release(worker)
        raise TaskFailed(
            str(err.get("message") or code), code=code, retryable=False, details=details
        )

    async def _diagnose(self, api: docker.APIClient, worker: Worker) -> PloinkyError:
        """The error for a container whose stream closed mid-call."""
        try:
            info = await asyncio.to_thread(dc.exit_info, api, worker.container_id)
        except Exception as exc:
            if is_unreachable(exc):
                return self._engine_down(exc)
            info = dc.ExitInfo(None, False, str(exc))
        worker.state = "stopped"
        stream = worker.stream
        details: dict[str, Any] = {
            "container": worker.short_id,
            "exit_code": info.exit_code,
            "stderr_tail": list(stream.stderr_tail) if stream else [],
        }
        if info.oom_killed:
            return TaskFailed(
                f"the tile container {worker.short_id} was killed by its memory limit "
                f"({worker.image}); raise limits.memory_mb or give it less data",
                code="CONTAINER_OOM",
                details=details,
            )
        tail = details["stderr_tail"][-1] if details["stderr_tail"] else info.error
        return TaskFailed(
            f"the tile container {worker.short_id} exited with code {info.exit_code} "
            f"mid-call{': ' + tail if tail else ''}",
            code="CONTAINER_FAILED",
            details=details,
        )

    # ---- pools and containers -------------------------------------------------------------

    def _pool_for(self, call: TileCall, image: str) -> Pool:
        pool = self._pools.get(call.pool_key())
        if pool is None:
            key = pool_hash(call)
            spec = dc.ContainerSpec(
                image=image,
                command=dc.RUNTIME_COMMAND,
                limits=call.limits,
                user=self.config.user,
                labels=self._labels(key, image),
                env=dc.runtime_env(call.modules, call.mounts),
                mounts=call.mounts,
                runtime_dir=self._runtime_dir or default_runtime_dir(),
            )

            async def spawn(p: Pool) -> Worker:
                return await self._spawn(p, spec, call.image)

            pool = Pool(
                key,
                image,
                pool_min=self.config.pool_min,
                pool_max=self.config.pool_max,
                spawn=spawn,
                discard=self._discard,
                clock=self._clock,
                owner=call.pool,
            )
            self._pools[call.pool_key()] = pool
            self._refill(pool)
        return pool

    def _labels(self, key: str, image: str) -> dict[str, str]:
        return {
            dc.LABEL_MANAGED: "true",
            dc.LABEL_NODE: self.node,
            dc.LABEL_STATE: self._state_label,
            dc.LABEL_DAEMON: self.daemon_id,
            dc.LABEL_POOL: key,
            dc.LABEL_IMAGE: image,
        }

    def _ours(self, labels: dict[str, str]) -> bool:
        """A container of this node and this state dir (a daemon sharing the node id but
        serving another state dir keeps its own)."""
        state = labels.get(dc.LABEL_STATE)
        return state is None or state == self._state_label

    async def _spawn(self, pool: Pool, spec: dc.ContainerSpec, requested: str) -> Worker:
        api = await self._ensure_api()
        worker = Worker("", pool.key, spec.image, None, owner=pool.owner)
        cid, sock = await self._create(api, spec, requested, worker)
        worker.container_id, worker.socket_io = cid, sock
        try:
            worker.stream = await open_attached(sock, cid[:12])
            await asyncio.to_thread(dc.start, api, cid)
        except BaseException as exc:
            self._discard(worker, "start failed")
            if isinstance(exc, docker.errors.APIError) and dc.is_missing_executable(exc):
                self._no_python.add(spec.image)
                raise TaskFailed(
                    f"image {requested} has no python3, so it cannot run the tile runtime; "
                    "only exec-mode operators can use it",
                    code="NO_TILE_RUNTIME",
                    retryable=False,
                    details={"image": spec.image},
                ) from None
            raise self._map_api_error(exc, requested) from None
        worker.state = "running"
        self._warmed.add(pool.key)
        worker.stream.closed.add_done_callback(lambda _: self._lost(pool, worker))
        log.debug("tile %s: started for pool %s (%s)", worker.short_id, pool.key, spec.image)
        return worker

    def _lost(self, pool: Pool, worker: Worker) -> None:
        """The stream of a container closed. A busy one is diagnosed and replaced by its
        caller; an idle one (the engine stopped, someone ran ``docker rm -f``) is forgotten
        now, so that neither ``status()`` nor the orphan sweep counts it as running, and the
        pool is brought back to ``pool_min``."""
        if self._closed or worker.busy or worker not in pool.workers:
            return
        self._replace(pool, worker, "exited while idle")

    async def _create(
        self, api: docker.APIClient, spec: dc.ContainerSpec, requested: str, worker: Worker
    ) -> tuple[str, Any]:
        """Create and attach in a thread, within ``start_timeout``; if the caller gives up
        (cancelled, timed out) the thread still finishes and its container is removed."""
        job = asyncio.ensure_future(asyncio.to_thread(dc.create_attached, api, spec))

        def orphaned(done: asyncio.Future[tuple[str, Any]]) -> None:
            if not done.cancelled() and done.exception() is None:
                cid, _ = done.result()
                worker.container_id = cid
                self._discard(worker, "start abandoned")

        try:
            finished, _ = await asyncio.wait({job}, timeout=self.config.start_timeout)
        except asyncio.CancelledError:
            job.add_done_callback(orphaned)
            raise
        if not finished:
            job.add_done_callback(orphaned)
            raise TaskFailed(
                f"creating a container of {requested} took longer than tiles.start_timeout "
                f"({self.config.start_timeout:g}s)",
                code="CONTAINER_START_TIMEOUT",
            )
        try:
            return job.result()
        except BaseException as exc:
            raise self._map_api_error(exc, requested) from None

    def _map_api_error(self, exc: BaseException, requested: str) -> BaseException:
        if isinstance(exc, PloinkyError | asyncio.CancelledError):
            return exc
        if is_unreachable(exc):
            return self._engine_down(exc)
        if isinstance(exc, docker.errors.ImageNotFound) or (
            isinstance(exc, docker.errors.NotFound) and "image" in str(exc).lower()
        ):
            return image_not_found(requested)
        if isinstance(exc, docker.errors.APIError):
            return TaskFailed(
                f"the engine refused to start a container of {requested}: {exc.explanation or exc}",
                code="CONTAINER_START_FAILED",
                retryable=exc.is_server_error(),
            )
        if isinstance(exc, StreamClosed):  # the engine's connection cannot be attached to
            return TaskFailed(str(exc), code="CONTAINER_START_FAILED", retryable=False)
        if isinstance(exc, ValueError):
            return TaskFailed(str(exc), code="CONTAINER_START_FAILED", retryable=False)
        return exc

    async def _run_once(self, api: docker.APIClient, call: TileCall, image: str) -> Any:
        spec = dc.ContainerSpec(
            image=image,
            command=tuple(call.exec or ()),
            limits=call.limits,
            user=self.config.user,
            labels=self._labels(EXEC_POOL, image),
            env={},
            mounts=call.mounts,
        )

        def track(worker: Worker) -> None:
            self._oneshots[worker.container_id] = worker

        def discard(worker: Worker, why: str) -> None:
            self._oneshots.pop(worker.container_id, None)
            self._discard(worker, why)

        return await run_once(
            api,
            spec,
            call,
            track=track,
            discard=discard,
            map_error=lambda exc: self._map_api_error(exc, call.image),
        )

    def _has_python(self, requested: str, image: str) -> bool:
        repo = requested.partition(":")[0]
        if repo in images.recipes() and images.recipes()[repo].kind == "busybox":
            return False
        return image not in self._no_python

    def _refill(self, pool: Pool) -> None:
        """Bring a pool back to ``pool_min`` in the background after a loss."""
        if self._closed or pool.size >= pool.pool_min or pool.filling:
            return
        pool.filling = True

        async def fill() -> None:
            try:
                await pool.fill()
            except TaskDeferred as exc:
                # The engine is down: said once by _engine_down; housekeeping refills later.
                log.debug("tiles pool %s: cannot start a warm container: %s", pool.key, exc)
            except Exception as exc:
                log.warning("tiles pool %s: cannot start a warm container: %s", pool.key, exc)
            finally:
                pool.filling = False

        task = asyncio.create_task(fill())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _discard(self, worker: Worker, why: str) -> None:
        """Close the stream now (no late answer can be read) and remove the container in a
        thread; ``close`` waits for every removal still running."""
        if worker.stream is not None:
            worker.stream.close()
        if worker.socket_io is not None:
            with contextlib.suppress(Exception):
                worker.socket_io.close()
        worker.busy = False
        if not worker.container_id or worker.container_id in self._retiring:
            return
        if worker.state == "removed":
            return
        log.debug("tile %s: removing (%s)", worker.short_id, why)
        worker.state = "stopped"
        self._retiring[worker.container_id] = worker
        api = self._api

        async def remove() -> None:
            gone = False
            if api is not None:
                try:
                    gone = await asyncio.to_thread(dc.remove_quietly, api, worker.container_id)
                except Exception as exc:
                    # The engine is gone; the sweep after reconnecting removes it.
                    release_sockets(exc)
                    log.debug("tile %s: not removed: %s", worker.short_id, exc)
            if gone:
                worker.state = "removed"
            self._retiring.pop(worker.container_id, None)
            self._recent.append({**worker.to_dict(), "removed_because": why})

        task = asyncio.create_task(remove())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- engine ---------------------------------------------------------------------------

    async def _ensure_api(self) -> docker.APIClient:
        if self._api is not None:
            return self._api
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._api is None:
                try:
                    api = await asyncio.to_thread(connect, self._base_url_arg)
                    version = await asyncio.to_thread(api.version)
                except Exception as exc:
                    raise self._engine_down(exc) from None
                self._engine_version = str(version.get("Version") or "") or None
                self._api = api
                self._reason = None
                log.info("docker runner: engine %s at %s", self._engine_version, self.base_url)
                await self._remove_orphans(api)
        assert self._api is not None
        return self._api

    async def _ping(self, api: docker.APIClient) -> None:
        try:
            await asyncio.to_thread(api.ping)
        except Exception as exc:
            if is_unreachable(exc):
                raise self._engine_down(exc) from None
            raise

    def _engine_down(self, exc: BaseException) -> TaskDeferred:
        release_sockets(exc)
        err = deferred(self.base_url, exc)
        if self._reason != err.message:
            log.warning("docker runner: %s", err.message)
        self._reason = err.message
        api, self._api = self._api, None
        if api is not None:
            with contextlib.suppress(Exception):
                api.close()
        return err

    async def _remove_orphans(self, api: docker.APIClient) -> None:
        """Containers labelled for this node by another runner instance (a daemon that died),
        and our own that an outage kept us from removing."""
        live = {w.container_id for p in self._pools.values() for w in p.workers}
        live |= set(self._oneshots) | set(self._retiring)
        try:
            found = await asyncio.to_thread(dc.list_managed, api, self.node)
            orphans = [
                c["Id"]
                for c in found
                if self._ours(c.get("Labels") or {})
                and (
                    (c.get("Labels") or {}).get(dc.LABEL_DAEMON) != self.daemon_id
                    or c["Id"] not in live
                )
            ]
            for cid in orphans:
                await asyncio.to_thread(dc.remove_quietly, api, cid)
        except Exception as exc:
            log.warning("docker runner: could not remove orphaned containers: %s", exc)
            return
        if orphans:
            log.info("docker runner: removed %d orphaned tile container(s)", len(orphans))

    async def reap_idle(self, now: float | None = None) -> int:
        """Remove idle containers older than ``idle_timeout`` beyond ``pool_min``."""
        now = self._clock() if now is None else now
        reaped = 0
        for pool in self._pools.values():
            reaped += len(pool.expire(now, self.config.idle_timeout))
        # A pool of a call that failed to start (missing image, say) would otherwise stay
        # in status() forever; it is made again by the next call that needs it.
        for key in [k for k, pool in self._pools.items() if pool.unused]:
            self._warmed.discard(self._pools.pop(key).key)
        return reaped

    async def _housekeeping(self) -> None:
        interval = min(HOUSEKEEPING_MAX_S, max(self.config.idle_timeout / 4, 0.5))
        while True:
            await asyncio.sleep(interval)
            try:
                if self._api is None:
                    await self._ensure_api()
                else:
                    # Warm calls never touch the API: ping, so status() notices an outage.
                    await self._ping(self._api)
                # Before reaping, which forgets empty pools: a pool that lost its warm
                # containers while the engine was away gets them back once it answers.
                for pool in list(self._pools.values()):
                    if pool.key in self._warmed:
                        self._refill(pool)
                await self.reap_idle()
            except TaskDeferred:
                pass  # still down; reported by status()
            except Exception:
                log.exception("docker runner: housekeeping failed")


def image_not_found(image: str) -> TaskFailed:
    repo, _, tag = image.partition(":")
    if repo in images.recipes():
        how = 'run "ploinkyd images build" (as root) to build it on this machine'
        shown = images.resolve(repo) if not tag else image
    else:
        how = f'fetch it with "docker pull {image}", or "docker load -i FILE" from an archive'
        shown = image
    return TaskFailed(
        f"tile image {shown} is not in the local Docker engine: {how}",
        code="IMAGE_NOT_FOUND",
        retryable=False,
        details={"image": shown},
    )

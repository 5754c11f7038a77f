"""The ``process`` runner: the tile runtime as local subprocesses, for hosts without Docker.

There is NO sandbox: operator code and ``exec`` commands run as the daemon's user with the
daemon's filesystem and network. The runner says so in ``status()`` and in a warning at
start. What it does keep from the container runner is the shape of the work: a warm pool of
long-lived ``python -m tile_runtime`` workers per pool key, one request at a time per
worker, a memory ceiling (``RLIMIT_AS``), an output size limit, and a worker that is killed
(with its whole process group) when its call is cancelled.

Differences a caller may notice: ``limits.memory_mb`` caps the address space, not resident
memory, and never below ``MIN_ADDRESS_SPACE_MB``; ``limits.cpus`` and ``limits.pids`` are not
enforced (``RLIMIT_NPROC`` counts every process of the user, not of one worker); mounts are
not mounted anywhere: only their ``source`` directories go on ``PLOINKY_TILE_PATH`` so that
user operator modules import.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

from ploinkyd import tile_runtime
from ploinkyd.clock import Clock, SystemClock
from ploinkyd.config import TilesConfig
from ploinkyd.errors import TaskDeferred, TaskFailed
from ploinkyd.tiles.model import TileCall

log = logging.getLogger("ploinkyd.tiles")

WARNING = "tiles run as local processes WITHOUT a sandbox"
KILL_GRACE_S = 2.0
STDERR_TAIL_LINES = 50
# The response line carries the envelope and error details on top of the output itself.
LINE_MARGIN = 64 * 1024
# Below this an address-space limit stops the interpreter itself from starting (or from
# forking an ``exec`` command), which would look like a crash rather than a memory limit.
MIN_ADDRESS_SPACE_MB = 128
# Parsing a response this large would stall the event loop; it goes to a thread instead.
THREAD_PARSE_BYTES = 1024 * 1024
# Variables a worker inherits; the rest of the daemon's environment (tokens, passwords)
# stays out of operator code.
PASS_ENV = ("PATH", "LANG", "LANGUAGE", "TZ", "SYSTEMROOT")

_encode = json.JSONEncoder(separators=(",", ":")).encode


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, workdir: Path, stream_limit: int) -> None:
        self.proc = proc
        self.workdir = workdir
        self.stream_limit = stream_limit
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.stderr_task: asyncio.Task[None] | None = None
        self.last_used = 0.0
        # True only after a complete request/response exchange: anything else (a cancel,
        # a death, a garbled line) leaves the worker in an unknown state, so it is dropped.
        self.clean = False
        self.killed_by_us = False
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None and not self.killed_by_us

    def next_id(self) -> str:
        return f"{self.pid}-{next(self._ids)}"

    def signal_group(self, sig: signal.Signals) -> None:
        if sig == signal.SIGKILL:
            self.killed_by_us = True
        # The worker leads its own session, so its group also holds the commands it started.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class _Pool:
    def __init__(self, key: tuple[Any, ...], label: str, size: int) -> None:
        self.key = key
        self.label = label
        self.slots = asyncio.Semaphore(size)
        self.workers: set[_Worker] = set()
        self.idle: list[_Worker] = []  # most recently used last
        self.busy = 0
        self.users = 0  # calls holding or waiting for a slot


def _pool_label(call: TileCall) -> str:
    limits = call.limits
    parts = [
        f"pool={call.pool}",
        f"image={call.image}",
        f"memory_mb={limits.memory_mb}",
        f"cpus={limits.cpus:g}",
        f"pids={limits.pids}",
    ]
    if call.modules:
        parts.append("modules=" + ",".join(call.modules))
    if call.mounts:
        parts.append("mounts=" + ",".join(f"{m.source}:{m.target}" for m in call.mounts))
    return " ".join(parts)


def _stages(call: TileCall) -> list[dict[str, Any]]:
    if call.exec is not None:
        params = {"argv": list(call.exec), "format": call.exec_format}
        return [{"op": "__exec__", "params": params}]
    return [{"op": stage.op, "params": stage.params} for stage in call.stages]


def _set_memory_limit(pid: int, memory_mb: int) -> None:
    limit = max(memory_mb, MIN_ADDRESS_SPACE_MB) * 1024 * 1024
    prlimit = getattr(resource, "prlimit", None)
    if prlimit is None:  # not Linux: no way to limit another process after it started
        log.debug("cannot set a memory limit on tile worker %s on this platform", pid)
        return
    # Set from outside after the spawn rather than in a preexec_fn, which is unsafe in a
    # daemon that has threads. The worker reads no request before this returns.
    with contextlib.suppress(ProcessLookupError):
        prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        prlimit(pid, resource.RLIMIT_CORE, (0, 0))


class ProcessRunner:
    """``TileRunner`` running the tile runtime as local, unsandboxed worker processes."""

    name = "process"
    sandboxed = False

    def __init__(self, config: TilesConfig, state_dir: Path, *, clock: Clock | None = None) -> None:
        self._config = config
        self._state_dir = Path(state_dir)
        self._clock: Clock = clock or SystemClock()
        self._pools: dict[tuple[Any, ...], _Pool] = {}
        self._root: Path | None = None
        self._root_lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        log.warning(
            "tile runner 'process': %s; operator code and exec commands run as this user "
            "with its files and network (use the docker runner for a sandbox)",
            WARNING,
        )
        await self._runtime_root()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_idle(), name="tiles-process-reaper")

    async def close(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        workers = [w for pool in self._pools.values() for w in pool.workers]
        self._pools.clear()
        await asyncio.gather(*(self._stop(w, graceful=True) for w in workers))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._root is not None:
            await asyncio.to_thread(shutil.rmtree, self._root, True)
            self._root = None

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sandboxed": self.sandboxed,
            "ready": not self._closed,
            "reason": "closed" if self._closed else None,
            "warning": WARNING,
            "pools": [
                {"key": pool.label, "workers": len(pool.workers), "busy": pool.busy}
                for pool in self._pools.values()
            ],
        }

    def containers(self) -> list[dict[str, Any]]:
        """Every worker process, shaped like the docker runner's containers."""
        return [
            {
                "id": str(worker.pid),
                "pool": key[-1],  # TileCall.pool is the last part of the pool key
                "state": "running" if worker.running else "stopped",
                "busy": worker not in pool.idle,
                "image": "(local process)",
            }
            for key, pool in self._pools.items()
            for worker in pool.workers
        ]

    def logs(self, pool: str, lines: int) -> list[str]:
        """The last ``lines`` stderr lines of the workers of ``pool``, each with its pid."""
        out = [
            f"{worker.pid} {line}"
            for key, p in self._pools.items()
            if key[-1] == pool
            for worker in p.workers
            for line in worker.stderr_tail
        ]
        return out[-lines:]

    async def retire(self, pool: str) -> int:
        """Stop every worker of ``pool`` (an agent stopped, removed or changed): the next
        call starts fresh ones that import the agent's current code."""
        workers = [
            w
            for key in [k for k in self._pools if k[-1] == pool]
            for w in self._pools.pop(key).workers
        ]
        await asyncio.gather(*(self._stop(w, graceful=True) for w in workers))
        return len(workers)

    async def freeze(self, pool: str) -> int:
        """Stop (SIGSTOP) the worker process groups of ``pool`` for a snapshot backup; a call
        in flight on one waits until ``thaw``. Returns how many workers were stopped."""
        workers = self._workers_of(pool)
        for worker in workers:
            worker.signal_group(signal.SIGSTOP)
        return len(workers)

    async def thaw(self, pool: str) -> int:
        """Continue (SIGCONT) the worker process groups of ``pool``."""
        workers = self._workers_of(pool)
        for worker in workers:
            worker.signal_group(signal.SIGCONT)
        return len(workers)

    def _workers_of(self, pool: str) -> list[_Worker]:
        return [w for key, p in self._pools.items() if key[-1] == pool for w in p.workers]

    # -- calls -----------------------------------------------------------------------------

    async def call(self, call: TileCall) -> Any:
        if self._closed:
            raise TaskDeferred("the process tile runner is shut down", code="ENGINE_UNAVAILABLE")
        stages = _stages(call)
        key = call.pool_key()
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(key, _pool_label(call), self._config.pool_max)
        pool.users += 1
        try:
            async with pool.slots:
                worker = await self._acquire(pool, call)
                pool.busy += 1
                try:
                    return await self._round_trip(worker, stages, call)
                finally:
                    pool.busy -= 1
                    self._release(pool, worker)
        finally:
            pool.users -= 1

    async def _acquire(self, pool: _Pool, call: TileCall) -> _Worker:
        if self._closed:  # closed while this call waited for a slot
            raise TaskDeferred("the process tile runner is shut down", code="ENGINE_UNAVAILABLE")
        needed = max(self._config.max_output_bytes, call.max_output_bytes) + LINE_MARGIN
        while pool.idle:
            worker = pool.idle.pop()
            if worker.running and worker.stream_limit >= needed:
                return worker
            self._discard(pool, worker)
        worker = await self._spawn(call, needed)
        pool.workers.add(worker)
        return worker

    def _release(self, pool: _Pool, worker: _Worker) -> None:
        if worker.clean and worker.running and not self._closed:
            worker.last_used = self._clock.time()
            pool.idle.append(worker)
        else:
            self._discard(pool, worker)

    async def _round_trip(
        self, worker: _Worker, stages: list[dict[str, Any]], call: TileCall
    ) -> Any:
        worker.clean = False
        request_id = worker.next_id()
        try:
            line = _encode({"id": request_id, "stages": stages, "input": call.input})
        except (TypeError, ValueError) as exc:
            worker.clean = True  # nothing was sent
            raise TaskFailed(
                f"the tile input cannot be encoded as JSON: {exc}",
                code="BAD_INPUT",
                retryable=False,
            ) from None
        assert worker.proc.stdin is not None and worker.proc.stdout is not None
        try:
            worker.proc.stdin.write(line.encode() + b"\n")
            await worker.proc.stdin.drain()
            response = await worker.proc.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            response = b""
        except ValueError:
            # The line passed the stream limit; the rest of it is still in the pipe, so this
            # worker can never be read in step again.
            raise TaskFailed(
                f"the tile output is larger than max_output_bytes ({call.max_output_bytes}); "
                "shrink it inside the pipeline (filter, take, select) or raise "
                "tiles.max_output_bytes",
                code="OUTPUT_TOO_LARGE",
                details={"max_output_bytes": call.max_output_bytes},
                retryable=False,
            ) from None
        if not response.endswith(b"\n"):
            raise await self._died(worker)
        return await self._answer(worker, request_id, response, call)

    async def _answer(
        self, worker: _Worker, request_id: str, response: bytes, call: TileCall
    ) -> Any:
        if len(response) > call.max_output_bytes:
            self._check_output_size(worker, request_id, response, call)
        try:
            if len(response) > THREAD_PARSE_BYTES:
                message = await asyncio.to_thread(json.loads, response)
            else:
                message = json.loads(response)
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("id") != request_id:
            raise self._protocol_error(worker, response)
        worker.clean = True
        if message.get("ok") is True:
            return message.get("output")
        error = message.get("error")
        if not isinstance(error, dict):
            worker.clean = False
            raise self._protocol_error(worker, response)
        code = error.get("code") if isinstance(error.get("code"), str) else "OP_FAILED"
        text = str(error.get("message") or code)
        raw_details = error.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        if code == "OUT_OF_MEMORY":
            # A worker that just hit MemoryError may be fragmented or half-broken: replace it.
            worker.clean = False
            raise TaskFailed(
                f"the tile ran out of memory (limit {call.limits.memory_mb} MiB): {text}",
                code="CONTAINER_OOM",
                details={**details, "memory_mb": call.limits.memory_mb},
                retryable=True,
            )
        raise TaskFailed(text, code=code, details=details, retryable=False)

    def _check_output_size(
        self, worker: _Worker, request_id: str, response: bytes, call: TileCall
    ) -> None:
        # The runtime writes {"id":…,"ok":true,"output":…}: the rest of the line is the
        # output. Error responses are never "too large": their message is what matters.
        prefix = b'{"id":' + _encode(request_id).encode() + b',"ok":true,"output":'
        if not response.startswith(prefix):
            return
        size = len(response) - len(prefix) - len(b"}\n")
        if size > call.max_output_bytes:
            worker.clean = True  # the whole line was read: the worker is still in step
            raise TaskFailed(
                f"the tile output is {size} bytes, above max_output_bytes "
                f"({call.max_output_bytes}); shrink it inside the pipeline (filter, take, "
                "select) or raise tiles.max_output_bytes",
                code="OUTPUT_TOO_LARGE",
                details={"max_output_bytes": call.max_output_bytes, "output_bytes": size},
                retryable=False,
            )

    def _protocol_error(self, worker: _Worker, response: bytes) -> TaskFailed:
        return TaskFailed(
            f"tile worker {worker.pid} broke the protocol; it wrote {response[:200]!r}",
            code="CONTAINER_FAILED",
            details={"pid": worker.pid, "line": response[:2000].decode("utf-8", "replace")},
            retryable=True,
        )

    async def _died(self, worker: _Worker) -> TaskFailed:
        try:
            status = await asyncio.wait_for(worker.proc.wait(), KILL_GRACE_S)
        except TimeoutError:
            # stdout closed but the process lingers: as good as dead for this call.
            worker.signal_group(signal.SIGKILL)
            status = await worker.proc.wait()
        if worker.stderr_task is not None:
            # The last stderr lines usually say why; let the reader catch up with them.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(worker.stderr_task), 1.0)
        tail = list(worker.stderr_tail)
        if status < 0:
            try:
                how = f"was killed by signal {signal.Signals(-status).name}"
            except ValueError:
                how = f"was killed by signal {-status}"
        else:
            how = f"exited with status {status}"
        oom = any("MemoryError" in line for line in tail[-5:]) or (
            status == -signal.SIGKILL and not worker.killed_by_us
        )
        last = " | ".join(tail[-3:])
        return TaskFailed(
            f"tile worker {worker.pid} {how} during the call"
            + (" (probably out of memory)" if oom else "")
            + (f"; stderr: {last}" if last else ""),
            code="CONTAINER_OOM" if oom else "CONTAINER_FAILED",
            details={"pid": worker.pid, "exit_status": status, "stderr": tail},
            retryable=True,
        )

    # -- workers ---------------------------------------------------------------------------

    async def _runtime_root(self) -> Path:
        async with self._root_lock:
            if self._root is None:
                self._root = await asyncio.to_thread(self._prepare_root)
            return self._root

    def _prepare_root(self) -> Path:
        """A private directory with ``tile_runtime`` alone on the workers' ``PYTHONPATH``.

        Pointing ``PYTHONPATH`` at ``ploinkyd/`` itself would let ``ploinkyd/queue`` shadow
        the standard ``queue`` module in every worker; a directory holding only a link to
        the package is also exactly the layout of ``/opt/ploinky`` in a container.
        """
        parent = self._state_dir / "tiles"
        parent.mkdir(parents=True, exist_ok=True)
        prefix = f"process-{socket.gethostname()}-"
        _remove_stale_roots(parent, prefix)
        root = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
        package = Path(tile_runtime.__file__).resolve().parent
        try:
            (root / "tile_runtime").symlink_to(package, target_is_directory=True)
        except OSError:
            shutil.copytree(package, root / "tile_runtime", ignore=shutil.ignore_patterns("*.pyc"))
        (root / "work").mkdir()
        return root

    async def _spawn(self, call: TileCall, stream_limit: int) -> _Worker:
        root = await self._runtime_root()
        workdir = Path(tempfile.mkdtemp(prefix="w-", dir=root / "work"))
        env = {k: v for k, v in os.environ.items() if k in PASS_ENV or k.startswith("LC_")}
        env.update(
            PYTHONPATH=str(root),
            PYTHONDONTWRITEBYTECODE="1",
            PLOINKY_TILE_MODULES=",".join(call.modules),
            # Absolute: the worker runs in its own directory.
            PLOINKY_TILE_PATH=":".join(os.path.abspath(m.source) for m in call.mounts),
            HOME=str(workdir),
            TMPDIR=str(workdir),
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-u",
                "-m",
                "tile_runtime",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=env,
                start_new_session=True,
                limit=stream_limit,
            )
        except OSError as exc:
            shutil.rmtree(workdir, ignore_errors=True)
            raise TaskFailed(
                f"cannot start a tile worker ({sys.executable} -m tile_runtime): {exc}",
                code="CONTAINER_FAILED",
                retryable=True,
            ) from None
        _set_memory_limit(proc.pid, call.limits.memory_mb)
        worker = _Worker(proc, workdir, stream_limit)
        worker.stderr_task = asyncio.create_task(self._pump_stderr(worker))
        log.debug("tile worker %s started for %s", worker.pid, _pool_label(call))
        return worker

    async def _pump_stderr(self, worker: _Worker) -> None:
        stream = worker.proc.stderr
        assert stream is not None
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # one line longer than the stream limit: drop it
                continue
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip()
            worker.stderr_tail.append(line)
            log.info("tile worker %s: %s", worker.pid, line)

    def _discard(self, pool: _Pool, worker: _Worker, *, graceful: bool = False) -> None:
        pool.workers.discard(worker)
        if worker in pool.idle:
            pool.idle.remove(worker)
        if not graceful:
            # Killed right here, not in the background task: when a cancelled call
            # re-raises, its worker can no longer answer anyone.
            worker.signal_group(signal.SIGKILL)
        task = asyncio.create_task(self._stop(worker, graceful=graceful))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop(self, worker: _Worker, *, graceful: bool) -> None:
        if worker.proc.returncode is None and graceful:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()  # EOF: the runtime exits 0 by itself
            worker.signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.proc.wait(), KILL_GRACE_S)
            except TimeoutError:
                worker.signal_group(signal.SIGKILL)
        if worker.proc.returncode is None:
            worker.signal_group(signal.SIGKILL)
        await worker.proc.wait()
        if worker.stderr_task is not None:
            try:
                # A command that left the group could hold stderr open forever.
                await asyncio.wait_for(worker.stderr_task, KILL_GRACE_S)
            except TimeoutError:
                pass
        await asyncio.to_thread(shutil.rmtree, worker.workdir, True)

    async def _reap_idle(self) -> None:
        timeout = self._config.idle_timeout
        interval = min(max(timeout / 4, 0.05), 30.0)
        while True:
            await self._clock.sleep(interval)
            try:
                self._reap_once(self._clock.time(), timeout)
            except Exception:  # a bug here must not leave idle workers running forever
                log.exception("the idle-worker reaper of the process tile runner failed")

    def _reap_once(self, now: float, timeout: float) -> None:
        for key, pool in list(self._pools.items()):
            # Oldest first; pool_min workers stay warm however long they idle.
            for worker in list(pool.idle):
                if len(pool.workers) <= self._config.pool_min:
                    break
                if now - worker.last_used >= timeout:
                    log.debug("tile worker %s idle: stopping it", worker.pid)
                    self._discard(pool, worker, graceful=True)
            if not pool.workers and pool.users == 0:
                del self._pools[key]


def _remove_stale_roots(parent: Path, prefix: str) -> None:
    """Remove runtime directories of runners on this host whose process is gone."""
    for path in parent.glob(prefix + "*"):
        pid_text = path.name[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:
            pass

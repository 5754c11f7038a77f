"""Each sandbox setting of SPEC §6, proven from inside a running tile container.

The probes run in the warm tile runtime itself (``tests/tile_ops/docker_ops.py``) or as
``__exec__`` stages that the runtime starts as its children: what they see is what a tile
sees. Works on cgroup v1 and v2 hosts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ploinkyd.errors import TaskFailed
from ploinkyd.tiles.docker_runner import DockerRunner
from ploinkyd.tiles.model import Limits, Stage, TileCall
from tests.docker_env import DOCKER_OPS, OPS_MOUNT, RunnerFactory, python_image

LIMITS = Limits(memory_mb=96, cpus=0.5, pids=24)


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[DockerRunner]:
    factory = RunnerFactory(tmp_path)
    try:
        yield await factory(pool_max=1)
    finally:
        await factory.aclose()


def op(name: str, **params: Any) -> TileCall:
    return TileCall(
        image=python_image(),
        stages=(Stage(op=name, params=params),),
        input=None,
        limits=LIMITS,
        modules=DOCKER_OPS,
        mounts=(OPS_MOUNT,),
    )


async def sh(runner: DockerRunner, script: str) -> str:
    """Run ``sh -c script`` as a child of the tile runtime; its stdout (stderr merged)."""
    out = await runner.call(
        TileCall(
            image=python_image(),
            stages=(),
            input="",
            limits=LIMITS,
            modules=DOCKER_OPS,
            mounts=(OPS_MOUNT,),
            exec=("sh", "-c", f"exec 2>&1; {script}"),
            exec_format="text",
        )
    )
    assert isinstance(out, str)
    return out


def cgroup_value(text: str) -> dict[str, str]:
    """``key=value`` lines printed by the probes below."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


CGROUP_PROBE = r"""
first() { for f in "$@"; do if [ -r "$f" ]; then cat "$f"; return; fi; done; echo none; }
echo "pids=$(first /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/pids.max)"
echo "mem=$(first /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max)"
echo "memsw=$(first /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes)"
echo "swap=$(first /sys/fs/cgroup/memory.swap.max)"
echo "quota=$(first /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us)"
echo "period=$(first /sys/fs/cgroup/cpu/cpu.cfs_period_us /sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us)"
echo "cpumax=$(first /sys/fs/cgroup/cpu.max)"
"""


async def test_no_network_but_loopback(runner: DockerRunner) -> None:
    assert (await sh(runner, "ls /sys/class/net")).split() == ["lo"]
    out = await sh(
        runner,
        "python3 -c \"import socket; socket.create_connection(('192.0.2.1', 80), timeout=3)\" "
        "|| echo refused",
    )
    assert "Network is unreachable" in out and "refused" in out


async def test_root_filesystem_is_read_only(runner: DockerRunner) -> None:
    out = await sh(runner, "touch /written || echo failed; touch /etc/written || echo failed")
    assert out.count("Read-only file system") == 2 and out.count("failed") == 2
    out = await sh(runner, "touch /opt/ploinky/tile_runtime/x || echo failed")
    assert "failed" in out  # the runtime package is mounted read-only too


async def test_tmp_is_a_small_writable_tmpfs(runner: DockerRunner) -> None:
    out = await sh(runner, "echo kept > /tmp/f && cat /tmp/f; grep ' /tmp ' /proc/mounts")
    lines = out.splitlines()
    assert lines[0] == "kept"
    fstype, options = lines[1].split()[2:4]
    assert fstype == "tmpfs"
    assert {"rw", "nosuid", "nodev", "size=65536k"} <= set(options.split(","))


async def test_all_capabilities_dropped(runner: DockerRunner) -> None:
    status = (await runner.call(op("dk_self")))["status"]
    for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb"):
        assert int(status[key], 16) == 0, (key, status[key])


async def test_no_new_privileges(runner: DockerRunner) -> None:
    status = (await runner.call(op("dk_self")))["status"]
    assert status["NoNewPrivs"] == "1"


async def test_runs_as_non_root(runner: DockerRunner) -> None:
    me = await runner.call(op("dk_self"))
    assert me["uid"] == me["euid"] == 65534
    assert me["gid"] == 65534
    assert (await sh(runner, "id -u")).strip() == "65534"


async def test_the_tile_process_is_pid_1(runner: DockerRunner) -> None:
    me = await runner.call(op("dk_self"))
    assert me["pid"] == 1
    assert me["pid1_cmdline"][-2:] == ["-m", "tile_runtime"]
    # and every child the tile starts hangs under it, inside the same pids budget
    assert (await sh(runner, "echo $PPID")).strip() == "1"


async def test_pids_limit(runner: DockerRunner) -> None:
    values = cgroup_value(await sh(runner, CGROUP_PROBE))
    assert values["pids"] == str(LIMITS.pids)
    result = await runner.call(op("dk_fork", max=200, hold_s=5))
    # The runtime itself is one of the pids: a fork bomb stops short of the limit.
    assert result["forked"] < LIMITS.pids
    assert result["errno"] == 11  # EAGAIN


async def test_memory_limit_without_swap(runner: DockerRunner) -> None:
    values = cgroup_value(await sh(runner, CGROUP_PROBE))
    limit = LIMITS.memory_mb * 1024 * 1024
    assert values["mem"] == str(limit)
    if values["memsw"] != "none":  # cgroup v1 with swap accounting
        assert values["memsw"] == str(limit)
    if values["swap"] != "none":  # cgroup v2
        assert values["swap"] == "0"


async def test_allocating_past_the_memory_limit_is_an_oom(runner: DockerRunner) -> None:
    with pytest.raises(TaskFailed) as err:
        await runner.call(op("dk_alloc", mb=LIMITS.memory_mb * 3))
    assert err.value.code == "CONTAINER_OOM"
    assert err.value.retryable


async def test_cpu_quota(runner: DockerRunner) -> None:
    values = cgroup_value(await sh(runner, CGROUP_PROBE))
    if values["cpumax"] != "none":
        quota, period = values["cpumax"].split()
    else:
        quota, period = values["quota"], values["period"]
    assert int(quota) / int(period) == pytest.approx(LIMITS.cpus)


async def test_no_docker_socket_inside(runner: DockerRunner) -> None:
    out = await sh(
        runner,
        "for s in /var/run/docker.sock /run/docker.sock; do test -e $s && echo found $s; done; "
        "grep -c docker.sock /proc/mounts || true",
    )
    assert "found" not in out
    assert out.strip().splitlines()[-1] == "0"

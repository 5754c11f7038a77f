"""Benchmark: ploinkyd's backup engine against restic and borg, on the same data in the same run.

    python tests/bench_backup.py [--tools ploinkyd,restic,borg] [--size-mb 500] [--workdir DIR]
                                 [--no-install] [--no-drop-caches] [--timeout 1800] [--keep]

Installs what is missing (restic and GNU time from Debian, borgbackup from PyPI built against
Debian's headers) unless ``--no-install``; generates a seeded dataset once under ``--workdir``.
Per tool, each step a timed child process (peak RSS from ``/usr/bin/time``, since ``os.wait4``
also counts this script's RSS at spawn), page cache dropped before each: init, first backup,
unchanged re-run, backup after a ~1% change, restore (hash-compared with the source), verify
--read-data, repository size. Prints one JSON object (with ploinkyd/restic and ploinkyd/borg
ratios) and a table on stderr; a failing tool is reported with its stderr tail, others go on.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench-backup-password"
SEED = 20240501
DATASET_VERSION = 1
GNU_TIME = Path("/usr/bin/time")
BORG_BUILD_DEPS = ["build-essential", "pkg-config", "libssl-dev", "libacl1-dev", "liblz4-dev"]
BORG_BUILD_DEPS += ["libzstd-dev", "libxxhash-dev"]
STEPS = ["backup_first", "backup_unchanged", "backup_changed", "restore", "verify"]
ALL_TOOLS = ["ploinkyd", "restic", "borg"]
MIB = 1 << 20
Cmd = tuple[list[str], Path | None]  # argv, cwd

# ---- dataset ------------------------------------------------------------------------------

LEVELS = ["INFO"] * 70 + ["DEBUG"] * 20 + ["WARN"] * 7 + ["ERROR"] * 3
COMPONENTS = ["api", "queue", "runner", "scheduler", "tiles", "agents", "storage", "auth"]
MESSAGES = [
    "request handled method=GET path=/v1/jobs/{n} status=200 duration_ms={m}",
    "claimed task {h} from queue q{m} attempt={n}",
    "task {h} finished status=succeeded output_bytes={n}",
    "cache miss key={h} size={n} evicted={m}",
    "worker {m} heartbeat pending={n} running={m}",
    "retrying upload part={m} of object {h} after error: connection reset by peer",
]


def log_bytes(rng: random.Random, nbytes: int, ms: int = 1_700_000_000_000) -> bytes:
    """Log lines with timestamps, levels, components and hex ids (compressible, not trivially)."""
    out: list[str] = []
    size, second, stamp = 0, -1, ""
    while size < nbytes:
        ms += rng.randrange(1, 40)
        s, frac = divmod(ms, 1000)
        if s != second:
            second, stamp = s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        h, n, m = f"{rng.getrandbits(64):016x}", rng.randrange(100_000), rng.randrange(64)
        msg = rng.choice(MESSAGES).format(h=h, n=n, m=m)
        line = f"{stamp}.{frac:03d}Z {rng.choice(LEVELS):5} [{rng.choice(COMPONENTS)}] {msg}\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()


def mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def random_file(path: Path, rng: random.Random, nbytes: int) -> None:
    with mkparent(path).open("wb") as f:
        for off in range(0, nbytes, MIB):
            f.write(rng.randbytes(min(MIB, nbytes - off)))


def small_name(i: int) -> str:
    ext = "bin" if i % 2 else "txt"
    return f"small/a{i % 16:02d}/b{i // 16 % 8}/c{i // 128 % 4}/f{i:05d}.{ext}"


def n_small(size_mb: int) -> int:
    return max(50, round(5000 * size_mb / 500))


def generate(data: Path, size_mb: int) -> None:
    """At 500 MB: 200 MB random binaries, 150 MB logs, 5000 small files (~42 MB), ~108 MB dups."""

    def scaled(mb: int) -> int:
        return max(4096, int(mb * size_mb / 500 * MIB))

    rng = random.Random(SEED)
    for i, mb in enumerate((24, 40, 56, 80)):
        random_file(data / f"bin/blob{i}.bin", rng, scaled(mb))
    for i, mb in enumerate((8, 10, 12, 14, 16, 18, 20, 22, 15, 15)):
        log = log_bytes(rng, scaled(mb), 1_700_000_000_000 + i * 10**9)
        mkparent(data / f"logs/app-{i:02d}.log").write_bytes(log)
    for i in range(n_small(size_mb)):
        n = rng.randint(1024, 16384)
        body = rng.randbytes(n) if i % 2 else log_bytes(rng, n)[:n]
        mkparent(data / small_name(i)).write_bytes(body)
    # Whole-file copies, and a concatenation behind an odd-sized prefix that only content-defined
    # chunking deduplicates.
    for rel in ("bin/blob0.bin", "logs/app-00.log", "logs/app-01.log"):
        shutil.copyfile(data / rel, mkparent(data / "dup" / (Path(rel).name + ".copy")))
    with (data / "dup/shifted.bin").open("wb") as f:
        f.write(rng.randbytes(4099))
        for rel in ("bin/blob1.bin", "logs/app-02.log", "logs/app-03.log"):
            f.write((data / rel).read_bytes())


def describe(data: Path) -> dict[str, Any]:
    cats: dict[str, dict[str, int]] = {}
    for p in data.rglob("*"):
        if p.is_file():
            c = cats.setdefault(p.relative_to(data).parts[0], {"files": 0, "bytes": 0})
            c["files"], c["bytes"] = c["files"] + 1, c["bytes"] + p.stat().st_size
    total, files = (sum(c[k] for c in cats.values()) for k in ("bytes", "files"))
    return {"path": str(data), "seed": SEED, "total_bytes": total, "files": files, "by_dir": cats}


def ensure_dataset(work: Path, size_mb: int) -> dict[str, Any]:
    """Generate the dataset once; ``dataset.json`` is written last, so it marks a complete one."""
    data, meta = work / "data", work / "dataset.json"
    key = {"size_mb": size_mb, "seed": SEED, "version": DATASET_VERSION}
    if meta.exists() and data.is_dir() and json.loads(meta.read_text())["key"] == key:
        revert_change(work)
        return {**json.loads(meta.read_text())["description"], "generated_seconds": None}
    meta.unlink(missing_ok=True)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(work / "pristine", ignore_errors=True)
    t0 = time.perf_counter()
    generate(data, size_mb)
    desc = describe(data)
    meta.write_text(json.dumps({"key": key, "description": desc}))
    return {**desc, "generated_seconds": round(time.perf_counter() - t0, 1)}


def apply_change(work: Path, size_mb: int) -> dict[str, int]:
    """~1% of the files: append to 3 logs, rewrite every 100th small file, add a 5 MB file.
    The originals go to ``pristine/`` first, and ``revert_change`` puts them back."""
    data, pristine = work / "data", work / "pristine"
    rng = random.Random(SEED + 1)
    logs = [f"logs/app-{i:02d}.log" for i in (1, 5, 8)]
    smalls = [small_name(i) for i in range(0, n_small(size_mb), 100)]
    for rel in logs + smalls:
        shutil.copy2(data / rel, mkparent(pristine / rel))
    for rel in logs:
        with (data / rel).open("ab") as f:
            f.write(log_bytes(rng, max(4096, 400 * size_mb), 1_800_000_000_000))
    for rel in smalls:
        (data / rel).write_bytes(rng.randbytes(rng.randint(1024, 16384)))
    random_file(data / "new/added.bin", rng, max(4096, 5 * MIB * size_mb // 500))
    return {"appended_logs": len(logs), "rewritten_small": len(smalls), "added_files": 1}


def revert_change(work: Path) -> None:
    data, pristine = work / "data", work / "pristine"
    if pristine.is_dir():
        for p in pristine.rglob("*"):
            if p.is_file():
                shutil.copy2(p, data / p.relative_to(pristine))
        shutil.rmtree(pristine)
    shutil.rmtree(data / "new", ignore_errors=True)


def manifest(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                rel = os.path.relpath(f.name, root)
                out[rel] = hashlib.file_digest(f, "sha1").hexdigest()
    return out


def restored_root(target: Path, data: Path) -> Path:
    """Where the tree landed: tools keep the source's absolute path, its name, or neither."""
    for cand in (target / data.relative_to("/"), target / data.name, target):
        if (cand / "bin/blob0.bin").is_file():
            return cand
    return target


# ---- tools --------------------------------------------------------------------------------


def borg_argv() -> list[str]:
    if importlib.util.find_spec("borg") is not None:
        return [sys.executable, "-m", "borg"]
    return [shutil.which("borg") or "borg"]


def borg_mode() -> str:
    """HMAC-SHA256 ids are borg's faster choice where the CPU has SHA instructions."""
    cpu = Path("/proc/cpuinfo")
    return "repokey" if cpu.exists() and " sha_ni" in cpu.read_text() else "repokey-blake2"


NOTES = {
    "ploinkyd": "python -m ploinkyd backup ...; PLOINKY_PASSWORD",
    "restic": "restic repository v2, default compression (auto)",
    "borg": f"borg init -e {borg_mode()}; borg create --compression lz4",
}


def spec(name: str, run: Path, data: Path, target: Path) -> tuple[dict[str, str], dict[str, Cmd]]:
    """One tool's environment and each step's command; the repository is ``run/repo``."""
    repo, cache, src, tgt = str(run / "repo"), str(run / "cache"), str(data), str(target)
    if name == "ploinkyd":
        pp = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        env = {"PLOINKY_PASSWORD": PASSWORD, "XDG_CACHE_HOME": cache, "PYTHONPATH": pp}
        b = [sys.executable, "-m", "ploinkyd", "backup", "--repo", repo]
        init, backup = [*b, "init"], [*b, "create", src, "--json"]
        restore, verify = [*b, "restore", "latest", "--target", tgt], [*b, "verify", "--read-data"]
    elif name == "restic":
        env = {"RESTIC_PASSWORD": PASSWORD}
        b = ["restic", "-r", repo, "--cache-dir", cache]
        init, backup = [*b, "init"], [*b, "backup", src]
        restore, verify = [*b, "restore", "latest", "--target", tgt], [*b, "check", "--read-data"]
    else:
        env = {"BORG_PASSPHRASE": PASSWORD, "BORG_BASE_DIR": cache}
        b = borg_argv()
        init = [*b, "init", "-e", borg_mode(), repo]
        backup = [*b, "create", "--compression", "lz4", f"{repo}::@SNAP@", src]
        restore, verify = [*b, "extract", f"{repo}::changed"], [*b, "check", "--verify-data", repo]
    cmds: dict[str, Cmd] = {"init": (init, None), "verify": (verify, None)}
    cmds["restore"] = (restore, target)  # borg extracts into its working directory
    for snap in ("first", "unchanged", "changed"):
        cmds[f"backup_{snap}"] = ([a.replace("@SNAP@", snap) for a in backup], None)
    return {**os.environ, **env}, cmds


def version(tool: str) -> str | None:
    argv = {"restic": ["restic", "version"], "borg": [*borg_argv(), "--version"]}.get(tool)
    if argv is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        return out.strip().replace("__main__.py", "borg")
    except (OSError, subprocess.CalledProcessError):
        return None


def setup(tools: list[str]) -> dict[str, Any]:
    """Install what is missing: restic and GNU time from Debian, borgbackup from PyPI."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PIP_ROOT_USER_ACTION": "ignore"}
    apt, pip = ["apt-get", "install", "-y", "-q"], [sys.executable, "-m", "pip", "install", "-q"]
    steps: dict[str, list[list[str]]] = {}
    if not GNU_TIME.exists():
        steps["time"] = [[*apt, "time"]]
    if "restic" in tools and not version("restic"):
        steps["restic"] = [[*apt, "restic"]]
    if "borg" in tools and not version("borg"):
        steps["borg"] = [[*apt, *BORG_BUILD_DEPS], [*pip, "borgbackup<2"]]  # 2.x: other CLI
    out: dict[str, Any] = {}
    update = [["apt-get", "update", "-q"]]
    for what, argvs in steps.items():
        t0 = time.perf_counter()
        try:
            for argv in update + argvs:
                subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            update = []  # once per run
            out[what] = {"installed_seconds": round(time.perf_counter() - t0, 1)}
        except (OSError, subprocess.CalledProcessError) as e:
            out[what] = {"error": str(e)}
    return out


# ---- running ------------------------------------------------------------------------------


class StepFailed(Exception):
    pass


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run_step(
    cmd: Cmd, env: dict[str, str], logs: Path, step: str, timeout: float
) -> dict[str, Any]:
    argv, cwd = cmd
    logs.mkdir(parents=True, exist_ok=True)
    rss = logs / f"{step}.rss"
    timed = [str(GNU_TIME), "-f", "%M", "-o", str(rss), *argv] if GNU_TIME.exists() else argv
    with (logs / f"{step}.out").open("wb") as o, (logs / f"{step}.err").open("wb") as e:
        t0 = time.perf_counter()
        io: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": o, "stderr": e}
        p = subprocess.Popen(timed, cwd=cwd, env=env, start_new_session=True, **io)
        timer = threading.Timer(timeout, os.killpg, (p.pid, signal.SIGKILL))
        timer.start()
        _, status, ru = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        tail = (logs / f"{step}.err").read_text(errors="replace")[-1500:]
        raise StepFailed(f"{step}: exit {p.returncode}: {' '.join(argv)}\n{tail}")
    kib = int(rss.read_text().split()[-1]) if GNU_TIME.exists() else ru.ru_maxrss
    return {
        "seconds": round(seconds, 3),
        "peak_rss_mb": round(kib / 1024, 1),
        "cpu_seconds": round(ru.ru_utime + ru.ru_stime, 2),
    }


def bench_tool(
    name: str, work: Path, args: argparse.Namespace, state: dict[str, Any]
) -> dict[str, Any]:
    run, data = work / "runs" / name, work / "data"
    target = run / "restore"
    shutil.rmtree(run, ignore_errors=True)
    env, cmds = spec(name, run, data, target)
    res: dict[str, Any] = {"version": version(name), "note": NOTES[name], "steps": {}}

    def step(label: str) -> None:
        if args.drop_caches:
            state["drop_ok"] = drop_caches() and state["drop_ok"]
        res["steps"][label] = run_step(cmds[label], env, run / "logs", label, args.timeout)

    revert_change(work)
    try:
        target.mkdir(parents=True)
        for label in ("init", "backup_first", "backup_unchanged"):
            step(label)
        res["change"] = apply_change(work, args.size_mb)
        step("backup_changed")
        step("restore")
        if "source" not in state:
            state["source"] = manifest(data)
        src = state["source"]
        got = manifest(restored_root(target, data))
        bad = sorted(k for k in src.keys() | got.keys() if src.get(k) != got.get(k))
        res["restore_verified"] = not bad
        res["restore_mismatches"] = {"count": len(bad), "first": bad[:5]}
        shutil.rmtree(target)
        step("verify")
        repo = run / "repo"
        res["repo_bytes"] = sum(p.lstat().st_size for p in repo.rglob("*") if p.is_file())
    except (StepFailed, OSError) as e:  # OSError: the tool's binary is missing
        res["error"] = str(e)
    finally:
        revert_change(work)
    if not args.keep:
        shutil.rmtree(run, ignore_errors=True)
    return res


def ratios(tools: dict[str, Any], base: str) -> dict[str, Any]:
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    p, b = tools["ploinkyd"], tools[base]
    out: dict[str, Any] = {}
    for s in STEPS:
        ps, bs = p["steps"].get(s, {}), b["steps"].get(s, {})
        out[s] = {k: ratio(ps.get(k), bs.get(k)) for k in ("seconds", "peak_rss_mb")}
    out["repo_bytes"] = ratio(p.get("repo_bytes"), b.get("repo_bytes"))
    return out


def table(tools: dict[str, Any]) -> str:
    def row(label: str, cells: list[str]) -> str:
        return f"{label:18}" + "".join(f"{c:>22}" for c in cells)

    def cell(st: dict[str, Any] | None) -> str:
        return f"{st['seconds']:.2f} s {st['peak_rss_mb']:.0f} MB" if st else "-"

    ts = tools.values()
    lines = [row("step", list(tools))]
    lines += [row(s, [cell(t["steps"].get(s)) for t in ts]) for s in ["init", *STEPS]]
    sizes = [f"{t['repo_bytes'] / 1e6:.1f} MB" if "repo_bytes" in t else "-" for t in ts]
    lines.append(row("repo size", sizes))
    lines.append(row("restore == source", [str(t.get("restore_verified", "-")) for t in ts]))
    for n, t in tools.items():
        if "error" in t:
            first, *rest = t["error"].strip().splitlines()
            lines.append(f"{n} FAILED: {first}" + (f"\n    ... {rest[-1]}" if rest else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help="default: %(default)s")
    ap.add_argument("--size-mb", type=int, default=500, help="dataset size, default %(default)s")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ploinkyd-bench-backup"))
    ap.add_argument("--no-install", dest="install", action="store_false", help="install nothing")
    ap.add_argument("--drop-caches", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per step")
    ap.add_argument("--keep", action="store_true", help="keep repositories and logs in runs/")
    args = ap.parse_args()
    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    if unknown := set(names) - set(ALL_TOOLS):
        ap.error(f"unknown tools: {sorted(unknown)}")
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)

    installed = setup(names) if args.install else {}
    dataset = ensure_dataset(work, args.size_mb)
    state: dict[str, Any] = {"drop_ok": True}
    tools: dict[str, Any] = {}
    for name in names:
        print(f"bench_backup: {name} ...", file=sys.stderr, flush=True)
        tools[name] = bench_tool(name, work, args, state)
    rss = "/usr/bin/time %M" if GNU_TIME.exists() else "os.wait4 (counts this script's RSS)"
    drop = {"requested": args.drop_caches, "worked": args.drop_caches and state["drop_ok"]}
    bases = [b for b in ("restic", "borg") if b in tools and "ploinkyd" in tools]
    report = {
        "bench": "backup",
        "dataset": dataset,
        "installed_now": installed,
        "drop_caches": drop,
        "peak_rss_source": rss,
        "cpus": os.cpu_count(),
        "tools": tools,
        "ratios": {f"ploinkyd/{b}": ratios(tools, b) for b in bases},
    }
    print(table(tools), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

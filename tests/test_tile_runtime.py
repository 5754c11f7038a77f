"""The tile runtime: operator semantics through ``run_stages``, then the real line protocol
over real subprocesses, both as ``ploinkyd.tile_runtime`` and mounted alone as
``tile_runtime`` (the container layout)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ploinkyd.tile_runtime
from ploinkyd.tile_runtime import OpError, describe, run_stages

PACKAGE = Path(ploinkyd.tile_runtime.__file__).parent
REPO = PACKAGE.parent.parent


def run(op: str, data: Any, **params: Any) -> Any:
    return run_stages([{"op": op, "params": params}], data)


def fails(op: str, data: Any, **params: Any) -> OpError:
    with pytest.raises(OpError) as info:
        run(op, data, **params)
    return info.value


# -- map / filter / reduce ------------------------------------------------------------------


def test_map() -> None:
    assert run("map", [1, 2, 3], expr="x * 2") == [2, 4, 6]
    assert run("map", [], expr="x") == []
    assert run("map", [{"a": 1}], expr="x['a'] + len(str(x))") == [9]


def test_expressions_see_safe_builtins_and_modules() -> None:
    expr = "[math.floor(x / 2), re.sub('a', 'b', 'aa'), json.dumps([x]), sorted({x, 0})]"
    assert run("map", [3], expr=expr) == [[1, "bb", "[3]", [0, 3]]]
    # Comprehensions inside the expression can see x.
    assert run("map", [2], expr="[x * i for i in range(3)]") == [[0, 2, 4]]


def test_unsafe_names_are_not_defined() -> None:
    err = fails("map", [1], expr="open('/etc/passwd')")
    assert err.code == "OP_FAILED" and "NameError" in err.message
    assert fails("map", [1], expr="__import__('os')").details["exception"] == "NameError"


def test_expression_error_names_type_stage_and_element() -> None:
    err = fails("map", [1, 2, 0], expr="10 // x")
    assert err.code == "OP_FAILED"
    assert "ZeroDivisionError" in err.message
    assert err.details == {
        "exception": "ZeroDivisionError",
        "expr": "10 // x",
        "index": 2,
        "stage": 0,
        "op": "map",
    }


@pytest.mark.parametrize("expr", ["", "   ", "x +", "x = 1", "yield x", "1)\n(2", 5, None])
def test_bad_expressions_are_bad_params(expr: Any) -> None:
    err = fails("map", [1], expr=expr)
    assert err.code == "BAD_PARAMS" and "'expr'" in err.message, err


def test_map_needs_a_list_and_its_param() -> None:
    err = fails("map", {"a": 1}, expr="x")
    assert err.code == "BAD_INPUT" and "array" in err.message and "object" in err.message
    assert fails("map", [1]).code == "BAD_PARAMS"
    err = fails("map", [1], expr="x", exp="x")
    assert err.code == "BAD_PARAMS" and "exp" in err.message and "allowed: expr" in err.message


def test_filter() -> None:
    assert run("filter", [0, 1, 2, 3, None, ""], expr="x") == [1, 2, 3]
    assert run("filter", [{"n": 1}, {"n": 5}], expr="x['n'] > 2") == [{"n": 5}]
    assert fails("filter", [{"n": 1}, {}], expr="x['n'] > 2").details["index"] == 1


def test_reduce() -> None:
    assert run("reduce", [1, 2, 3, 4], expr="acc + x") == 10
    assert run("reduce", [1, 2, 3], expr="acc + [x]", initial=[]) == [1, 2, 3]
    assert run("reduce", [], expr="acc + x", initial=7) == 7
    assert run("reduce", [5], expr="acc * x") == 5
    err = fails("reduce", [], expr="acc + x")
    assert err.code == "BAD_INPUT" and "initial" in err.message
    err = fails("reduce", [1, "a"], expr="acc + x")
    assert err.code == "OP_FAILED" and err.details["index"] == 1 and "TypeError" in err.message


# -- sort / group_by / count / take / flatten -------------------------------------------------


def test_sort() -> None:
    assert run("sort", [3, 1, 2]) == [1, 2, 3]
    assert run("sort", [3, 1, 2], reverse=True) == [3, 2, 1]
    rows = [{"n": 2, "i": 0}, {"n": 1, "i": 1}, {"n": 2, "i": 2}]
    assert run("sort", rows, key="x['n']") == [rows[1], rows[0], rows[2]]  # stable
    assert run("sort", rows, key="x['n']", reverse=True) == [rows[0], rows[2], rows[1]]
    err = fails("sort", [1, "a"])
    assert err.code == "OP_FAILED" and "key" in err.message
    assert fails("sort", [1], reverse="yes").code == "BAD_PARAMS"


def test_group_by() -> None:
    data = [{"k": "b", "v": 1}, {"k": "a", "v": 2}, {"k": "b", "v": 3}, {"k": 1, "v": 4}]
    out = run("group_by", data, key="x['k']")
    assert out == {"b": [data[0], data[2]], "a": [data[1]], "1": [data[3]]}
    assert list(out) == ["b", "a", "1"]  # insertion order
    assert fails("group_by", data).code == "BAD_PARAMS"


def test_count() -> None:
    assert run("count", [1, 2, 3]) == 3
    assert run("count", {"a": 1, "b": 2}) == 2
    assert fails("count", "abc").code == "BAD_INPUT"


def test_take() -> None:
    assert run("take", [1, 2, 3], n=2) == [1, 2]
    assert run("take", [1, 2, 3], n=0) == []
    assert run("take", [1], n=5) == [1]
    for bad in (-1, 1.5, True, "2"):
        err = fails("take", [1], n=bad)
        assert err.code == "BAD_PARAMS" and "'n'" in err.message, err
    assert fails("take", [1]).code == "BAD_PARAMS"


def test_flatten() -> None:
    assert run("flatten", [[1, 2], 3, [], [[4]]]) == [1, 2, 3, [4]]
    assert fails("flatten", {"a": [1]}).code == "BAD_INPUT"


def test_identity() -> None:
    assert run("identity", {"a": [1]}) == {"a": [1]}


# -- select / json_path -------------------------------------------------------------------------


def test_select() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": 2}]}, "x.y": 0}
    assert run("select", doc, path="a.b.1.c") == 2
    assert run("select", doc, path="a.b.-1") == {"c": 2}
    assert run("json_path", doc, path="$.a.b.0.c") == 1
    assert run("select", doc, path="$") == doc
    assert run("select", doc, path="a.zz", default=None) is None
    err = fails("select", doc, path="a.zz.q")
    assert err.code == "PATH_NOT_FOUND" and err.details["missing"] == "a.zz", err
    assert fails("json_path", doc, path="a.b.9").code == "PATH_NOT_FOUND"
    assert fails("select", doc, path="").code == "BAD_PARAMS"
    assert fails("select", doc).code == "BAD_PARAMS"


def test_select_each() -> None:
    rows = [{"u": {"n": "a"}}, {"u": {"n": "b"}}, {"u": {}}]
    assert run("select", rows, path="u.n", each=True, default="?") == ["a", "b", "?"]
    err = fails("select", rows, path="u.n", each=True)
    assert err.code == "PATH_NOT_FOUND" and err.details["index"] == 2
    assert fails("select", {"u": 1}, path="u", each=True).code == "BAD_INPUT"


# -- csv ------------------------------------------------------------------------------------------


def test_csv_parse() -> None:
    text = 'name,age\nann,31\n"bob, jr",7\n\ncy\n'
    assert run("csv_parse", text) == [
        {"name": "ann", "age": "31"},
        {"name": "bob, jr", "age": "7"},
        {"name": "cy", "age": None},
    ]
    assert run("csv_parse", "a;b\n1;2\n", delimiter=";") == [{"a": "1", "b": "2"}]
    assert run("csv_parse", "a,b\n1,2\n", header=False) == [["a", "b"], ["1", "2"]]
    assert run("csv_parse", "") == []
    err = fails("csv_parse", "a\n1,2\n")
    assert err.code == "BAD_INPUT" and "row 2" in err.message
    assert fails("csv_parse", [1]).code == "BAD_INPUT"
    assert fails("csv_parse", "a", delimiter=";;").code == "BAD_PARAMS"
    assert fails("csv_parse", "a", header="no").code == "BAD_PARAMS"


def test_csv_format() -> None:
    rows = [{"a": 1, "b": "x,y"}, {"b": None, "c": True, "a": [1]}]
    assert run("csv_format", rows) == 'a,b,c\n1,"x,y",\n[1],,true\n'
    # A row of one empty field is written as "" so that it does not read back as no row.
    assert run("csv_format", rows, columns=["b"], delimiter=";") == 'b\nx,y\n""\n'
    assert run("csv_format", [[1, 2]], columns=["p", "q"]) == "p,q\n1,2\n"
    assert run("csv_format", rows, header=False, columns=["a"]) == "1\n[1]\n"
    assert run("csv_format", []) == ""
    assert fails("csv_format", [{"a": 1}, 2]).details["index"] == 1
    assert fails("csv_format", rows, columns="a").code == "BAD_PARAMS"


def test_csv_round_trip() -> None:
    rows = [{"k": "1", "v": 'say "hi"\nthere'}, {"k": "2", "v": ""}]
    assert run_stages([{"op": "csv_format"}, {"op": "csv_parse"}], rows) == rows


# -- stages -------------------------------------------------------------------------------------


def test_stages_chain_in_order() -> None:
    stages = [
        {"op": "csv_parse"},
        {"op": "map", "params": {"expr": "int(x['n'])"}},
        {"op": "filter", "params": {"expr": "x % 2"}},
        {"op": "sort", "params": {"reverse": True}},
        {"op": "take", "params": {"n": 2}},
    ]
    assert run_stages(stages, "n\n1\n2\n3\n4\n5\n") == [5, 3]
    assert run_stages([], [1]) == [1]


def test_stage_errors_carry_stage_and_op() -> None:
    with pytest.raises(OpError) as info:
        run_stages([{"op": "identity"}, {"op": "nope"}], 1)
    assert info.value.code == "UNKNOWN_OP"
    assert info.value.details["stage"] == 1 and info.value.details["op"] == "nope"
    assert "map" in info.value.details["known"] and "map" in info.value.message
    for stages in ([{"params": {}}], [1], "map"):
        with pytest.raises(OpError) as info:
            run_stages(stages, 1)
        assert info.value.code == "BAD_REQUEST", stages
    with pytest.raises(OpError) as info:
        run_stages([{"op": "map", "params": [1]}], 1)
    assert info.value.code == "BAD_PARAMS"


def test_stage_objects_are_accepted() -> None:
    from ploinkyd.tiles.model import Stage

    assert run_stages((Stage(op="map", params={"expr": "-x"}),), [1]) == [-1]


def test_describe() -> None:
    names = {op["name"] for op in describe()}
    builtins = {"map", "filter", "reduce", "sort", "group_by", "count", "take", "flatten"}
    assert builtins | {"select", "json_path", "csv_parse", "csv_format", "identity"} <= names
    assert run_stages([{"op": "__describe__"}], None) == describe()
    assert all(set(op) == {"name", "version"} for op in describe())


# -- the protocol over a real process --------------------------------------------------------


class Tile:
    """A running tile runtime, spoken to line by line."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=env, cwd=cwd,
        )  # fmt: skip
        self.stderr_text: str | None = None

    def send_raw(self, line: bytes) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        assert out.endswith(b"\n"), f"no response; stderr: {self.stderr()}"
        response: dict[str, Any] = json.loads(out)
        return response

    def send(self, stages: list[dict[str, Any]], data: Any = None, rid: str = "r") -> Any:
        line = json.dumps({"id": rid, "stages": stages, "input": data}).encode() + b"\n"
        return self.send_raw(line)

    def ok(self, stages: list[dict[str, Any]], data: Any = None) -> Any:
        response = self.send(stages, data)
        assert response["ok"] is True, response
        return response["output"]

    def close(self) -> int:
        """Send EOF; return the exit status. ``stderr_text`` holds what it logged."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        status = self.proc.wait(10)
        self.stderr()
        return status

    def stderr(self) -> str:
        if self.stderr_text is None and self.proc.poll() is not None:
            assert self.proc.stderr is not None and self.proc.stdout is not None
            self.stderr_text = self.proc.stderr.read().decode()
            self.proc.stderr.close()
            self.proc.stdout.close()
        return "(still running)" if self.stderr_text is None else self.stderr_text


def _env(**extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(extra)
    return env


@pytest.fixture
def mounted(tmp_path: Path) -> Path:
    """``<tmp>/opt/ploinky`` holding a copy of the runtime package and nothing else."""
    root = tmp_path / "opt" / "ploinky"
    shutil.copytree(PACKAGE, root / "tile_runtime", ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(params=["package", "mounted"])
def tile_factory(request: pytest.FixtureRequest, tmp_path: Path, mounted: Path) -> Iterator[Any]:
    """``tile_factory(**env)`` → a ``Tile`` running as ``ploinkyd.tile_runtime`` or, with
    ``-S`` so not even site-packages is there, as ``tile_runtime`` from ``mounted`` alone."""
    tiles: list[Tile] = []
    work = tmp_path / "work"
    work.mkdir()

    def factory(**env: str) -> Tile:
        if request.param == "package":
            argv = [sys.executable, "-m", "ploinkyd.tile_runtime"]
            full_env = _env(PYTHONPATH=str(REPO), **env)
        else:
            argv = [sys.executable, "-S", "-m", "tile_runtime"]
            full_env = _env(PYTHONPATH=str(mounted), **env)
        tile = Tile(argv, full_env, work)
        tiles.append(tile)
        return tile

    yield factory
    for tile in tiles:
        if tile.proc.poll() is None:
            tile.proc.kill()
            tile.proc.wait()
        tile.stderr()


def test_mounted_layout_cannot_import_ploinkyd(mounted: Path, tmp_path: Path) -> None:
    # The isolation the mounted-style tile runs under really hides ploinkyd.
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "import ploinkyd"],
        env=_env(PYTHONPATH=str(mounted)), cwd=tmp_path, capture_output=True, check=False,
    )  # fmt: skip
    assert probe.returncode != 0 and b"ModuleNotFoundError" in probe.stderr


def test_protocol_round_trips(tile_factory: Any) -> None:
    tile = tile_factory()
    assert tile.send([{"op": "map", "params": {"expr": "x * 2"}}], [1, 2], rid="a") == {
        "id": "a",
        "ok": True,
        "output": [2, 4],
    }
    fused = [{"op": "csv_parse"}, {"op": "select", "params": {"path": "v", "each": True}}]
    assert tile.ok(fused, "v\n1\n2\n") == ["1", "2"]
    assert tile.ok([{"op": "count"}], {"a": 1}) == 1
    assert tile.close() == 0


def test_protocol_errors_keep_the_loop_going(tile_factory: Any) -> None:
    tile = tile_factory()
    for line in (b"not json\n", b"[1]\n", b'{"id": 5, "stages": []}\n', b"\n"):
        response = tile.send_raw(line)
        assert response["id"] is None and response["ok"] is False, (line, response)
        assert response["error"]["code"] == "BAD_REQUEST", (line, response)
    response = tile.send([{"op": "map", "params": {"expr": "1/0"}}], [1], rid="z")
    assert response["id"] == "z" and response["error"]["code"] == "OP_FAILED"
    assert response["error"]["details"]["stage"] == 0
    response = tile.send([{"op": "map", "params": {"expr": "set()"}}], [1])
    assert response["error"]["code"] == "BAD_OUTPUT", response
    assert tile.send([{"op": "nope"}], 1)["error"]["code"] == "UNKNOWN_OP"
    assert tile.ok([{"op": "identity"}], "still alive") == "still alive"
    assert tile.close() == 0


def test_prints_do_not_corrupt_the_protocol(tile_factory: Any, tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "noisy_ops.py").write_text(
        textwrap.dedent(
            """
            import os
            from tile_runtime import operator

            @operator("noisy")
            def noisy(data, params):
                print("print to stdout")
                os.system("echo child to stdout")
                return data
            """
        )
    )
    tile = tile_factory(PLOINKY_TILE_MODULES="noisy_ops", PLOINKY_TILE_PATH=str(mods))
    assert tile.ok([{"op": "noisy"}], 42) == 42
    assert tile.close() == 0
    assert "print to stdout" in tile.stderr() and "child to stdout" in tile.stderr()


def test_user_module_from_env(tile_factory: Any, tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    (mods / "pkg").mkdir(parents=True)
    (mods / "pkg" / "__init__.py").write_text("")
    (mods / "pkg" / "words.py").write_text(
        textwrap.dedent(
            """
            from tile_runtime import OpError, operator

            @operator("word_count", version="3")
            def word_count(data, params):
                if not isinstance(data, str):
                    raise OpError("BAD_INPUT", "word_count needs a string")
                return len(data.split(params.get("sep")))

            @operator("explode")
            def explode(data, params):
                raise KeyError("boom")
            """
        )
    )
    tile = tile_factory(PLOINKY_TILE_MODULES="pkg.words", PLOINKY_TILE_PATH=f"/nonexistent:{mods}")
    assert tile.ok([{"op": "word_count"}], "a b  c") == 3
    assert tile.ok([{"op": "word_count", "params": {"sep": ","}}], "a,b") == 2
    fused = [{"op": "map", "params": {"expr": "x.upper()"}}, {"op": "take", "params": {"n": 1}}]
    assert tile.ok(fused, ["a"]) == ["A"]
    response = tile.send([{"op": "word_count"}], 5)
    assert (
        response["error"]["code"] == "BAD_INPUT"
        and response["error"]["details"]["op"] == "word_count"
    )
    response = tile.send([{"op": "identity"}, {"op": "explode"}], 5)
    assert response["error"]["code"] == "OP_FAILED", response
    assert "KeyError" in response["error"]["message"]
    assert response["error"]["details"]["stage"] == 1
    assert {"name": "word_count", "version": "3"} in tile.ok([{"op": "__describe__"}])
    assert tile.close() == 0


def test_failed_module_import(tile_factory: Any, tmp_path: Path) -> None:
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "half.py").write_text(
        "from tile_runtime import operator\n"
        "@operator('half_op')\n"
        "def half_op(data, params):\n"
        "    return data\n"
        "raise RuntimeError('config missing')\n"
    )
    env = {"PLOINKY_TILE_MODULES": "half, missing_mod", "PLOINKY_TILE_PATH": str(mods)}
    tile = tile_factory(**env)
    for op in ("half_op", "anything"):
        response = tile.send([{"op": op}], 1)
        error = response["error"]
        assert error["code"] == "MODULE_IMPORT_FAILED", response
        assert "half: RuntimeError: config missing" in error["message"], error
        assert "missing_mod: ModuleNotFoundError" in error["message"], error
        assert set(error["details"]["modules"]) == {"half", "missing_mod"}
    assert tile.ok([{"op": "map", "params": {"expr": "x + 1"}}], [1]) == [2]
    assert tile.close() == 0
    assert "cannot import user module 'half'" in tile.stderr()
    assert "RuntimeError: config missing" in tile.stderr()


def test_exec_stage(tile_factory: Any) -> None:
    tile = tile_factory()

    def exec_stage(argv: list[str], **params: Any) -> list[dict[str, Any]]:
        return [{"op": "__exec__", "params": {"argv": argv, **params}}]

    assert tile.ok(exec_stage(["sh", "-c", "tr a-z A-Z"], format="text"), "abc\n") == "ABC\n"
    script = "import json,sys; d=json.load(sys.stdin); print(json.dumps([v*10 for v in d]))"
    assert tile.ok(exec_stage([sys.executable, "-c", script]), [1, 2]) == [10, 20]
    fused = [*exec_stage(["sh", "-c", "cat"]), {"op": "count"}]
    assert tile.ok(fused, {"a": 1, "b": 2}) == 2

    error = tile.send(exec_stage(["sh", "-c", "echo bad >&2; exit 7"], format="text"), "")
    error = error["error"]
    assert error["code"] == "EXEC_FAILED" and error["details"]["exit_code"] == 7, error
    assert error["details"]["stderr"] == "bad\n" and "bad" in error["message"]

    big_stderr = "head -c 10000 /dev/zero | tr '\\0' e >&2; exit 1"
    error = tile.send(exec_stage(["sh", "-c", big_stderr], format="text"), "")["error"]
    assert len(error["details"]["stderr"]) == 2048

    error = tile.send(exec_stage(["no-such-command-xyz"]), None)["error"]
    assert error["code"] == "EXEC_FAILED" and "no-such-command-xyz" in error["message"]
    error = tile.send(exec_stage(["sh", "-c", "echo not json"]), None)["error"]
    assert error["code"] == "BAD_OUTPUT", error
    error = tile.send(exec_stage(["sleep", "5"], timeout_s=0.2), None)["error"]
    assert error["code"] == "EXEC_TIMEOUT", error
    error = tile.send(exec_stage(["cat"], format="text"), [1])["error"]
    assert error["code"] == "BAD_INPUT", error
    for params in ({"argv": []}, {"argv": ["cat"], "format": "xml"}, {"argv": "cat"}):
        error = tile.send([{"op": "__exec__", "params": params}], None)["error"]
        assert error["code"] == "BAD_PARAMS", (params, error)
    assert tile.close() == 0


def test_eof_exits_cleanly_mid_stream(tile_factory: Any) -> None:
    tile = tile_factory()
    assert tile.proc.stdin is not None
    tile.proc.stdin.write(b'{"id": "x", "stages": []')  # no newline: a torn last line
    assert tile.close() == 0

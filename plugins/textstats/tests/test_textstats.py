"""The textstats plugin: its word definition, then the ``textstats`` task kind and the
``textstats.wordfreq`` operator through a real ``ploinkyd run`` that loads the plugin from
this directory (``PLOINKY_PLUGINS__PATHS``), with real files, real queues and, for the
operator, the real tile runners (Docker and the process runner).
"""

from __future__ import annotations

import json
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PLUGIN_DIR))

from ploinky_textstats.kind import count  # noqa: E402
from ploinky_textstats.params import TextstatsInput, WordfreqParams  # noqa: E402
from ploinky_textstats.tile_ops.textstats_words import (  # noqa: E402
    TextCounter,
    WordOptions,
    options_from_params,
)
from pydantic import ValidationError  # noqa: E402

from ploinkyd.errors import TaskError, TaskFailed  # noqa: E402
from tests.daemon_harness import DaemonProc, new_daemon, wait_until  # noqa: E402

POEM = "The cat sat on the mat.\r\nThe dog didn't sit; the dog ran!\n\nA cat, a dog, THE end"


# ---- the word definition, in-process -----------------------------------------------------


def _summary(text: str, **options: Any) -> dict[str, Any]:
    counter = TextCounter(WordOptions.build(**options))
    counter.feed_text(text)
    return counter.summary()


def test_counts_lines_words_chars_and_ranks_ties_alphabetically() -> None:
    summary = _summary(POEM, top=4)
    assert (summary["lines"], summary["words"], summary["chars"]) == (4, 19, len(POEM))
    # "the" 5, then dog 3, then cat 2 and a 2 (a tie: alphabetical); "didn't" is one word.
    assert summary["top"] == [
        {"word": "the", "count": 5},
        {"word": "dog", "count": 3},
        {"word": "a", "count": 2},
        {"word": "cat", "count": 2},
    ]
    assert summary["unique_words"] == 11


def test_options_filter_the_top_list_but_not_the_totals() -> None:
    summary = _summary(POEM, top=3, min_length=3, ignore=["THE", "Cat"])
    assert summary["words"] == 19
    assert [w["word"] for w in summary["top"]] == ["dog", "didn't", "end"]
    # Ties are ordered by code point: "The" < "cat" < "the".
    cased = _summary(POEM, top=3, lowercase=False)
    assert [(w["word"], w["count"]) for w in cased["top"]] == [("dog", 3), ("The", 2), ("cat", 2)]


def test_line_endings_and_a_missing_last_newline() -> None:
    assert _summary("")["lines"] == 0
    assert _summary("one")["lines"] == 1
    assert _summary("one\n")["lines"] == 1
    assert _summary("a\rb\r\nc\nd")["lines"] == 4
    assert _summary("snake_case under_score")["words"] == 4


def test_runtime_params_check_agrees_with_the_pydantic_model() -> None:
    good = {"top": 3, "min_length": 2, "lowercase": False, "ignore": ["x"]}
    assert options_from_params(good) == WordfreqParams.model_validate(good).word_options()
    for bad in ({"top": -1}, {"top": "5"}, {"top": True}, {"lowercase": "yes"}, {"nope": 1}):
        with pytest.raises(ValueError):
            options_from_params(bad)
        with pytest.raises(ValidationError):
            WordfreqParams.model_validate(bad)


def test_input_needs_exactly_one_source_and_an_absolute_path() -> None:
    for bad, words in (
        ({}, "exactly one"),
        ({"text": "a", "path": "/x"}, "exactly one"),
        ({"path": "rel/file.txt"}, "absolute"),
        ({"text": "a", "encoding": "klingon"}, "unknown text encoding"),
        ({"text": "a", "encoding": "rot13"}, "unknown text encoding"),
    ):
        with pytest.raises(ValidationError, match=words):
            TextstatsInput.model_validate(bad)


def test_count_reads_files_only_below_the_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "poem.txt").write_text(POEM, encoding="utf-8", newline="")
    (tmp_path / "secret.txt").write_text("password hunter2\n")
    (texts / "link.txt").symlink_to(tmp_path / "secret.txt")
    monkeypatch.setenv("TEXTSTATS_ROOTS", str(texts))

    out = count(TextstatsInput(path=str(texts / "poem.txt"), top=1))
    assert out["source"] == {"path": str(texts / "poem.txt"), "bytes": len(POEM.encode())}
    assert (out["lines"], out["words"], out["top"]) == (4, 19, [{"word": "the", "count": 5}])
    with pytest.raises(TaskError, match="outside the directories") as caught:
        count(TextstatsInput(path=str(texts / "link.txt")))
    assert caught.value.code == "FILE_NOT_ALLOWED"
    # Outside the roots a task cannot even learn whether a file exists.
    with pytest.raises(TaskError) as caught:
        count(TextstatsInput(path=str(tmp_path / "no-such-file.txt")))
    assert caught.value.code == "FILE_NOT_ALLOWED"
    with pytest.raises(TaskError) as caught:
        count(TextstatsInput(path=str(texts)))
    assert caught.value.code == "NOT_A_FILE"
    monkeypatch.delenv("TEXTSTATS_ROOTS")
    with pytest.raises(TaskError, match="TEXTSTATS_ROOTS") as caught:
        count(TextstatsInput(path=str(texts / "poem.txt")))
    assert caught.value.code == "FILE_NOT_ALLOWED"


def test_a_stopped_count_ends_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.txt"
    big.write_text("word\n" * 100_000)
    monkeypatch.setenv("TEXTSTATS_ROOTS", str(tmp_path))
    stop = threading.Event()
    stop.set()
    with pytest.raises(TaskFailed) as caught:
        count(TextstatsInput(path=str(big)), stop)
    assert caught.value.code == "CANCELLED"


# ---- through a real daemon ---------------------------------------------------------------


def _make_texts(directory: Path) -> Path:
    directory.mkdir()
    (directory / "poem.txt").write_text(POEM, encoding="utf-8", newline="")
    (directory / "latin1.txt").write_bytes("caf\u00e9 au lait\ncaf\u00e9\n".encode("latin-1"))
    return directory


def _start(root: Path, texts: Path, runner: str) -> DaemonProc:
    env = {
        "PLOINKY_PLUGINS__PATHS": json.dumps([str(PLUGIN_DIR)]),
        "TEXTSTATS_ROOTS": str(texts),
    }
    # Unique, for the docker containers' labels; short, for the control socket's path.
    node = f"ts-{uuid.uuid4().hex[:8]}"
    d = new_daemon(root / "d", node=node, config={"tiles": {"runner": runner}}, extra_env=env)
    return d.start()


def _stop(d: DaemonProc) -> None:
    try:
        d.stop()
    finally:
        d.kill()  # a no-op once it has exited


def _record(d: DaemonProc, task_id: str, timeout: float = 60) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        return d.records().get(task_id)

    try:
        found: dict[str, Any] = wait_until(f"the record of {task_id}", find, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; daemon log:\n{d.read_log()[-3000:]}") from None
    return found


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("textstats")


@pytest.fixture(scope="module")
def texts(root: Path) -> Path:
    return _make_texts(root / "texts")


@pytest.fixture(scope="module")
def daemon(root: Path, texts: Path) -> Iterator[DaemonProc]:
    """One daemon for the task-kind tests (process runner): each test uses its own task ids."""
    d = _start(root, texts, "process")
    yield d
    _stop(d)


def test_daemon_loads_the_plugin_from_its_directory(daemon: DaemonProc) -> None:
    plugins = {p["name"]: p for p in daemon.client().get("/v1/plugins")["data"]}
    info = plugins["textstats"]
    assert info["status"] == "active", info
    assert info["source"] == f"path:{PLUGIN_DIR}"
    assert info["version"] == "0.1.0"
    operators = {op["name"]: op for op in daemon.client().get("/v1/tiles/operators")["data"]}
    assert operators["textstats.wordfreq"]["owner"] == "textstats"
    assert operators["textstats.wordfreq"]["image"] == "ploinky/python"


def test_textstats_task_counts_a_file_and_inline_text(daemon: DaemonProc, texts: Path) -> None:
    daemon.drop("poem", {"kind": "textstats", "input": {"path": str(texts / "poem.txt"), "top": 2}})
    daemon.drop(
        "latin",
        {
            "kind": "textstats",
            "input": {"path": str(texts / "latin1.txt"), "encoding": "latin-1", "top": 1},
        },
    )
    daemon.drop("inline", {"kind": "textstats", "input": {"text": "b a b", "ignore": ["b"]}})
    records = {name: _record(daemon, name) for name in ("poem", "latin", "inline")}
    poem = records["poem"]
    assert poem["status"] == "succeeded", poem
    assert poem["kind"] == "textstats"
    assert poem["output"] == {
        "source": {"path": str(texts / "poem.txt"), "bytes": len(POEM.encode())},
        "lines": 4,
        "words": 19,
        "chars": len(POEM),
        "unique_words": 11,
        "top": [{"word": "the", "count": 5}, {"word": "dog", "count": 3}],
    }
    assert records["latin"]["output"]["top"] == [{"word": "caf\u00e9", "count": 2}]
    inline = records["inline"]["output"]
    assert inline["source"] == {"text": True}
    assert (inline["words"], inline["top"]) == (3, [{"word": "a", "count": 1}])


@pytest.mark.parametrize(
    ("task_input", "code", "words"),
    [
        ({"path": "{texts}/missing.txt"}, "FILE_NOT_FOUND", "missing.txt does not exist"),
        ({"path": "/etc/hostname"}, "FILE_NOT_ALLOWED", "outside the directories"),
        ({"path": "{texts}/latin1.txt"}, "BAD_ENCODING", "not valid utf-8"),
        ({"path": "{texts}/poem.txt", "text": "x"}, "INVALID_INPUT", "exactly one"),
        ({"text": "x", "top": "3"}, "INVALID_INPUT", "top"),
    ],
    ids=["missing", "outside-roots", "bad-encoding", "two-sources", "bad-top"],
)
def test_bad_input_gets_one_clear_error_record(
    daemon: DaemonProc, texts: Path, task_input: dict[str, Any], code: str, words: str
) -> None:
    body = {k: v.replace("{texts}", str(texts)) for k, v in task_input.items()}
    task_id = f"bad-{code.lower()}-{uuid.uuid4().hex[:6]}"
    daemon.drop(task_id, {"kind": "textstats", "max_attempts": 3, "input": body})
    record = _record(daemon, task_id)
    assert record["status"] == "failed", record
    assert record["attempts"] == 1, "bad input must not be retried"
    assert record["error"]["code"] == code, record["error"]
    assert words in record["error"]["message"], record["error"]
    assert record["task"]["input"] == body


@pytest.fixture(params=["docker", "process"])
def tiles_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaemonProc]:
    if request.param == "docker":
        from tests.docker_env import python_image

        python_image()  # the engine runs and "ploinky/python" resolves to its built tag
    d = _start(tmp_path, _make_texts(tmp_path / "texts"), request.param)
    yield d
    try:
        _stop(d)
    finally:
        if request.param == "docker":
            from tests.docker_env import remove_node_containers

            remove_node_containers(d.node)


def test_wordfreq_operator_in_a_pipeline_and_its_errors(tiles_daemon: DaemonProc) -> None:
    tiles_daemon.drop(
        "words",
        {
            "kind": "pipeline",
            "input": {
                "data": [POEM, "the end"],
                "pipeline": [
                    {"op": "textstats.wordfreq", "params": {"top": 3, "ignore": ["a"]}},
                    {"op": "map", "params": {"expr": "x['word'] + '=' + str(x['count'])"}},
                ],
            },
        },
    )
    record = tiles_daemon.wait_records(1, timeout=120)["words"]
    assert record["status"] == "succeeded", record
    assert record["output"] == ["the=6", "dog=3", "cat=2"]
    # Different modules, so the plugin's stage and the built-in one are two round trips.
    assert record["notes"]["tiles"]["calls"] == 2
    runner = tiles_daemon.client().get("/v1/tiles")["runner"]["name"]
    assert record["notes"]["tiles"]["sandboxed"] is (runner == "docker")

    # Checked by the container's own code: the daemon cannot know the shape of data in advance.
    tiles_daemon.drop(
        "not-text",
        {"kind": "tile", "max_attempts": 3, "input": {"op": "textstats.wordfreq", "data": 42}},
    )
    # Checked by the daemon against the params model, before any round trip.
    tiles_daemon.drop(
        "bad-params",
        {
            "kind": "tile",
            "input": {"op": "textstats.wordfreq", "params": {"top": 0.5}, "data": "x"},
        },
    )
    records = tiles_daemon.wait_records(3, timeout=120)
    not_text = records["not-text"]
    assert not_text["status"] == "failed" and not_text["attempts"] == 1, not_text
    assert not_text["error"]["code"] == "BAD_INPUT", not_text["error"]
    assert "needs a string or a list of strings" in not_text["error"]["message"]
    bad_params = records["bad-params"]["error"]
    assert bad_params["code"] == "INVALID_PIPELINE", bad_params
    assert "params.top" in bad_params["message"], bad_params

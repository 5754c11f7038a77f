"""The ``textstats`` task kind: line, word and character counts and the top words of a text
file or of inline text.

The counting runs on a worker thread (``asyncio.to_thread``) so the daemon's loop keeps its
heartbeats; a cancelled or timed-out task sets a flag the thread polls, so it stops reading
soon after the record is written.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading
from typing import Any

from ploinky_textstats.files import allowed_roots, open_text_source
from ploinky_textstats.params import TextstatsInput
from ploinky_textstats.tile_ops.textstats_words import Stopped, TextCounter
from ploinkyd.errors import TaskError, TaskFailed
from ploinkyd.kinds import TaskContext, TaskKind

NAME = "textstats"


def textstats_kind() -> TaskKind:
    return TaskKind(
        NAME,
        run_textstats,
        input_model=TextstatsInput,
        description="lines, words, chars and top words of a text file or inline text",
    )


async def run_textstats(ctx: TaskContext, data: TextstatsInput) -> dict[str, Any]:
    stop = threading.Event()
    try:
        return await asyncio.to_thread(count, data, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


def count(data: TextstatsInput, stop: threading.Event | None = None) -> dict[str, Any]:
    """The output of one task; blocking. Raises ``TaskError`` for input a person must fix."""
    counter = TextCounter(data.word_options())
    if data.text is not None:
        counter.feed_text(data.text)
        return {"source": {"text": True}, **counter.summary()}
    assert data.path is not None  # the input model requires path or text
    size = _count_file(counter, data.path, data.encoding, stop)
    return {"source": {"path": data.path, "bytes": size}, **counter.summary()}


def _count_file(
    counter: TextCounter, path: str, encoding: str, stop: threading.Event | None
) -> int:
    raw, size = open_text_source(path, allowed_roots(os.environ))
    # newline="": lines end at \n, \r\n or \r and keep their endings, as for inline text.
    with io.TextIOWrapper(raw, encoding=encoding, errors="strict", newline="") as text:
        try:
            counter.feed_lines(text, stop.is_set if stop is not None else None)
        except Stopped:
            raise TaskFailed("stopped", code="CANCELLED", retryable=False) from None
        except UnicodeDecodeError as exc:
            # The failed chunk starts inside the first line not yet counted.
            line = counter.lines + 1 + exc.object[: exc.start].count(b"\n")
            raise TaskError(
                f"{path} is not valid {encoding}: {exc.reason} (byte 0x{exc.object[exc.start]:02x}"
                f" near line {line}); set input.encoding to the file's encoding",
                code="BAD_ENCODING",
                details={"path": path, "encoding": encoding, "line": line},
            ) from None
        except OSError as exc:
            raise TaskFailed(
                f"reading {path} failed: {exc.strerror or exc}",
                code="READ_FAILED",
                details={"path": path, "errno": exc.errno},
            ) from None
    return size

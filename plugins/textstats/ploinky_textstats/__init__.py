"""textstats: a task kind and a tile operator that count words.

- task kind ``textstats``: lines, words, chars and top words of a text file or inline text;
- tile operator ``textstats.wordfreq``: the top-N word frequencies of its input text.

Both use one definition of a word (``tile_ops/textstats_words.py``). See README.md.
"""

from __future__ import annotations

from ploinky_textstats.kind import textstats_kind
from ploinky_textstats.tile_operator import wordfreq_operator
from ploinkyd.hookspecs import hookimpl
from ploinkyd.kinds import TaskKind
from ploinkyd.tiles.model import OperatorSpec


@hookimpl
def ploinkyd_task_kinds() -> list[TaskKind]:
    return [textstats_kind()]


@hookimpl
def ploinkyd_tile_operators() -> list[OperatorSpec]:
    return [wordfreq_operator()]

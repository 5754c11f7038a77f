"""Counting words, lines and characters: the one definition both the ``textstats`` task kind
and the ``textstats.wordfreq`` tile operator use.

Standard library only and no package-relative imports: this directory is also mounted into
tile containers, where this file is the top-level module ``textstats_words``.

Definitions (the README repeats them for producers):

- a *word* is a run of letters and digits, with single apostrophes inside it
  (``don't``, ``l'eau``); underscores and other punctuation separate words;
- a *line* ends at ``\\n``, ``\\r\\n`` or ``\\r``; a last line without an ending still counts;
- *chars* are Unicode code points, line endings included.
"""

from __future__ import annotations

import heapq
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Part of the operator's cache key: bump when the output for the same input may change.
VERSION = "1"

MAX_TOP = 1000
MAX_MIN_LENGTH = 100
MAX_IGNORE = 10_000

_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
# How often a long count looks at its stop flag: rarely enough to cost nothing.
_STOP_EVERY_LINES = 4096


@dataclass(frozen=True)
class WordOptions:
    """Which words make the top list. ``ignore`` holds words as they are compared (lowered
    when ``lowercase``)."""

    top: int = 10
    min_length: int = 1
    lowercase: bool = True
    ignore: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls, top: int = 10, min_length: int = 1, lowercase: bool = True, ignore: Iterable[str] = ()
    ) -> WordOptions:
        words = frozenset(w.lower() if lowercase else w for w in ignore)
        return cls(top=top, min_length=min_length, lowercase=lowercase, ignore=words)


class Stopped(Exception):
    """The caller asked a running count to stop (its task was cancelled or timed out)."""


class TextCounter:
    """Counts fed line by line, so a file is never held in memory whole."""

    def __init__(self, options: WordOptions) -> None:
        self.options = options
        self.lines = 0
        self.words = 0
        self.chars = 0
        self._freq: Counter[str] = Counter()

    def feed_lines(self, lines: Iterable[str], stop: Callable[[], bool] | None = None) -> None:
        """Count ``lines``, each a whole line with its ending, as ``io`` iteration gives them.

        A word never spans two lines, so line-by-line feeding counts as the whole text would.
        ``stop`` is polled now and then; when it returns true, :class:`Stopped` is raised.
        """
        lowercase = self.options.lowercase
        freq = self._freq
        for number, line in enumerate(lines, start=1):
            if stop is not None and number % _STOP_EVERY_LINES == 0 and stop():
                raise Stopped
            self.lines += 1
            self.chars += len(line)
            found = _WORD.findall(line.lower() if lowercase else line)
            self.words += len(found)
            freq.update(found)

    def feed_text(self, text: str) -> None:
        # newline="" keeps \r\n as two chars and still splits lines at \n, \r\n and \r.
        self.feed_lines(io.StringIO(text, newline=""))

    def top_words(self) -> list[dict[str, Any]]:
        """The ``top`` most frequent words, most frequent first, ties in alphabetical order."""
        options = self.options
        candidates = (
            (word, count)
            for word, count in self._freq.items()
            if len(word) >= options.min_length and word not in options.ignore
        )
        best = heapq.nsmallest(options.top, candidates, key=lambda wc: (-wc[1], wc[0]))
        return [{"word": word, "count": count} for word, count in best]

    def summary(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "words": self.words,
            "chars": self.chars,
            "unique_words": len(self._freq),
            "top": self.top_words(),
        }


def options_from_params(params: Mapping[str, Any]) -> WordOptions:
    """Check operator params the way the daemon's pydantic model does; ``ValueError`` says
    what is wrong. The container cannot import pydantic, and a request may come from anyone
    who speaks the tile protocol, so the check is repeated here."""
    allowed = ("top", "min_length", "lowercase", "ignore")
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown param(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")
    top = _int_param(params, "top", 10, 0, MAX_TOP)
    min_length = _int_param(params, "min_length", 1, 1, MAX_MIN_LENGTH)
    lowercase = params.get("lowercase", True)
    if not isinstance(lowercase, bool):
        raise ValueError(f"param 'lowercase' must be true or false, got {lowercase!r}")
    ignore = params.get("ignore", [])
    if (
        not isinstance(ignore, list)
        or len(ignore) > MAX_IGNORE
        or not all(isinstance(w, str) for w in ignore)
    ):
        raise ValueError(f"param 'ignore' must be a list of at most {MAX_IGNORE} strings")
    return WordOptions.build(top, min_length, lowercase, ignore)


def _int_param(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"param {name!r} must be an integer from {low} to {high}, got {value!r}")
    return value

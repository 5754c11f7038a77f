"""The pydantic models at the plugin's boundaries: operator params and task input.

Their bounds come from ``textstats_words`` so the daemon's check and the container's check
(which cannot use pydantic) agree.
"""

from __future__ import annotations

import io
import os

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ploinky_textstats.tile_ops.textstats_words import (
    MAX_IGNORE,
    MAX_MIN_LENGTH,
    MAX_TOP,
    WordOptions,
)


class WordfreqParams(BaseModel):
    """Params of ``textstats.wordfreq``; also the word options of a ``textstats`` task."""

    # Strict like the built-in operators' params: "yes" is not a boolean, "5" not a number.
    model_config = ConfigDict(extra="forbid", strict=True)

    top: int = Field(10, ge=0, le=MAX_TOP, description="how many of the most frequent words")
    min_length: int = Field(
        1, ge=1, le=MAX_MIN_LENGTH, description="shorter words stay out of the top list"
    )
    lowercase: bool = Field(True, description="count 'The' and 'the' as one word")
    ignore: list[str] = Field(
        default_factory=list, max_length=MAX_IGNORE, description="words left out of the top list"
    )

    def word_options(self) -> WordOptions:
        return WordOptions.build(self.top, self.min_length, self.lowercase, self.ignore)


class TextstatsInput(WordfreqParams):
    """``{"path": "/abs/file.txt"}`` or ``{"text": "..."}``, plus the word options."""

    path: str | None = Field(None, min_length=1, description="absolute path of a text file")
    text: str | None = Field(None, description="the text itself")
    encoding: str = Field("utf-8", min_length=1, description="how the file is encoded")

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not os.path.isabs(value):
            raise ValueError(f"must be an absolute path, got {value!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            # The file is read through TextIOWrapper, which also refuses codecs that are not
            # text encodings (rot13, zlib): ask it.
            io.TextIOWrapper(io.BytesIO(), encoding=value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}; try 'utf-8' or 'latin-1'") from None
        return value

    @model_validator(mode="after")
    def _one_source(self) -> TextstatsInput:
        if (self.path is None) == (self.text is None):
            raise ValueError("give exactly one of 'path' (a text file) and 'text' (inline text)")
        return self

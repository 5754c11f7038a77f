"""Task files (``parse_task``): a task, or a ``TaskError`` that names what is wrong and can
be recorded; a parsed task survives its record and a retry's rewrite.

    .venv/bin/python fuzz/fuzz_task.py -max_total_time=60 [CORPUS_DIR...]
"""

from __future__ import annotations

import atheris
from _harness import INSTRUMENT, main

with atheris.instrument_imports(include=INSTRUMENT):
    from tests.test_fuzz import check_task


def one_input(data: bytes) -> None:
    check_task(data)


if __name__ == "__main__":
    main(one_input)

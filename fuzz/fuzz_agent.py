"""``agent.toml`` (``load_agent`` and what the agent manager does next): a manifest, or a
``ConfigError`` naming the file and the key.

    .venv/bin/python fuzz/fuzz_agent.py -max_total_time=60 [CORPUS_DIR...]
"""

from __future__ import annotations

import atheris
from _harness import INSTRUMENT, main, scratch

with atheris.instrument_imports(include=INSTRUMENT):
    from tests.test_fuzz import check_agent

ROOT = scratch()


def one_input(data: bytes) -> None:
    check_agent(ROOT, data)


if __name__ == "__main__":
    main(one_input)

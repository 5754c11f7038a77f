"""Config files (``load_config``): TOML, or JSON when the first byte is odd; a loaded config,
or a ``ConfigError`` naming the file, the key and the line.

    .venv/bin/python fuzz/fuzz_config.py -max_total_time=60 [CORPUS_DIR...]
"""

from __future__ import annotations

import atheris
from _harness import INSTRUMENT, main, scratch

with atheris.instrument_imports(include=INSTRUMENT):
    from tests.test_fuzz import check_config

ROOT = scratch()
TOML, JSON = ROOT / "config.toml", ROOT / "config.json"


def one_input(data: bytes) -> None:
    if data[:1] and data[0] & 1 and data[:1] != b"[":  # "[" opens a TOML table as well
        check_config(JSON, data)
    else:
        check_config(TOML, data)


if __name__ == "__main__":
    main(one_input)

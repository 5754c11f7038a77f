"""``ploinky-plugin.toml`` (``read_manifest``, then the compatibility and requirement checks
of an install): a manifest, or a ``PluginError`` naming the file and the key.

    .venv/bin/python fuzz/fuzz_plugin_manifest.py -max_total_time=60 [CORPUS_DIR...]
"""

from __future__ import annotations

import atheris
from _harness import INSTRUMENT, main, scratch

with atheris.instrument_imports(include=INSTRUMENT):
    from tests.test_fuzz import check_plugin

ROOT = scratch()


def one_input(data: bytes) -> None:
    check_plugin(ROOT, data)


if __name__ == "__main__":
    main(one_input)

"""Control-API request bodies, parsed as the middleware parses them: every body model of the
endpoint tables, the task submit and ``explain``. An input is ``ENDPOINT\\nBODY`` (as in
``seeds/api_body/``); a first line that names no endpoint picks one by its hash. The answer
must be a model, or a ``UserError`` answered as 4xx that names the field.

    .venv/bin/python fuzz/fuzz_api_body.py -max_total_time=60 [CORPUS_DIR...]
"""

from __future__ import annotations

import zlib

import atheris
from _harness import INSTRUMENT, main

with atheris.instrument_imports(include=INSTRUMENT):
    from tests.test_fuzz import BODY_MODELS, check_body

ENDPOINTS = [*BODY_MODELS, ("submit", None), ("explain", None)]
BY_NAME = {name.encode(): (name, model) for name, model in ENDPOINTS}


def one_input(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    endpoint, model = BY_NAME.get(head) or ENDPOINTS[zlib.crc32(head) % len(ENDPOINTS)]
    check_body(endpoint, model, body)


if __name__ == "__main__":
    main(one_input)

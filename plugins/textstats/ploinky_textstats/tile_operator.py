"""The ``textstats.wordfreq`` tile operator as the daemon sees it: name, version, params model,
and where its code lives (``tile_ops/``, mounted read-only into the container)."""

from __future__ import annotations

from pathlib import Path

from ploinky_textstats.params import WordfreqParams
from ploinky_textstats.tile_ops.textstats_words import VERSION
from ploinkyd.tiles.model import CostHints, Mount, OperatorSpec

NAME = "textstats.wordfreq"
TILE_OPS = Path(__file__).resolve().parent / "tile_ops"
# Outside /opt/ploinky, which holds the runtime and the agents' directories.
MOUNT_TARGET = "/opt/ploinky-plugins/textstats"


def wordfreq_operator() -> OperatorSpec:
    return OperatorSpec(
        name=NAME,
        version=VERSION,
        params_model=WordfreqParams,
        image=None,  # the configured tiles.image, a Python image as for the built-ins
        modules=("textstats_ops",),
        mounts=(Mount(TILE_OPS, MOUNT_TARGET),),
        # Output is a short list whatever the text's size.
        cost=CostHints(cpu_us_per_item=1.5, memory_mb=32.0, size_ratio=0.01),
        description="the top-N word frequencies of a text (or a list of texts)",
        owner="textstats",
    )

"""Code that runs inside tile containers.

This directory is bind-mounted read-only into the container and put on the tile runtime's
module path, so its modules are imported there as top-level modules (``textstats_ops``,
``textstats_words``) next to the runtime, with the standard library only. The daemon side
imports ``textstats_words`` through this package.
"""

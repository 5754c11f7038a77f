"""Test support that plugin authors can reuse: the storage backend contract suite.

Importing these modules needs pytest (the ``test`` extra); ploinkyd itself never imports them.
"""

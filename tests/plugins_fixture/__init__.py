"""Plugins for the tests, registered through the real plugin manager.

``testkinds`` is a well-behaved plugin whose task kinds (``sleep``, ``fail``, ``flaky``) the
queue tests reuse; the other modules are broken on purpose, each in one way.
"""

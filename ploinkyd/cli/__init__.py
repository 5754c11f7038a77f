"""The ``ploinkyd`` command line."""

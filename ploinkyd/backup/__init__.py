"""Backups: a deduplicated, compressed, encrypted repository on pluggable storage.

``ops`` is the entry point shared by the CLI and the task kinds; ``docs/backup-format.md``
describes what lands in the repository.
"""

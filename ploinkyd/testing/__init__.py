"""Test support that plugin authors can reuse: the storage backend contract suite
(``backend_contract``, needs pytest), a ``ploinkyd backup`` CLI round trip with tree
comparison (``backup_cli``) and the storage benchmark loops (``storage_bench``).

ploinkyd itself never imports these modules.
"""

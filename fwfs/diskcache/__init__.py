"""The disk cache (`--disk-cache`): file blocks on local disk behind the memory cache.

``cache.py``: ``DiskCache``, loading, the writer thread and eviction; ``segment.py``: the
file format (a megabyte of a version per file, each block checked); ``directory.py``: the
private directory, its listing, `fwfs cache stats|clear`.

Imports nothing from fwfs but ``errors``.
"""

from fwfs.diskcache.cache import DiskCache, DiskStats
from fwfs.diskcache.directory import Usage, cache_command, clear, prepare_dir, usage
from fwfs.diskcache.segment import footprint

__all__ = [
    "DiskCache",
    "DiskStats",
    "Usage",
    "cache_command",
    "clear",
    "footprint",
    "prepare_dir",
    "usage",
]

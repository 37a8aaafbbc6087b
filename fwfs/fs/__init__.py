"""The filesystem model: names, listings, attributes and reads, in domain terms (no FUSE)."""

from fwfs.fs.core import FlywheelFS
from fwfs.fs.nodes import Attr, Dir, File, Node
from fwfs.fs.writes import check_spool, running_uploads

# What FlywheelFS's constructor takes, for the wiring (which does not import fwfs.uploads).
from fwfs.uploads import RetryPolicy

__all__ = [
    "Attr",
    "Dir",
    "File",
    "FlywheelFS",
    "Node",
    "RetryPolicy",
    "check_spool",
    "running_uploads",
]

"""The filesystem model: names, listings, attributes and reads, in domain terms (no FUSE)."""

from fwfs.fs.core import FlywheelFS
from fwfs.fs.nodes import Attr, Dir, File, Node

__all__ = ["Attr", "Dir", "File", "FlywheelFS", "Node"]

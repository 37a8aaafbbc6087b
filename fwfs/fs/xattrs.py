"""The `user.flywheel.*` extended attributes of the model's entries (docs/SEMANTICS.md,
"Extended attributes"): what the listing gave, and the fields it lacks (or may have cut)
read from the entry's own document on `getxattr`, once per listing TTL (`Tree.details`).
"""

from __future__ import annotations

import json
from typing import Any

from fwfs.errors import NotFound
from fwfs.fs.nodes import ArchiveDir, ArchiveFile, BidsDir, BidsFile, Dir, File, Node, ViewNode
from fwfs.fs.tree import Tree
from fwfs.fs.writes import Pending

PREFIX = "user.flywheel."
# File fields shown as extended attributes; dicts and lists as JSON.
_FILE_XATTRS: tuple[str, ...] = (
    "file_id",
    "version",
    "hash",
    "mimetype",
    "type",
    "modality",
    "classification",
    "tags",
    "info",
    "size",
    "zip_member_count",
)
_CONTAINER_XATTRS: tuple[str, ...] = ("label", "tags", "info")


# Fields a site's listing may leave out, fetched on getxattr: a real resolver strips `info`
# and `tags`; a group known only through its projects comes without its label.
_LAZY_FILE_FIELDS: tuple[str, ...] = ("info", "tags")
_LAZY_CONTAINER_FIELDS: tuple[str, ...] = ("info", "tags", "label")


def _lazy_fields(node: Node | Pending | ViewNode, tree: Tree) -> list[str]:
    """The fields of ``node`` its listing lacks, or may have given only in part (``info``
    cut down to ``BIDS``, see ``Tree.info_trimmed``): read from the entry's own document."""
    if isinstance(node, File):
        raw, fields = node.info.raw, _LAZY_FILE_FIELDS
    elif isinstance(node, Dir) and node.container is not None:
        raw, fields = node.container.raw, _LAZY_CONTAINER_FIELDS
    else:
        return []
    return [f for f in fields if f not in raw or (f == "info" and tree.info_trimmed(raw))]


def _xattr_value(value: Any) -> bytes | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.encode()


def names(node: Node | Pending | ViewNode, tree: Tree) -> list[str]:
    """Every attribute of ``node``, with no request: those its listing lacks are named
    now and fetched only when asked for (``value``)."""
    lazy = [PREFIX + f for f in _lazy_fields(node, tree)]
    return sorted({*_listed(node), *lazy})


def value(node: Node | Pending | ViewNode, name: str, tree: Tree) -> bytes:
    """The attribute ``name`` (``PREFIX`` + field) of ``node``; NotFound if it has none."""
    field = name[len(PREFIX) :]
    if field in _lazy_fields(node, tree):
        assert isinstance(node, File | Dir)
        found = _xattr_value(tree.details(node, field).get(field))
    else:
        found = _listed(node).get(name)
    if found is None:
        raise NotFound(f"no attribute {name}")
    return found


def _listed(node: Node | Pending | ViewNode) -> dict[str, bytes]:
    """The attributes the listing's JSON of ``node`` holds."""
    out: dict[str, bytes] = {}
    if isinstance(node, Pending | BidsDir | BidsFile):
        return out
    raw: dict[str, Any]
    if isinstance(node, ArchiveFile | ArchiveDir):
        out[PREFIX + "archive_file_id"] = node.archive.file_id.encode()
        out[PREFIX + "archive"] = node.archive.name.encode()
        if isinstance(node, ArchiveFile):
            out[PREFIX + "member"] = node.member.path.encode()
        return out
    if isinstance(node, File):
        raw, fields = node.info.raw, _FILE_XATTRS
        out[PREFIX + "id"] = node.info.file_id.encode()
        out[PREFIX + "container_type"] = b"file"
        out[PREFIX + "name"] = node.info.name.encode()
    elif node.container is not None:
        raw, fields = node.container.raw, _CONTAINER_XATTRS
        out[PREFIX + "id"] = node.container.id.encode()
        out[PREFIX + "container_type"] = node.container.kind.encode()
    else:
        return out
    for field in fields:
        text = _xattr_value(raw.get(field))
        if text is not None:
            out[PREFIX + field] = text
    return out

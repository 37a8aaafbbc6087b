"""Flywheel objects as the filesystem needs them, parsed from the API's JSON. No I/O.

The JSON stays available (`raw`) for extended attributes; everything the filesystem decides
on is a typed field here, so a renamed API field is fixed in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

Kind = Literal["group", "project", "subject", "session", "acquisition", "analysis"]
KINDS: tuple[Kind, ...] = ("group", "project", "subject", "session", "acquisition", "analysis")
# The container type each level lists as its child directories.
CHILD_KIND: dict[str, Kind] = {
    "group": "project",
    "project": "subject",
    "subject": "session",
    "session": "acquisition",
}

Json = dict[str, Any]


def parse_time(value: Any) -> float:
    """Seconds since the epoch of an ISO-8601 string; 0.0 when absent or unparsable."""
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.strip().replace("Z", "+00:00")
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return 0.0
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


@dataclass(frozen=True)
class ContainerRef:
    kind: Kind
    id: str


@dataclass(frozen=True)
class Container:
    ref: ContainerRef
    label: str
    created: float
    modified: float
    # Ids of the ancestors, by kind: how the resolver path to this container is built.
    parents: Mapping[str, str]
    raw: Json = field(repr=False, compare=False)

    @property
    def kind(self) -> Kind:
        return self.ref.kind

    @property
    def id(self) -> str:
        return self.ref.id


@dataclass(frozen=True)
class FileInfo:
    parent: ContainerRef
    name: str
    file_id: str
    version: int
    size: int
    created: float
    modified: float
    hash: str | None
    # "files" for a container's files and an analysis' outputs, "inputs" for analysis inputs.
    file_group: str
    zip_member_count: int | None
    raw: Json = field(repr=False, compare=False)

    @property
    def cache_key(self) -> tuple[str, int]:
        """What identifies these bytes: a new version is a new key, so never stale."""
        return (self.file_id, self.version)


def container_type(doc: Mapping[str, Any]) -> str | None:
    value = doc.get("container_type") or doc.get("node_type")
    return value.lower() if isinstance(value, str) else None


def parse_container(doc: Mapping[str, Any], kind: Kind | None = None) -> Container:
    ctype = container_type(doc) or kind
    if ctype not in KINDS:
        raise ValueError(f"not a container: container_type={ctype!r}")
    cid = doc.get("_id") or doc.get("id")
    if not isinstance(cid, str) or not cid:
        raise ValueError("container without an _id")
    label = doc.get("label")
    if not isinstance(label, str):
        label = cid if ctype == "group" else ""
    parents = doc.get("parents") if isinstance(doc.get("parents"), Mapping) else {}
    return Container(
        ref=ContainerRef(ctype, cid),
        label=label,
        created=parse_time(doc.get("created")),
        modified=parse_time(doc.get("modified")) or parse_time(doc.get("created")),
        parents={k: v for k, v in (parents or {}).items() if isinstance(v, str)},
        raw=dict(doc),
    )


def parse_file(doc: Mapping[str, Any], parent: ContainerRef) -> FileInfo:
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("file without a name")
    file_id = doc.get("file_id") or doc.get("_id") or ""
    version = doc.get("version")
    size = doc.get("size")
    zcount = doc.get("zip_member_count")
    return FileInfo(
        parent=parent,
        name=name,
        file_id=str(file_id),
        version=version if isinstance(version, int) else 1,
        size=size if isinstance(size, int) and size >= 0 else 0,
        created=parse_time(doc.get("created")),
        modified=parse_time(doc.get("modified")) or parse_time(doc.get("created")),
        hash=doc.get("hash") if isinstance(doc.get("hash"), str) else None,
        file_group=str(doc.get("file_group") or "files"),
        zip_member_count=zcount if isinstance(zcount, int) else None,
        raw=dict(doc),
    )


def resolver_path(c: Container) -> list[str]:
    """The `/resolve` path of a container by ids, so renames elsewhere cannot misdirect it."""
    if c.kind == "group":
        return [c.id]
    path = [c.parents.get("group", "")]
    for kind in ("project", "subject", "session", "acquisition"):
        if kind == c.kind:
            break
        pid = c.parents.get(kind)
        if pid:
            path.append(f"<id:{pid}>")
    if c.kind == "analysis":
        # An analysis' parents include the container it hangs on, so the loop above
        # walked all the way down to it.
        return [*path, "analyses", f"<id:{c.id}>"]
    return [*path, f"<id:{c.id}>"]


def write_access(container: Container, user_id: str | None) -> bool | None:
    """Whether ``user_id`` may write to ``container``, from its ``permissions`` list:
    False for a read-only role, True for a writing one, None when the list does not say
    (role ids only, or the user not listed, as for site admins): the site then decides."""
    perms = container.raw.get("permissions")
    if user_id is None or not isinstance(perms, list):
        return None
    for perm in perms:
        if not isinstance(perm, dict) or perm.get("_id") != user_id:
            continue
        access = perm.get("access")
        if access == "ro":
            return False
        if access in ("rw", "admin"):
            return True
    return None

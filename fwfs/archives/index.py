"""The member tree of one zip archive, built from its central directory (read by
``central``) or from the API's zip listing. Pure: no I/O.

The listing (``GET …/files/<name>?info=true``) is ``{"comment": str, "members": [{"path",
"size", "timestamp", "comment"}, …]}`` in central-directory order, with ``path`` as
``ZipInfo.filename`` (directory entries end with ``/``). Member paths are untrusted: they
may be absolute, hold ``..``, ``.`` or empty components, repeat, or name a file and a
directory alike. The tree never lets a name leave the archive's directory:

* a leading ``/`` and every empty or ``.`` component are dropped; ``..`` stays a component
  and is shown escaped (``．．``), so it names an entry instead of a parent;
* a backslash is an ordinary character (zipfile already turned Windows separators into
  ``/`` where it could tell);
* directories come from the paths, so ``a/b/c.dcm`` alone gives ``a`` and ``a/b``;
* each directory's entries are named by :func:`fwfs.paths.assign_names`, the rules of the
  rest of the mount: escaping, suffixes for collisions (a file and a directory of one name,
  two members with one path, names that escape alike) and the 255-byte limit.

Entries keep the listing's order (directories where their first member appears), so a
program that walks a directory in ``readdir`` order reads the archive front to back.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from fwfs.errors import NotADirectory, NotFound, RemoteError
from fwfs.models import parse_time
from fwfs.paths import RawEntry, assign_names


@dataclass(frozen=True, slots=True)
class MemberFile:
    """One file member. ``path`` is the raw member path: what ``?member=`` takes.

    ``index`` is the member's position in the listing (and so in the central directory).
    ``fetchable`` is False when another member has the same raw path: the server picks one
    of them for ``?member=``, so those bytes are read from the archive itself instead.
    """

    name: str
    relpath: str
    path: str
    index: int
    size: int
    mtime: float
    comment: str
    fetchable: bool


@dataclass(frozen=True, slots=True)
class MemberDir:
    """A directory of the archive, listed or implied by member paths.

    ``path`` is the raw path of its directory entry, None when only implied. ``mtime`` is
    that entry's time, or else the newest time of anything below it.
    """

    name: str
    relpath: str
    path: str | None
    mtime: float
    children: Mapping[str, Member]


Member = MemberDir | MemberFile


class _Dir:
    """A directory while the tree is built: children by raw name, in first-seen order."""

    __slots__ = ("dirs", "files", "mtime", "name", "order", "path", "relpath")

    def __init__(self) -> None:
        self.dirs: dict[str, _Dir] = {}
        self.files: list[tuple[str, int]] = []  # (raw name, listing index)
        # Subdirectories, and files by position in `files`, in the order they first appeared.
        self.order: list[_Dir | int] = []
        self.path: str | None = None
        self.mtime: float | None = None
        self.name = ""
        self.relpath = ""

    def child(self, raw: str) -> _Dir:
        sub = self.dirs.get(raw)
        if sub is None:
            sub = self.dirs[raw] = _Dir()
            self.order.append(sub)
        return sub


# (path, size, mtime, comment) of one listed member. A tuple: the listing can hold tens of
# thousands of members and this is built for each of them.
_Record = tuple[str, int, float, str]


class ZipIndex:
    """The member tree of one archive version. Immutable once built; share it freely."""

    def __init__(self, root: MemberDir, files: tuple[MemberFile, ...], comment: str) -> None:
        self.root = root
        self.files = files
        """Every file member, in listing order."""
        self.comment = comment
        self.file_count = len(files)
        self.total_size = sum(f.size for f in files)

    @classmethod
    def from_listing(cls, doc: Any) -> ZipIndex:
        """The tree of the listing ``doc``; RemoteError when it is not a listing."""
        records = _records(doc)
        comment = doc.get("comment")
        return _build(records, comment if isinstance(comment, str) else "")

    @classmethod
    def from_directory(cls, infos: Sequence[zipfile.ZipInfo], comment: bytes) -> ZipIndex:
        """The tree of a central directory read from the archive itself.

        The same records the site's listing gives (its server builds them with zipfile
        too): names as zipfile decodes them, comments as UTF-8, times as UTC.
        """
        times: dict[tuple[int, ...], float] = {}
        records: list[_Record] = []
        for info in infos:
            mtime = times.get(info.date_time)
            if mtime is None:
                mtime = times[info.date_time] = _dos_time(info.date_time)
            text = info.comment.decode("utf-8", "replace")
            records.append((info.filename, info.file_size, mtime, text))
        return _build(records, comment.decode("utf-8", "replace"))

    def lookup(self, relpath: str) -> Member:
        """The entry at ``relpath`` (entry names joined with ``/``; ``""`` is the root)."""
        node: Member = self.root
        for part in relpath.split("/"):
            if not part:
                continue
            if not isinstance(node, MemberDir):
                raise NotADirectory(f"not a directory on the way to {part!r}")
            child = node.children.get(part)
            if child is None:
                raise NotFound(f"no entry {part!r}")
            node = child
        return node

    def listdir(self, relpath: str) -> dict[str, Member]:
        """The entries of the directory at ``relpath``, in listing order."""
        node = self.lookup(relpath)
        if not isinstance(node, MemberDir):
            raise NotADirectory(f"not a directory: {relpath!r}")
        return dict(node.children)

    def walk(self) -> Iterator[Member]:
        """Every entry below the root, parents before children."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            for child in node.children.values():
                yield child
                if isinstance(child, MemberDir):
                    stack.append(child)


def _records(doc: Any) -> list[_Record]:
    """The listing's members, checked: the listing comes from the network."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("members"), list):
        raise RemoteError("malformed zip listing: no member list")
    times: dict[Any, float] = {}
    records: list[_Record] = []
    for item in doc["members"]:
        if not isinstance(item, Mapping) or not isinstance(item.get("path"), str):
            raise RemoteError("malformed zip listing: a member without a path")
        size = item.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RemoteError("malformed zip listing: a member without a valid size")
        stamp = item.get("timestamp")
        # Members of one archive mostly share a handful of timestamps, and parsing them
        # dominates building a large index.
        mtime = times.get(stamp) if isinstance(stamp, str) else 0.0
        if mtime is None:
            mtime = times[stamp] = parse_time(stamp)
        comment = item.get("comment")
        records.append((item["path"], size, mtime, comment if isinstance(comment, str) else ""))
    return records


def _dos_time(fields: tuple[int, ...]) -> float:
    try:
        year, month, day, hour, minute, second = fields
        return datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp()
    except (ValueError, OverflowError):
        return 0.0  # a DOS date no calendar has (month 0): unknown, as the site would say


def _build(records: list[_Record], archive_comment: str) -> ZipIndex:
    root = _Dir()
    uses: dict[str, int] = {}
    for index, (path, _, mtime, _) in enumerate(records):
        parts = [p for p in path.split("/") if p and p != "."]
        if path.endswith("/"):
            node = root
            for part in parts:
                node = node.child(part)
            if node.path is None:
                node.path, node.mtime = path, mtime
            continue
        uses[path] = uses.get(path, 0) + 1
        # A file whose path has no name left ("", ".") still has bytes to show: it becomes
        # an unnamed entry of the root, shown as "(no label)".
        name = parts.pop() if parts else ""
        node = root
        for part in parts:
            node = node.child(part)
        node.order.append(len(node.files))
        node.files.append((name, index))

    # Top-down: a directory's relpath needs the names its ancestors were given.
    preorder = [root]
    file_names: dict[int, tuple[str, str]] = {}  # listing index -> (name, relpath)
    for node in preorder:
        dir_keys = {raw: _dir_key(raw) for raw in node.dirs}
        file_keys = _file_keys(node)
        entries = [RawEntry(key, raw, False) for raw, key in dir_keys.items()]
        entries += [
            RawEntry(key, raw, True) for key, (raw, _) in zip(file_keys, node.files, strict=True)
        ]
        names = assign_names(entries)
        for raw, sub in node.dirs.items():
            sub.name = names[dir_keys[raw]]
            sub.relpath = _join(node.relpath, sub.name)
            preorder.append(sub)
        for key, (_, index) in zip(file_keys, node.files, strict=True):
            name = names[key]
            file_names[index] = (name, _join(node.relpath, name))

    files: dict[int, MemberFile] = {}
    for index, (name, relpath) in file_names.items():
        path, size, mtime, comment = records[index]
        files[index] = MemberFile(
            name=name,
            relpath=relpath,
            path=path,
            index=index,
            size=size,
            mtime=mtime,
            comment=comment,
            fetchable=uses[path] == 1,
        )

    # Bottom-up: a directory is frozen with its children, and an implied one takes its
    # time from them.
    built: dict[int, MemberDir] = {}
    for node in reversed(preorder):
        children: dict[str, Member] = {}
        newest = 0.0
        for ref in node.order:
            child = built.pop(id(ref)) if isinstance(ref, _Dir) else files[node.files[ref][1]]
            children[child.name] = child
            newest = max(newest, child.mtime)
        built[id(node)] = MemberDir(
            name=node.name,
            relpath=node.relpath,
            path=node.path,
            mtime=node.mtime if node.mtime is not None else newest,
            children=MappingProxyType(children),
        )
    return ZipIndex(built[id(root)], tuple(files[i] for i in sorted(files)), archive_comment)


def _dir_key(raw: str) -> str:
    # assign_names shows the part after the last ":" of a directory's key as its suffix: a
    # hash of the raw name keeps that short, free of "/" and the same on every machine.
    return "d:" + hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()


def _file_keys(node: _Dir) -> list[str]:
    """Keys of ``node.files`` in order: unique within the directory, stable per archive.

    Members with the same path are told apart by their rank among those members (in the
    listing, which is the fixed central-directory order of this archive version), not by
    their position in the whole listing, so their names do not depend on other members.
    """
    counts: dict[str, int] = {}
    for raw, _ in node.files:
        counts[raw] = counts.get(raw, 0) + 1
    seen: dict[str, int] = {}
    keys = []
    for raw, _ in node.files:
        if counts[raw] == 1:
            keys.append("f:" + raw)
        else:
            rank = seen[raw] = seen.get(raw, 0) + 1
            keys.append(f"g:{rank}:{raw}")
    return keys


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name

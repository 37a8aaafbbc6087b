"""Listings made from the site's answers: one `/resolve` answer becomes the listing of the
container it resolved and the listings it carries for others (its analyses, its children
without children), with every entry named by `paths.assign_names`; and back, the site path
element an entry's name most likely stands for (`site_element`).

Pure: no request, no lock. The tree decides what to keep (fs/tree.py).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, replace

from fwfs import paths
from fwfs.errors import RemoteError
from fwfs.fs.nodes import ANALYSES_DIR, Dir, File, Node
from fwfs.models import (
    CHILD_KIND,
    Container,
    FileInfo,
    Json,
    container_type,
    parse_container,
    parse_file,
)

log = logging.getLogger("fwfs.tree")

# The suffix `paths.assign_names` gives a container that lost its label to another (the
# last 8 characters of an ObjectId, or all 24): such a name is no label to resolve.
_SUFFIXED = re.compile(r" \((?:[0-9a-f]{8}|[0-9a-f]{24})\)$")

# Marks, in a file's JSON, a file whose name another file of its listing has too.
NAME_SHARED = "fwfs_name_shared"


@dataclass
class Listing:
    entries: dict[str, Node]
    fetched: float
    # The listed container as the listing call returned it (fresher than the parent's copy).
    container: Container | None = None


@dataclass
class Resolved:
    """One `/resolve` answer, as listings."""

    listing: Listing
    # Listings the answer carries for other directories, by key.
    prefilled: dict[tuple[str, ...], Listing]
    # Whether its child containers came with their files (None: it has none): a site whose
    # answers carry them lists an acquisition with its session.
    children_files: bool | None


def parse_resolved(resp: Json, asked: Container | None, now: float, request: object) -> Resolved:
    """The listing of the container `resp` resolved (`path[-1]`; `asked`, the container
    whose listing was asked by id, when the answer lacks it), fetched at `now`. `request`
    names the request in the log. RemoteError for a project whose children are sessions
    (a core that ignores the Subject-Container feature), or an answer naming no container."""
    path = resp.get("path") or []
    if path and isinstance(path[-1], dict):
        me = parse_container(path[-1], None if asked is None else asked.kind)
    elif asked is not None:
        me = asked
    else:
        raise RemoteError(f"POST /resolve {request}: the answer names no container")
    child_kind = CHILD_KIND.get(me.kind)
    children = [d for d in resp.get("children") or [] if isinstance(d, dict)]
    if me.kind == "project" and any(container_type(d) == "session" for d in children):
        # Shown as it is, the project would look empty: its subjects are not there.
        log.error(
            "POST /resolve %s: the site returned sessions as a project's children: it "
            "does not honour the Subject-Container feature; fwfs needs a core that does",
            request,
        )
        raise RemoteError("the site lists sessions, not subjects, in a project")
    containers: list[Container] = []
    analyses: list[Container] = []
    files: list[FileInfo] = []
    children_files: bool | None = None
    for doc in children:
        ctype = container_type(doc)
        try:
            if ctype == "file":
                files.append(parse_file(doc, me.ref))
            elif ctype == "analysis":
                analyses.append(parse_container(doc))
            elif ctype == child_kind:
                containers.append(parse_container(doc))
                children_files = bool(children_files) or isinstance(doc.get("files"), list)
        except ValueError as err:
            log.warning("skipping a malformed entry of %s %s: %s", me.kind, me.id, err)
    listing = Listing(entries(me, containers, files, bool(analyses)), now, me)
    prefilled: dict[tuple[str, ...], Listing] = {}
    if analyses:
        # The analyses directory is listed from this same answer: no second request.
        prefilled[Dir("analyses", me).key] = Listing(named_dirs(analyses), now)
    for x in containers:
        leaf = leaf_listing(x, now)
        if leaf is not None:
            prefilled[Dir("container", x).key] = leaf
    return Resolved(listing, prefilled, children_files)


def entries(
    me: Container, containers: list[Container], files: list[FileInfo], has_analyses: bool
) -> dict[str, Node]:
    # Ranked as the site's resolver picks: a container over a file, the oldest container
    # (the first by ObjectId) of a label; a directory's file names are unique.
    raw = [paths.RawEntry("c:" + x.id, x.label, False, rank=x.id) for x in containers]
    keyed = keyed_files(files)
    raw += [paths.RawEntry(k, f.name, True, rank="") for k, f in keyed]
    names = paths.assign_names(raw, reserved={ANALYSES_DIR})
    out: dict[str, Node] = {}
    for x in containers:
        out[names["c:" + x.id]] = Dir("container", x)
    for k, f in keyed:
        out[names[k]] = File(f)
    if has_analyses or me.raw.get("analyses"):
        out[ANALYSES_DIR] = Dir("analyses", me)
    return out


def leaf_listing(c: Container, now: float) -> Listing | None:
    """The listing of a child that holds no containers (an acquisition), when its parent's
    answer already carried its files and analyses: `ls -R` then costs one request per
    session, not one per acquisition too."""
    files_doc, analyses_doc = c.raw.get("files"), c.raw.get("analyses")
    if c.kind in CHILD_KIND or not isinstance(files_doc, list):
        return None
    if not isinstance(analyses_doc, list) or analyses_doc:
        # Unknown, or some analyses: their directory needs its own listing anyway.
        return None
    try:
        files = [parse_file(d, c.ref) for d in files_doc if isinstance(d, dict)]
    except ValueError:
        return None
    return Listing(entries(c, [], files, False), now, c)


def named_dirs(containers: list[Container]) -> dict[str, Node]:
    # Groups are shown by id (their human-readable, unique name), the rest by label.
    names = paths.assign_names(
        paths.RawEntry("c:" + c.id, c.id if c.kind == "group" else c.label, False, rank=c.id)
        for c in containers
    )
    out: dict[str, Node] = {}
    for c in containers:
        out[names["c:" + c.id]] = Dir("analysis" if c.kind == "analysis" else "container", c)
    return out


def named_files(files: list[FileInfo]) -> dict[str, Node]:
    keyed = keyed_files(files)
    names = paths.assign_names(paths.RawEntry(k, f.name, True, rank="") for k, f in keyed)
    return {names[k]: File(f) for k, f in keyed}


def keyed_files(files: list[FileInfo]) -> list[tuple[str, FileInfo]]:
    """A key per file for `paths.assign_names`: its name; or, where names repeat (an
    analysis may hold two inputs of one name, from different containers), its file id and
    name, so that listing them cannot fail. Such twins all get suffixes, and are marked:
    the site reads a file by name, and which twin it would serve is not ours to know."""
    seen = Counter(f.name for f in files)
    return [
        (f"f:{f.name}", f)
        if seen[f.name] == 1
        else (f"d:{f.file_id}:{f.name}", replace(f, raw={**f.raw, NAME_SHARED: True}))
        for f in files
    ]


def site_element(kind: str, name: str) -> str | None:
    """The site path element that names the entry `name` of a `kind`, or None when the name
    is no label (a suffixed name, `(no label)`) and so unlikely to resolve."""
    if paths.parse_id_alias(name) is not None:
        return name
    if kind == "group":
        # Groups are named by their id.
        return name if paths.could_be_group_id(name) else None
    if name in (paths.NO_LABEL, ANALYSES_DIR) or _SUFFIXED.search(name):
        return None
    return paths.unescape(name)

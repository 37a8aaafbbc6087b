"""`<group>/<project>.bids/`: a project as the BIDS dataset its curation describes.

The tree comes from fwfs/bids/rules.py (the official exporter's rules) over three answers
of the site, whatever the project's size: the project (`GET /projects/{id}`: its files with
their whole `info`), its sessions and its acquisitions (`GET /projects/{id}/sessions`,
`…/acquisitions?include_all_info=true`, paged by 250; list answers embed each container's
files). A site whose list answers lack a container's files, or trim the `info` a sidecar is
made from despite `include_all_info`, costs one `GET` of that container more: O(containers),
never a request per file. A tree is kept for the listing TTL, like a listing, and dropped
by `fwfs refresh` of the view or of a directory above its project.

A data file's bytes are its site file version's, read as any file of the mount is (same
`(file_id, version)` blocks in the memory and disk caches); made files (sidecars, an
old-way `dataset_description.json`, the error report) are bytes held in the tree.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass

from fwfs.bids import BidsTree, build
from fwfs.errors import NotADirectory, NotFound
from fwfs.fs.nodes import BidsDir, BidsFile, ViewNode
from fwfs.models import Container, Json, Kind, parse_container
from fwfs.site import SiteClient

log = logging.getLogger("fwfs.bids")

_IMAGE_EXTS = (".nii", ".nii.gz")


@dataclass(frozen=True)
class _Kept:
    tree: BidsTree
    fetched: float
    group: str | None


class BidsViews:
    """The BIDS trees by project id, each computed by one thread while others wait.

    Guarded by `self._lock`: `_trees`, `_inflight`, `_dropped`. No request is made while
    holding it."""

    def __init__(
        self,
        client: SiteClient,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        sourcedata: bool = False,
        pool: Executor | None = None,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._sourcedata = sourcedata
        self._pool = pool
        self._lock = threading.Lock()
        self._trees: dict[str, _Kept] = {}
        # Views being computed: who waits for each, and its project's group.
        self._inflight: dict[str, tuple[threading.Event, str | None]] = {}
        # Per project, when its view was last dropped: a tree fetched before is stale.
        self._dropped: dict[str, float] = {}

    # ---- the namespace ----------------------------------------------------------------

    def child(self, node: BidsDir, name: str) -> ViewNode:
        tree = self.tree(node.project)
        path = posixpath.join(node.relpath, name) if node.relpath else name
        entry = tree.files.get(path)
        if entry is not None:
            return BidsFile(node.project, entry)
        if path in tree.dirs:
            return BidsDir(node.project, path)
        raise NotFound(f"no entry {name!r} in the BIDS view")

    def listdir(self, node: BidsDir) -> dict[str, ViewNode]:
        tree = self.tree(node.project)
        names = tree.dirs.get(node.relpath)
        if names is None:
            raise NotADirectory("no longer a directory of the BIDS view")
        out: dict[str, ViewNode] = {}
        for name in names:
            path = posixpath.join(node.relpath, name) if node.relpath else name
            entry = tree.files.get(path)
            out[name] = BidsFile(node.project, entry) if entry else BidsDir(node.project, path)
        return out

    # ---- the trees --------------------------------------------------------------------

    def tree(self, project: Container) -> BidsTree:
        pid = project.id
        while True:
            with self._lock:
                kept = self._trees.get(pid)
                if kept is not None and self._fresh(pid, kept):
                    return kept.tree
                inflight = self._inflight.get(pid)
                if inflight is None:
                    event = threading.Event()
                    self._inflight[pid] = (event, project.parents.get("group"))
                    break
            inflight[0].wait()
        fetched = self._clock()
        try:
            tree = self._fetch(pid)
        except BaseException:
            with self._lock:
                del self._inflight[pid]
            event.set()
            raise
        with self._lock:
            # Kept before the waiters wake, so they find it.
            self._trees[pid] = _Kept(tree, fetched, project.parents.get("group"))
            del self._inflight[pid]
        event.set()
        return tree

    def _fresh(self, pid: str, kept: _Kept) -> bool:
        dropped = self._dropped.get(pid)
        if dropped is not None and kept.fetched <= dropped:
            return False
        return self._clock() - kept.fetched < self._ttl

    def forget(self, which: Callable[[str, str | None], bool]) -> int:
        """`fwfs refresh`: drop the views whose (project id, group id) `which` picks, a view
        being computed included (it is computed again on next use). How many were."""
        now = self._clock()
        with self._lock:
            gone = [pid for pid, kept in self._trees.items() if which(pid, kept.group)]
            for pid in gone:
                del self._trees[pid]
            gone += [pid for pid, (_, g) in self._inflight.items() if which(pid, g)]
            for pid in gone:
                self._dropped[pid] = now
        return len(gone)

    def _fetch(self, pid: str) -> BidsTree:
        def sessions() -> list[Json]:
            return self._client.list_children("project", pid, "session")

        def acquisitions() -> list[Json]:
            return self._client.list_children("project", pid, "acquisition", all_info=True)

        # Three independent answers: in flight together, one round trip's wait.
        later: list[Future[list[Json]]] = []
        if self._pool is not None:
            later = [self._pool.submit(sessions), self._pool.submit(acquisitions)]
        project = parse_container(self._client.get("project", pid), "project")
        listed = [f.result() for f in later] if later else [sessions(), acquisitions()]
        tree = build(
            project,
            self._complete("session", listed[0]),
            self._complete("acquisition", listed[1]),
            sourcedata=self._sourcedata,
        )
        log.debug("BIDS view of project %s: %d files", pid, len(tree.files))
        return tree

    def _complete(self, kind: Kind, answer: list[Json]) -> list[Container]:
        """The listed containers, each fetched whole (`GET`) where the list left out what
        the rules need: its files, or the `info` a sidecar is made from."""
        docs = [d for d in answer if isinstance(d, dict)]
        lacking = [i for i, d in enumerate(docs) if _lacking(kind, d)]
        if lacking:
            log.info("BIDS view: %d %ss listed without their files' info", len(lacking), kind)
            fetched = [self._client.get(kind, str(docs[i].get("_id"))) for i in lacking]
            for i, doc in zip(lacking, fetched, strict=True):
                docs[i] = doc
        out = []
        for doc in docs:
            parents = dict(doc.get("parents") or {})
            if kind == "acquisition" and "session" not in parents:
                session = doc.get("session")
                if isinstance(session, str):
                    parents["session"] = session
            try:
                out.append(parse_container({**doc, "parents": parents}, kind))
            except ValueError as err:
                log.warning("BIDS view: skipping a malformed %s: %s", kind, err)
        return out


class BytesReads:
    """An open made file of a view: its bytes are in the tree."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, length: int) -> bytes:
        return self._data[offset : offset + length]

    def close(self) -> None:
        pass


def _lacking(kind: Kind, doc: Json) -> bool:
    files = doc.get("files")
    if not isinstance(files, list):
        return True
    if kind != "acquisition":
        # Session files need only info.BIDS, which lists keep; none of them gets a sidecar.
        return False
    for f in files:
        if not isinstance(f, dict) or not str(f.get("name", "")).endswith(_IMAGE_EXTS):
            continue
        info = f.get("info")
        if f.get("info_exists") and isinstance(info, dict) and set(info) <= {"BIDS"}:
            return True
    return False

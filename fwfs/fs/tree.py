"""The namespace of the mount: listings of directories, cached with a TTL, and path lookup.

One directory listing is one API call (`/resolve` returns a container's children with their
files and sizes), and the attributes of every entry come from it, so `ls -l`, `find` and
`du` cost O(directories) requests. While a listing is fresh it is authoritative: a name not
in it is ENOENT without a request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeGuard

from fwfs import paths
from fwfs.client import FlywheelClient
from fwfs.errors import NotFound
from fwfs.fs.nodes import ANALYSES_DIR, INPUT_DIR, OUTPUT_DIR, Dir, File, Node
from fwfs.models import (
    CHILD_KIND,
    Container,
    ContainerRef,
    FileInfo,
    container_type,
    parse_container,
    parse_file,
    resolver_path,
)

log = logging.getLogger("fwfs.tree")

ROOT = Dir("root")
ROOT_KEY = ROOT.key
PARENT_KIND = {child: parent for parent, child in CHILD_KIND.items()}
# Directories queued for listing ahead of a walk: beyond this, the oldest wishes are dropped
# (a walk that goes on asks for them again on the way).
MAX_PENDING = 1024
# Marks, in a file's JSON, an analysis input that an output of the same name hides.
SHADOWED = "fwfs_shadowed"


@dataclass
class Listing:
    entries: dict[str, Node]
    fetched: float
    # The listed container as the listing call returned it (fresher than the parent's copy).
    container: Container | None = None


class Tree:
    """Listings by directory key, each fetched by one thread while others wait.

    With a `prefetch` executor, a walk (`ls -R`, `find`, `du`) has the listings it will
    ask for next fetched ahead on that executor, `prefetch_limit` at a time. A walk shows
    when a second child of one directory is enumerated (`listdir`): then the first
    `prefetch_limit` child containers of that child and its next `prefetch_limit` siblings
    are listed ahead, a window that moves with the walk. A single `ls`, or going down one
    directory at a time, lists nothing ahead; a false alarm costs at most twice
    `prefetch_limit` listings. Each listing ahead is still one request, made once:
    single-flight and the cache apply as to any listing, a failure is only logged (the
    walk lists it again when it gets there), and `forget` discards one in flight.

    Guarded by `self._lock`: `_listings`, `_inflight`, `_negative`, `_aliases`, `_changed`,
    `_last_child`, `_prune_at`, `_pending`, `_pending_keys`, `_workers`. No request is
    made while holding it.
    """

    def __init__(
        self,
        client: FlywheelClient,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        prefetch: Executor | None = None,
        prefetch_limit: int = 4,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._prefetch = prefetch
        self._prefetch_limit = max(1, prefetch_limit)
        # Per directory, which child was enumerated last and when: what tells a walk
        # apart from a lookup, a single `ls` or a `cd` down the tree.
        self._last_child: dict[tuple[str, ...], tuple[tuple[str, ...], float]] = {}
        self._prune_at = MAX_PENDING
        # Directories to list ahead, most wanted first, and how many tasks drain them.
        self._pending: deque[Dir] = deque()
        self._pending_keys: set[tuple[str, ...]] = set()
        self._workers = 0
        self._lock = threading.Lock()
        self._listings: dict[tuple[str, ...], Listing] = {}
        self._inflight: dict[tuple[str, ...], threading.Event] = {}
        self._negative: dict[tuple[tuple[str, ...], str], float] = {}
        # `<id:…>` containers found by lookup while not in their parent's listing.
        self._aliases: dict[tuple[tuple[str, ...], str], tuple[Dir, float]] = {}
        # Per listing key, when this mount last changed that directory: a listing fetched
        # (or prefilled) before then is stale even within its TTL.
        self._changed: dict[tuple[str, ...], float] = {}

    # ---- lookup -----------------------------------------------------------------------

    def child(self, parent: Dir, name: str) -> Node:
        listing = self.listing(parent)
        found = listing.entries.get(name)
        if found is not None:
            return found
        alias = paths.parse_id_alias(name)
        if alias is not None and parent.kind in ("root", "container", "analyses"):
            return self._alias(parent, listing, alias)
        raise NotFound(f"no entry {name!r}")

    def _alias(self, parent: Dir, listing: Listing, cid: str) -> Node:
        for node in listing.entries.values():
            if (
                isinstance(node, Dir)
                and node.kind in ("container", "analysis")
                and node.container is not None
                and node.container.id == cid
            ):
                return node
        # Not listed (yet): ask the site once per TTL, and remember a miss for a moment.
        key = (parent.key, cid)
        with self._lock:
            now = self._clock()
            until = self._negative.get(key)
            if until is not None and until > now:
                raise NotFound(f"no container {cid} here")
            hit = self._aliases.get(key)
            if hit is not None and now - hit[1] < self._ttl:
                return hit[0]
        try:
            node = self._resolve_alias(parent, cid)
        except NotFound:
            with self._lock:
                now = self._clock()
                # Forget expired misses, so the map cannot grow without bound.
                self._negative = {k: t for k, t in self._negative.items() if t > now}
                self._negative[key] = now + self._negative_ttl
            raise
        with self._lock:
            now = self._clock()
            self._aliases = {k: v for k, v in self._aliases.items() if now - v[1] < self._ttl}
            self._aliases[key] = (node, now)
        return node

    def _resolve_alias(self, parent: Dir, cid: str) -> Dir:
        if parent.kind == "root":
            base: list[str] = []
        else:
            assert parent.container is not None
            base = resolver_path(parent.container)
            if parent.kind == "analyses":
                base = [*base, "analyses"]
        doc = self._client.lookup([*base, f"<id:{cid}>"])
        c = parse_container(doc)
        return Dir("analysis" if c.kind == "analysis" else "container", c)

    # ---- listings ---------------------------------------------------------------------

    def listing(self, node: Dir) -> Listing:
        key = node.key
        while True:
            with self._lock:
                cached = self._listings.get(key)
                if cached is not None and self._fresh(key, cached):
                    return cached
                event = self._inflight.get(key)
                if event is None:
                    event = threading.Event()
                    self._inflight[key] = event
                    break
            # Someone else is listing this directory: wait for their answer.
            event.wait()
        try:
            listing = self._fetch(node)
        except BaseException:
            with self._lock:
                del self._inflight[key]
            event.set()
            raise
        with self._lock:
            self._listings[key] = listing
            del self._inflight[key]
        event.set()
        return listing

    def listdir(self, node: Dir) -> Listing:
        """`listing(node)` for a `readdir`: the caller enumerates the directory, which is
        the hint that may start listing what a walk needs next (see the class)."""
        listing = self.listing(node)
        if self._prefetch is not None:
            self._plan(node, listing, self._prefetch)
        return listing

    def _plan(self, node: Dir, listing: Listing, pool: Executor) -> None:
        parent = _parent_key(node)
        if parent is None:
            return
        window = self._prefetch_limit
        with self._lock:
            now = self._clock()
            if len(self._last_child) > self._prune_at:
                self._last_child = {
                    k: v for k, v in self._last_child.items() if now - v[1] < self._ttl
                }
                # A big walk keeps many fresh: prune again only once it has doubled.
                self._prune_at = max(MAX_PENDING, 2 * len(self._last_child))
            last = self._last_child.get(parent)
            self._last_child[parent] = (node.key, now)
            if last is None or last[0] == node.key or now - last[1] >= self._ttl:
                return
            wanted = [x for x in listing.entries.values() if _needs_listing(x)][:window]
            siblings = self._listings.get(parent)
            if siblings is not None:
                after = [x for x in siblings.entries.values() if _needs_listing(x)]
                keys = [x.key for x in after]
                if node.key in keys:
                    i = keys.index(node.key)
                    wanted += after[i + 1 : i + 1 + window]
            batch = [x for x in wanted if not self._known(x.key)]
            if not batch:
                return
            # Newest first: a depth-first walk needs these before anything queued for the
            # directories above this one.
            self._pending.extendleft(reversed(batch))
            self._pending_keys.update(x.key for x in batch)
            while len(self._pending) > MAX_PENDING:
                self._pending_keys.discard(self._pending.pop().key)
            start = max(min(window - self._workers, len(self._pending)), 0)
            self._workers += start
        for _ in range(start):
            try:
                pool.submit(self._drain)
            except RuntimeError:
                # The executor is shut down: the mount is closing.
                with self._lock:
                    self._workers -= 1

    def _known(self, key: tuple[str, ...]) -> bool:
        """Listed and fresh, being listed, or queued (holding `self._lock`)."""
        if key in self._inflight or key in self._pending_keys:
            return True
        cached = self._listings.get(key)
        return cached is not None and self._fresh(key, cached)

    def _drain(self) -> None:
        """One prefetch task: list queued directories until none is left."""
        while True:
            with self._lock:
                node = None
                while self._pending:
                    candidate = self._pending.popleft()
                    self._pending_keys.discard(candidate.key)
                    if not self._known(candidate.key):
                        node = candidate
                        break
                if node is None:
                    self._workers -= 1
                    return
            try:
                self.listing(node)
            except Exception as err:  # a guess ahead: the walk lists it again if need be
                log.debug("listing ahead of a walk failed: %s", err)

    def _fresh(self, key: tuple[str, ...], listing: Listing) -> bool:
        changed = self._changed.get(key)
        if changed is not None and listing.fetched <= changed:
            return False
        return self._clock() - listing.fetched < self._ttl

    def forget(self, node: Dir) -> None:
        """This mount changed `node` (an upload, a new child, a rename): list it again on
        next use, even if a listing started before the change is still in flight."""
        with self._lock:
            now = self._clock()
            self._listings.pop(node.key, None)
            if len(self._changed) > 4096:
                # A change older than the TTL outdates no listing that is still fresh.
                self._changed = {k: t for k, t in self._changed.items() if now - t < self._ttl}
            self._changed[node.key] = now

    def forget_container(self, cid: str) -> None:
        """As `forget`, by container id (uploads a previous run left, finished at mount)."""
        self.forget(Dir("container", _placeholder(cid)))

    def _fetch(self, node: Dir) -> Listing:
        now = self._clock()
        if node.kind == "root":
            groups = [parse_container(g, "group") for g in self._client.list_groups()]
            return Listing(_named_dirs(groups), now)
        c = node.container
        assert c is not None
        if node.kind == "container":
            return self._list_container(c, now)
        if node.kind == "analyses":
            return Listing(_named_dirs(self._analyses_of(c)), now)
        if node.kind == "analysis":
            return Listing(
                {
                    INPUT_DIR: Dir("analysis-io", c, "inputs"),
                    OUTPUT_DIR: Dir("analysis-io", c, "files"),
                },
                now,
            )
        # analysis-io: the analysis' inputs or outputs.
        doc = self._client.get("analysis", c.id)
        docs = doc.get("inputs" if node.file_group == "inputs" else "files") or []
        outputs = {d.get("name") for d in doc.get("files") or [] if isinstance(d, dict)}
        files = []
        for d in docs:
            if isinstance(d, dict):
                if node.file_group == "inputs" and d.get("name") in outputs:
                    # The API reads an analysis file by name, and an output of the same
                    # name wins: this input's own bytes cannot be reached that way.
                    d = {**d, SHADOWED: True}
                files.append(parse_file(d, c.ref))
        return Listing(_named_files(files), now, parse_container(doc, "analysis"))

    def _list_container(self, c: Container, now: float) -> Listing:
        resp = self._client.resolve(resolver_path(c))
        path = resp.get("path") or []
        me = parse_container(path[-1], c.kind) if path else c
        child_kind = CHILD_KIND.get(c.kind)
        containers: list[Container] = []
        analyses: list[Container] = []
        files: list[FileInfo] = []
        for doc in resp.get("children") or []:
            if not isinstance(doc, dict):
                continue
            ctype = container_type(doc)
            try:
                if ctype == "file":
                    files.append(parse_file(doc, me.ref))
                elif ctype == "analysis":
                    analyses.append(parse_container(doc))
                elif ctype == child_kind:
                    containers.append(parse_container(doc))
            except ValueError as err:
                log.warning("skipping a malformed entry of %s %s: %s", c.kind, c.id, err)
        listing = Listing(_entries(me, containers, files, bool(analyses)), now, me)
        prefilled: dict[tuple[str, ...], Listing] = {}
        if analyses:
            # The analyses directory is listed from this same answer: no second request.
            prefilled[Dir("analyses", me).key] = Listing(_named_dirs(analyses), now)
        for x in containers:
            leaf = _leaf_listing(x, now)
            if leaf is not None:
                prefilled[Dir("container", x).key] = leaf
        with self._lock:
            for key, value in prefilled.items():
                # Never replace a listing that was fetched later than this answer.
                if key not in self._listings or self._listings[key].fetched < now:
                    self._listings[key] = value
        return listing

    def _analyses_of(self, c: Container) -> list[Container]:
        docs = self._client.list_children(c.kind, c.id, "analysis")
        return [parse_container(d, "analysis") for d in docs]


def _entries(
    me: Container, containers: list[Container], files: list[FileInfo], has_analyses: bool
) -> dict[str, Node]:
    raw = [paths.RawEntry("c:" + x.id, x.label, False) for x in containers]
    raw += [paths.RawEntry("f:" + f.name, f.name, True) for f in files]
    names = paths.assign_names(raw, reserved={ANALYSES_DIR})
    entries: dict[str, Node] = {}
    for x in containers:
        entries[names["c:" + x.id]] = Dir("container", x)
    for f in files:
        entries[names["f:" + f.name]] = File(f)
    if has_analyses or me.raw.get("analyses"):
        entries[ANALYSES_DIR] = Dir("analyses", me)
    return entries


def _leaf_listing(c: Container, now: float) -> Listing | None:
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
    return Listing(_entries(c, [], files, False), now, c)


def _needs_listing(node: Node) -> TypeGuard[Dir]:
    return isinstance(node, Dir) and node.kind == "container"


def _parent_key(node: Dir) -> tuple[str, ...] | None:
    """The listing key of a container directory's parent (None for other directories)."""
    c = node.container
    if node.kind != "container" or c is None:
        return None
    if c.kind == "group":
        return ROOT_KEY
    pid = c.parents.get(PARENT_KIND.get(c.kind, ""))
    return None if pid is None else ("container", pid, "")


def _named_dirs(containers: list[Container]) -> dict[str, Node]:
    # Groups are shown by id (their human-readable, unique name), the rest by label.
    names = paths.assign_names(
        paths.RawEntry("c:" + c.id, c.id if c.kind == "group" else c.label, False)
        for c in containers
    )
    out: dict[str, Node] = {}
    for c in containers:
        out[names["c:" + c.id]] = Dir("analysis" if c.kind == "analysis" else "container", c)
    return out


def _named_files(files: list[FileInfo]) -> dict[str, Node]:
    names = paths.assign_names(paths.RawEntry("f:" + f.name, f.name, True) for f in files)
    return {names["f:" + f.name]: File(f) for f in files}


def _placeholder(cid: str) -> Container:
    """A container known only by id: enough for a listing key."""
    return Container(ContainerRef("project", cid), "", 0.0, 0.0, {}, {})

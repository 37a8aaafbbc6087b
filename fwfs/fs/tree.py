"""The namespace of the mount: listings of directories, cached with a TTL, and path lookup.

One directory listing is one API call (`/resolve` returns a container's children with their
files and sizes), and the attributes of every entry come from it, so `ls -l`, `find` and
`du` cost O(directories) requests. While a listing is fresh it is authoritative: a name not
in it is ENOENT without a request, except in the root, which a site may list short (a
member of a project but not of its group): there an unlisted name is looked up once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import NamedTuple, TypeGuard

from cachetools import TTLCache

from fwfs import paths
from fwfs.errors import FwfsError, NotFound, PermissionDenied
from fwfs.fs.listed import (
    NAME_SHARED,
    Listing,
    named_dirs,
    named_files,
    parse_resolved,
    site_element,
)
from fwfs.fs.nodes import INPUT_DIR, OUTPUT_DIR, Dir, File, Node
from fwfs.models import (
    CHILD_KIND,
    Container,
    ContainerRef,
    Json,
    parse_container,
    parse_file,
    resolver_path,
)
from fwfs.site import SiteClient

__all__ = ["NAME_SHARED", "ROOT", "ROOT_KEY", "Listing", "Tree"]
# Its old name here, which tests/fs/test_model.py imports.
_named_files = named_files

log = logging.getLogger("fwfs.tree")

ROOT = Dir("root")
ROOT_KEY = ROOT.key
PARENT_KIND = {child: parent for parent, child in CHILD_KIND.items()}
# Directories queued for listing ahead of a walk: beyond this, the oldest wishes are dropped
# (a walk that goes on asks for them again on the way).
MAX_PENDING = 1024


def _bids_only(raw: Json) -> bool:
    info = raw.get("info")
    return bool(raw.get("info_exists")) and isinstance(info, dict) and set(info) <= {"BIDS"}


def _more_than_bids(doc: Json) -> bool:
    info = doc.get("info")
    return isinstance(info, dict) and any(key != "BIDS" for key in info)


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
    `_details`, `_last_child`, `_pending`, `_pending_keys`, `_workers`,
    `_children_files`, `_guessing`, `_guessed`. No
    request is made while holding it.
    """

    def __init__(
        self,
        client: SiteClient,
        ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        prefetch: Executor | None = None,
        prefetch_limit: int = 4,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._prefetch = prefetch
        self._prefetch_limit = max(1, prefetch_limit)
        # Per directory, which child was enumerated last, within the TTL: what tells a
        # walk apart from a lookup, a single `ls` or a `cd` down the tree.
        self._last_child: TTLCache[tuple[str, ...], tuple[str, ...]] = TTLCache(
            math.inf, ttl, timer=clock
        )
        # Directories to list ahead, most wanted first, and how many tasks drain them.
        self._pending: deque[Dir] = deque()
        self._pending_keys: set[tuple[str, ...]] = set()
        self._workers = 0
        self._lock = threading.Lock()
        self._listings: dict[tuple[str, ...], Listing] = {}
        self._inflight: dict[tuple[str, ...], threading.Event] = {}
        # Names the site said are not there (a lookup of an unlisted name), for a moment.
        self._negative: TTLCache[tuple[tuple[str, ...], str], bool] = TTLCache(
            math.inf, negative_ttl, timer=clock
        )
        # `<id:…>` containers found by lookup while not in their parent's listing.
        self._aliases: TTLCache[tuple[tuple[str, ...], str], Dir] = TTLCache(
            math.inf, ttl, timer=clock
        )
        # Per listing key, when this mount last changed that directory: a listing fetched
        # (or prefilled) before then is stale even within its TTL.
        # A change older than the TTL outdates no listing that is still fresh, so it may go.
        self._changed: TTLCache[tuple[str, ...], float] = TTLCache(math.inf, ttl, timer=clock)
        # Whether this site's listings were seen to hold more of an `info` than `BIDS`,
        # which a real core's list answers never do (see `info_trimmed`).
        self._whole_info = False
        # Whether this site's resolve answers carry their child containers' files (so that
        # a session's answer lists its acquisitions too); None until an answer shows it.
        self._children_files: bool | None = None
        # Site paths being resolved as a guess (`guessing`), each asked once at a time.
        self._guessing: dict[tuple[str, ...], threading.Event] = {}
        # What each guessed site path was found to be, for the TTL: None when it failed.
        self._guessed: TTLCache[tuple[str, ...], Dir | None] = TTLCache(math.inf, ttl, timer=clock)
        # Full JSON of entries whose listing lacked metadata (`details`), for the TTL.
        self._details: TTLCache[tuple[str, ...], Json] = TTLCache(math.inf, ttl, timer=clock)

    def info_trimmed(self, raw: Json) -> bool:
        """Whether ``raw``'s ``info`` may be a listing's cut of it. A real core's list
        answers keep only ``info.BIDS`` and say ``info_exists`` (CORE19
        ``containerutil.sanitize_info``); its resolver does the same or drops ``info``. So
        an ``info`` of BIDS alone beside ``info_exists`` is not known to be the whole,
        until a listing of this site shows an ``info`` with more: a site that cuts never
        does, and one that does not cut is then trusted."""
        return not self._whole_info and _bids_only(raw)

    def _saw(self, docs: list[Json]) -> None:
        """Note whether these listed documents show that the site's listings are whole."""
        if not self._whole_info and any(isinstance(d, dict) and _more_than_bids(d) for d in docs):
            self._whole_info = True

    # ---- lookup -----------------------------------------------------------------------

    def child(self, parent: Dir, name: str) -> Node:
        listing = self.listing(parent)
        found = listing.entries.get(name)
        if found is not None:
            return found
        alias = paths.parse_id_alias(name)
        if alias is not None and parent.kind in ("root", "container", "analyses"):
            return self._alias(parent, listing, alias, f"<id:{alias}>")
        if parent.kind == "root" and paths.could_be_group_id(name):
            # `GET /groups` leaves out groups the user reaches only through a project of
            # theirs that `GET /projects` did not list (yet): the site may still resolve it.
            return self._alias(parent, listing, name, name)
        raise NotFound(f"no entry {name!r}")

    def _alias(self, parent: Dir, listing: Listing, cid: str, element: str) -> Node:
        """The child container with id `cid`, which the site's path `element` names."""
        for node in listing.entries.values():
            if (
                isinstance(node, Dir)
                and node.kind in ("container", "analysis")
                and node.container is not None
                and node.container.id == cid
            ):
                return node
        # Not listed (yet): ask the site once per TTL, and remember a miss for a moment.
        key = (parent.key, element)
        with self._lock:
            if key in self._negative:
                raise NotFound(f"no container {cid} here")
            hit = self._aliases.get(key)
            if hit is not None:
                return hit
        try:
            try:
                node = self._resolve_alias(parent, element)
            except PermissionDenied:
                if element.startswith("<id:"):
                    raise
                # A group the user may not read is not in their root: ENOENT, as `ls` shows.
                raise NotFound(f"no group {element} readable here") from None
        except NotFound:
            with self._lock:
                self._negative[key] = True
            raise
        with self._lock:
            self._aliases[key] = node
        return node

    def _resolve_alias(self, parent: Dir, element: str) -> Dir:
        if parent.kind == "root":
            base: list[str] = []
        else:
            assert parent.container is not None
            base = resolver_path(parent.container)
            if parent.kind == "analyses":
                base = [*base, "analyses"]
        doc = self._client.lookup([*base, element])
        c = parse_container(doc)
        if parent.kind == "root" and c.kind != "group":
            raise NotFound(f"{element} is a {c.kind}, not a group")
        return Dir("analysis" if c.kind == "analysis" else "container", c)

    # ---- listings a deep lookup will need ------------------------------------------------

    @contextmanager
    def guessing(self, node: Dir, names: Sequence[str]) -> Iterator[None]:
        """Around the step of a path lookup that lists `node`: the directories the path's
        next `names` lead to below it (components with more of the path below them) are
        listed at once, side by side with `node`'s own listing, and waited for on leaving,
        so that the walk finds them kept instead of listing one level per round trip.

        Their ids come from the listings the walk has not made yet, so each is asked by
        its site path of labels (a name unescaped, an `<id:…>` as it is), below the ids of
        the levels kept fresh, and kept under the container the ANSWER is: a guess that
        reaches another container (a name that is no label, a duplicate label), or none,
        costs one request and never a wrong listing; its error is only logged. Not
        guessed: a level a kept listing names (the walk lists it at its step, with the
        guesses below it), a level below a name no label makes (a suffixed or `(no
        label)` name, `analyses`), an acquisition whose session's answer lists it (the
        site's answers carry their children's files, or have not shown yet whether they
        do), anything with a TTL of 0 (a guess would be stale at once). A guess another
        lookup sent is waited for, not sent again.
        """
        guesses = self._guesses(node, names)
        if not guesses:
            yield
            return
        with ThreadPoolExecutor(len(guesses), thread_name_prefix="fwfs-guess") as pool:
            futures = [pool.submit(self._guess, *guess) for guess in guesses]
            try:
                yield
            finally:
                wait(futures)

    def _guesses(self, node: Dir, names: Sequence[str]) -> list[_Guess]:
        """The site paths to resolve ahead of listing `node` (see `guessing`), each claimed
        (`mine`) or, when a lookup beside this one claimed it first, to wait for."""
        c = node.container
        if self._ttl <= 0 or node.kind not in ("root", "container"):
            return []
        kind = "group" if c is None else CHILD_KIND.get(c.kind)
        base = [] if c is None else resolver_path(c)
        # The same levels by labels alone: what a lookup beside this one asks them by.
        labels: list[str] | None = base
        out: list[_Guess] = []
        known: Dir | None = node
        with self._lock:
            # Whether the level above is being listed now (its answer may carry this one).
            # A fresh `node` is looked through: a guess of a level below it that a lookup
            # beside this one sent is waited for, so this walk does not list it again.
            listed_now = not self._known_now(node.key)
            for name in names:
                if kind is None or (
                    kind == "acquisition" and listed_now and self._children_files is not False
                ):
                    break
                element = site_element(kind, name)
                labels = None if element is None or labels is None else [*labels, element]
                below = None if element is None else [*base, element]
                # How a lookup beside this one may have asked this level.
                asked = [tuple(p) for p in (labels, below) if p is not None]
                busy = next((list(k) for k in asked if k in self._guessing), None)
                answers = [self._guessed.get(k, False) for k in asked]
                answered = next((a for a in answers if isinstance(a, Dir)), None)
                kept = self._listings.get(known.key) if known is not None else None
                child = kept.entries.get(name) if kept is not None else None
                if isinstance(child, Dir) and child.kind != "container":
                    child = None
                if busy is not None:
                    # Being guessed by a lookup beside this one: waited for, not asked again.
                    known, base, listed_now = None, busy, True
                elif isinstance(child, Dir):
                    # Named in a kept listing (whose names are the walk's): when not fresh,
                    # the walk lists it at its step, with the guesses of the levels below.
                    if not self._known_now(child.key):
                        break
                    assert child.container is not None
                    known, base, listed_now = child, resolver_path(child.container), False
                    if answered is not None and answered.key != child.key:
                        labels = None  # the labels reach another container from here
                elif answered is not None and answered.container is not None:
                    # Guessed already: asked again by ids unless kept fresh or on its way.
                    known, base = answered, resolver_path(answered.container)
                    listed_now = not self._known_now(answered.key)
                elif None in answers or below is None:
                    break  # failed within the TTL (as would the levels below), or no label
                elif kept is not None and known is not None and self._fresh(known.key, kept):
                    break  # not in a fresh listing: the walk ends here
                else:
                    known, base, listed_now = None, below, True
                if listed_now:
                    key = tuple(base)
                    event = self._guessing.get(key)
                    mine = event is None
                    if event is None:
                        event = self._guessing[key] = threading.Event()
                    out.append(_Guess(base, event, mine))
                kind = CHILD_KIND.get(kind)
        return out

    def _known_now(self, key: tuple[str, ...]) -> bool:
        """Kept fresh or being listed (holding `self._lock`)."""
        cached = self._listings.get(key)
        return key in self._inflight or (cached is not None and self._fresh(key, cached))

    def _guess(self, path: list[str], event: threading.Event, mine: bool) -> None:
        """Resolve `path` and keep its listing under the container the answer names; a
        guess another lookup claimed is waited for, not asked again."""
        key = tuple(path)
        if not mine:
            event.wait()
            return
        try:
            now = self._clock()
            listing = self._take(self._client.resolve(path), None, now, f"(guess, {len(path)})")
            c = listing.container
            found = None
            if c is not None and c.kind in (*CHILD_KIND, "acquisition"):
                found = Dir("container", c)
            with self._lock:
                self._guessed[key] = found
                if found is not None:
                    self._keep(found.key, listing)
        except Exception as err:  # a guess: the walk lists the directory itself
            # Its kind only: the error may quote the path, and labels can be PHI.
            log.debug("a listing guessed %d levels deep failed: %s", len(path), type(err).__name__)
            with self._lock:
                self._guessed[key] = None
        finally:
            with self._lock:
                del self._guessing[key]
            event.set()

    # ---- metadata the listing may lack -------------------------------------------------

    def details(self, node: File | Dir, wanted: str) -> Json:
        """The entry's JSON, holding the field `wanted` if the site has it.

        A real resolver leaves `info` (and the `tags` of sessions and acquisitions) out of
        the children it lists: when the listed JSON lacks `wanted`, the entry's own
        document is fetched (`GET …/files/{name}/info`, `GET /{kind}s/{id}`), once per
        listing TTL.
        """
        fetch: Callable[[], Json]
        if isinstance(node, File):
            f, p = node.info, node.info.parent
            raw = f.raw
            key: tuple[str, ...] = ("file", p.id, f.file_group, f.name, f.file_id)

            def fetch() -> Json:
                return self._client.file_info(
                    p.kind, p.id, f.name, group=f.file_group, file_id=f.file_id or None
                )
        elif node.container is not None:
            c = node.container
            raw, key = c.raw, ("container", c.id)

            def fetch() -> Json:
                return self._client.get(c.kind, c.id)
        else:
            return {}
        if wanted in raw and not (wanted == "info" and self.info_trimmed(raw)):
            return raw
        with self._lock:
            hit = self._details.get(key)
        if hit is not None:
            return hit
        doc = fetch()
        with self._lock:
            self._details[key] = doc
        return doc

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
            last = self._last_child.get(parent)
            self._last_child[parent] = node.key
            if last is None or last == node.key:
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
            self._listings.pop(node.key, None)
            self._changed[node.key] = self._clock()

    def forget_under(self, node: Dir) -> int:
        """`fwfs refresh`: forget `node`'s listing and every listing kept below it (found
        through the kept listings, so without a request), with the misses and `<id:…>`
        aliases noted in them. The next use lists each again. How many were forgotten."""
        with self._lock:
            todo, seen = [node], set()
            while todo:
                key = todo.pop().key
                if key in seen:
                    continue
                seen.add(key)
                listing = self._listings.pop(key, None)
                self._changed[key] = self._clock()
                if listing is not None:
                    todo += [x for x in listing.entries.values() if isinstance(x, Dir)]
                todo += [d for (parent, _), d in self._aliases.items() if parent == key]
            for cache in (self._negative, self._aliases):
                for k in [k for k in cache if k[0] in seen]:
                    cache.pop(k, None)
            self._guessed.clear()
            return len(seen)

    def forget_container(self, cid: str) -> None:
        """As `forget`, by container id (uploads a previous run left, finished at mount)."""
        self.forget(Dir("container", _placeholder(cid)))

    def _fetch(self, node: Dir) -> Listing:
        now = self._clock()
        if node.kind == "root":
            return Listing(named_dirs(self._groups()), now)
        c = node.container
        assert c is not None
        if node.kind == "container":
            return self._list_container(c, now)
        if node.kind == "analyses":
            return Listing(named_dirs(self._analyses_of(c)), now)
        if node.kind == "analysis":
            return Listing(
                {
                    INPUT_DIR: Dir("analysis-io", c, "inputs"),
                    OUTPUT_DIR: Dir("analysis-io", c, "files"),
                },
                now,
            )
        # analysis-io: the analysis' inputs or outputs. Inputs are read through their own
        # route (`/analyses/{id}/inputs/{name}`), so an output of the same name hides none.
        doc = self._client.get("analysis", c.id)
        group = "inputs" if node.file_group == "inputs" else "files"
        files = [
            parse_file({**d, "file_group": group}, c.ref)
            for d in doc.get(group) or []
            if isinstance(d, dict)
        ]
        return Listing(named_files(files), now, parse_container(doc, "analysis"))

    def _list_container(self, c: Container, now: float) -> Listing:
        asked = resolver_path(c)
        return self._take(self._client.resolve(asked), c, now, asked)

    def _take(self, resp: Json, asked: Container | None, now: float, path: object) -> Listing:
        """The listing in a resolve answer sent at `now`; the listings it carries for other
        directories are kept, never over one fetched later."""
        resolved = parse_resolved(resp, asked, now, path)
        self._saw(resp.get("children") or [])
        with self._lock:
            if resolved.children_files is not None:
                self._children_files = resolved.children_files
            for key, value in resolved.prefilled.items():
                self._keep(key, value)
        return resolved.listing

    def _keep(self, key: tuple[str, ...], listing: Listing) -> None:
        """Keep `listing` unless one fetched later is kept (holding `self._lock`)."""
        if key not in self._listings or self._listings[key].fetched < listing.fetched:
            self._listings[key] = listing

    def _groups(self) -> list[Container]:
        """The root: `GET /groups` and the groups of the user's projects.

        A site lists in `/groups` only the groups whose permissions name the user, while a
        member of one project may read (and resolve) its group: such a group is made from
        its projects' JSON (`group`, `group_info`), with no request of its own. Its
        directory's own listing fetches the group itself.
        """
        # The two lists are independent: page through both at once.
        with ThreadPoolExecutor(1, thread_name_prefix="fwfs-root") as pool:
            asked = pool.submit(self._client.list_projects)
            listed = self._client.list_groups()
        try:
            projects = asked.result()
        except FwfsError as err:
            # Some keys may not list projects: the root is then `/groups` alone, and a
            # group name it lacks is still looked up (`child`).
            log.warning("GET /projects failed, the root shows /groups only: %s", err)
            projects = []
        groups = {g.id: g for g in map(_group, listed) if g is not None}
        for doc in projects:
            gid = doc.get("group") if isinstance(doc, dict) else None
            if not isinstance(gid, str) or not gid or gid in groups:
                continue
            made: Json = {"_id": gid, "container_type": "group"}
            info = doc.get("group_info")
            label = info.get("label") if isinstance(info, dict) else None
            if isinstance(label, str):
                # Else left out, not guessed: `user.flywheel.label` then asks the group.
                made["label"] = label
            groups[gid] = parse_container(made)
        return list(groups.values())

    def _analyses_of(self, c: Container) -> list[Container]:
        docs = self._client.list_children(c.kind, c.id, "analysis")
        return [parse_container(d, "analysis") for d in docs]


class _Guess(NamedTuple):
    path: list[str]
    # Set when the guess is answered (or failed); `mine`: this lookup sends it.
    event: threading.Event
    mine: bool


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


def _group(doc: object) -> Container | None:
    if not isinstance(doc, dict):
        return None
    try:
        return parse_container(doc, "group")
    except ValueError as err:
        log.warning("GET /groups: skipping a malformed group: %s", err)
        return None


def _placeholder(cid: str) -> Container:
    """A container known only by id: enough for a listing key."""
    return Container(ContainerRef("project", cid), "", 0.0, 0.0, {}, {})

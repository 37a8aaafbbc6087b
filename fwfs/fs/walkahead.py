"""Walk read-ahead: the next files of a directory fetched before the program opens them.

A program that reads a directory's files one after another (`cp -r`, a loop over NIfTI
headers) waits a round trip per file: each open starts with a fetch. When the files it
opens follow each other in listing order, this fetches the next ones ahead, in parallel,
into the shared block cache, so that the program's own reads find their blocks there, or
in flight (the cache's single flight: a block is never fetched twice).

* A walk shows when a directory's file is opened right after its predecessor in listing
  order (within what was fetched ahead, so a skipped file does not end it). Then the
  next files are fetched ahead, and topped up at every open: at most `files` files and
  `budget` bytes fetched ahead and not yet opened, over all the walks going on. A single
  open, or files opened out of order, fetch nothing ahead.
* How much of each: a file of at most `file_bytes` whole (one round trip either way);
  of a larger one, what the program read of the previous file rounded up to blocks (a
  header probe reads a block), at most `file_bytes`.
* Crossing directories: a directory listed (`readdir`) while a walk that reads files is
  going on (one opened a file in order within `idle` seconds) has its first files fetched
  at once, as much of each as that walk read; then, as far as the budget goes, those of
  its subdirectories and of its next siblings (listed on the pool if they are not yet:
  the walk would list them next). A walk that only lists (`ls -lR`, `find`) opens no file
  and so never fetches a byte.

Fetches run on a pool of their own, so they neither queue behind nor delay the readers'
readahead. A failed fetch is only logged: it settles nothing with an error, so the
program's own read fetches the blocks again and sees its own error if there is one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fwfs.blockcache import BlockCache
from fwfs.config import WalkAheadConfig
from fwfs.fs.nodes import Dir, File
from fwfs.fs.tree import NAME_SHARED, Listing
from fwfs.models import FileInfo
from fwfs.rangedfile import RangedReader

log = logging.getLogger("fwfs.walkahead")

# Per file, a reader of its listed version that never streams (FlywheelFS's): a site
# that ignores Range makes a guess ahead fail, not download a whole file.
OpenReader = Callable[[FileInfo], RangedReader]
# What the program has read so far of a file it opened (its reader's bytes read).
ReadSoFar = Callable[[], int]

# Walks remembered at most: one per directory being read, the oldest forgotten first.
MAX_WALKS = 64
# Directories a readdir has fetched ahead of it, at most (the budget usually stops sooner).
DIRS_AHEAD = 8


@dataclass
class _Walk:
    """One directory's files in listing order and how far the program went in them."""

    listing: Listing
    files: list[FileInfo]
    index: dict[str, int]
    last: int = -1  # the file opened last; -1 before any
    run: int = 0  # files opened in order so far, the last one included
    read_last: ReadSoFar | None = None
    ahead: int = 0  # files before this one are fetched ahead, or were opened
    # Fetched ahead and not yet opened: position -> bytes asked for.
    pending: dict[int, int] = field(default_factory=dict)
    touched: float = 0.0


def _files_of(listing: Listing) -> tuple[list[FileInfo], dict[str, int]]:
    files = [
        node.info
        for node in listing.entries.values()
        if isinstance(node, File) and node.info.size > 0 and not node.info.raw.get(NAME_SHARED)
    ]
    return files, {info.name: i for i, info in enumerate(files)}


class WalkAhead:
    """Guarded by `_lock`: `_walks`, `_reading`, the counters and every `_Walk`. No
    fetch, listing, wait or submit happens with it held; the previous file's bytes read
    are asked of its reader under it (the reader's lock inside ours, never the reverse).
    """

    def __init__(
        self,
        config: WalkAheadConfig,
        cache: BlockCache,
        open_reader: OpenReader,
        list_dir: Callable[[Dir], Listing],
        block_size: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._cache = cache
        self._open_reader = open_reader
        self._list_dir = list_dir
        self._bs = block_size
        # A walk's bytes ahead sit in the cache until opened: an eighth of it at most, so
        # the readers' own readahead keeps room.
        self._budget = min(config.budget, cache.max_bytes // 8)
        self._clock = clock
        self._lock = threading.Lock()
        self._walks: OrderedDict[tuple[str, ...], _Walk] = OrderedDict()
        # The last walk that read files in order: when, and how much of each file.
        self._reading: tuple[float, int] | None = None
        self._pool = ThreadPoolExecutor(max(1, config.threads), thread_name_prefix="fwfs-walk")
        self._closed = False
        # Fetches this object made (tests and logs): files, and the bytes they carried.
        self.fetched_files = 0
        self.fetched_bytes = 0

    @property
    def enabled(self) -> bool:
        return self._config.files > 0 and self._budget >= self._bs

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---- hints from the filesystem ----------------------------------------------------

    def opened(self, parent: Dir, listing: Listing, info: FileInfo, read: ReadSoFar) -> None:
        """The program opened `info`, a file of `parent`, for reading."""
        if not self.enabled:
            return
        with self._lock:
            walk = self._walk(parent, listing)
            pos = walk.index.get(info.name)
            if pos is None:
                return
            if pos == walk.last:
                walk.read_last = read
                return
            in_order = walk.last < pos <= max(walk.last + 1, walk.ahead - 1)
            previous = walk.read_last
            walk.run = walk.run + 1 if in_order else 1
            walk.last, walk.read_last = pos, read
            walk.ahead = max(walk.ahead, pos + 1) if in_order else pos + 1
            walk.pending = {i: n for i, n in walk.pending.items() if i > pos}
            if walk.run < 2:
                return
            if previous is not None:
                amount = previous()
            elif self._reading is not None:
                amount = self._reading[1]  # the first file of a directory primed by readdir
            else:
                return
            self._reading = (self._clock(), amount)
            jobs = self._plan(walk, amount)
        self._submit(jobs)

    def reading(self) -> bool:
        """Whether a walk that reads files is going on (so a readdir is worth telling)."""
        with self._lock:
            return self._amount() is not None

    def listed(self, node: Dir, listing: Listing, parent: Dir | None) -> None:
        """The program enumerated `node` (readdir), a child of `parent`.

        While a walk reads files, `node`'s files are fetched ahead, then (on the pool: a
        listing may cost a request) those of the directories the walk goes to next, its
        subdirectories and then its next siblings, as far as the budget goes."""
        if not self.enabled:
            return
        with self._lock:
            amount = self._amount()
            if amount is None:
                return
            jobs = self._prime(node, listing, amount)
        self._submit(jobs)
        with contextlib.suppress(RuntimeError):  # the pool is shut down: the mount is closing
            self._pool.submit(self._descend, node, listing, parent, amount)

    def _descend(self, node: Dir, listing: Listing, parent: Dir | None, amount: int) -> None:
        dirs = [x for x in listing.entries.values() if isinstance(x, Dir)]
        try:
            if parent is not None:
                siblings = [
                    x for x in self._list_dir(parent).entries.values() if isinstance(x, Dir)
                ]
                keys = [x.key for x in siblings]
                if node.key in keys:
                    dirs += siblings[keys.index(node.key) + 1 :]
            for d in dirs[:DIRS_AHEAD]:
                with self._lock:
                    if self._left()[0] <= 0:
                        return
                jobs = self._prime(d, self._list_dir(d), amount, lock=True)
                self._submit(jobs)
        except Exception as err:
            log.debug("listing ahead of a walk that reads files failed: %s", err)

    # ---- planning (with the lock held) ------------------------------------------------

    def _amount(self) -> int | None:
        """How much of each file the walk that reads files reads; None if none is going on."""
        reading = self._reading
        if reading is None or self._clock() - reading[0] >= self._config.idle:
            return None
        return reading[1]

    def _left(self) -> tuple[int, int]:
        """Files and bytes that may still be fetched ahead: what walks still going on
        (touched within `idle`) fetched ahead and have not opened counts against both."""
        now = self._clock()
        files, spent = 0, 0
        for walk in self._walks.values():
            if now - walk.touched < self._config.idle:
                files += len(walk.pending)
                spent += sum(walk.pending.values())
        return self._config.files - files, self._budget - spent

    def _prime(
        self, node: Dir, listing: Listing, amount: int, *, lock: bool = False
    ) -> list[tuple[FileInfo, int]]:
        """Fetch ahead the first files of a directory the program has not read from yet,
        as if the file before its first had just been read in order: opening the first
        file goes on with the walk."""
        if lock:
            with self._lock:
                return self._prime(node, listing, amount)
        walk = self._walk(node, listing)
        if walk.last >= 0:
            return []  # being read: its opens top it up
        walk.run = 1
        return self._plan(walk, amount)

    def _walk(self, node: Dir, listing: Listing) -> _Walk:
        walk = self._walks.get(node.key)
        if walk is None:
            files, index = _files_of(listing)
            walk = self._walks[node.key] = _Walk(listing, files, index)
            while len(self._walks) > MAX_WALKS:
                self._walks.popitem(last=False)
        elif walk.listing is not listing:
            # Listed again: positions follow the new listing; the walk goes on by name.
            last = walk.files[walk.last].name if 0 <= walk.last < len(walk.files) else None
            walk.files, walk.index = _files_of(listing)
            walk.listing = listing
            walk.last = walk.index.get(last, -1) if last is not None else -1
            walk.ahead = walk.last + 1
            walk.pending.clear()
        walk.touched = self._clock()
        self._walks.move_to_end(node.key)
        return walk

    def _plan(self, walk: _Walk, amount: int) -> list[tuple[FileInfo, int]]:
        """The files to fetch ahead now, and how many bytes of each."""
        bs, cap = self._bs, self._config.file_bytes
        head = min(max(bs, -(-amount // bs) * bs), cap)
        jobs: list[tuple[FileInfo, int]] = []
        files, budget = self._left()
        while walk.ahead < len(walk.files) and files > 0:
            info = walk.files[walk.ahead]
            # A small file costs one round trip whole or in part: fetched whole.
            size = info.size if info.size <= cap else head
            if size > budget:
                break
            walk.pending[walk.ahead] = size
            files, budget = files - 1, budget - size
            walk.ahead += 1
            jobs.append((info, size))
        return jobs

    # ---- fetching ---------------------------------------------------------------------

    def _submit(self, jobs: list[tuple[FileInfo, int]]) -> None:
        for info, size in jobs:
            try:
                self._pool.submit(self._fetch, info, size)
            except RuntimeError:
                return  # the pool is shut down: the mount is closing

    def _fetch(self, info: FileInfo, size: int) -> None:
        """Bytes `[0, size)` of `info` into the cache, skipping blocks already there or in
        flight. Claimed here, not at submit, so a program that got to a file first fetches
        it itself and this finds nothing left to claim."""
        if self._closed:
            return
        reader = self._open_reader(info)
        try:
            reader.prefetch(size)
        except Exception as err:
            # A guess ahead: whoever waits for these blocks fetches them itself.
            log.debug("fetching %s ahead of a walk failed: %s", info.name, err)
        stats = reader.stats()
        with self._lock:
            self.fetched_files += stats.fetch_calls - stats.fetch_errors
            self.fetched_bytes += stats.bytes_fetched

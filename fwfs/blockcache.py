"""A shared, byte-bounded LRU of immutable file blocks, with single-flight fetching.

Keys must name immutable bytes: callers put the file version in the key, so a new version
is a new key and stale bytes can never be served. The cache never fetches anything itself;
callers pass the fetch in, and it is always called without the cache's lock held.

A block is ``bytes`` or a read-only ``memoryview`` slice of a larger buffer, so that one
ranged fetch can be cut into blocks without copying it. Every key space holds one kind:
a caller gets back the kind it stores.

Single flight: a key that someone is fetching has a ``_Flight``. Other callers wait on it
instead of fetching again. Whoever created a flight must settle it (with bytes, an error
or a release), which ``Reservation`` guarantees by settling leftovers on exit.

A fetch made as a guess ahead of a program (``with guessing():``: an archive's bulk fetch,
members inflated ahead) releases what it claimed when it fails, instead of failing it: a
program's read that was waiting for those blocks fetches them itself and meets its own
error, never the guess's (a guess may meet a fault the program's own read would not).
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar, cast

K = TypeVar("K", bound=Hashable)
# Set by `guessing()` in the thread (or task) making guesses ahead of a program.
_GUESSING: ContextVar[bool] = ContextVar("fwfs_blockcache_guessing", default=False)


@contextlib.contextmanager
def guessing() -> Iterator[None]:
    """Fetches made inside are guesses: a failed one releases its claimed keys (waiters
    fetch them themselves) instead of failing them with its error."""
    token = _GUESSING.set(True)
    try:
        yield
    finally:
        _GUESSING.reset(token)


Block = bytes | memoryview
B = TypeVar("B", bytes, memoryview)


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of counters. ``waits`` counts lookups that joined someone else's fetch.

    ``bytes_cached`` is the memory the stored blocks keep alive (see ``_Lru``)."""

    hits: int
    misses: int
    waits: int
    evictions: int
    blocks: int
    bytes_cached: int
    max_bytes: int


class _Lru:
    """Blocks in least-recently-used order, bounded by the memory they keep alive.

    A memoryview block keeps its whole underlying buffer alive, so the buffer is charged
    in full, once, while any slice of it is stored: ``size`` never understates what the
    cache holds, however its slices are evicted. Slices of one fetch are stored and read
    together, so in practice a buffer goes with its last slice and costs no more than
    the blocks cut from it. Not thread-safe: ``BlockCache`` holds its lock around it.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.evictions = 0
        self._blocks: OrderedDict[Hashable, Block] = OrderedDict()
        # id() of each buffer with slices stored -> how many; the slices keep it alive,
        # so its id cannot be reused while it is counted here.
        self._slices: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._blocks

    def get(self, key: Hashable) -> Block | None:
        block = self._blocks.get(key)
        if block is not None:
            self._blocks.move_to_end(key)
        return block

    def put(self, key: Hashable, block: Block) -> None:
        """Store ``block`` as the most recent, evicting the least recent to make room.

        A slice of a buffer larger than the whole cache is stored as a copy instead.
        """
        if isinstance(block, memoryview) and _buffer_size(block) > self.max_bytes:
            block = bytes(block)
        if len(block) > self.max_bytes:
            return
        old = self._blocks.pop(key, None)
        if old is not None:
            self._uncharge(old)
        self._blocks[key] = block
        self._charge(block)
        while self.size > self.max_bytes:
            _, evicted = self._blocks.popitem(last=False)
            self._uncharge(evicted)
            self.evictions += 1

    def clear(self) -> None:
        self._blocks.clear()
        self._slices.clear()
        self.size = 0

    def _charge(self, block: Block) -> None:
        if isinstance(block, memoryview):
            ident = id(block.obj)
            count = self._slices.get(ident, 0)
            self._slices[ident] = count + 1
            if count:
                return
            self.size += _buffer_size(block)
        else:
            self.size += len(block)

    def _uncharge(self, block: Block) -> None:
        if isinstance(block, memoryview):
            ident = id(block.obj)
            count = self._slices.pop(ident) - 1
            if count:
                self._slices[ident] = count
                return
            self.size -= _buffer_size(block)
        else:
            self.size -= len(block)


def _buffer_size(view: memoryview) -> int:
    return memoryview(view.obj).nbytes


class _Flight:
    """One fetch in progress. ``data`` and ``error`` are written once, before ``settle``.

    A lock held from creation until ``settle``, rather than an Event: a cold read makes
    one flight per 128 KiB block, and an Event costs fifteen times as much to make.
    """

    __slots__ = ("_done", "data", "error")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.data: Block | None = None
        self.error: BaseException | None = None

    def settle(self) -> None:
        """Let every waiter through; called exactly once."""
        self._done.release()

    def wait(self) -> Block | None:
        """The fetched bytes; None if the fetcher gave up without a result (retry)."""
        # Each waiter takes the released lock and hands it on to the next.
        with self._done:
            pass
        if self.error is not None:
            raise self.error
        return self.data


class BlockCache:
    """Thread-safe LRU of blocks bounded by the memory they keep alive (see ``_Lru``).

    Guarded by ``_lock``: ``_blocks``, ``_flights`` and the counters. The lock is held only
    for dictionary work: never while fetching or waiting. A block longer than ``max_bytes``
    is handed to its readers but not stored.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must not be negative")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._blocks = _Lru(max_bytes)
        self._flights: dict[Hashable, _Flight] = {}
        self._hits = 0
        self._misses = 0
        self._waits = 0

    def get(self, key: Hashable) -> Block | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is None:
                self._misses += 1
            else:
                self._hits += 1
            return data

    def put(self, key: Hashable, data: Block) -> None:
        with self._lock:
            self._store(key, data)

    def clear(self) -> None:
        """Drop every stored block. Fetches in flight still complete and store theirs."""
        with self._lock:
            self._blocks.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                waits=self._waits,
                evictions=self._blocks.evictions,
                blocks=len(self._blocks),
                bytes_cached=self._blocks.size,
                max_bytes=self.max_bytes,
            )

    def get_or_fetch(self, key: Hashable, fetch: Callable[[], B]) -> B:
        """The block for ``key``, calling ``fetch`` only if nobody has it or is fetching it."""
        return self.get_or_fetch_many([key], lambda _keys: [fetch()])[0]

    def get_or_fetch_many(
        self, keys: Sequence[K], fetch: Callable[[list[K]], Sequence[B]]
    ) -> list[B]:
        """The blocks for ``keys``, in order.

        ``fetch`` gets the keys that are neither stored nor being fetched by another caller
        (in the order given) and must return one block for each. Keys being fetched by
        others are waited for. Any error, ours or the other fetcher's, propagates and stores
        nothing for the keys it covers.
        """
        # Blocks already stored or fetched by others are of the kind this key space holds.
        found: dict[int, B] = {}
        todo = list(range(len(keys)))
        while todo:
            mine: list[tuple[int, _Flight]] = []
            theirs: list[tuple[int, _Flight]] = []
            with self._lock:
                for pos in todo:
                    data = self._blocks.get(keys[pos])
                    if data is not None:
                        self._hits += 1
                        found[pos] = cast(B, data)
                    elif (flight := self._flights.get(keys[pos])) is not None:
                        self._waits += 1
                        theirs.append((pos, flight))
                    else:
                        self._misses += 1
                        flight = self._flights[keys[pos]] = _Flight()
                        mine.append((pos, flight))
            if mine:
                claim = Reservation(self, [(keys[pos], flight) for pos, flight in mine])
                with claim:
                    blocks = fetch(list(claim.keys))
                    if len(blocks) != len(mine):
                        raise ValueError(f"fetch returned {len(blocks)} blocks for {len(mine)}")
                    for (pos, _), key, data in zip(mine, claim.keys, blocks, strict=True):
                        claim.fulfil(key, data)
                        found[pos] = data
            # Our own flights are settled before we wait, so two callers never wait on
            # each other's flights.
            todo = []
            for pos, flight in theirs:
                data = flight.wait()
                if data is None:
                    todo.append(pos)
                else:
                    found[pos] = cast(B, data)
        return [found[pos] for pos in range(len(keys))]

    def reserve(self, keys: Iterable[K]) -> Reservation[K]:
        """Claim the keys that are neither stored nor being fetched, for a fetch to come.

        Other callers wait for reserved keys until the reservation settles them, so the
        holder must use it as a context manager or settle every key itself.
        """
        claimed: list[tuple[K, _Flight]] = []
        with self._lock:
            for key in keys:
                if key not in self._blocks and key not in self._flights:
                    flight = self._flights[key] = _Flight()
                    claimed.append((key, flight))
        return Reservation(self, claimed)

    def _store(self, key: Hashable, data: Block) -> None:
        self._blocks.put(key, data)

    def _settle(self, key: Hashable, flight: _Flight, data: Block | None) -> None:
        # Storing and forgetting the flight in one critical section leaves no moment in
        # which a newcomer finds neither and fetches the key a second time.
        with self._lock:
            if data is not None:
                self._store(key, data)
            if self._flights.get(key) is flight:
                del self._flights[key]


class Reservation(Generic[K]):
    """Keys claimed by one fetcher, each to be settled exactly once.

    ``fulfil`` settles one key with its bytes. ``fail`` settles the rest with an error that
    their waiters re-raise; ``release`` settles the rest with nothing, so waiters fetch for
    themselves. Used as a context manager it fails the rest with the exception that ended
    the block (a real error, not an interrupt, and not inside ``guessing()``) and releases
    them otherwise. Not shared between threads: one fetcher owns it at a time.
    """

    def __init__(self, cache: BlockCache, claimed: Sequence[tuple[K, _Flight]]) -> None:
        self._cache = cache
        self._open: dict[K, _Flight] = dict(claimed)
        self.keys: tuple[K, ...] = tuple(key for key, _ in claimed)

    def fulfil(self, key: K, data: Block) -> None:
        flight = self._open.pop(key)
        flight.data = data
        self._cache._settle(key, flight, data)
        flight.settle()

    def fail(self, error: BaseException) -> None:
        for key, flight in self._take_open():
            flight.error = error
            self._cache._settle(key, flight, None)
            flight.settle()

    def release(self) -> None:
        for key, flight in self._take_open():
            self._cache._settle(key, flight, None)
            flight.settle()

    def _take_open(self) -> list[tuple[K, _Flight]]:
        items = list(self._open.items())
        self._open.clear()
        return items

    def __enter__(self) -> Reservation[K]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, Exception) and not _GUESSING.get():
            self.fail(exc)
        else:
            self.release()

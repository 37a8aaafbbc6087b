"""A shared, byte-bounded LRU of immutable file blocks, with single-flight fetching.

Keys must name immutable bytes: callers put the file version in the key, so a new version
is a new key and stale bytes can never be served. The cache never fetches anything itself;
callers pass the fetch in, and it is always called without the cache's lock held.

Single flight: a key that someone is fetching has a ``_Flight``. Other callers wait on it
instead of fetching again. Whoever created a flight must settle it (with bytes, an error
or a release), which ``Reservation`` guarantees by settling leftovers on exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

from cachetools import LRUCache

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of counters. ``waits`` counts lookups that joined someone else's fetch."""

    hits: int
    misses: int
    waits: int
    evictions: int
    blocks: int
    bytes_cached: int
    max_bytes: int


class _Lru(LRUCache[Hashable, bytes]):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, getsizeof=len)
        self.evictions = 0

    def popitem(self) -> tuple[Hashable, bytes]:
        # cachetools calls popitem only to make room, so every call is an eviction.
        item = super().popitem()
        self.evictions += 1
        return item


class _Flight:
    """One fetch in progress. ``data`` and ``error`` are written once, before ``done``."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None

    def wait(self) -> bytes | None:
        """The fetched bytes; None if the fetcher gave up without a result (retry)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.data


class BlockCache:
    """Thread-safe LRU of blocks bounded by their total length in bytes.

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

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._blocks.get(key)
            if data is None:
                self._misses += 1
            else:
                self._hits += 1
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        with self._lock:
            self._store(key, data)

    def clear(self) -> None:
        """Drop every stored block. Fetches in flight still complete and store theirs."""
        with self._lock:
            evictions = self._blocks.evictions
            self._blocks.clear()
            # Older cachetools clear through popitem; emptying on request is not eviction.
            self._blocks.evictions = evictions

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                waits=self._waits,
                evictions=self._blocks.evictions,
                blocks=len(self._blocks),
                bytes_cached=int(self._blocks.currsize),
                max_bytes=self.max_bytes,
            )

    def get_or_fetch(self, key: Hashable, fetch: Callable[[], bytes]) -> bytes:
        """The block for ``key``, calling ``fetch`` only if nobody has it or is fetching it."""
        return self.get_or_fetch_many([key], lambda _keys: [fetch()])[0]

    def get_or_fetch_many(
        self, keys: Sequence[K], fetch: Callable[[list[K]], Sequence[bytes]]
    ) -> list[bytes]:
        """The blocks for ``keys``, in order.

        ``fetch`` gets the keys that are neither stored nor being fetched by another caller
        (in the order given) and must return one block for each. Keys being fetched by
        others are waited for. Any error, ours or the other fetcher's, propagates and stores
        nothing for the keys it covers.
        """
        found: dict[int, bytes] = {}
        todo = list(range(len(keys)))
        while todo:
            mine: list[tuple[int, _Flight]] = []
            theirs: list[tuple[int, _Flight]] = []
            with self._lock:
                for pos in todo:
                    data = self._blocks.get(keys[pos])
                    if data is not None:
                        self._hits += 1
                        found[pos] = data
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
                    found[pos] = data
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

    def _store(self, key: Hashable, data: bytes) -> None:
        if len(data) <= self.max_bytes:
            self._blocks[key] = data

    def _settle(self, key: Hashable, flight: _Flight, data: bytes | None) -> None:
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
    the block (a real error, not an interrupt) and releases them otherwise. Not shared
    between threads: one fetcher owns it at a time.
    """

    def __init__(self, cache: BlockCache, claimed: Sequence[tuple[K, _Flight]]) -> None:
        self._cache = cache
        self._open: dict[K, _Flight] = dict(claimed)
        self.keys: tuple[K, ...] = tuple(key for key, _ in claimed)

    def fulfil(self, key: K, data: bytes) -> None:
        flight = self._open.pop(key)
        flight.data = data
        self._cache._settle(key, flight, data)
        flight.done.set()

    def fail(self, error: BaseException) -> None:
        for key, flight in self._take_open():
            flight.error = error
            self._cache._settle(key, flight, None)
            flight.done.set()

    def release(self) -> None:
        for key, flight in self._take_open():
            self._cache._settle(key, flight, None)
            flight.done.set()

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
        if isinstance(exc, Exception):
            self.fail(exc)
        else:
            self.release()

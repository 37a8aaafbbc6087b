"""Tests of the shared block cache: byte-bounded LRU and single-flight fetching."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable

import pytest

from fwfs.blockcache import BlockCache, guessing


class Boom(Exception):
    pass


def wait_until(condition: Callable[[], bool]) -> None:
    """Wait for another thread to reach a state; pytest-timeout ends a test that never does."""
    while not condition():
        time.sleep(0.001)


def test_get_put_and_counters() -> None:
    cache = BlockCache(100)
    assert cache.get("a") is None
    cache.put("a", b"xyz")
    assert cache.get("a") == b"xyz"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.blocks, stats.bytes_cached) == (1, 1, 1, 3)
    assert stats.max_bytes == 100


def test_bounded_by_bytes_and_evicts_least_recently_used() -> None:
    cache = BlockCache(10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # b is now the least recently used
    cache.put("c", b"cccc")
    assert cache.get("b") is None
    assert cache.get("a") == b"aaaa"
    assert cache.get("c") == b"cccc"
    stats = cache.stats()
    assert stats.evictions == 1
    assert stats.bytes_cached == 8 <= stats.max_bytes


def test_many_small_blocks_stay_under_the_byte_bound() -> None:
    cache = BlockCache(1000)
    for i in range(500):
        cache.put(i, bytes(7))
        assert cache.stats().bytes_cached <= 1000
    stats = cache.stats()
    assert stats.blocks == 1000 // 7
    assert stats.evictions == 500 - 1000 // 7
    assert cache.get(499) is not None and cache.get(0) is None


def test_a_block_larger_than_the_cache_is_returned_but_not_stored() -> None:
    cache = BlockCache(4)
    assert cache.get_or_fetch("big", lambda: b"12345") == b"12345"
    cache.put("big2", b"12345")
    assert cache.get("big") is None and cache.get("big2") is None
    assert cache.stats().bytes_cached == 0


def test_zero_capacity_stores_nothing_and_negative_is_refused() -> None:
    cache = BlockCache(0)
    assert cache.get_or_fetch("k", lambda: b"x") == b"x"
    assert cache.get("k") is None
    with pytest.raises(ValueError):
        BlockCache(-1)


def test_clear_empties_but_keeps_history() -> None:
    cache = BlockCache(8)
    for key in "abc":
        cache.put(key, b"1234")
    cache.clear()
    stats = cache.stats()
    assert (stats.blocks, stats.bytes_cached, stats.evictions) == (0, 0, 1)
    assert cache.get("c") is None


def test_slices_of_one_buffer_count_the_whole_buffer_until_the_last_goes() -> None:
    cache = BlockCache(100)
    first, second = memoryview(bytes(range(40))), memoryview(bytes(40))
    for i in range(4):
        cache.put(("first", i), first[i * 10 : (i + 1) * 10])
        cache.put(("second", i), second[i * 10 : (i + 1) * 10])
    assert cache.stats().bytes_cached == 80
    assert cache.get(("first", 2)) == bytes(range(20, 30))
    # 30 more bytes do not fit. Evicting every slice of `second` frees its 40 bytes;
    # `first` stays counted whole for as long as one slice of it is kept.
    cache.put("third", bytes(30))
    assert [cache.get(("first", i)) is not None for i in range(4)] == [False, False, True, False]
    assert all(cache.get(("second", i)) is None for i in range(4))
    assert cache.stats().bytes_cached == 40 + 30 <= 100


def test_a_slice_of_a_buffer_larger_than_the_cache_is_kept_as_a_copy() -> None:
    cache = BlockCache(16)
    big = bytes(range(64))
    cache.put("k", memoryview(big)[8:16])
    assert cache.get("k") == big[8:16]
    assert cache.stats().bytes_cached == 8


def test_get_or_fetch_fetches_once_then_hits() -> None:
    cache = BlockCache(100)
    calls: list[str] = []

    def fetch() -> bytes:
        calls.append("k")
        return b"data"

    assert cache.get_or_fetch("k", fetch) == b"data"
    assert cache.get_or_fetch("k", fetch) == b"data"
    assert calls == ["k"]
    assert (cache.stats().hits, cache.stats().misses) == (1, 1)


def test_fetch_runs_without_the_lock_held() -> None:
    cache = BlockCache(100)
    cache.put("other", b"o")
    # A fetch that uses the cache would deadlock if the cache's lock were held around it.
    assert cache.get_or_fetch("k", lambda: bytes(cache.get("other") or b"") + b"k") == b"ok"


def test_concurrent_callers_of_a_missing_key_share_one_fetch() -> None:
    cache = BlockCache(100)
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_fetch() -> bytes:
        calls.append(1)
        entered.set()
        release.wait()
        return b"shared"

    results: list[bytes] = []

    def reader() -> None:
        results.append(cache.get_or_fetch("k", slow_fetch))

    threads = [threading.Thread(target=reader) for _ in range(5)]
    threads[0].start()
    entered.wait()
    for t in threads[1:]:
        t.start()
    wait_until(lambda: cache.stats().waits == 4)
    release.set()
    for t in threads:
        t.join()
    assert calls == [1]
    assert results == [b"shared"] * 5


def test_a_failed_fetch_reaches_every_waiter_and_caches_nothing() -> None:
    cache = BlockCache(100)
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def failing_fetch() -> bytes:
        calls.append(1)
        entered.set()
        release.wait()
        raise Boom("remote down")

    errors: list[BaseException] = []

    def reader() -> None:
        try:
            cache.get_or_fetch("k", failing_fetch)
        except Boom as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    threads[0].start()
    entered.wait()
    for t in threads[1:]:
        t.start()
    wait_until(lambda: cache.stats().waits == 2)
    release.set()
    for t in threads:
        t.join()
    assert calls == [1]
    assert len(errors) == 3 and all(e is errors[0] for e in errors)
    assert cache.get("k") is None
    # Nothing of the failure lingers: the next caller fetches again.
    assert cache.get_or_fetch("k", lambda: b"ok") == b"ok"


def test_a_failed_guess_leaves_its_waiters_to_fetch_for_themselves() -> None:
    """A guess ahead of the program (an archive's bulk fetch, a member inflated ahead) may
    meet an error the program's own read would not: the reader waiting on it must fetch
    the block itself, not be handed the guess's error (found by the reference model: a
    short body met by a bulk fetch surfaced as EIO to a later plain read)."""
    cache = BlockCache(100)
    entered, release = threading.Event(), threading.Event()

    def failing_guess(keys: list[str]) -> list[bytes]:
        entered.set()
        release.wait()
        raise Boom("short body")

    def guess() -> None:
        with contextlib.suppress(Boom), guessing():
            cache.get_or_fetch_many(["k"], failing_guess)

    got: list[bytes] = []
    guesser = threading.Thread(target=guess)
    guesser.start()
    entered.wait()
    program = threading.Thread(
        target=lambda: got.extend(cache.get_or_fetch_many(["k"], lambda keys: [b"own"]))
    )
    program.start()
    wait_until(lambda: cache.stats().waits == 1)
    release.set()
    guesser.join()
    program.join()
    assert got == [b"own"]
    assert cache.get("k") == b"own"


def test_get_or_fetch_many_fetches_only_the_missing_keys_in_order() -> None:
    cache = BlockCache(100)
    cache.put(2, b"two")
    asked: list[list[int]] = []

    def fetch(keys: list[int]) -> list[bytes]:
        asked.append(keys)
        return [str(k).encode() for k in keys]

    assert cache.get_or_fetch_many([1, 2, 3], fetch) == [b"1", b"two", b"3"]
    assert asked == [[1, 3]]
    assert cache.get_or_fetch_many([3, 1], fetch) == [b"3", b"1"]
    assert asked == [[1, 3]]


def test_get_or_fetch_many_refuses_a_wrong_number_of_blocks() -> None:
    cache = BlockCache(100)
    with pytest.raises(ValueError):
        cache.get_or_fetch_many([1, 2], lambda keys: [b"only one"])
    assert cache.stats().blocks == 0
    assert cache.get_or_fetch_many([1, 2], lambda keys: [b"a", b"b"]) == [b"a", b"b"]


def test_reserve_claims_only_free_keys_and_waiters_get_the_fulfilled_bytes() -> None:
    cache = BlockCache(100)
    cache.put("cached", b"c")
    claim = cache.reserve(["cached", "a", "b"])
    assert claim.keys == ("a", "b")
    assert cache.reserve(["a", "b"]).keys == ()  # already claimed
    got: list[bytes] = []
    waiter = threading.Thread(target=lambda: got.append(cache.get_or_fetch("a", lambda: b"no")))
    waiter.start()
    wait_until(lambda: cache.stats().waits == 1)
    claim.fulfil("a", b"A")
    waiter.join()
    assert got == [b"A"]
    claim.release()
    assert cache.get("b") is None
    assert cache.reserve(["b"]).keys == ("b",)  # released keys are free again


def test_released_keys_are_fetched_by_their_waiters() -> None:
    cache = BlockCache(100)
    claim = cache.reserve(["k"])
    got: list[bytes] = []
    waiter = threading.Thread(target=lambda: got.append(cache.get_or_fetch("k", lambda: b"own")))
    waiter.start()
    wait_until(lambda: cache.stats().waits == 1)
    claim.release()
    waiter.join()
    assert got == [b"own"]


def test_a_reservation_fails_its_leftovers_with_the_error_that_ended_it() -> None:
    cache = BlockCache(100)
    errors: list[BaseException] = []
    claim = cache.reserve(["k"])

    def waiter() -> None:
        try:
            cache.get_or_fetch("k", lambda: b"never")
        except Boom as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: cache.stats().waits == 1)
    with pytest.raises(Boom), claim:
        raise Boom("fetch failed")
    thread.join()
    assert len(errors) == 1
    assert cache.get("k") is None


def test_keys_can_be_any_hashable() -> None:
    cache = BlockCache(100)
    key: Hashable = (("file-id", 3), 7)
    cache.put(key, b"v")
    assert cache.get((("file-id", 3), 7)) == b"v"
    assert cache.get((("file-id", 4), 7)) is None

"""``ArchiveConfig``: the thresholds and sizes that decide how members of an archive are read.

A module of its own so that the reader and the bulk fetch, which both follow it, import it
from below rather than from each other.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class ArchiveConfig:
    """When to stop asking the server for members one by one, and what counts as large.

    ``scan_members``: reading more distinct members than this switches the archive to
    local reads. 8: a tool looking at a few slices stays at one request each, and a scan of
    a series of hundreds of slices pays for at most 8 members twice.
    ``scan_fraction``: members fetched one by one adding up to this fraction of the
    archive's size also switch it, so an archive of a few big members is not downloaded
    twice. 0.25: by then the central directory costs little next to what was fetched.
    ``large_member``: members larger than this are read in place or streamed instead of
    fetched whole. 8 MiB: above any single-frame DICOM slice (0.1-1 MB), and the request
    size of the ranged reader, so a whole-member fetch is never slower than one request.
    ``member_block``: the unit in which decompressed bytes are cached. 1 MiB holds a
    typical slice in one block.
    ``max_streams``: live decompressors kept per large compressed member, so a few readers
    at different positions do not restart each other.
    ``sweep_step``: while local reads jump around the archive (a scan in name order of an
    archive stored in another order), each read also advances a sequential read of the
    whole archive by this much, whose readahead then brings the archive in large requests
    instead of one request per member. Only for archives that fit in half the cache, so
    the sweep never evicts what it fetched before it is used. 1 MiB: the ranged reader's
    first readahead window. 0 turns it off.
    ``bulk_span`` / ``bulk_parts``: when a program reads a second member from the archive
    bytes, the members' bytes not yet cached are fetched at once, as up to ``bulk_parts``
    ranged requests in flight together (each 1 MiB or more): all of them when they fit in
    ``bulk_span`` and a quarter of the cache, else that much ahead of the member being
    read, after which readahead carries on. Readahead reaches the same bytes in requests
    asked for as the reader moves on; a program that reads members faster than those
    arrive (cat, cp; dcm2niix over a 150 ms link: 0.2 s less) waits for about one round
    trip instead. dcm2niix at 40 ms is slower than the link either way: no change. Only
    with a ``prefetch`` pool; 0 turns it off.
    ``inflate_ahead``: once the bulk fetch has run, each read of a member also has the
    next this many members (in listing order, among those the bulk fetch brought, and no
    more bytes than a sixteenth of the cache) decompressed into the cache on the
    ``prefetch`` pool, so that a program reading them one by one finds them ready instead
    of waiting for zlib at each open (a DICOM slice: ~0.5 ms). 0 turns it off.
    """

    scan_members: int = 8
    scan_fraction: float = 0.25
    large_member: int = 8 * MiB
    member_block: int = 1 * MiB
    max_streams: int = 2
    sweep_step: int = 1 * MiB
    bulk_span: int = 32 * MiB
    bulk_parts: int = 4
    inflate_ahead: int = 16

    def __post_init__(self) -> None:
        if self.scan_members < 0 or self.scan_fraction < 0:
            raise ValueError("scan thresholds must not be negative")
        if self.large_member < 0 or self.member_block < 1 or self.max_streams < 1:
            raise ValueError("need large_member >= 0, member_block >= 1, max_streams >= 1")
        if self.sweep_step < 0:
            raise ValueError("sweep_step must not be negative")
        if self.bulk_span < 0 or self.bulk_parts < 1 or self.inflate_ahead < 0:
            raise ValueError("need bulk_span >= 0, bulk_parts >= 1 and inflate_ahead >= 0")

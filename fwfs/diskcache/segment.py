"""The disk cache's file format: one file per megabyte (a *segment*) of a file version.

A segment file holds the blocks of one version whose first byte lies in one aligned
``SEGMENT`` of the file (eight 128 KiB blocks with the default block size)::

    header   magic "fwfsseg1", number of entries             (16 bytes)
    table    per entry: start, length, XXH3-64 of its bytes  (24 bytes each)
    data     the entries' bytes, in table order

One file per megabyte rather than per block: a re-read from the disk cache opens, reads
and closes an eighth as many files, and the cold disk reads 1 MiB runs instead of one
inode and 128 KiB at a time (see ``DiskCache.load_many``); a 10 GiB cache is 10,000 files,
not 80,000.

Nothing in a file is trusted because of its name or its table alone: each entry's checksum
is seeded with the name of the block it claims to be (``<file_id>.<version>.<start>.
<length>``), so bytes of another block, another version or another file moved or copied in
fail, and so does a table that a torn write left pointing at the wrong bytes.

Imports nothing from fwfs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import xxhash

Block = bytes | memoryview

SEGMENT = 1 << 20
MAGIC = b"fwfsseg1"
HEAD = struct.Struct("<8sI4x")
ENTRY = struct.Struct("<QI4xQ")  # start, length, checksum
# More entries than this is no file fwfs wrote (1 MiB of 4 KiB blocks is 256); and a
# writev takes at most IOV_MAX (1024) buffers.
MAX_ENTRIES = 512
_PAGE = 4096

# (start, length) -> (offset of its bytes in the file, checksum)
Table = dict[tuple[int, int], tuple[int, int]]
# A block's bytes, checked, and their checksum.
Checked = tuple[memoryview, int]


def checksum(data: Block, part: str, start: int, length: int) -> int:
    """XXH3-64 of the bytes, seeded by the block's name. XXH3 runs at tens of GB/s where
    zlib's CRC-32 ran at about 2 GB/s: CRC-32 was 0.45 s of CPU for every GiB read from
    the cache, on the read path."""
    seed = xxhash.xxh3_64_intdigest(f"{part}.{start}.{length}".encode())
    return xxhash.xxh3_64_intdigest(data, seed)


def index(start: int) -> int:
    """The segment a block starting at ``start`` belongs to."""
    return start // SEGMENT


def name(part: str, segment: int) -> str:
    return f"{part}.{segment}"


def version_of(file_name: str) -> str | None:
    """``<file_id>.<version>`` of a segment file's name; None for any other name (a
    temporary file, or a block file of an older fwfs)."""
    head, dot, tail = file_name.rpartition(".")
    if not dot or not tail.isdigit() or head.count(".") != 1:
        return None
    return head


def footprint(length: int) -> int:
    """Disk one block of ``length`` bytes takes at most: its bytes and table entry, and the
    header, in whole 4 KiB pages (an upper bound: a segment shares its header and its last
    page among its blocks)."""
    return -(-(HEAD.size + ENTRY.size + length) // _PAGE) * _PAGE


def size_on_disk(file_size: int) -> int:
    return -(-file_size // _PAGE) * _PAGE


def parse(raw: bytes, segment: int) -> Table | None:
    """The table of the bytes of segment ``segment``'s file, or None if they are not a
    whole file of that segment (torn, truncated, extended, another segment's, not ours)."""
    if len(raw) < HEAD.size:
        return None
    magic, count = HEAD.unpack_from(raw)
    if magic != MAGIC or not 0 < count <= MAX_ENTRIES:
        return None
    offset = HEAD.size + count * ENTRY.size
    if len(raw) < offset:
        return None
    table: Table = {}
    for k in range(count):
        start, length, crc = ENTRY.unpack_from(raw, HEAD.size + k * ENTRY.size)
        if index(start) != segment:
            return None
        table[(start, length)] = (offset, crc)
        offset += length
    return table if offset == len(raw) else None


def count(raw: bytes) -> int:
    """Blocks a segment file's first bytes say it holds (0 if they are not a header)."""
    if len(raw) < HEAD.size:
        return 0
    magic, entries = HEAD.unpack_from(raw)
    return entries if magic == MAGIC and entries <= MAX_ENTRIES else 0


def pack(entries: Iterable[tuple[int, Block, int]]) -> list[Block]:
    """The buffers of a segment file holding ``(start, bytes, checksum)`` entries, in order
    of ``start``."""
    ordered = sorted(entries, key=lambda e: (e[0], len(e[1])))
    table = b"".join(ENTRY.pack(start, len(data), crc) for start, data, crc in ordered)
    return [HEAD.pack(MAGIC, len(ordered)) + table, *(data for _, data, _ in ordered)]


def blocks(raw: bytes, part: str, segment: int) -> dict[tuple[int, int], Checked] | None:
    """Every block of the bytes of ``part``'s segment file ``segment``, each checked, as
    a view of ``raw`` (no copy) and its checksum; None if the file or any block fails its
    check. All are
    checked, not only those asked for: XXH3 checks a megabyte in about 20 us, and a file
    with one bad block is not trusted for the others."""
    table = parse(raw, segment)
    if table is None:
        return None
    view = memoryview(raw)
    out: dict[tuple[int, int], Checked] = {}
    for (start, length), (offset, crc) in table.items():
        block = view[offset : offset + length]
        if checksum(block, part, start, length) != crc:
            return None
        out[(start, length)] = (block, crc)
    return out

"""The disk cache's directory: made private, listed, measured and cleared (`fwfs cache`).

Layout under the root (mode 0700; files 0600)::

    CACHEDIR.TAG                               backup tools skip the directory
    blocks/<xx>/<file_id>.<version>.<segment>  one segment file (fwfs/diskcache/segment.py)

``xx`` is a hash of ``<file_id>.<version>``, so the segments of one version share a
directory and no directory grows past a few thousand entries.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from fwfs.diskcache import segment
from fwfs.errors import InvalidArgument

log = logging.getLogger("fwfs.diskcache")

TMP_PREFIX = ".tmp."
_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# fwfs's disk cache of Flywheel file blocks; see `fwfs cache clear`.\n"
)


@dataclass(frozen=True)
class Usage:
    """What a listing of the directory shows (`fwfs cache stats`)."""

    blocks: int
    bytes: int
    files: int


def prepare_dir(root: Path) -> None:
    """``root`` as a private directory: made with mode 0700, or, when it exists, ours (the
    blocks are patient data: another user's directory is refused) and tightened to 0700."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = root.stat()
        if st.st_uid != os.getuid():
            raise InvalidArgument(f"cache directory {root} belongs to another user")
        if st.st_mode & 0o077:
            log.info("cache directory %s: mode %o -> 700", root, st.st_mode & 0o777)
            root.chmod(0o700)
        (root / "blocks").mkdir(exist_ok=True, mode=0o700)
    except OSError as err:
        raise InvalidArgument(f"cannot use {root} as the disk cache: {err.strerror}") from None
    tag = root / "CACHEDIR.TAG"
    if not tag.exists():
        with contextlib.suppress(OSError):
            fd = os.open(tag, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(_TAG)


def entries(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every entry of every shard directory; entries that vanish meanwhile are skipped."""
    try:
        shards = list(os.scandir(root / "blocks"))
    except FileNotFoundError:
        return
    for shard in shards:
        try:
            with os.scandir(shard.path) as found:
                yield from found
        except (FileNotFoundError, NotADirectoryError):
            continue


def _blocks_in(path: str) -> int:
    try:
        with open(path, "rb") as f:
            return segment.count(f.read(segment.HEAD.size))
    except OSError:
        return 0


def usage(root: Path) -> Usage:
    """Blocks, bytes on disk and file versions in the cache at ``root`` now."""
    blocks = size = 0
    versions: set[str] = set()
    for entry in entries(root):
        version = segment.version_of(entry.name)
        if version is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            size += entry.stat().st_blocks * 512
            blocks += _blocks_in(entry.path)
            versions.add(version)
    return Usage(blocks, size, len(versions))


def clear(root: Path) -> int:
    """Remove every block; returns how many. Safe while mounts use the cache: a block
    removed under a reader is a miss (or, once open, still read whole), and the
    directories stay so writers in flight land their files."""
    removed = 0
    for entry in entries(root):
        held = _blocks_in(entry.path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += held
    return removed


def show(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def cache_command(
    action: str, cache_dir: Path | None, cache_home: Path, out: TextIO, err: TextIO
) -> int:
    """`fwfs cache stats|clear [--cache-dir DIR]`: that cache, or every site's under
    ``cache_home`` (``~/.cache/fwfs/cache/<site host>``). Clearing is safe while mounts
    use a cache (see ``clear``); they go on keeping blocks."""
    if cache_dir is not None:
        roots = [cache_dir.expanduser()]
        if not (roots[0] / "blocks").is_dir():
            print(f"fwfs: {roots[0]} is not a disk cache (no blocks/ in it)", file=err)
            return 1
    else:
        base = cache_home / "fwfs" / "cache"
        roots = sorted(p for p in base.glob("*/blocks") if p.is_dir())
        roots = [p.parent for p in roots]
        if not roots:
            print(f"no disk cache under {base}", file=out)
            return 0
    for root in roots:
        if action == "clear":
            print(f"{root}: {clear(root)} blocks removed", file=out)
        else:
            now = usage(root)
            print(
                f"{root}: {now.blocks} blocks of {now.files} file versions, "
                f"{show(now.bytes)} on disk",
                file=out,
            )
    return 0

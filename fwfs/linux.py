"""What the daemon asks of Linux and glibc beyond FUSE itself: the kernel's readahead of
the mount, glibc's malloc arenas and trimming, and `-o` parsed into FUSE mount options.

Each is best effort: where it is not allowed (readahead needs root) or not glibc, fwfs
works as before, only slower or larger.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import threading
from typing import Any

log = logging.getLogger("fwfs.fuse")  # with the FUSE adapter: these lines are about the mount

_M_ARENA_MAX = -8  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
# The kernel reads ahead 128 KiB (256 KiB for `cat`) in reads of that size: one Python
# callback each. With 1 MiB it sends 1 MiB reads, and a cold read's callbacks fall 4-fold.
READAHEAD_KIB = 1024


def fuse_options(values: list[str]) -> dict[str, Any]:
    """`-o a,b=c -o d` as mfusepy takes them: {"a": True, "b": "c", "d": True}."""
    opts: dict[str, Any] = {}
    for value in values:
        for item in value.split(","):
            if not item:
                continue
            key, eq, val = item.partition("=")
            opts[key] = val if eq else True
    return opts


def _libc() -> ctypes.CDLL:
    """glibc, for its malloc tunables (OSError or AttributeError where it is not glibc)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def limit_malloc_arenas() -> None:
    """glibc gives each thread its own malloc arena; with a pool of readers moving 8 MiB
    bodies, freed memory then sits in many arenas and the daemon's RSS outgrows its cache
    budget. Two arenas keep it within (measured: 433 -> 403 MiB peak, 256M cache).

    Response bodies of up to 8 MiB each would be fresh mmaps, page-faulted in and unmapped
    again per request; served from the heap below 16 MiB they are reused (measured on a
    1 GiB cold read: 205k -> 100k page faults, daemon CPU 1.12 -> 0.98 s)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = _libc()
        libc.mallopt(_M_ARENA_MAX, 2)
        libc.mallopt(_M_MMAP_THRESHOLD, 16 << 20)


def trim_memory(stop: threading.Event, every: float = 5.0) -> None:
    """glibc keeps freed response bodies (up to 8 MiB each) in its per-thread pools: after a
    load the daemon's RSS stayed ~50 MiB over its live memory (malloc_trim: 145 -> 97 MiB).
    Handing free pages back every few seconds keeps the resting RSS at what is in use."""
    try:
        trim = _libc().malloc_trim
    except (OSError, AttributeError):
        return
    while not stop.wait(every):
        trim(0)


def mount_table() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of every mount, once per mount (stacked mounts
    repeat), from /proc/self/mounts: reading it touches no mount, so a hung daemon cannot
    hang the reader. The kernel escapes space, tab, newline and backslash there as octal."""
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
        return [
            (re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]), fields[2])
            for fields in map(str.split, f)
            if len(fields) > 2
        ]


def raise_readahead(mountpoint: str, ready: threading.Event) -> None:
    """Once `ready` (the mount is up), raise the kernel's readahead of it to
    `READAHEAD_KIB`, in a thread of its own. Only root may (in sysfs, per mount); for
    others it stays as it is."""
    # Resolved now: once mounted, resolving the path would ask this very daemon.
    where = os.path.realpath(mountpoint)

    def run() -> None:
        if not ready.wait(60):
            return
        # As the kernel writes mount points in mountinfo; found there, not by a stat that
        # would go through the mount.
        escaped = where
        for char, code in (("\\", "\\134"), (" ", "\\040"), ("\t", "\\011"), ("\n", "\\012")):
            escaped = escaped.replace(char, code)
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                devices = [
                    fields[2]
                    for fields in map(str.split, f)
                    if fields[4] == escaped and fields[fields.index("-") + 1].startswith("fuse")
                ]
            if not devices:
                return
            knob = f"/sys/class/bdi/{devices[-1]}/read_ahead_kb"
            with open(knob, "r+", encoding="ascii") as f:
                if int(f.read()) < READAHEAD_KIB:
                    f.seek(0)
                    f.write(str(READAHEAD_KIB))
                    log.debug("kernel readahead of %s: %d KiB", where, READAHEAD_KIB)
        except (OSError, ValueError) as err:
            log.debug("kernel readahead left as it is: %s", err)

    threading.Thread(target=run, name="fwfs-readahead", daemon=True).start()

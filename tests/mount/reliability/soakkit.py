"""The workers of the soak (test_soak.py): each runs as its own process, against one mount,
until a deadline, and prints one JSON report on stdout.

    python soakkit.py reader   MANIFEST SEED UNTIL
    python soakkit.py lister   MANIFEST SEED UNTIL
    python soakkit.py uploader MANIFEST SEED UNTIL UPLOAD_DIR ACQ_ID

MANIFEST (written by the test) names the mount's project directory, the site's SDK key and
every file of the project with the path of its reference copy (downloaded by the SDK
before the load starts). Readers compare random ranges of files read through the mount
with the reference; listers walk the project and check every file is listed with its
size; uploaders write files into their own acquisition directory, close them, and check
with the SDK that the site holds exactly those bytes.

Every failure is counted and its first few messages are reported: the test asserts none.
"""

from __future__ import annotations

import json
import mmap
import os
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20


def load(manifest: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(manifest).read_text(encoding="utf-8"))
    return data


class Report:
    def __init__(self, role: str) -> None:
        self.role = role
        self.ops: Counter[str] = Counter()
        self.bytes = 0
        self.errors: list[str] = []
        self.error_count = 0
        self.uploaded: list[str] = []

    def fail(self, what: str) -> None:
        self.error_count += 1
        if len(self.errors) < 5:
            self.errors.append(what)

    def dump(self) -> None:
        out = {
            "role": self.role,
            "ops": dict(self.ops),
            "bytes": self.bytes,
            "errors": self.errors,
            "error_count": self.error_count,
            "uploaded": self.uploaded,
        }
        sys.stdout.write(json.dumps(out) + "\n")


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """`size` bytes at `offset`, in as many preads as the kernel makes of it."""
    parts = []
    while size > 0:
        chunk = os.pread(fd, min(size, 4 * MiB), offset)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(parts)


def reader(manifest: dict[str, Any], rng: random.Random, until: float, rep: Report) -> None:
    root = Path(manifest["root"])
    files = manifest["files"]
    big = [f for f in files if f["size"] > 8 * MiB]
    refs: dict[str, mmap.mmap] = {}

    def ref(entry: dict[str, Any]) -> mmap.mmap:
        if entry["ref"] not in refs:
            with open(entry["ref"], "rb") as f:
                refs[entry["ref"]] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return refs[entry["ref"]]

    while time.time() < until:
        draw = rng.random()
        entry = rng.choice(big) if big and draw < 0.6 else rng.choice(files)
        size = entry["size"]
        if size == 0:
            continue
        if draw < 0.1 and big:
            kind, offset = "sequential", rng.randrange(0, max(1, size - 16 * MiB))
            length = min(16 * MiB, size - offset)
        elif draw < 0.6 and big:
            kind, offset = "random_big", rng.randrange(size)
            length = rng.randrange(1, min(size - offset, 2 * MiB) + 1)
        else:
            kind, offset = "whole_small", 0
            length = size
        path = root / entry["path"]
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if kind == "sequential":
                    got = b"".join(
                        _pread_all(fd, min(MiB, offset + length - at), at)
                        for at in range(offset, offset + length, MiB)
                    )
                else:
                    got = _pread_all(fd, length, offset)
                # Out of the kernel's page cache, so that the next read of these bytes asks
                # the daemon again (its block cache, or the site), not the kernel.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        except OSError as exc:
            rep.fail(f"read {entry['path']} at {offset}+{length}: {exc!r}")
            continue
        if got != ref(entry)[offset : offset + length]:
            rep.fail(f"wrong bytes: {entry['path']} at {offset}+{length} ({len(got)} read)")
            continue
        rep.ops[kind] += 1
        rep.bytes += len(got)


def lister(manifest: dict[str, Any], rng: random.Random, until: float, rep: Report) -> None:
    root = Path(manifest["root"])
    want = {f["path"]: f["size"] for f in manifest["files"]}
    while time.time() < until:
        seen: dict[str, int] = {}
        try:
            for top, _dirs, names in os.walk(root, onerror=_raise):
                for name in names:
                    path = os.path.join(top, name)
                    seen[os.path.relpath(path, root)] = os.stat(path).st_size
        except OSError as exc:
            rep.fail(f"walk: {exc!r}")
            continue
        missing = {p for p in want if seen.get(p) != want[p]}
        if missing:
            rep.fail(
                f"walk: {len(missing)} files missing or of the wrong size, e.g. {min(missing)}"
            )
            continue
        rep.ops["walk"] += 1
        rep.ops["entries"] += len(seen)
        time.sleep(rng.random() * 0.2)


def _raise(exc: OSError) -> None:
    raise exc


def uploader(
    manifest: dict[str, Any],
    rng: random.Random,
    until: float,
    rep: Report,
    upload_dir: str,
    acq_id: str,
) -> None:
    import flywheel  # the environment of tests/conftest.py (fast SDK retries) is inherited

    fw = flywheel.Client(manifest["api_key"])
    n = 0
    while time.time() < until:
        n += 1
        name = f"soak-{rng.randrange(1 << 30):08x}-{n}.bin"
        data = rng.randbytes(rng.randrange(1, 2 * MiB))
        path = Path(upload_dir) / name
        try:
            with open(path, "wb") as f:
                step = 256 << 10
                for at in range(0, len(data), step):
                    f.write(data[at : at + step])
        except OSError as exc:
            rep.fail(f"write/close {name} ({len(data)} bytes): {exc!r}")
            continue
        try:
            stored = fw.download_file_from_container_as_data(acq_id, name)
        except Exception as exc:  # reported: the test fails on it
            rep.fail(f"SDK download of {name}: {exc!r}")
            continue
        if stored != data:
            rep.fail(f"the site holds other bytes for {name}: {len(stored)} vs {len(data)}")
            continue
        rep.ops["upload"] += 1
        rep.bytes += len(data)
        rep.uploaded.append(name)


ROLES: dict[str, Callable[..., None]] = {"reader": reader, "lister": lister, "uploader": uploader}


def main(argv: list[str]) -> int:
    role, manifest, seed, until, *extra = argv
    rep = Report(role)
    try:
        ROLES[role](load(manifest), random.Random(int(seed)), float(until), rep, *extra)
    except Exception:  # a worker that dies reports why
        rep.fail(traceback.format_exc(limit=5))
    rep.dump()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

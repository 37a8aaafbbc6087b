"""`fwfs prefetch PATH… [--mount MP | --cache-dir DIR]`: warm the disk cache.

Two readers share one walk, one budget check, one pool and one progress bar:

- ``MountReader``: PATH is inside a running fwfs mount (or under ``--mount MP``). Its files
  are read through the mount in large sequential reads; the daemon's RangedReader keeps
  what it fetches in its disk cache. The page cache is told to drop what was read
  (posix_fadvise DONTNEED), so a prefetch of a project does not push out the machine's
  other pages. The daemon is asked (its control channel, as `fwfs status` asks) whether it
  has a disk cache at all, and how large.
- ``ModelReader``: no mount; PATH is a site path (group/project/…). An in-process
  FlywheelFS, with no FUSE, reads into the disk cache at ``--cache-dir``: on a login or
  data-mover node, for compute nodes that share the directory.

Resumable by construction: a block on disk is read from disk, not fetched, so a second run
of the same selection (or the rest of an interrupted one) sends data requests only for
what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from tqdm import tqdm

from fwfs import control
from fwfs.config import ClientConfig, WalkAheadConfig, load_api_key, tls_verify_from_env
from fwfs.daemon import control_socket
from fwfs.diskcache import footprint
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS
from fwfs.fs.nodes import ARCHIVE_SUFFIX
from fwfs.inprocess import connect, default_cache_dir, mount_config
from fwfs.options import option

# Large sequential reads: readahead in the daemon (or the model) turns each into a few
# parallel ranged requests of up to 8 MiB.
CHUNK = 8 << 20
# The disk cache evicts down to 90 % of its budget once it passes it: a selection above
# that would evict its own first blocks.
KEEPS = 0.9
_BLOCK = int(option("block_size").default)
OnBytes = Callable[[int], None]


class Reader(Protocol):
    """What the walk and the pool need of a mount or of an in-process model."""

    def stat(self, path: str) -> tuple[bool, int]:
        """(is a directory, size)."""
        ...

    def listdir(self, path: str) -> list[tuple[str, bool, int]]:
        """(name, is a directory, size) of each entry."""
        ...

    def read(self, path: str, on_bytes: OnBytes, stop: threading.Event) -> None:
        """Read the whole file, calling ``on_bytes`` with each chunk's length."""
        ...

    def dropped(self) -> int:
        """Blocks the disk cache did not keep so far (a full or hung disk)."""
        ...


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


@dataclass(frozen=True)
class Plan:
    files: list[tuple[str, int]]
    # Paths that could not be listed or stat'ed, with why.
    failed: list[tuple[str, str]]

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.files)


def on_disk(size: int) -> int:
    """What a file of ``size`` bytes takes in the disk cache: per block, a header, rounded
    up to whole filesystem pages (an upper bound of diskcache's own count)."""
    full, rest = divmod(size, _BLOCK)
    return full * footprint(_BLOCK) + (footprint(rest) if rest else 0)


def plan(reader: Reader, paths: Iterable[str]) -> Plan:
    """Every file under ``paths``, each once, in walk order."""
    files: dict[str, int] = {}
    failed: list[tuple[str, str]] = []

    def walk(path: str) -> None:
        try:
            entries = reader.listdir(path)
        except (OSError, FwfsError) as err:
            failed.append((path, _why(err)))
            return
        plain = {name for name, is_dir, _ in entries if not is_dir}
        for name, is_dir, size in sorted(entries):
            child = join(path, name)
            if is_dir and name.endswith(ARCHIVE_SUFFIX) and name[: -len(ARCHIVE_SUFFIX)] in plain:
                continue  # a zip's members (--list-archives): its bytes are the zip's
            if is_dir:
                walk(child)
            else:
                files.setdefault(child, size)

    for path in paths:
        try:
            is_dir, size = reader.stat(path)
        except (OSError, FwfsError) as err:
            failed.append((path, _why(err)))
            continue
        if is_dir:
            walk(path)
        else:
            files.setdefault(path, size)
    return Plan(list(files.items()), failed)


def fitting(selection: Plan, budget: int) -> str | None:
    """None when the selection fits the disk cache; else why not, and what would fit."""
    keeps = int(budget * KEEPS)
    need = sum(on_disk(size) for _, size in selection.files)
    if need <= keeps:
        return None
    count = used = 0
    for _, size in selection.files:
        if used + on_disk(size) > keeps:
            break
        used += on_disk(size)
        count += 1
    return (
        f"the selection ({len(selection.files)} files, {_show(selection.bytes)}; "
        f"{_show(need)} on disk) is larger than the disk cache keeps: {_show(keeps)} "
        f"(90% of its {_show(budget)}). The first {count} files ({_show(used)}) would fit: "
        "select less, or give the cache more (--disk-cache)"
    )


@dataclass
class Outcome:
    done: int = 0
    bytes: int = 0
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    dropped: int = 0


def run(
    reader: Reader,
    selection: Plan,
    jobs: int = 8,
    progress: bool | None = None,
    out: IO[str] = sys.stderr,
) -> Outcome:
    """Read every file of ``selection``, ``jobs`` at a time, with a progress bar (on a
    terminal, or when ``progress`` says so). Ctrl-C stops the reads: what is on disk
    stays, and the next run goes on from there."""
    result = Outcome(failed=list(selection.failed))
    dropped_before = reader.dropped()
    stop = threading.Event()
    lock = threading.Lock()
    total = len(selection.files)
    bar = tqdm(
        total=selection.bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="prefetch",
        file=out,
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    )
    bar.set_postfix_str(f"0/{total} files")

    def counted(n: int) -> None:
        with lock:
            result.bytes += n
            bar.update(n)

    def one(path: str) -> None:
        reader.read(path, counted, stop)

    pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="fwfs-prefetch")
    try:
        futures = {pool.submit(one, path): path for path, _ in selection.files}
        for future in as_completed(futures):
            err = future.exception()
            with lock:
                if err is None:
                    result.done += 1
                else:
                    result.failed.append((futures[future], _why(err)))
                bar.set_postfix_str(f"{result.done}/{total} files")
    except KeyboardInterrupt:
        result.interrupted = True
        stop.set()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    result.dropped = reader.dropped() - dropped_before
    return result


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _show(size: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{int(size)} B"


# ---- through a running mount ----------------------------------------------------------------


class MountReader:
    """Reads files of a running fwfs mount; paths are the host's absolute paths."""

    def __init__(self, point: Path) -> None:
        self.point = point

    def status(self) -> dict[str, Any]:
        report = control.ask(control_socket(str(self.point)), {"op": "status"})
        if not isinstance(report, dict):
            raise control.ControlError("the daemon's answer is not a report")
        return report

    def stat(self, path: str) -> tuple[bool, int]:
        st = os.stat(path)
        return stat.S_ISDIR(st.st_mode), st.st_size

    def listdir(self, path: str) -> list[tuple[str, bool, int]]:
        out = []
        with os.scandir(path) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                    out.append((entry.name, stat.S_ISDIR(st.st_mode), st.st_size))
        return out

    def read(self, path: str, on_bytes: OnBytes, stop: threading.Event) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            offset = 0
            buf = bytearray(CHUNK)
            while not stop.is_set():
                n = os.readv(fd, [buf])
                if n == 0:
                    break
                # The bytes are wanted on the daemon's disk, not in this machine's memory.
                os.posix_fadvise(fd, offset, n, os.POSIX_FADV_DONTNEED)
                offset += n
                on_bytes(n)
        finally:
            os.close(fd)

    def dropped(self) -> int:
        try:
            disk = self.status().get("disk_cache")
        except control.ControlError:
            return 0  # unmounted meanwhile: its reads fail, and say so
        return int(disk.get("dropped", 0)) if isinstance(disk, dict) else 0


# ---- in this process, into a cache directory ------------------------------------------------


class ModelReader:
    """Reads site paths through an in-process FlywheelFS with a disk cache."""

    def __init__(self, fs: FlywheelFS) -> None:
        if fs.disk is None:
            raise ValueError("the model has no disk cache")
        self.fs = fs
        # No pacing here: a disk cache whose writer is behind holds the reads back itself.
        self.disk = fs.disk

    def stat(self, path: str) -> tuple[bool, int]:
        attr = self.fs.getattr(path)
        return attr.is_dir, attr.size

    def listdir(self, path: str) -> list[tuple[str, bool, int]]:
        return [
            (name, attr.is_dir, attr.size)
            for name, attr in self.fs.readdir(path)
            if name not in (".", "..")
        ]

    def read(self, path: str, on_bytes: OnBytes, stop: threading.Event) -> None:
        fh = self.fs.open(path, os.O_RDONLY).fh
        try:
            offset = 0
            while not stop.is_set():
                data = self.fs.read(fh, offset, CHUNK)
                if not data:
                    break
                offset += len(data)
                on_bytes(len(data))
        finally:
            self.fs.release(fh)

    def dropped(self) -> int:
        return self.disk.stats().dropped


def site_path(text: str) -> str:
    return "/" + text.strip("/")


# ---- the command ----------------------------------------------------------------------------


def prefetch_command(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """`fwfs prefetch`: 0 when every file is on disk, 1 naming those that are not."""
    paths: list[str] = [str(p) for p in args.paths]
    if args.mount is not None and args.cache_dir is not None:
        print("fwfs: --mount and --cache-dir go separately: give one", file=err)
        return 2
    point = args.mount.expanduser().absolute() if args.mount is not None else None
    inside = [control.mount_of(Path(p)) for p in paths]
    if point is None and args.cache_dir is None and all(inside):
        points = {found[0] for found in inside if found}
        if len(points) > 1:
            print("fwfs: the paths are in more than one mount: prefetch each", file=err)
            return 2
        point = points.pop()
    if point is not None:
        return _through_mount(args, point, paths, out, err)
    return _in_process(args, paths, out, err)


def _through_mount(
    args: argparse.Namespace, point: Path, paths: Sequence[str], out: IO[str], err: IO[str]
) -> int:
    found = control.mount_of(point)
    if found is None:
        print(f"fwfs: {point} is not an fwfs mount", file=err)
        return 1
    point = found[0]
    reader = MountReader(point)
    try:
        disk = reader.status().get("disk_cache")
    except control.ControlError as e:
        print(f"fwfs: cannot ask the mount at {point}: {e}", file=err)
        return 1
    if not isinstance(disk, dict):
        print(
            f"fwfs: the mount at {point} has no disk cache: nothing would be kept. Mount it "
            "with --disk-cache SIZE, or prefetch into a cache directory with --cache-dir",
            file=err,
        )
        return 1
    host: list[str] = []
    for p in paths:
        where = Path(p)
        if control.mount_of(where) is None:
            where = point / p.lstrip("/")  # a site path, under the mount point
        host.append(os.path.normpath(where.expanduser().absolute()))
    return _finish(args, reader, host, int(disk.get("max_bytes", 0)), out, err)


def _in_process(args: argparse.Namespace, paths: Sequence[str], out: IO[str], err: IO[str]) -> int:
    budget = int(args.disk_cache)
    if budget <= 0:
        print(
            "fwfs: prefetch into a cache directory needs its size: --disk-cache SIZE, the "
            "same the mounts that read it use (e.g. 100G)",
            file=err,
        )
        return 2
    try:
        key, _ = load_api_key(args.api_key, os.environ, Path.home())
        client_config = ClientConfig.from_api_key(key, verify=tls_verify_from_env(os.environ))
    except FwfsError as e:
        print(f"fwfs: {e}", file=err)
        return 1
    facts, problem = connect(client_config)
    if problem:
        print(f"fwfs: {problem}", file=err)
        return 1
    from fwfs.client import FlywheelClient

    cache_dir = (args.cache_dir or default_cache_dir(client_config.base_url)).expanduser()
    config = dataclasses.replace(
        mount_config(args, client_config.base_url, Path("/prefetch")),
        read_only=True,
        archives=False,
        walk_ahead=WalkAheadConfig(files=0),
        disk_cache=budget,
        cache_dir=cache_dir.absolute(),
        metadata_ttl=max(300.0, float(option("metadata_ttl").default)),
    )
    client = FlywheelClient(client_config)
    try:
        fs = FlywheelFS(client, config, facts.user_id)
    except FwfsError as e:
        client.close()
        print(f"fwfs: {e}", file=err)
        return 1
    try:
        print(f"fwfs: prefetching into {cache_dir}", file=out)
        return _finish(args, ModelReader(fs), [site_path(p) for p in paths], budget, out, err)
    finally:
        fs.close()  # writes what is queued for the disk
        client.close()


def _finish(
    args: argparse.Namespace,
    reader: Reader,
    paths: Sequence[str],
    budget: int,
    out: IO[str],
    err: IO[str],
) -> int:
    try:
        selection = plan(reader, paths)
    except KeyboardInterrupt:
        # Nothing was read yet: no traceback for a Ctrl-C while the listings come in.
        print("fwfs: interrupted while listing; nothing was prefetched", file=err)
        return 130
    refusal = fitting(selection, budget)
    if refusal:
        print(f"fwfs: nothing prefetched: {refusal}", file=err)
        return 1
    result = run(reader, selection, jobs=args.jobs, out=err)
    print(
        f"fwfs: {result.done} of {len(selection.files)} files read, {_show(result.bytes)}",
        file=out,
    )
    if result.interrupted:
        print("fwfs: interrupted; run the same command again to go on", file=err)
        return 130
    code = 0
    if result.dropped:
        again = "run again to fetch them"
        if isinstance(reader, MountReader):
            # The daemon keeps on disk what it fetches, not what its memory cache serves.
            again += (
                " (through a mount, those still in its memory cache are kept only after a remount)"
            )
        print(
            f"fwfs: {result.dropped} block(s) were not kept (the disk was full, or kept nothing "
            f"for seconds): {again}",
            file=err,
        )
        code = 1
    if result.failed:
        print(f"fwfs: {len(result.failed)} path(s) failed:", file=err)
        for path, why in result.failed:
            print(f"  {path}: {why}", file=err)
        code = 1
    return code

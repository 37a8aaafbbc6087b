"""The machinery of scripts/bench: fresh mounts of the site (the site and mount runners
are fwfs/testing's, shared with the tests), the access log's traffic, the page cache, the
machine, and the benchmark's own data on the site.

Nothing here times anything: scripts/bench.py does, case by case.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fwfs.testing.mounts import Mount, Watchdog, start_mount
from fwfs.testing.sites import Site

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
# Longer than any case takes with one mount (a 1 GiB read over a slow link included).
MOUNT_WATCHDOG = 1800.0
# Bumped whenever the benchmark's own data on the site changes shape.
DATA_SCHEMA = 4  # 4: the demo project curated for BIDS (the bids case needs it)


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[bench {stamp}] {message}", file=sys.stderr, flush=True)


# ---- the page cache, the machine ----------------------------------------------------------


def drop_caches() -> bool:
    """Write back and drop the page cache, dentries and inodes; False when not allowed."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def _first(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def _run_text(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout or out.stderr).strip() or None


def machine() -> dict[str, Any]:
    mem_kib = _first("/proc/meminfo", "MemTotal")
    commit = _run_text(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _run_text(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    from fwfs import __version__

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "nproc": os.cpu_count(),
        "memory_gib": round(int(mem_kib.split()[0]) / (1 << 20), 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "fwfs": __version__,
        "commit": (commit or "unknown") + ("+changes" if dirty else ""),
        # Where the fwfs that ran was imported from (a snapshot via PYTHONPATH, or the tree).
        "fwfs_path": str(Path(sys.modules["fwfs"].__file__ or "").parent),
        "dcm2niix": (_run_text(["dcm2niix", "-v"]) or "").splitlines()[-1:],
        "curl": ((_run_text(["curl", "--version"]) or "").splitlines() or [""])[0],
        "root": os.geteuid() == 0,
    }


# ---- the access log ------------------------------------------------------------------------


def timeline(entries: list[dict[str, Any]], t0: float) -> list[list[Any]]:
    """Access-log entries as [start s, duration s, listener, method, path, query, status,
    bytes], start relative to `t0` (monotonic), sorted by start."""
    out = []
    for e in entries:
        dur = float(e.get("duration") or 0.0)
        start = float(e["t_end"]) - dur - t0 if "t_end" in e else None
        out.append(
            [
                None if start is None else round(start, 4),
                round(dur, 4),
                e.get("listener", "core"),
                e.get("method"),
                e.get("path"),
                e.get("query") or "",
                e.get("status"),
                int(e.get("bytes") or 0),
            ]
        )
    out.sort(key=lambda r: (r[0] is None, r[0] or 0.0))
    return out


def traffic(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Requests and body bytes of some access-log entries, with the file bodies apart."""
    files = [e for e in entries if "/files/" in e["path"] and e["method"] == "GET"]
    return {
        "requests": len(entries),
        "bytes": sum(int(e.get("bytes") or 0) for e in entries),
        "file_requests": len(files),
        "file_bytes": sum(int(e.get("bytes") or 0) for e in files),
        "errors": sum(1 for e in entries if int(e.get("status") or 0) >= 400),
    }


# ---- a full disk cache ---------------------------------------------------------------------

FILL_PREFIX = "benchfill"
FILL_BLOCK = 128 << 10
# Each fake file version is 128 MiB, as a cache of many scans would hold.
FILL_VERSION = 128 << 20


def _fill_files(probe: Any) -> tuple[int, Callable[[tuple[str, int], int], str]]:
    """Bytes of data per file of the on-disk format in use, and a function that writes the
    `i`th file of a fake version as fwfs.diskcache would, its bytes zeros that
    posix_fallocate allocates without writing them (ext4: unwritten extents, counted by the
    disk). Uses the module's private layout: a change shows as AttributeError, or as a
    failed `load`, and fill_disk_cache falls back to `save`."""
    import fwfs.diskcache as dc

    cache = sys.modules.get("fwfs.diskcache.cache", dc)
    version_part = cache._version_part
    zeros = bytes(FILL_BLOCK)
    if "fwfs.diskcache.segment" in sys.modules:
        seg = sys.modules["fwfs.diskcache.segment"]
        per = seg.SEGMENT // FILL_BLOCK

        def one_segment(key: tuple[str, int], i: int) -> str:
            part = version_part(key)
            starts = [i * seg.SEGMENT + k * FILL_BLOCK for k in range(per)]
            table = b"".join(
                seg.ENTRY.pack(s, FILL_BLOCK, seg.checksum(zeros, part, s, FILL_BLOCK))
                for s in starts
            )
            head = seg.HEAD.pack(seg.MAGIC, per) + table
            path: str = probe._path(part, i)
            _allocate(path, head, len(head) + per * FILL_BLOCK)
            return path

        return per * FILL_BLOCK, one_segment

    def one_block(key: tuple[str, int], i: int) -> str:
        part = version_part(key)
        name = f"{part}.{i * FILL_BLOCK}.{FILL_BLOCK}"
        head = cache._HEADER.pack(cache._MAGIC, FILL_BLOCK, cache._checksum(zeros, name))
        path: str = probe._path(part, name)
        _allocate(path, head, len(head) + FILL_BLOCK)
        return path

    return FILL_BLOCK, one_block


def _allocate(path: str, head: bytes, size: int) -> None:
    """The file at `path`, `size` bytes, `head` then zeros; kept as it is if it exists."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    try:
        os.posix_fallocate(fd, 0, size)
        os.pwrite(fd, head, 0)
    finally:
        os.close(fd)


def _remove_others(root: Path) -> None:
    """Every file under root/blocks but the fill's: what a read through the cache kept."""
    for dirpath, _, names in os.walk(root / "blocks"):
        for name in names:
            if not name.startswith(FILL_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(dirpath, name))


def fill_disk_cache(root: Path, target: int) -> tuple[int, str]:
    """Make `root` a disk cache holding valid blocks of fake file versions up to `target`
    bytes on disk (those already there are kept and counted; every other file is removed,
    so the next read fetches its file again). Returns the bytes on disk and how: "fallocate"
    (seconds for 10 GiB) or "save" (through DiskCache.save: 10 GiB of real writes)."""
    from fwfs import diskcache

    _remove_others(root)
    probe = diskcache.DiskCache(root, 1 << 60)  # a budget nothing is evicted under
    try:
        used = 0
        try:
            unit, make = _fill_files(probe)
            per_version = FILL_VERSION // unit
            i = 0
            while used < target:
                key = (f"{FILL_PREFIX}{i // per_version:05d}", 1)
                i_in = i % per_version
                path = make(key, i_in)
                used += os.stat(path).st_blocks * 512
                i += 1
            got = probe.load(key, i_in * unit, FILL_BLOCK)
            if got is not None and bytes(got) == bytes(FILL_BLOCK):
                return used, "fallocate"
            log("  the fast fill of the disk cache is not what fwfs reads: writing it")
        except (AttributeError, TypeError, KeyError, struct.error) as err:
            log(f"  the fast fill of the disk cache failed ({err!r}): writing it")
        diskcache.clear(root)
        zeros = bytes(FILL_BLOCK)
        for i in range(target // (FILL_BLOCK + 4096)):
            per_version = FILL_VERSION // FILL_BLOCK
            key = (f"{FILL_PREFIX}{i // per_version:05d}", 1)
            probe.save(key, (i % per_version) * FILL_BLOCK, zeros)
        probe.flush()
        return diskcache.usage(root).bytes, "save"
    finally:
        probe.close()


# ---- mounts --------------------------------------------------------------------------------


class Mounter:
    """Makes fresh mounts of one site, one after another on one mount point, each with its
    own daemon, log and output (`mounts/mount-NNN/`) and a watchdog: a daemon that hangs
    is killed after MOUNT_WATCHDOG seconds, so a case fails instead of the run hanging."""

    def __init__(self, site: Site, workdir: Path) -> None:
        self.site = site
        self.workdir = workdir
        self.count = 0

    @contextlib.contextmanager
    def mount(self, *args: str) -> Iterator[Mount]:
        self.count += 1
        argv = list(args)
        if "--spool-dir" not in argv:
            # Mounts are writable: their staged uploads stay in the bench's own directory.
            argv += ["--spool-dir", str(self.workdir / "spool")]
        live: list[Mount] = []
        workdir = self.workdir / "mounts" / f"mount-{self.count:03d}"
        watchdog = Watchdog(live, MOUNT_WATCHDOG)
        mp = self.workdir / "mnt"
        with watchdog, start_mount(self.site, workdir, args=argv, mountpoint=mp, live=live) as m:
            yield m
        if watchdog.fired.is_set():
            raise RuntimeError(f"the mount hung: its watchdog killed fwfs after {MOUNT_WATCHDOG} s")

    def problems(self) -> list[str]:
        """ERROR lines, tracebacks and disk cache warnings of every mount's log."""
        out: list[str] = []
        for path in sorted((self.workdir / "mounts").glob("*/fwfs.log")):
            for line in path.read_text(errors="replace").splitlines():
                # The disk cache warns (and reads go on) when it stops keeping blocks.
                if " ERROR " in line or "Traceback" in line or "diskcache WARNING" in line:
                    out.append(f"{path.parent.name}: {line[:300]}")
        return out


# ---- the benchmark's data on the site -------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What the site holds for the benchmark: the sandbox options and the Bench project."""

    big_file_mb: int
    scale: int
    nifti_count: int
    nifti_mb: int
    zip_members: int
    zip_matrix: int

    def key(self) -> str:
        return (
            f"big{self.big_file_mb}-scale{self.scale}-nii{self.nifti_count}x{self.nifti_mb}"
            f"-zip{self.zip_members}x{self.zip_matrix}-v{DATA_SCHEMA}"
        )


BENCH_PROJECT = "Bench"
# session label -> its one acquisition: flywheel/Bench/bench/<session>/<acquisition>
BENCH_ACQUISITIONS = {
    "headers": "nifti",
    "archive": "dicom",
    "uploads": "scratch",
    "series": "dicom200",
}
# The dcm2niix workload: one 200-slice series, zipped (about 11 MB).
SERIES_ZIP = "series200.dicom.zip"
SERIES_SHAPE = (200, 256)
# A project of small files for `cp -r` against the SDK downloading them one by one:
# subjects x sessions x acquisitions x files, sizes from 8 KiB to 200 KiB.
SMALL_PROJECT = "Bench Small"
SMALL_SHAPE = (2, 5, 2, 5)


def bench_path(case: str) -> str:
    """The site path (and mount path, below the group) of a case's acquisition."""
    return f"flywheel/{BENCH_PROJECT}/bench/{case}/{BENCH_ACQUISITIONS[case]}"


ZIP_NAME = "bench.dicom.zip"
NIFTI_SHAPE = (64, 64, 32)


def nifti_name(i: int) -> str:
    return f"func_{i:03d}.nii.gz"


def make_nifti_gz(path: Path, size_mb: int, seed: int) -> None:
    """A gzipped 4D NIfTI-1 of about `size_mb` MiB: int16 noise (incompressible, so the
    .nii.gz is as large as the volume), a real header (sizeof_hdr 348, 352-byte vox_offset)."""
    import nibabel as nib
    import numpy as np

    frames = max(1, (size_mb << 20) // (NIFTI_SHAPE[0] * NIFTI_SHAPE[1] * NIFTI_SHAPE[2] * 2))
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4096, size=(*NIFTI_SHAPE, frames), dtype=np.int16)
    affine = np.diag([3.0, 3.0, 3.5, 1.0])
    # nibabel ships no type hints for its image classes.
    image: Any = nib.Nifti1Image(data, affine)  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    image.header["descrip"] = f"fwfs bench run {seed}".encode()
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
    ):
        gz.write(image.to_bytes())


def make_zip(path: Path, members: int, matrix: int) -> None:
    """A DICOM series zipped as the sandbox's demo does: one Part-10 file per slice."""
    from fwfs.sandbox import demodata

    data = demodata.dicom_series_zip(
        series_description="bench",
        shape=(members, matrix, matrix),
        voxel_mm=(1.0, 1.0, 1.0),
        patient_id="BENCH01",
        patient_name="Bench^Archive",
        study_instance_uid=demodata.derive_uid("fwfs-bench", "study"),
        series_number=1,
        acquisition_datetime=dt.datetime(2021, 6, 1, 9, 0, 0),
        seed=members + matrix,
    )
    path.write_bytes(data)


def bench_ids(fw: Any) -> dict[str, Any] | None:
    """Ids of the Bench project's containers, or None when it is not there (or partial)."""
    try:
        project = fw.lookup(f"flywheel/{BENCH_PROJECT}")
    except Exception:
        return None
    ready = (project.info or {}).get("bench_ready")
    if not ready:
        return {"partial": project.id}
    return dict(ready)


def seed_bench(fw: Any, spec: DataSpec, scratch: Path) -> dict[str, Any]:
    """Create the Bench project: NIfTI files, a zip of `zip_members` DICOM slices, and an
    acquisition for uploads. Done once per data directory, through the SDK."""
    group = fw.get_group("flywheel")
    project = group.add_project(label=BENCH_PROJECT)
    subject = project.add_subject(label="bench", code="bench")
    # One session per case: a session's listing carries its acquisitions' files, so cases
    # sharing one would pay for each other's file lists.
    acq = {}
    for case, label in BENCH_ACQUISITIONS.items():
        acq[case] = subject.add_session(label=case).add_acquisition(label=label)
    headers, archive, uploads = acq["headers"], acq["archive"], acq["uploads"]
    scratch.mkdir(parents=True, exist_ok=True)
    sizes: list[int] = []
    for i in range(spec.nifti_count):
        path = scratch / nifti_name(i)
        make_nifti_gz(path, spec.nifti_mb, seed=1000 + i)
        headers.upload_file(str(path))
        sizes.append(path.stat().st_size)
        path.unlink()
        if i % 10 == 9:
            log(f"  uploaded {i + 1} of {spec.nifti_count} NIfTI files")
    zpath = scratch / ZIP_NAME
    make_zip(zpath, spec.zip_members, spec.zip_matrix)
    archive.upload_file(str(zpath))
    zip_size = zpath.stat().st_size
    zpath.unlink()
    spath = scratch / SERIES_ZIP
    make_zip(spath, *SERIES_SHAPE)
    acq["series"].upload_file(str(spath))
    series_size = spath.stat().st_size
    spath.unlink()
    small_id, small_files, small_bytes = seed_small_project(group, scratch / "small")
    ids = {
        "spec": spec.key(),
        "project": project.id,
        "headers": headers.id,
        "archive": archive.id,
        "uploads": uploads.id,
        "nifti_sizes": sizes,
        "zip_size": zip_size,
        "series": acq["series"].id,
        "series_size": series_size,
        "small_project": small_id,
        "small_files": small_files,
        "small_bytes": small_bytes,
    }
    project.update_info({"bench_ready": ids})
    return ids


def seed_small_project(group: Any, scratch: Path) -> tuple[str, int, int]:
    """The project of small files (SMALL_SHAPE): its id, file count and bytes."""
    subjects, sessions, acquisitions, files = SMALL_SHAPE
    project = group.add_project(label=SMALL_PROJECT)
    scratch.mkdir(parents=True, exist_ok=True)
    count = total = 0
    for a in range(subjects):
        subject = project.add_subject(label=f"sub-{a + 1:02d}", code=f"sub-{a + 1:02d}")
        for b in range(sessions):
            session = subject.add_session(label=f"ses-{b + 1:02d}")
            for c in range(acquisitions):
                acq = session.add_acquisition(label=f"run-{c + 1}")
                for d in range(files):
                    size = (8 << 10) + (count * 37 % 25) * (8 << 10)  # 8 KiB .. 200 KiB
                    path = scratch / f"part-{d + 1:02d}.dat"
                    path.write_bytes(os.urandom(size))
                    acq.upload_file(str(path))
                    path.unlink()
                    count += 1
                    total += size
    return str(project.id), count, total


# ---- target rows (the shape of bench_report.targets()'s) ------------------------------------


def target_row(
    tid: str, text: str, case: str, variant: str, need: float, op: str, needed: str
) -> dict[str, Any]:
    """A target not yet judged: `judge` fills in what was measured."""
    return {
        "id": tid,
        "text": text,
        "needed": needed,
        "need": need,
        "op": op,
        "case": case,
        "variant": variant,
        "profile": None,
        "measured": None,
        "met": None,
    }


def judge(t: dict[str, Any], values: list[float], unit: str) -> None:
    """The median of per-repetition values (the variants of one repetition ran side by
    side), with their spread; nothing when nothing was measured."""
    if not values:
        return
    value = statistics.median(values)
    need, op = t["need"], t["op"]
    met = value >= need if op == ">=" else value <= need if op == "<=" else value < need
    t.update(measured=value, met=met, unit=unit, spread=[min(values), max(values)])

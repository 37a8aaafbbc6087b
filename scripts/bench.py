"""scripts/bench: fwfs's mount against the Flywheel SDK and plain HTTP, on a sandbox site.

Run through scripts/bench (which installs what it needs first); docs/BENCHMARKS.md explains
every case. Each case runs its variants interleaved (A B C A B C ...), `--reps` times, and
reports medians with the min-max spread; the figures worth reading are the ratios between
variants of one run, since the machine is shared and noisy.

    scripts/bench --quick          a minute or two: checks that a change did not break speed
    scripts/bench                  the published figures (docs/benchmarks/), ~4 minutes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

# Before flywheel is imported: a broken site fails a run in seconds, not minutes.
os.environ.setdefault("FLYWHEEL_SDK_TOTAL_RETRIES", "1")
os.environ.setdefault("FLYWHEEL_SDK_BACKOFF_FACTOR", "0.2")
os.environ.setdefault("FLYWHEEL_SDK_REQUEST_TIMEOUT", "120")

import bench_bids
import bench_kit as kit
import bench_remote
import bench_report as report

from fwfs.testing.mounts import Mount
from fwfs.testing.sites import Site, start_site

CASES = (
    "cold_read",
    "disk_cache",
    "headers",
    "tree",
    "archives",
    "series",
    "copy_tree",
    "upload",
    "remote",
    "bids",
)
MODES: dict[str, dict[str, int]] = {
    "quick": {
        "big_file_mb": 128,
        "scale": 100,
        "nifti_count": 50,
        "nifti_mb": 16,
        "zip_members": 1000,
        "zip_matrix": 128,
        "reps": 3,
    },
    "full": {
        "big_file_mb": 1024,
        "scale": 1000,
        "nifti_count": 50,
        "nifti_mb": 32,
        "zip_members": 1000,
        "zip_matrix": 128,
        "reps": 5,
    },
}
MEMBER = "bench/bench_0500.dcm"
SMALL_CACHE = "64M"
PROFILE_RATE = 500  # py-spy samples per second


def _ticks(pid: int) -> float:
    """CPU seconds (user + system) that process `pid` has used so far."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def nifti_header(path: Path) -> tuple[int, ...]:
    """The dimensions from the first 352 bytes of a .nii.gz, decompressing only as much of
    the file as that takes (what nibabel or fslhd reads for a header)."""
    inflate = zlib.decompressobj(31)
    out = b""
    with open(path, "rb", buffering=0) as f:
        while len(out) < 352:
            chunk = inflate.unconsumed_tail or f.read(16384)
            if not chunk:
                break
            out += inflate.decompress(chunk, 352 - len(out))
    if len(out) < 352 or struct.unpack("<i", out[:4])[0] != 348 or out[344:348] != b"n+1\0":
        raise RuntimeError(f"{path}: not a NIfTI-1 header")
    return struct.unpack("<8h", out[40:56])


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.PIPE)
    done = subprocess.run(argv, check=False, timeout=1800, **kwargs)
    if done.returncode != 0:
        err = (done.stderr or b"").decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(argv[:2])} ... exited with {done.returncode}: {err}")
    return done


def _drop_file_pages(path: Path) -> None:
    """Out of the kernel's page cache (also without root): fwfs's caches serve it next."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Skip(Exception):
    """A case that cannot run on this version of fwfs or this machine."""


class Bench:
    """One pass of the benchmark: one sandbox site (on loopback, or behind the link
    emulator), every case's variants interleaved."""

    def __init__(
        self,
        args: argparse.Namespace,
        params: dict[str, int],
        *,
        name: str = "loopback",
        site_flags: tuple[str, ...] = (),
        link: dict[str, Any] | None = None,
    ) -> None:
        self.args = args
        self.name = name
        self.site_flags = site_flags
        self.link = link
        # The pass with downloads redirected to storage measures only what its target needs.
        self.cold_read_only_targets = name == "wan-redirect"
        self.params = params
        self.reps = args.reps or params["reps"]
        self.spec = kit.DataSpec(
            big_file_mb=params["big_file_mb"],
            scale=params["scale"],
            nifti_count=params["nifti_count"],
            nifti_mb=params["nifti_mb"],
            zip_members=params["zip_members"],
            zip_matrix=params["zip_matrix"],
        )
        self.work = Path(tempfile.mkdtemp(prefix="fwfs-bench-run-"))
        self.records: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.checks: dict[str, Any] = {}
        self.cache_dropped = True
        self.site: Site | None = None
        self.mounter: kit.Mounter | None = None
        self.fw: Any = None
        self.ids: dict[str, Any] = {}
        self.local_big = self.work / "local" / "big.bin"

    # ---- set-up ---------------------------------------------------------------------------

    def data_dir(self) -> Path:
        if self.args.data_dir:
            return Path(self.args.data_dir)
        return Path(tempfile.gettempdir()) / f"fwfs-bench-data-{self.spec.key()}"

    def start(self) -> None:
        data = self.data_dir()
        if self.args.fresh and data.exists():
            shutil.rmtree(data)
        for attempt in range(2):
            first = not (data / "site.sqlite").exists()
            kit.log(
                f"starting the sandbox on {data}"
                + (" (first use: seeding, this takes a while)" if first else "")
            )
            # Seeding a fresh data directory (the Bench project) can take minutes.
            self.site = start_site(
                self.work / "site",
                data=data,
                big_file_mb=self.spec.big_file_mb,
                scale=self.spec.scale,
                extra=self.site_flags,
                timeout=1800.0,
            )
            assert self.site is not None
            ca = self.site.info.get("ca_cert")
            if ca:
                # --strict serves HTTPS with its own CA: the SDK, requests and the mount
                # trust it through REQUESTS_CA_BUNDLE (the mount's env is this one's), curl
                # through --cacert.
                os.environ["REQUESTS_CA_BUNDLE"] = str(ca)
            if self.link is not None and "link" not in self.site.info:
                raise RuntimeError(
                    "the sandbox announced no link: this fwfs serve has no link emulator"
                )
            import flywheel

            self.fw = flywheel.Client(self.site.api_key)
            ids = kit.bench_ids(self.fw)
            if ids is None:
                kit.log("adding the Bench project (NIfTI files, a 1,000-member zip) via the SDK")
                ids = kit.seed_bench(self.fw, self.spec, self.work / "seed")
            elif "partial" in ids or ids.get("spec") != self.spec.key():
                if attempt:
                    raise RuntimeError("the Bench project is still incomplete after a re-seed")
                kit.log("the cached data directory holds an incomplete Bench project: re-seeding")
                self.site.stop()
                shutil.rmtree(data)
                continue
            self.ids = ids
            break
        assert self.site is not None
        self.mounter = kit.Mounter(self.site, self.work)
        t1w = self.fw.lookup("flywheel/Anxiety Study/sub-01/ses-baseline/T1w")
        self.ids["t1w"] = t1w.id
        self.ids["big_size"] = next(f.size for f in t1w.files if f.name == "big.bin")
        # The acquisition T1w shares its name with a file T1w, and keeps it: the path is the
        # site's own (docs/SEMANTICS.md, "Names").
        self.big_rel = "flywheel/Anxiety Study/sub-01/ses-baseline/T1w/big.bin"
        with self.mounter.mount() as m:
            for rel in (self.big_rel, f"{kit.bench_path('headers')}/{kit.nifti_name(0)}"):
                if not (m / rel).is_file():
                    raise RuntimeError(f"the mount has no {rel}")
        self.cache_dropped = kit.drop_caches()
        if not self.cache_dropped:
            self.notes.append(
                "The page cache could not be dropped (not root): cold figures are warmer "
                "than they should be."
            )

    def stop(self) -> None:
        if self.mounter is not None:
            self.checks["mount_log_problems"] = self.mounter.problems()[:50]
        if self.site is not None:
            self.site.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- measuring ------------------------------------------------------------------------

    @property
    def m(self) -> kit.Mounter:
        assert self.mounter is not None
        return self.mounter

    def drop(self) -> None:
        if self.cache_dropped:
            kit.drop_caches()

    def measure(
        self,
        case: str,
        variant: str,
        rep: int,
        fn: Callable[[], object],
        *,
        payload: int | None = None,
        mount: Mount | None = None,
        cold: bool = True,
    ) -> dict[str, Any]:
        """Time `fn` once; with the requests it made (access log), CPU use of the daemon,
        the site and this process with its children, and the daemon's peak RSS."""
        assert self.site is not None
        if cold:
            self.drop()
        mark = self.site.tail.mark()
        site_cpu, own_cpu = _ticks(self.site.proc.pid), _own_cpu()
        daemon_cpu = _ticks(mount.pid) if mount else 0.0
        started = time.monotonic()
        t0 = time.perf_counter()
        extra = fn()
        seconds = time.perf_counter() - t0
        if not isinstance(extra, dict):
            extra = {}
        rec: dict[str, Any] = {"case": case, "variant": variant, "rep": rep, "seconds": seconds}
        rec["client_cpu_s"] = _own_cpu() - own_cpu
        rec["site_cpu_s"] = _ticks(self.site.proc.pid) - site_cpu
        if mount is not None:
            rec["daemon_cpu_s"] = _ticks(mount.pid) - daemon_cpu
            mem = mount.memory()
            rec["rss_peak_mib"] = mem.get("VmHWM", 0) / 1024
            rec["rss_end_mib"] = mem.get("VmRSS", 0) / 1024
        entries = self.site.tail.since(mark)
        rec.update(kit.traffic(entries))
        if mount is not None and rep == 0:
            # One mount run's requests, in order: what a missed target is explained by.
            rec["log"] = kit.timeline(entries, started)
        if payload:
            rec["payload_bytes"] = payload
            rec["mb_s"] = payload / seconds / 1e6
        rec.update(extra)
        self.records.append(rec)
        shown = f"{rec['mb_s']:.0f} MB/s" if payload else f"{seconds:.2f} s"
        kit.log(f"  {case} / {variant} #{rep + 1}: {shown}, {rec['requests']} requests")
        return rec

    # ---- cases ----------------------------------------------------------------------------

    def case_cold_read(self) -> None:
        """Cold sequential read (mount, SDK, requests, curl), warm re-read, and memory."""
        assert self.site is not None
        size = int(self.ids["big_size"])
        url = f"{self.site.url}/api/acquisitions/{self.ids['t1w']}/files/big.bin"
        headers = self.work / "curl-headers"
        headers.write_text(f"Authorization: {self.site.authorization}\n")
        headers.chmod(0o600)
        self.local_big.parent.mkdir(parents=True, exist_ok=True)
        t1w_path = "flywheel/Anxiety Study/sub-01/ses-baseline/T1w"

        def sdk() -> None:
            self.fw.lookup(t1w_path).download_file("big.bin", str(self.local_big))

        def plain() -> dict[str, Any]:
            import requests

            got = 0
            with (
                requests.Session() as s,
                s.get(url, headers={"Authorization": self.site_auth}, stream=True) as r,
            ):
                r.raise_for_status()
                for chunk in r.iter_content(1 << 20):
                    got += len(chunk)
            if got != size:
                raise RuntimeError(f"requests read {got} of {size} bytes")
            return {}

        def cat(path: Path) -> Callable[[], None]:
            def go() -> None:
                run(["cat", str(path)])

            return go

        def curl() -> None:
            # -L: a site that redirects downloads to storage answers 302; curl drops the
            # Authorization header on the way to another host, as the signed URL wants.
            assert self.site is not None
            ca = self.site.info.get("ca_cert")
            trust = ["--cacert", str(ca)] if ca else []
            run(["curl", "-sSfL", *trust, "-o", "/dev/null", "-H", f"@{headers}", url])

        for rep in range(self.reps):
            with self.m.mount() as mnt:
                self.measure(
                    "cold_read", "mount", rep, cat(mnt / self.big_rel), payload=size, mount=mnt
                )
                if not self.cold_read_only_targets:
                    self.measure(
                        "warm_read",
                        "mount, re-read",
                        rep,
                        cat(mnt / self.big_rel),
                        payload=size,
                        mount=mnt,
                        cold=False,
                    )
            self.measure("cold_read", "SDK download_file", rep, sdk, payload=size)
            self.measure("cold_read", "curl", rep, curl, payload=size)
            if self.cold_read_only_targets:
                continue  # the redirect pass: the two ratios, not the ceilings
            self.measure("cold_read", "requests stream", rep, plain, payload=size)
            with self.m.mount("--cache-size", SMALL_CACHE) as mnt:
                self.measure(
                    "cold_read",
                    f"mount --cache-size {SMALL_CACHE}",
                    rep,
                    cat(mnt / self.big_rel),
                    payload=size,
                    mount=mnt,
                )
            self.measure("cold_read", "local copy (disk)", rep, cat(self.local_big), payload=size)
            self.measure(
                "warm_read",
                "local copy, re-read",
                rep,
                cat(self.local_big),
                payload=size,
                cold=False,
            )
        if self.link is not None:
            return  # the loopback pass compares the bytes; a second GiB over the link would not
        with self.m.mount() as mnt:
            same = subprocess.run(
                ["cmp", str(mnt / self.big_rel), str(self.local_big)], check=False
            )
            self.checks["cold_read_bytes_match"] = same.returncode == 0

    def case_disk_cache(self) -> None:
        """`--disk-cache`: a cold read that fills it, then a re-read after an unmount and a
        fresh mount (a new daemon: no memory cache), then a second re-read in that mount
        (its memory cache holds the file's last 256 MiB, the disk the rest); the access log
        says how many data requests each made. On loopback also the memory cache's rate (a
        mount with no disk cache and a memory cache that holds the file, re-reading it with
        the page cache dropped) and the daemon's peak RSS while a read pushes a 10 GiB disk
        cache past its budget. The issue's targets (bench_report.targets): the re-read after
        a remount makes no data request, runs at >= 5x the cold read over the link and at
        >= 0.8x the memory cache on loopback; RSS under the memory cache + 150 MiB."""
        size = int(self.ids["big_size"])
        big = self.work / "disk-cache-10g"
        full = self._fill_10g(big, size) if self.link is None else None

        def cat(path: Path) -> Callable[[], None]:
            def go() -> None:
                run(["cat", str(path)])

            return go

        try:
            for rep in range(self.reps):
                self._disk_cache_rep(rep, size, cat)
                if self.link is None:
                    self._memory_path_rep(rep, size, cat)
                if full is not None:
                    self._disk_cache_10g_rep(rep, size, full, cat)
        finally:
            shutil.rmtree(big, ignore_errors=True)
        self._prefetch_variants()

    def _disk_cache_rep(self, rep: int, size: int, cat: Callable[[Path], Any]) -> None:
        cache_dir = self.work / f"disk-cache-{rep}"
        flags = ("--disk-cache", f"{2 * size >> 20}M", "--cache-dir", str(cache_dir))
        with self.m.mount(*flags) as mnt:
            self.measure(
                "disk_cache",
                "mount, cold (fills it)",
                rep,
                cat(mnt / self.big_rel),
                payload=size,
                mount=mnt,
            )
        with self.m.mount(*flags) as mnt:
            self.measure(
                "disk_cache",
                "mount, re-read after remount",
                rep,
                cat(mnt / self.big_rel),
                payload=size,
                mount=mnt,
            )
            _drop_file_pages(mnt / self.big_rel)
            self.measure(
                "disk_cache",
                "mount, second re-read (memory + disk)",
                rep,
                cat(mnt / self.big_rel),
                payload=size,
                mount=mnt,
                cold=False,
            )
        shutil.rmtree(cache_dir, ignore_errors=True)

    def _memory_path_rep(self, rep: int, size: int, cat: Callable[[Path], Any]) -> None:
        """The denominator of the loopback target: a re-read served by the memory cache
        alone. Its data requests are recorded (checks): 0 is what shows it was that path."""
        cache = f"{2 * size >> 20}M"
        with self.m.mount("--cache-size", cache) as mnt:
            run(["cat", str(mnt / self.big_rel)])  # fills the memory cache, untimed
            _drop_file_pages(mnt / self.big_rel)
            rec = self.measure(
                "disk_cache",
                f"mount --cache-size {cache}, re-read from the memory cache",
                rep,
                cat(mnt / self.big_rel),
                payload=size,
                mount=mnt,
            )
        self.checks.setdefault("disk_cache_memory_reread_data_requests", []).append(
            rec["file_requests"]
        )

    def _fill_10g(self, where: Path, size: int) -> int | None:
        """A disk cache directory holding valid blocks up to half big.bin short of 10 GiB
        (so the read pushes it past its budget and the eviction lists it), made once per
        pass; the bytes it is filled to, or None (and why, in `skipped`) when it cannot be."""
        free = shutil.disk_usage(self.work).free
        if free < 15 << 30:
            why = f"{free / (1 << 30):.1f} GiB free on {self.work}: a 10 GiB disk cache needs 15"
            self.skipped["disk_cache_10g"] = why
            kit.log(f"  the 10 GiB disk cache variant is skipped: {why}")
            return None
        target = (10 << 30) - size // 2
        t0 = time.monotonic()
        try:
            used, how = kit.fill_disk_cache(where, target)
        except OSError as err:
            shutil.rmtree(where, ignore_errors=True)
            self.skipped["disk_cache_10g"] = f"could not fill a 10 GiB disk cache: {err}"
            kit.log(f"  the 10 GiB disk cache variant is skipped: {err}")
            return None
        took = time.monotonic() - t0
        files = sum(len(names) for _, _, names in os.walk(where / "blocks"))
        kit.log(f"  filled a 10 GiB disk cache: {used >> 20} MiB, {files} files in {took:.0f} s")
        self.checks["disk_cache_10g_fill"] = {
            "bytes": used,
            "files": files,
            "seconds": round(took),
            "how": how,
        }
        return target

    def _disk_cache_10g_rep(
        self, rep: int, size: int, target: int, cat: Callable[[Path], Any]
    ) -> None:
        where = self.work / "disk-cache-10g"
        if rep:
            # What the last read evicted comes back, and its own blocks go: the read
            # fetches the file again and pushes the directory past its budget again.
            kit.fill_disk_cache(where, target)
        with self.m.mount("--disk-cache", "10G", "--cache-dir", str(where)) as mnt:
            self.measure(
                "disk_cache",
                "mount --disk-cache 10G (full), cold",
                rep,
                cat(mnt / self.big_rel),
                payload=size,
                mount=mnt,
            )

    def _prefetch_variants(self) -> None:
        """`fwfs prefetch` of the headers case's acquisition (its NIfTIs, many files of
        tens of MiB), through a mount into its disk cache, and without a mount into a cache
        directory. Over the link, `link_ratio` is the rate over the link's: the issue's
        target is >= 0.9."""
        assert self.site is not None
        total = sum(self.ids["nifti_sizes"])
        rel = kit.bench_path("headers")
        size_flag = f"{2 * total >> 20}M"
        env = {**os.environ, "FWFS_API_KEY": self.site.api_key}

        def prefetch(*argv: str) -> Callable[[], dict[str, Any]]:
            def go() -> dict[str, Any]:
                t0 = time.perf_counter()
                # Exit 1 with every file read means blocks the disk cache did not keep (its
                # writer behind the link): a figure to report, not a failed case.
                done = subprocess.run(
                    [sys.executable, "-m", "fwfs", "prefetch", *argv],
                    env=env,
                    # Not the repository: `-m` puts the working directory first on the path,
                    # ahead of a PYTHONPATH snapshot the mounts and the site run.
                    cwd=self.work,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                    check=False,
                )
                seconds = time.perf_counter() - t0
                dropped = re.search(r"(\d+) block\(s\) were not kept", done.stderr)
                if done.returncode != 0 and not dropped:
                    raise RuntimeError(f"fwfs prefetch exited {done.returncode}: {done.stderr}")
                extra: dict[str, Any] = {"blocks_not_kept": int(dropped[1]) if dropped else 0}
                if self.link is not None:
                    extra["link_ratio"] = total / seconds / (self.link["mbit"] * 1e6 / 8)
                return extra

            return go

        for rep in range(self.reps):
            cache_dir = self.work / f"prefetch-cache-{rep}"
            flags = ("--disk-cache", size_flag, "--cache-dir", str(cache_dir))
            with self.m.mount(*flags) as mnt:
                self.measure(
                    "disk_cache",
                    "prefetch through the mount",
                    rep,
                    prefetch(str(mnt / rel)),
                    payload=total,
                    mount=mnt,
                )
            shutil.rmtree(cache_dir, ignore_errors=True)
            self.measure(
                "disk_cache",
                "prefetch to --cache-dir, no mount",
                rep,
                prefetch(rel, *flags),
                payload=total,
            )
            shutil.rmtree(cache_dir, ignore_errors=True)

    @property
    def site_auth(self) -> str:
        assert self.site is not None
        return self.site.authorization

    def case_headers(self) -> None:
        names = [kit.nifti_name(i) for i in range(self.spec.nifti_count)]
        rel = kit.bench_path("headers")
        total = sum(self.ids["nifti_sizes"])
        scratch = self.work / "headers"
        scratch.mkdir(exist_ok=True)

        def via_mount(mnt: Mount) -> dict[str, Any]:
            dims = {nifti_header(mnt / rel / name) for name in names}
            return {"files": len(names), "files_bytes": total, "dims": sorted(dims)}

        def via_sdk() -> dict[str, Any]:
            acq = self.fw.lookup(rel)
            dims = set()
            for name in names:
                dest = scratch / name
                acq.download_file(name, str(dest))
                dims.add(nifti_header(dest))
                dest.unlink()
            return {"files": len(names), "files_bytes": total, "dims": sorted(dims)}

        for rep in range(self.reps):
            with self.m.mount() as mnt:
                self.measure("headers", "mount", rep, partial(via_mount, mnt), mount=mnt)
            self.measure("headers", "SDK download_file", rep, via_sdk)

    def case_tree(self) -> None:
        rel = f"flywheel/Scale {self.spec.scale}"

        def ls(mnt: Mount) -> dict[str, Any]:
            run(["ls", "-lR", str(mnt / rel)])
            return {}

        def find(mnt: Mount) -> dict[str, Any]:
            out = run(["find", str(mnt / rel), "-printf", "%y %s\\n"], stdout=subprocess.PIPE)
            kinds = [line[:1] for line in out.stdout.splitlines()]
            # The walk also lists the mount's root and the group on the way to the project.
            return {"directories": kinds.count(b"d") + 2, "files": kinds.count(b"f")}

        def sdk() -> dict[str, Any]:
            project = self.fw.lookup(rel)
            containers, files = 1, len(project.files or [])
            for subject in project.subjects():
                containers += 1
                files += len(subject.files or [])
                for session in subject.sessions():
                    containers += 1
                    files += len(session.files or [])
                    for acq in session.acquisitions():
                        containers += 1
                        files += len(acq.files or [])
            return {"directories": containers, "files": files}

        for rep in range(self.reps):
            with self.m.mount() as mnt:
                r = self.measure("tree", "mount: ls -lR", rep, partial(ls, mnt), mount=mnt)
            with self.m.mount() as mnt:
                f = self.measure("tree", "mount: find", rep, partial(find, mnt), mount=mnt)
            s = self.measure("tree", "SDK walk", rep, sdk)
            r["directories"] = f["directories"]
            self.checks["tree_files_match"] = f["files"] == s["files"]
            self.checks["tree_counts"] = {
                "mount (directories, files)": [f["directories"], f["files"]],
                "SDK (containers, files)": [s["directories"], s["files"]],
            }

    def case_archives(self) -> None:
        rel = kit.bench_path("archive")
        zsize = int(self.ids["zip_size"])
        scratch = self.work / "archives"

        def member_mount(mnt: Mount) -> dict[str, Any]:
            data = (mnt / rel / f"{kit.ZIP_NAME}.d" / MEMBER).read_bytes()
            return {"member_bytes": len(data), "files_bytes": zsize}

        def member_sdk() -> dict[str, Any]:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            self.fw.lookup(rel).download_file(kit.ZIP_NAME, str(scratch / kit.ZIP_NAME))
            with zipfile.ZipFile(scratch / kit.ZIP_NAME) as z:
                data = z.read(MEMBER)
            return {"member_bytes": len(data), "files_bytes": zsize}

        def dcm2niix_sdk() -> dict[str, Any]:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            self.fw.lookup(rel).download_file(kit.ZIP_NAME, str(scratch / kit.ZIP_NAME))
            with zipfile.ZipFile(scratch / kit.ZIP_NAME) as z:
                z.extractall(scratch / "unzipped")
            return self._dcm2niix(scratch / "unzipped", self.work / "nii-sdk", zsize)

        for rep in range(self.reps):
            with self.m.mount() as mnt:
                self.measure("archive_member", "mount", rep, partial(member_mount, mnt), mount=mnt)
            with self.m.mount() as mnt:
                # The same read once the directories on the way are listed (as after an `ls`):
                # what the archive itself costs.
                os.listdir(mnt / rel)
                self.measure(
                    "archive_member",
                    "mount, directories listed",
                    rep,
                    partial(member_mount, mnt),
                    mount=mnt,
                )
            self.measure("archive_member", "SDK download + unzip", rep, member_sdk)
            with self.m.mount() as mnt:
                src = mnt / rel / f"{kit.ZIP_NAME}.d"
                self.measure(
                    "dcm2niix",
                    "mount",
                    rep,
                    partial(self._dcm2niix, src, self.work / "nii-mount", zsize),
                    mount=mnt,
                )
            self.measure("dcm2niix", "SDK download + unzip + dcm2niix", rep, dcm2niix_sdk)
        a, b = self.work / "nii-mount" / "vol.nii", self.work / "nii-sdk" / "vol.nii"
        self.checks["dcm2niix_outputs_match"] = a.read_bytes() == b.read_bytes()

    def _dcm2niix(self, src: Path, out: Path, zsize: int) -> dict[str, Any]:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        run(["dcm2niix", "-z", "n", "-f", "vol", "-o", str(out), str(src)])
        nii = out / "vol.nii"
        if not nii.is_file():
            raise RuntimeError(f"dcm2niix wrote no {nii}")
        return {"files_bytes": zsize, "nii_bytes": nii.stat().st_size}

    def case_series(self) -> None:
        """dcm2niix on the 200-slice series zip: the mount's `.zip.d` directory against the
        SDK's download, unzip and convert on local disk (the issue's first target)."""
        rel = kit.bench_path("series")
        zsize = int(self.ids["series_size"])
        scratch = self.work / "series"

        def sdk() -> dict[str, Any]:
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            self.fw.lookup(rel).download_file(kit.SERIES_ZIP, str(scratch / kit.SERIES_ZIP))
            with zipfile.ZipFile(scratch / kit.SERIES_ZIP) as z:
                z.extractall(scratch / "unzipped")
            return self._dcm2niix(scratch / "unzipped", self.work / "nii200-sdk", zsize)

        for rep in range(self.reps):
            with self.m.mount() as mnt:
                src = mnt / rel / f"{kit.SERIES_ZIP}.d"
                self.measure(
                    "dcm2niix_200",
                    "mount",
                    rep,
                    partial(self._dcm2niix, src, self.work / "nii200-mount", zsize),
                    mount=mnt,
                )
            self.measure("dcm2niix_200", "SDK download + unzip + dcm2niix", rep, sdk)
        a, b = self.work / "nii200-mount" / "vol.nii", self.work / "nii200-sdk" / "vol.nii"
        self.checks["dcm2niix_200_outputs_match"] = a.read_bytes() == b.read_bytes()

    def case_copy_tree(self) -> None:
        """`cp -r` of the project of small files out of the mount, against the SDK walking
        it and downloading every file, one after another."""
        rel = f"flywheel/{kit.SMALL_PROJECT}"
        want = (int(self.ids["small_files"]), int(self.ids["small_bytes"]))

        def tally(root: Path) -> tuple[int, int]:
            files = [p for p in root.rglob("*") if p.is_file()]
            return len(files), sum(p.stat().st_size for p in files)

        def via_mount(mnt: Mount) -> dict[str, Any]:
            dest = self.work / "copy-mount"
            shutil.rmtree(dest, ignore_errors=True)
            run(["cp", "-r", str(mnt / rel), str(dest)])
            got = tally(dest)
            return {"files": got[0], "files_bytes": got[1]}

        def via_sdk() -> dict[str, Any]:
            dest = self.work / "copy-sdk"
            shutil.rmtree(dest, ignore_errors=True)
            project = self.fw.lookup(rel)
            for subject in project.subjects():
                for session in subject.sessions():
                    for acq in session.acquisitions():
                        where = dest / subject.label / session.label / acq.label
                        where.mkdir(parents=True, exist_ok=True)
                        for f in acq.files or []:
                            acq.download_file(f.name, str(where / f.name))
            got = tally(dest)
            return {"files": got[0], "files_bytes": got[1]}

        for rep in range(self.reps):
            with self.m.mount() as mnt:
                r = self.measure(
                    "copy_tree", "mount: cp -r", rep, partial(via_mount, mnt), mount=mnt
                )
            s = self.measure("copy_tree", "SDK walk + download_file each", rep, via_sdk)
            self.checks["copy_tree_counts"] = {
                "site (files, bytes)": list(want),
                "mount cp -r": [r["files"], r["files_bytes"]],
                "SDK": [s["files"], s["files_bytes"]],
            }

    def _fetch_local_big(self) -> None:
        if not self.local_big.exists():
            self.local_big.parent.mkdir(parents=True, exist_ok=True)
            t1w = self.fw.lookup("flywheel/Anxiety Study/sub-01/ses-baseline/T1w")
            t1w.download_file("big.bin", str(self.local_big))

    def case_remote(self) -> None:
        """`flywheel://` and the Dask header table against the mount (issue 15):
        scripts/bench_remote.py."""
        bench_remote.case_remote(self)

    def case_bids(self) -> None:
        """pybids on the BIDS view of a fresh mount against an SDK export (issue 16):
        scripts/bench_bids.py."""
        bench_bids.case_bids(self)

    def case_upload(self) -> None:
        """cp into the mount vs the SDK's upload_file; skipped while the mount is read-only."""
        rel = kit.bench_path("uploads")
        probe = self.work / "probe.txt"
        probe.write_text("fwfs bench: can the mount take a file?\n")
        with self.m.mount() as mnt:
            done = subprocess.run(
                ["cp", str(probe), str(mnt / rel / f"probe-{os.getpid()}.txt")],
                capture_output=True,
                text=True,
                check=False,
                env={**os.environ, "LC_ALL": "C"},  # cp's message, untranslated
            )
        if done.returncode != 0:
            if "Read-only file system" in done.stderr:
                raise Skip("not available: the mount is read-only in this version (cp: EROFS)")
            raise RuntimeError(f"cp into the mount failed: {done.stderr.strip()}")
        self._fetch_local_big()
        size = self.local_big.stat().st_size
        small = self.work / "local" / "small.bin"
        with open(self.local_big, "rb") as src, open(small, "wb") as dst:
            dst.write(src.read(max(1, size // 8)))
        acq = self.fw.get_acquisition(self.ids["uploads"])
        staging = self.work / "upload"
        staging.mkdir(exist_ok=True)

        def cp_and_wait(mnt: Mount, src: Path, name: str) -> dict[str, Any]:
            run(["cp", str(src), str(mnt / rel / name)])
            return {"visible": self._wait_for_file(name, src.stat().st_size)}

        for rep in range(self.reps):
            name = f"cp-{rep}.bin"
            # Every variant starts with no dirty pages to write back: the download of the
            # local copy, or the previous variant's spool, would otherwise slow the next
            # writer's disk.
            os.sync()
            with self.m.mount() as mnt:
                self.measure(
                    "upload",
                    "mount: cp",
                    rep,
                    partial(cp_and_wait, mnt, self.local_big, name),
                    payload=size,
                    mount=mnt,
                    cold=False,
                )
            os.sync()
            with self.m.mount() as mnt:
                self.measure(
                    "upload",
                    "mount: cp of a file 8x smaller",
                    rep,
                    partial(cp_and_wait, mnt, small, f"cp-small-{rep}.bin"),
                    payload=small.stat().st_size,
                    mount=mnt,
                    cold=False,
                )
            link = staging / f"sdk-{rep}.bin"
            link.unlink(missing_ok=True)
            link.symlink_to(self.local_big)
            os.sync()
            self.measure(
                "upload",
                "SDK upload_file",
                rep,
                partial(acq.upload_file, str(link)),
                payload=size,
                cold=False,
            )
            for leftover in (name, f"cp-small-{rep}.bin", link.name):
                with contextlib.suppress(Exception):
                    acq.delete_file(leftover)

    def _wait_for_file(self, name: str, size: int, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            acq = self.fw.get_acquisition(self.ids["uploads"])
            if any(f.name == name and f.size == size for f in acq.files or []):
                return True
            time.sleep(0.2)
        return False

    # ---- profiles -------------------------------------------------------------------------

    def profile(self, case: str, out_dir: Path) -> dict[str, Any] | None:
        """One more run of the mount's side of `case` with py-spy sampling the daemon."""
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.notes.append("py-spy is not installed: no profiles")
            return None
        work: Callable[[Mount], object]
        if case in ("cold_read", "memory"):
            args = ["--cache-size", SMALL_CACHE] if case == "memory" else []

            def work(mnt: Mount) -> object:
                return run(["cat", str(mnt / self.big_rel)])
        elif case == "tree":
            args = []

            def work(mnt: Mount) -> object:
                return run(["ls", "-lR", str(mnt / f"flywheel/Scale {self.spec.scale}")])
        elif case == "headers":
            args = []

            def work(mnt: Mount) -> object:
                rel = kit.bench_path("headers")
                return [
                    nifti_header(mnt / rel / kit.nifti_name(i))
                    for i in range(self.spec.nifti_count)
                ]
        elif case == "dcm2niix":
            args = []

            def work(mnt: Mount) -> object:
                src = mnt / kit.bench_path("archive") / f"{kit.ZIP_NAME}.d"
                out = self.work / "nii-profile"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                return run(["dcm2niix", "-z", "n", "-o", str(out), str(src)])
        else:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        raw = out_dir / f"{case}.txt"
        with self.m.mount(*args) as mnt:
            self.drop()
            argv = [
                spy,
                "record",
                "--pid",
                str(mnt.pid),
                "--rate",
                str(PROFILE_RATE),
                "--format",
                "raw",
            ]
            argv += ["--output", str(raw), "--nonblocking"]
            spy_proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1.0)  # py-spy attaches
            t0 = time.perf_counter()
            work(mnt)
            seconds = time.perf_counter() - t0
            spy_proc.send_signal(signal.SIGINT)
            try:
                _, err = spy_proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                _, err = spy_proc.communicate()
        if not raw.exists():
            self.notes.append(f"py-spy wrote no profile for {case}: {err.decode()[-300:]}")
            return None
        summary = report.summarize_profile(raw.read_text(), rate=PROFILE_RATE, seconds=seconds)
        summary["file"] = str(raw)
        summary["seconds"] = seconds
        return summary


def run_cases(bench: Bench, cases: list[str]) -> None:
    for case in cases:
        kit.log(f"case {case}")
        try:
            getattr(bench, f"case_{case}")()
        except Skip as why:
            bench.skipped[case] = str(why)
            kit.log(f"  skipped: {why}")
        except KeyboardInterrupt:
            raise
        except Exception as err:
            bench.failed[case] = f"{type(err).__name__}: {err}"
            kit.log(f"  FAILED: {bench.failed[case]}")


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: through every `finally` (unmounts, site stop)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def parse_link(spec: str) -> dict[str, Any]:
    """`40ms,1gbit` or `80ms,200mbit` -> {"rtt_ms": 40, "mbit": 1000, "spec": ...}."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)ms\s*,\s*(\d+(?:\.\d+)?)(gbit|mbit)\s*", spec.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected <N>ms,<M>gbit or <N>ms,<M>mbit")
    rtt = float(m.group(1))
    mbit = float(m.group(2)) * (1000 if m.group(3) == "gbit" else 1)
    if mbit <= 0:
        raise argparse.ArgumentTypeError(f"{spec!r}: the bandwidth must be positive")
    return {"spec": spec.strip().lower(), "rtt_ms": rtt, "mbit": mbit}


def _num_arg(x: float) -> str:
    return f"{x:g}"


def passes(args: argparse.Namespace, cases: list[str]) -> list[dict[str, Any]]:
    """The passes of one run: loopback (unless --no-loopback), then over the link, then
    over the link with downloads redirected to storage (the cold read's second target)."""
    common: list[str] = []
    if args.strict:
        common.append("--strict")
    elif args.redirect_downloads:
        common.append("--redirect-downloads")
    out: list[dict[str, Any]] = []
    if not (args.link and args.no_loopback):
        out.append({"name": "loopback", "flags": tuple(common), "link": None, "cases": cases})
    if args.link:
        link = args.link
        wan = ["--rtt-ms", _num_arg(link["rtt_ms"]), "--bandwidth-mbit", _num_arg(link["mbit"])]
        out.append({"name": "wan", "flags": (*common, *wan), "link": link, "cases": cases})
        if "cold_read" in cases and not common and not args.no_redirect_pass:
            out.append(
                {
                    "name": "wan-redirect",
                    "flags": (*wan, "--redirect-downloads"),
                    "link": link,
                    "cases": ["cold_read"],
                }
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, 3 repetitions (~2 min)")
    p.add_argument("--reps", type=int, help="repetitions of each case (default 5; quick 3)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {','.join(CASES)}")
    p.add_argument(
        "--out", type=Path, help="output directory (default docs/benchmarks; quick: a temp dir)"
    )
    p.add_argument("--data-dir", help="the sandbox's data (default: a cached dir under /tmp)")
    p.add_argument("--fresh", action="store_true", help="re-create the cached data directory")
    p.add_argument(
        "--profile",
        choices=("missed", "none", "all"),
        help="py-spy profiles of the mount for missed targets (default in full mode), "
        "for every case, or none (default in quick mode)",
    )
    p.add_argument(
        "--link",
        type=parse_link,
        help="also run every case through the sandbox's link emulator, e.g. 40ms,1gbit "
        "(round trip, bandwidth): the loopback and the WAN tables come from one run",
    )
    p.add_argument("--no-loopback", action="store_true", help="with --link: skip the loopback pass")
    p.add_argument(
        "--no-redirect-pass",
        action="store_true",
        help="with --link: skip the cold read with downloads redirected to storage",
    )
    p.add_argument(
        "--redirect-downloads",
        action="store_true",
        help="the bench's site answers downloads with a 302 to storage (every pass)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="the bench's site behaves as a real core (fwfs serve --strict: TLS with a CA of "
        "its own, trusted through REQUESTS_CA_BUNDLE and curl --cacert)",
    )
    p.add_argument("--keep", action="store_true", help="keep the run's work directory")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "quick" if args.quick else "full"
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        print(f"unknown cases: {', '.join(unknown)}", file=sys.stderr)
        return 2
    out = args.out or (
        kit.REPO / "docs" / "benchmarks"
        if mode == "full"
        else Path(tempfile.gettempdir()) / "fwfs-bench-quick"
    )
    profile = args.profile or ("missed" if mode == "full" else "none")
    started = time.time()
    runs: list[dict[str, Any]] = []
    failed = False
    if profile != "none":
        for old in (out / "profiles").glob("*.txt"):
            old.unlink()  # a profile from an earlier run would pass for this one's
    with signals_as_interrupts():
        for spec in passes(args, cases):
            kit.log(f"pass {spec['name']}: fwfs serve {' '.join(spec['flags'])}")
            bench = Bench(
                args,
                MODES[mode],
                name=spec["name"],
                site_flags=spec["flags"],
                link=spec["link"],
            )
            pass_started = time.time()
            try:
                try:
                    bench.start()
                except KeyboardInterrupt:
                    raise
                except Exception as err:
                    # A pass that cannot start (a broken site or mount) loses only itself.
                    bench.failed["(start of the pass)"] = f"{type(err).__name__}: {err}"[-1500:]
                    kit.log(f"  pass {spec['name']} FAILED to start: {err}")
                else:
                    run_cases(bench, spec["cases"])
                results = report.build(bench, mode, time.time() - pass_started)
                # Profiles sample CPU: the loopback pass is where CPU decides the figures.
                if profile != "none" and bench.link is None:
                    wanted = report.profile_cases(results, everything=profile == "all")
                    for case in wanted:
                        kit.log(f"profiling the daemon: {case}")
                        try:
                            summary = bench.profile(case, out / "profiles")
                        except Exception as err:
                            bench.notes.append(f"profile of {case} failed: {err}")
                            summary = None
                        if summary:
                            results["profiles"][case] = summary
            finally:
                bench.stop()
            results["checks"] = bench.checks
            results["notes"] = bench.notes
            results["duration_s"] = round(time.time() - pass_started)
            runs.append(results)
            failed = failed or bool(bench.failed)
            # What is measured so far is saved at once: a later pass may fail or be stopped.
            report.write_runs(runs, out, plots_too=False, update_doc=False)
    report.write_runs(
        runs,
        out,
        plots_too=not args.no_plots,
        update_doc=out == report.DOCS_OUT,
        duration_s=round(time.time() - started),
    )
    print(report.markdown_runs(runs))
    kit.log(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

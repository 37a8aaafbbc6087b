"""scripts/bench's `remote` case: `flywheel://` (fwfs.remote) and the Dask header table
(fwfs.cohort) against the mount, for issue 15's three targets.

- `remote_headers`: the NIfTI header table (fwfs.cohort.header_table) of the headers
  case's 50 .nii.gz, built through the mount in one process, through `flywheel://` in one
  process, and through `flywheel://` on a LocalCluster of 4 worker processes (one thread
  each). Each repetition starts fresh: a new mount, a new filesystem model, a new cluster
  (started, and fwfs and nibabel imported on its workers, before the clock; the workers'
  models are built on the clock, as the one process's is).
- `remote_read`: one sequential read of big.bin, 1 MiB at a time, through `flywheel://`
  and through a fresh mount.

`case_remote(bench)` runs them on a `Bench` of scripts/bench.py; `remote_targets(records,
link)` judges them, in the shape of bench_report.targets()'s rows; `REPORT_CASES` is what
bench_report.CASES needs to show them (metric, unit, higher is better, title).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import statistics
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import bench_kit as kit
import fsspec  # type: ignore[import-untyped]

from fwfs.cohort import header_table
from fwfs.remote import FlywheelFileSystem
from fwfs.testing.mounts import Mount

if TYPE_CHECKING:
    from bench import Bench

HEADERS = "remote_headers"
READ = "remote_read"
WORKERS = 4
CHUNK = 1 << 20
V_MOUNT = "mount, one process"
V_ONE = "flywheel://, one process"
V_DASK = f"flywheel://, {WORKERS} Dask workers"
V_READ_REMOTE = "flywheel://"
V_READ_MOUNT = "mount"
REPORT_CASES: dict[str, tuple[str, str, bool, str]] = {
    HEADERS: ("seconds", "s", False, "NIfTI header table of the 50 .nii.gz (fwfs.cohort)"),
    READ: ("mb_s", "MB/s", True, "Sequential read of big.bin: flywheel:// and the mount"),
}

__all__ = ["REPORT_CASES", "case_remote", "remote_targets"]


def _filesystem(bench: Bench) -> FlywheelFileSystem:
    """A new `flywheel://` filesystem of the bench's site, with a model of its own (the
    one of an earlier repetition is gone: see _forget)."""
    assert bench.site is not None
    options: dict[str, Any] = {"api_key": bench.site.api_key, "skip_instance_cache": True}
    ca = bench.site.info.get("ca_cert")
    if ca:
        options["verify"] = str(ca)
    return FlywheelFileSystem(**options)


def _forget() -> None:
    """Models are kept while a filesystem uses them: collected, the next one starts cold."""
    gc.collect()


@contextlib.contextmanager
def _cluster(bench: Bench) -> Iterator[Any]:
    """A LocalCluster of WORKERS processes, one thread each; the workers' key is their
    environment's FWFS_API_KEY, never the pickled filesystem's."""
    import distributed

    assert bench.site is not None
    env = {"FWFS_API_KEY": bench.site.api_key}
    dask: Any = distributed  # its constructors are not typed
    with (
        dask.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            env=env,
        ) as cluster,
        dask.Client(cluster) as client,
    ):
        client.wait_for_workers(WORKERS, timeout=120)
        # As in this process, which has run the other variants: the imports are the
        # cluster's start-up, not the table's; the workers' filesystem models are not built.
        client.run(_imports)
        yield client


def _imports() -> None:
    import nibabel  # noqa: F401

    import fwfs.cohort  # noqa: F401


def _headers(bench: Bench, rep: int) -> None:
    rel = kit.bench_path("headers")
    total = sum(int(n) for n in bench.ids["nifti_sizes"])
    tables: dict[str, Any] = {}

    def table(variant: str, build: Callable[[], Any]) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            tables[variant] = build()
            return {"files": len(tables[variant]), "files_bytes": total}

        return go

    def via_mount(mnt: Mount) -> Any:
        return header_table(str(mnt / rel), fs=fsspec.filesystem("file"))

    with bench.m.mount() as mnt:
        bench.measure(HEADERS, V_MOUNT, rep, table(V_MOUNT, partial(via_mount, mnt)), mount=mnt)
    fs = _filesystem(bench)
    bench.measure(HEADERS, V_ONE, rep, table(V_ONE, partial(header_table, rel, fs=fs)))
    del fs
    _forget()
    fs = _filesystem(bench)
    with _cluster(bench) as client:
        build = partial(header_table, rel, client, fs=fs)
        bench.measure(HEADERS, V_DASK, rep, table(V_DASK, build))
    del fs
    _forget()
    same = all(t.equals(tables[V_MOUNT]) for t in tables.values())
    bench.checks.setdefault("remote_tables_equal", []).append(same)
    if len(tables[V_MOUNT]) != len(bench.ids["nifti_sizes"]) or not same:
        raise RuntimeError(
            f"the header tables differ (rows: { ({v: len(t) for v, t in tables.items()}) })"
        )


def _read_all(open_file: Callable[[], Any], size: int) -> dict[str, Any]:
    got = 0
    with open_file() as f:
        while chunk := f.read(CHUNK):
            got += len(chunk)
    if got != size:
        raise RuntimeError(f"read {got} of {size} bytes")
    return {}


def _read(bench: Bench, rep: int) -> None:
    size = int(bench.ids["big_size"])
    big: str = bench.big_rel
    with bench.m.mount() as mnt:
        whole = partial(open, mnt / big, "rb", buffering=0)
        bench.measure(
            READ, V_READ_MOUNT, rep, partial(_read_all, whole, size), payload=size, mount=mnt
        )
    fs = _filesystem(bench)
    remote = partial(fs.open, big, "rb")
    bench.measure(READ, V_READ_REMOTE, rep, partial(_read_all, remote, size), payload=size)
    del fs, remote
    _forget()


def case_remote(bench: Bench) -> None:
    """Issue 15's figures: the header table (mount, one process, 4 Dask workers) and one
    sequential read (flywheel://, mount), variants interleaved within each repetition."""
    for rep in range(bench.reps):
        _headers(bench, rep)
        _read(bench, rep)


# ---- targets ---------------------------------------------------------------------------------


def _by_rep(records: list[dict[str, Any]], case: str, variant: str) -> dict[int, dict[str, Any]]:
    return {int(r["rep"]): r for r in records if r["case"] == case and r["variant"] == variant}


def remote_targets(
    records: list[dict[str, Any]], link: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Issue 15's targets, judged over the link (on loopback, for information: the header
    table's speed-up is the link's round trips overlapped, which loopback hardly has)."""
    wan = link is not None
    out: list[dict[str, Any]] = []

    one, dask = _by_rep(records, HEADERS, V_ONE), _by_rep(records, HEADERS, V_DASK)
    t = kit.target_row(
        "remote-dask",
        f"header table of the 50 NIfTIs through flywheel://: one process time / "
        f"{WORKERS} Dask workers time",
        HEADERS,
        V_DASK,
        3.0,
        ">=",
        ">= 3x",
    )
    t["informational"] = not wan
    kit.judge(t, [one[k]["seconds"] / dask[k]["seconds"] for k in sorted(one) if k in dask], "x")
    out.append(t)

    remote, mount = _by_rep(records, READ, V_READ_REMOTE), _by_rep(records, READ, V_READ_MOUNT)
    t = kit.target_row(
        "remote-read",
        "sequential read of big.bin: flywheel:// vs the mount (MB/s)",
        READ,
        V_READ_REMOTE,
        0.9,
        ">=",
        ">= 0.9x",
    )
    kit.judge(t, [remote[k]["mb_s"] / mount[k]["mb_s"] for k in sorted(remote) if k in mount], "x")
    out.append(t)

    mounted = _by_rep(records, HEADERS, V_MOUNT)
    t = kit.target_row(
        "remote-bytes",
        "header reads through flywheel://: bytes transferred / size of the 50 files",
        HEADERS,
        V_ONE,
        0.01,
        "<",
        "< 1%",
    )
    kit.judge(t, [r["bytes"] / r["files_bytes"] for r in one.values()], "%")
    out.append(t)
    t = kit.target_row(
        "remote-requests",
        "header reads: requests for file bytes, flywheel:// / the mount's (worst run)",
        HEADERS,
        V_ONE,
        1.0,
        "<=",
        "<= 1x (equal)",
    )
    shares = [
        one[k]["file_requests"] / mounted[k]["file_requests"]
        for k in sorted(one)
        if k in mounted and mounted[k]["file_requests"]
    ]
    if shares:
        t.update(measured=max(shares), met=max(shares) <= 1.0, unit="x")
        t["spread"] = [min(shares), max(shares)]
    out.append(t)
    return out


def remote_figures(records: list[dict[str, Any]]) -> list[str]:
    """One line per variant (medians): for a driver's log, not the report."""
    lines = []
    for case, variant in (
        (HEADERS, V_MOUNT),
        (HEADERS, V_ONE),
        (HEADERS, V_DASK),
        (READ, V_READ_MOUNT),
        (READ, V_READ_REMOTE),
    ):
        recs = list(_by_rep(records, case, variant).values())
        if not recs:
            continue
        seconds = statistics.median(r["seconds"] for r in recs)
        rate = statistics.median(r.get("mb_s", 0.0) for r in recs)
        lines.append(
            f"{case} / {variant}: {seconds:.2f} s"
            + (f", {rate:.0f} MB/s" if rate else "")
            + f", {statistics.median(r['requests'] for r in recs):.0f} requests"
            + f" ({statistics.median(r['file_requests'] for r in recs):.0f} for file bytes,"
            + f" {statistics.median(r['bytes'] for r in recs) / 1e6:.2f} MB)"
        )
    return lines

#!/usr/bin/env python3
"""Every NIfTI header of a Flywheel project as one table, read by Dask workers through
`flywheel://` (fwfs.cohort; docs/SCALING.md explains the set-up).

    pip install 'fwfs[dask]'
    export FWFS_API_KEY=site.example.org:SECRET          # or `fw login`: the workers' too
    python examples/dask_nifti_headers.py "lab/Anxiety Study" --workers 8 -o headers.csv
    python examples/dask_nifti_headers.py "lab/Anxiety Study" --scheduler tcp://10.0.0.5:8786
    python examples/dask_nifti_headers.py "lab/Anxiety Study" --slurm --workers 16

Without --scheduler or --slurm, a LocalCluster of --workers processes runs on this machine.
With --slurm, dask-jobqueue's SLURMCluster submits the workers as batch jobs (its options,
queue, account, walltime, come from ~/.config/dask/jobqueue.yaml or the flags below). Each
worker reads its key from its own environment: the filesystem is sent to it without one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from fwfs.cohort import header_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("project", help="group/project (the path below the mount's root)")
    p.add_argument("--workers", type=int, default=4, help="Dask workers (default 4)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler")
    where.add_argument("--slurm", action="store_true", help="workers as SLURM jobs")
    p.add_argument("--queue", help="--slurm: the partition")
    p.add_argument("--account", help="--slurm: the account to charge")
    p.add_argument("--walltime", default="00:30:00", help="--slurm: per worker job")
    p.add_argument("--local", action="store_true", help="no Dask: one process")
    p.add_argument("-o", "--output", help="write the table as CSV (default: print it)")
    return p.parse_args(argv)


@contextlib.contextmanager
def dask_client(args: argparse.Namespace) -> Iterator[Any]:
    """A Client of the cluster the flags ask for; None with --local."""
    if args.local:
        yield None
        return
    # Any: dask's constructors are not typed.
    dask: Any = importlib.import_module("dask.distributed")
    if args.scheduler:
        with dask.Client(args.scheduler) as client:
            yield client
        return
    if args.slurm:
        jobqueue: Any = importlib.import_module("dask_jobqueue")  # pip install dask-jobqueue

        # Header reads wait on the network, not the CPU: one core and little memory each.
        cluster: Any = jobqueue.SLURMCluster(
            cores=1,
            processes=1,
            memory="2GB",
            queue=args.queue,
            account=args.account,
            walltime=args.walltime,
            # The workers' key: their job's environment (exported FWFS_API_KEY is passed
            # on by sbatch's default --export=ALL), or user.json in the shared home.
        )
        cluster.scale(jobs=args.workers)
    else:
        cluster = dask.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True)
    with cluster, dask.Client(cluster) as client:
        client.wait_for_workers(1, timeout=600)
        yield client


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with dask_client(args) as client:
            started = time.perf_counter()
            table = header_table(args.project, client)
            seconds = time.perf_counter() - started
    except (OSError, ValueError) as err:
        # A wrong path, a missing or refused key (on a worker too), a file not NIfTI.
        print(f"dask_nifti_headers: {err}", file=sys.stderr)
        return 1
    print(f"{len(table)} NIfTI headers in {seconds:.1f} s", file=sys.stderr)
    if args.output:
        table.to_csv(args.output, index=False)
    else:
        with __import__("pandas").option_context("display.width", 200):
            print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())

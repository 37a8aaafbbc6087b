"""A project's NIfTI headers as one table, read through `flywheel://`: in one process, or on
the workers of a Dask cluster (docs/SCALING.md).

Only the header of each file is read (348 bytes of NIfTI-1, 540 of NIfTI-2, behind gzip's
first block for a .nii.gz): one ranged request per file, whatever the file's size.

    from dask.distributed import Client, LocalCluster
    from fwfs.cohort import header_table

    with LocalCluster(n_workers=4, threads_per_worker=1) as cluster, Client(cluster) as client:
        table = header_table("flywheel://lab/study", client=client)

**Credentials on the workers.** The filesystem is pickled to the workers without its API
key (fwfs.remote drops it from every pickle): each worker finds its own, as the mount does,
in `FWFS_API_KEY` or the Flywheel CLI's user.json (`fw login`), in the worker's own
environment and home directory. A worker with neither fails its first file with a
PermissionError that says so, naming the file. The pickle does carry the other storage
options (the site, `verify`, `disk_cache`…): a `verify` path must exist on the workers too.

The functions work with any fsspec filesystem, so the same table built through a FUSE
mount (`fsspec.filesystem("file")` over `~/flywheel/lab/study`) is comparable row by row.
dask, pandas and nibabel are imported when used: `pip install 'fwfs[dask]'`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import math
import struct
from typing import IO, TYPE_CHECKING, Any

from fwfs.remote import PROTOCOL, FlywheelFileSystem

if TYPE_CHECKING:
    from distributed import Client

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# What is read of a file at once: the model's block (fwfs.blockcache), so one request.
HEADER_BUFFER = 128 << 10
# sizeof_hdr, the header's first field: NIfTI-1's and NIfTI-2's.
_SIZES = {348: "nifti1", 540: "nifti2"}
# The columns of a row, in order (header_table's columns).
COLUMNS = (
    "path",
    "size",
    "format",
    "ndim",
    "nx",
    "ny",
    "nz",
    "nt",
    "dx",
    "dy",
    "dz",
    "tr",
    "space_unit",
    "time_unit",
    "datatype",
    "bitpix",
    "qform_code",
    "sform_code",
    "scl_slope",
    "scl_inter",
    "intent",
    "descrip",
)

__all__ = ["COLUMNS", "header_row", "header_table", "nifti_files"]


def _url(fs: Any, path: str) -> str:
    """How a path is named in errors: with its protocol, as fwfs.remote names it."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def nifti_files(fs: Any, project_path: str) -> list[str]:
    """Every .nii and .nii.gz under `project_path` (its files, its subjects', sessions',
    acquisitions' and analyses'), sorted, as `fs.find` names them. Zip archives' members are
    not looked into: their `NAME.zip.d` directories are not listed (docs/SEMANTICS.md)."""
    root = fs._strip_protocol(project_path)
    # fsspec's find says nothing of a path that is not there or cannot be listed (an empty
    # table): the project is looked at first, and a directory below it that cannot be
    # listed fails the walk.
    if fs.info(root)["type"] != "directory":
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", _url(fs, root))
    found = fs.find(root, on_error="raise")
    return sorted(p for p in found if p.lower().endswith(NIFTI_SUFFIXES))


def _open_header(raw: Any, path: str) -> IO[bytes] | gzip.GzipFile:
    """The file's uncompressed bytes, read HEADER_BUFFER at a time: gzip parses its own
    header a few bytes at a time, and nibabel reads 348 bytes and then 4, which a
    filesystem with readahead (the model's) would take for a sequential read and fetch
    megabytes ahead of. Buffered, the first read is the only one: one request, as through
    the mount, where the kernel's page cache does the same."""
    buffered = io.BufferedReader(raw, HEADER_BUFFER)
    if path.lower().endswith(".gz"):
        return gzip.GzipFile(fileobj=buffered, mode="rb")
    return buffered


def _format(first: bytes) -> tuple[str, str] | None:
    """(format, byte order) from sizeof_hdr, else None: not a NIfTI header."""
    if len(first) < 4:
        return None
    for order in ("<", ">"):
        name = _SIZES.get(struct.unpack(f"{order}i", first)[0])
        if name is not None:
            return name, order
    return None


def _number(value: Any) -> float:
    out = float(value)
    return out if math.isfinite(out) else math.nan


def header_row(path: str, fs: Any = None) -> dict[str, Any]:
    """One flat row of the NIfTI header of `path`: its size in bytes, the format (nifti1,
    nifti2), the dimensions (ndim, nx, ny, nz, nt: 1 where a dimension is absent), voxel
    sizes (dx, dy, dz), TR (pixdim[4], in `time_unit`), datatype and bitpix, qform and sform
    codes, scaling, intent and description.

    `fs` is an fsspec filesystem; by default a `flywheel://` one with the credentials of
    this process (`path` may then carry the `flywheel://` prefix). Raises ValueError for a
    file that is not NIfTI, and the filesystem's OSError (FileNotFoundError,
    PermissionError…) naming the path.
    """
    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    if fs is None:
        fs = FlywheelFileSystem()
    path = fs._strip_protocol(path)
    url = _url(fs, path)
    try:
        with fs.open(path, "rb") as raw:
            size = raw.size if isinstance(getattr(raw, "size", None), int) else fs.size(path)
            with _open_header(raw, path) as f:
                found = _format(f.read(4))
                if found is None:
                    raise ValueError(f"{url}: not a NIfTI-1 or NIfTI-2 file")
                kind = found[0]
                f.seek(0)  # within the buffer: no read
                # Any: nibabel types some of its functions, not these.
                header_class: Any = nib.Nifti1Header if kind == "nifti1" else nib.Nifti2Header
                header = header_class.from_fileobj(f)
    except (gzip.BadGzipFile, EOFError, HeaderDataError) as err:
        raise ValueError(f"{url}: not a readable NIfTI file: {err}") from None
    except OSError as err:
        if err.filename is None:
            # Such as a worker without credentials: the error says what is missing, the
            # path says which file's row it is.
            raise type(err)(err.errno, err.strerror or str(err), url) from None
        raise
    dim = [int(d) for d in header["dim"]]
    pixdim = [float(p) for p in header["pixdim"]]
    ndim = dim[0]
    space_unit, time_unit = header.get_xyzt_units()
    slope, inter = header["scl_slope"], header["scl_inter"]
    descrip = bytes(header["descrip"]).split(b"\0", 1)[0].decode("latin-1").strip()
    return {
        "path": path,
        "size": int(size),
        "format": kind,
        "ndim": ndim,
        **{axis: dim[i] if i <= ndim else 1 for i, axis in enumerate(("nx", "ny", "nz", "nt"), 1)},
        **{axis: pixdim[i] for i, axis in enumerate(("dx", "dy", "dz", "tr"), 1)},
        "space_unit": space_unit,
        "time_unit": time_unit,
        "datatype": str(header.get_data_dtype()),
        "bitpix": int(header["bitpix"]),
        "qform_code": int(header["qform_code"]),
        "sform_code": int(header["sform_code"]),
        "scl_slope": _number(slope),
        "scl_inter": _number(inter),
        "intent": header.get_intent()[0],
        "descrip": descrip,
    }


def _open_project(fs: Any, root: str) -> None:
    """A worker's head start (header_table): an error here is the rows' to report, with
    their paths."""
    with contextlib.suppress(Exception):
        fs.info(root)


def header_table(
    project_path: str,
    client: Client | None = None,
    *,
    fs: Any = None,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """A pandas DataFrame of the NIfTI headers under `project_path`, one row per file
    (`header_row`'s columns), sorted by path; `path` is relative to the project, so the
    table built through a mount is the same.

    With a `dask.distributed.Client`, the files are listed here and their headers read on
    the cluster's workers, `fs` pickled to them without its key (the module's docstring:
    credentials); without one, they are read one after the other in this process. `fs`
    defaults to the filesystem of `project_path`'s URL (`flywheel://` for a path without
    one), made with `storage_options`.
    """
    import pandas as pd  # type: ignore[import-untyped]

    if fs is None:
        options = storage_options or {}
        if "://" in project_path and not project_path.startswith(f"{PROTOCOL}://"):
            from fsspec.core import url_to_fs  # type: ignore[import-untyped]

            fs, _ = url_to_fs(project_path, **options)
        else:
            fs = FlywheelFileSystem(**options)
    root = fs._strip_protocol(project_path).rstrip("/")
    if client is None:
        rows = [header_row(p, fs) for p in nifti_files(fs, root)]
    else:
        cluster: Any = client  # Client's methods are not typed
        # While the files are listed here, each worker opens the project: its key checked
        # and the path's containers looked up (several round trips) before its first file.
        opening = [
            cluster.submit(_open_project, fs, root, workers=[w], pure=False)
            for w in cluster.nthreads()
        ]
        files = nifti_files(fs, root)
        # pure=False: a file's row is read again by every table, not taken from a result
        # the cluster still holds from an earlier one (the file may have a new version).
        rows = cluster.gather(cluster.map(header_row, files, fs=fs, pure=False))
        cluster.gather(opening)
    for row in rows:
        row["path"] = row["path"][len(root) + 1 :] if root else row["path"]
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    return table.sort_values("path", ignore_index=True)

"""`flywheel://`: the filesystem model as an fsspec filesystem, for the PyData stack.

A second adapter beside the FUSE one (fuse_ops.py), over the same `FlywheelFS`: paths are
the mount's paths relative to its root (`group/project/subject/session/acquisition/file`,
with the same names, escaping, `<id:…>` and `NAME.zip.d/member`), reads go through the
model's ranged readers and block cache, writes through its spool and uploader. Nothing
here imports mfusepy (directly or through the wiring): `flywheel://` is for machines
without `/dev/fuse`, where libfuse may be missing and importing mfusepy fails.

- `filesystem.py` `FlywheelFileSystem`: paths, listings, info, ranged reads, uploads;
  registered as fsspec's `flywheel` protocol (pyproject.toml's `fsspec.specs` entry point).
- `files.py` `FlywheelFile`: an open file, over one handle of the model.
- `model.py`: the credentials, the one model per process and key that every instance
  (fsspec keeps one per thread) shares, and errors as Python's own exceptions.

Credentials are the mount's: `storage_options={"api_key": …}`, else `FWFS_API_KEY`, else
the Flywheel CLI's user.json. A pickled instance carries no key: the process that unpickles
it (a Dask worker) finds its own, and fails its first operation with a PermissionError
saying what is missing if it has none.
"""

from fwfs.remote.files import FlywheelFile
from fwfs.remote.filesystem import PROTOCOL, FlywheelFileSystem

__all__ = ["PROTOCOL", "FlywheelFile", "FlywheelFileSystem"]

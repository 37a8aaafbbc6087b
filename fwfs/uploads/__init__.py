"""Writes: bytes staged in a local spool directory, uploaded when the last writer closes.

`spool` holds the staged files and their journal (`Spool`, `StagedFile`); `uploader` sends
them to the site and keeps every failure (`Uploader`). Its layout, journal states and
crash rules are in `fwfs.uploads.spool`'s docstring.
"""

from fwfs.uploads.spool import (
    Outcome,
    PendingUpload,
    RecoveryReport,
    Spool,
    SpoolBusy,
    SpoolFull,
    StagedFile,
    State,
    UploadFn,
    UploadTarget,
    uploads_running,
)
from fwfs.uploads.uploader import Uploader

__all__ = [
    "Outcome",
    "PendingUpload",
    "RecoveryReport",
    "Spool",
    "SpoolBusy",
    "SpoolFull",
    "StagedFile",
    "State",
    "UploadFn",
    "UploadTarget",
    "Uploader",
    "uploads_running",
]

"""Writes: bytes staged in a local spool directory, uploaded when the last writer closes.

`journal` owns the states of a staged file, the transitions allowed between them and the
order of every step on disk (`Journal`); `spool` holds the staged files (`Spool`,
`StagedFile`, and the `Commit` protocol an upload follows); `uploader` sends them to the
site under one `RetryPolicy` (`retry`) and keeps every failure (`Uploader`); `recovery`
finishes what a killed daemon left. The spool's layout is in `fwfs.uploads.spool`'s
docstring.
"""

from fwfs.uploads.journal import (
    ALLOWED,
    IllegalTransition,
    Journal,
    State,
    UploadTarget,
    uploads_running,
)
from fwfs.uploads.recovery import Outcome, PendingUpload, RecoveryReport
from fwfs.uploads.retry import RetryPolicy, SendBudget
from fwfs.uploads.spool import (
    Commit,
    Spool,
    SpoolBusy,
    SpoolFull,
    StagedFile,
    UploadFn,
    check_spool,
)
from fwfs.uploads.uploader import Uploader

__all__ = [
    "ALLOWED",
    "Commit",
    "IllegalTransition",
    "Journal",
    "Outcome",
    "PendingUpload",
    "RecoveryReport",
    "RetryPolicy",
    "SendBudget",
    "Spool",
    "SpoolBusy",
    "SpoolFull",
    "StagedFile",
    "State",
    "UploadFn",
    "UploadTarget",
    "Uploader",
    "check_spool",
    "uploads_running",
]

"""The Uploader: staged files to the site under one retry policy, failures kept in recovery/.

It only sequences: a commit takes the staged file's ``exclusive()``, begins a `Commit`,
sends it (the one retry loop of an upload), and ends the commit; the states and what is
on disk are `StagedFile`'s and the `Journal`'s. What a killed daemon left behind is
`fwfs.uploads.recovery`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from fwfs.errors import FwfsError, RemoteError
from fwfs.models import Json
from fwfs.uploads import recovery
from fwfs.uploads.journal import UploadTarget, local_error
from fwfs.uploads.recovery import PendingUpload, RecoveryReport
from fwfs.uploads.retry import RetryPolicy
from fwfs.uploads.spool import Spool, StagedFile, UploadFn

log = logging.getLogger("fwfs.uploads")


class Uploader:
    """Uploads staged files through ``upload_fn`` and keeps every failure's bytes.

    ``upload_fn(target, fileobj, size, budget) -> file JSON`` reads ``size`` bytes from
    ``fileobj`` (a fresh read-only file, at offset 0, on each try), sends a request again
    only as ``budget`` (a `SendBudget`) allows, and raises ``FwfsError`` on failure.
    ``RemoteError`` (EIO: 5xx, dropped connections, bad bodies, a refused signed URL)
    starts the upload again while the budget allows (``retry``: each request sent at most
    3 times in all, waiting 1 s, then 2 s); any other ``FwfsError`` (EACCES, EEXIST,
    EINVAL, EFBIG...) is final at once. Anything else ``upload_fn`` raises is a bug: logged
    with its traceback, final, EIO. ``sleep`` waits before a resend.
    """

    def __init__(
        self,
        spool: Spool,
        upload_fn: UploadFn,
        *,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spool = spool
        self.retry = retry or RetryPolicy()
        self.sleep = sleep
        self._upload_fn = upload_fn
        self._active = 0
        self._idle = threading.Condition()

    # The write path: called from the program's flush/fsync/release.

    def commit(self, staged: StagedFile) -> Json | None:
        """Upload ``staged`` now if it is dirty; its file JSON, or None if there was nothing
        to upload (unchanged since the last upload or copy, or discarded).

        On failure the ``FwfsError`` is raised for the program's close()/fsync(). With no
        writer left the bytes move to recovery/ at once; with writers still open they stay
        staged (state "synced") for the next commit, and the last close moves them to
        recovery/ unless the file was written again. On success with no writer left, the
        staged bytes and journal are removed.
        """
        with self._track(), staged.exclusive():
            return self._commit_held(staged)

    def release(self, staged: StagedFile) -> Json | None:
        """One writing handle closed (FUSE release). At the last one: upload if dirty (the
        flush before it normally did), else drop the staged bytes. A commit that already
        failed, with no write since, is not tried again here: its bytes go to recovery/ and
        its error is raised again (release errors reach no program; the log has them)."""
        if staged.close_writer() > 0:
            return None
        with self._track(), staged.exclusive():
            if not staged.settle_last_close():
                return None
            error = staged.failed_commit
            if error is not None:
                staged.keep(error)
                raise error
            return self._commit_held(staged)

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until no upload runs; False if ``timeout`` passed first (for unmount)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    @property
    def active(self) -> int:
        """Uploads running (or waiting for their file) right now."""
        with self._idle:
            return self._active

    def pending(self) -> list[PendingUpload]:
        """Every entry with bytes the site lacks: staged (any writer state) and recovery/,
        oldest first, read from the journal on disk."""
        return recovery.pending(self.spool)

    def recover(self, *, retry_recovery: bool = False) -> list[RecoveryReport]:
        """Finish what a previous run left in the spool; one report per entry with bytes.

        Call once at mount start, before serving (entries of this run's live files are
        skipped anyway). "synced"/"uploading" entries are uploaded (an "uploading" one may
        thus reach the site twice: at least once beats at most once); "staged" ones go to
        recovery/ as incomplete; entries in recovery/ are listed, or retried when
        ``retry_recovery``. Logs a WARNING for every entry left in recovery/.
        """
        with self._track():
            return recovery.recover(self.spool, self.send, retry_recovery)

    def send(
        self, target: UploadTarget, data: Path, size: int, note_attempt: Callable[[], None]
    ) -> Json:
        """The upload of ``data``'s first ``size`` bytes to ``target`` under one
        `SendBudget` of ``retry``: ``upload_fn`` retries a failed request in place from it,
        and a ``RemoteError`` it raises starts the whole upload again while the budget
        allows. ``note_attempt`` is called before each try of the whole upload."""
        budget = self.retry.budget(target.path, self.sleep)
        while True:
            note_attempt()
            try:
                fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with open(fd, "rb") as fileobj:
                    return self._upload_fn(target, fileobj, size, budget)
            except RemoteError as error:
                if not budget.restart(error):
                    raise
            except FwfsError:
                raise
            except OSError as exc:
                raise local_error(exc, f"reading the staged bytes of {target.path!r}") from exc
            except Exception as exc:
                log.exception("upload of %r raised an unexpected error", target.path)
                raise FwfsError(f"upload of {target.path!r} failed: {exc!r}") from exc

    # Internals.

    @contextlib.contextmanager
    def _track(self) -> Iterator[None]:
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _commit_held(self, staged: StagedFile) -> Json | None:
        commit = staged.begin_commit()
        if commit is None:
            return None
        durable = threading.Thread(target=commit.make_durable, name="fwfs-fsync", daemon=True)
        durable.start()
        try:
            result = self.send(commit.target, commit.data_path, commit.size, commit.note_attempt)
        except FwfsError as error:
            durable.join()
            if not commit.failed(error):
                log.warning(
                    "upload of %r failed (%s); its bytes stay staged at %s while it is "
                    "open, and go to %s if its last close fails too",
                    commit.target.path,
                    error,
                    commit.data_path,
                    self.spool.recovery,
                )
            raise
        durable.join()
        commit.succeeded(result)
        log.debug("uploaded %r (%d bytes)", commit.target.path, commit.size)
        return result

"""The Uploader: staged files to the site, retries, recovery/ and a killed daemon's spool.

The spool's layout, its journal states and what recovery does with each are described in
`fwfs.uploads.spool`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    RemoteError,
)
from fwfs.models import Json
from fwfs.uploads.spool import (
    _FORMAT,
    PendingUpload,
    RecoveryReport,
    Spool,
    StagedFile,
    UploadFn,
    UploadTarget,
    _entries,
    _float,
    _fsync_dir,
    _int,
    _local_error,
    _read_json,
    _state,
    _str,
    _write_json_atomic,
)

log = logging.getLogger("fwfs.uploads")

_MAX_BACKOFF = 30.0
# States whose bytes the site lacks and the program had finished: a crash uploads them.
_UPLOAD_AFTER_CRASH: frozenset[str] = frozenset({"synced", "uploading"})
_DROP_AFTER_CRASH: frozenset[str] = frozenset({"copying", "clean", "discarded"})


class Uploader:
    """Uploads staged files through ``upload_fn`` and keeps every failure's bytes.

    ``upload_fn(target, fileobj, size) -> file JSON`` reads ``size`` bytes from ``fileobj``
    (a fresh read-only file, at offset 0, on each attempt) and raises ``FwfsError`` on
    failure. ``RemoteError`` (EIO: 5xx, dropped connections, bad bodies) is retried up to
    ``attempts`` times in all, sleeping ``backoff``, then twice that..., at most 30 s;
    any other ``FwfsError`` (EACCES, EEXIST, EINVAL, EFBIG...) is final at once. Anything
    else ``upload_fn`` raises is a bug: logged with its traceback, final, EIO.
    """

    def __init__(
        self,
        spool: Spool,
        upload_fn: UploadFn,
        *,
        attempts: int = 3,
        backoff: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if attempts < 1 or backoff < 0:
            raise InvalidArgument("attempts must be at least 1 and backoff not negative")
        self.spool = spool
        self._upload_fn = upload_fn
        self._attempts = attempts
        self._backoff = backoff
        self._sleep = sleep
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
        with self._track(), staged._busy:
            return self._commit_held(staged)

    def release(self, staged: StagedFile) -> Json | None:
        """One writing handle closed (FUSE release). At the last one: upload if dirty (the
        flush before it normally did), else drop the staged bytes. A commit that already
        failed, with no write since, is not tried again here: its bytes go to recovery/ and
        its error is raised again (release errors reach no program; the log has them)."""
        if staged.close_writer() > 0:
            return None
        with self._track(), staged._busy:
            with staged._lock:
                if staged._fd is None or staged._writers > 0:
                    return None  # finished already, or reopened meanwhile
                if staged._state == "discarded" or not staged._dirty:
                    staged._remove()
                    return None
                if staged._failed is not None:
                    error = staged._failed
                    self._to_recovery(staged, error)
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
        found: list[PendingUpload] = []
        listed: set[str] = set()  # a move to recovery/ in progress shows in both places
        places: tuple[tuple[Literal["staging", "recovery"], Path], ...] = (
            ("staging", self.spool.journal),
            ("recovery", self.spool.recovery),
        )
        for where, directory in places:
            for entry in _entries(directory, ".json"):
                if entry in listed:
                    continue
                journal = directory / f"{entry}.json"
                data = self.spool.data_path(entry, where)
                try:
                    record = _read_json(journal)
                    size = data.stat().st_size
                except FileNotFoundError:
                    continue  # finished between the listing and now
                except (OSError, ValueError):
                    record, size = {}, 0
                state = record.get("state")
                if state in ("copying", "clean", "discarded"):
                    continue
                try:
                    target: UploadTarget | None = UploadTarget.from_json(record.get("target"))
                except ValueError:
                    target = None
                listed.add(entry)
                found.append(
                    PendingUpload(
                        entry=entry,
                        target=target,
                        state=_state(state),
                        where=where,
                        size=size,
                        attempts=_int(record.get("attempts")),
                        last_error=_str(record.get("last_error")),
                        created=_float(record.get("created")),
                        data_path=data,
                        journal_path=journal,
                    )
                )
        found.sort(key=lambda p: (p.created, p.entry))
        return found

    # Mount start.

    def recover(self, *, retry_recovery: bool = False) -> list[RecoveryReport]:
        """Finish what a previous run left in the spool; one report per entry with bytes.

        Call once at mount start, before serving (entries of this run's live files are
        skipped anyway). "synced"/"uploading" entries are uploaded (an "uploading" one may
        thus reach the site twice: at least once beats at most once); "staged" ones go to
        recovery/ as incomplete; entries in recovery/ are listed, or retried when
        ``retry_recovery``. Logs a WARNING for every entry left in recovery/.
        """
        with self._track():
            spool = self.spool
            for directory in (spool.journal, spool.recovery):
                for tmp in directory.glob("*.json.tmp"):
                    tmp.unlink(missing_ok=True)
            reports: list[RecoveryReport] = []
            seen: set[str] = set()
            steps: list[tuple[str, Callable[[], RecoveryReport | None]]] = []
            for entry in _entries(spool.journal, ".json"):
                if not spool._is_live(entry):
                    seen.add(entry)
                    steps.append(
                        (entry, functools.partial(self._recover_staged, entry, retry_recovery))
                    )
            for entry in _entries(spool.staging, ".data"):
                if entry not in seen and not spool._is_live(entry):
                    seen.add(entry)
                    # Bytes without a journal: no ordering here produces this, so someone
                    # removed the journal. Keep the bytes where a person will look.
                    why = "no journal entry"
                    steps.append((entry, functools.partial(self._incomplete, entry, {}, None, why)))
            recovery = set(_entries(spool.recovery, ".data")) | set(
                _entries(spool.recovery, ".json")
            )
            for entry in sorted(recovery - seen):
                kept = functools.partial(self._recover_kept, entry, retry_recovery)
                steps.append((entry, kept))
            for entry, step in steps:
                try:
                    report = step()
                except OSError as exc:
                    # One unreadable entry must not keep the others from being recovered.
                    log.error("could not recover spool entry %s: %s", entry, exc)
                    continue
                if report is not None:
                    reports.append(report)
            return reports

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
        with staged._lock:
            fd = staged._check_live()
            if staged._state == "discarded" or not staged._dirty:
                return None
            try:
                staged._size = os.fstat(fd).st_size
                sync_fd = os.dup(fd)  # the staged fd may be closed before the sync ends
            except OSError as exc:
                raise _local_error(exc, f"staging {staged._target.path!r}") from exc
            target, size = staged._target, staged._size
            # Bytes fsync'ed since their last change are durable already.
            staged._set_state("uploading" if staged._state == "synced" else "sending")
        # "uploading" promises the next mount durable bytes, but fsync of a large file
        # takes as long as a fast upload (1.1 s per GiB here): both run at once, and the
        # journal says "uploading" once the sync is done ("sending" until then, which a
        # crash sends to recovery/, like bytes still being written).
        durable = threading.Thread(
            target=self._make_durable, args=(staged, sync_fd), name="fwfs-fsync", daemon=True
        )
        durable.start()

        def note_attempt() -> None:
            with staged._lock:
                staged._attempts += 1
                with contextlib.suppress(FwfsError):
                    staged._write_journal()  # a count for status; not worth failing over

        try:
            result = self._upload(target, staged.data_path, size, note_attempt)
        except FwfsError as error:
            durable.join()
            with staged._lock:
                staged._failed = error
                staged._last_error, staged._last_errno = str(error), error.errno
                if staged._writers == 0:
                    self._to_recovery(staged, error)
                else:
                    with contextlib.suppress(FwfsError):
                        staged._set_state("synced")
                    log.warning(
                        "upload of %r failed (%s); its bytes stay staged at %s while it is "
                        "open, and go to %s if its last close fails too",
                        target.path,
                        error,
                        staged.data_path,
                        self.spool.recovery,
                    )
            raise
        durable.join()
        with staged._lock:
            staged._dirty = False
            staged._failed = None
            staged._last_error = staged._last_errno = None
            staged._result = result
            if staged._writers == 0:
                staged._remove()
            else:
                with contextlib.suppress(FwfsError):
                    staged._set_state("clean")
        log.debug("uploaded %r (%d bytes)", target.path, size)
        return result

    def _make_durable(self, staged: StagedFile, fd: int) -> None:
        try:
            os.fsync(fd)
            _fsync_dir(self.spool.staging)
        except OSError as exc:
            log.warning("could not make %s durable: %s", staged.data_path, exc)
            return  # stays "sending": after a crash, recovery/ rather than a re-upload
        finally:
            os.close(fd)
        with staged._lock:
            if staged._state == "sending":
                with contextlib.suppress(FwfsError):
                    staged._set_state("uploading")

    def _to_recovery(self, staged: StagedFile, error: FwfsError) -> None:
        """Caller holds staged._lock and staged._busy; the file is finished afterwards."""
        staged._state = "failed"
        staged._last_error, staged._last_errno = str(error), error.errno
        record = staged._record()
        staged._close_fd()
        try:
            where = self.spool._move_to_recovery(staged.entry, record)
        except OSError as exc:
            log.error(
                "upload of %r failed (%s), and moving its bytes to %s failed too (%s); they "
                "are still at %s and the next mount will report them",
                staged._target.path,
                error,
                self.spool.recovery,
                exc,
                staged.data_path,
            )
            return
        log.warning(
            "upload of %r to %s %s failed (%s); its %d bytes are kept in %s (journal: %s)",
            staged._target.path,
            staged._target.kind,
            staged._target.cid,
            error,
            staged._size,
            where,
            self.spool.journal_path(staged.entry, "recovery"),
        )

    def _upload(
        self, target: UploadTarget, data: Path, size: int, note_attempt: Callable[[], None]
    ) -> Json:
        for attempt in range(1, self._attempts + 1):
            note_attempt()
            try:
                fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with open(fd, "rb") as fileobj:
                    return self._upload_fn(target, fileobj, size)
            except RemoteError as error:
                if attempt == self._attempts:
                    raise
                delay = min(self._backoff * 2 ** (attempt - 1), _MAX_BACKOFF)
                log.info(
                    "upload of %r failed (%s); attempt %d of %d in %.1f s",
                    target.path,
                    error,
                    attempt + 1,
                    self._attempts,
                    delay,
                )
                self._sleep(delay)
            except FwfsError:
                raise
            except OSError as exc:
                raise _local_error(exc, f"reading the staged bytes of {target.path!r}") from exc
            except Exception as exc:
                log.exception("upload of %r raised an unexpected error", target.path)
                raise FwfsError(f"upload of {target.path!r} failed: {exc!r}") from exc
        raise AssertionError("unreachable: attempts >= 1")

    def _recover_staged(self, entry: str, retry: bool) -> RecoveryReport | None:
        spool = self.spool
        journal = spool.journal_path(entry)
        data = spool.data_path(entry)
        try:
            record = _read_json(journal)
            target: UploadTarget | None = UploadTarget.from_json(record.get("target"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            if not data.exists():
                journal.unlink(missing_ok=True)
                return None
            # Keep the unreadable journal beside the bytes: it may still help a person.
            with contextlib.suppress(OSError):
                os.replace(journal, spool.recovery / f"{entry}.unreadable")
            return self._incomplete(entry, {}, None, f"unreadable journal entry: {exc}")
        state = record.get("state")
        kept_journal = spool.journal_path(entry, "recovery")
        if kept_journal.exists():
            # Crashed while moving to recovery/: the program was told the upload failed,
            # so this is a recovery entry (listed, not uploaded again); finish the move.
            with contextlib.suppress(OSError, ValueError):
                record = _read_json(kept_journal)
            spool._move_to_recovery(entry, record)
            return self._recover_kept(entry, retry)
        if not data.exists():
            if spool.data_path(entry, "recovery").exists():
                # Crashed while moving to recovery/, its journal there lost: finish the move.
                spool._move_to_recovery(entry, record)
                return self._recover_kept(entry, retry)
            journal.unlink(missing_ok=True)  # created but never written, or uploaded
            return None
        if state in _DROP_AFTER_CRASH:
            log.info("dropping staged %s (%s): nothing to upload", entry, state)
            spool._remove_entry(entry)
            return None
        assert target is not None
        if state not in _UPLOAD_AFTER_CRASH:
            return self._incomplete(
                entry,
                record,
                target,
                "fwfs stopped while the file was open for writing; not uploaded",
            )
        size = data.stat().st_size
        attempts = _int(record.get("attempts"))

        def note_attempt() -> None:
            nonlocal attempts
            attempts += 1
            record.update(state="uploading", attempts=attempts, updated=time.time())
            with contextlib.suppress(OSError):
                _write_json_atomic(journal, record)

        try:
            result = self._upload(target, data, size, note_attempt)
        except FwfsError as error:
            record.update(last_error=str(error), errno=error.errno, size=size)
            where = spool._move_to_recovery(entry, record)
            log.warning(
                "upload of %r left by a previous run failed (%s); its %d bytes are kept in %s",
                target.path,
                error,
                size,
                where,
            )
            return RecoveryReport(
                entry,
                target,
                "failed",
                size,
                where,
                spool.journal_path(entry, "recovery"),
                str(error),
                error.errno,
            )
        spool._remove_entry(entry)
        log.info("uploaded %r (%d bytes) left by a previous run", target.path, size)
        return RecoveryReport(entry, target, "uploaded", size, None, None, result=result)

    def _incomplete(
        self, entry: str, record: Json, target: UploadTarget | None, why: str
    ) -> RecoveryReport:
        spool = self.spool
        size = spool.data_path(entry).stat().st_size
        record = {
            "format": _FORMAT,
            "id": entry,
            "created": time.time(),
            "attempts": 0,
            **record,
            "target": target.to_json() if target else None,
            "size": size,
            "last_error": why,
            "errno": None,
        }
        where = spool._move_to_recovery(entry, record)
        log.warning(
            "staged %r was not uploaded (%s); its %d bytes are kept in %s",
            target.path if target else entry,
            why,
            size,
            where,
        )
        return RecoveryReport(
            entry, target, "incomplete", size, where, spool.journal_path(entry, "recovery"), why
        )

    def _recover_kept(self, entry: str, retry: bool) -> RecoveryReport | None:
        spool = self.spool
        data = spool.data_path(entry, "recovery")
        journal = spool.journal_path(entry, "recovery")
        if not data.exists():
            # A person deleted the bytes to dismiss the entry; the journal goes too.
            journal.unlink(missing_ok=True)
            return None
        size = data.stat().st_size
        try:
            record = _read_json(journal)
            target: UploadTarget | None = UploadTarget.from_json(record.get("target"))
        except (OSError, ValueError):
            record, target = {}, None
        error, errno = _str(record.get("last_error")), record.get("errno")
        errno = errno if isinstance(errno, int) else None
        if retry and target is not None:
            attempts = _int(record.get("attempts"))

            def note_attempt() -> None:
                nonlocal attempts
                attempts += 1

            try:
                result = self._upload(target, data, size, note_attempt)
            except FwfsError as exc:
                error, errno = str(exc), exc.errno
                record.update(attempts=attempts, last_error=error, errno=errno)
                with contextlib.suppress(OSError):
                    _write_json_atomic(journal, {**record, "updated": time.time()})
                log.warning(
                    "retried upload of %r failed again (%s); its bytes stay in %s",
                    target.path,
                    exc,
                    data,
                )
                return RecoveryReport(entry, target, "failed", size, data, journal, error, errno)
            data.unlink(missing_ok=True)
            journal.unlink(missing_ok=True)
            _fsync_dir(spool.recovery)
            log.info("uploaded %r (%d bytes) from %s", target.path, size, data)
            return RecoveryReport(entry, target, "uploaded", size, None, None, result=result)
        log.warning(
            "an earlier upload of %r failed (%s); its %d bytes are in %s",
            target.path if target else entry,
            error,
            size,
            data,
        )
        return RecoveryReport(
            entry, target, "kept", size, data, journal if journal.exists() else None, error, errno
        )

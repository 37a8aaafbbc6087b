"""What a previous run left in the spool: listed (``pending``) and finished (``recover``).

Each entry is handled by the state its journal record names, as the table of
`fwfs.uploads.journal` says: "synced"/"uploading" are uploaded, "staged"/"sending" (and
anything unreadable) go to recovery/ as incomplete, "copying"/"clean"/"discarded" are
dropped, and recovery/ entries are listed, or retried on request.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fwfs.errors import FwfsError
from fwfs.models import Json
from fwfs.uploads.journal import (
    DROP_AFTER_CRASH,
    FORMAT,
    UPLOAD_AFTER_CRASH,
    State,
    UploadTarget,
    Where,
    as_float,
    as_int,
    as_str,
    check_transition,
    entries,
    parse_state,
)
from fwfs.uploads.spool import Spool

log = logging.getLogger("fwfs.uploads")

Outcome = Literal["uploaded", "failed", "incomplete", "kept"]
# The Uploader's retry loop: (target, data path, size, note_attempt) -> the file's JSON.
Send = Callable[[UploadTarget, Path, int, Callable[[], None]], Json]


@dataclass(frozen=True)
class PendingUpload:
    """One entry of the spool as ``fwfs`` status shows it (from the journal on disk)."""

    entry: str
    target: UploadTarget | None  # None: the journal entry could not be read
    state: State
    where: Where
    size: int
    attempts: int
    last_error: str | None
    created: float
    data_path: Path
    journal_path: Path


@dataclass(frozen=True)
class RecoveryReport:
    """What ``Uploader.recover`` did with one entry a previous run left behind.

    ``uploaded``: the upload has now happened (``result`` is the file's JSON).
    ``failed``: it was tried and failed; the bytes are at ``data_path`` in recovery/.
    ``incomplete``: a program was still writing when fwfs stopped (or the journal was
    unreadable); not uploaded, the bytes are at ``data_path`` in recovery/.
    ``kept``: already in recovery/ from an earlier run; not retried.
    """

    entry: str
    target: UploadTarget | None
    outcome: Outcome
    size: int
    data_path: Path | None
    journal_path: Path | None
    error: str | None = None
    errno: int | None = None
    result: Json | None = None


def pending(spool: Spool) -> list[PendingUpload]:
    """Every entry with bytes the site lacks, staged and in recovery/, oldest first."""
    found: list[PendingUpload] = []
    listed: set[str] = set()  # a move to recovery/ in progress shows in both places
    places: tuple[tuple[Where, Path], ...] = (
        ("staging", spool.journal),
        ("recovery", spool.recovery),
    )
    for where, directory in places:
        for entry in entries(directory, ".json"):
            if entry in listed:
                continue
            journal = directory / f"{entry}.json"
            data = spool.data_path(entry, where)
            try:
                record = spool.records.read(entry, where)
                size = data.stat().st_size
            except FileNotFoundError:
                continue  # finished between the listing and now
            except (OSError, ValueError):
                record, size = {}, 0
            state = parse_state(record.get("state"))
            if state in DROP_AFTER_CRASH:
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
                    state=state,
                    where=where,
                    size=size,
                    attempts=as_int(record.get("attempts")),
                    last_error=as_str(record.get("last_error")),
                    created=as_float(record.get("created")),
                    data_path=data,
                    journal_path=journal,
                )
            )
    found.sort(key=lambda p: (p.created, p.entry))
    return found


def recover(spool: Spool, send: Send, retry_recovery: bool) -> list[RecoveryReport]:
    """See ``Uploader.recover``."""
    spool.records.drop_temporaries()
    reports: list[RecoveryReport] = []
    seen: set[str] = set()
    steps: list[tuple[str, Callable[[], RecoveryReport | None]]] = []
    for entry in entries(spool.journal, ".json"):
        if not spool.is_live(entry):
            seen.add(entry)
            steps.append((entry, functools.partial(_staged, spool, send, entry, retry_recovery)))
    for entry in entries(spool.staging, ".data"):
        if entry not in seen and not spool.is_live(entry):
            seen.add(entry)
            # Bytes without a journal: no ordering here produces this, so someone
            # removed the journal. Keep the bytes where a person will look.
            why = "no journal entry"
            steps.append((entry, functools.partial(_incomplete, spool, entry, {}, None, why)))
    kept = set(entries(spool.recovery, ".data")) | set(entries(spool.recovery, ".json"))
    for entry in sorted(kept - seen):
        steps.append((entry, functools.partial(_kept, spool, send, entry, retry_recovery)))
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


def _staged(spool: Spool, send: Send, entry: str, retry: bool) -> RecoveryReport | None:
    journal = spool.journal_path(entry)
    data = spool.data_path(entry)
    try:
        record = spool.records.read(entry)
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
        return _incomplete(spool, entry, {}, None, f"unreadable journal entry: {exc}")
    state = parse_state(record.get("state"))
    if spool.journal_path(entry, "recovery").exists():
        # Crashed while moving to recovery/: the program was told the upload failed,
        # so this is a recovery entry (listed, not uploaded again); finish the move.
        with contextlib.suppress(OSError, ValueError):
            record = spool.records.read(entry, "recovery")
        spool.records.to_recovery(entry, record)
        return _kept(spool, send, entry, retry)
    if not data.exists():
        if spool.data_path(entry, "recovery").exists():
            # Crashed while moving to recovery/, its journal there lost: finish the move.
            spool.records.to_recovery(entry, record)
            return _kept(spool, send, entry, retry)
        journal.unlink(missing_ok=True)  # created but never written, or uploaded
        return None
    if state in DROP_AFTER_CRASH:
        check_transition(state, State.DONE)
        log.info("dropping staged %s (%s): nothing to upload", entry, state.value)
        spool.records.remove(entry)
        return None
    assert target is not None
    if state not in UPLOAD_AFTER_CRASH:
        check_transition(state, State.FAILED)
        why = "fwfs stopped while the file was open for writing; not uploaded"
        return _incomplete(spool, entry, record, target, why)
    size = data.stat().st_size
    attempts = as_int(record.get("attempts"))

    def note_attempt() -> None:
        nonlocal attempts, state
        check_transition(state, State.UPLOADING)
        attempts += 1
        state = State.UPLOADING
        record.update(state=state.value, attempts=attempts, updated=time.time())
        with contextlib.suppress(OSError):
            spool.records.write(entry, record)

    try:
        result = send(target, data, size, note_attempt)
    except FwfsError as error:
        check_transition(state, State.FAILED)
        record.update(last_error=str(error), errno=error.errno, size=size)
        where = spool.records.to_recovery(entry, record)
        log.warning(
            "upload of %r left by a previous run failed (%s); its %d bytes are kept in %s",
            target.path,
            error,
            size,
            where,
        )
        kept_journal = spool.journal_path(entry, "recovery")
        return RecoveryReport(
            entry, target, "failed", size, where, kept_journal, str(error), error.errno
        )
    check_transition(state, State.DONE)
    spool.records.remove(entry)
    log.info("uploaded %r (%d bytes) left by a previous run", target.path, size)
    return RecoveryReport(entry, target, "uploaded", size, None, None, result=result)


def _incomplete(
    spool: Spool, entry: str, record: Json, target: UploadTarget | None, why: str
) -> RecoveryReport:
    size = spool.data_path(entry).stat().st_size
    record = {
        "format": FORMAT,
        "id": entry,
        "created": time.time(),
        "attempts": 0,
        **record,
        "target": target.to_json() if target else None,
        "size": size,
        "last_error": why,
        "errno": None,
    }
    where = spool.records.to_recovery(entry, record)
    log.warning(
        "staged %r was not uploaded (%s); its %d bytes are kept in %s",
        target.path if target else entry,
        why,
        size,
        where,
    )
    kept_journal = spool.journal_path(entry, "recovery")
    return RecoveryReport(entry, target, "incomplete", size, where, kept_journal, why)


def _kept(spool: Spool, send: Send, entry: str, retry: bool) -> RecoveryReport | None:
    data = spool.data_path(entry, "recovery")
    journal = spool.journal_path(entry, "recovery")
    if not data.exists():
        # A person deleted the bytes to dismiss the entry; the journal goes too.
        journal.unlink(missing_ok=True)
        return None
    size = data.stat().st_size
    try:
        record = spool.records.read(entry, "recovery")
        target: UploadTarget | None = UploadTarget.from_json(record.get("target"))
    except (OSError, ValueError):
        record, target = {}, None
    error, errno = as_str(record.get("last_error")), record.get("errno")
    errno = errno if isinstance(errno, int) else None
    if retry and target is not None:
        attempts = as_int(record.get("attempts"))

        def note_attempt() -> None:
            nonlocal attempts
            attempts += 1

        try:
            result = send(target, data, size, note_attempt)
        except FwfsError as exc:
            error, errno = str(exc), exc.errno
            record.update(attempts=attempts, last_error=error, errno=errno)
            with contextlib.suppress(OSError):
                spool.records.write(entry, {**record, "updated": time.time()}, "recovery")
            log.warning(
                "retried upload of %r failed again (%s); its bytes stay in %s",
                target.path,
                exc,
                data,
            )
            return RecoveryReport(entry, target, "failed", size, data, journal, error, errno)
        check_transition(State.FAILED, State.DONE)
        spool.records.dismiss(entry)
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

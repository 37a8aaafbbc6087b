"""Writes: bytes staged in a local spool directory, uploaded when the last writer closes.

Flywheel stores whole files, so a written file is staged on local disk (never in memory)
and uploaded as one new version when the program that wrote it is done: on the close of
its last writer, or on ``fsync``. The upload runs in the caller's thread, so the program's
``close()``/``fsync()`` learns the outcome as an errno. The upload itself is handed in as
a plain callable (``UploadFn``), so this module knows nothing of HTTP.

Layout under the spool root (directories 0700, files 0600, every name generated here)::

    ROOT/
    ├── lock                 flock'ed by the one Spool using ROOT (SpoolBusy otherwise)
    ├── staging/<id>.data    the bytes of a file being written or uploaded
    ├── journal/<id>.json    what to do with staging/<id>.data: target, state, attempts...
    └── recovery/            uploads that failed for good, kept until a person decides:
        ├── <id>.data        the bytes, exactly as the program wrote them
        └── <id>.json        their journal entry (state "failed", the last error)

``<id>`` is 32 hex digits from uuid4: a Flywheel name (which may hold ``../``, ``/``, NUL
or 300 bytes) is only ever stored inside the JSON, never used as a path.

Journal states, the transitions between them, what the next mount does with each, and the
order of every step on disk are `fwfs.uploads.journal`'s (docs/SEMANTICS.md shows them).

"staged" goes to recovery/ rather than up: the daemon died while a program was writing,
so the program never closed the file successfully, and uploading a half-written file as
the newest version would be worse than reporting it. Entries already in recovery/ are only
listed (one WARNING each) at mount, not retried, unless ``recover(retry_recovery=True)``:
the program was told that upload failed, may well have written the file again since, and
replaying older bytes would put a stale version on top of a newer one; a permanent error
(EACCES) would also repeat on every mount. A person deletes both files of an entry once
it is dealt with.

Wiring into FUSE (the errno must reach close(2), and only flush's does; release's is lost):
create/O_TRUNC -> ``Spool.create``; another writing open -> ``StagedFile.open``;
flush of the only writing handle -> ``Uploader.commit``; fsync -> ``StagedFile.fsync``
then ``Uploader.commit``; release -> ``Uploader.release``; rename -> ``retarget``;
unlink -> ``discard``; unmount -> ``Uploader.drain``; mount -> ``Uploader.recover``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    PermissionDenied,
    StaleFile,
)
from fwfs.errors import SpoolBusy as SpoolBusy  # re-exported: the spool raises them
from fwfs.errors import SpoolFull as SpoolFull
from fwfs.models import Json
from fwfs.uploads.journal import (
    FORMAT,
    Journal,
    State,
    UploadTarget,
    Where,
    check_transition,
    local_error,
)
from fwfs.uploads.retry import SendBudget

log = logging.getLogger("fwfs.uploads")

# (target, the staged bytes, their size, the close()'s budget) -> the file's JSON.
UploadFn = Callable[[UploadTarget, BinaryIO, int, SendBudget], Json]

_COPY_CHUNK = 1 << 20


def _private_dir(path: Path, *, follow: bool) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"spool directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        # Another user's directory could expose staged bytes (PHI) or feed us forged journals.
        raise PermissionDenied(f"spool directory {path} belongs to another user")
    os.chmod(path, 0o700)


def check_spool(root: Path) -> None:
    """Raises what a mount would meet using `root` (busy, another user's, not a dir)."""
    Spool(root).close()


class Spool:
    """The staging area under ``root``; one per mount, held with an exclusive lock.

    Creating one makes the directories private, and takes ``root/lock`` so that a second
    daemon on the same spool fails at once (``SpoolBusy``) instead of "recovering" files
    the first one is still writing. ``close()`` releases it; staged files stay on disk.
    ``records`` is its `Journal`: every step on disk goes through it.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.records = Journal(self.root)
        self.staging = self.records.staging
        self.journal = self.records.journal
        self.recovery = self.records.recovery
        try:
            self._open()
        except OSError as exc:
            raise local_error(exc, f"spool directory {self.root}") from exc
        self._lock = threading.Lock()
        self._live: dict[str, StagedFile] = {}

    def _open(self) -> None:
        _private_dir(self.root, follow=True)  # the user may point it anywhere they own
        for sub in (self.staging, self.journal, self.recovery):
            _private_dir(sub, follow=False)  # ours: a symbolic link here is not
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self._lock_fd: int | None = os.open(self.root / "lock", flags, 0o600)
        os.fchmod(self._lock_fd, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolBusy(f"spool directory {self.root} is in use by another fwfs") from None

    def close(self) -> None:
        with self._lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool({str(self.root)!r})"

    def create(self, target: UploadTarget, truncate_from: BinaryIO | None = None) -> StagedFile:
        """A new staged file for ``target``, open by one writer (the creating handle).

        ``truncate_from=None`` starts empty and dirty: create and O_TRUNC upload even if
        nothing is written (a 0-byte file is a valid result). Otherwise the file starts as
        a streamed copy of ``truncate_from`` (the current version, for an open for writing
        without O_TRUNC) and is clean until written, so closing it unchanged uploads
        nothing. An error reading ``truncate_from`` propagates, leaving nothing behind.
        """
        entry = uuid.uuid4().hex
        staged = StagedFile(self, entry, target)
        with self._lock:
            self._live[entry] = staged
        try:
            staged._start(truncate_from)
        except BaseException:
            staged._abandon()
            raise
        return staged

    def data_path(self, entry: str, where: Where = "staging") -> Path:
        return self.records.data_path(entry, where)

    def journal_path(self, entry: str, where: Where = "staging") -> Path:
        return self.records.journal_path(entry, where)

    def is_live(self, entry: str) -> bool:
        """Whether ``entry`` is a staged file of this run (recovery leaves those alone)."""
        with self._lock:
            return entry in self._live

    def _forget(self, entry: str) -> None:
        with self._lock:
            self._live.pop(entry, None)


class Commit:
    """One upload of a staged file, begun by ``StagedFile.begin_commit``: a snapshot of
    its target and size, ended by exactly one of ``succeeded`` or ``failed``. The caller
    holds ``StagedFile.exclusive()`` throughout."""

    def __init__(self, staged: StagedFile, target: UploadTarget, size: int, fd: int) -> None:
        self.staged = staged
        self.target = target
        self.size = size
        self._fd: int | None = fd  # a dup: the staged fd may be closed before the sync ends

    @property
    def data_path(self) -> Path:
        return self.staged.data_path

    def make_durable(self) -> None:
        """fsync the bytes (in parallel with the upload: for a large file it takes as long
        as a fast upload, 1.1 s per GiB here); then the journal says "uploading", which a
        crash uploads again. Until then it says "sending", which a crash keeps in
        recovery/, like bytes still being written."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self.staged.spool.records.make_durable(fd)
        except OSError as exc:
            log.warning("could not make %s durable: %s", self.data_path, exc)
            return  # stays "sending": after a crash, recovery/ rather than a re-upload
        finally:
            os.close(fd)
        self.staged._durable()

    def note_attempt(self) -> None:
        """One more attempt, counted in the journal (for status; not worth failing over)."""
        self.staged._note_attempt()

    def succeeded(self, result: Json) -> None:
        """The site holds the snapshot: clean while writers remain, else finished."""
        self.staged._committed(result)

    def failed(self, error: FwfsError) -> bool:
        """The upload failed for good: True if the bytes went to recovery/ (no writer
        left; the file is finished), False if they stay staged for the next commit."""
        return self.staged._commit_failed(error)


class StagedFile:
    """The local bytes of one file being written, and its journal entry. Thread-safe.

    Made by ``Spool.create``. ``write``/``read``/``truncate`` work at offsets like a local
    file (holes read as zeros). ``writers`` counts open writing handles: ``open()`` per
    extra handle, ``Uploader.release`` per close; the upload happens once, at the last.

    An upload holds ``exclusive()``: ``write``, ``truncate``, ``retarget`` and ``discard``
    wait for it (so the site gets one consistent snapshot, and ``dirty`` is exact); ``read``
    does not. Once the file is uploaded with no writers left, or moved to recovery/, or
    discarded, it is finished: its bytes are gone from staging/ and every method raises
    ``StaleFile`` (look the name up again).

    Every state change goes through ``_set_state``, which checks it against the journal's
    transition table and writes the journal before memory follows.
    """

    def __init__(self, spool: Spool, entry: str, target: UploadTarget) -> None:
        self.spool = spool
        self.entry = entry
        self.data_path = spool.data_path(entry)
        self._target = target
        self._lock = threading.Lock()  # fields and the fd's lifetime; never held for an upload
        self._busy = threading.Lock()  # held for a whole upload; taken before _lock
        self._fd: int | None = None
        self._size = 0
        self._writers = 1
        self._dirty = False
        self._state: State | None = None  # None: not yet in the journal
        self._created = time.time()
        self._attempts = 0
        self._last_error: str | None = None
        self._last_errno: int | None = None
        self._failed: FwfsError | None = None  # the last commit's error, until written again
        self._result: Json | None = None

    def __repr__(self) -> str:
        state = self._state.value if self._state else "new"
        return f"StagedFile({self.entry}, {self._target.path!r}, {state})"

    # Properties: a snapshot each; the file may change right after.

    @property
    def target(self) -> UploadTarget:
        with self._lock:
            return self._target

    @property
    def size(self) -> int:
        with self._lock:
            return self._size

    @property
    def dirty(self) -> bool:
        """Written (or created, truncated, renamed) since the last successful upload."""
        with self._lock:
            return self._dirty

    @property
    def writers(self) -> int:
        with self._lock:
            return self._writers

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._state == State.DONE or self._state == State.FAILED

    @property
    def state(self) -> State:
        with self._lock:
            return self._state or State.COPYING

    @property
    def last_result(self) -> Json | None:
        """The file JSON of the last successful upload of this staged file, if any."""
        with self._lock:
            return self._result

    @property
    def failed_commit(self) -> FwfsError | None:
        """The error of the last commit (or write) that failed, until written again."""
        with self._lock:
            return self._failed

    # Writing and reading.

    def open(self) -> None:
        """Count one more writing handle. ``StaleFile`` if the file is already finished."""
        with self._lock:
            self._check_live()
            self._writers += 1

    def close_writer(self) -> int:
        """Count one writing handle closed; returns how many remain. Prefer
        ``Uploader.release``, which also uploads at the last one."""
        with self._lock:
            if self._writers <= 0:
                raise InvalidArgument(f"staged file {self.entry} has no open writer")
            self._writers -= 1
            return self._writers

    def write(self, offset: int, data: bytes | memoryview) -> int:
        if offset < 0:
            raise InvalidArgument("negative write offset")
        with self._busy, self._lock:
            fd = self._check_live()
            self._mark_dirty()
            view = memoryview(data)
            done = 0
            try:
                while done < len(view):
                    done += os.pwrite(fd, view[done:], offset + done)
            except OSError as exc:
                # Part of it may be on disk: the size must say so, or reads would disagree.
                self._size = os.fstat(fd).st_size
                raise local_error(exc, f"write to {self._target.path!r}") from exc
            self._size = max(self._size, offset + done)
            return done

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0:
            raise InvalidArgument("negative read offset or size")
        with self._lock:
            fd = self._check_live()
            size = max(0, min(size, self._size - offset))
            chunks: list[bytes] = []
            got = 0
            try:
                while got < size:
                    chunk = os.pread(fd, size - got, offset + got)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    got += len(chunk)
            except OSError as exc:
                raise local_error(exc, f"read of {self._target.path!r}") from exc
            return b"".join(chunks)

    def truncate(self, size: int) -> None:
        if size < 0:
            raise InvalidArgument("negative size")
        with self._busy, self._lock:
            fd = self._check_live()
            self._mark_dirty()
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                raise local_error(exc, f"truncate of {self._target.path!r}") from exc
            self._size = size

    def fsync(self) -> None:
        """Make the staged bytes durable, and mark them a completion point of the program:
        if fwfs dies after this and before the upload, the next mount uploads them."""
        with self._lock:
            fd = self._check_live()
            try:
                self.spool.records.make_durable(fd)  # the file's name must survive too
            except OSError as exc:
                raise local_error(exc, f"fsync of {self._target.path!r}") from exc
            if self._state == State.STAGED:
                self._set_state(State.SYNCED)

    def retarget(self, target: UploadTarget) -> None:
        """Rename before upload: the next upload goes to ``target``. A file already uploaded
        under the old name becomes dirty, so the new name gets its bytes at the next
        commit; deleting the old name on the site is the caller's job."""
        with self._busy, self._lock:
            self._check_live()
            old, self._target = self._target, target
            try:
                if self._dirty or self._state == State.DISCARDED:
                    self._write_journal()
                else:
                    self._mark_dirty()  # writes the journal, with the new target
            except BaseException:
                self._target = old
                raise

    def mark_failed(self, error: FwfsError) -> None:
        """A write failed (the spool's disk full, say): these bytes are not what the
        program meant. Until written again they are never uploaded: the last close keeps
        them in recovery/ with ``error``, as for a failed upload."""
        with self._lock:
            self._failed = error
            self._last_error, self._last_errno = str(error), error.errno

    def discard(self) -> None:
        """Unlinked before upload: never upload it. With writers still open the bytes stay
        readable and writable until the last close, which then drops them."""
        with self._busy, self._lock:
            if self._fd is None:
                return
            if self._writers > 0:
                self._set_state(State.DISCARDED)
                return
            self._remove()

    # The commit protocol (the Uploader's side).

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off every change (not reads) for an upload or a last close."""
        with self._busy:
            yield

    def begin_commit(self) -> Commit | None:
        """Under ``exclusive()``: start uploading the bytes as they are now. None when there
        is nothing to upload (unchanged since the last upload or copy, or discarded);
        ``StaleFile`` when finished."""
        with self._lock:
            fd = self._check_live()
            if self._state == State.DISCARDED or not self._dirty:
                return None
            try:
                self._size = os.fstat(fd).st_size
                sync_fd = os.dup(fd)
            except OSError as exc:
                raise local_error(exc, f"staging {self._target.path!r}") from exc
            try:
                # Bytes fsync'ed since their last change are durable already.
                durable = self._state == State.SYNCED
                self._set_state(State.UPLOADING if durable else State.SENDING)
            except BaseException:
                os.close(sync_fd)
                raise
            return Commit(self, self._target, self._size, sync_fd)

    def settle_last_close(self) -> bool:
        """Under ``exclusive()``, after the last writer closed: True if the bytes are still
        to be uploaded (or kept, see ``failed_commit``). False when there is nothing to
        do: finished already, reopened meanwhile, or unchanged or discarded, which drops
        the staged bytes now."""
        with self._lock:
            if self._fd is None or self._writers > 0:
                return False
            if self._state == State.DISCARDED or not self._dirty:
                self._remove()
                return False
            return True

    def keep(self, error: FwfsError) -> Path | None:
        """Under ``exclusive()``: move the bytes to recovery/ with ``error`` (the file is
        finished); where they are, or None if the move failed too (logged)."""
        with self._lock:
            return self._to_recovery(error)

    # Internals; the caller holds self._lock.

    def _check_live(self) -> int:
        if self._fd is None:
            raise StaleFile(f"{self._target.path!r} is no longer staged; look it up again")
        return self._fd

    def _start(self, source: BinaryIO | None) -> None:
        with self._busy, self._lock:
            first = State.STAGED if source is None else State.COPYING
            check_transition(None, first)
            try:
                # The journal before the data exists: see the Journal's ordering rules.
                self._fd = self.spool.records.begin(self.entry, self._record(first))
                self._state = first
                if source is None:
                    self._dirty = True
                    return
                offset = 0
                while chunk := source.read(_COPY_CHUNK):
                    view = memoryview(chunk)
                    while view:
                        n = os.pwrite(self._fd, view, offset)
                        view, offset = view[n:], offset + n
                self._size = offset
            except OSError as exc:
                raise local_error(exc, f"staging {self._target.path!r}") from exc
            self._set_state(State.CLEAN)

    def _mark_dirty(self) -> None:
        if self._state not in (State.STAGED, State.DISCARDED):
            # Journal first: a crash after the bytes change must never find "clean" or
            # "synced" (which would drop them, or upload a half-written file).
            self._set_state(State.STAGED)
        self._dirty = True
        self._failed = None

    def _set_state(self, state: State) -> None:
        check_transition(self._state, state)
        # Memory follows disk: if the journal cannot be written, the old state stays true.
        if state != State.DONE:
            self._write_journal(state)
        self._state = state

    def _record(self, state: State | None = None) -> Json:
        return {
            "format": FORMAT,
            "id": self.entry,
            "target": self._target.to_json(),
            "state": (state or self._state or State.COPYING).value,
            "created": self._created,
            "updated": time.time(),
            "size": self._size,
            "attempts": self._attempts,
            "last_error": self._last_error,
            "errno": self._last_errno,
        }

    def _write_journal(self, state: State | None = None) -> None:
        try:
            self.spool.records.write(self.entry, self._record(state))
        except OSError as exc:
            raise local_error(exc, f"journal of {self._target.path!r}") from exc

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.spool._forget(self.entry)

    def _abandon(self) -> None:
        """The copy of ``create`` failed: nothing of it stays."""
        with self._lock:
            if self._state is not None:
                check_transition(self._state, State.DONE)
                self._state = State.DONE
            self._close_fd()
            with contextlib.suppress(OSError):
                self.spool.records.remove(self.entry)

    def _remove(self) -> None:
        self._set_state(State.DONE)
        self._close_fd()
        try:
            self.spool.records.remove(self.entry)
        except OSError as exc:
            # The next mount finds it again; a leftover is better than an exception here.
            log.error("could not remove staged file %s: %s", self.data_path, exc)

    def _to_recovery(self, error: FwfsError) -> Path | None:
        check_transition(self._state, State.FAILED)
        self._state = State.FAILED
        self._last_error, self._last_errno = str(error), error.errno
        record = self._record()
        self._close_fd()
        target = self._target
        try:
            where = self.spool.records.to_recovery(self.entry, record)
        except OSError as exc:
            log.error(
                "upload of %r failed (%s), and moving its bytes to %s failed too (%s); they "
                "are still at %s and the next mount will report them",
                target.path,
                error,
                self.spool.recovery,
                exc,
                self.data_path,
            )
            return None
        log.warning(
            "upload of %r to %s %s failed (%s); its %d bytes are kept in %s (journal: %s)",
            target.path,
            target.kind,
            target.cid,
            error,
            self._size,
            where,
            self.spool.journal_path(self.entry, "recovery"),
        )
        return where

    # The other side of Commit; each takes the lock itself.

    def _durable(self) -> None:
        with self._lock:
            if self._state == State.SENDING:
                with contextlib.suppress(FwfsError):
                    self._set_state(State.UPLOADING)

    def _note_attempt(self) -> None:
        with self._lock:
            self._attempts += 1
            with contextlib.suppress(FwfsError):
                self._write_journal()

    def _committed(self, result: Json) -> None:
        with self._lock:
            self._dirty = False
            self._failed = None
            self._last_error = self._last_errno = None
            self._result = result
            if self._writers == 0:
                self._remove()
            else:
                with contextlib.suppress(FwfsError):
                    self._set_state(State.CLEAN)

    def _commit_failed(self, error: FwfsError) -> bool:
        with self._lock:
            self._failed = error
            self._last_error, self._last_errno = str(error), error.errno
            if self._writers == 0:
                self._to_recovery(error)
                return True
            with contextlib.suppress(FwfsError):
                self._set_state(State.SYNCED)
            return False

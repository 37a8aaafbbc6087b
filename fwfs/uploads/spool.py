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

Journal states, and what the next mount's ``Uploader.recover`` does with each:

========== =================================================== ===========================
state      meaning                                             after a crash
========== =================================================== ===========================
copying    initial contents being copied (create not returned) deleted
staged     written since the last completion point             moved to recovery/
synced     at a completion point (fsync, a commit) the site    uploaded
           lacks; bytes fsync'ed
sending    a commit is running; bytes not yet fsync'ed             moved to recovery/
uploading  a commit is running; bytes fsync'ed                uploaded (possibly again)
clean      the site holds these bytes (uploaded, writers open) deleted
discarded  unlinked while open; the last close drops it        deleted
failed     in recovery/                                        listed (retried on request)
========== =================================================== ===========================

"staged" goes to recovery/ rather than up: the daemon died while a program was writing,
so the program never closed the file successfully, and uploading a half-written file as
the newest version would be worse than reporting it. Entries already in recovery/ are only
listed (one WARNING each) at mount, not retried, unless ``recover(retry_recovery=True)``:
the program was told that upload failed, may well have written the file again since, and
replaying older bytes would put a stale version on top of a newer one; a permanent error
(EACCES) would also repeat on every mount. A person deletes both files of an entry once
it is dealt with.

Every state change is a new journal file written to a temporary name, fsync'ed, renamed
over the old one, and followed by an fsync of the directory, so a killed daemon (or a lost
machine) leaves either the old record or the new one. Orders that keep every crash
readable: the journal entry is written before its data file exists, the data file is
removed before its journal entry, and a move to recovery/ writes recovery/<id>.json, then
renames the data, then removes journal/<id>.json. A recovery/<id>.json found beside bytes
still in staging/ is such a move cut short: it is finished, never uploaded.

Wiring into FUSE (the errno must reach close(2), and only flush's does; release's is lost):
create/O_TRUNC -> ``Spool.create``; another writing open -> ``StagedFile.open``;
flush of the only writing handle -> ``Uploader.commit``; fsync -> ``StagedFile.fsync``
then ``Uploader.commit``; release -> ``Uploader.release``; rename -> ``retarget``;
unlink -> ``discard``; unmount -> ``Uploader.drain``; mount -> ``Uploader.recover``.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    PermissionDenied,
    StaleFile,
    TooLarge,
)
from fwfs.errors import SpoolBusy as SpoolBusy  # re-exported: the spool raises them
from fwfs.errors import SpoolFull as SpoolFull
from fwfs.models import KINDS, Json, Kind

log = logging.getLogger("fwfs.uploads")

State = Literal[
    "copying", "staged", "synced", "sending", "uploading", "clean", "discarded", "failed"
]
Outcome = Literal["uploaded", "failed", "incomplete", "kept"]
UploadFn = Callable[["UploadTarget", BinaryIO, int], Json]

_FORMAT = 1
_ID = re.compile(r"[0-9a-f]{32}")
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadTarget:
    """Where staged bytes go: the container and the raw Flywheel file name.

    ``name`` is the name as Flywheel stores it (before escaping for POSIX); ``path`` is only
    for people reading logs and status (the mount path, say), never used to reach anything.
    """

    kind: Kind
    cid: str
    name: str
    path: str

    def to_json(self) -> Json:
        return {"kind": self.kind, "cid": self.cid, "name": self.name, "path": self.path}

    @classmethod
    def from_json(cls, value: Any) -> UploadTarget:
        if not isinstance(value, dict):
            raise ValueError("target is not an object")
        cid, name, path = value.get("cid"), value.get("name"), value.get("path")
        kind = next((k for k in KINDS if k == value.get("kind")), None)
        if kind is None:
            raise ValueError(f"unknown container kind {value.get('kind')!r}")
        if not (isinstance(cid, str) and isinstance(name, str) and isinstance(path, str)):
            raise ValueError("target fields must be strings")
        return cls(kind, cid, name, path)


@dataclass(frozen=True)
class PendingUpload:
    """One entry of the spool as ``fwfs`` status shows it (from the journal on disk)."""

    entry: str
    target: UploadTarget | None  # None: the journal entry could not be read
    state: State
    where: Literal["staging", "recovery"]
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


def _local_error(exc: OSError, what: str) -> FwfsError:
    """An OSError of the spool as an FwfsError, keeping the errnos a program can act on."""
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return SpoolFull(f"{what}: no space left in the spool directory")
    if exc.errno == _errno.EFBIG:
        return TooLarge(f"{what}: file too large for the spool's filesystem")
    return FwfsError(f"{what}: {exc.strerror or exc}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, record: Json) -> None:
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a narrow umask must not matter, and a wide one cannot
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _read_json(path: Path) -> Json:
    with open(path, "rb") as f:
        value = json.loads(f.read(1 << 20))  # a journal entry is small; never trust its size
    if not isinstance(value, dict):
        raise ValueError("journal entry is not an object")
    return value


def _private_dir(path: Path, *, follow: bool) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path) if follow else os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"spool directory {path} is not a directory")
    if st.st_uid != os.geteuid():
        # Another user's directory could expose staged bytes (PHI) or feed us forged journals.
        raise PermissionDenied(f"spool directory {path} belongs to another user")
    os.chmod(path, 0o700)


class Spool:
    """The staging area under ``root``; one per mount, held with an exclusive lock.

    Creating one makes the directories private, and takes ``root/lock`` so that a second
    daemon on the same spool fails at once (``SpoolBusy``) instead of "recovering" files
    the first one is still writing. ``close()`` releases it; staged files stay on disk.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self._open()
        except OSError as exc:
            raise _local_error(exc, f"spool directory {self.root}") from exc
        self._lock = threading.Lock()
        self._live: dict[str, StagedFile] = {}

    def _open(self) -> None:
        _private_dir(self.root, follow=True)  # the user may point it anywhere they own
        self.staging = self.root / "staging"
        self.journal = self.root / "journal"
        self.recovery = self.root / "recovery"
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
            staged._close_fd()
            with contextlib.suppress(OSError):
                self._remove_entry(entry)
            raise
        return staged

    # Paths and disk steps shared by StagedFile, Uploader and recovery.

    def data_path(self, entry: str, where: Literal["staging", "recovery"] = "staging") -> Path:
        return (self.staging if where == "staging" else self.recovery) / f"{entry}.data"

    def journal_path(self, entry: str, where: Literal["staging", "recovery"] = "staging") -> Path:
        return (self.journal if where == "staging" else self.recovery) / f"{entry}.json"

    def _forget(self, entry: str) -> None:
        with self._lock:
            self._live.pop(entry, None)

    def _is_live(self, entry: str) -> bool:
        with self._lock:
            return entry in self._live

    def _remove_entry(self, entry: str) -> None:
        # Data before journal: a journal entry without data means "nothing left to do".
        self.data_path(entry).unlink(missing_ok=True)
        _fsync_dir(self.staging)
        self.journal_path(entry).unlink(missing_ok=True)
        _fsync_dir(self.journal)
        # A move to recovery/ interrupted by a crash may have left its journal half-way.
        if self.journal_path(entry, "recovery").exists():
            self.journal_path(entry, "recovery").unlink(missing_ok=True)
            _fsync_dir(self.recovery)

    def _move_to_recovery(self, entry: str, record: Json) -> Path:
        """Move an entry's bytes and journal into recovery/; returns where the bytes are."""
        record = {**record, "state": "failed", "updated": time.time()}
        data = self.data_path(entry)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # "the bytes are in recovery/" must survive a power cut
            finally:
                os.close(fd)
        _write_json_atomic(self.journal_path(entry, "recovery"), record)
        target = self.data_path(entry, "recovery")
        if data.exists():
            os.replace(data, target)
            _fsync_dir(self.recovery)
            _fsync_dir(self.staging)
        self.journal_path(entry).unlink(missing_ok=True)
        _fsync_dir(self.journal)
        return target


class StagedFile:
    """The local bytes of one file being written, and its journal entry. Thread-safe.

    Made by ``Spool.create``. ``write``/``read``/``truncate`` work at offsets like a local
    file (holes read as zeros). ``writers`` counts open writing handles: ``open()`` per
    extra handle, ``Uploader.release`` per close; the upload happens once, at the last.

    While an upload of this file runs, ``write``, ``truncate``, ``retarget`` and
    ``discard`` wait for it (so the site gets one consistent snapshot, and ``dirty`` is
    exact); ``read`` does not. Once the file is uploaded with no writers left, or moved to
    recovery/, or discarded, it is finished: its bytes are gone from staging/ and every
    method raises ``StaleFile`` (look the name up again).
    """

    def __init__(self, spool: Spool, entry: str, target: UploadTarget) -> None:
        self.spool = spool
        self.entry = entry
        self.data_path = spool.data_path(entry)
        self._target = target
        self._lock = threading.Lock()  # fields and the fd's lifetime; never held for an upload
        self._busy = threading.Lock()  # held for a whole upload; taken before _lock
        self._fd: int | None = None
        self._finished = False
        self._size = 0
        self._writers = 1
        self._dirty = False
        self._state: State = "copying"
        self._created = time.time()
        self._attempts = 0
        self._last_error: str | None = None
        self._last_errno: int | None = None
        self._failed: FwfsError | None = None  # the last commit's error, until written again
        self._result: Json | None = None

    def __repr__(self) -> str:
        return f"StagedFile({self.entry}, {self._target.path!r}, {self._state})"

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
            return self._finished

    @property
    def state(self) -> State:
        with self._lock:
            return self._state

    @property
    def last_result(self) -> Json | None:
        """The file JSON of the last successful upload of this staged file, if any."""
        with self._lock:
            return self._result

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
                raise _local_error(exc, f"write to {self._target.path!r}") from exc
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
                raise _local_error(exc, f"read of {self._target.path!r}") from exc
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
                raise _local_error(exc, f"truncate of {self._target.path!r}") from exc
            self._size = size

    def fsync(self) -> None:
        """Make the staged bytes durable, and mark them a completion point of the program:
        if fwfs dies after this and before the upload, the next mount uploads them."""
        with self._lock:
            fd = self._check_live()
            try:
                os.fsync(fd)
                _fsync_dir(self.spool.staging)  # the file's name must survive too
            except OSError as exc:
                raise _local_error(exc, f"fsync of {self._target.path!r}") from exc
            if self._state == "staged":
                self._set_state("synced")

    def retarget(self, target: UploadTarget) -> None:
        """Rename before upload: the next upload goes to ``target``. A file already uploaded
        under the old name becomes dirty, so the new name gets its bytes at the next
        commit; deleting the old name on the site is the caller's job."""
        with self._busy, self._lock:
            self._check_live()
            old, self._target = self._target, target
            try:
                if self._dirty or self._state == "discarded":
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
                self._set_state("discarded")
                return
            self._remove()

    # Internals; the caller holds self._lock.

    def _check_live(self) -> int:
        if self._fd is None:
            raise StaleFile(f"{self._target.path!r} is no longer staged; look it up again")
        return self._fd

    def _start(self, source: BinaryIO | None) -> None:
        with self._busy, self._lock:
            # The journal before the data exists: see the module's ordering rule.
            if source is None:
                self._set_state("staged")
                self._dirty = True
            else:
                self._write_journal()
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                self._fd = os.open(self.data_path, flags, 0o600)
                os.fchmod(self._fd, 0o600)
                if source is not None:
                    offset = 0
                    while chunk := source.read(_COPY_CHUNK):
                        view = memoryview(chunk)
                        while view:
                            n = os.pwrite(self._fd, view, offset)
                            view, offset = view[n:], offset + n
                    self._size = offset
            except OSError as exc:
                raise _local_error(exc, f"staging {self._target.path!r}") from exc
            if source is not None:
                self._set_state("clean")

    def _mark_dirty(self) -> None:
        if self._state not in ("staged", "discarded"):
            # Journal first: a crash after the bytes change must never find "clean" or
            # "synced" (which would drop them, or upload a half-written file).
            self._set_state("staged")
        self._dirty = True
        self._failed = None

    def _set_state(self, state: State) -> None:
        # Memory follows disk: if the journal cannot be written, the old state stays true.
        self._write_journal(state)
        self._state = state

    def _record(self, state: State | None = None) -> Json:
        return {
            "format": _FORMAT,
            "id": self.entry,
            "target": self._target.to_json(),
            "state": state or self._state,
            "created": self._created,
            "updated": time.time(),
            "size": self._size,
            "attempts": self._attempts,
            "last_error": self._last_error,
            "errno": self._last_errno,
        }

    def _write_journal(self, state: State | None = None) -> None:
        try:
            _write_json_atomic(self.spool.journal_path(self.entry), self._record(state))
        except OSError as exc:
            raise _local_error(exc, f"journal of {self._target.path!r}") from exc

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._finished = True
        self.spool._forget(self.entry)

    def _remove(self) -> None:
        self._close_fd()
        try:
            self.spool._remove_entry(self.entry)
        except OSError as exc:
            # The next mount finds it again; a leftover is better than an exception here.
            log.error("could not remove staged file %s: %s", self.data_path, exc)


def _entries(directory: Path, suffix: str) -> list[str]:
    """The entry ids of ``directory`` with ``suffix``; anything not named by us is ignored."""
    found = []
    for path in directory.iterdir():
        stem = path.name[: -len(suffix)] if path.name.endswith(suffix) else ""
        if _ID.fullmatch(stem):
            found.append(stem)
    return sorted(found)


_STATES: tuple[State, ...] = get_args(State)


def _state(value: Any) -> State:
    return next((state for state in _STATES if state == value), "failed")


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def uploads_running(root: Path) -> int:
    """How many uploads the spool at ``root`` shows as running, read from the journal
    without taking the spool's lock (for ``fwfs unmount``, while the daemon holds it)."""
    journal = Path(root) / "journal"
    if not journal.is_dir():
        return 0
    running = 0
    for entry in _entries(journal, ".json"):
        try:
            if _read_json(journal / f"{entry}.json").get("state") in ("sending", "uploading"):
                running += 1
        except (OSError, ValueError):
            continue
    return running

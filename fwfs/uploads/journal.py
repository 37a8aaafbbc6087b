"""The spool's journal: the states of a staged file, the transitions allowed between them,
and the order of every step on disk, so that a crash at any point leaves a state the next
mount can read and finish.

Every other module of `fwfs.uploads` changes the disk only through `Journal`, and changes
a state only through `check_transition`. docs/SEMANTICS.md ("Writes", "The life of a
staged file") shows the same table, rendered by `render_state_table`.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Final, Literal

from fwfs.errors import FwfsError, TooLarge
from fwfs.errors import SpoolFull as SpoolFull
from fwfs.models import KINDS, Json, Kind

FORMAT: Final = 1
_ID = re.compile(r"[0-9a-f]{32}")

Where = Literal["staging", "recovery"]


class State(str, Enum):
    """Where a staged file stands. The value is what ``journal/<id>.json`` says (a
    ``str``, so ``state == "synced"`` holds); DONE is never written: the entry is gone."""

    COPYING = "copying"
    STAGED = "staged"
    SYNCED = "synced"
    SENDING = "sending"
    UPLOADING = "uploading"
    CLEAN = "clean"
    DISCARDED = "discarded"
    FAILED = "failed"
    DONE = "done"


S = State
# What each state means, and what the next mount does with an entry a crash left in it.
MEANING: Final[dict[State, tuple[str, str]]] = {
    S.COPYING: ("initial contents being copied (create not returned)", "deleted"),
    S.STAGED: ("written since the last completion point", "moved to recovery/"),
    S.SYNCED: ("at a completion point (fsync, a failed commit); bytes durable", "uploaded"),
    S.SENDING: ("a commit is running; bytes not yet durable", "moved to recovery/"),
    S.UPLOADING: ("a commit is running; bytes durable", "uploaded (possibly again)"),
    S.CLEAN: ("the site holds these bytes; writers still open", "deleted"),
    S.DISCARDED: ("unlinked while open; the last close drops it", "deleted"),
    S.FAILED: ("in recovery/: the upload did not happen", "listed (retried on request)"),
    S.DONE: ("uploaded, or dropped: nothing left on disk", "-"),
}
# The first state of a new entry.
INITIAL: Final = frozenset({S.COPYING, S.STAGED})
# Every change of state there is. Rewriting a record in its own state (a new target, an
# attempt counted) is not a change and is always allowed.
ALLOWED: Final[dict[State, frozenset[State]]] = {
    S.COPYING: frozenset({S.CLEAN, S.DONE}),
    S.STAGED: frozenset({S.SYNCED, S.SENDING, S.DISCARDED, S.FAILED, S.DONE}),
    S.SYNCED: frozenset({S.STAGED, S.UPLOADING, S.DISCARDED, S.FAILED, S.DONE}),
    S.SENDING: frozenset({S.UPLOADING, S.CLEAN, S.SYNCED, S.FAILED, S.DONE}),
    S.UPLOADING: frozenset({S.CLEAN, S.SYNCED, S.FAILED, S.DONE}),
    S.CLEAN: frozenset({S.STAGED, S.DISCARDED, S.DONE}),
    S.DISCARDED: frozenset({S.DONE}),
    S.FAILED: frozenset({S.DONE}),
    S.DONE: frozenset(),
}
# After a crash: states whose bytes the site lacks and the program had finished (uploaded),
# and states with nothing to upload (dropped); every other state goes to recovery/.
UPLOAD_AFTER_CRASH: Final = frozenset({S.SYNCED, S.UPLOADING})
DROP_AFTER_CRASH: Final = frozenset({S.COPYING, S.CLEAN, S.DISCARDED})
# A commit is running: `fwfs unmount` waits for these.
RUNNING: Final = frozenset({S.SENDING, S.UPLOADING})


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in fwfs, never the program's doing."""


def check_transition(old: State | None, new: State) -> None:
    """Raises ``IllegalTransition`` unless ``old -> new`` is in ``ALLOWED`` (``old`` None:
    a new entry)."""
    ok = new in INITIAL if old is None else (old == new and old != S.DONE) or new in ALLOWED[old]
    if not ok:
        was = "(new)" if old is None else old.value
        raise IllegalTransition(f"staged file: no transition {was} -> {new.value}")


def parse_state(value: Any) -> State:
    """The state a journal record names; an unknown one reads as FAILED (kept, not sent)."""
    try:
        state = State(value)
    except ValueError:
        return S.FAILED
    return S.FAILED if state == S.DONE else state


def render_state_table() -> str:
    """The states table of docs/SEMANTICS.md."""
    rows = [
        "| state | meaning | may become | after a crash |",
        "|---|---|---|---|",
    ]
    for state in State:
        meaning, crash = MEANING[state]
        targets = ", ".join(f"`{t.value}`" for t in State if t in ALLOWED[state]) or "-"
        rows.append(f"| `{state.value}` | {meaning} | {targets} | {crash} |")
    return "\n".join(rows) + "\n"


def local_error(exc: OSError, what: str) -> FwfsError:
    """An OSError of the spool as an FwfsError, keeping the errnos a program can act on."""
    if exc.errno in (_errno.ENOSPC, _errno.EDQUOT):
        return SpoolFull(f"{what}: no space left in the spool directory")
    if exc.errno == _errno.EFBIG:
        return TooLarge(f"{what}: file too large for the spool's filesystem")
    return FwfsError(f"{what}: {exc.strerror or exc}")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, record: Json) -> None:
    """The record under ``path``: the old one or the new one survives any crash."""
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
    fsync_dir(path.parent)


def read_json(path: Path) -> Json:
    with open(path, "rb") as f:
        value = json.loads(f.read(1 << 20))  # a journal entry is small; never trust its size
    if not isinstance(value, dict):
        raise ValueError("journal entry is not an object")
    return value


def entries(directory: Path, suffix: str) -> list[str]:
    """The entry ids of ``directory`` with ``suffix``; anything not named by us is ignored."""
    found = []
    for path in directory.iterdir():
        stem = path.name[: -len(suffix)] if path.name.endswith(suffix) else ""
        if _ID.fullmatch(stem):
            found.append(stem)
    return sorted(found)


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def as_float(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


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


class Journal:
    """The three directories of a spool and the order of every step on them.

    The ordering rules, each of which keeps every crash readable:

    - a record is written to a temporary name, fsync'ed, renamed over the old one, and the
      directory fsync'ed: a crash leaves the old record or the new one (``write``);
    - a new entry's record is written before its data file exists (``begin``): data
      without a record never happens, so a person removed the record;
    - the data file is removed before its record (``remove``): a record without data means
      "nothing left to do";
    - a move to recovery/ fsyncs the bytes, writes ``recovery/<id>.json``, renames the
      bytes, then removes ``journal/<id>.json`` (``to_recovery``): a recovery record found
      beside bytes still in staging/ is such a move cut short, finished by the next mount
      and never uploaded.
    """

    def __init__(self, root: Path) -> None:
        self.staging = root / "staging"
        self.journal = root / "journal"
        self.recovery = root / "recovery"

    def data_path(self, entry: str, where: Where = "staging") -> Path:
        return (self.staging if where == "staging" else self.recovery) / f"{entry}.data"

    def journal_path(self, entry: str, where: Where = "staging") -> Path:
        return (self.journal if where == "staging" else self.recovery) / f"{entry}.json"

    def write(self, entry: str, record: Json, where: Where = "staging") -> None:
        write_json_atomic(self.journal_path(entry, where), record)

    def read(self, entry: str, where: Where = "staging") -> Json:
        return read_json(self.journal_path(entry, where))

    def begin(self, entry: str, record: Json) -> int:
        """A new entry: its record, then its (empty, private) data file; the open fd."""
        self.write(entry, record)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.data_path(entry), flags, 0o600)
        os.fchmod(fd, 0o600)
        return fd

    def make_durable(self, fd: int) -> None:
        """The bytes behind ``fd``, and their name in staging/, survive a power cut."""
        os.fsync(fd)
        fsync_dir(self.staging)

    def remove(self, entry: str) -> None:
        """An entry done with (uploaded, dropped): data first, then the record."""
        self.data_path(entry).unlink(missing_ok=True)
        fsync_dir(self.staging)
        self.journal_path(entry).unlink(missing_ok=True)
        fsync_dir(self.journal)
        # A move to recovery/ interrupted by a crash may have left its record half-way.
        if self.journal_path(entry, "recovery").exists():
            self.journal_path(entry, "recovery").unlink(missing_ok=True)
            fsync_dir(self.recovery)

    def to_recovery(self, entry: str, record: Json) -> Path:
        """Move an entry's bytes and record into recovery/ (state FAILED); where the bytes
        are now."""
        record = {**record, "state": S.FAILED.value, "updated": time.time()}
        data = self.data_path(entry)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(data, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)  # "the bytes are in recovery/" must survive a power cut
            finally:
                os.close(fd)
        self.write(entry, record, "recovery")
        target = self.data_path(entry, "recovery")
        if data.exists():
            os.replace(data, target)
            fsync_dir(self.recovery)
            fsync_dir(self.staging)
        self.journal_path(entry).unlink(missing_ok=True)
        fsync_dir(self.journal)
        return target

    def dismiss(self, entry: str) -> None:
        """A recovery/ entry uploaded at last (or its bytes deleted by a person)."""
        self.data_path(entry, "recovery").unlink(missing_ok=True)
        self.journal_path(entry, "recovery").unlink(missing_ok=True)
        fsync_dir(self.recovery)

    def drop_temporaries(self) -> None:
        """Records a crash left half-written under their temporary name."""
        for directory in (self.journal, self.recovery):
            for tmp in directory.glob("*.json.tmp"):
                tmp.unlink(missing_ok=True)


def peek(directory: Path) -> Iterator[Json]:
    """The records of ``directory`` (``journal/`` or ``recovery/``), read without taking
    the spool's lock, while a daemon may hold it: a record written or removed as it is
    read is skipped (the next look sees it), and a missing directory has none."""
    if not directory.is_dir():
        return
    for entry in entries(directory, ".json"):
        try:
            yield read_json(directory / f"{entry}.json")
        except (OSError, ValueError):
            continue


def uploads_running(root: Path) -> int:
    """How many uploads the spool at ``root`` shows as running, read from the journal
    without taking the spool's lock (for ``fwfs unmount``, while the daemon holds it)."""
    return sum(record.get("state") in RUNNING for record in peek(Path(root) / "journal"))

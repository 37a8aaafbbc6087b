"""Persistent state of the sandbox site: metadata in SQLite, file bytes as files on disk.

Containers and files are stored as JSON documents beside a few indexed columns; the API
layer builds the wire JSON from them. One connection guarded by one lock: the sandbox is a
test and demo server, and SQLite serialises writers anyway.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

CONTAINER_TYPES = ("group", "project", "subject", "session", "acquisition", "analysis")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    id TEXT PRIMARY KEY, api_key TEXT UNIQUE NOT NULL, can_write INTEGER NOT NULL,
    doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, parent_id TEXT, label TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS containers_parent ON containers (parent_id, type);
CREATE INDEX IF NOT EXISTS containers_type ON containers (type);
CREATE TABLE IF NOT EXISTS files (
    file_id TEXT PRIMARY KEY, container_id TEXT NOT NULL, name TEXT NOT NULL,
    version INTEGER NOT NULL, current INTEGER NOT NULL, file_group TEXT NOT NULL,
    size INTEGER NOT NULL, blob TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS files_container ON files (container_id, current, name);
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (ticket TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""


# SQLite's default limit on bound parameters in one statement is 999.
_CHUNK = 500


def _chunks(ids: Iterable[str]) -> Iterator[tuple[str, ...]]:
    unique = list(dict.fromkeys(ids))
    for i in range(0, len(unique), _CHUNK):
        yield tuple(unique[i : i + _CHUNK])


def _marks(chunk: tuple[str, ...]) -> str:
    return ",".join("?" * len(chunk))


def now_iso() -> str:
    return iso(datetime.now(timezone.utc))


def iso(dt: datetime) -> str:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class Container:
    id: str
    type: str
    parent_id: str | None
    label: str
    doc: dict[str, Any]


@dataclass
class FileRec:
    file_id: str
    container_id: str
    name: str
    version: int
    current: bool
    file_group: str
    size: int
    blob: str
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass
class User:
    id: str
    api_key: str
    can_write: bool
    doc: dict[str, Any]


class Store:
    """All sandbox state. Every method takes `self._lock`; callers never hold it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.blob_dir = data_dir / "blobs"
        self.spool_dir = data_dir / "spool"
        for d in (self.blob_dir, self.spool_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            str(data_dir / "site.sqlite"), check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._counter = int(self.meta_get("id_counter") or "0")
        self._node = self.meta_get("node") or secrets.token_hex(4)
        self.meta_set("node", self._node)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes (seeding thousands of rows) into one commit."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- meta -------------------------------------------------------------------------

    def meta_get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_set(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def new_id(self) -> str:
        """A 24-hex id that sorts in creation order, so `after_id` pagination is stable."""
        with self._lock:
            self._counter += 1
            self.meta_set("id_counter", str(self._counter))
            return f"{int(time.time()):08x}{self._node}{self._counter:08x}"

    # ---- users ------------------------------------------------------------------------

    def add_user(self, user_id: str, api_key: str, can_write: bool, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?)",
                (user_id, api_key, int(can_write), json.dumps(doc)),
            )

    def user_by_key(self, api_key: str) -> User | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, api_key, can_write, doc FROM users WHERE api_key=?", (api_key,)
            ).fetchone()
        if row is None:
            return None
        return User(row[0], row[1], bool(row[2]), json.loads(row[3]))

    def users(self) -> list[User]:
        with self._lock:
            rows = self._db.execute("SELECT id, api_key, can_write, doc FROM users").fetchall()
        return [User(r[0], r[1], bool(r[2]), json.loads(r[3])) for r in rows]

    # ---- containers -------------------------------------------------------------------

    def insert_container(
        self,
        ctype: str,
        parent_id: str | None,
        label: str,
        doc: dict[str, Any],
        cid: str | None = None,
    ) -> Container:
        cid = cid or self.new_id()
        stamp = now_iso()
        doc = {"created": stamp, "modified": stamp, "info": {}, "tags": [], "notes": [], **doc}
        with self._lock:
            self._db.execute(
                "INSERT INTO containers VALUES (?, ?, ?, ?, ?)",
                (cid, ctype, parent_id, label, json.dumps(doc)),
            )
        return Container(cid, ctype, parent_id, label, doc)

    def _container(self, row: tuple[Any, ...]) -> Container:
        return Container(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def get_container(self, cid: str) -> Container | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, type, parent_id, label, doc FROM containers WHERE id=?", (cid,)
            ).fetchone()
        return None if row is None else self._container(row)

    def children(self, parent_id: str | None, ctype: str) -> list[Container]:
        with self._lock:
            if parent_id is None:
                rows = self._db.execute(
                    "SELECT id, type, parent_id, label, doc FROM containers "
                    "WHERE parent_id IS NULL AND type=? ORDER BY id",
                    (ctype,),
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, type, parent_id, label, doc FROM containers "
                    "WHERE parent_id=? AND type=? ORDER BY id",
                    (parent_id, ctype),
                ).fetchall()
        return [self._container(r) for r in rows]

    def child(self, parent_id: str | None, ctype: str, cid: str) -> Container | None:
        """The child `cid` of `parent_id`, if it is one of type `ctype`."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, type, parent_id, label, doc FROM containers "
                "WHERE id=? AND type=? AND parent_id IS ?",
                (cid, ctype, parent_id),
            ).fetchone()
        return None if row is None else self._container(row)

    def child_labelled(self, parent_id: str | None, ctype: str, label: str) -> Container | None:
        """The oldest child of `parent_id` of type `ctype` with this label (ids sort by age)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, type, parent_id, label, doc FROM containers "
                "WHERE parent_id IS ? AND type=? AND label=? ORDER BY id LIMIT 1",
                (parent_id, ctype, label),
            ).fetchone()
        return None if row is None else self._container(row)

    def containers_by_id(self, ids: Iterable[str]) -> dict[str, Container]:
        out: dict[str, Container] = {}
        for chunk in _chunks(ids):
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, type, parent_id, label, doc FROM containers "
                    f"WHERE id IN ({_marks(chunk)})",
                    chunk,
                ).fetchall()
            out.update((r[0], self._container(r)) for r in rows)
        return out

    def children_of(self, parent_ids: Iterable[str], ctype: str) -> dict[str, list[Container]]:
        """`children(p, ctype)` for many parents in one query per chunk of parents."""
        out: dict[str, list[Container]] = {}
        for chunk in _chunks(parent_ids):
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, type, parent_id, label, doc FROM containers "
                    f"WHERE parent_id IN ({_marks(chunk)}) AND type=? ORDER BY id",
                    (*chunk, ctype),
                ).fetchall()
            for r in rows:
                out.setdefault(r[2], []).append(self._container(r))
        return out

    def all_of_type(self, ctype: str) -> list[Container]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, type, parent_id, label, doc FROM containers WHERE type=? ORDER BY id",
                (ctype,),
            ).fetchall()
        return [self._container(r) for r in rows]

    def descendants_of_type(self, ancestor_id: str, ctype: str) -> list[Container]:
        """Containers of `ctype` below `ancestor_id` at any depth (via the stored parents)."""
        return [
            c for c in self.all_of_type(ctype) if ancestor_id in c.doc.get("parents", {}).values()
        ]

    def update_container(self, cid: str, label: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE containers SET label=?, doc=? WHERE id=?", (label, json.dumps(doc), cid)
            )

    def delete_container_tree(self, cid: str) -> int:
        """Delete a container, everything below it and their files; returns containers removed."""
        with self._lock:
            ids = [cid]
            i = 0
            while i < len(ids):
                rows = self._db.execute(
                    "SELECT id FROM containers WHERE parent_id=?", (ids[i],)
                ).fetchall()
                ids.extend(r[0] for r in rows)
                i += 1
            for one in ids:
                for rec in self._files_where("container_id=?", (one,)):
                    self._unlink_blob(rec.blob)
                self._db.execute("DELETE FROM files WHERE container_id=?", (one,))
                self._db.execute("DELETE FROM containers WHERE id=?", (one,))
        return len(ids)

    # ---- files ------------------------------------------------------------------------

    def _files_where(self, where: str, args: tuple[Any, ...]) -> list[FileRec]:
        with self._lock:
            rows = self._db.execute(
                "SELECT file_id, container_id, name, version, current, file_group, size, blob, doc"
                f" FROM files WHERE {where} ORDER BY file_id",
                args,
            ).fetchall()
        return [
            FileRec(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7], json.loads(r[8]))
            for r in rows
        ]

    def current_files(self, container_id: str, file_group: str | None = None) -> list[FileRec]:
        if file_group is None:
            return self._files_where("container_id=? AND current=1", (container_id,))
        return self._files_where(
            "container_id=? AND current=1 AND file_group=?", (container_id, file_group)
        )

    def current_files_of(
        self, container_ids: Iterable[str], file_group: str
    ) -> dict[str, list[FileRec]]:
        """`current_files(c, file_group)` for many containers, in one query per chunk."""
        out: dict[str, list[FileRec]] = {}
        for chunk in _chunks(container_ids):
            recs = self._files_where(
                f"container_id IN ({_marks(chunk)}) AND current=1 AND file_group=?",
                (*chunk, file_group),
            )
            for rec in recs:
                out.setdefault(rec.container_id, []).append(rec)
        return out

    def all_current_files(self) -> list[FileRec]:
        return self._files_where("current=1", ())

    def file_by_name(
        self,
        container_id: str,
        name: str,
        version: int | None = None,
        file_group: str | None = None,
    ) -> FileRec | None:
        if version is None:
            recs = self._files_where(
                "container_id=? AND name=? AND current=1", (container_id, name)
            )
        else:
            recs = self._files_where(
                "container_id=? AND name=? AND version=?", (container_id, name, version)
            )
        if file_group is not None:
            recs = [r for r in recs if r.file_group == file_group]
        # Outputs before inputs: an analysis output shadows an input of the same name.
        recs.sort(key=lambda r: r.file_group != "files")
        return recs[0] if recs else None

    def file_by_id(self, file_id: str) -> FileRec | None:
        recs = self._files_where("file_id=?", (file_id,))
        return recs[0] if recs else None

    def file_versions(self, rec: FileRec) -> list[FileRec]:
        recs = self._files_where(
            "container_id=? AND name=? AND file_group=?",
            (rec.container_id, rec.name, rec.file_group),
        )
        return sorted(recs, key=lambda r: r.version)

    def blob_path(self, rec: FileRec) -> Path:
        return self.blob_dir / rec.blob

    def spool_path(self) -> Path:
        """A fresh path in the spool directory, on the same file system as the blobs."""
        return self.spool_dir / secrets.token_hex(12)

    def add_file(
        self,
        container_id: str,
        name: str,
        src: Path,
        size: int,
        doc: dict[str, Any],
        file_group: str = "files",
    ) -> FileRec:
        """Adopt `src` (moved, not copied) as the newest version of `name` in the container."""
        file_id = self.new_id()
        blob = f"{file_id[-2:]}/{file_id}"
        dest = self.blob_dir / blob
        dest.parent.mkdir(exist_ok=True)
        os.replace(src, dest)
        stamp = now_iso()
        with self._lock:
            older = self._files_where(
                "container_id=? AND name=? AND file_group=?", (container_id, name, file_group)
            )
            version = max((r.version for r in older), default=0) + 1
            self._db.execute(
                "UPDATE files SET current=0 WHERE container_id=? AND name=? AND file_group=?",
                (container_id, name, file_group),
            )
            full = {"created": stamp, "modified": stamp, "info": {}, "tags": [], **doc}
            rec = FileRec(file_id, container_id, name, version, True, file_group, size, blob, full)
            self._db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?)",
                (file_id, container_id, name, version, file_group, size, blob, json.dumps(full)),
            )
        return rec

    def link_file(self, rec: FileRec, container_id: str, file_group: str) -> FileRec:
        """Add the bytes of `rec` to another container (analysis inputs) without copying."""
        spool = self.spool_path()
        os.link(self.blob_path(rec), spool)
        keep = (
            "hash",
            "mimetype",
            "type",
            "modality",
            "classification",
            "zip_member_count",
            "created",
            "modified",
            "origin",
        )
        doc = {k: rec.doc[k] for k in keep if k in rec.doc}
        return self.add_file(container_id, rec.name, spool, rec.size, doc, file_group)

    def update_file_doc(self, rec: FileRec) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE files SET doc=? WHERE file_id=?", (json.dumps(rec.doc), rec.file_id)
            )

    def delete_file(self, rec: FileRec) -> None:
        """Remove a file and all its versions (the blob bytes go too)."""
        with self._lock:
            for r in self.file_versions(rec):
                self._unlink_blob(r.blob)
                self._db.execute("DELETE FROM files WHERE file_id=?", (r.file_id,))

    def rename_file(self, rec: FileRec, container_id: str, name: str) -> None:
        with self._lock:
            for r in self.file_versions(rec):
                self._db.execute(
                    "UPDATE files SET container_id=?, name=? WHERE file_id=?",
                    (container_id, name, r.file_id),
                )

    def _unlink_blob(self, blob: str) -> None:
        (self.blob_dir / blob).unlink(missing_ok=True)

    # ---- jobs and tickets -------------------------------------------------------------

    def insert_job(self, doc: dict[str, Any]) -> str:
        jid = doc.get("_id") or self.new_id()
        doc = {**doc, "_id": jid}
        with self._lock:
            self._db.execute("INSERT INTO jobs VALUES (?, ?)", (jid, json.dumps(doc)))
        return str(jid)

    def jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT doc FROM jobs ORDER BY id").fetchall()
        return [json.loads(r[0]) for r in rows]

    def new_ticket(self, doc: dict[str, Any]) -> str:
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            self._db.execute("INSERT INTO tickets VALUES (?, ?)", (ticket, json.dumps(doc)))
        return ticket

    def put_ticket(self, ticket: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO tickets VALUES (?, ?)", (ticket, json.dumps(doc))
            )

    def get_ticket(self, ticket: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM tickets WHERE ticket=?", (ticket,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def drop_ticket(self, ticket: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM tickets WHERE ticket=?", (ticket,))

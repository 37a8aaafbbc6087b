"""Writes in domain terms: new files and versions staged and uploaded, containers made,
renamed and deleted. No FUSE; `FlywheelFS` routes the write calls here.

A file being written lives in the spool (`fwfs.uploads`) and is shown at its path from
there (`Pending`) until its last writer is released; then the parent's listing is fetched
again and shows the uploaded file. Every rule a user can observe is in docs/SEMANTICS.md
("Writes"); each check that refuses an operation says why in its error, which the FUSE
adapter logs.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, cast

from fwfs import paths
from fwfs.config import MountConfig
from fwfs.errors import (
    AlreadyExists,
    CrossDevice,
    FwfsError,
    InvalidArgument,
    IsADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    PermissionDenied,
    ReadOnly,
)
from fwfs.fs.nodes import ANALYSES_DIR, ArchiveDir, ArchiveFile, Dir, File, Node
from fwfs.fs.tree import Tree
from fwfs.models import CHILD_KIND, Container, FileInfo, Json, Kind, write_access
from fwfs.site import SiteClient
from fwfs.uploads import (
    RecoveryReport,
    RetryPolicy,
    SendBudget,
    Spool,
    StagedFile,
    Uploader,
    UploadTarget,
)

log = logging.getLogger("fwfs.writes")

# Containers that hold files a user may upload (analyses are written by gears).
FILE_HOLDERS: frozenset[str] = frozenset({"project", "subject", "session", "acquisition"})
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_DRAIN_TIMEOUT = 3600.0


@dataclass
class Pending:
    """A file being written at `path`: what `lookup` and `readdir` show until released."""

    path: str
    parent: Dir
    staged: StagedFile
    mtime: float = field(default_factory=time.time)
    # A write or truncate that failed (the spool's disk full, say): the program was told,
    # and these bytes are not what it meant to write, so they are never uploaded.
    broken: FwfsError | None = None


@dataclass
class WriteHandle:
    """One open for writing. `pending` is None until the first change of a file opened
    without O_TRUNC (copy-on-write is lazy: `touch` or an unchanged O_RDWR costs nothing)."""

    path: str
    pending: Pending | None
    source: File | None = None
    wrote: bool = False


class _Chunks:
    """A file-like `read` over an iterator of chunks (the spool copies with it)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def read(self, size: int = -1) -> bytes:
        return next(self._chunks, b"")


class Writes:
    """Guarded by `self._lock`: `_pending` (by path) and `_uploaded` (file ids this mount
    uploaded, which a rename may replace without --allow-delete)."""

    def __init__(
        self,
        client: SiteClient,
        config: MountConfig,
        tree: Tree,
        lookup: Callable[[str], Node | Pending],
        spool: Spool,
        user_id: str | None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.config = config
        self.tree = tree
        self._lookup = lookup
        self.spool = spool
        # `retry`: the mount's RetryPolicy.from_config(client config); the default is what
        # that gives for the default ClientConfig (3 attempts, 1 s, then 2 s).
        self.uploader = Uploader(spool, self._upload, retry=retry)
        self.user_id = user_id
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}
        self._uploaded: set[str] = set()

    def close(self) -> None:
        if not self.uploader.drain(_DRAIN_TIMEOUT):
            log.error("uploads still running at unmount; their bytes stay in %s", self.spool.root)
        self.spool.close()

    def recover(self) -> list[RecoveryReport]:
        reports = self.uploader.recover(retry_recovery=self.config.retry_recovery)
        for r in reports:
            where = r.target.path if r.target else r.entry
            if r.outcome == "uploaded":
                log.warning("finished an upload a previous run left pending: %s", where)
                if r.target is not None:
                    self.tree.forget_container(r.target.cid)
            else:
                log.warning(
                    "upload of %s not done (%s): bytes kept at %s", where, r.outcome, r.data_path
                )
        return reports

    # ---- what readers see -------------------------------------------------------------

    def pending(self, path: str) -> Pending | None:
        with self._lock:
            p = self._pending.get(path)
            if p is None or not p.staged.finished:
                return p
            # Uploaded (or kept in recovery/) and released a moment ago: the release is
            # still on its way out, and the site's listing is what to show now.
            del self._pending[path]
        self.tree.forget(p.parent)
        return None

    def pending_in(self, dirpath: str) -> list[Pending]:
        with self._lock:
            return [
                p
                for p in self._pending.values()
                if posixpath.dirname(p.path) == dirpath and not p.staged.finished
            ]

    # ---- files ------------------------------------------------------------------------

    def create(self, path: str) -> WriteHandle:
        """O_CREAT of a name (new or existing): an empty file that uploads at close."""
        with self._lock:
            existing = self._pending.get(path)
        if existing is not None:
            existing.staged.open()
            try:
                existing.staged.truncate(0)
            except BaseException:
                self._release_staged(existing)
                raise
            return WriteHandle(path, existing, wrote=True)
        parent, name = self._parent_of(path)
        try:
            node: Node | Pending | None = self._lookup(path)
        except NotFound:
            node = None
        target = self._target(parent, name, path, node)
        return WriteHandle(path, self._stage(path, parent, target, None))

    def open(self, path: str, node: Node | Pending, truncate: bool) -> WriteHandle:
        """An open for writing of an existing entry (`node`, as looked up)."""
        if isinstance(node, Pending):
            node.staged.open()
            handle = WriteHandle(path, node)
            if truncate:
                self._change(handle, lambda s: s.truncate(0))
            return handle
        if isinstance(node, Dir | ArchiveDir):
            raise IsADirectory("is a directory")
        if isinstance(node, ArchiveFile):
            raise ReadOnly("zip members are read-only")
        parent, name = self._parent_of(path)
        target = self._target(parent, name, path, node)
        if truncate:
            return WriteHandle(path, self._stage(path, parent, target, None))
        return WriteHandle(path, None, source=node)

    def write(self, handle: WriteHandle, offset: int, data: bytes | memoryview) -> int:
        return self._change(handle, lambda s: s.write(offset, data))

    def truncate_handle(self, handle: WriteHandle, size: int) -> None:
        self._change(handle, lambda s: s.truncate(size))

    def read(self, handle: WriteHandle, offset: int, size: int) -> bytes | None:
        """The staged bytes, or None when nothing is staged yet (read the site's)."""
        return None if handle.pending is None else handle.pending.staged.read(offset, size)

    def truncate(self, path: str, node: Node | Pending, size: int) -> None:
        """truncate(2) by path, with no handle: a new version at once."""
        if isinstance(node, Pending):
            node.staged.truncate(size)
            node.mtime = time.time()
            return
        handle = self.open(path, node, truncate=size == 0)
        try:
            if size:
                self.truncate_handle(handle, size)
            self.flush(handle, force=True)
        finally:
            self.release(handle)

    def flush(self, handle: WriteHandle, *, force: bool = False) -> None:
        """close(2) of a descriptor: upload if this is the last writer and it has bytes.

        A file never written and still empty waits for release: a shell opens `> f` and its
        child writes, and the shell's own close must not upload an empty first version."""
        p = handle.pending
        if p is not None and p.broken is not None:
            raise p.broken
        if p is None or p.staged.finished or p.staged.writers > 1:
            return
        if not force and not handle.wrote and p.staged.size == 0:
            return
        self._uploaded_ok(p, self.uploader.commit(p.staged))

    def fsync(self, handle: WriteHandle) -> None:
        p = handle.pending
        if p is not None and p.broken is not None:
            raise p.broken
        if p is None or p.staged.finished:
            return
        p.staged.fsync()
        self._uploaded_ok(p, self.uploader.commit(p.staged))

    def release(self, handle: WriteHandle) -> None:
        if handle.pending is not None:
            self._release_staged(handle.pending)

    def _release_staged(self, p: Pending) -> None:
        try:
            self._uploaded_ok(p, self.uploader.release(p.staged))
        finally:
            if p.staged.finished:
                self._drop(p)
                self.tree.forget(p.parent)

    def _drop(self, p: Pending) -> None:
        """`p` is no longer shown at its path (unless another file took the path since)."""
        with self._lock:
            if self._pending.get(p.path) is p:
                del self._pending[p.path]

    def _change(self, handle: WriteHandle, change: Callable[[StagedFile], int | None]) -> int:
        if handle.pending is None:
            handle.pending = self._materialize(handle)
        handle.wrote = True
        p = handle.pending
        p.mtime = time.time()
        try:
            return change(p.staged) or 0
        except FwfsError as err:
            if err.errno != errno.ESTALE:
                p.broken = err
                p.staged.mark_failed(err)
            raise

    def _materialize(self, handle: WriteHandle) -> Pending:
        """Copy-on-write: the current version into the spool, at the first change."""
        with self._lock:
            existing = self._pending.get(handle.path)
        if existing is not None:
            existing.staged.open()
            return existing
        source = handle.source
        assert source is not None
        parent, name = self._parent_of(handle.path)
        target = self._target(parent, name, handle.path, source)
        chunks = self._site_bytes(source.info)
        return self._stage(handle.path, parent, target, cast(BinaryIO, _Chunks(chunks)))

    def _site_bytes(self, info: FileInfo) -> Iterator[bytes]:
        """The bytes of exactly the version listed, streamed."""
        p = info.parent
        return self.client.stream_file(
            p.kind,
            p.id,
            info.name,
            version=info.version,
            group=info.file_group,
            file_id=info.file_id,
        )

    def _stage(
        self, path: str, parent: Dir, target: UploadTarget, source: BinaryIO | None
    ) -> Pending:
        self.client.prepare_upload()  # what the upload asks of the site, while bytes arrive
        staged = self.spool.create(target, source)
        p = Pending(path, parent, staged)
        with self._lock:
            old = self._pending.get(path)
            self._pending[path] = p
        if old is not None:
            old.staged.discard()
        return p

    def _uploaded_ok(self, p: Pending, result: Json | None) -> None:
        if result is None:
            return
        file_id = result.get("file_id") or result.get("_id")
        if isinstance(file_id, str):
            with self._lock:
                self._uploaded.add(file_id)
        self.tree.forget(p.parent)

    def _upload(
        self, target: UploadTarget, fileobj: BinaryIO, size: int, budget: SendBudget
    ) -> Json:
        # The close()'s one budget decides every resend, in the client as in the Uploader.
        files = self.client.upload_file(
            target.kind, target.cid, target.name, fileobj, size, retry=budget.again
        )
        for doc in files:
            if doc.get("name") == target.name:
                return doc
        return files[-1] if files else {}

    # ---- removing -----------------------------------------------------------------------

    def unlink(self, path: str, node: Node | Pending) -> None:
        if isinstance(node, Pending):
            if node.staged.last_result is None:
                # Never reached the site: dropping it loses nothing anyone else saw.
                node.staged.discard()
                self._drop(node)
                return
            raise NotPermitted("the file is still open for writing; close it first")
        if isinstance(node, Dir | ArchiveDir):
            raise IsADirectory("is a directory")
        if isinstance(node, ArchiveFile):
            raise ReadOnly("zip members are read-only")
        parent, _ = self._parent_of(path)
        self._check_holder(parent, "files")
        self._check_delete("deleting a file on the site")
        p = node.info.parent
        self.client.delete_file(p.kind, p.id, node.info.name, reason=self.config.delete_reason)
        self.tree.forget(parent)

    def rmdir(self, path: str, node: Node | Pending) -> None:
        if not isinstance(node, Dir):
            raise NotPermitted("not a container directory")
        c = _holder(node)
        if c is None:
            raise NotPermitted("only projects, subjects, sessions and acquisitions are removed")
        self._check_delete("removing a container on the site")
        self.tree.forget(node)  # emptiness is decided on a fresh listing
        if self.tree.listing(node).entries or self.pending_in(path) or c.raw.get("analyses"):
            raise NotEmpty(f"{c.kind} is not empty")
        self.client.delete_container(c.kind, c.id, reason=self.config.delete_reason)
        parent, _ = self._parent_of(path)
        self.tree.forget(parent)

    def _check_delete(self, what: str) -> None:
        if not self.config.allow_delete:
            raise NotPermitted(f"{what} needs a mount with --allow-delete")
        self._check_reason(what)

    def _check_reason(self, what: str) -> None:
        """A site with an audit trail refuses a delete without a reason: say so before
        anything is sent, rather than fail half-way (after an upload, for a rename)."""
        if self.config.audit_trail and self.config.delete_reason is None:
            raise NotPermitted(
                f"{what}: this site keeps an audit trail, so deletes need a mount with "
                "--delete-reason REASON"
            )

    # ---- directories --------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        parent, name = self._parent_of(path)
        c = parent.container
        kind = CHILD_KIND.get(c.kind) if parent.kind == "container" and c else None
        if c is None or kind is None:
            raise NotPermitted("containers are made under a group, project, subject or session")
        label = _raw_name(name, label=True)
        if name == ANALYSES_DIR:
            raise NotPermitted(f"{name!r} is the name of the analyses directory")
        try:
            self._lookup(path)
        except NotFound:
            pass
        else:
            # Flywheel takes a second container of one label, but the path would still name
            # the older one (it keeps the name), so `mkdir` of a listed name is refused.
            raise AlreadyExists(f"{name!r} exists")
        self._check_access(parent)
        body: Json = {"label": label}
        if kind == "project":
            body["group"] = c.id
        elif kind == "subject":
            body.update(project=c.id, code=label)
        elif kind == "session":
            body.update(project=c.parents.get("project"), subject={"_id": c.id})
        else:
            body["session"] = c.id
        self.client.create_container(kind, body)
        self.tree.forget(parent)

    # ---- renames --------------------------------------------------------------------------

    def rename(self, old: str, new: str, flags: int, node: Node | Pending) -> None:
        if flags & _RENAME_EXCHANGE:
            raise InvalidArgument("exchanging two names is not supported")
        try:
            existing: Node | Pending | None = self._lookup(new)
        except NotFound:
            existing = None
        if existing is not None and flags & _RENAME_NOREPLACE:
            raise AlreadyExists("the new name exists")
        if isinstance(node, Dir):
            self._rename_dir(old, new, node, existing)
        elif isinstance(node, Pending):
            self._rename_pending(new, node, existing)
        elif isinstance(node, File):
            self._rename_file(old, new, node, existing)
        else:
            raise ReadOnly("zip members are read-only")

    def _rename_dir(self, old: str, new: str, node: Dir, existing: Node | Pending | None) -> None:
        c = _holder(node)
        if c is None:
            raise NotPermitted("only projects, subjects, sessions and acquisitions are renamed")
        old_parent, _ = self._parent_of(old)
        new_parent, name = self._parent_of(new)
        if old_parent.key != new_parent.key:
            raise NotPermitted("moving a container to another parent is not supported")
        if existing is not None:
            raise AlreadyExists("the new name exists")
        self._check_access(node)
        self.client.modify_container(c.kind, c.id, {"label": _raw_name(name, label=True)})
        self.tree.forget(old_parent)

    def _rename_pending(self, new: str, p: Pending, existing: Node | Pending | None) -> None:
        if isinstance(existing, Dir | ArchiveDir):
            raise IsADirectory("the new name is a directory")
        if p.staged.last_result is not None:
            raise NotPermitted("the file is already on the site and still open; close it first")
        parent, name = self._parent_of(new)
        target = self._target(parent, name, new, existing)
        p.staged.retarget(target)
        moved = Pending(new, parent, p.staged, p.mtime)
        with self._lock:
            if self._pending.get(p.path) is p:
                del self._pending[p.path]
            replaced = self._pending.get(new)
            self._pending[new] = moved
        # Handles still hold `p`: point it at the new place as well.
        p.path, p.parent = new, parent
        if replaced is not None and replaced.staged is not p.staged:
            replaced.staged.discard()

    def _rename_file(self, old: str, new: str, node: File, existing: Node | Pending | None) -> None:
        old_parent, _ = self._parent_of(old)
        new_parent, name = self._parent_of(new)
        self._check_holder(old_parent, "files")
        if isinstance(existing, Dir | ArchiveDir):
            raise IsADirectory("the new name is a directory")
        info = node.info
        target = self._target(new_parent, name, new, existing)
        if existing is None:
            try:
                self.client.move_file(info.file_id, target.kind, target.cid, target.name)
            except NotFound as err:
                # The file was just listed, so the 404 is the route's: cores before file
                # ids (D11) cannot move a file. EXDEV makes `mv` copy and delete instead.
                log.info("%s: this site cannot move files; mv copies them instead", err)
                raise CrossDevice("this site cannot move or rename files") from err
        else:
            self._replace(info, new_parent, target)
        self.tree.forget(old_parent)
        self.tree.forget(new_parent)

    def _replace(self, info: FileInfo, new_parent: Dir, target: UploadTarget) -> None:
        """Rename onto an existing file: the source's bytes become the target's next version
        (the site cannot move onto a name), then the source name goes."""
        with self._lock:
            ours = info.file_id in self._uploaded
        what = "replacing a file by renaming another onto it"
        if not ours:
            self._check_delete(what)
        # The source is deleted after the upload: a delete that cannot succeed must
        # stop the rename before it, or both names would stay.
        self._check_reason(what)
        chunks = self._site_bytes(info)
        # Written, not given to create() as a source: a copy would start clean, and these
        # bytes must upload as a new version even though they are a copy.
        staged = self.spool.create(target, None)
        p = Pending(target.path, new_parent, staged)
        offset = 0
        try:
            for chunk in chunks:
                offset += staged.write(offset, chunk)
            self._uploaded_ok(p, self.uploader.commit(staged))
        finally:
            self.uploader.release(staged)
        self.client.delete_file(
            info.parent.kind, info.parent.id, info.name, reason=self.config.delete_reason
        )
        with self._lock:
            self._uploaded.discard(info.file_id)

    # ---- checks ---------------------------------------------------------------------------

    def _parent_of(self, path: str) -> tuple[Dir, str]:
        dirpath, name = posixpath.split(path)
        parent = self._lookup(dirpath or "/")
        if isinstance(parent, ArchiveDir):
            # Nothing is made in an archive (EPERM, as docs/SEMANTICS.md "Where" says);
            # its members are read-only (EROFS), which the callers check on the member.
            raise NotPermitted("nothing can be made inside a zip archive")
        if not isinstance(parent, Dir):
            raise NotPermitted("the parent is not a directory")
        return parent, name

    def _check_holder(self, parent: Dir, what: str) -> None:
        if _holder(parent) is None:
            if parent.kind in ("analysis", "analysis-io"):
                raise ReadOnly("analysis files are read-only")
            raise NotPermitted(f"{what} belong in a project, subject, session or acquisition")

    def _check_access(self, d: Dir) -> None:
        if d.container is not None and write_access(d.container, self.user_id) is False:
            raise PermissionDenied(f"read-only access to {d.container.kind} {d.container.id}")

    def _target(
        self, parent: Dir, name: str, path: str, node: Node | Pending | None
    ) -> UploadTarget:
        """Where the bytes written at `path` go, after every check that needs no request."""
        if node is None and parent.kind in ("analysis", "analysis-io"):
            # A new name: nothing is made in an analysis (EPERM); its files are EROFS.
            raise NotPermitted("files are made in an analysis by its job, not through the mount")
        self._check_holder(parent, "files")
        if isinstance(node, Dir | ArchiveDir):
            raise IsADirectory("is a directory")
        if isinstance(node, ArchiveFile):
            raise ReadOnly("zip members are read-only")
        assert parent.container is not None
        self._check_access(parent)
        raw = node.info.name if isinstance(node, File) else _raw_name(name)
        c = parent.container
        kind: Kind = c.kind
        return UploadTarget(kind, c.id, raw, path)


def _holder(d: Dir) -> Container | None:
    """The container of `d` when it is one that holds files: a project, subject, session
    or acquisition directory (not the root, a group, `analyses/` or an analysis)."""
    c = d.container
    return c if d.kind == "container" and c is not None and c.kind in FILE_HOLDERS else None


def _raw_name(name: str, *, label: bool = False) -> str:
    """The Flywheel name a user means by entry `name` (a container label when `label`);
    refused when it would be shown under another name, so nothing vanishes from the path it
    was written to. Labels may hold `/` (typed as `／`); file names may not."""
    raw = paths.unescape(name)
    if not raw or paths.escape(raw) != name or "\0" in raw or (not label and "/" in raw):
        raise InvalidArgument(f"{name!r} cannot be stored under that name")
    return raw


def is_write(flags: int) -> bool:
    """An open that can change the file: write access, or O_TRUNC (which empties the file
    even with O_RDONLY, as the kernel does). O_APPEND only says where writes go: with
    O_RDONLY there are none, and the open is a read (so it works on --read-only too)."""
    return (flags & os.O_ACCMODE) != os.O_RDONLY or bool(flags & os.O_TRUNC)

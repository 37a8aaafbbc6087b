"""SiteClient: what the filesystem model asks of a Flywheel site, and nothing more.

``fs/`` is written against this protocol, not against ``FlywheelClient``, so the model can
run over any object that keeps the contract: the HTTP client in a mount, an in-process
site or a fault-injecting wrapper in tests. ``FlywheelClient`` satisfies it structurally;
``mounting.py`` hands one to ``FlywheelFS`` and mypy checks it there, so a signature that
drifts on either side fails the type check.

The contract every method keeps:

- Answers are the site's JSON as plain dicts and lists (``models`` parses them).
- Every failure is an ``fwfs.errors.FwfsError`` subclass (``NotFound``,
  ``PermissionDenied``, ``RemoteError``, ...), never a transport library's exception:
  the FUSE adapter turns those, and only those, into errnos.
- Calls may come from many threads at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Protocol

from fwfs.models import Json, Kind


class SiteClient(Protocol):
    """The site calls of the filesystem model. See the module docstring for the contract."""

    # -- resolver and listings -----------------------------------------------------------

    def resolve(self, path: Sequence[str]) -> Json:
        """``POST /resolve``: the container at ``path`` (names or ``<id:…>``) and its
        children. Reads only, so a retry is safe."""
        ...

    def lookup(self, path: Sequence[str]) -> Json:
        """``POST /lookup``: the one node at ``path``; ``NotFound`` if there is none."""
        ...

    def get(self, kind: Kind, cid: str) -> Json:
        """The full document of one container (with ``info`` and ``tags``)."""
        ...

    def list_groups(self) -> list[Json]:
        """Every group the key can read, all pages."""
        ...

    def list_projects(self) -> list[Json]:
        """Every project the key can read, all pages."""
        ...

    def list_children(
        self, kind: Kind, cid: str, child_kind: Kind, *, all_info: bool = False
    ) -> list[Json]:
        """Every child of ``child_kind`` under container ``cid`` (a project's sessions or
        acquisitions: all of them, at any depth), all pages. ``all_info``: with their and
        their files' whole ``info`` (``include_all_info``), which lists may trim."""
        ...

    # -- file reads ----------------------------------------------------------------------

    def read_range(
        self,
        kind: Kind,
        cid: str,
        name: str,
        start: int,
        end: int,
        *,
        version: int | None = None,
        group: str = "files",
        file_id: str | None = None,
    ) -> bytes:
        """Bytes ``[start, end)`` of exactly ``version`` when given; fewer only at end of
        file, b"" at or past it, never a short body otherwise. A site that ignores Range
        raises an error whose ``whole_file_only`` attribute is true."""
        ...

    def stream_file(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        version: int | None = None,
        chunk_size: int = 1 << 20,
        group: str = "files",
        file_id: str | None = None,
    ) -> Iterator[bytes]:
        """The whole file in chunks; a body that ends short raises ``RemoteError``."""
        ...

    def file_info(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        group: str = "files",
        file_id: str | None = None,
    ) -> Json:
        """The file's metadata document (``info``, tags, classification, ...)."""
        ...

    def zip_info(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        version: int | None = None,
        group: str = "files",
        file_id: str | None = None,
    ) -> Json:
        """The site's own listing of a zip archive's members."""
        ...

    def read_zip_member(
        self,
        kind: Kind,
        cid: str,
        name: str,
        member: str,
        *,
        version: int | None = None,
        group: str = "files",
        file_id: str | None = None,
    ) -> bytes:
        """One member's bytes, decompressed by the site. Not retried: a body that breaks
        off raises at once, so the caller can read the archive's own bytes instead."""
        ...

    # -- writes --------------------------------------------------------------------------

    def prepare_upload(self) -> None:
        """A file is being written and will be uploaded: learn, without blocking, what the
        upload needs to know of the site. Does not wait for the site; a failure to learn is
        left for the upload to meet."""
        ...

    def upload_file(
        self,
        kind: Kind,
        cid: str,
        name: str,
        fileobj: BinaryIO,
        size: int,
        *,
        content_type: str = "application/octet-stream",
        metadata: Mapping[str, Any] | None = None,
        retry: bool | Callable[[str, Exception], bool] = True,
    ) -> list[Json]:
        """Upload ``size`` bytes from ``fileobj``'s current position (it must be seekable,
        retries rewind it); returns the container's file list. ``retry=False``: each
        request is sent once. A callable: the caller's policy (the Uploader's budget),
        asked ``retry(request, error)`` after a failure that sending ``request`` alone
        again may fix; it waits itself. A failure that a new upload may fix (an expired
        signed URL, a ticket the site dropped) is raised as ``RemoteError``."""
        ...

    def delete_file(self, kind: Kind, cid: str, name: str, *, reason: str | None = None) -> Json:
        """``reason``: the ``delete_reason`` sites with an audit trail require."""
        ...

    def move_file(self, file_id: str, kind: Kind, cid: str, name: str) -> Json:
        """Rename a file, or move it to another container."""
        ...

    def create_container(self, kind: Kind, body: Mapping[str, Any]) -> str:
        """Create a container (not an analysis); returns its id."""
        ...

    def modify_container(self, kind: Kind, cid: str, body: Mapping[str, Any]) -> Json:
        """Change a container's fields (``label``, ...)."""
        ...

    def delete_container(self, kind: Kind, cid: str, *, reason: str | None = None) -> Json:
        """``reason``: the ``delete_reason`` sites with an audit trail require."""
        ...

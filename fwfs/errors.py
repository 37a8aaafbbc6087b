"""The fwfs exception hierarchy and the single table that maps failures to errnos.

Every failure that can reach the FUSE layer is an ``FwfsError`` whose class fixes the
errno, so the adapter needs exactly one ``except FwfsError as e: raise FuseOSError(e.errno)``.
``ERRNO_TABLE`` is the documentation of that mapping: docs render it, and
``errno_for_status`` reads its HTTP rows, so the two cannot drift apart.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar, NamedTuple, TypeVar

_E = TypeVar("_E", bound="FwfsError")


class FwfsError(Exception):
    """Base class. ``errno`` is a class attribute so that the class alone decides it.

    Attributes describe the failed request for logs and messages. ``path`` never holds a
    query string (tickets travel there) and nothing here ever holds the API key.
    """

    errno: ClassVar[int] = _errno.EIO

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        method: str | None = None,
        path: str | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.method = method
        self.path = path
        self.server_message = server_message

    @classmethod
    def for_request(
        cls: type[_E],
        method: str,
        path: str,
        why: str,
        *,
        status: int | None = None,
        server_message: str | None = None,
    ) -> _E:
        """The usual shape: ``"GET /api/projects/x: why"``. ``path`` must carry no query."""
        return cls(
            f"{method} {path}: {why}",
            status=status,
            method=method,
            path=path,
            server_message=server_message,
        )


class NotFound(FwfsError):
    errno = _errno.ENOENT


class PermissionDenied(FwfsError):
    errno = _errno.EACCES


class AlreadyExists(FwfsError):
    errno = _errno.EEXIST


class NotADirectory(FwfsError):
    errno = _errno.ENOTDIR


class IsADirectory(FwfsError):
    errno = _errno.EISDIR


class ReadOnly(FwfsError):
    errno = _errno.EROFS


class NotPermitted(FwfsError):
    errno = _errno.EPERM


class InvalidArgument(FwfsError):
    errno = _errno.EINVAL


class RemoteError(FwfsError):
    """The server answered, but with a failure or with something fwfs cannot trust."""

    errno = _errno.EIO


class RemoteUnavailable(RemoteError):
    """The server could not be reached or kept failing transiently until retries ran out."""


class TooLarge(FwfsError):
    errno = _errno.EFBIG


class NameTooLong(FwfsError):
    errno = _errno.ENAMETOOLONG


class StaleFile(FwfsError):
    errno = _errno.ESTALE


class NotEmpty(FwfsError):
    errno = _errno.ENOTEMPTY


class NotSupported(FwfsError):
    errno = _errno.ENOTSUP


class CrossDevice(FwfsError):
    errno = _errno.EXDEV


class SpoolFull(FwfsError):
    """The spool's disk is full (or over quota): the write fails, the bytes so far stay."""

    errno = _errno.ENOSPC


class SpoolBusy(FwfsError):
    """Another fwfs process holds the spool directory; two would recover each other's files."""

    errno = _errno.EBUSY


class ErrnoRow(NamedTuple):
    """One row of the published mapping. ``trigger`` is an HTTP status or a condition."""

    trigger: int | str
    error: type[FwfsError]
    errno_name: str
    why: str


def _row(trigger: int | str, error: type[FwfsError], why: str) -> ErrnoRow:
    return ErrnoRow(trigger, error, _errno.errorcode[error.errno], why)


ERRNO_TABLE: tuple[ErrnoRow, ...] = (
    _row(400, InvalidArgument, "the server rejected the request as malformed"),
    _row(401, PermissionDenied, "the API key is missing, expired or revoked"),
    _row(403, PermissionDenied, "the user lacks the needed role on the container"),
    _row(404, NotFound, "no container or file by that id or name"),
    _row(409, AlreadyExists, "a container or file with that label or name already exists"),
    _row(413, TooLarge, "the server refused the upload as too large"),
    _row(416, InvalidArgument, "range not satisfiable; a ranged read turns it into EOF"),
    _row(422, InvalidArgument, "the server found the request invalid (e.g. a missing field)"),
    _row(429, RemoteUnavailable, "still rate-limited after every retry"),
    _row(502, RemoteUnavailable, "bad gateway after every retry"),
    _row(503, RemoteUnavailable, "service unavailable after every retry"),
    _row(504, RemoteUnavailable, "gateway timeout after every retry"),
    _row("other 5xx", RemoteError, "server-side failure; not retried"),
    _row("any other status", RemoteError, "unexpected answer; reported rather than guessed at"),
    _row(
        "connection refused, reset or dropped; DNS or TLS failure",
        RemoteUnavailable,
        "the site cannot be reached; idempotent requests are retried first",
    ),
    _row(
        "connect or read timeout",
        RemoteUnavailable,
        "a stalled server must fail a read in bounded time rather than hang it",
    ),
    _row(
        "truncated or malformed response body",
        RemoteError,
        "short data is never returned as if it were complete",
    ),
    _row("list pagination cursor does not advance", RemoteError, "avoids an endless listing"),
    _row("write to a read-only mount or container", ReadOnly, "the mount or object is read-only"),
    _row(
        "operation Flywheel has no equivalent for",
        NotSupported,
        "e.g. hard and symbolic links, setting xattrs",
    ),
    _row(
        "operation forbidden by fwfs itself",
        NotPermitted,
        "e.g. deleting without --allow-delete, moving a container to another parent",
    ),
    _row(
        "moving a file on a site without a move endpoint (an older core)",
        CrossDevice,
        "`mv` then copies and deletes, as it does across filesystems",
    ),
    _row("path component is a file", NotADirectory, "POSIX semantics for lookups"),
    _row("directory used as a file", IsADirectory, "POSIX semantics for open/unlink"),
    _row("removing a non-empty container", NotEmpty, "fwfs never deletes recursively"),
    _row("name longer than 255 bytes", NameTooLong, "the kernel's NAME_MAX"),
    _row("file changed remotely under an open handle", StaleFile, "cached data no longer valid"),
    _row(
        "the spool directory's disk is full (or over quota)",
        SpoolFull,
        "the write fails; the bytes written so far stay in the spool",
    ),
    _row(
        "the spool directory is held by another fwfs process",
        SpoolBusy,
        "the mount does not start: two would recover each other's pending uploads",
    ),
)

_BY_STATUS: dict[int, type[FwfsError]] = {
    row.trigger: row.error for row in ERRNO_TABLE if isinstance(row.trigger, int)
}


def errno_for_status(status: int) -> type[FwfsError]:
    """The error class for a final (post-retry) HTTP failure status."""
    return _BY_STATUS.get(status, RemoteError)


def render_errno_table() -> str:
    """ERRNO_TABLE as the Markdown table docs/SEMANTICS.md holds (a test compares them)."""
    lines = ["| condition | errno | why |", "|---|---|---|"]
    for row in ERRNO_TABLE:
        trigger = f"HTTP {row.trigger}" if isinstance(row.trigger, int) else row.trigger
        lines.append(f"| {trigger} | {row.errno_name} | {row.why} |")
    return "\n".join(lines) + "\n"

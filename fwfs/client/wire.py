"""What goes on the wire and comes back: request bodies, URL pieces, response bodies read
exactly, typed failures, and the rules for retrying them."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO, Final, TypeVar
from urllib.parse import quote

import requests
import urllib3.exceptions
from urllib3.util.retry import Retry

from fwfs.errors import (
    FwfsError,
    InvalidArgument,
    RemoteError,
)
from fwfs.models import Json

_PLURAL: Final[Mapping[str, str]] = {
    "group": "groups",
    "project": "projects",
    "subject": "subjects",
    "session": "sessions",
    "acquisition": "acquisitions",
    "analysis": "analyses",
}
# `pagination` turns a list answer into {count, total, results}: sent only on the list
# calls that read that shape (_paged), never on the session.
_FEATURES: Final = "Safe-Redirect,multipart_signed_url,subject-container"
_PAGED_HEADERS: Final = {"x-accept-feature": f"{_FEATURES},pagination"}
_RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
# Used for its Retry-After parser only (delay-seconds or HTTP-date, RFC 9110); our own
# cap (backoff_max) is applied where the wait is taken, in Transport._pause.
_RETRY_AFTER: Final = Retry(0)
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_PAGE_SIZE: Final = 250  # the SDK finders' page size
_ERROR_BODY_LIMIT: Final = 64 * 1024
# The SDK aligns multi-URL upload parts to 256 KiB because GCS requires it.
_PART_ALIGNMENT: Final = 256 * 1024
_FILE_HEADERS: Final = {"Accept": "application/octet-stream", "Accept-Encoding": "identity"}
_SEND_BLOCK = 1 << 20
_CONFIG_TTL = 300.0  # seconds the site's upload mode (signed URLs or not) is trusted
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_QUERY = re.compile(r"\?[^\s'\")]*")

log = logging.getLogger("fwfs.client")
_T = TypeVar("_T")
_J = TypeVar("_J", dict[str, Any], list[Any])
_Piece = bytes | tuple[BinaryIO, int, int]


class _StreamBody:
    """A sized, rewindable request body of byte strings and (file, offset, size) slices.

    It is read lazily, so uploads never hold a file in memory, and its length is known,
    so requests sends Content-Length rather than chunked encoding (signed URLs refuse it).
    """

    def __init__(self, pieces: Sequence[_Piece]) -> None:
        self._pieces = list(pieces)
        self._sizes = [len(p) if isinstance(p, bytes) else p[2] for p in self._pieces]
        self._index = self._offset = self._pos = 0

    def __len__(self) -> int:
        return sum(self._sizes)

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if offset != 0 or whence != io.SEEK_SET:
            raise io.UnsupportedOperation("upload bodies can only be rewound")
        self._index = self._offset = self._pos = 0
        return 0

    def read(self, n: int = -1) -> bytes:
        # urllib3 reads _SEND_BLOCK at a time, each read within one piece: that read is the
        # one copy of the bytes (a pread), handed on as it is. Gathering into a buffer and
        # copying it out again took a third of the sender's CPU, and at 1 GiB/s that is
        # the upload's ceiling on a small machine.
        chunks: list[bytes] = []
        got = 0
        while self._index < len(self._pieces) and (n < 0 or got < n):
            left = self._sizes[self._index] - self._offset
            want = left if n < 0 else min(left, n - got)
            chunk = self._piece_read(self._pieces[self._index], self._offset, want)
            chunks.append(chunk)
            got += len(chunk)
            self._offset += len(chunk)
            self._pos += len(chunk)
            if self._offset == self._sizes[self._index]:
                self._index, self._offset = self._index + 1, 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _piece_read(piece: _Piece, offset: int, want: int) -> bytes:
        if isinstance(piece, bytes):
            return piece[offset : offset + want]
        fileobj, start, _ = piece
        try:
            fd = fileobj.fileno()
        except (AttributeError, OSError):
            fd = -1  # an in-memory file
        if fd >= 0:
            # A pread skips the buffered reader's copy, and the file position is not ours.
            chunk = b""
            while len(chunk) < want:
                more = os.pread(fd, want - len(chunk), start + offset + len(chunk))
                if not more:
                    break
                chunk = more if not chunk else chunk + more
        else:
            fileobj.seek(start + offset)
            chunk = fileobj.read(want)
        if len(chunk) < want:
            raise InvalidArgument("file to upload is shorter than its declared size")
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        # Being iterable puts requests on its streaming path, which records the start
        # position so a 307/308 redirect can rewind the body too.
        while chunk := self.read(1 << 20):
            yield chunk


class RangeIgnored(RemoteError):
    """A ranged read from a non-zero offset that the site answered with the whole file.

    ``whole_file_only`` is the mark readers of the block cache look for (they cannot
    import this module): read such a file as one stream.
    """

    whole_file_only: Final = True


class _Failed(Exception):
    """One attempt failed with ``error``; ``retry`` says whether another could succeed."""

    def __init__(self, error: FwfsError, retry: bool, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.retry, self.retry_after = error, retry, retry_after


class _BodyError(Exception):
    """A response body that is unusable; ``transient`` ones are retried like a drop."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _plural(kind: str) -> str:
    try:
        return _PLURAL[kind]
    except KeyError:
        raise InvalidArgument(f"unknown container kind {kind!r}") from None


def _segment(value: str) -> str:
    if not value:
        raise InvalidArgument("empty id or name in a request path")
    return quote(value, safe="")


def _version_params(version: int | None, **extra: str) -> dict[str, str]:
    return extra if version is None else {**extra, "version": str(version)}


def _reason_params(reason: str | None) -> dict[str, str] | None:
    return None if reason is None else {"delete_reason": reason}


def _by_id(name: str, file_id: str | None) -> bool:
    """Whether to address the file by id: a name-keyed route cannot carry a '/' (FastAPI
    path parameters stop at the encoded slash), so such names go by file id."""
    return bool(file_id) and "/" in name


def _content_length(resp: requests.Response) -> int | None:
    """Length of the body as the caller sees it, when the headers say so reliably."""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None  # gzip: the header counts wire bytes, not the decoded ones
    value = resp.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _read_body(resp: requests.Response, size: int) -> bytes:
    """The next ``size`` bytes of the body, fewer only where it ends; never reads past them.

    The whole span is one read: http.client fills a single ``bytes`` straight from the
    socket. ``iter_content`` would copy each 1 MiB chunk twice more on the way (urllib3's
    decode buffer, then the caller's join), which was most of a cold read's CPU.
    """
    if size <= 0:
        return b""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        # A server that compresses despite Accept-Encoding: identity: requests decodes.
        buf = bytearray()
        for chunk in resp.iter_content(chunk_size=size):
            buf += chunk[: size - len(buf)]
            if len(buf) >= size:
                break
        return bytes(buf)
    try:
        data: bytes = resp.raw.read(size, decode_content=False)
    # The translations iter_content makes, so that errors read the same either way.
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    return data


def _range_body(resp: requests.Response, start: int, end: int, display: str) -> bytes:
    status = resp.status_code
    if status == 416:
        return b""
    if status == 200:
        length = _content_length(resp)
        if start:
            # The site sent the whole file (a proxy, or storage that drops Range). Reading
            # past the prefix for every block would move O(size²) bytes: say so instead.
            raise RangeIgnored.for_request(
                "GET", display, "the site ignored Range and sent the whole file", status=200
            )
        want = end if length is None else min(end, length)
        data = _read_body(resp, want)
        # Without a length, a short body is the end of the file (a broken transport raises).
        if length is not None and len(data) < want:
            raise _BodyError(f"body ended before byte {start + want}", transient=True)
        return data
    elif status == 206:
        match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", "").strip())
        if match is None:
            raise _BodyError("HTTP 206 without a single-range Content-Range", transient=False)
        first, last, total = int(match[1]), int(match[2]), match[3]
        if first != start or last < first:
            raise _BodyError(
                f"asked for bytes {start}-{end - 1}, got {first}-{last}", transient=False
            )
        if last < end - 1 and (total == "*" or last != int(total) - 1):
            raise _BodyError("server sent a shorter range than asked, not at EOF", transient=False)
        want = min(last, end - 1) - first + 1
    else:
        raise _BodyError(f"unexpected HTTP {status} for a ranged read", transient=False)
    data = _read_body(resp, want)
    if len(data) < want:
        raise _BodyError(f"body ended after {len(data)} of {want} bytes", transient=True)
    return data


def _whole_body(resp: requests.Response) -> bytes:
    data = resp.content
    length = _content_length(resp)
    if length is not None and len(data) != length:
        raise _BodyError(f"body ended after {len(data)} of {length} bytes", transient=True)
    return data


def _parse_json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise _BodyError("response is not valid JSON", transient=False) from None


def _objects(value: Any) -> bool:
    """A list of JSON objects: every list endpoint fwfs uses returns objects; anything
    else is not Flywheel."""
    return isinstance(value, list) and all(isinstance(item, dict) for item in value)


def _json_reader(expect: type[_J], allow_empty: bool) -> Callable[[requests.Response], _J]:
    def read(resp: requests.Response) -> _J:
        data = _whole_body(resp)
        if allow_empty and not data.strip():
            return expect()
        value = _parse_json(data)
        if not isinstance(value, expect) or (isinstance(value, list) and not _objects(value)):
            what = "array of objects" if expect.__name__ == "list" else "object"
            raise _BodyError(f"expected a JSON {what}", transient=False)
        return value

    return read


def _read_page(resp: requests.Response) -> tuple[list[Json], int | None]:
    """A list answer and its ``total``: a ``pagination`` Page, or a bare list (None)."""
    value = _parse_json(_whole_body(resp))
    total: int | None = None
    if isinstance(value, dict) and "results" in value:
        count = value.get("total")
        # bool is an int to isinstance; a Page's total never is one.
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            total = count
        value = value["results"]
    if not _objects(value):
        raise _BodyError("expected a JSON array of objects or a page of them", transient=False)
    return value, total


def _signed_mode(site: Json) -> bool:
    """Whether a ``/config`` answer asks for the signed-URL upload flow."""
    features = site.get("features")
    return bool(
        (isinstance(features, dict) and features.get("signed_url")) or site.get("signed_url")
    )


def _detail_text(detail: Any) -> str:
    """A FastAPI ``detail``: a string, or a list of {loc, msg} validation errors."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = ".".join(str(x) for x in loc) if isinstance(loc, list) else ""
                parts.append(f"{where}: {item['msg']}" if where else item["msg"])
        if parts:
            return "; ".join(parts)
    return json.dumps(detail)[:500]


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds the site asks us to wait (not yet capped), or None for no usable header."""
    value = resp.headers.get("Retry-After", "")
    if not value.strip():
        return None
    try:
        return _RETRY_AFTER.parse_retry_after(value)
    except urllib3.exceptions.InvalidHeader:
        return None


def _never_sent(exc: Exception) -> bool:
    """True when the connection failed before any byte of the request left."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    cause = exc.args[0] if exc.args else None
    if isinstance(cause, urllib3.exceptions.MaxRetryError):
        return isinstance(cause.reason, urllib3.exceptions.NewConnectionError)
    return False


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (requests.exceptions.SSLError, requests.exceptions.TooManyRedirects)):
        return False
    return not isinstance(exc, ValueError)  # InvalidURL, InvalidHeader and friends


def _signed_part_size(size: int, parts: int) -> int:
    # The SDK's split: adds a whole alignment even when the even split is aligned.
    even = math.ceil(size / parts)
    return even + _PART_ALIGNMENT - even % _PART_ALIGNMENT

"""A `SiteClient` that fails on purpose: mountpoint-s3's `FailureClient`, written as data.

`FaultyClient(inner)` forwards every call to `inner` (the HTTP client, or anything else
that keeps the `SiteClient` contract) until a fault armed with `arm` matches a call:

- `Raise(method, error)`: that call raises `error` (an `fwfs.errors` class) instead of
  reaching the site, as a client whose retries ran out would.
- `ShortBody(method, keep)`: the call reaches the site, but its body is cut to `keep`
  bytes, with no error: the broken promise a layer above must catch (tenet 1 of
  docs/SEMANTICS.md: never a truncated body presented as complete).
- `SwapVersion(method, data)`: just before the call, `data` is uploaded as the newest
  version of the file it names; then the call goes on. A version swapped between two
  calls of one read, made at an exact moment rather than by a race.

Each fault fires on the `call`-th matching call after it was armed (1: the next one),
`name` restricting it to calls about one file, then is spent. `fired` lists what fired,
so a test can tell a fault that was met from one that never was.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from fwfs.errors import FwfsError
from fwfs.models import Json, Kind
from fwfs.site import SiteClient

# The calls that carry a file: the ones a short body or a version swap can hit.
FileMethod = Literal["read_range", "stream_file", "read_zip_member", "file_info", "zip_info"]
BodyMethod = Literal["read_range", "stream_file", "read_zip_member"]


@dataclass(frozen=True)
class Raise:
    method: str
    error: type[FwfsError]
    call: int = 1
    name: str | None = None


@dataclass(frozen=True)
class ShortBody:
    method: BodyMethod
    keep: int = 0
    call: int = 1
    name: str | None = None


@dataclass(frozen=True)
class SwapVersion:
    method: FileMethod
    data: bytes
    call: int = 1
    name: str | None = None


Fault = Raise | ShortBody | SwapVersion


@dataclass
class _Armed:
    fault: Fault
    left: int


class FaultyClient:
    """`inner` with the armed faults; see the module docstring. Thread-safe."""

    def __init__(self, inner: SiteClient, faults: Sequence[Fault] = ()) -> None:
        self.inner = inner
        self._lock = threading.Lock()
        self._armed: list[_Armed] = []
        self.fired: list[Fault] = []
        # (container id, file name) of each version a SwapVersion uploaded, once uploaded.
        self.swapped: list[tuple[str, str]] = []
        self.arm(*faults)

    def arm(self, *faults: Fault) -> None:
        for fault in faults:
            if fault.call < 1:
                raise ValueError("a fault fires on a call counted from 1")
        with self._lock:
            self._armed += [_Armed(f, f.call) for f in faults]

    def disarm(self) -> list[Fault]:
        """Drop every fault not yet fired; returns them."""
        with self._lock:
            left, self._armed = [a.fault for a in self._armed], []
        return left

    @property
    def armed(self) -> list[Fault]:
        with self._lock:
            return [a.fault for a in self._armed]

    def _due(self, method: str, name: str | None) -> Fault | None:
        """The fault this call meets, if any: every matching fault counts the call, the
        first one due fires."""
        with self._lock:
            due: _Armed | None = None
            for armed in self._armed:
                f = armed.fault
                if f.method != method or (f.name is not None and f.name != name):
                    continue
                armed.left -= 1
                if armed.left == 0 and due is None:
                    due = armed
            if due is None:
                return None
            self._armed.remove(due)
            self.fired.append(due.fault)
            return due.fault

    def _before(self, method: str, name: str | None, kind: Kind | None, cid: str) -> Fault | None:
        """Raise or swap now; return a `ShortBody` for the caller to apply."""
        fault = self._due(method, name)
        if isinstance(fault, Raise):
            raise fault.error(f"injected fault: {method} call failed with {fault.error.__name__}")
        if isinstance(fault, SwapVersion):
            assert kind is not None and name is not None
            data = fault.data
            self.inner.upload_file(kind, cid, name, io.BytesIO(data), len(data))
            with self._lock:
                self.swapped.append((cid, name))
            return None
        return fault

    # -- resolver and listings -----------------------------------------------------------

    def resolve(self, path: Sequence[str]) -> Json:
        self._before("resolve", None, None, "")
        return self.inner.resolve(path)

    def lookup(self, path: Sequence[str]) -> Json:
        self._before("lookup", None, None, "")
        return self.inner.lookup(path)

    def get(self, kind: Kind, cid: str) -> Json:
        self._before("get", None, None, cid)
        return self.inner.get(kind, cid)

    def list_groups(self) -> list[Json]:
        self._before("list_groups", None, None, "")
        return self.inner.list_groups()

    def list_projects(self) -> list[Json]:
        self._before("list_projects", None, None, "")
        return self.inner.list_projects()

    def list_children(
        self, kind: Kind, cid: str, child_kind: Kind, *, all_info: bool = False
    ) -> list[Json]:
        self._before("list_children", None, kind, cid)
        return self.inner.list_children(kind, cid, child_kind, all_info=all_info)

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
        short = self._before("read_range", name, kind, cid)
        data = self.inner.read_range(
            kind, cid, name, start, end, version=version, group=group, file_id=file_id
        )
        return data[: short.keep] if isinstance(short, ShortBody) else data

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
        short = self._before("stream_file", name, kind, cid)
        chunks = self.inner.stream_file(
            kind,
            cid,
            name,
            version=version,
            chunk_size=chunk_size,
            group=group,
            file_id=file_id,
        )
        return chunks if not isinstance(short, ShortBody) else _cut(chunks, short.keep)

    def file_info(
        self,
        kind: Kind,
        cid: str,
        name: str,
        *,
        group: str = "files",
        file_id: str | None = None,
    ) -> Json:
        self._before("file_info", name, kind, cid)
        return self.inner.file_info(kind, cid, name, group=group, file_id=file_id)

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
        self._before("zip_info", name, kind, cid)
        return self.inner.zip_info(kind, cid, name, version=version, group=group, file_id=file_id)

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
        short = self._before("read_zip_member", name, kind, cid)
        data = self.inner.read_zip_member(
            kind, cid, name, member, version=version, group=group, file_id=file_id
        )
        return data[: short.keep] if isinstance(short, ShortBody) else data

    # -- writes --------------------------------------------------------------------------

    def prepare_upload(self) -> None:
        self.inner.prepare_upload()

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
        self._before("upload_file", name, kind, cid)
        return self.inner.upload_file(
            kind,
            cid,
            name,
            fileobj,
            size,
            content_type=content_type,
            metadata=metadata,
            retry=retry,
        )

    def delete_file(self, kind: Kind, cid: str, name: str, *, reason: str | None = None) -> Json:
        self._before("delete_file", name, kind, cid)
        return self.inner.delete_file(kind, cid, name, reason=reason)

    def move_file(self, file_id: str, kind: Kind, cid: str, name: str) -> Json:
        self._before("move_file", name, None, cid)
        return self.inner.move_file(file_id, kind, cid, name)

    def create_container(self, kind: Kind, body: Mapping[str, Any]) -> str:
        self._before("create_container", None, kind, "")
        return self.inner.create_container(kind, body)

    def modify_container(self, kind: Kind, cid: str, body: Mapping[str, Any]) -> Json:
        self._before("modify_container", None, kind, cid)
        return self.inner.modify_container(kind, cid, body)

    def delete_container(self, kind: Kind, cid: str, *, reason: str | None = None) -> Json:
        self._before("delete_container", None, kind, cid)
        return self.inner.delete_container(kind, cid, reason=reason)


class Clock:
    """A clock that moves only when told: `FlywheelFS(..., clock=Clock())` sees its TTLs
    expire when a test says so, with no sleep. The other fault a model can meet is time."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds


def _cut(chunks: Iterator[bytes], keep: int) -> Iterator[bytes]:
    """The stream's first `keep` bytes, then an end as if the body were whole."""
    left = keep
    try:
        for chunk in chunks:
            if left <= 0:
                break
            yield chunk[:left]
            left -= len(chunk)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # the response under the stream goes back to its pool


def _check(client: FaultyClient) -> SiteClient:
    # mypy checks here that the wrapper keeps the protocol, signature by signature.
    return client

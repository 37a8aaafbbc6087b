"""Helpers of the FlywheelFS tests (tests/fs): the write tests' scratch tree, request filters,
the fault switch, errno_of and readers, the demo's paths."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS

# Paths in the demo site (tests/conftest.py's `demo_site`).
DEMO_PROJECT = "flywheel/Anxiety Study"
DEMO_SES = f"{DEMO_PROJECT}/sub-01/ses-baseline"

MakeFs = Callable[..., FlywheelFS]  # the `make_fs` fixture (conftest.py)

_UPLOAD = re.compile(r"/api/(projects|subjects|sessions|acquisitions|analyses)/[^/]+/files")
_MOVE = re.compile(r"/api/files/[^/]+/move")
_READS = ("/api/resolve", "/api/lookup")


@dataclass
class Scratch:
    """A group of our own on `site`: project "Writes" / "sub-01" / "ses-01", and (once
    `with_acquisition` made it) an acquisition of the test's own. SDK objects; `*_path`
    are the model's paths."""

    site: Any
    fw: Any
    group: str
    project: Any
    subject: Any
    session: Any
    acq: Any = None

    def with_acquisition(self, label: str) -> Scratch:
        acq = self.session.add_acquisition(label=label)
        return Scratch(
            self.site, self.fw, self.group, self.project, self.subject, self.session, acq
        )

    @property
    def project_path(self) -> str:
        return f"{self.group}/Writes"

    @property
    def subject_path(self) -> str:
        return f"{self.project_path}/sub-01"

    @property
    def session_path(self) -> str:
        return f"{self.subject_path}/ses-01"

    @property
    def acq_path(self) -> str:
        return f"{self.session_path}/{self.acq.label}"

    def files(self, cid: str | None = None) -> dict[str, Any]:
        """The current files of a container (the acquisition by default), by name, as the
        SDK sees them."""
        return {f.name: f for f in self.fw.get(cid or self.acq.id).files}

    def data(self, name: str, cid: str | None = None) -> bytes:
        data: bytes = self.fw.download_file_from_container_as_data(cid or self.acq.id, name)
        return data

    def put(self, name: str, data: bytes, cid: str | None = None) -> Any:
        """Upload through the SDK (a file this model did not upload); its file record."""
        import flywheel

        self.fw.upload_file_to_container(cid or self.acq.id, flywheel.FileSpec(name, data))
        return self.files(cid)[name]


def errno_of(call: Callable[[], Any]) -> int:
    with pytest.raises(FwfsError) as info:
        call()
    return info.value.errno


def names(fs: FlywheelFS, path: str) -> set[str]:
    return {name for name, _attr in fs.readdir(path)}


def read_all(fs: FlywheelFS, fh: int, chunk: int = 1 << 16) -> bytes:
    out = bytearray()
    while data := fs.read(fh, len(out), chunk):
        out += data
    return bytes(out)


def close(fs: FlywheelFS, fh: int) -> None:
    """close(2) of the last handle, as the FUSE adapter sends it: flush, then release."""
    fs.flush(fh)
    fs.release(fh)


def write_file(fs: FlywheelFS, path: str, data: bytes) -> None:
    """create, write, close (flush then release), as `cp` does."""
    fh = fs.create(path).fh
    try:
        if data:
            fs.write(fh, 0, data)
        fs.flush(fh)
    finally:
        fs.release(fh)


def uploads(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The upload requests (`POST /api/<kind>/<id>/files`, any status) among log entries."""
    return [e for e in entries if e["method"] == "POST" and _UPLOAD.fullmatch(e["path"])]


def moves(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["method"] == "POST" and _MOVE.fullmatch(e["path"])]


def changes(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every request that could change the site: anything but GET, HEAD and the read-only
    POSTs /api/resolve and /api/lookup."""
    return [
        e
        for e in entries
        if e["method"] not in ("GET", "HEAD")
        and not (e["method"] == "POST" and e["path"] in _READS)
    ]

"""An open `flywheel://` file: one handle of the filesystem model."""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractBufferedFile  # type: ignore[import-untyped]

from fwfs.errors import AlreadyExists, NotFound
from fwfs.fs import FlywheelFS
from fwfs.remote.model import errors

if TYPE_CHECKING:
    from fwfs.remote.filesystem import FlywheelFileSystem

MODES = ("rb", "wb", "xb", "ab")


class FlywheelFile(AbstractBufferedFile):  # type: ignore[misc]
    """Reads are the model's ranged reads, with its blocks and readahead (so fsspec's own
    cache is off unless asked for). Writes go to the model's spool as fsspec's buffer
    fills, and are uploaded at close(), which raises if the upload fails, as close(2) on
    the mount does. The handle is opened at once, so a wrong path, a directory or a
    refused write fails the open, not a later read or close."""

    def __init__(self, fs: FlywheelFileSystem, path: str, mode: str = "rb", **kwargs: Any):
        if mode not in MODES:
            raise NotImplementedError(f"mode {mode!r} is not supported: one of {MODES}")
        model = fs.model
        at = "/" + path
        self._model = model
        self._fh: int | None = None
        with errors(path):
            if mode == "rb":
                self._fh = model.open(at, os.O_RDONLY).fh
                try:
                    # The size of the version just opened: an open handle's stands.
                    kwargs["size"] = model.getattr(at).size
                except BaseException:
                    self._release(quiet=True)
                    raise
                base = 0
            else:
                base = self._open_for_writing(model, at, mode)
        try:
            super().__init__(fs, path, mode, **kwargs)
        except BaseException:
            self._release(quiet=True)
            raise
        if mode != "rb":
            # Where the buffered bytes go; not None, so fsspec's flush does not start an
            # upload of its own (_initiate_upload): the handle is open.
            self.offset = base

    def _open_for_writing(self, model: FlywheelFS, at: str, mode: str) -> int:
        """Opens the handle; returns where writing starts."""
        if mode == "xb":
            try:
                model.lookup(at)
            except NotFound:
                pass
            else:
                raise AlreadyExists("exists")
        if mode == "ab":
            try:
                size = model.getattr(at).size
            except NotFound:
                size = None
            if size is not None:
                self._fh = model.open(at, os.O_WRONLY | os.O_APPEND).fh
                return size
        self._fh = model.create(at).fh
        return 0

    def _fetch_range(self, start: int, end: int) -> bytes:
        if self._fh is None:
            raise ValueError("I/O operation on closed file.")
        with errors(self.path):
            return self._model.read(self._fh, start, end - start)

    def _upload_chunk(self, final: bool = False) -> bool:
        if self._fh is None:
            raise ValueError("I/O operation on closed file.")
        with errors(self.path), self.buffer.getbuffer() as data:
            done = 0
            while done < len(data):
                done += self._model.write(self._fh, self.offset + done, data[done:])
            if final:
                try:
                    self._model.flush(self._fh)  # the upload
                except BaseException:
                    self._release(quiet=True)  # the upload's error is the one to raise
                    raise
                self._release()
        return True

    def _release(self, quiet: bool = False) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        if quiet:
            with contextlib.suppress(Exception):
                self._model.release(fh)
        else:
            self._model.release(fh)

    def close(self) -> None:
        if getattr(self, "closed", True):
            return
        try:
            super().close()
        finally:
            # After a read, or a close that failed before its upload was tried.
            self._release(quiet=True)

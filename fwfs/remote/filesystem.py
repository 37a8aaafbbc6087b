"""`FlywheelFileSystem`: fsspec's `flywheel://` over the filesystem model.

Where fsspec has a default built on `ls` and `info` (find, glob, walk, du, exists, isdir,
head, put_file, pipe_file, get_file), it is used as it is: those are s3fs's and gcsfs's
behaviours too. What is written here is what the model does better than the default:
listings and attributes from its kept listings, files opened on its handles, ranges read in
parallel, and no listing cache of fsspec's own (the model's expire with its TTL, and its
own uploads forget theirs at once).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem  # type: ignore[import-untyped]
from fsspec.spec import make_instance  # type: ignore[import-untyped]

from fwfs.errors import AlreadyExists, NotFound
from fwfs.fs import Attr, FlywheelFS
from fwfs.fs.xattrs import PREFIX as XATTR_PREFIX
from fwfs.options import DELETE_REASONS, parse_size
from fwfs.remote.files import FlywheelFile
from fwfs.remote.model import (
    PROTOCOL,
    Model,
    Options,
    Secret,
    errors,
    settings,
    shared_model,
    site_of,
)

# cat_ranges: ranges read at once. The model fetches a range's missing blocks in one
# request, so this is how many requests are in flight for scattered small reads.
RANGE_THREADS = 8
# cp_file: the reads a copy makes; the model reads ahead of them.
COPY_CHUNK = 8 << 20
# What makes a path a pattern for fsspec's expand_path (its has_magic).
_MAGIC = re.compile(r"[*?\[]")
# info(): the extended attributes of a file shown as its details (s3fs shows its ETag).
_DETAILS = (
    ("id", "file_id"),
    ("version", "version"),
    ("hash", "hash"),
    ("mimetype", "mimetype"),
    ("archive_file_id", "archive_file_id"),
    ("member", "member"),
)
__all__ = ["PROTOCOL", "RANGE_THREADS", "FlywheelFileSystem"]


class FlywheelFileSystem(AbstractFileSystem):  # type: ignore[misc]
    """`flywheel://group/project/…`: Flywheel through fwfs's filesystem model.

    Storage options: ``api_key`` (else ``FWFS_API_KEY``, else the Flywheel CLI's
    user.json); ``site`` (the site's API URL, checked against the key's: a pickled
    instance carries it, so a worker whose key is for another site fails rather than reads
    elsewhere); ``verify`` (a CA bundle's path, or False; default: the environment's
    trust, as for the mount); ``read_only``; ``allow_delete`` and ``delete_reason`` (rm,
    as the mount's ``--allow-delete`` and ``--delete-reason``, which a site with an audit
    trail needs); ``disk_cache`` (bytes, or "10G") with ``cache_dir`` (default: the
    mounts' disk cache of the site); ``spool_dir`` (where bytes being uploaded are staged;
    default: the temporary directory, ``TMPDIR``).
    """

    protocol = (PROTOCOL,)
    root_marker = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        site: str | None = None,
        verify: bool | str | None = None,
        read_only: bool = False,
        allow_delete: bool = False,
        delete_reason: str | None = None,
        disk_cache: int | str = 0,
        cache_dir: str | os.PathLike[str] | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._key = Secret(api_key.strip()) if api_key and api_key.strip() else None
        size = parse_size(disk_cache) if isinstance(disk_cache, str) else int(disk_cache)
        if size < 0:
            raise ValueError("disk_cache must not be negative")
        if delete_reason is not None and delete_reason not in DELETE_REASONS:
            raise ValueError(f"delete_reason must be one of: {', '.join(DELETE_REASONS)}")
        self._options = Options(
            site=site.rstrip("/") if site else None,
            verify=verify,
            read_only=read_only,
            allow_delete=allow_delete,
            delete_reason=delete_reason,
            disk_cache=size,
            cache_dir=Path(cache_dir).expanduser().absolute() if cache_dir else None,
            spool_dir=Path(spool_dir).expanduser().absolute() if spool_dir else None,
        )
        self._site = self._options.site
        if self._key is not None:
            # The key's own site: checked against `site`, and what a pickle carries.
            self._site = site_of(self._key.value)
            self._options.check_site(self._site)
        self._lock = threading.Lock()
        self._model: Model | None = None

    # fsspec's metaclass stores the constructor's keywords here after __init__, and reads
    # them to pickle, to tokenize for Dask and to write to_json: the key is left out, the
    # site its key named is put in (a worker's own key must be of that site).
    @property
    def storage_options(self) -> dict[str, Any]:
        options = dict(self._given)
        if self._site is not None:
            options["site"] = self._site
        return options

    @storage_options.setter
    def storage_options(self, value: dict[str, Any]) -> None:
        self._given = {k: v for k, v in value.items() if k not in ("api_key", "site")}

    def __reduce__(self) -> tuple[Any, ...]:
        return make_instance, (type(self), (), self.storage_options)

    def __repr__(self) -> str:
        return f"<FlywheelFileSystem {self._site or '(the site of the key found)'}>"

    @property
    def model(self) -> FlywheelFS:
        """The filesystem model, built (and the key checked) on first use: an unpickled
        instance finds its key in its own process."""
        with self._lock:
            if self._model is None:
                self._model = shared_model(settings(self._options, self._key))
            return self._model.fs

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(path)
        for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}::"):
            if text.startswith(prefix):
                text = text[len(prefix) :]
        return text.strip("/")

    # ---- metadata ------------------------------------------------------------------------

    @staticmethod
    def _entry(path: str, attr: Attr) -> dict[str, Any]:
        return {
            "name": path,
            "size": attr.size,
            "type": "directory" if attr.is_dir else "file",
            "mtime": attr.mtime,
            "created": attr.ctime,
        }

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        model = self.model
        with errors(path):
            if not model.getattr("/" + path).is_dir:
                entries = [self.info(path)]
            else:
                base = f"{path}/" if path else ""
                entries = [
                    self._entry(base + name, attr)
                    for name, attr in model.readdir("/" + path)
                    if name not in (".", "..")
                ]
        entries.sort(key=lambda e: str(e["name"]))
        return entries if detail else [e["name"] for e in entries]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        model = self.model
        with errors(path):
            out = self._entry(path, model.getattr("/" + path))
            if out["type"] == "file":
                for field, name in _DETAILS:
                    with contextlib.suppress(NotFound):
                        value = model.getxattr("/" + path, XATTR_PREFIX + field).decode()
                        out[name] = int(value) if name == "version" else value
        return out

    def ukey(self, path: str) -> str:
        """What names the file's bytes: its hash where the site keeps one."""
        info = self.info(path)
        if info.get("hash"):
            return str(info["hash"])
        parts = (info.get("file_id"), info.get("version"), info.get("member"), info["size"])
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def checksum(self, path: str) -> int:
        return int(hashlib.sha256(self.ukey(path).encode()).hexdigest()[:32], 16)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

    def created(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["created"], tz=timezone.utc)

    def invalidate_cache(self, path: str | None = None) -> None:
        """No listings are kept here (see the module's docstring)."""

    # ---- reading -------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> FlywheelFile:
        if not autocommit:
            raise NotImplementedError(f"{PROTOCOL}:// has no transactions: a close uploads")
        return FlywheelFile(
            self,
            self._strip_protocol(path),
            mode,
            block_size=block_size,
            cache_options=cache_options,
            # The model keeps blocks and reads ahead: a second cache would copy them.
            cache_type=kwargs.pop("cache_type", "none"),
            **kwargs,
        )

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        with self.open(path, "rb") as f:
            size = f.size
            first = 0 if start is None else (max(size + start, 0) if start < 0 else start)
            last = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
            if last <= first:
                return b""
            f.seek(first)
            data: bytes = f.read(last - first)
            return data

    def cat_ranges(
        self,
        paths: list[str],
        starts: int | Sequence[int | None] | None,
        ends: int | Sequence[int | None] | None,
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        """The ranges read in parallel: a small range costs a round trip, and the model is
        thread-safe. ``on_error="return"`` puts a range's exception in its place."""
        if max_gap is not None:
            raise NotImplementedError("max_gap is not supported")
        count = len(paths)
        firsts = list(starts) if isinstance(starts, Sequence) else [starts] * count
        lasts = list(ends) if isinstance(ends, Sequence) else [ends] * count
        if len(firsts) != count or len(lasts) != count:
            raise ValueError("paths, starts and ends must have the same length")

        def one(i: int) -> Any:
            try:
                return self.cat_file(paths[i], firsts[i], lasts[i])
            except Exception as err:
                if on_error == "raise":
                    raise
                return err

        with ThreadPoolExecutor(min(RANGE_THREADS, max(count, 1))) as pool:
            return list(pool.map(one, range(count)))

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """A file copied is read and uploaded through this process (the site copies no
        files); a directory copied (fsspec's recursive copy) is a container made."""
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        with self.open(path1, "rb") as source, self.open(path2, "wb") as target:
            while data := source.read(COPY_CHUNK):
                target.write(data)

    # ---- the namespace ---------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """A container: a project in a group, a subject in a project, and so on."""
        path = self._strip_protocol(path)
        if create_parents:
            self.makedirs(path, exist_ok=False)
            return
        with errors(path):
            self.model.mkdir("/" + path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        parts = self._strip_protocol(path).split("/")
        for depth in range(1, len(parts) + 1):
            here = "/".join(parts[:depth])
            if depth < len(parts) and self.isdir(here):
                continue
            with errors(here):
                try:
                    self.model.mkdir("/" + here)
                except AlreadyExists:
                    if depth == len(parts) and not exist_ok:
                        raise

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        with errors(path):
            self.model.rmdir("/" + path)

    def rm_file(self, path: str) -> None:
        """Needs ``allow_delete=True``, as the mount needs ``--allow-delete``."""
        path = self._strip_protocol(path)
        with errors(path):
            self.model.unlink("/" + path)

    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """One file or container is moved or renamed by the site, no bytes copied, as `mv`
        on the mount (into a directory that exists, under its own name); globs and lists
        are fsspec's copy then rm."""
        if not (isinstance(path1, str) and isinstance(path2, str)) or _MAGIC.search(path1):
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        source, target = self._strip_protocol(path1), self._strip_protocol(path2)
        if target != source and self.isdir(target):
            target = f"{target}/{source.rsplit('/', 1)[-1]}"
        if target == source:
            return
        with errors(source):
            self.model.rename("/" + source, "/" + target)

    def _rm(self, path: str) -> None:
        if self.isdir(path):
            self.rmdir(path)
        else:
            self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        for p in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            self._rm(p)

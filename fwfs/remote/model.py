"""What `flywheel://` stands on: the credentials, one filesystem model per process and key,
and the model's errors as Python's own exceptions.

The model is built as `fwfs prefetch` builds its in-process one: a `ClientConfig` from the
key, the key checked by `fwfs.inprocess.sign_in` as a mount checks it (which also says who
the user is, for the write checks, and whether deletes need a reason), a `MountConfig`, a
`FlywheelClient` and a `FlywheelFS`. Nothing of the FUSE adapter, so no mfusepy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fwfs.client import FlywheelClient
from fwfs.config import (
    ClientConfig,
    MountConfig,
    TrustConfig,
    WalkAheadConfig,
    load_api_key,
    parse_api_key,
    tls_verify_from_env,
    user_json_path,
)
from fwfs.errors import FwfsError, InvalidArgument, NotFound
from fwfs.fs import FlywheelFS
from fwfs.inprocess import default_cache_dir, sign_in
from fwfs.uploads import RetryPolicy

PROTOCOL = "flywheel"
# Seconds the key check may take, retries included (wiring._CONNECT_BUDGET for the mount).


# ---- errors -----------------------------------------------------------------------------------


def as_oserror(err: FwfsError, path: str) -> OSError:
    """The errno table's errno (errors.py) as Python's own exception for it: OSError picks
    FileNotFoundError, PermissionError, IsADirectoryError… from the errno. Names the path;
    FwfsError messages never hold the key."""
    return OSError(err.errno, str(err) or os.strerror(err.errno), f"{PROTOCOL}://{path}")


@contextlib.contextmanager
def errors(path: str) -> Iterator[None]:
    try:
        yield
    except FwfsError as err:
        raise as_oserror(err, path) from None


def denied(why: str) -> PermissionError:
    return PermissionError(errno.EACCES, why)


class Secret:
    """A key kept out of reprs and pickles."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("an API key is not pickled")


def site_of(key: str) -> str:
    """The API URL a key names (the key is `host[:port]:secret`)."""
    try:
        return parse_api_key(key)[0]
    except InvalidArgument as err:
        raise denied(f"the Flywheel API key cannot be used: {err}") from None


# ---- the settings of a model ------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The storage options, as FlywheelFileSystem took them (no key: see `Secret`)."""

    site: str | None = None
    verify: bool | str | None = None
    read_only: bool = False
    allow_delete: bool = False
    delete_reason: str | None = None
    disk_cache: int = 0
    cache_dir: Path | None = None
    spool_dir: Path | None = None

    def check_site(self, base_url: str) -> None:
        if self.site is not None and _where(self.site) != _where(base_url):
            raise denied(
                f"this filesystem is for {self.site}, and the API key found is for "
                f"{base_url}: give a key of {self.site}"
            )


def _where(url: str) -> tuple[str | None, int]:
    """A site's host and port: `site="site.example.org"` is the key's
    `https://site.example.org:443/api`."""
    split = urlsplit(url if "://" in url else f"https://{url}")
    return split.hostname, split.port or (80 if split.scheme == "http" else 443)


@dataclass(frozen=True)
class Settings:
    """What decides which model serves an instance."""

    client: ClientConfig
    options: Options
    cache_dir: Path | None

    def key(self) -> tuple[Any, ...]:
        secret = hashlib.sha256(self.client.authorization.encode()).hexdigest()
        return (os.getpid(), self.client.base_url, secret, repr(self.client.verify), self.options)


def settings(options: Options, given: Secret | None) -> Settings:
    """The client's settings from the given key, else the environment's (read now: a
    worker's own), and the disk cache's directory."""
    if given is not None:
        key = given.value
    else:
        try:
            key, _ = load_api_key(None, os.environ, Path.home())
        except NotFound:
            where = user_json_path(os.environ, Path.home())
            raise denied(
                f"no Flywheel API key for {PROTOCOL}://: give storage_options "
                "{'api_key': …}, set FWFS_API_KEY, or run `fw login <key>` (which writes "
                f"{where})"
            ) from None
        except InvalidArgument as err:
            raise denied(str(err)) from None
        options.check_site(site_of(key))
    verify: bool | str | TrustConfig
    try:
        verify = tls_verify_from_env(os.environ) if options.verify is None else options.verify
        client = ClientConfig.from_api_key(key, verify=verify)
    except FwfsError as err:
        raise as_oserror(err, "") from None
    cache_dir = options.cache_dir
    if options.disk_cache and cache_dir is None:
        # The mounts' disk cache of this site: a block is named by its file version, so it
        # is the same bytes for every reader of the site.
        cache_dir = default_cache_dir(client.base_url)
    return Settings(client, options, cache_dir)


# ---- the model --------------------------------------------------------------------------------


class Model:
    """A FlywheelFS with its client and a spool of its own, closed when the last
    filesystem instance using it is gone, or at exit (uploads running finish first)."""

    def __init__(self, settings: Settings) -> None:
        options = settings.options
        # The key is checked first, as a mount checks it (within 10 s, not the minute a
        # read may retry for: a dead site fails the first call soon); the site's /config
        # says whether its deletes need a reason.
        facts = sign_in(settings.client)
        self.client = FlywheelClient(settings.client)
        spool: Path | None = None
        try:
            if not options.read_only:
                # One spool per process: a spool is held by one process (two would
                # recover each other's uploads), and Dask runs several on one machine.
                # put_file returns once its upload is done or has failed, so nothing is
                # left in it for a later process to finish.
                base = options.spool_dir or Path(tempfile.gettempdir())
                base.mkdir(parents=True, exist_ok=True)
                spool = Path(tempfile.mkdtemp(prefix="fwfs-fsspec-spool-", dir=base))
            config = MountConfig(
                read_only=options.read_only,
                uid=os.getuid(),
                gid=os.getgid(),
                spool_dir=spool,
                allow_delete=options.allow_delete,
                delete_reason=options.delete_reason,
                audit_trail=facts.audit_trail,
                disk_cache=options.disk_cache,
                cache_dir=settings.cache_dir,
                # Programs, not shells: Dask hands a directory's files to many workers,
                # so one process opening them in listing order says nothing of the next.
                walk_ahead=WalkAheadConfig(files=0),
            )
            self.fs = FlywheelFS(
                self.client,
                config,
                facts.user_id,
                upload_retry=RetryPolicy.from_config(settings.client),
            )
        except BaseException:
            self.client.close()
            if spool is not None:
                shutil.rmtree(spool, ignore_errors=True)
            raise
        weakref.finalize(self, _close, self.fs, self.client, spool)


def _close(fs: FlywheelFS, client: FlywheelClient, spool: Path | None) -> None:
    fs.close()
    client.close()
    if spool is not None:
        shutil.rmtree(spool, ignore_errors=True)


_models: weakref.WeakValueDictionary[tuple[Any, ...], Model] = weakref.WeakValueDictionary()
_models_lock = threading.Lock()


def shared_model(settings: Settings) -> Model:
    """One model per process, site, key and options: fsspec makes one filesystem instance
    per thread, and they share one client, one cache and one spool."""
    key = settings.key()
    with _models_lock:
        model = _models.get(key)
        if model is None:
            try:
                model = Model(settings)
            except FwfsError as err:
                site = settings.client.base_url
                if err.errno == errno.EACCES:
                    raise denied(f"{site} refused the API key: {err}") from None
                why = f"cannot use the site at {site}: {err}"
                raise OSError(err.errno, why, f"{PROTOCOL}://") from None
            _models[key] = model
        return model

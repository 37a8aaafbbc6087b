"""Typed configuration, built once by the CLI and passed down.

Only the functions here that take an ``environ`` mapping look at the environment, and
they are handed it by the CLI; nothing reads ``os.environ`` behind the caller's back.

The defaults of the fields a person can set, or might want to know, come from the one
option table (fwfs/options.py), which also makes the flags and docs/CONFIGURATION.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fwfs import __version__
from fwfs.errors import InvalidArgument, NotFound
from fwfs.options import DELETE_REASONS, default

# The SDK's rule: keys whose secret part is exactly this long are OAuth-style tokens.
_BEARER_KEY_LENGTH = 57
_INSECURE_MARKER = "__force_insecure"
_KEY_FORM = "host[:port]:secret, or host:port:__force_insecure:secret for plain HTTP"


def _is_token(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) <= 126 for c in text)


def _check_secret(secret: str) -> None:
    # A space, control or non-ASCII character would make requests or http.client raise
    # with the whole header value (the key) inside the exception, so refuse it up front.
    if not _is_token(secret):
        raise InvalidArgument("API key secret is empty or contains spaces or control characters")


def _derive_prefix(secret: str) -> str:
    return "Bearer" if len(secret) == _BEARER_KEY_LENGTH else "scitran-user"


@dataclass(frozen=True)
class TrustConfig:
    """The CA certificates that verify a site's TLS certificate.

    ``ca_file``: a bundle (file, or OpenSSL hashed directory) the user named
    (FW_SSL_CERT_FILE, REQUESTS_CA_BUNDLE); when set it is the only trust, as those
    variables mean elsewhere. Otherwise the OS trust store (``use_os_store``) and certifi's
    bundle (``use_certifi``) are both trusted, so a company or hospital CA installed in
    the system works as it does for the SDK, curl and browsers. ``os_ca_file`` /
    ``os_ca_dir`` say where the OS store is when the environment moved it (SSL_CERT_FILE,
    SSL_CERT_DIR); None means OpenSSL's own paths (or, on macOS and Windows, the
    platform's verifier).
    """

    ca_file: str | None = default("TrustConfig.ca_file")
    # The variable that named ca_file, so an error can say what to unset.
    ca_file_source: str | None = None
    use_os_store: bool = True
    use_certifi: bool = True
    os_ca_file: str | None = default("TrustConfig.os_ca_file")
    os_ca_dir: str | None = default("TrustConfig.os_ca_dir")

    def describe(self) -> str:
        """The trust sources, for a TLS error message."""
        if self.ca_file is not None:
            named = f" named by {self.ca_file_source}" if self.ca_file_source else ""
            return f"only the CA bundle {self.ca_file}{named}"
        sources = []
        if self.use_os_store:
            where = [p for p in (self.os_ca_file, self.os_ca_dir) if p]
            store = "the OS trust store"
            sources.append(f"{store} ({', '.join(where)})" if where else store)
        if self.use_certifi:
            sources.append("certifi's bundle")
        return " and ".join(sources) or "no CA at all"


@dataclass(frozen=True)
class ClientConfig:
    """Settings of the HTTP client. See ``FlywheelClient`` for how the timeouts combine.

    ``api_key`` is only the secret part of the key and is kept out of ``repr``.
    ``auth_prefix`` of None means the SDK rule: Bearer for 57-character keys.
    ``total_timeout`` bounds retrying: no retry starts after that many seconds since the
    call began, so a dead site fails a call in about a minute, not the SDK's several.
    ``verify``: the TLS trust; True is ``TrustConfig()`` (OS store and certifi), a string
    is a CA bundle trusted alone, False turns verification off.
    """

    base_url: str
    api_key: str = field(repr=False)
    auth_prefix: str | None = None
    verify: bool | str | TrustConfig = True
    connect_timeout: float = default("ClientConfig.connect_timeout")
    read_timeout: float = default("ClientConfig.read_timeout")
    total_timeout: float = default("ClientConfig.total_timeout")
    retries: int = default("ClientConfig.retries")
    backoff_factor: float = default("ClientConfig.backoff_factor")
    backoff_max: float = default("ClientConfig.backoff_max")
    upload_attempts: int = default("ClientConfig.upload_attempts")
    pool_size: int = default("ClientConfig.pool_size")
    user_agent: str = f"fwfs/{__version__}"
    # Lets requests honour HTTP(S)_PROXY, NO_PROXY, REQUESTS_CA_BUNDLE and ~/.netrc.
    trust_env: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")) or "?" in self.base_url:
            raise InvalidArgument("base_url must be an http(s) URL without a query string")
        _check_secret(self.api_key)
        if self.auth_prefix is not None and not _is_token(self.auth_prefix):
            raise InvalidArgument("auth_prefix must be a single token such as Bearer")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidArgument(f"{name} must be positive")
        if self.retries < 0 or self.backoff_factor < 0 or self.backoff_max < 0:
            raise InvalidArgument("retries and backoff settings must not be negative")
        if self.pool_size < 1:
            raise InvalidArgument("pool_size must be at least 1")
        if self.upload_attempts < 1:
            raise InvalidArgument("upload_attempts must be at least 1")

    @classmethod
    def from_api_key(cls, api_key: str, **overrides: Any) -> ClientConfig:
        """Build from a full Flywheel key (``host:port:secret``) plus any field overrides."""
        base_url, header = parse_api_key(api_key)
        prefix, _, secret = header.partition(" ")
        return cls(base_url=base_url, api_key=secret, auth_prefix=prefix, **overrides)

    @property
    def trust(self) -> TrustConfig | None:
        """``verify`` as a TrustConfig; None when verification is off."""
        if isinstance(self.verify, TrustConfig):
            return self.verify
        if isinstance(self.verify, str):
            return TrustConfig(ca_file=self.verify)
        return TrustConfig() if self.verify else None

    @property
    def authorization(self) -> str:
        """The ``Authorization`` header value. Secret: never log it."""
        prefix = self.auth_prefix or _derive_prefix(self.api_key)
        return f"{prefix} {self.api_key}"


def parse_api_key(api_key: str) -> tuple[str, str]:
    """Split a Flywheel API key into (base URL ending in /api, Authorization header value).

    Follows the SDK's ``config_from_api_key`` exactly for every key it handles
    correctly. Keys the SDK turns into nonsense URLs (a scheme in the key, or
    ``__force_insecure`` without a port) are rejected here instead. Messages never
    quote any part of the key: a user who pasted only the secret would see it echoed.
    """
    parts = api_key.strip().split(":")
    if len(parts) < 2:
        raise InvalidArgument(f"API key has no host part; expected {_KEY_FORM}")
    host = parts[0]
    if len(parts) == 2:
        port, secret = "443", parts[1]
    else:
        port, secret = parts[1], parts[-1]
    if port.startswith("//"):
        raise InvalidArgument(f"API key must not contain a URL scheme; expected {_KEY_FORM}")
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise InvalidArgument(f"API key port is not a number from 1 to 65535; expected {_KEY_FORM}")
    if not host or any(c in host for c in "/?#@ ") or host != host.strip():
        raise InvalidArgument(f"API key host is empty or malformed; expected {_KEY_FORM}")
    _check_secret(secret)
    scheme = "http" if _INSECURE_MARKER in parts else "https"
    return f"{scheme}://{host}:{port}/api", f"{_derive_prefix(secret)} {secret}"


def user_json_path(environ: Mapping[str, str], home: Path) -> Path:
    """Where ``fw login`` stores the key: it honours FLYWHEEL_USER_HOME, else ``~``."""
    root = environ.get("FLYWHEEL_USER_HOME") or str(home)
    return Path(root) / ".config" / "flywheel" / "user.json"


def _key_from_user_json(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        # from None: the decode error keeps the whole document, key included.
        raise InvalidArgument(f"{path} is not valid JSON; run `fw login` again") from None
    key = data.get("key") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key.strip():
        raise InvalidArgument(f"{path} has no 'key' field; run `fw login` again")
    return key.strip()


def load_api_key(cli_key: str | None, environ: Mapping[str, str], home: Path) -> tuple[str, str]:
    """Find the API key; return (key, where it came from) for a log line without the key.

    Order: ``--api-key``, ``$FWFS_API_KEY``, then the Flywheel CLI's user.json.
    """
    if cli_key is not None:
        if not cli_key.strip():
            raise InvalidArgument("--api-key was given but is empty")
        return cli_key.strip(), "--api-key"
    env_key = environ.get("FWFS_API_KEY", "").strip()
    if env_key:
        return env_key, "FWFS_API_KEY"
    path = user_json_path(environ, home)
    key = _key_from_user_json(path)
    if key is None:
        raise NotFound(
            "no Flywheel API key: pass --api-key, set FWFS_API_KEY, "
            f"or run `fw login <key>` (which writes {path})"
        )
    return key, str(path)


def tls_verify_from_env(environ: Mapping[str, str]) -> TrustConfig:
    """The TLS trust the environment asks for.

    FW_SSL_CERT_FILE (the SDK's variable), else REQUESTS_CA_BUNDLE, names the only CA
    bundle to trust. Otherwise: the OS trust store, at SSL_CERT_FILE / SSL_CERT_DIR when
    set (OpenSSL's own variables), plus certifi's bundle.
    """
    for name in ("FW_SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        path = environ.get(name)
        if path:
            if not Path(path).exists():
                raise NotFound(f"{name} names {path}, which does not exist")
            return TrustConfig(ca_file=path, ca_file_source=name)
    return TrustConfig(
        os_ca_file=environ.get("SSL_CERT_FILE") or None,
        os_ca_dir=environ.get("SSL_CERT_DIR") or None,
    )


@dataclass(frozen=True)
class WalkAheadConfig:
    """Fetching the next files of a directory whose files a program reads in listing
    order (`fwfs.fs.walkahead`). ``files``: how many files fetched ahead and not yet
    opened, over all the walks going on (0 turns it off). ``budget``: how many bytes, the
    same way (at most an eighth of the cache). ``file_bytes``: files up to this size are
    fetched whole, of larger ones at most this much. ``threads``: parallel fetches.
    ``idle``: seconds after its last in-order open that a walk still has the directories
    it lists fetched ahead."""

    files: int = default("WalkAheadConfig.files")
    budget: int = default("WalkAheadConfig.budget")
    file_bytes: int = default("WalkAheadConfig.file_bytes")
    threads: int = default("WalkAheadConfig.threads")
    idle: float = default("WalkAheadConfig.idle")

    def __post_init__(self) -> None:
        if self.files < 0 or self.budget < 0 or self.file_bytes < 0 or self.idle < 0:
            raise InvalidArgument("walk-ahead settings must not be negative")
        if self.threads < 1:
            raise InvalidArgument("walk-ahead threads must be at least 1")


@dataclass(frozen=True)
class MountConfig:
    """Settings of the filesystem model, independent of FUSE and of HTTP.

    ``metadata_ttl``: how long a directory listing (names, sizes, versions) is trusted; the
    staleness bound of docs/SEMANTICS.md. ``negative_ttl``: how long an `<id:…>` lookup that
    missed is remembered. ``cache_size``: bytes of file blocks kept in memory.
    ``disk_cache``: bytes of file blocks kept on disk in ``cache_dir`` (fwfs/diskcache.py).
    """

    metadata_ttl: float = default("MountConfig.metadata_ttl")
    negative_ttl: float = default("MountConfig.negative_ttl")
    cache_size: int = default("MountConfig.cache_size")
    # Bytes of file blocks kept on disk under cache_dir, across mounts (0: none).
    disk_cache: int = default("MountConfig.disk_cache")
    cache_dir: Path | None = None
    # A model built without saying is read-only; `fwfs mount` always says (--read-only).
    read_only: bool = True
    uid: int = 0
    gid: int = 0
    block_size: int = default("MountConfig.block_size")
    max_readahead: int = default("MountConfig.max_readahead")
    read_threads: int = default("MountConfig.read_threads")
    # Zip archives as `<name>.d` directories (off with --no-archives); listed (not only
    # reachable) when list_archives.
    archives: bool = True
    list_archives: bool = default("MountConfig.list_archives")
    # `<project>.bids` views (fwfs/fs/bidsview.py): listed in their group (not only
    # reachable) when list_bids; their sourcedata/ shown when bids_sourcedata.
    list_bids: bool = default("MountConfig.list_bids")
    bids_sourcedata: bool = default("MountConfig.bids_sourcedata")
    # Writes (when not read_only): where staged bytes wait for upload, and whether unlink
    # and rmdir may delete on the site.
    spool_dir: Path | None = None
    allow_delete: bool = default("MountConfig.allow_delete")
    # At mount, upload again what earlier runs left in the spool's recovery/ folder.
    retry_recovery: bool = default("MountConfig.retry_recovery")
    # Sites with an audit trail refuse a delete without a reason (`delete_reason`): the
    # reason the user gave (--delete-reason), and whether the site said it needs one.
    delete_reason: str | None = default("MountConfig.delete_reason")
    audit_trail: bool = False
    walk_ahead: WalkAheadConfig = field(default_factory=WalkAheadConfig)

    @property
    def kernel_ttl(self) -> float:
        """How long the kernel may cache entries and attributes fwfs gave it.

        The kernel's cache starts when fwfs answers, possibly from a listing that is
        already nearly `listing_ttl` old; the two add up to at most `metadata_ttl`, the
        documented bound. One second keeps the kernel from asking for every `stat` of a
        `ls -l`, and those questions cost no request anyway.
        """
        return min(1.0, self.metadata_ttl / 2)

    @property
    def listing_ttl(self) -> float:
        return self.metadata_ttl - self.kernel_ttl

    def __post_init__(self) -> None:
        if self.metadata_ttl < 0 or self.negative_ttl < 0:
            raise InvalidArgument("TTLs must not be negative")
        if self.cache_size < 0:
            raise InvalidArgument("cache size must not be negative")
        if self.disk_cache < 0:
            raise InvalidArgument("disk cache size must not be negative")
        if self.disk_cache and self.cache_dir is None:
            raise InvalidArgument("a disk cache needs a cache directory")
        if self.read_threads < 1:
            raise InvalidArgument("read_threads must be at least 1")
        if self.delete_reason is not None and self.delete_reason not in DELETE_REASONS:
            raise InvalidArgument(f"delete reason must be one of: {', '.join(DELETE_REASONS)}")

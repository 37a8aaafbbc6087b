"""Start the sandbox site: open (or create) the data directory, seed it, listen, announce."""

from __future__ import annotations

import json
import logging
import os
import secrets
import ssl
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fwfs.sandbox.access import PROJECTS_KEY
from fwfs.sandbox.api import SiteApi, SiteOptions
from fwfs.sandbox.fidelity import Fidelity
from fwfs.sandbox.files import FileApi
from fwfs.sandbox.httpd import AccessLog, Router, SandboxHTTPServer
from fwfs.sandbox.link import LinkProcess, LinkSpec
from fwfs.sandbox.names import ADMIN_USER, GROUP, MEMBER_USER, PROJECT, READER_USER
from fwfs.sandbox.storage import Storage
from fwfs.sandbox.store import Store, now_iso
from fwfs.sandbox.uploads import UploadApi

log = logging.getLogger("fwfs.sandbox")


@dataclass(frozen=True)
class ServeOptions:
    data: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    demo: bool = False
    ready_file: Path | None = None
    access_log: Path | None = None
    range_quirk: bool = False
    signed_url: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    big_file_mb: int = 0
    scale: int = 0
    # Real-server behaviours (fidelity.py); None: the default, or --strict's value.
    strict: bool = False
    trim_resolve: bool = False
    trim_list_info: bool = False
    gate_subjects: bool = False
    strict_permissions: bool = False
    redirect_downloads: bool = False
    redirect_ignores_range: bool = False
    default_page_limit: int | None = None
    max_limit: int | None = None
    analysis_io_split: bool = False
    audit_trail: bool = False
    info_delay: float | None = None
    refuse_encoded_slash: bool = False
    old_core: bool = False
    private_ca: bool = False
    signed_url_ttl: float = 60.0
    # The emulated network link (link.py): on when either is set.
    rtt_ms: float = 0.0
    bandwidth_mbit: float | None = None

    def fidelity(self) -> Fidelity:
        given = {f.name: getattr(self, f.name) for f in fields(Fidelity)}
        explicit = dict(given)
        given = {k: v for k, v in given.items() if v is not None}
        fid = Fidelity(**given)
        return fid.strict(explicit) if self.strict else fid

    @classmethod
    def from_args(cls, args: Any, demo: bool) -> ServeOptions:
        """From the parsed `fwfs serve`/`fwfs demo` arguments (same names as the fields)."""
        names = [f for f in cls.__dataclass_fields__ if f != "demo"]
        # A behaviour with no flag of its own keeps its default.
        given: dict[str, Any] = {n: getattr(args, n) for n in names if hasattr(args, n)}
        return cls(demo=demo, **given)


class Sandbox:
    """A running site. `start()` returns once it listens; `stop()` closes it."""

    def __init__(self, opts: ServeOptions) -> None:
        self.opts = opts
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if opts.data is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fwfs-sandbox-")
            data = Path(self._tmp.name)
        else:
            data = opts.data
            data.mkdir(parents=True, exist_ok=True)
        self.store = Store(data)
        self._init_site()
        self.fidelity = fid = opts.fidelity()
        site_options = SiteOptions(opts.range_quirk, opts.signed_url, fidelity=fid)
        self.site = SiteApi(self.store, site_options)
        self.uploads = UploadApi(self.site)
        self.storage: Storage | None = None
        if fid.redirect_downloads or fid.redirect_ignores_range:
            self.storage = Storage(self.store, fid.signed_url_ttl, fid.redirect_ignores_range)
        router = Router()
        # File routes first: /api/files/{id} would otherwise match /api/{kind}/{id}.
        redirect = self.storage.signed_url if self.storage is not None else None
        FileApi(self.site, redirect).register(router)
        self.uploads.register(router)
        self.site.register(router)
        tls = None
        self.ca_cert: Path | None = None
        if opts.tls_cert is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(str(opts.tls_cert), str(opts.tls_key or opts.tls_cert))
        elif fid.private_ca:
            from fwfs.sandbox.tlsca import mint

            tls, self.ca_cert = mint(self.store.data_dir / "tls")
        self.access_log = AccessLog(opts.access_log)
        self.link_spec = LinkSpec(opts.rtt_ms, opts.bandwidth_mbit)
        # Behind a link the listeners are private (loopback, any port): the link's ports
        # are the site's public ones, so no announced URL bypasses it.
        linked = self.link_spec.enabled
        bind = ("127.0.0.1", 0) if linked else (opts.host, opts.port)
        self.httpd = SandboxHTTPServer(bind, router, self.site.authenticate, self.access_log, tls)
        self.storage_httpd: SandboxHTTPServer | None = None
        if self.storage is not None:
            storage_router = Router()
            self.storage.register(storage_router)
            self.storage_httpd = SandboxHTTPServer(
                (bind[0], 0),
                storage_router,
                self.site.authenticate,
                self.access_log,
                tls,
                listener="storage",
            )
        ports = [s.server_address[1] for s in self._servers()]
        self.link: LinkProcess | None = None
        if linked:
            publics = [opts.port] + [0] * (len(ports) - 1)
            forwards = [(pub, "127.0.0.1", port) for pub, port in zip(publics, ports, strict=True)]
            try:
                self.link = LinkProcess(self.link_spec, opts.host, forwards)
            except Exception:
                self._close_servers()
                raise
            ports = self.link.ports
        self.port = ports[0]
        scheme = "https" if tls else "http"
        host = opts.host if opts.host not in ("0.0.0.0", "::") else "127.0.0.1"
        self.url = f"{scheme}://{host}:{self.port}"
        self.site.options.base_url = self.url
        self.storage_url: str | None = None
        if self.storage is not None:
            self.storage_url = f"{scheme}://{host}:{ports[1]}"
            self.storage.base_url = self.storage_url
        self._threads: list[threading.Thread] = []

    def _init_site(self) -> None:
        store = self.store
        if store.meta_get("created") is None:
            store.meta_set("created", now_iso())
            self._add_user("admin_key", ADMIN_USER, True, "Ada", "Lovelace", site_admin=True)
            self._add_user("reader_key", READER_USER, False, "Rosalind", "Franklin")
        # Imported here: seeding needs the sandbox extra (pydicom, nibabel), serving does not.
        if self.opts.demo and store.meta_get("demo") is None:
            from fwfs.sandbox.seed import seed_demo

            seed_demo(store)
            store.meta_set("demo", now_iso())
        if self.opts.big_file_mb and store.meta_get("big_file_mb") != str(self.opts.big_file_mb):
            from fwfs.sandbox.seed import add_big_file

            add_big_file(store, self.opts.big_file_mb)
            store.meta_set("big_file_mb", str(self.opts.big_file_mb))
        if store.meta_get("member_key") is None:
            self._add_project_member()
        if self.opts.scale and store.meta_get(f"scale_{self.opts.scale}") is None:
            from fwfs.sandbox.seed import add_scale_project

            add_scale_project(store, self.opts.scale)
            store.meta_set(f"scale_{self.opts.scale}", now_iso())

    def _add_project_member(self) -> None:
        """Grace: read-write member of the demo's Anxiety Study only, not of its group
        (the project-only member of audit D3). On a site without the demo, of nothing."""
        projects = [p.id for p in self.store.children(GROUP, "project") if p.label == PROJECT]
        extra = {PROJECTS_KEY: projects[:1]}
        self._add_user("member_key", MEMBER_USER, True, "Grace", "Hopper", extra=extra)

    def _add_user(
        self,
        key_name: str,
        user_id: str,
        can_write: bool,
        first: str,
        last: str,
        *,
        site_admin: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """A user and a new API key, kept in the site's metadata as `key_name`."""
        key = secrets.token_urlsafe(24)
        self.store.meta_set(key_name, key)
        roles = ["user", "site_admin"] if site_admin else ["user"]
        doc = {"firstname": first, "lastname": last, "email": user_id, "roles": roles}
        self.store.add_user(user_id, key, can_write, {**doc, "created": now_iso(), **(extra or {})})

    def api_key(self, which: str = "admin_key") -> str:
        secret = self.store.meta_get(which) or ""
        host_port = self.url.split("://", 1)[1]
        if self.url.startswith("http://"):
            return f"{host_port}:__force_insecure:{secret}"
        return f"{host_port}:{secret}"

    def announce(self) -> dict[str, Any]:
        info = {
            "url": self.url,
            "api_key": self.api_key(),
            "readonly_api_key": self.api_key("reader_key"),
            "project_member_api_key": self.api_key("member_key"),
            "data": str(self.store.data_dir),
            "pid": os.getpid(),
            "ca_cert": None if self.ca_cert is None else str(self.ca_cert),
            "storage_url": self.storage_url,
            "link": None
            if self.link is None
            else {**self.link_spec.announce(), "pid": self.link.pid},
        }
        if self.opts.ready_file is not None:
            tmp = self.opts.ready_file.with_suffix(".tmp")
            # The file holds API keys: private to the user from the first byte.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            os.replace(tmp, self.opts.ready_file)
        return info

    def _servers(self) -> list[SandboxHTTPServer]:
        return [self.httpd] + ([self.storage_httpd] if self.storage_httpd else [])

    def _close_servers(self) -> None:
        for server in self._servers():
            server.server_close()

    def start(self) -> None:
        for server in self._servers():
            thread = threading.Thread(
                target=server.serve_forever, name=f"sandbox-{server.listener}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def serve_forever(self) -> None:
        if self.storage_httpd is not None:
            thread = threading.Thread(
                target=self.storage_httpd.serve_forever, name="sandbox-storage", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self.httpd.serve_forever()

    def stop(self) -> None:
        # shutdown() waits for serve_forever() to return: it would hang if it never ran.
        if self._threads:
            for server in self._servers():
                server.shutdown()
        if self.link is not None:
            self.link.stop()
        self._close_servers()
        self.access_log.close()
        self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

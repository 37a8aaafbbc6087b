"""`fwfs doctor`: a read-only probe of a site with the mount's credentials.

It asks the site what the mount would meet there (issue 11, the divergences D1-D12 of the
fidelity audit) and prints one line per finding, each saying what fwfs does about it, then
a summary to paste into a bug report. It only reads (GET, and the read-only POSTs of the
resolver), sends a bounded number of requests (``MAX_REQUESTS``) within a bounded time
(``MAX_SECONDS``), and exits 1 when something would stop the mount from working: the site
unreachable, TLS not trusted, the key refused, subjects hidden even with the feature header.

What it prints never holds the key, a signed URL, or names of files or containers (they can
be PHI): counts, container kinds, hosts, statuses and timings only. Every line also passes
through a filter that masks the key's secret, should a site ever echo it.

HTTP goes through ``FlywheelClient.probe`` alone; this module knows nothing of requests.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from fwfs import __version__
from fwfs.client import FlywheelClient, Kind, ProbeResult
from fwfs.config import ClientConfig, load_api_key, tls_verify_from_env
from fwfs.errors import FwfsError
from fwfs.models import container_type

MAX_REQUESTS = 40
MAX_SECONDS = 90.0
PAGE = 250  # the page size fwfs itself asks for
MAX_PAGES = 4  # per list: enough to see paging work, not to walk a large site
# The feature header without subject-container: what the SDK sends, to see the gate.
SDK_FEATURES = "Safe-Redirect,multipart_signed_url"

OK, NOTE, WARN, BLOCKER = "ok", "note", "warn", "BLOCKER"


@dataclass(frozen=True)
class Finding:
    level: str
    topic: str
    text: str  # what was found, then what fwfs does about it


@dataclass
class _Found:
    """Things met on the way that later checks use (never printed as such)."""

    files: list[tuple[str, str, Mapping[str, Any]]] = field(default_factory=list)
    analyses: list[str] = field(default_factory=list)
    session: str | None = None


class Doctor:
    """Runs the checks in order; each appends findings. Not thread-safe; run once."""

    def __init__(
        self,
        client: FlywheelClient,
        *,
        site: str,
        trust: str,
        max_requests: int = MAX_REQUESTS,
        max_seconds: float = MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._site = site
        self._trust = trust
        self._max_requests = max_requests
        self._max_seconds = max_seconds
        self._clock = clock
        self._started = clock()
        self.requests = 0
        self.findings: list[Finding] = []
        self.release = "unknown"
        self.features: list[str] = []
        self._found = _Found()
        self._projects: list[dict[str, Any]] = []
        self._resolve_status = 0

    # ---- running ---------------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        return any(f.level == BLOCKER for f in self.findings)

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    def run(self) -> None:
        # A site out of reach or a refused key: every later answer would only repeat it.
        if not self._reach() or not self._identity():
            return
        for check in (
            self._groups,
            self._resolver,
            self._download,
            self._zip_listing,
            self._analysis_inputs,
            self._audit_trail,
        ):
            if self._spent():
                self._add(NOTE, "budget", "request or time budget spent: later checks skipped")
                return
            check()

    def _spent(self) -> bool:
        return self.requests >= self._max_requests or self.elapsed >= self._max_seconds

    def _probe(self, method: str, path: str, **kwargs: Any) -> ProbeResult | None:
        if self._spent():
            return None
        self.requests += 1
        return self._client.probe(method, path, **kwargs)

    def _add(self, level: str, topic: str, text: str) -> None:
        self.findings.append(Finding(level, topic, text))

    # ---- the site, TLS and the key ---------------------------------------------------

    def _reach(self) -> bool:
        res = self._probe("GET", "/version")
        assert res is not None  # the first request is always within budget
        if res.status == 0:
            if res.tls_error:
                error = res.error or "TLS verification failed"
                if "FW_SSL_CERT_FILE" not in error:
                    error += (
                        f" (trusted: {self._trust}; add the site's or your network's CA to "
                        "the OS trust store, or set FW_SSL_CERT_FILE to its PEM file)"
                    )
                self._add(BLOCKER, "tls", f"the site's certificate is not trusted: {error}")
            else:
                self._add(BLOCKER, "site", f"the site cannot be reached: {res.error}")
            return False
        if self._site.startswith("https:"):
            self._add(OK, "tls", f"the certificate was verified (trusted: {self._trust})")
        else:
            self._add(NOTE, "tls", "plain HTTP: nothing is encrypted (a test site?)")
        doc = res.json() if res.status == 200 else None
        if isinstance(doc, dict):
            release = doc.get("release") or doc.get("flywheel_release")
            self.release = str(release) if release else "unknown"
        config = self._probe("GET", "/config")
        features = config.json() if config is not None and config.status == 200 else None
        feats = features.get("features") if isinstance(features, dict) else None
        if isinstance(feats, dict):
            self.features = sorted(str(k) for k, v in feats.items() if v)
        if res.status != 200:
            self._add(WARN, "site", f"GET /version answered HTTP {res.status}: release unknown")
        shown = ", ".join(self.features) or "none"
        self._add(OK, "site", f"release {self.release}; features on: {shown}")
        return True

    def _identity(self) -> bool:
        """False when the key is refused."""
        res = self._probe("GET", "/auth/status")
        if res is None:
            return True
        if res.status in (401, 403):
            self._add(
                BLOCKER,
                "key",
                f"the site refused the API key (HTTP {res.status}): get a new one from your "
                "profile page and pass it with --api-key, FWFS_API_KEY or `fw login`",
            )
            return False
        doc = res.json()
        if res.status != 200 or not isinstance(doc, dict):
            self._add(WARN, "key", f"GET /auth/status answered HTTP {res.status}")
            return True
        admin = " (site admin)" if doc.get("user_is_admin") else ""
        if doc.get("user_id"):
            self._add(OK, "user", f"the key belongs to a user{admin}; user_id is given")
        else:
            self._add(
                WARN,
                "user",
                f"/auth/status gives no user_id (an older core){admin}: fwfs cannot tell "
                "which permissions are yours, so file modes show what the site allows all",
            )
        return True

    # ---- lists and paging ------------------------------------------------------------

    def _pages(self, path: str) -> tuple[list[dict[str, Any]], bool] | None:
        """Up to MAX_PAGES pages of ``path`` with limit=PAGE: (items, complete)."""
        items: list[dict[str, Any]] = []
        params = {"limit": str(PAGE)}
        for _ in range(MAX_PAGES):
            res = self._probe("GET", path, params=params, max_body=8 << 20)
            page = res.json() if res is not None and res.status == 200 else None
            if not isinstance(page, list):
                return None
            items += [p for p in page if isinstance(p, dict)]
            if len(page) < PAGE or not isinstance(page[-1], dict):
                return items, True
            cursor = page[-1].get("_id")
            if not isinstance(cursor, str):
                return items, False
            params = {"limit": str(PAGE), "after_id": cursor}
        return items, False

    def _groups(self) -> None:
        plain = self._probe("GET", "/groups", max_body=8 << 20)
        unpaged = plain.json() if plain is not None and plain.status == 200 else None
        paged = self._pages("/groups")
        if not isinstance(unpaged, list) or paged is None:
            status = plain.status if plain is not None else "-"
            self._add(WARN, "groups", f"GET /groups failed (HTTP {status}): no root listing")
            return
        groups, complete = paged
        more = "" if complete else " or more"
        if len(unpaged) < len(groups):
            self._add(
                NOTE,
                "paging",
                f"GET /groups without limit gave {len(unpaged)} of {len(groups)}{more} groups "
                f"(a default page size): fwfs always pages, limit={PAGE}",
            )
        else:
            self._add(OK, "paging", f"GET /groups gave all {len(groups)} groups without limit")
        big = self._probe("GET", "/groups", params={"limit": "1000"})
        if big is not None and big.status == 422:
            cap = _limit_cap(big.json())
            self._add(
                NOTE,
                "paging",
                f"limit=1000 is refused (HTTP 422{cap}): fwfs asks for {PAGE} per page",
            )
        elif big is not None:
            self._add(OK, "paging", f"limit=1000 is accepted (HTTP {big.status})")
        projects = self._pages("/projects")
        if projects is None:
            self._add(WARN, "groups", "GET /projects failed: groups of projects not checked")
            return
        self._projects = projects[0]
        listed = {g.get("_id") for g in groups}
        hidden = {p.get("group") for p in self._projects} - listed - {None}
        if hidden:
            self._add(
                NOTE,
                "groups",
                f"{len(hidden)} group(s) holding your projects are not in /groups (you are "
                "a member of the project only): fwfs shows them in the root anyway",
            )
        else:
            self._add(
                OK,
                "groups",
                f"/groups lists the group of each of your {len(self._projects)} project(s)",
            )

    # ---- the resolver ----------------------------------------------------------------

    def _resolve(self, path: list[str], **kwargs: Any) -> list[dict[str, Any]] | None:
        res = self._probe("POST", "/resolve", json_body={"path": path}, max_body=8 << 20, **kwargs)
        self._resolve_status = res.status if res is not None else 0
        doc = res.json() if res is not None and res.status == 200 else None
        children = doc.get("children") if isinstance(doc, dict) else None
        if not isinstance(children, list):
            return None
        return [c for c in children if isinstance(c, dict)]

    def _note_files(self, kind: str, cid: str, children: list[dict[str, Any]]) -> None:
        for child in children:
            ctype = container_type(child)
            if ctype == "file" and isinstance(child.get("name"), str):
                self._found.files.append((kind, cid, child))
            elif ctype == "analysis" and isinstance(child.get("_id"), str):
                self._found.analyses.append(child["_id"])

    def _resolver(self) -> None:
        projects = self._projects
        if not projects:
            self._add(NOTE, "resolver", "no project readable with this key: resolver not checked")
            return
        for project in projects[:3]:
            group, pid = project.get("group"), project.get("_id")
            if not isinstance(group, str) or not isinstance(pid, str):
                continue
            path = [group, f"<id:{pid}>"]
            with_header = self._resolve(path)
            if with_header is None:
                status = self._resolve_status
                self._add(WARN, "resolver", f"POST /resolve of a project answered HTTP {status}")
                return
            kinds = {container_type(c) for c in with_header} - {"file", "analysis"}
            if not kinds:
                continue  # an empty project says nothing: try the next
            self._note_files("project", pid, with_header)
            self._resolver_shape(path, kinds, with_header)
            self._descend(path, with_header)
            return
        self._add(NOTE, "resolver", "the first projects hold no containers: shape not checked")

    def _resolver_shape(
        self, path: list[str], kinds: set[str | None], children: list[dict[str, Any]]
    ) -> None:
        if "session" in kinds and "subject" not in kinds:
            self._add(
                BLOCKER,
                "resolver",
                "a project's children are sessions even with x-accept-feature "
                "subject-container: the mount would show every project empty",
            )
            return
        without = self._resolve(path, headers={"x-accept-feature": SDK_FEATURES})
        gated = without is not None and any(container_type(c) == "session" for c in without)
        if gated:
            self._add(
                NOTE,
                "resolver",
                "subjects are gated: without the subject-container feature a project's "
                "children are sessions; fwfs sends the feature and sees subjects",
            )
        else:
            self._add(OK, "resolver", "subjects are served with and without the feature header")
        sample = next(c for c in children if container_type(c) not in ("file", "analysis"))
        missing = [k for k in ("files", "info", "tags") if k not in sample]
        if missing:
            self._add(
                NOTE,
                "resolver",
                f"child containers come without {'/'.join(missing)}: fwfs lists each "
                "directory with its own resolve and fetches metadata when getxattr asks",
            )
        else:
            self._add(OK, "resolver", "child containers embed files, info and tags")

    def _descend(self, path: list[str], children: list[dict[str, Any]]) -> None:
        """Down to an acquisition, one resolve per level, for a file, a zip, an analysis."""
        for _ in range(3):
            child = next((c for c in children if container_type(c) not in _LEAVES), None)
            cid = child.get("_id") if child is not None else None
            if child is None or not isinstance(cid, str):
                return
            kind = container_type(child) or ""
            if kind == "session":
                self._found.session = cid
            path = [*path, f"<id:{cid}>"]
            found = self._resolve(path)
            if found is None:
                return
            children = found
            self._note_files(kind, cid, children)
            if any(_is_zip(f[2]) for f in self._found.files) and kind == "acquisition":
                return

    # ---- downloads -------------------------------------------------------------------

    def _file_path(self, kind: str, cid: str, doc: Mapping[str, Any], group: str) -> str:
        name, file_id = str(doc.get("name")), doc.get("file_id")
        return self._client.file_url_path(
            cast(Kind, kind),
            cid,
            name,
            group=group,
            file_id=file_id if isinstance(file_id, str) else None,
        )

    def _ranged(self, path: str) -> ProbeResult | None:
        return self._probe(
            "GET",
            path,
            params={"view": "true"},
            headers={"Range": "bytes=0-15", "Accept": "application/octet-stream"},
            max_body=64,
        )

    def _download(self) -> None:
        files = [f for f in self._found.files if (f[2].get("size") or 0) > 16]
        if not files:
            self._add(NOTE, "download", "no file found cheaply: the download path not checked")
            return
        kind, cid, doc = files[0]
        res = self._ranged(self._file_path(kind, cid, doc, "files"))
        if res is None:
            return
        if res.status == 0:
            self._add(WARN, "download", f"a file download failed: {res.error}")
            return
        if res.redirect_status is not None:
            life = res.redirect_lifetime
            valid = f", signed URLs valid {life:.0f} s" if life is not None else ""
            self._add(
                NOTE,
                "download",
                f"downloads redirect (HTTP {res.redirect_status}) to {res.redirect_host}"
                f"{valid}: fwfs follows them without the key, and reads a file's later"
                " blocks from the same signed URL while it is valid",
            )
        else:
            self._add(OK, "download", "downloads are served by the API host itself")
        if res.status == 206:
            self._add(OK, "range", "Range is honoured (HTTP 206): fwfs reads files by block")
        elif res.status == 200:
            self._add(
                WARN,
                "range",
                "Range is ignored (HTTP 200 with the whole file): fwfs reads such files as one "
                "stream, never once per block",
            )
        else:
            self._add(WARN, "range", f"a ranged download answered HTTP {res.status}")

    def _zip_listing(self) -> None:
        zips = [f for f in self._found.files if _is_zip(f[2])]
        if not zips:
            self._add(NOTE, "zip", "no zip archive found cheaply: ?info=true not timed")
            return
        kind, cid, doc = zips[0]
        res = self._probe("GET", self._file_path(kind, cid, doc, "files"), params={"info": "true"})
        if res is None:
            return
        took = f"{res.elapsed:.1f} s"
        if res.status == 200:
            self._add(
                OK if res.elapsed < 1 else NOTE,
                "zip",
                f"a zip listing (?info=true) took {took}: fwfs reads zip indexes and members "
                "from the archive's own bytes, so this does not slow the mount",
            )
        else:
            self._add(
                NOTE,
                "zip",
                f"a zip listing (?info=true) answered HTTP {res.status} in {took}: fwfs does "
                "not need it (it reads the archive's own central directory)",
            )

    def _analysis_inputs(self) -> None:
        analyses = list(self._found.analyses)
        if not analyses and self._found.session is not None:
            res = self._probe("GET", f"/sessions/{self._found.session}/analyses")
            listed = res.json() if res is not None and res.status == 200 else None
            if isinstance(listed, list):
                analyses = [a["_id"] for a in listed if isinstance(a, dict) and "_id" in a]
        for aid in analyses[:2]:
            res = self._probe("GET", f"/analyses/{aid}", max_body=4 << 20)
            doc = res.json() if res is not None and res.status == 200 else None
            inputs = doc.get("inputs") if isinstance(doc, dict) else None
            usable = [i for i in inputs or [] if isinstance(i, dict) and i.get("name")]
            if not usable:
                continue
            via_inputs = self._ranged(self._file_path("analysis", aid, usable[0], "inputs"))
            via_files = self._ranged(self._file_path("analysis", aid, usable[0], "files"))
            if via_inputs is None or via_files is None:
                return
            if via_inputs.status in (200, 206):
                how = (
                    "and files/ serves outputs only"
                    if via_files.status == 404
                    else "and on files/ as well"
                )
                self._add(
                    OK,
                    "inputs",
                    f"analysis inputs are served on inputs/ {how}: fwfs reads them there",
                )
            else:
                self._add(
                    WARN,
                    "inputs",
                    f"the analysis inputs route answered HTTP {via_inputs.status} (files/: "
                    f"HTTP {via_files.status}): fwfs may not read analysis inputs here",
                )
            return
        self._add(NOTE, "inputs", "no analysis with inputs found cheaply: route not checked")

    def _audit_trail(self) -> None:
        if "audit_trail" in self.features:
            self._add(
                NOTE,
                "delete",
                "the audit trail is on: deletes need a reason; mount with --allow-delete "
                "--delete-reason REASON to let rm/rmdir delete",
            )
        else:
            self._add(OK, "delete", "no audit trail advertised: deletes need no reason")


_LEAVES = ("file", "analysis")


def _is_zip(doc: Mapping[str, Any]) -> bool:
    name = doc.get("name")
    return isinstance(name, str) and name.lower().endswith(".zip")


def _limit_cap(body: Any) -> str:
    """ ", at most N" from a FastAPI 422 body, when it says."""
    if isinstance(body, dict) and isinstance(body.get("detail"), list):
        for item in body["detail"]:
            ctx = item.get("ctx") if isinstance(item, dict) else None
            if isinstance(ctx, dict) and isinstance(ctx.get("limit_value"), int):
                return f", at most {ctx['limit_value']}"
    return ""


def report(doctor: Doctor, out: TextIO, mask: Callable[[str], str]) -> None:
    """The findings, one line each, then the summary block for bug reports."""
    width = max(len(f.topic) for f in doctor.findings) if doctor.findings else 8
    for f in doctor.findings:
        print(mask(f"{f.level:<7} {f.topic:<{width}}  {f.text}"), file=out)
    verdict = (
        "BLOCKED: fix the BLOCKER lines before mounting"
        if doctor.blocked
        else "the mount should work with this site"
    )
    print(mask(f"\n{verdict}"), file=out)
    lines = [
        "---- fwfs doctor summary (paste into a bug report) ----",
        f"fwfs {__version__}, Python {platform.python_version()}, {platform.system()}",
        f"site release: {doctor.release}",
        f"features: {', '.join(doctor.features) or 'none'}",
        "findings:",
        *[f"  {f.level} {f.topic}: {f.text}" for f in doctor.findings if f.level != OK],
        f"  ({sum(f.level == OK for f in doctor.findings)} checks ok)",
        f"requests: {doctor.requests}, time: {doctor.elapsed:.1f} s",
        "---- end of summary ----",
    ]
    print(mask("\n".join(lines)), file=out)


def masker(*secrets: str) -> Callable[[str], str]:
    """A filter that replaces each non-empty secret with ***."""
    hidden = [s for s in secrets if s]

    def mask(text: str) -> str:
        for secret in hidden:
            text = text.replace(secret, "***")
        return text

    return mask


def main(api_key: str | None, environ: Mapping[str, str], home: Path, out: TextIO) -> int:
    """`fwfs doctor`: 0 when nothing blocks the mount, 1 when something does, 2 when it
    cannot start (no key, a malformed key or CA setting). The key is found as `fwfs mount`
    finds it."""
    secret = ""
    try:
        key, source = load_api_key(api_key, environ, home)
        secret = key.rsplit(":", 1)[-1]
        config = ClientConfig.from_api_key(
            key, verify=tls_verify_from_env(environ), read_timeout=30.0, retries=0
        )
    except FwfsError as err:
        print(masker(secret)(f"fwfs doctor: {err}"), file=out)
        return 2
    mask = masker(key, secret)
    trust = config.trust
    print(mask(f"fwfs doctor: {config.base_url} (key from {source})"), file=out)
    with FlywheelClient(config) as client:
        doctor = Doctor(
            client,
            site=config.base_url,
            trust=trust.describe() if trust is not None else "nothing: verification is off",
        )
        doctor.run()
    report(doctor, out, mask)
    return 1 if doctor.blocked else 0

"""Shared fixtures: real sandbox sites (`fwfs serve`) running in subprocesses.

* `demo_site` (session scope) is one demo site shared by every test. Tests must not destroy
  data others rely on: write tests create their own containers and files, with unique names
  (the `unique` fixture).
* `start_site(**options)` starts a private site for tests that need their own server: a
  restart on the same data directory, `--signed-url`, TLS, `--range-quirk`, `--scale`, an
  emulated network link (`rtt_ms=40, bandwidth_mbit=1000`: see `site.link`). Each
  keyword becomes a `fwfs serve` option (`signed_url=True` -> `--signed-url`,
  `tls_cert=path` -> `--tls-cert path`); `demo=False` leaves the demo seed out.
* `strict_site` (session scope): one demo site with `--strict` (real-core behaviours, HTTPS
  with a private CA: use `site.verify`, `site.client()`, `site.subprocess_env()`).
* `start_shared_site(**options)`: `start_site` for module- or session-scoped fixtures.

The official Flywheel SDK retries dropped connections and 502/503/504 for about two minutes.
The environment below is set before anything imports `flywheel`, so that a server bug fails
a test in seconds instead of stalling it (`flywheel/rest.py` reads these at import time).
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Before any import of flywheel: flywheel/rest.py reads these once, at import time.
os.environ["FLYWHEEL_SDK_TOTAL_RETRIES"] = "1"
os.environ["FLYWHEEL_SDK_BACKOFF_FACTOR"] = "0.2"
os.environ["FLYWHEEL_SDK_BACKOFF_MAX"] = "1"
os.environ["FLYWHEEL_SDK_CONNECT_TIMEOUT"] = "5"
os.environ["FLYWHEEL_SDK_REQUEST_TIMEOUT"] = "60"
# The TLS tests decide for themselves whether the SDK gets a CA file.
os.environ.pop("FW_SSL_CERT_FILE", None)

import pytest

READY_TIMEOUT = 90.0  # seeding the demo (DICOM series, NIfTI volumes) takes a few seconds
STOP_TIMEOUT = 15.0


def _fast_sdk_retries() -> None:
    """If flywheel was imported before this conftest, its retry defaults are already bound."""
    if "flywheel.rest" not in sys.modules:
        return
    rest = sys.modules["flywheel.rest"]
    init = rest.RetryTransport.__init__
    defaults = list(init.__defaults__ or ())
    if defaults and defaults[0] > 1:
        defaults[0] = 1  # total
        defaults[1] = 0.1  # backoff_factor
        defaults[-1] = 1.0  # backoff_max
        init.__defaults__ = tuple(defaults)


class Site:
    """A running `fwfs serve` subprocess and what its ready file announced."""

    def __init__(
        self,
        info: dict[str, Any],
        proc: subprocess.Popen[bytes],
        workdir: Path,
        access_log_path: Path,
        argv: list[str],
    ) -> None:
        self.info = info
        self.proc = proc
        self.workdir = workdir
        self.argv = argv
        self.url: str = info["url"]
        self.api_url = self.url + "/api"
        self.api_key: str = info["api_key"]
        self.readonly_api_key: str = info["readonly_api_key"]
        # Grace: read-write member of flywheel/Anxiety Study only (not of group flywheel).
        self.project_member_api_key: str = info["project_member_api_key"]
        # --private-ca: the PEM of the site's own CA (in no trust store); None for plain HTTP.
        self.ca_cert: Path | None = Path(info["ca_cert"]) if info.get("ca_cert") else None
        # --redirect-downloads: where downloads are redirected to.
        self.storage_url: str | None = info.get("storage_url")
        # --rtt-ms/--bandwidth-mbit: {"rtt_ms", "bandwidth_mbit", "pid"} of the link, else None.
        self.link: dict[str, Any] | None = info.get("link")
        self.data = Path(info["data"])
        self.pid: int = info["pid"]
        self.access_log_path = access_log_path
        self.port = int(self.url.rsplit(":", 1)[1])

    # ---- keys and clients -------------------------------------------------------------

    @staticmethod
    def secret_of(api_key: str) -> str:
        """The secret part of an SDK key (`host:port[:__force_insecure]:SECRET`)."""
        return api_key.rsplit(":", 1)[1]

    @property
    def secret(self) -> str:
        return self.secret_of(self.api_key)

    @property
    def readonly_secret(self) -> str:
        return self.secret_of(self.readonly_api_key)

    def key(self, readonly: bool = False, member: bool = False) -> str:
        """Ada's key; Rosalind's with `readonly`; Grace's (project member) with `member`."""
        if member:
            return self.project_member_api_key
        return self.readonly_api_key if readonly else self.api_key

    def headers(self, readonly: bool = False, member: bool = False) -> dict[str, str]:
        """The Authorization header the SDK sends, for raw HTTP with `requests`."""
        return {"Authorization": f"scitran-user {self.secret_of(self.key(readonly, member))}"}

    @property
    def verify(self) -> str | bool:
        """`requests`' `verify=` for this site: the private CA's PEM, or True."""
        return str(self.ca_cert) if self.ca_cert is not None else True

    def trust_bundle(self) -> Path | None:
        """The OS trust store with the site's private CA installed: the system bundle plus
        the CA, as a company CA is installed on a real machine (not into certifi)."""
        if self.ca_cert is None:
            return None
        bundle = self.workdir / "os-trust-bundle.pem"
        if not bundle.exists():
            system = ssl.get_default_verify_paths().openssl_cafile
            roots = Path(system).read_text() if Path(system).is_file() else ""
            bundle.write_text(roots + "\n" + self.ca_cert.read_text())
        return bundle

    def trust_env(self) -> dict[str, str]:
        """What a subprocess's environment adds to trust the site through the OS trust store
        (OpenSSL reads SSL_CERT_FILE). Empty for a site without a private CA."""
        bundle = self.trust_bundle()
        return {} if bundle is None else {"SSL_CERT_FILE": str(bundle)}

    def subprocess_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) plus `trust_env()`, without REQUESTS_CA_BUNDLE and
        CURL_CA_BUNDLE: this machine presets them to the system bundle, and they would
        decide a `requests` client's trust before any trust store is asked."""
        env = dict(os.environ if base is None else base)
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            env.pop(name, None)
        return {**env, **self.trust_env()}

    def client(self, readonly: bool = False, member: bool = False, **kwargs: Any) -> Any:
        """An SDK client. flywheel-sdk 23 (httpx2/httpcore2) builds its TLS context when the
        client is made, from SSL_CERT_FILE or the system store: so a private CA is trusted
        by setting SSL_CERT_FILE for that moment, as an OS trust store would, not with
        FW_SSL_CERT_FILE."""
        import flywheel

        _fast_sdk_retries()
        key = self.key(readonly, member)
        bundle = self.trust_bundle()
        if bundle is None:
            return flywheel.Client(key, **kwargs)
        saved = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = str(bundle)
        try:
            return flywheel.Client(key, **kwargs)
        finally:
            if saved is None:
                os.environ.pop("SSL_CERT_FILE", None)
            else:
                os.environ["SSL_CERT_FILE"] = saved

    # ---- the access log ---------------------------------------------------------------

    def access_log(self) -> list[dict[str, Any]]:
        """Every request so far, one dict per access-log line."""
        if not self.access_log_path.exists():
            return []
        lines = self.access_log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def log_mark(self) -> int:
        """How many requests the log holds now: pass it as `since` to see only later ones."""
        return len(self.access_log())

    def requests_since(self, mark: int, settle: float = 0.1) -> list[dict[str, Any]]:
        """The entries after `mark`, once the log has stopped growing: the site writes a
        request's line just after answering it, so late lines get a moment."""
        seen = -1
        entries: list[dict[str, Any]] = []
        while len(entries) != seen:
            seen = len(entries)
            time.sleep(settle)
            entries = self.access_log()[mark:]
        return entries

    def quiet_mark(self) -> int:
        """`log_mark()` once the lines of requests already answered are in the log."""
        return len(self.requests_since(0))

    def wait_for_log(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int = 1,
        timeout: float = 5.0,
        since: int = 0,
    ) -> list[dict[str, Any]]:
        """The log entries (after the first `since`) matching `predicate`, once there are at
        least `count` of them, or whatever matched when `timeout` ran out.

        The server writes a request's line after it has sent the response, so the client
        can see the answer a moment before the log does.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.access_log()[since:] if predicate(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    # ---- process ----------------------------------------------------------------------

    def stderr(self) -> str:
        path = self.workdir / "stderr.txt"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait, then SIGKILL. Returns the exit status (negative: killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        return int(self.proc.returncode)

    def __repr__(self) -> str:
        return f"<Site {self.url} data={self.data}>"


def start_sandbox(
    workdir: Path,
    *,
    demo: bool = True,
    data: Path | None = None,
    port: int = 0,
    timeout: float = READY_TIMEOUT,
    **options: Any,
) -> Site:
    """Run `python -m fwfs serve` and return once its ready file exists.

    Fails the test with the server's stderr if the process dies or never gets ready.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else workdir / "data"
    ready = workdir / "ready.json"
    access_log = workdir / "access.log"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "fwfs", "serve", "--port", str(port), "--data", str(data)]
    argv += ["--ready-file", str(ready), "--access-log", str(access_log)]
    if demo:
        argv.append("--demo")
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FW_")}
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=workdir
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            stderr = (workdir / "stderr.txt").read_text(errors="replace")
            pytest.fail(
                f"fwfs serve exited with {proc.returncode} before it was ready\n"
                f"argv: {argv}\nstderr:\n{stderr}",
                pytrace=False,
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            stderr = (workdir / "stderr.txt").read_text(errors="replace")
            pytest.fail(
                f"fwfs serve not ready after {timeout:.0f}s\nargv: {argv}\nstderr:\n{stderr}",
                pytrace=False,
            )
        time.sleep(0.05)
    info = json.loads(ready.read_text(encoding="utf-8"))
    return Site(info, proc, workdir, access_log, argv)


@pytest.fixture(scope="session")
def demo_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One demo site for the whole session. Read freely; write only into your own containers."""
    site = start_sandbox(tmp_path_factory.mktemp("demo-site"))
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="session")
def strict_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One demo site with `--strict` (every real-core behaviour, HTTPS with a private CA)
    for the whole session. Read freely; write only into your own containers."""
    site = start_sandbox(tmp_path_factory.mktemp("strict-site"), strict=True)
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="session")
def start_shared_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Site]]:
    """`start_site` for module- or session-scoped fixtures: what it starts is stopped at the
    end of the session at the latest (`Site.stop()` earlier is fine)."""
    started: list[Site] = []

    def start(**options: Any) -> Site:
        site = start_sandbox(tmp_path_factory.mktemp("shared-site"), **options)
        started.append(site)
        return site

    yield start
    for site in started:
        site.stop()


@pytest.fixture
def start_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Site]]:
    """A factory for private sites; every site it started is stopped after the test."""
    started: list[Site] = []

    def start(**options: Any) -> Site:
        site = start_sandbox(tmp_path_factory.mktemp("site"), **options)
        started.append(site)
        return site

    yield start
    for site in started:
        site.stop()


@pytest.fixture(scope="session")
def fw(demo_site: Site) -> Any:
    """An SDK client of the demo site as Ada (read-write)."""
    return demo_site.client()


@pytest.fixture(scope="session")
def fw_readonly(demo_site: Site) -> Any:
    """An SDK client of the demo site as Rosalind (read-only)."""
    return demo_site.client(readonly=True)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """`unique("upload")` -> `upload-1f3a9c0b`: names no other test (or run) uses."""

    def make(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    return make

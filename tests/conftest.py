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

import os
import sys
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

from fwfs.testing import sites


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


class Site(sites.Site):
    """The site runner's `Site` (fwfs/testing/sites.py) with an SDK client."""

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


def start_sandbox(workdir: Path, **options: Any) -> Site:
    """`sites.start_site(workdir, **options)` (`demo`, `data`, `port`, `timeout`, and
    `fwfs serve` flags as keywords): a running site, once its ready file exists.

    Fails the test with the server's stderr if the process dies or never gets ready.
    """
    try:
        site = sites.start_site(workdir, site_class=Site, **options)
    except sites.SiteError as e:
        pytest.fail(str(e), pytrace=False)
    assert isinstance(site, Site)
    return site


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


def _site_factory(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[Callable[..., Site]]:
    """`start(**options)` starts a site in a fresh `name` directory; all it started are
    stopped when the fixture ends."""
    started: list[Site] = []

    def start(**options: Any) -> Site:
        site = start_sandbox(tmp_path_factory.mktemp(name), **options)
        started.append(site)
        return site

    yield start
    for site in started:
        site.stop()


@pytest.fixture(scope="session")
def start_shared_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Site]]:
    """`start_site` for module- or session-scoped fixtures: what it starts is stopped at the
    end of the session at the latest (`Site.stop()` earlier is fine)."""
    yield from _site_factory(tmp_path_factory, "shared-site")


@pytest.fixture
def start_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Site]]:
    """A factory for private sites; every site it started is stopped after the test."""
    yield from _site_factory(tmp_path_factory, "site")


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

"""Fixtures of the write tests (test_fs_writes*.py): FlywheelFS models with a spool, and
scratch containers of their own, so the demo tree stays as seeded for every other test.

`new_model` makes and closes FlywheelFS models for both: test_model.py's `model`/`make_model`
(read-only, no user) and the write tests' `make_fs`; the names differ on purpose.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flywheel
import pytest
from writekit import Scratch

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.fs import FlywheelFS


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def new_model() -> Iterator[Callable[..., FlywheelFS]]:
    """`new_model(key, with_user=False, verify=True, client=None, **MountConfig fields)`: a
    fresh FlywheelFS as `key`'s user (its user id asked of the site if `with_user`), trusting
    `verify` (a strict site's CA), over `client` if given, as this process's uid and gid
    unless told otherwise. Every model made is closed after the test, with its client."""
    made: list[tuple[FlywheelFS, FlywheelClient]] = []

    def make(
        key: str,
        with_user: bool = False,
        verify: bool | str = True,
        client: FlywheelClient | None = None,
        **config: Any,
    ) -> FlywheelFS:
        client = client or FlywheelClient(
            ClientConfig.from_api_key(
                key, verify=verify, retries=1, total_timeout=10, read_timeout=20
            )
        )
        user_id = client.auth_status()["user_id"] if with_user else None
        config.setdefault("uid", os.getuid())
        config.setdefault("gid", os.getgid())
        fs = FlywheelFS(client, MountConfig(**config), user_id)
        made.append((fs, client))
        return fs

    yield make
    for fs, client in made:
        fs.close()
        client.close()


@pytest.fixture
def make_fs(
    demo_site: Any, spool_dir: Path, new_model: Callable[..., FlywheelFS]
) -> Callable[..., FlywheelFS]:
    """`make_fs(site=None, key=None, **MountConfig fields)`: a fresh writable FlywheelFS on
    the demo site (or `site`), as its key's user, spooling to `spool_dir` unless told
    otherwise. Every model made is closed after the test."""

    def make(site: Any = None, key: str | None = None, **config: Any) -> FlywheelFS:
        site = site or demo_site
        config.setdefault("read_only", False)
        if not config["read_only"]:
            config.setdefault("spool_dir", spool_dir)
        config.setdefault("metadata_ttl", 300)
        return new_model(key or site.api_key, with_user=True, **config)

    return make


def make_scratch(site: Any, fw: Any) -> Scratch:
    """A group of our own holding project / subject / session, through the SDK."""
    gid = f"fwfs-writes-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "fwfs write tests"))
    project = fw.get_group(gid).add_project(label="Writes")
    subject = project.add_subject(label="sub-01")
    session = subject.add_session(label="ses-01")
    return Scratch(site, fw, gid, project, subject, session)


@pytest.fixture(scope="module")
def scratch_tree(demo_site: Any, fw: Any) -> Scratch:
    return make_scratch(demo_site, fw)


@pytest.fixture
def scratch(scratch_tree: Scratch, unique: Callable[[str], str]) -> Scratch:
    """The module's scratch tree with an acquisition of this test's own (`scratch.acq`)."""
    return scratch_tree.with_acquisition(unique("acq"))


@pytest.fixture
def private_scratch(start_site: Callable[..., Any], unique: Callable[[str], str]) -> Scratch:
    """A private site (no demo data) with a scratch tree: for fault injection, which is
    site-wide."""
    site = start_site(demo=False)
    return make_scratch(site, site.client()).with_acquisition(unique("acq"))


@pytest.fixture
def audited(start_site: Callable[..., Any], unique: Callable[[str], str]) -> Scratch:
    """A private site that keeps an audit trail (`--audit-trail`), with a scratch tree."""
    site = start_site(demo=False, audit_trail=True)
    return make_scratch(site, site.client()).with_acquisition(unique("acq"))

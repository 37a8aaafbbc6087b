"""Fixtures of the write scenarios that run against both tiers (rclone's vfs tests do the
same): every test here that asks for `target` or `make_target` runs twice, `[model]` against
a FlywheelFS driven directly and `[mount]` against a real FUSE mount, through the same
`targets.Target` calls.

* `scratch` is a small tree of the test's own (`tierkit.Scratch`: a group with P/notes.txt,
  P/sub-01/ses-01/anat/scan.zip and the analysis qc, at `scratch.paths`) on a private site
  the module's tests share, in both tiers, so a scenario sees the same paths, the same SDK
  witness and the same access log whichever tier it drives.
* `make_target(allow_delete=, read_only=, key=, spool=)` makes a writable target of
  `scratch` (a model, or a daemon of its own); `target` is one with the defaults.

The mount tier skips without /dev/fuse and has tests/mount's watchdog: a syscall stuck on a
hung daemon cannot be interrupted, so the daemons are killed shortly before the timeout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
# The mount runner lives in tests/mount, which pytest puts on sys.path only when it collects
# a test there: these scenarios need it either way.
if str(HERE.parent / "mount") not in sys.path:
    sys.path.insert(0, str(HERE.parent / "mount"))

from mountkit import LIVE, Mount, start_mount, stop_mount  # noqa: E402
from targets import ModelTarget, Target  # noqa: E402
from tierkit import MakeTarget, MountedTarget, Scratch  # noqa: E402

from fwfs.client import FlywheelClient  # noqa: E402
from fwfs.config import ClientConfig, MountConfig  # noqa: E402
from fwfs.fs import FlywheelFS  # noqa: E402
from fwfs.testing.mounts import Watchdog  # noqa: E402

TIERS = ("model", "mount")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(str(item.fspath)).resolve().parents:
            continue
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("tier") == "mount":
            item.add_marker(pytest.mark.fuse)
            if not os.path.exists("/dev/fuse"):
                item.add_marker(
                    pytest.mark.skip(reason="/dev/fuse is absent: no FUSE mounts on this machine")
                )


@pytest.fixture(params=TIERS)
def tier(request: pytest.FixtureRequest) -> str:
    """Which tier the test drives: "model" or "mount"."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _fuse_watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """tests/mount's watchdog: kill every fwfs daemon a few seconds before the test's
    timeout, so that a syscall stuck on a hung daemon returns and the test is reported."""
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else 300.0
    with Watchdog(LIVE, timeout - 5.0) as watchdog:
        yield
    assert not watchdog.fired.is_set(), "the test hung on the mount: the watchdog killed fwfs"


@pytest.fixture(scope="module")
def scratch_site(start_shared_site: Callable[..., Any]) -> tuple[Any, Any]:
    """A private site (no demo data) for the module's tests, and an SDK client of it."""
    site = start_shared_site(demo=False)
    return site, site.client()


@pytest.fixture
def scratch(scratch_site: tuple[Any, Any], unique: Callable[[str], str]) -> Scratch:
    """A `Scratch` tree of this test's own, in a group of its own."""
    site, fw = scratch_site
    return Scratch(site, fw, unique("g"))


@pytest.fixture
def make_target(
    tier: str, scratch: Scratch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeTarget]:
    """`make_target(allow_delete=False, read_only=False, key=None, spool=None)`: a target of
    `scratch` in this test's tier, as `key`'s user (Ada by default), spooling to `spool` (a
    directory of its own by default: one daemon per spool). Closed or unmounted after the
    test."""
    models: list[tuple[FlywheelFS, FlywheelClient]] = []
    mounts: list[Mount] = []

    def make(
        *,
        allow_delete: bool = False,
        read_only: bool = False,
        key: str | None = None,
        spool: Path | None = None,
    ) -> Target:
        key = key or scratch.site.api_key
        workdir = tmp_path_factory.mktemp(tier)
        spool = spool or workdir / "spool"
        if tier == "mount":
            args = ["--spool-dir", str(spool)] + (["--allow-delete"] if allow_delete else [])
            mount = start_mount(scratch.site, workdir, key=key, args=args, read_only=read_only)
            mounts.append(mount)
            return MountedTarget(mount)
        client = FlywheelClient(
            ClientConfig.from_api_key(key, retries=1, total_timeout=10, read_timeout=20)
        )
        config = MountConfig(
            read_only=read_only,
            allow_delete=allow_delete,
            spool_dir=None if read_only else spool,
            uid=os.getuid(),
            gid=os.getgid(),
        )
        fs = FlywheelFS(client, config, client.auth_status()["user_id"])
        models.append((fs, client))
        return ModelTarget(fs)

    yield make
    for mount in reversed(mounts):
        stop_mount(mount)
    for fs, client in models:
        fs.close()
        client.close()


@pytest.fixture
def target(make_target: MakeTarget) -> Target:
    """A writable target of `scratch` with the default options."""
    return make_target()

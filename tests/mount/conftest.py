"""Real FUSE mounts of real sandbox sites: `fwfs mount MP -f` runs as a subprocess.

* `mount_site(site, ttl=..., cache_size=..., key=..., args=[...], read_only=...)` mounts a
  site privately (a fresh daemon, so a fresh cache, its own spool) and unmounts it after
  the test. Mounts are writable unless `read_only=True`.
* `mounted` is one mount of the shared demo site for the whole session (writable: write only
  into containers of your own, with `unique` names).
* `scratch` is a private, small site for write tests (`Scratch`): they may change it freely.
  `mount` is `scratch` mounted privately with the default options.
* `big_site` is a session-wide private demo site with `big.bin` (64 MiB) in
  `flywheel/Anxiety Study/sub-01/ses-baseline/T1w`; `start_site` (tests/conftest.py) starts
  others, e.g. with `range_quirk=True`.
* Profiles: a test that asks for `profile_site`, `profile_mount`, `profile_fw`,
  `profile_tree` or `profile_big_site` runs twice, `[default]` against the default sandbox
  and `[strict]` against `fwfs serve --strict` (a real core's behaviour). Sites start
  lazily, so `-k default` never starts a strict one. `profile` is the name.

The daemon is a subprocess (the mount runner of fwfs/testing/mounts.py, shared with
scripts/bench), so a hung one can be killed: teardown unmounts with `fusermount3 -u`, falls
back to `-uz` (`umount -l` as root), then terminates and kills the process, and checks
that nothing is left mounted. A watchdog kills every daemon shortly before a test's timeout,
because a syscall blocked on a hung FUSE daemon cannot be interrupted by pytest-timeout's
SIGALRM; killing the daemon aborts the connection and makes the syscall return.

Every test here needs /dev/fuse: without it they are skipped, with it they run (and fail
if mounting does not work).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mountkit import LIVE, Mount, Scratch, SiteTree, root_conftest, start_mount, stop_mount

from fwfs.testing.mounts import Watchdog

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.fuse)
            if not os.path.exists("/dev/fuse"):
                item.add_marker(
                    pytest.mark.skip(reason="/dev/fuse is absent: no FUSE mounts on this machine")
                )


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fuse_watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kill every fwfs daemon a few seconds before the test's timeout, so that a syscall
    stuck on a hung daemon returns (ENOTCONN) and pytest-timeout can report the test."""
    marker = request.node.get_closest_marker("timeout")
    timeout = float(marker.args[0]) if marker and marker.args else 300.0
    with Watchdog(LIVE, timeout - 5.0) as watchdog:
        yield
    assert not watchdog.fired.is_set(), "the test hung on the mount: the watchdog killed fwfs"


@pytest.fixture
def mount_site(
    start_site: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Mount]]:
    """`mount_site(site, ttl=2, cache_size="64M", key=site.readonly_api_key, args=[...],
    read_only=True)`: a private mount (its own daemon, cache and spool), unmounted after
    the test."""
    mounts: list[Mount] = []

    def mount(site: Any, **options: Any) -> Mount:
        m = start_mount(site, tmp_path_factory.mktemp("mount"), **options)
        mounts.append(m)
        return m

    yield mount
    for m in reversed(mounts):
        stop_mount(m)


@pytest.fixture(scope="session")
def mounted(demo_site: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """The shared demo site, mounted once for the session with the default options."""
    m = start_mount(demo_site, tmp_path_factory.mktemp("demo-mount"))
    yield m
    stop_mount(m)


@pytest.fixture(scope="session")
def big_site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A private demo site with a 64 MiB `big.bin`, shared by the tests that read it."""
    root = root_conftest(request.config)
    site = root.start_sandbox(tmp_path_factory.mktemp("big-site"), big_file_mb=64)
    request.addfinalizer(site.stop)
    return site


@pytest.fixture(scope="session")
def big_strict_site(start_shared_site: Callable[..., Any]) -> Any:
    """`big_site`'s strict twin: `--strict` with the 64 MiB `big.bin`."""
    return start_shared_site(strict=True, big_file_mb=64)


@pytest.fixture(scope="session")
def strict_mounted(strict_site: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """`strict_site` mounted once for the session with the default options."""
    m = start_mount(strict_site, tmp_path_factory.mktemp("strict-mount"))
    yield m
    stop_mount(m)


@pytest.fixture(scope="session")
def strict_fw(strict_site: Any) -> Any:
    """An SDK client of `strict_site` as Ada. It sends no `subject-container`, so walk with
    finders (`mountkit.sdk_container`), not `fw.lookup` of paths through subjects."""
    return strict_site.client()


@pytest.fixture(scope="session")
def strict_tree(strict_fw: Any) -> SiteTree:
    """`demo_tree` of `strict_site`."""
    tree = SiteTree(strict_fw)
    for gid in ("flywheel", "radiology"):
        tree.add_group(gid)
    return tree


# Per profile: the fixture each profile fixture stands for.
PROFILES: dict[str, dict[str, str]] = {
    "default": {
        "site": "demo_site",
        "mount": "mounted",
        "fw": "fw",
        "tree": "demo_tree",
        "big": "big_site",
    },
    "strict": {
        "site": "strict_site",
        "mount": "strict_mounted",
        "fw": "strict_fw",
        "tree": "strict_tree",
        "big": "big_strict_site",
    },
}


@pytest.fixture(scope="module", params=list(PROFILES))
def profile(request: pytest.FixtureRequest) -> str:
    """Which sandbox the test runs against: "default" or "strict"."""
    return str(request.param)


@pytest.fixture(scope="module")
def profile_site(profile: str, request: pytest.FixtureRequest) -> Any:
    """`demo_site` or `strict_site`."""
    return request.getfixturevalue(PROFILES[profile]["site"])


@pytest.fixture(scope="module")
def profile_mount(profile: str, request: pytest.FixtureRequest) -> Mount:
    """`mounted` or `strict_mounted`."""
    mount: Mount = request.getfixturevalue(PROFILES[profile]["mount"])
    return mount


@pytest.fixture(scope="module")
def profile_fw(profile: str, request: pytest.FixtureRequest) -> Any:
    """`fw` or `strict_fw` (Ada's SDK client of `profile_site`)."""
    return request.getfixturevalue(PROFILES[profile]["fw"])


@pytest.fixture(scope="module")
def profile_tree(profile: str, request: pytest.FixtureRequest) -> SiteTree:
    """`demo_tree` or `strict_tree`."""
    tree: SiteTree = request.getfixturevalue(PROFILES[profile]["tree"])
    return tree


@pytest.fixture(scope="module")
def profile_big_site(profile: str, request: pytest.FixtureRequest) -> Any:
    """`big_site` or `big_strict_site`."""
    return request.getfixturevalue(PROFILES[profile]["big"])


@pytest.fixture(scope="session")
def demo_tree(fw: Any) -> SiteTree:
    """The demo's two groups as the SDK sees them, with every file's bytes."""
    tree = SiteTree(fw)
    for gid in ("flywheel", "radiology"):
        tree.add_group(gid)
    return tree


@pytest.fixture
def scratch(start_site: Callable[..., Any]) -> Scratch:
    """A private `Scratch` site of this test's own."""
    return Scratch(start_site(demo=False))


@pytest.fixture
def mount(scratch: Scratch, mount_site: Callable[..., Mount]) -> Mount:
    """`scratch` mounted with the default options (a daemon of this test's own)."""
    return mount_site(scratch.site)

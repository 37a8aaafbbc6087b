"""Fixtures of the `flywheel://` tests: filesystems of the demo site and of the `--strict`
one (a real core's behaviours, HTTPS with a private CA, downloads redirected to signed
storage URLs), and scratch containers of their own for writes.

The SDK is the witness of what a site holds."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import flywheel
import pytest
from remotekit import MakeFs, Scratch, options_of

from fwfs.remote import FlywheelFileSystem


@pytest.fixture(params=["demo", "strict"])
def site(request: pytest.FixtureRequest) -> Any:
    """The demo site, then the strict one: every test that takes it runs on both."""
    return request.getfixturevalue(f"{request.param}_site")


@pytest.fixture
def sdk(site: Any) -> Any:
    return site.client()


@pytest.fixture
def make_fs(site: Any) -> MakeFs:
    """`make_fs(**storage options)`: a new FlywheelFileSystem of `site` as Ada."""

    def make(**options: Any) -> FlywheelFileSystem:
        return FlywheelFileSystem(**options_of(site, **options))

    return make


@pytest.fixture
def fsys(make_fs: MakeFs) -> FlywheelFileSystem:
    return make_fs()


@pytest.fixture
def scratch(sdk: Any) -> Scratch:
    gid = f"fsspec-{uuid.uuid4().hex[:8]}"
    sdk.add_group(flywheel.Group(gid, "flywheel:// tests"))
    project = sdk.get_group(gid).add_project(label="P")
    acquisition = (
        project.add_subject(label="sub-01")
        .add_session(label="ses-01")
        .add_acquisition(label="acq-01")
    )
    return Scratch(gid, project, acquisition)


@pytest.fixture(scope="module")
def big_site(start_shared_site: Callable[..., Any]) -> Iterator[Any]:
    """A demo site with `big.bin` (64 MiB) in the T1w acquisition, for counting bytes."""
    site = start_shared_site(big_file_mb=64)
    yield site
    site.stop()

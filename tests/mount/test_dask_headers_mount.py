"""Issue 15's Dask example against the mount: the NIfTI header table of the demo project
built by a LocalCluster's worker processes through `flywheel://` is the table built by
reading the same files through a real FUSE mount, on the default and the strict sandbox.
(tests/remote/test_dask_headers.py covers the workers' credentials.)"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import distributed
import fsspec  # type: ignore[import-untyped]
import pandas as pd  # type: ignore[import-untyped]
import pytest
from mountkit import Mount

from fwfs.cohort import header_table
from fwfs.remote import FlywheelFileSystem

pytestmark = pytest.mark.timeout(120)
PROJECT = "flywheel/Anxiety Study"
# Any: distributed's constructors are not typed.
dask_distributed: Any = distributed


def test_the_dask_table_is_the_table_read_through_the_mount(
    profile_site: Any, profile_mount: Mount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = profile_site
    options: dict[str, Any] = {"api_key": site.api_key, "skip_instance_cache": True}
    if site.ca_cert is not None:
        options["verify"] = str(site.ca_cert)
    fsys = FlywheelFileSystem(**options)
    # The workers' key is their environment's, never the pickle's.
    for name in list(os.environ):
        if name.startswith(("FW_", "FWFS_")):
            monkeypatch.delenv(name)
    env = {"HOME": str(tmp_path), "FWFS_API_KEY": site.api_key, **site.trust_env()}
    with (
        dask_distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            silence_logs=logging.ERROR,
            env=env,
        ) as cluster,
        dask_distributed.Client(cluster) as client,
    ):
        remote = header_table(PROJECT, client, fs=fsys)
    mounted = header_table(str(profile_mount / PROJECT), fs=fsspec.filesystem("file"))
    assert len(mounted) >= 20
    pd.testing.assert_frame_equal(remote, mounted)

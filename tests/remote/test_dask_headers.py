"""The Dask example of issue 15 (fwfs.cohort): a project's NIfTI header table built by the
worker processes of a `LocalCluster` through `flywheel://`, on the demo site and the strict
one. The workers get the filesystem pickled without its key and find their own in their
environment (FWFS_API_KEY), as docs/SCALING.md tells users to set it up; a worker without
one fails with a PermissionError naming what is missing and the file, never a hang.

The table through a FUSE mount is compared in tests/mount/test_dask_headers_mount.py."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import distributed
import nibabel as nib
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from distributed import Client
from remotekit import DEMO_PROJECT, options_of

from fwfs import cohort
from fwfs.cohort import header_row, header_table, nifti_files
from fwfs.remote import FlywheelFileSystem

pytestmark = pytest.mark.timeout(120)
# Any: distributed's constructors are not typed.
dask_distributed: Any = distributed


@contextlib.contextmanager
def cluster(env: dict[str, str], n_workers: int = 2) -> Iterator[Client]:
    """A LocalCluster of worker processes (so every task's filesystem is really pickled)
    whose environment holds no Flywheel key of this process's, only `env`'s."""
    with contextlib.ExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            # The workers are spawned now, with this process's environment as their base.
            for name in list(os.environ):
                if name.startswith(("FW_", "FWFS_")) or name == "FLYWHEEL_USER_HOME":
                    patch.delenv(name)
            local = stack.enter_context(
                dask_distributed.LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address=":0",
                    silence_logs=logging.ERROR,
                    env=env,
                )
            )
        yield stack.enter_context(dask_distributed.Client(local))


def worker_env(site: Any, home: Path, key: str | None) -> dict[str, str]:
    """A worker's own environment: its home (no user.json in it), the site's CA in the OS
    trust store's variable, and FWFS_API_KEY when `key` is given."""
    env = {"HOME": str(home), **site.trust_env()}
    if key is not None:
        env["FWFS_API_KEY"] = key
    return env


@pytest.fixture(scope="module", params=["demo", "strict"])
def keyed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Any, Client]]:
    """(site, client): two workers whose FWFS_API_KEY is Ada's key of the site."""
    site = request.getfixturevalue(f"{request.param}_site")
    home = tmp_path_factory.mktemp("worker-home")
    with cluster(worker_env(site, home, site.api_key)) as client:
        yield site, client


def models_built(client: Client) -> int:
    """How many of the workers have built a `flywheel://` model (so opened files)."""

    def count() -> int:
        from fwfs.remote import model

        return len(model._models)

    done: dict[str, int] = client.run(count)
    return sum(1 for n in done.values() if n)


def test_the_table_built_on_the_workers_is_the_one_built_here(
    keyed: tuple[Any, Client],
) -> None:
    site, client = keyed
    fsys = FlywheelFileSystem(**options_of(site))
    # What travels to the workers holds no key: they read with their own.
    assert site.secret.encode() not in pickle.dumps(fsys)
    on_workers = header_table(DEMO_PROJECT, client, fs=fsys)
    assert models_built(client) >= 1
    here = header_table(DEMO_PROJECT, fs=fsys)
    pd.testing.assert_frame_equal(on_workers, here)
    assert list(on_workers.columns) == list(cohort.COLUMNS)
    # One row per NIfTI of the project, acquisitions' and analyses' alike.
    files = nifti_files(fsys, DEMO_PROJECT)
    assert len(on_workers) == len(files) >= 20
    assert any("/analyses/" in p for p in on_workers["path"])
    assert on_workers["path"].is_unique and on_workers["path"].is_monotonic_increasing


def test_each_row_is_what_nibabel_reads_from_the_whole_file(keyed: tuple[Any, Client]) -> None:
    """The header read from one block is the header of the whole file, byte for byte."""
    site, client = keyed
    fsys = FlywheelFileSystem(**options_of(site))
    table = header_table(DEMO_PROJECT, client, fs=fsys)
    for row in table.to_dict("records"):
        data = fsys.cat_file(f"{DEMO_PROJECT}/{row['path']}")
        image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
        header: Any = image.header
        assert row["size"] == len(data)
        shape = image.shape + (1,) * (4 - len(image.shape))
        assert (row["nx"], row["ny"], row["nz"], row["nt"]) == shape, row["path"]
        assert row["ndim"] == len(image.shape)
        assert np.allclose([row["dx"], row["dy"], row["dz"], row["tr"]], header["pixdim"][1:5])
        assert row["datatype"] == str(header.get_data_dtype())
        assert (row["qform_code"], row["sform_code"]) == (
            int(header["qform_code"]),
            int(header["sform_code"]),
        )
        assert row["descrip"] == header["descrip"].item().decode()


def test_a_missing_file_on_a_worker_is_file_not_found_naming_it(
    keyed: tuple[Any, Client],
) -> None:
    site, client = keyed
    fsys = FlywheelFileSystem(**options_of(site))
    missing = f"{DEMO_PROJECT}/sub-01/ses-baseline/T1w/gone.nii.gz"
    future = client.submit(header_row, missing, fs=fsys, pure=False)
    with pytest.raises(FileNotFoundError) as err:
        future.result(timeout=60)
    assert f"flywheel://{missing}" in str(err.value)


def test_a_worker_without_credentials_is_told_what_is_missing(
    demo_site: Any, tmp_path: Path
) -> None:
    fsys = FlywheelFileSystem(**options_of(demo_site))
    path = nifti_files(fsys, DEMO_PROJECT)[0]
    with cluster(worker_env(demo_site, tmp_path, None), n_workers=1) as client:
        future = client.submit(header_row, path, fs=fsys, pure=False)
        with pytest.raises(PermissionError) as err:
            future.result(timeout=60)
        # The whole table fails the same way (its listing, here, has the key).
        with pytest.raises(PermissionError):
            header_table(DEMO_PROJECT, client, fs=fsys)
    message = str(err.value)
    assert "FWFS_API_KEY" in message and str(tmp_path / ".config/flywheel/user.json") in message
    assert f"flywheel://{path}" in message
    assert demo_site.secret not in message


def test_a_wrong_path_or_no_key_fails_the_table_naming_what_is_wrong(
    demo_site: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not an empty table, which fsspec's find would give for both."""
    fsys = FlywheelFileSystem(**options_of(demo_site))
    with pytest.raises(FileNotFoundError) as missing:
        header_table(f"{DEMO_PROJECT}/sub-99", fs=fsys)
    assert f"flywheel://{DEMO_PROJECT}/sub-99" in str(missing.value)
    with pytest.raises(NotADirectoryError):
        nifti_files(fsys, f"{DEMO_PROJECT}/participants.csv")
    for name in list(os.environ):
        if name.startswith(("FW_", "FWFS_")) or name == "FLYWHEEL_USER_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    keyless = FlywheelFileSystem(skip_instance_cache=True)
    with pytest.raises(PermissionError) as denied:
        header_table(DEMO_PROJECT, fs=keyless)
    assert "FWFS_API_KEY" in str(denied.value)

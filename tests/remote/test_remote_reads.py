"""`flywheel://` reads, on the demo site and on the strict one: the mount's paths, listings
and attributes, ranged reads, zip members, and the PyData readers on top (pandas, nibabel).
The SDK is the witness of the bytes."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
import h5py  # type: ignore[import-untyped]
import nibabel as nib
import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest
from linkkit import round_trips
from remotekit import DEMO_PROJECT, T1W, MakeFs, Scratch, options_of

from fwfs.remote import FlywheelFileSystem
from fwfs.testing.sites import clean_env

pytestmark = pytest.mark.timeout(120)


def container(sdk: Any, path: str) -> Any:
    """The SDK's container at `path`, found by labels below the project (a real core's
    path lookup knows no subjects)."""
    group, project, *labels = path.split("/")
    found = sdk.lookup(f"{group}/{project}")
    for label in labels:
        children = found.subjects() if found.container_type == "project" else None
        if children is None:
            children = (
                found.sessions() if found.container_type == "subject" else found.acquisitions()
            )
        (found,) = [c for c in children if c.label == label]
    return found.reload()


def acq_file(sdk: Any, path: str) -> bytes:
    """The bytes of the file at `path` (an acquisition's), through the SDK."""
    acq_path, name = path.rsplit("/", 1)
    data: bytes = sdk.download_file_from_acquisition_as_data(container(sdk, acq_path).id, name)
    return data


def project_file(sdk: Any, name: str) -> bytes:
    project = sdk.lookup(DEMO_PROJECT)
    data: bytes = sdk.download_file_from_project_as_data(project.id, name)
    return data


# ---- the entry point --------------------------------------------------------------------------


def test_fsspec_open_by_url_in_a_fresh_process_finds_flywheel_and_no_fuse(site: Any) -> None:
    """With fwfs installed, `fsspec.open("flywheel://…")` works in a process that imported
    nothing of fwfs, with the key from FWFS_API_KEY; and it loads no FUSE binding."""
    script = (
        "import sys, fsspec\n"
        "options = {'verify': sys.argv[2]} if sys.argv[2] else {}\n"
        "with fsspec.open(sys.argv[1], **options) as f:\n"
        "    sys.stdout.buffer.write(f.read())\n"
        "assert 'mfusepy' not in sys.modules, 'flywheel:// imported mfusepy'\n"
    )
    env = site.subprocess_env(clean_env(("FW_", "FWFS_")))
    env["FWFS_API_KEY"] = site.api_key
    ca = str(site.ca_cert) if site.ca_cert is not None else ""
    url = f"flywheel://{DEMO_PROJECT}/participants.csv"
    done = subprocess.run(
        [sys.executable, "-c", script, url, ca], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == project_file(site.client(), "participants.csv")
    assert fsspec.get_filesystem_class("flywheel") is FlywheelFileSystem


# ---- listings and attributes ------------------------------------------------------------------


def test_ls_shows_the_mounts_names_with_sizes_and_types(fsys: FlywheelFileSystem, sdk: Any) -> None:
    assert "flywheel" in fsys.ls("", detail=False)
    entries = {e["name"]: e for e in fsys.ls(DEMO_PROJECT)}
    project = sdk.lookup(DEMO_PROJECT)
    for f in project.files:
        entry = entries[f"{DEMO_PROJECT}/{f.name}"]
        assert (entry["type"], entry["size"]) == ("file", f.size)
    assert entries[f"{DEMO_PROJECT}/sub-04 Zoë"]["type"] == "directory"
    # A trailing slash and the protocol are the same path.
    assert fsys.ls(f"flywheel://{DEMO_PROJECT}/", detail=False) == sorted(entries)


def test_info_of_a_file_has_its_id_version_and_hash(fsys: FlywheelFileSystem, sdk: Any) -> None:
    path = f"{T1W}/T1w.nii.gz"
    witness = container(sdk, T1W).get_file("T1w.nii.gz")
    info = fsys.info(path)
    assert info["name"] == path and info["type"] == "file"
    assert (info["size"], info["file_id"], info["version"]) == (
        witness.size,
        witness.file_id,
        witness.version,
    )
    assert info["hash"] == witness.hash
    assert fsys.ukey(path) == witness.hash
    assert fsys.checksum(path) == fsys.checksum(f"flywheel://{path}")
    assert fsys.checksum(path) != fsys.checksum(f"{T1W}/T1w.dicom.zip")
    assert fsys.modified(path).timestamp() == witness.modified.timestamp()
    assert fsys.info(T1W)["type"] == "directory"
    assert fsys.isdir(DEMO_PROJECT) and fsys.isfile(path) and not fsys.exists(f"{T1W}/nope")


def test_find_glob_walk_and_du_see_the_project(fsys: FlywheelFileSystem, sdk: Any) -> None:
    subject = f"{DEMO_PROJECT}/sub-01"
    niftis = fsys.glob(f"{subject}/*/*/*.nii.gz")
    expected = sorted(
        f"{subject}/{ses.label}/{acq.label}/{f.name}"
        for ses in container(sdk, subject).sessions()
        for acq in ses.acquisitions()
        for f in acq.files
        if f.name.endswith(".nii.gz")
    )
    assert niftis == expected and len(niftis) >= 4
    found = fsys.find(subject, detail=True)
    assert set(niftis) <= set(found)
    assert fsys.du(subject) == sum(e["size"] for e in found.values())
    walked = {f"{root}/{name}" for root, _dirs, files in fsys.walk(subject) for name in files}
    assert walked == set(found)


def test_a_wrong_path_is_file_not_found_naming_it(fsys: FlywheelFileSystem) -> None:
    for call in (fsys.ls, fsys.info, fsys.cat_file, fsys.open):
        with pytest.raises(FileNotFoundError) as err:
            call(f"{DEMO_PROJECT}/sub-99/nothing.txt")
        assert f"flywheel://{DEMO_PROJECT}/sub-99" in str(err.value)


def test_a_directory_opened_is_is_a_directory(fsys: FlywheelFileSystem) -> None:
    with pytest.raises(IsADirectoryError) as err:
        fsys.open(T1W)
    assert T1W in str(err.value)
    with pytest.raises(IsADirectoryError):
        fsys.cat_file(DEMO_PROJECT)


# ---- reads ------------------------------------------------------------------------------------


def test_open_seek_read_gives_the_files_bytes(
    fsys: FlywheelFileSystem, site: Any, sdk: Any
) -> None:
    path = f"{T1W}/T1w.nii.gz"
    expected = acq_file(sdk, path)
    with fsys.open(path) as f:
        assert f.seekable() and f.size == len(expected)
        assert f.read(10) == expected[:10]
        f.seek(1000)
        assert f.read(500) == expected[1000:1500]
        f.seek(-100, os.SEEK_END)
        assert f.read() == expected[-100:]
        f.seek(0)
        assert f.read() == expected
        assert f.read(10) == b""
    with fsspec.open(f"flywheel://{path}", **options_of(site)) as f:
        assert f.read() == expected


def test_cat_file_with_ranges(fsys: FlywheelFileSystem, sdk: Any) -> None:
    path = f"{T1W}/T1w.dicom.zip"
    expected = acq_file(sdk, path)
    assert fsys.cat_file(path) == expected
    assert fsys.cat_file(path, 100, 300) == expected[100:300]
    assert fsys.cat_file(path, -50) == expected[-50:]
    assert fsys.cat_file(path, 10, -10) == expected[10:-10]
    assert fsys.cat_file(path, len(expected) + 5) == b""
    assert fsys.head(path, 64) == expected[:64]
    assert fsys.tail(path, 64) == expected[-64:]


def test_cat_ranges_returns_each_range_and_errors_in_place(
    fsys: FlywheelFileSystem, sdk: Any
) -> None:
    zipped, nifti = f"{T1W}/T1w.dicom.zip", f"{T1W}/T1w.nii.gz"
    z, n = acq_file(sdk, zipped), acq_file(sdk, nifti)
    paths = [zipped, nifti, zipped, f"{T1W}/missing.bin", nifti]
    starts = [0, 348, 5000, 0, -16]
    ends = [4, 352, 6000, 10, None]
    out = fsys.cat_ranges(paths, starts, ends)
    assert out[:3] == [z[0:4], n[348:352], z[5000:6000]]
    assert isinstance(out[3], FileNotFoundError)
    assert out[4] == n[-16:]
    with pytest.raises(FileNotFoundError):
        fsys.cat_ranges(paths, starts, ends, on_error="raise")


def test_zip_members_through_the_d_directory_and_zip_chaining(
    fsys: FlywheelFileSystem, site: Any, sdk: Any
) -> None:
    archive = f"{T1W}/T1w.dicom.zip"
    with zipfile.ZipFile(io.BytesIO(acq_file(sdk, archive))) as z:
        member = sorted(z.namelist())[1]
        expected = z.read(member)
    through_d = f"{archive}.d/{member}"
    assert through_d in fsys.find(f"{archive}.d")
    assert fsys.cat_file(through_d) == expected
    assert fsys.info(through_d)["size"] == len(expected)
    url = f"zip://{member}::flywheel://{archive}"
    with fsspec.open(url, flywheel=options_of(site)) as f:
        assert f.read() == expected


def test_pandas_reads_a_project_csv(site: Any, sdk: Any) -> None:
    url = f"flywheel://{DEMO_PROJECT}/participants.csv"
    table = pd.read_csv(url, storage_options=options_of(site))
    expected = pd.read_csv(io.BytesIO(project_file(sdk, "participants.csv")))
    pd.testing.assert_frame_equal(table, expected)
    assert "sub-04 Zoë" in set(table["participant_id"])


def test_nibabel_loads_a_nifti_through_a_file_object(fsys: FlywheelFileSystem, sdk: Any) -> None:
    path = f"{T1W}/T1w.nii.gz"
    expected = nib.Nifti1Image.from_bytes(gzip.decompress(acq_file(sdk, path)))
    with fsys.open(path) as f, gzip.GzipFile(fileobj=f) as unzipped:
        image = nib.Nifti1Image.from_stream(unzipped)
        data = image.get_fdata()
    assert image.shape == expected.shape == (64, 64, 16)
    assert np.array_equal(image.header["pixdim"], expected.header["pixdim"])
    assert np.array_equal(data, expected.get_fdata())


# ---- costs ------------------------------------------------------------------------------------


def test_a_header_read_is_one_small_ranged_request(big_site: Any) -> None:
    fsys = FlywheelFileSystem(**options_of(big_site))
    path = f"{T1W}/big.bin"
    size = fsys.info(path)["size"]
    assert size == 64 << 20
    mark = big_site.quiet_mark()
    with fsys.open(path) as f:
        header = f.read(352)
    assert len(header) == 352
    log = big_site.requests_since(mark)
    gets = [e for e in log if e["method"] == "GET" and e["path"].endswith("/big.bin")]
    assert len(log) == len(gets) == 1, log
    assert gets[0]["status"] == 206
    assert gets[0]["bytes"] < size // 100


def test_a_sequential_read_is_few_large_requests(big_site: Any) -> None:
    fsys = FlywheelFileSystem(**options_of(big_site))
    path = f"{T1W}/big.bin"
    fsys.info(path)
    mark = big_site.quiet_mark()
    total = 0
    with fsys.open(path) as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    assert total == 64 << 20
    gets = [e for e in big_site.requests_since(mark) if e["path"].endswith("/big.bin")]
    # Readahead windows of up to 4 MiB per request (the mount's), not a request per read.
    assert sum(e["bytes"] for e in gets) == total
    assert len(gets) <= 40, [e["range"] for e in gets]


def test_a_disk_cache_serves_the_next_process(demo_site: Any, tmp_path: Path) -> None:
    """`disk_cache=` keeps blocks on disk as the mount's --disk-cache does: a second process
    with the same cache_dir reads the file without fetching it."""
    script = (
        "import sys, fsspec\n"
        "fs = fsspec.filesystem('flywheel', disk_cache='64M', cache_dir=sys.argv[2])\n"
        "sys.stdout.buffer.write(fs.cat_file(sys.argv[1]))\n"
    )
    env = demo_site.subprocess_env(clean_env(("FW_", "FWFS_")))
    env["FWFS_API_KEY"] = demo_site.api_key
    path = f"{T1W}/T1w.nii.gz"
    argv = [sys.executable, "-c", script, path, str(tmp_path / "cache")]
    outputs, fetched = [], []
    for _ in range(2):
        mark = demo_site.quiet_mark()
        done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()
        outputs.append(done.stdout)
        log = demo_site.requests_since(mark)
        fetched.append(sum(e["bytes"] for e in log if e["path"].endswith("/T1w.nii.gz")))
    assert outputs[0] == outputs[1] == acq_file(demo_site.client(), path)
    assert fetched == [len(outputs[0]), 0]


def test_one_model_serves_every_thread_and_instance(make_fs: MakeFs) -> None:
    """fsspec keeps one instance per thread; they share one model (one client and cache)."""
    import threading

    first = make_fs()
    models = [first.model]
    thread = threading.Thread(target=lambda: models.append(make_fs().model))
    thread.start()
    thread.join()
    assert models[0] is models[1]
    assert make_fs(read_only=True).model is not first.model


def test_h5py_reads_one_plane_of_a_volume_without_the_whole_file(
    fsys: FlywheelFileSystem, site: Any, scratch: Scratch
) -> None:
    """HDF5 seeks to its metadata, then to the chunk asked for: a plane of 256 KiB out of a
    16 MiB file costs a small part of the file. (2.6 MB of 16.8 on 2026-12-03: reads a few
    hundred KiB apart look sequential to the model, which then reads ahead 1 MiB, as it
    does for the mount.)"""
    volume = np.arange(64 * 256 * 256, dtype=np.float32).reshape(64, 256, 256)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_dataset("volume", data=volume, chunks=(1, 256, 256))
        h5["volume"].attrs["units"] = "mm"
    path = f"{scratch.path}/volume.h5"
    fsys.pipe_file(path, buffer.getvalue())
    size = fsys.info(path)["size"]
    mark = site.quiet_mark()
    with fsys.open(path) as f, h5py.File(f, "r") as h5:
        plane = h5["volume"][10]
        units = h5["volume"].attrs["units"]
    assert np.array_equal(plane, volume[10]) and units == "mm"
    fetched = sum(e["bytes"] for e in site.requests_since(mark) if e["method"] == "GET")
    assert fetched < size // 4


def test_cat_ranges_reads_the_ranges_side_by_side(start_site: Callable[..., Any]) -> None:
    """Over a link with a 50 ms round trip, eight scattered ranges go out together, not
    one round trip after another."""
    site = start_site(rtt_ms=50, big_file_mb=16)
    fsys = FlywheelFileSystem(**options_of(site))
    path = f"{T1W}/big.bin"
    expected = fsys.cat_file(path, 0, 16 << 20)
    starts = [(2 * i + 1) << 20 for i in range(8)]
    mark = site.quiet_mark()
    got = fsys.cat_ranges([path] * 8, starts, [s + 1000 for s in starts])
    assert got == [expected[s : s + 1000] for s in starts]
    gets = [e for e in site.requests_since(mark) if e["path"].endswith("/big.bin")]
    assert len(gets) == 0  # every block was read above: the model's cache answers
    fresh = FlywheelFileSystem(**options_of(site, read_only=True))  # a model of its own
    fresh.info(path)
    mark = site.quiet_mark()
    assert fresh.cat_ranges([path] * 8, starts, [s + 1000 for s in starts]) == got
    gets = [e for e in site.requests_since(mark) if e["path"].endswith("/big.bin")]
    assert len(gets) == 8, gets
    # One after another, they would be a chain of 8 round trips; side by side 1 or 2 (up
    # to 4 allowed: on a loaded machine the pool's threads may start a few ms apart).
    assert round_trips(gets, 50) <= 4, gets

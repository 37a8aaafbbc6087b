"""`fwfs prefetch` into a cache directory (no mount), against the demo sandbox.

What a user would check, in the site's access log: after a prefetch, a fresh model on the
same cache directory (the compute node) reads every file with no request for its bytes;
a second prefetch of the same selection (a resumed one) asks for no bytes either; a file
that cannot be read is named and the run fails; a selection larger than the cache is
refused before a byte is fetched."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from writekit import Scratch, read_all

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.diskcache import usage
from fwfs.errors import RemoteUnavailable
from fwfs.fs import FlywheelFS
from fwfs.prefetch import ModelReader, plan, run
from fwfs.testing.faults import FaultyClient, Raise

pytestmark = pytest.mark.timeout(180)

KiB = 1 << 10
MiB = 1 << 20


def data_gets(site: Any, mark: int) -> list[dict[str, Any]]:
    """Requests for file bytes (ranged or whole, of any container) since `mark`."""
    return [
        e
        for e in site.requests_since(mark)
        if e["method"] == "GET" and "/files/" in e["path"] and not e["path"].endswith("/info")
    ]


def read(fs: FlywheelFS, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY).fh
    try:
        return read_all(fs, fh, chunk=MiB)
    finally:
        fs.release(fh)


@pytest.fixture
def filled(scratch: Scratch) -> dict[str, bytes]:
    data = {
        "big.bin": random.randbytes(3 * MiB + 77),
        "mid.bin": random.randbytes(700 * KiB),
        "tiny.txt": b"x",
    }
    for name, body in data.items():
        scratch.put(name, body)
    return data


def test_prefetch_of_a_directory_then_a_fresh_model_reads_with_no_data_request(
    demo_site: Any,
    scratch: Scratch,
    filled: dict[str, bytes],
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"

    def model() -> FlywheelFS:
        return new_model(
            demo_site.api_key, metadata_ttl=300, disk_cache=64 * MiB, cache_dir=cache_dir
        )

    # Interrupted after one file: the resumed run fetches only the others.
    first = model()
    reader = ModelReader(first)
    one = run(reader, plan(reader, [f"{scratch.acq_path}/mid.bin"]), progress=False)
    assert (one.done, one.failed) == (1, [])
    first.close()

    warm = model()
    reader = ModelReader(warm)
    selection = plan(reader, [scratch.acq_path])
    assert sorted(p for p, _ in selection.files) == sorted(
        f"{scratch.acq_path}/{n}" for n in filled
    )
    mark = demo_site.quiet_mark()
    outcome = run(reader, selection, jobs=3, progress=False)
    assert (outcome.done, outcome.failed, outcome.dropped) == (3, [], 0)
    assert outcome.bytes == sum(map(len, filled.values()))
    fetched = data_gets(demo_site, mark)
    assert fetched and not any("mid.bin" in e["path"] for e in fetched)
    warm.close()
    assert usage(cache_dir).files == 3

    # A second run of the same selection: everything is on disk.
    again = model()
    reader = ModelReader(again)
    selection = plan(reader, [scratch.acq_path])
    mark = demo_site.quiet_mark()
    assert run(reader, selection, progress=False).done == 3
    assert data_gets(demo_site, mark) == []
    again.close()

    # The compute node: a fresh model on the shared directory.
    compute = model()
    compute.readdir(scratch.acq_path)
    mark = demo_site.quiet_mark()
    for name, body in filled.items():
        assert read(compute, f"{scratch.acq_path}/{name}") == body
    assert data_gets(demo_site, mark) == []


def test_a_file_gone_between_listing_and_reading_is_named(
    demo_site: Any,
    scratch: Scratch,
    filled: dict[str, bytes],
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    fs = new_model(
        demo_site.api_key, metadata_ttl=300, disk_cache=64 * MiB, cache_dir=tmp_path / "c"
    )
    reader = ModelReader(fs)
    selection = plan(reader, [scratch.acq_path, f"{scratch.acq_path}/no-such-file"])
    scratch.fw.delete_acquisition_file(scratch.acq.id, "mid.bin")
    outcome = run(reader, selection, progress=False)
    assert outcome.done == 2
    assert sorted(path for path, _ in outcome.failed) == [
        f"{scratch.acq_path}/mid.bin",
        f"{scratch.acq_path}/no-such-file",
    ]


def prefetch_cli(site: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FWFS_API_KEY": site.api_key}
    return subprocess.run(
        [sys.executable, "-m", "fwfs", "prefetch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_warms_a_cache_dir_and_refuses_a_selection_too_large(
    demo_site: Any,
    scratch: Scratch,
    filled: dict[str, bytes],
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    cache_dir = tmp_path / "cache"
    mark = demo_site.quiet_mark()
    small = prefetch_cli(
        demo_site, scratch.acq_path, "--cache-dir", str(cache_dir), "--disk-cache", "2M"
    )
    assert small.returncode == 1
    assert "larger than the disk cache keeps" in small.stderr
    assert "would fit" in small.stderr  # what to select instead
    assert data_gets(demo_site, mark) == []
    assert usage(cache_dir).blocks == 0

    done = prefetch_cli(
        demo_site, scratch.acq_path, "--cache-dir", str(cache_dir), "--disk-cache", "64M"
    )
    assert done.returncode == 0, done.stderr
    assert "3 of 3 files read" in done.stdout
    assert usage(cache_dir).files == 3
    compute = new_model(
        demo_site.api_key, metadata_ttl=300, disk_cache=64 * MiB, cache_dir=cache_dir
    )
    compute.readdir(scratch.acq_path)
    mark = demo_site.quiet_mark()
    assert read(compute, f"{scratch.acq_path}/big.bin") == filled["big.bin"]
    assert data_gets(demo_site, mark) == []

    scratch.fw.delete_acquisition_file(scratch.acq.id, "tiny.txt")
    failed = prefetch_cli(
        demo_site,
        scratch.acq_path,
        f"{scratch.acq_path}/tiny.txt",
        "--cache-dir",
        str(cache_dir),
        "--disk-cache",
        "64M",
    )
    assert failed.returncode == 1
    assert f"{scratch.acq_path}/tiny.txt:" in failed.stderr


def test_with_downloads_unreachable_a_prefetched_file_is_read_from_disk(
    demo_site: Any,
    scratch: Scratch,
    filled: dict[str, bytes],
    new_model: Callable[..., FlywheelFS],
    tmp_path: Path,
) -> None:
    """The compute node that reaches the site for listings only (no storage, no download
    route): what was prefetched is read from disk without a download being asked for; a
    file not prefetched fails, with the error of the site's download."""
    cache_dir = tmp_path / "cache"
    warm = new_model(demo_site.api_key, metadata_ttl=300, disk_cache=64 * MiB, cache_dir=cache_dir)
    reader = ModelReader(warm)
    selection = plan(reader, [f"{scratch.acq_path}/big.bin", f"{scratch.acq_path}/tiny.txt"])
    assert run(reader, selection, progress=False).done == 2
    warm.close()

    client = FlywheelClient(
        ClientConfig.from_api_key(demo_site.api_key, retries=1, total_timeout=10, read_timeout=20)
    )
    faulty = FaultyClient(client)
    faulty.arm(
        *(
            Raise(method, RemoteUnavailable, call=n)
            for method in ("read_range", "stream_file")
            for n in range(1, 200)
        )
    )
    offline = FlywheelFS(
        faulty,
        MountConfig(
            metadata_ttl=300,
            disk_cache=64 * MiB,
            cache_dir=cache_dir,
            uid=os.getuid(),
            gid=os.getgid(),
        ),
    )
    try:
        for name in ("big.bin", "tiny.txt"):
            assert read(offline, f"{scratch.acq_path}/{name}") == filled[name]
        assert faulty.fired == []  # not one download asked for
        with pytest.raises(RemoteUnavailable):
            read(offline, f"{scratch.acq_path}/mid.bin")
    finally:
        offline.close()
        client.close()

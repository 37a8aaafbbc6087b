"""fwfs.testing.faults: the fault-injecting SiteClient, on FlywheelFS over a private sandbox
site with a clock the test moves. Each fault is checked by what a program would see: the
errno of the error injected, never short bytes, an open file that keeps its version, and a
next try that works once the fault is spent (no failure is cached)."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import flywheel
import pytest

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.errors import FwfsError, NotFound, PermissionDenied, RemoteUnavailable
from fwfs.fs import FlywheelFS
from fwfs.testing.faults import Clock, FaultyClient, Raise, ShortBody, SwapVersion

TTL = 2.0
V1 = random.Random(1).randbytes(300_000)
V2 = random.Random(2).randbytes(5_000)
PATH = "/g/P/notes.bin"


@dataclass
class Rig:
    fs: FlywheelFS
    faulty: FaultyClient
    clock: Clock
    fw: Any
    project: Any


@pytest.fixture
def rig(start_site: Callable[..., Any]) -> Iterator[Rig]:
    site = start_site(demo=False)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Faults"))
    project = fw.get_group("g").add_project(label="P")
    project.upload_file(flywheel.FileSpec("notes.bin", V1))
    project.upload_file(flywheel.FileSpec("other.bin", b"other"))
    client = FlywheelClient(
        ClientConfig.from_api_key(site.api_key, retries=1, total_timeout=10, read_timeout=20)
    )
    faulty = FaultyClient(client)
    clock = Clock()
    config = MountConfig(metadata_ttl=TTL, uid=os.getuid(), gid=os.getgid())
    fs = FlywheelFS(faulty, config, clock=clock)
    yield Rig(fs, faulty, clock, fw, project)
    fs.close()
    client.close()


def errno_of(call: Callable[[], object]) -> int:
    """The errno a program would get from `call` (the FUSE adapter's translation)."""
    try:
        call()
    except FwfsError as err:
        return err.errno
    except OSError as err:
        return err.errno or 0
    raise AssertionError("no error")


def read_all(fs: FlywheelFS, path: str, size: int) -> bytes:
    fh = fs.open(path, os.O_RDONLY).fh
    try:
        return fs.read(fh, 0, size + 1)
    finally:
        fs.release(fh)


def test_a_typed_error_on_the_kth_call_is_its_errno_and_the_next_call_works(rig: Rig) -> None:
    rig.faulty.arm(Raise("resolve", PermissionDenied))
    assert errno_of(lambda: rig.fs.readdir("/g/P")) == errno.EACCES
    assert {"notes.bin", "other.bin"} <= {n for n, _ in rig.fs.readdir("/g/P")}
    # Counted per call: past the TTL a lookup lists /g and /g/P again, two resolves; the
    # third is the next lookup's.
    rig.faulty.arm(Raise("resolve", RemoteUnavailable, call=3))
    rig.clock.advance(TTL)
    assert rig.fs.getattr("/g/P/notes.bin").size == len(V1)
    rig.clock.advance(TTL)
    assert errno_of(lambda: rig.fs.getattr("/g/P/notes.bin")) == errno.EIO
    assert rig.fs.getattr("/g/P/notes.bin").size == len(V1)
    rig.faulty.arm(Raise("read_range", RemoteUnavailable, name="notes.bin"))
    assert errno_of(lambda: read_all(rig.fs, PATH, len(V1))) == errno.EIO
    assert rig.faulty.fired == [
        Raise("resolve", PermissionDenied),
        Raise("resolve", RemoteUnavailable, call=3),
        Raise("read_range", RemoteUnavailable, name="notes.bin"),
    ]
    assert read_all(rig.fs, PATH, len(V1)) == V1


def test_a_short_body_is_eio_never_short_bytes(rig: Rig) -> None:
    rig.faulty.arm(ShortBody("read_range", keep=100, name="notes.bin"))
    assert errno_of(lambda: read_all(rig.fs, PATH, len(V1))) == errno.EIO
    assert rig.faulty.fired == [ShortBody("read_range", keep=100, name="notes.bin")]
    assert read_all(rig.fs, PATH, len(V1)) == V1


def test_a_version_swapped_between_two_calls_leaves_the_open_file_whole(rig: Rig) -> None:
    assert rig.fs.getattr(PATH).size == len(V1)
    # The new version lands between the open (which read the listing) and its first read.
    rig.faulty.arm(SwapVersion("read_range", V2, name="notes.bin"))
    assert read_all(rig.fs, PATH, len(V1)) == V1
    assert rig.faulty.fired == [SwapVersion("read_range", V2, name="notes.bin")]
    site = {f.name: f for f in rig.fw.get(rig.project.id).files}
    assert (site["notes.bin"].version, site["notes.bin"].size) == (2, len(V2))
    # Within the TTL the listing may still name version 1; past it, version 2.
    assert rig.fs.getattr(PATH).size in (len(V1), len(V2))
    rig.clock.advance(TTL)
    assert rig.fs.getattr(PATH).size == len(V2)
    assert rig.fs.getxattr(PATH, "user.flywheel.version") == b"2"
    assert read_all(rig.fs, PATH, len(V2)) == V2


def test_a_fault_fires_only_on_its_method_and_file(rig: Rig) -> None:
    other = Raise("read_range", NotFound, name="other.bin")
    rig.faulty.arm(other, Raise("delete_file", PermissionDenied))
    assert read_all(rig.fs, PATH, len(V1)) == V1
    assert rig.faulty.fired == []
    assert errno_of(lambda: read_all(rig.fs, "/g/P/other.bin", 5)) == errno.ENOENT
    assert rig.faulty.fired == [other]
    assert rig.faulty.disarm() == [Raise("delete_file", PermissionDenied)]
    assert read_all(rig.fs, "/g/P/other.bin", 5) == b"other"

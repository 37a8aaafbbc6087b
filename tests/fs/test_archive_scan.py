"""What reading a zip's members costs over a link with a long round trip (the filesystem
model on a private sandbox, no FUSE): one member moves only its own region; a program that
reads them all (dcm2niix on a series) gets the archive in one round of parallel ranged
requests, not in a chain of readahead requests that each waited for the one before.

Counting, not timing, as in tests/mount/test_round_trips.py: requests sent side by side
arrive at the site together, a request that waited on another arrives at least a round
trip after the other ended. A request on a new connection pays the handshake first, so a
part sent with the others may arrive one round trip later; the bounds allow for that.
"""

from __future__ import annotations

import io
import os
import random
import zipfile
from collections.abc import Callable
from typing import Any

import flywheel
import pytest
from linkkit import gap, round_trips

from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

RTT_MS = 100
BLOCK = 128 * 1024  # the ranged reader's block: reads are rounded out to whole blocks
COUNT = 200


def series_zip() -> bytes:
    """200 slices of 48 KB that do not compress: a 9.6 MB archive, which the bulk fetch
    splits into four parts, and readahead from 1 MiB needs four requests in a chain for."""
    rng = random.Random(7)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(COUNT):
            z.writestr(f"series/IM_{i:04d}.dcm", rng.randbytes(48_000))
    return buf.getvalue()


def read_member(model: FlywheelFS, path: str) -> bytes:
    """As a program does: open, read in 128 KiB requests, close."""
    fh = model.open(path, os.O_RDONLY).fh
    try:
        out = bytearray()
        while chunk := model.read(fh, len(out), BLOCK):
            out += chunk
        return bytes(out)
    finally:
        model.release(fh)


def test_one_member_moves_its_region_and_all_members_one_round_of_requests(
    start_site: Callable[..., Any], new_model: Callable[..., FlywheelFS]
) -> None:
    site = start_site(demo=False, rtt_ms=RTT_MS, bandwidth_mbit=1000)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Zips"))
    data = series_zip()
    fw.get_group("g").add_project(label="P").upload_file(flywheel.FileSpec("series.zip", data))
    archive = zipfile.ZipFile(io.BytesIO(data))
    infos = [i for i in archive.infolist() if not i.is_dir()]
    model = new_model(site.api_key, metadata_ttl=300)
    root = "g/P/series.zip.d/series"
    assert len(model.readdir(root)) == COUNT  # the index: the archive's tail

    def data_gets(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in entries if e["path"].endswith("/series.zip") and e["range"]]

    mark = site.quiet_mark()
    first = infos[0]
    assert read_member(model, f"{root}/IM_0000.dcm") == archive.read(first)
    gets = data_gets(site.requests_since(mark, settle=0.3))
    # One member alone: one ranged read of its own region, nothing ahead.
    assert len(gets) == 1, gets
    assert sum(e["bytes"] for e in gets) <= first.compress_size + 2 * BLOCK

    mark = site.quiet_mark()
    for info in infos[1:]:
        name = info.filename.rsplit("/", 1)[1]
        assert read_member(model, f"{root}/{name}") == archive.read(info)
    entries = site.requests_since(mark, settle=0.3)
    gets = data_gets(entries)
    moved = sum(e["bytes"] for e in gets)
    starts = sorted(e["start"] for e in gets)
    # The rest of the archive at the second member: four parts of >= 1 MiB, in flight
    # together (readahead from 1 MiB, doubling, takes four requests one after another).
    assert len(entries) == len(gets), entries  # nothing but the archive's bytes
    assert 2 <= len(gets) <= 5, gets
    assert moved <= len(data) - first.compress_size + BLOCK
    assert round_trips(gets, RTT_MS) <= 2, gets
    assert starts[1] - starts[0] < gap(RTT_MS), gets  # at least two of them side by side

"""`cp -r` of a project of small files through a real mount, with the walk read-ahead
(fwfs/fs/walkahead.py) fetching the next files and directories of the walk ahead of `cp`:
the copy is byte-identical, every file crosses the wire exactly once, and `cp` waits far
fewer round trips than one per file (counted as in test_round_trips.py, behind a link),
against the default sandbox and its `--strict` twin (a real core: 302s to storage)."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from linkkit import round_trips
from mountkit import Mount, quiet_mark, requests_since

pytestmark = pytest.mark.timeout(180)

RTT_MS = 150

KiB = 1 << 10


def seed(site: Any) -> dict[str, bytes]:
    """g/Small: 2 subjects x 2 sessions x 2 acquisitions x 4 files of 8-200 KiB; the bytes
    of each file by its path below the project."""
    import flywheel  # after tests/conftest.py has set the SDK's retry environment

    fw = site.client()
    fw.add_group(flywheel.Group("g", "Walk"))
    project = fw.get_group("g").add_project(label="Small")
    out: dict[str, bytes] = {}
    n = 0
    for s in range(2):
        subject = project.add_subject(label=f"sub-{s}")
        for e in range(2):
            session = subject.add_session(label=f"ses-{e}")
            for a in range(2):
                acq = session.add_acquisition(label=f"acq-{a}")
                for f in range(4):
                    n += 1
                    body = os.urandom((8 + 48 * (n % 5)) * KiB)
                    name = f"part-{f}.dat"
                    acq.upload_file(flywheel.FileSpec(name, body))
                    out[f"sub-{s}/ses-{e}/acq-{a}/{name}"] = body
    return out


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
def test_cp_r_of_small_files_is_identical_and_fetches_each_file_once(
    start_site: Callable[..., Any], mount_site: Callable[..., Mount], tmp_path: Path, strict: bool
) -> None:
    site = start_site(demo=False, strict=strict, rtt_ms=RTT_MS, bandwidth_mbit=1000)
    want = seed(site)
    mount = mount_site(site, read_only=True)
    mark = quiet_mark(site)
    dest = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(mount / "g" / "Small"), str(dest)], check=True, timeout=120)
    entries = requests_since(site, mark, settle=0.3)
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got.keys() == want.keys()
    assert [name for name in want if got[name] != want[name]] == []
    # A real core (strict) answers each file's first GET with a 302 to storage.
    gets = [e["path"] for e in entries if e["method"] == "GET" and "/files/" in e["path"]]
    assert len(gets) == len(want)
    assert [p for p, n in Counter(gets).items() if n > 1] == []
    storage = [e for e in entries if e["listener"] == "storage"]
    assert len(storage) == (len(want) if strict else 0)
    # One after another, the 32 files alone would be 32 round trips (and the listings 7
    # more; a real core's 302 doubles the files': 78 in all with --walk-ahead 0). Fetched
    # ahead, about one per directory of files, listings included (17; 35 on a real core,
    # whose HTTPS handshakes for the new parallel connections add some).
    trips = round_trips(entries, RTT_MS)
    assert trips <= (40 if strict else 24), f"cp -r waited {trips} round trips"

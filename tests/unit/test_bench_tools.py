"""scripts/bench's parsing of --link, its passes, and the condensed request sequences that
explain a missed target (no site, no mount: the benchmark's own logic)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
_environ = dict(os.environ)
import bench  # type: ignore[import-not-found]  # noqa: E402  (it sets the SDK retries: restore)
import bench_report  # type: ignore[import-not-found]  # noqa: E402

os.environ.clear()
os.environ.update(_environ)


def test_link_specs() -> None:
    assert bench.parse_link("40ms,1gbit") == {"spec": "40ms,1gbit", "rtt_ms": 40.0, "mbit": 1000.0}
    assert bench.parse_link("80ms,200Mbit")["mbit"] == 200.0
    for bad in ("40,1gbit", "40ms", "40ms,1gb", "40ms,0mbit"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_link(bad)


def test_link_runs_loopback_then_wan_then_redirects() -> None:
    args = bench.parse_args(["--link", "40ms,1gbit"])
    got = bench.passes(args, list(bench.CASES))
    assert [p["name"] for p in got] == ["loopback", "wan", "wan-redirect"]
    assert got[0]["flags"] == ()
    assert got[1]["flags"] == ("--rtt-ms", "40", "--bandwidth-mbit", "1000")
    assert got[2]["flags"][-1] == "--redirect-downloads" and got[2]["cases"] == ["cold_read"]
    alone = bench.passes(bench.parse_args(["--link", "40ms,1gbit", "--no-loopback"]), ["tree"])
    assert [p["name"] for p in alone] == ["wan"]  # no cold read: no redirect pass
    assert [p["name"] for p in bench.passes(bench.parse_args([]), ["tree"])] == ["loopback"]


def test_condense_tells_serial_from_concurrent_requests() -> None:
    fid = "0123456789abcdef01234567"
    log = [
        [0.00, 0.002, "core", "POST", "/api/resolve", "", 200, 100],
        [0.05, 0.002, "core", "POST", "/api/resolve", "", 200, 100],
        [0.10, 0.002, "core", "POST", "/api/resolve", "", 200, 100],
        [0.20, 0.050, "core", "GET", f"/api/acquisitions/{fid}/files/a", "view=true", 200, 10],
        [0.21, 0.050, "core", "GET", f"/api/acquisitions/{fid}/files/a", "view=true", 200, 10],
    ]
    lines = bench_report.condense(log)
    assert len(lines) == 2
    assert "POST /api/resolve [core] x3" in lines[0] and "one after another" in lines[0]
    assert "/api/acquisitions/{id}/files/*?view" in lines[1] and "up to 2 at once" in lines[1]
    # Reads of many files, one after another, make one line that says so.
    files = [
        [1.0 + i, 0.001, "core", "GET", f"/api/acquisitions/{fid}/files/f{i}", "", 200, 1]
        for i in range(3)
    ]
    (line,) = bench_report.condense(files)
    assert "x3 (3 files)" in line and "one after another" in line

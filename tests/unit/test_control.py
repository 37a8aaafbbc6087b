"""`fwfs status`'s pieces without a mount: the latency histogram, request kinds, the
control socket's protocol and its refusals, the human-readable report."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwfs import control
from fwfs.client.stats import _GROWTH, Histogram, RequestStats, kind_of
from fwfs.control import ControlError, ControlServer, ask

# ---- the histogram ----------------------------------------------------------------------------


def test_percentiles_are_within_one_bucket_of_the_true_value_and_never_below() -> None:
    h = Histogram()
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1 s, uniform
    for v in reversed(values):
        h.add(v)
    for p in (50, 90, 99):
        true = values[int(len(values) * p / 100) - 1]
        got = h.percentile(p)
        assert true <= got <= true * _GROWTH, (p, true, got)
    assert h.percentile(100) == pytest.approx(1.0)
    assert h.count == 1000
    assert h.largest == 1.0


def test_a_percentile_never_exceeds_the_largest_value() -> None:
    h = Histogram()
    h.add(0.0101)
    assert h.percentile(50) == h.percentile(99) == 0.0101


def test_an_empty_histogram_says_zero_and_huge_values_land_in_the_last_bucket() -> None:
    h = Histogram()
    assert h.percentile(50) == 0.0
    h.add(10_000.0)
    assert h.percentile(99) == 10_000.0


def test_request_stats_from_many_threads_lose_no_count() -> None:
    stats = RequestStats()

    def work() -> None:
        for i in range(2000):
            stats.record("range", 0.001 * (i % 50), 100, failed=i % 10 == 0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.add_bytes("download", 5)
    snap = stats.snapshot()
    assert snap["requests"] == 8000
    assert snap["by_kind"]["range"]["count"] == 8000
    assert snap["by_kind"]["range"]["errors"] == 800
    assert snap["bytes_fetched"] == 800_000 + 5
    assert set(snap["by_kind"]) == {"range"}  # a kind never asked is not shown
    assert 0 < snap["by_kind"]["range"]["p50_ms"] <= snap["by_kind"]["range"]["p99_ms"]


@pytest.mark.parametrize(
    ("method", "path", "params", "headers", "signed", "kind"),
    [
        ("POST", "/resolve", None, None, False, "list"),
        ("GET", "/groups", {"limit": "250"}, None, False, "list"),
        ("GET", "/projects/p1/subjects", {"limit": "250", "after_id": "x"}, None, False, "list"),
        ("POST", "/lookup", None, None, False, "lookup"),
        ("GET", "/containers/c1", None, None, False, "lookup"),
        ("GET", "/projects/p/files/a.zip", {"info": "true"}, None, False, "lookup"),
        ("GET", "/files/f1/versions", None, None, False, "lookup"),
        (
            "GET",
            "/projects/p/files/a.bin",
            {"view": "true"},
            {"Range": "bytes=0-9"},
            False,
            "range",
        ),
        ("GET", "", None, {"Range": "bytes=0-9"}, True, "range"),
        ("GET", "/projects/p/files/a.bin", {"view": "true"}, None, False, "download"),
        ("GET", "/projects/p/files/a.zip", {"member": "x/y"}, None, False, "download"),
        ("GET", "/files/f1/download", None, None, False, "download"),
        ("POST", "/projects/p/files", None, None, False, "upload"),
        ("POST", "/projects/p/files", {"ticket": ""}, None, False, "upload"),
        ("PUT", "", None, None, True, "upload"),
        ("POST", "/sessions", None, None, False, "create"),
        ("PUT", "/sessions/s1", None, None, False, "modify"),
        ("DELETE", "/projects/p/files/a.bin", None, None, False, "delete"),
        ("DELETE", "/sessions/s1", {"delete_reason": "test_data"}, None, False, "delete"),
        ("POST", "/files/f1/move", None, None, False, "move"),
        ("GET", "/auth/status", None, None, False, "config"),
        ("GET", "/config", None, None, False, "config"),
        ("GET", "/version", None, None, False, "config"),
    ],
)
def test_request_kinds(
    method: str, path: str, params: Any, headers: Any, signed: bool, kind: str
) -> None:
    assert kind_of(method, path, params, headers, signed) == kind


# ---- the control socket -----------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ControlServer]:
    asked: list[dict[str, Any]] = []

    def status(request: dict[str, Any]) -> dict[str, Any]:
        asked.append(request)
        return {"answer": 42, "asked": len(asked)}

    def broken(request: dict[str, Any]) -> None:
        raise ValueError("the handler failed")

    server = ControlServer(tmp_path / "run" / "x.sock", {"status": status, "broken": broken})
    server.start()
    yield server
    server.close()


def test_one_question_one_answer(served: ControlServer) -> None:
    assert ask(served.path, {"op": "status"}) == {"answer": 42, "asked": 1}
    assert ask(served.path, {"op": "status"}) == {"answer": 42, "asked": 2}


def test_the_socket_and_its_directory_are_private(served: ControlServer) -> None:
    assert stat.S_IMODE(served.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.path.parent.stat().st_mode) == 0o700
    assert stat.S_ISSOCK(served.path.stat().st_mode)


def test_unknown_ops_and_failing_handlers_are_errors_and_the_channel_goes_on(
    served: ControlServer,
) -> None:
    with pytest.raises(ControlError, match="unknown op 'nope'"):
        ask(served.path, {"op": "nope"})
    with pytest.raises(ControlError, match="the handler failed"):
        ask(served.path, {"op": "broken"})
    # Not JSON at all.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(served.path))
        s.sendall(b"hello\n")
        s.shutdown(socket.SHUT_WR)
        answer = json.loads(s.makefile().read())
    assert answer["ok"] is False and "bad request" in answer["error"]
    assert ask(served.path, {"op": "status"})["answer"] == 42


def test_another_user_is_refused(tmp_path: Path) -> None:
    """The server answers its own uid only (SO_PEERCRED): here it is told its owner is
    someone else, so this process is the stranger."""
    server = ControlServer(tmp_path / "y.sock", {"status": lambda r: "secret"}, uid=os.getuid() + 1)
    server.start()
    try:
        with pytest.raises(ControlError, match="refused: only the user who mounted may ask"):
            ask(server.path, {"op": "status"})
    finally:
        server.close()


def test_a_path_too_long_for_a_unix_socket_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = ControlServer(deep / "z.sock", {"status": lambda r: "ok"})
    server.start()
    try:
        assert len(str(server.path)) > 108
        assert ask(server.path, {"op": "status"}) == "ok"
    finally:
        server.close()
    assert not server.path.exists()


def test_no_daemon_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no fwfs daemon answers"):
        ask(tmp_path / "none.sock", {"op": "status"})


def test_a_stale_socket_is_replaced_and_closing_removes_only_its_own(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    first = ControlServer(path, {"status": lambda r: 1})
    first.start()
    second = ControlServer(path, {"status": lambda r: 2})
    second.start()
    try:
        assert ask(path, {"op": "status"}) == 2
        first.close()  # the old daemon going away leaves the new one's socket
        assert ask(path, {"op": "status"}) == 2
    finally:
        second.close()
    assert not path.exists()


def test_not_an_fwfs_mount(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    assert control.status_command(tmp_path, False, sys.stdout, sys.stderr) == 1
    assert "is not an fwfs mount point" in capsys.readouterr().err
    assert control.refresh_command(tmp_path / "x", sys.stdout, sys.stderr) == 1
    assert "is not inside an fwfs mount" in capsys.readouterr().err


def test_the_report_reads_as_text() -> None:
    report = {
        "mountpoint": "/mnt/fw",
        "pid": 7,
        "site": "https://fw.example/api",
        "uptime_s": 3.0,
        "read_only": False,
        "memory_cache": {"hits": 3, "misses": 1, "blocks": 4, "bytes_cached": 1 << 19},
        "disk_cache": "off",
        "bytes_served": 1 << 20,
        "bytes_fetched": 1 << 19,
        "requests": {
            "total": 2,
            "by_kind": {
                "range": {
                    "count": 2,
                    "errors": 0,
                    "bytes": 1 << 19,
                    "p50_ms": 1.0,
                    "p90_ms": 2.0,
                    "p99_ms": 3.0,
                }
            },
        },
        "uploads": {"failed": [{"path": "/g/p/x.txt", "size": 5, "error": "HTTP 503"}]},
        "errors": {"ENOENT": 2},
    }
    text = control.render(report)
    assert "memory    3 hits, 1 misses (75% hits)" in text
    assert "disk      off" in text
    assert "served 1.0 MiB, fetched 512.0 KiB" in text
    assert "  range          2       0   512.0 KiB       1.0       2.0       3.0" in text
    assert "uploads   0 running, 0 queued, 1 failed" in text
    assert "  failed  /g/p/x.txt (5 B): HTTP 503" in text
    assert "errors    ENOENT 2" in text

"""`fwfs status` and `fwfs refresh` against a running mount: what the report says is what
the site's access log and the programs saw; the channel adds nothing to the tree and
answers only the user who mounted."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from mountkit import (
    ACQ,
    LIVE,
    PROJECT,
    Mount,
    Scratch,
    errno_of,
    fwfs,
    quiet_mark,
    recovery_entries,
    requests_since,
    stop_mount,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
SETPRIV = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def status(mount: Mount) -> dict[str, Any]:
    done = fwfs("status", str(mount.path), "--json")
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def kind(entry: dict[str, Any]) -> str:
    """The kind of one access-log entry, as a person reads the API (independently of the
    client's own naming, fwfs/client/stats.py)."""
    method, path = entry["method"], entry["path"].removeprefix("/api")
    query = parse_qs(entry.get("query") or "", keep_blank_values=True)
    if method == "POST" and path == "/resolve":
        return "list"
    if method == "GET" and entry.get("range"):
        return "range"
    if method == "GET" and path in ("/auth/status", "/config", "/version"):
        return "config"
    if method == "POST" and path.endswith("/files"):
        return "upload"
    if method == "GET" and "limit" in query:
        return "list"
    return f"{method} {path}"


def counts(report: dict[str, Any]) -> Counter[str]:
    return Counter({k: v["count"] for k, v in report["requests"]["by_kind"].items()})


def test_status_counts_what_the_site_and_the_programs_saw(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(scratch.site)
    assert sorted(os.listdir(mount.path)) == ["g"]  # nothing added to the tree
    mark = quiet_mark(scratch.site)
    before = status(mount)

    assert sorted(os.listdir(mount / PROJECT)) == ["notes.txt", "sub-01"]
    path = mount / PROJECT / "notes.txt"
    assert path.read_bytes() == Scratch.NOTES
    assert errno_of(lambda: os.stat(mount / PROJECT / "no-such-file")) == errno.ENOENT
    # The same bytes again, once the kernel has dropped its pages: from the block cache.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    reads_before_reread = sum(1 for e in requests_since(scratch.site, mark) if e.get("range"))
    assert path.read_bytes() == Scratch.NOTES
    entries = requests_since(scratch.site, mark)
    after = status(mount)

    # Requests: the same kinds, the same counts as the access log.
    asked = counts(after) - counts(before)
    assert asked == Counter(kind(e) for e in entries), entries
    assert after["requests"]["total"] - before["requests"]["total"] == len(entries)
    served = sum(e["bytes"] for e in entries if e.get("range"))
    assert after["bytes_fetched"] - before["bytes_fetched"] == served == len(Scratch.NOTES)
    assert after["requests"]["by_kind"]["range"]["bytes"] == served
    for k in after["requests"]["by_kind"].values():
        assert 0 < k["p50_ms"] <= k["p90_ms"] <= k["p99_ms"] <= k["max_ms"]
    # Both reads reached the programs; the second was no request, a cache hit.
    assert after["bytes_served"] - before["bytes_served"] == 2 * len(Scratch.NOTES)
    assert sum(1 for e in entries if e.get("range")) == reads_before_reread == 1
    assert after["memory_cache"]["hits"] > before["memory_cache"]["hits"]
    assert after["memory_cache"]["misses"] >= 1
    assert after["disk_cache"] == "off"
    # Errors by errno: the miss above.
    assert after["errors"].get("ENOENT", 0) - before["errors"].get("ENOENT", 0) == 1
    # The key is nowhere in the report.
    assert scratch.site.api_key not in json.dumps(after)
    # The text report says the same for people.
    text = fwfs("status", str(mount.path))
    assert text.returncode == 0, text.stderr
    assert "memory    " in text.stdout and "ENOENT" in text.stdout
    assert scratch.site.api_key not in text.stdout + mount.log()
    assert sorted(os.listdir(mount.path)) == ["g"]


def test_status_names_a_failed_upload(scratch: Scratch, mount_site: Callable[..., Mount]) -> None:
    mount = mount_site(scratch.site)
    scratch.site.set_faults(fail_uploads=3)
    with pytest.raises(OSError):
        (mount / ACQ / "lost.txt").write_bytes(b"the site said no\n")
    wait_for(lambda: bool(recovery_entries(mount.spool)), what="lost.txt in recovery/")
    report = status(mount)
    [failed] = report["uploads"]["failed"]
    assert failed["path"] == f"/{ACQ}/lost.txt"
    assert failed["size"] == len(b"the site said no\n") and failed["error"]
    assert report["uploads"]["running"] == report["uploads"]["queued"] == []
    assert report["requests"]["by_kind"]["upload"]["errors"] >= 1
    assert report["errors"].get("EIO", 0) >= 1  # close() failed with it
    assert "lost.txt" in fwfs("status", str(mount.path)).stdout


def test_refresh_lists_a_directory_again_now(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    import flywheel

    mount = mount_site(scratch.site, ttl=300)
    folder = mount / ACQ
    assert sorted(os.listdir(folder)) == ["scan.zip"]
    scratch.acquisition.upload_file(flywheel.FileSpec("new.txt", b"added behind its back\n"))
    mark = quiet_mark(scratch.site)
    assert sorted(os.listdir(folder)) == ["scan.zip"]  # within the TTL
    assert requests_since(scratch.site, mark) == []
    # Refresh from the project down: the acquisition's listing is below it.
    done = fwfs("refresh", str(mount / PROJECT))
    assert done.returncode == 0, done.stderr
    assert "forgot" in done.stdout
    assert requests_since(scratch.site, mark) == []  # refresh itself costs nothing
    assert "new.txt" in os.listdir(folder)
    listed = [e for e in requests_since(scratch.site, mark) if kind(e) == "list"]
    # The acquisition, and the directories on the way to it, each listed once.
    assert 1 <= len(listed) <= 4, listed
    assert (folder / "new.txt").read_bytes() == b"added behind its back\n"


def test_status_of_what_is_not_a_mount_fails_clearly(tmp_path: Path) -> None:
    done = fwfs("status", str(tmp_path))
    assert done.returncode != 0
    assert "is not an fwfs mount point" in done.stderr
    done = fwfs("refresh", str(tmp_path / "x"))
    assert done.returncode != 0 and "is not inside an fwfs mount" in done.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user (setpriv)")
def test_another_user_is_refused(scratch: Scratch, mount_site: Callable[..., Mount]) -> None:
    """Even with the socket's directory and the socket opened to all by mistake, the
    daemon answers only the user who mounted (SO_PEERCRED)."""
    base = Path(tempfile.mkdtemp(prefix="fwfs-status-", dir="/tmp"))
    try:
        base.chmod(0o755)
        cache = base / "cache"
        env = {
            "HOME": str(base),
            "XDG_CACHE_HOME": str(cache),
            "FWFS_API_KEY": scratch.site.api_key,
        }
        mount = mount_site(scratch.site, bare_env=env, args=["--spool-dir", str(base / "spool")])
        mine = fwfs("status", str(mount.path), "--json", XDG_CACHE_HOME=str(cache))
        assert mine.returncode == 0, mine.stderr
        run = cache / "fwfs" / "run"
        for d in (cache, cache / "fwfs", run):
            d.chmod(0o755)
        [sock] = run.glob("*.sock")
        sock.chmod(0o666)
        other = subprocess.run(
            [*SETPRIV, sys.executable, "-m", "fwfs", "status", str(mount.path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=REPO,
            env={"PATH": os.environ["PATH"], "HOME": str(base), "XDG_CACHE_HOME": str(cache)},
        )
        assert other.returncode != 0
        # The client sees a stranger's socket and hangs up; the daemon refuses it anyway.
        assert "belongs to uid 0, not to you" in other.stderr, other.stderr
        assert "requests" not in other.stdout
        wait_for(lambda: "refused a request from uid 65534" in mount.log(), what="the refusal")
    finally:
        for m in [m for m in LIVE if str(m.spool).startswith(str(base))]:
            stop_mount(m)
        subprocess.run(["rm", "-rf", str(base)], check=False)


def test_status_shows_the_disk_cache_when_there_is_one(
    scratch: Scratch, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    cache = ["--disk-cache", "64M", "--cache-dir", str(tmp_path / "cache")]
    first = mount_site(scratch.site, args=cache)
    assert (first / PROJECT / "notes.txt").read_bytes() == Scratch.NOTES
    report = status(first)
    assert report["disk_cache"]["misses"] >= 1 and report["disk_cache"]["hits"] == 0
    wait_for(lambda: status(first)["disk_cache"]["writes"] >= 1, what="the block on disk")
    stop_mount(first)
    second = mount_site(scratch.site, args=cache)
    mark = quiet_mark(scratch.site)
    assert (second / PROJECT / "notes.txt").read_bytes() == Scratch.NOTES
    report = status(second)
    assert report["disk_cache"]["hits"] >= 1
    assert report["bytes_served"] == len(Scratch.NOTES) and report["bytes_fetched"] == 0
    assert not [e for e in requests_since(scratch.site, mark) if e.get("range")]
    assert "disk      1 hits" in fwfs("status", str(second.path)).stdout

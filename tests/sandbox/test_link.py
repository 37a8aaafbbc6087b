"""`fwfs serve --rtt-ms N --bandwidth-mbit M`: the emulated network link in front of the site.

Real sockets and wall-clock time: lower bounds are the link's promise (a byte never arrives
early), upper bounds are generous because the machine is shared and noisy.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from fwfs.sandbox import demodata
from fwfs.sandbox.server import Sandbox, ServeOptions

pytestmark = pytest.mark.timeout(120)

RTT = 0.040
MBIT = 200
BIG_MB = 20  # big.bin: 20 MiB, 0.84 s at 200 Mbit/s
BIG_SECONDS = (BIG_MB << 20) * 8 / (MBIT * 1e6)
SLACK = 0.5  # for a loaded machine


@pytest.fixture(scope="module")
def linked(start_shared_site: Callable[..., Any]) -> Any:
    """A demo site over plain HTTP behind a 40 ms, 200 Mbit/s link."""
    return start_shared_site(rtt_ms=RTT * 1000, bandwidth_mbit=MBIT, big_file_mb=BIG_MB)


@pytest.fixture(scope="module")
def strict_linked(start_shared_site: Callable[..., Any]) -> Any:
    """`--strict` (TLS, downloads redirected to a storage listener) behind the same link."""
    return start_shared_site(
        strict=True, rtt_ms=RTT * 1000, bandwidth_mbit=MBIT, big_file_mb=BIG_MB
    )


@pytest.fixture(scope="module")
def big_sha(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What big.bin holds: the seed's own bytes, made again here."""
    path = tmp_path_factory.mktemp("link") / "big.bin"
    demodata.random_bytes_file(path, BIG_MB << 20, seed=BIG_MB)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    path.unlink()
    return sha


def big_bin_acquisition(site: Any) -> str:
    """The id of the acquisition holding big.bin (subjects shown, as --strict wants asked)."""
    path = ["flywheel", "Anxiety Study", "sub-01", "ses-baseline", "T1w"]
    answer = requests.post(
        site.api_url + "/resolve",
        json={"path": path},
        headers={**site.headers(), "x-accept-feature": "Safe-Redirect,Subject-Container"},
        verify=site.verify,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["path"][-1]["_id"])


def big_bin_url(site: Any) -> str:
    return f"{site.api_url}/acquisitions/{big_bin_acquisition(site)}/files/big.bin"


def timed_download(site: Any, url: str) -> tuple[float, str]:
    sha = hashlib.sha256()
    start = time.perf_counter()
    with requests.get(
        url, headers=site.headers(), verify=site.verify, stream=True, timeout=30
    ) as resp:
        resp.raise_for_status()
        for block in resp.iter_content(1 << 20):
            sha.update(block)
    return time.perf_counter() - start, sha.hexdigest()


def test_ready_file_announces_the_link(linked: Any) -> None:
    assert linked.link is not None
    assert (linked.link["rtt_ms"], linked.link["bandwidth_mbit"]) == (RTT * 1000, MBIT)
    # The printed keys name the link's port, the only one announced.
    assert linked.api_key.startswith(f"127.0.0.1:{linked.port}:")
    # The site's own listener (`--forward PUBLIC=HOST:PRIVATE` of the link) is not announced.
    argv = Path(f"/proc/{linked.link['pid']}/cmdline").read_bytes().decode().split("\0")
    forwards = [value for flag, value in itertools.pairwise(argv) if flag == "--forward"]
    assert len(forwards) == 1, argv
    assert linked.port != int(forwards[0].rsplit(":", 1)[1])


def test_a_request_costs_its_round_trips(linked: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", linked.port, timeout=10)
    try:
        start = time.perf_counter()
        conn.request("GET", "/api/version")
        first = conn.getresponse()
        first.read()
        fresh = time.perf_counter() - start
        start = time.perf_counter()
        conn.request("GET", "/api/version")
        second = conn.getresponse()
        second.read()
        reused = time.perf_counter() - start
    finally:
        conn.close()
    assert first.status == second.status == 200
    # A new connection: the handshake's round trip, then the request's.
    assert 2 * RTT <= fresh < 2 * RTT + SLACK
    assert RTT <= reused < RTT + SLACK


def test_a_download_is_capped_at_the_bandwidth(linked: Any, big_sha: str) -> None:
    elapsed, sha = timed_download(linked, big_bin_url(linked))
    assert sha == big_sha
    assert BIG_SECONDS <= elapsed < 3 * BIG_SECONDS + SLACK


def test_parallel_downloads_share_the_link(linked: Any) -> None:
    url = big_bin_url(linked)
    times: list[float] = []
    threads = [
        threading.Thread(target=lambda: times.append(timed_download(linked, url)[0]))
        for _ in range(2)
    ]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    total = time.perf_counter() - start
    assert len(times) == 2
    # Two downloads over one link take as long as both in a row: the sum is M, not 2M.
    assert total >= 2 * BIG_SECONDS * 0.95
    assert max(times) < 6 * BIG_SECONDS + SLACK


def test_an_upload_is_capped_at_the_bandwidth(linked: Any, tmp_path: Path) -> None:
    import flywheel

    fw = linked.client()
    group = f"g-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(group, "Link"))
    project = fw.get_group(group).add_project(label="Uploads")
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(10 << 20))
    start = time.perf_counter()
    project.upload_file(str(local))
    elapsed = time.perf_counter() - start
    # The client-to-site direction is a link of its own, at the same rate.
    seconds = (10 << 20) * 8 / (MBIT * 1e6)
    assert seconds <= elapsed < 3 * seconds + 4 * RTT + SLACK
    assert fw.download_file_from_project_as_data(project.id, "up.bin") == local.read_bytes()


def test_sdk_and_redirected_downloads_cross_the_link(
    strict_linked: Any, tmp_path: Path, big_sha: str
) -> None:
    fw = strict_linked.client()
    start = time.perf_counter()
    assert fw.get_current_user().email == "ada@fwfs.example"
    assert RTT <= time.perf_counter() - start < 3 * RTT + SLACK

    url = big_bin_url(strict_linked)
    moved = requests.get(
        url, headers=strict_linked.headers(), verify=strict_linked.verify, allow_redirects=False
    )
    assert moved.status_code == 302
    location = urlsplit(moved.headers["Location"])
    assert strict_linked.storage_url == f"https://127.0.0.1:{location.port}"

    # The SDK follows the 302 to storage: those bytes cross the link too, at its rate.
    dest = tmp_path / "big.bin"
    start = time.perf_counter()
    fw.download_file_from_acquisition(big_bin_acquisition(strict_linked), "big.bin", str(dest))
    elapsed = time.perf_counter() - start
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == big_sha
    assert BIG_SECONDS <= elapsed < 3 * BIG_SECONDS + SLACK
    storage = strict_linked.wait_for_log(lambda e: e["listener"] == "storage", count=1)
    assert storage and storage[-1]["status"] == 200


def test_tls_handshake_pays_its_round_trips(strict_linked: Any) -> None:
    start = time.perf_counter()
    resp = requests.get(strict_linked.url + "/api/version", verify=strict_linked.verify)
    elapsed = time.perf_counter() - start
    assert resp.status_code == 200
    # TCP's handshake, TLS 1.3's one round trip, then the request's.
    assert 3 * RTT <= elapsed < 3 * RTT + SLACK


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone too: its parent has not reaped it yet.
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_the_link_ends_with_the_site(start_site: Callable[..., Any], how: int) -> None:
    site = start_site(demo=False, rtt_ms=10)
    pid = site.link["pid"]
    assert requests.get(site.url + "/api/version", timeout=10).status_code == 200
    site.proc.send_signal(how)
    site.proc.wait(10)
    assert gone(pid), f"link process {pid} outlived its site ({how})"


def test_no_threads_or_processes_left_after_stop(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    site = Sandbox(ServeOptions(data=tmp_path / "data", rtt_ms=10, bandwidth_mbit=100))
    site.start()
    assert site.link is not None
    assert requests.get(site.url + "/api/version", timeout=10).status_code == 200
    site.stop()
    assert site.link.proc.returncode is not None
    deadline = time.monotonic() + 5
    while set(threading.enumerate()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(threading.enumerate()) - before == set()

"""Uploads through the signed-URL flow of a sandbox whose storage fails on purpose
(`POST /sandbox/faults {"fail_signed_puts": N}` or `{"refuse_signed_puts": N}`): what
the close of a file costs on the wire, counted in the site's access log.

A PUT that storage answers 503 is sent again alone, on the same ticket; a PUT refused as
for an expired URL (403) gets the upload a new ticket; a storage that never stores fails
the close with EIO after three PUTs, its bytes kept in the spool's recovery/.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flywheel
import pytest

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS
from fwfs.uploads import RetryPolicy

DATA = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(scope="module")
def signed_site(start_shared_site: Any) -> Any:
    """A private site (its fault switch is site-wide) that asks for signed-URL uploads."""
    return start_shared_site(signed_url=True)


@pytest.fixture(scope="module")
def project_path(signed_site: Any) -> str:
    fw = signed_site.client()
    gid = f"upload-faults-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "upload fault tests"))
    fw.get_group(gid).add_project(label="faults")
    return f"/{gid}/faults"


@pytest.fixture
def fs(signed_site: Any, tmp_path: Path) -> Iterator[FlywheelFS]:
    """A writable model over the site, with the mount's upload policy but no waits."""
    client = FlywheelClient(ClientConfig.from_api_key(signed_site.api_key, total_timeout=10))
    model = FlywheelFS(
        client,
        MountConfig(
            read_only=False, spool_dir=tmp_path / "spool", uid=os.getuid(), gid=os.getgid()
        ),
        client.auth_status()["user_id"],
        upload_retry=RetryPolicy(attempts=3, backoff=0),
    )
    yield model
    model.close()
    client.close()


def write_and_close(fs: FlywheelFS, path: str, data: bytes) -> None:
    fh = fs.create(path).fh
    fs.write(fh, 0, data)
    fs.release(fh)


def sent(site: Any, mark: int) -> dict[str, int]:
    """The upload's requests since `mark`, by what they are."""
    counts: dict[str, int] = {}
    for e in site.requests_since(mark):
        if e["method"] == "PUT" and e["path"].startswith("/sandbox-upload/"):
            what = f"PUT {e['status']}"
        elif e["method"] == "POST" and e["path"].endswith("/files"):
            what = "finish" if "ticket=" in e["query"] and e["query"] != "ticket=" else "ticket"
        else:
            continue
        counts[what] = counts.get(what, 0) + 1
    return counts


def test_the_fault_switch_says_what_is_armed(signed_site: Any) -> None:
    assert signed_site.set_faults(fail_signed_puts=2) == {
        "fail_uploads": 0,
        "fail_signed_puts": 2,
    }
    assert signed_site.set_faults(fail_signed_puts=0) == {
        "fail_uploads": 0,
        "fail_signed_puts": 0,
    }
    assert signed_site.set_faults() == {"fail_uploads": 0}


def test_a_put_storage_fails_once_is_sent_again_on_the_same_ticket(
    signed_site: Any, project_path: str, fs: FlywheelFS
) -> None:
    signed_site.set_faults(fail_signed_puts=1)
    mark = signed_site.quiet_mark()
    write_and_close(fs, f"{project_path}/busy.bin", DATA)
    assert sent(signed_site, mark) == {"ticket": 1, "PUT 503": 1, "PUT 200": 1, "finish": 1}
    fw = signed_site.client()
    project = fw.lookup(project_path.strip("/"))
    assert project.read_file("busy.bin") == DATA


def test_a_put_refused_as_expired_gets_a_new_ticket(
    signed_site: Any, project_path: str, fs: FlywheelFS
) -> None:
    signed_site.set_faults(refuse_signed_puts=1)
    mark = signed_site.quiet_mark()
    write_and_close(fs, f"{project_path}/expired.bin", DATA)
    assert sent(signed_site, mark) == {"ticket": 2, "PUT 403": 1, "PUT 200": 1, "finish": 1}
    project = signed_site.client().lookup(project_path.strip("/"))
    assert project.read_file("expired.bin") == DATA


def test_a_storage_that_never_stores_fails_the_close_after_three_puts(
    signed_site: Any, project_path: str, fs: FlywheelFS
) -> None:
    signed_site.set_faults(fail_signed_puts=10)
    try:
        mark = signed_site.quiet_mark()
        with pytest.raises(FwfsError) as info:
            write_and_close(fs, f"{project_path}/never.bin", DATA)
        assert info.value.errno == errno.EIO
        assert sent(signed_site, mark) == {"ticket": 1, "PUT 503": 3}
    finally:
        left = signed_site.set_faults(fail_signed_puts=0)
    assert left["fail_signed_puts"] == 0
    assert fs.writes is not None
    [kept] = list(fs.writes.spool.recovery.glob("*.data"))
    assert kept.read_bytes() == DATA

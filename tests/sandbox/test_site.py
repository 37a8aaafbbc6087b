"""The sandbox as a site: persistence, users and permissions, file versions, Range, tickets,
errors, signed-URL uploads, the fault switch, the access log and awkward names.

Driven through the official SDK where it has a call for the thing, and through raw HTTP
(`requests`) where the user-visible fact is a status code or a header.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import flywheel
import pytest
import requests

pytestmark = pytest.mark.timeout(60)

PARTICIPANTS_CSV = (
    b"participant_id,sex,age,group\n"
    b"sub-01,F,34,anxiety\n"
    b"sub-02,M,29,control\n"
    b"sub-03,F,41,anxiety\n"
    b"sub-04 Zo\xc3\xab,F,38,control\n"
)


def query(entry: dict[str, Any]) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(entry["query"], keep_blank_values=True).items()}


def new_group_and_project(fw: Any, label: str = "Scratch") -> Any:
    """A project in a new group, on a private site."""
    gid = f"g-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "Private"))
    return fw.get_group(gid).add_project(label=label)


# ---- starting -------------------------------------------------------------------------


def test_ready_file_and_banner(demo_site: Any) -> None:
    ready = demo_site.workdir / "ready.json"
    assert ready.stat().st_mode & 0o777 == 0o600  # it holds API keys
    assert demo_site.info["pid"] == demo_site.proc.pid
    assert demo_site.url.startswith("http://127.0.0.1:") and demo_site.port > 0
    assert demo_site.api_key == f"127.0.0.1:{demo_site.port}:__force_insecure:{demo_site.secret}"
    assert demo_site.secret != demo_site.readonly_secret
    banner = (demo_site.workdir / "stdout.txt").read_text()
    assert f"API key (read-write): {demo_site.api_key}\n" in banner
    assert f"API key (read-only):  {demo_site.readonly_api_key}\n" in banner


# ---- persistence -----------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_restart_keeps_containers_files_and_keys(start_site: Any) -> None:
    first = start_site()
    fw = first.client()
    group = fw.get_group("flywheel")
    project = group.add_project(label="Persisted Project")
    subject = project.add_subject(label="sub-persist", sex="female")
    payload = os.urandom(200_000)
    uploaded = project.upload_file(flywheel.FileSpec("persisted.bin", payload))[0]
    assert first.stop() == 0  # SIGTERM is a clean stop

    second = start_site(data=first.data, port=first.port)
    assert (second.api_key, second.readonly_api_key) == (first.api_key, first.readonly_api_key)
    fw = flywheel.Client(first.api_key)  # the key saved before the restart still works
    assert fw.get_project(project.id).label == "Persisted Project"
    assert fw.get_subject(subject.id).sex == "female"
    assert fw.lookup("flywheel/Persisted Project/sub-persist").id == subject.id
    again = fw.get_project(project.id).get_file("persisted.bin")
    assert (again.file_id, again.hash, again.size) == (uploaded.file_id, uploaded.hash, 200_000)
    assert fw.get_project(project.id).read_file("persisted.bin") == payload
    # --demo on an existing site does not seed the demo a second time.
    labels = sorted(p.label for p in fw.get_group("flywheel").projects())
    assert labels == ["Anxiety Study", "Persisted Project", "Pilot Imaging"]
    assert len(fw.lookup("flywheel/Anxiety Study").subjects()) == 4


# ---- the read-only user ----------------------------------------------------------------


def test_readonly_user_reads(fw: Any, fw_readonly: Any, anxiety: Any) -> None:
    me = fw_readonly.get_current_user()
    assert (me.firstname, me.lastname, me.email) == (
        "Rosalind",
        "Franklin",
        "rosalind@fwfs.example",
    )
    project = fw_readonly.lookup("flywheel/Anxiety Study")
    assert project.id == anxiety.id
    assert project.read_file("participants.csv") == PARTICIPANTS_CSV
    assert sorted(s.label for s in project.subjects()) == [
        "sub-01",
        "sub-02",
        "sub-03",
        "sub-04 Zoë",
    ]
    assert len(fw_readonly.jobs.find("state=failed")) == 2
    acq = fw_readonly.lookup("flywheel/Anxiety Study/sub-01/ses-baseline/T1w")
    assert len(acq.get_file_zip_info("T1w.dicom.zip").members) == 16


READONLY_WRITES = {
    "create group": lambda ro, p: ro.add_group(flywheel.Group("ro-" + uuid.uuid4().hex[:6], "x")),
    "create project": lambda ro, p: ro.add_project({"group": p.group, "label": "ro project"}),
    "create subject": lambda ro, p: ro.add_subject({"project": p.id, "label": "ro-subject"}),
    "update container": lambda ro, p: ro.get_project(p.id).update(label="renamed by reader"),
    "patch container info": lambda ro, p: ro.get_project(p.id).update_info({"hacked": True}),
    "delete container": lambda ro, p: ro.delete_project(p.id),
    "upload file": lambda ro, p: ro.get_project(p.id).upload_file(
        flywheel.FileSpec("notes.txt", b"overwritten by the reader\n")
    ),
    "update file": lambda ro, p: ro.get_project(p.id).update_file("notes.txt", modality="CT"),
    "patch file info": lambda ro, p: ro.get_project(p.id).update_file_info(
        "notes.txt", {"hacked": True}
    ),
    "delete file": lambda ro, p: ro.get_project(p.id).delete_file("notes.txt"),
    "add tag": lambda ro, p: ro.get_project(p.id).add_tag("reader-tag"),
}


@pytest.mark.parametrize("write", list(READONLY_WRITES))
def test_readonly_user_cannot_write(
    fw: Any, fw_readonly: Any, scratch_project: Any, write: str
) -> None:
    project = scratch_project
    project.update_info({"owner": "ada"})
    project.upload_file(flywheel.FileSpec("notes.txt", b"written by Ada\n"))
    before = fw.get_project(project.id)
    groups_before = sorted(g.id for g in fw.groups())
    projects_before = sorted(p.id for p in fw.projects())

    with pytest.raises(flywheel.ApiException) as raised:
        READONLY_WRITES[write](fw_readonly, project)
    assert raised.value.status == 403
    assert raised.value.reason  # the JSON message

    after = fw.get_project(project.id)
    assert after.label == before.label
    assert after.info == {"owner": "ada"}
    assert after.tags == []
    assert [(f.name, f.version, f.modality, f.info) for f in after.files] == [
        ("notes.txt", 1, None, {})
    ]
    assert after.read_file("notes.txt") == b"written by Ada\n"
    assert after.subjects() == []
    assert sorted(g.id for g in fw.groups()) == groups_before
    assert sorted(p.id for p in fw.projects()) == projects_before


def test_readonly_user_cannot_flip_the_fault_switch(demo_site: Any) -> None:
    resp = requests.post(
        demo_site.url + "/sandbox/faults",
        json={"fail_uploads": 5},
        headers=demo_site.headers(readonly=True),
        timeout=10,
    )
    assert resp.status_code == 403
    state = requests.post(
        demo_site.url + "/sandbox/faults", json={}, headers=demo_site.headers(), timeout=10
    )
    assert state.json() == {"fail_uploads": 0}


# ---- file versions ---------------------------------------------------------------------


def test_reupload_makes_version_two_and_keeps_version_one(
    demo_site: Any, fw: Any, scratch_project: Any
) -> None:
    project = scratch_project
    v1 = project.upload_file(flywheel.FileSpec("scan_notes.txt", b"first draft\n"))[0]
    v2 = project.upload_file(flywheel.FileSpec("scan_notes.txt", b"second, longer draft\n"))[0]
    assert (v1.version, v2.version) == (1, 2)
    assert v1.file_id != v2.file_id
    assert v1.hash != v2.hash
    assert v2.hash == "v0-sha384-" + hashlib.sha384(b"second, longer draft\n").hexdigest()

    # The container lists the newest version only; a plain download gets it.
    files = project.reload().files
    assert [(f.name, f.version, f.file_id) for f in files] == [("scan_notes.txt", 2, v2.file_id)]
    assert project.read_file("scan_notes.txt") == b"second, longer draft\n"

    # The old FileOutput still reads its own bytes (the SDK adds ?version=1) ...
    assert v1.read() == b"first draft\n"
    entry = demo_site.wait_for_log(
        lambda e: (
            e["path"].endswith(f"{project.id}/files/scan_notes.txt")
            and query(e).get("version") == "1"
        )
    )
    assert entry and entry[-1]["status"] == 200
    # ... and so does the raw API.
    url = f"{demo_site.api_url}/projects/{project.id}/files/scan_notes.txt"
    resp = requests.get(url, params={"version": 1}, headers=demo_site.headers(), timeout=10)
    assert (resp.status_code, resp.content) == (200, b"first draft\n")
    resp = requests.get(url, params={"version": 3}, headers=demo_site.headers(), timeout=10)
    assert resp.status_code == 404
    versions = fw.get_file_versions(v2.file_id)
    assert [(v.version, v.file_id) for v in versions] == [(1, v1.file_id), (2, v2.file_id)]


# ---- Range -----------------------------------------------------------------------------


def test_range_requests(demo_site: Any, fw: Any, anxiety: Any) -> None:
    url = f"{demo_site.api_url}/projects/{anxiety.id}/files/participants.csv"
    size = len(PARTICIPANTS_CSV)

    def get(rng: str) -> requests.Response:
        return requests.get(url, headers={**demo_site.headers(), "Range": rng}, timeout=10)

    middle = get("bytes=10-19")
    assert middle.status_code == 206
    assert middle.headers["Content-Range"] == f"bytes 10-19/{size}"
    assert middle.content == PARTICIPANTS_CSV[10:20]

    suffix = get("bytes=-12")
    assert suffix.status_code == 206
    assert suffix.headers["Content-Range"] == f"bytes {size - 12}-{size - 1}/{size}"
    assert suffix.content == PARTICIPANTS_CSV[-12:]

    open_ended = get(f"bytes={size - 5}-")
    assert (open_ended.status_code, open_ended.content) == (206, PARTICIPANTS_CSV[-5:])

    past_end = get(f"bytes={size}-")
    assert past_end.status_code == 416
    assert past_end.headers["Content-Range"] == f"bytes */{size}"

    whole = requests.get(url, headers=demo_site.headers(), timeout=10)
    assert (whole.status_code, whole.content) == (200, PARTICIPANTS_CSV)

    # The SDK passes Range through as it is asked to.
    data = fw.download_file_from_project_as_data(anxiety.id, "participants.csv", range="bytes=0-13")
    assert data == b"participant_id"
    with pytest.raises(flywheel.ApiException) as raised:
        fw.download_file_from_project_as_data(anxiety.id, "participants.csv", range="bytes=999-")
    assert raised.value.status == 416


def test_range_quirk_honours_range_only_with_view(start_site: Any) -> None:
    site = start_site(demo=False, range_quirk=True)
    project = new_group_and_project(site.client())
    payload = bytes(range(256)) * 40
    project.upload_file(flywheel.FileSpec("volume.bin", payload))
    url = f"{site.api_url}/projects/{project.id}/files/volume.bin"
    headers = {**site.headers(), "Range": "bytes=1000-1099"}

    ignored = requests.get(url, headers=headers, timeout=10)
    assert ignored.status_code == 200
    assert "Content-Range" not in ignored.headers
    assert ignored.content == payload

    honoured = requests.get(url, params={"view": "true"}, headers=headers, timeout=10)
    assert honoured.status_code == 206
    assert honoured.headers["Content-Range"] == f"bytes 1000-1099/{len(payload)}"
    assert honoured.content == payload[1000:1100]

    fw = site.client()
    assert (
        fw.download_file_from_project_as_data(project.id, "volume.bin", range="bytes=0-9")
        == payload
    )  # the SDK without view=True gets the whole file, like on Flywheel
    assert (
        fw.download_file_from_project_as_data(
            project.id, "volume.bin", range="bytes=0-9", view=True
        )
        == payload[:10]
    )


# ---- download tickets and authentication -----------------------------------------------


def test_download_ticket(demo_site: Any, anxiety: Any) -> None:
    url = anxiety.get_file_download_url("participants.csv")
    assert url.startswith(
        f"{demo_site.api_url}/projects/{anxiety.id}/files/participants.csv?ticket="
    )
    # No Authorization: the ticket is the credential.
    resp = requests.get(url, timeout=10)
    assert (resp.status_code, resp.content) == (200, PARTICIPANTS_CSV)

    base = url.split("?", 1)[0]
    bogus = requests.get(base, params={"ticket": "not-a-ticket"}, timeout=10)
    assert bogus.status_code == 401
    assert bogus.json()["message"]
    anonymous = requests.get(base, timeout=10)
    assert anonymous.status_code == 401


def test_unknown_key_gets_401_with_a_json_message(demo_site: Any) -> None:
    resp = requests.get(
        demo_site.api_url + "/users/self",
        headers={"Authorization": "scitran-user no-such-key"},
        timeout=10,
    )
    assert resp.status_code == 401
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body["message"], str) and body["message"]

    assert requests.get(demo_site.api_url + "/users/self", timeout=10).status_code == 401
    bad_key = demo_site.api_key.rsplit(":", 1)[0] + ":no-such-key"
    with pytest.raises(flywheel.ApiException) as raised:
        flywheel.Client(bad_key)
    assert raised.value.status == 401
    assert raised.value.reason == body["message"]


# ---- uploads: signed URLs, multipart signed URLs, the fault switch ---------------------


def test_signed_url_upload(start_site: Any, tmp_path: Path) -> None:
    site = start_site(demo=False, signed_url=True)
    fw = site.client()
    project = new_group_and_project(fw)
    local = tmp_path / "signed upload.txt"
    local.write_bytes(b"uploaded through a signed URL\n")

    uploaded = project.upload_file(str(local))
    assert [(f.name, f.size) for f in uploaded] == [("signed upload.txt", 30)]
    assert project.read_file("signed upload.txt") == b"uploaded through a signed URL\n"

    # GET /api/config, POST …/files?ticket=, PUT <signed URL>, POST …/files?ticket=<t>.
    files_path = f"/api/projects/{project.id}/files"
    site.wait_for_log(lambda e: e["path"] == files_path, count=2)
    flow = [
        e
        for e in site.access_log()
        if e["path"] in ("/api/config", files_path) or e["method"] == "PUT"
    ]
    assert [(e["method"], e["status"]) for e in flow] == [
        ("GET", 200),
        ("POST", 200),
        ("PUT", 200),
        ("POST", 200),
    ]
    config, start, put, finish = flow
    assert config["path"] == "/api/config"
    assert (start["path"], query(start)) == (files_path, {"ticket": ""})
    ticket = query(finish)["ticket"]
    assert finish["path"] == files_path and ticket
    assert put["path"].startswith("/sandbox-upload/") and ticket in put["path"]

    # Analyses send their ticket metadata as a list; the flow works for them too.
    analysis = project.add_analysis(label="signed outputs")
    analysis.upload_output(flywheel.FileSpec("result Zoë.csv", b"a,b\n1,2\n", "text/csv"))
    assert analysis.reload().files[0].name == "result Zoë.csv"
    assert analysis.read_file("result Zoë.csv") == b"a,b\n1,2\n"


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_multipart_signed_url_upload(start_site: Any, tmp_path: Path) -> None:
    # uploads.py gives a client that accepts multipart signed URLs one URL per 256 MiB:
    # 256 MiB + 1 byte is the smallest file the SDK uploads in two parts.
    size = (256 << 20) + 1
    site = start_site(demo=False, signed_url=True)
    fw = site.client()
    project = new_group_and_project(fw)
    local = tmp_path / "big.bin"
    seam = (128 << 20) + (256 << 10)  # where the SDK cuts the file in two
    marks = {0: os.urandom(64), seam - 32: os.urandom(64), size - 64: os.urandom(64)}
    with open(local, "wb") as fh:  # sparse but for the random marks
        fh.truncate(size)
        for offset, data in marks.items():
            fh.seek(offset)
            fh.write(data)
    sha = hashlib.sha384()
    with open(local, "rb") as fh:
        while block := fh.read(8 << 20):
            sha.update(block)

    try:
        uploaded = project.upload_file(str(local))[0]
        assert uploaded.size == size
        assert uploaded.hash == "v0-sha384-" + sha.hexdigest()
        puts = site.wait_for_log(lambda e: e["method"] == "PUT", count=2)
        assert [e["path"].rsplit("/", 1)[1] for e in puts] == ["0", "1"]
        assert all(e["status"] == 200 for e in puts)
        for offset, data in marks.items():
            got = fw.download_file_from_project_as_data(
                project.id, "big.bin", range=f"bytes={offset}-{offset + len(data) - 1}"
            )
            assert got == data
    finally:
        # pytest keeps old temp dirs: leave no 256 MiB behind.
        local.unlink()
        with contextlib.suppress(flywheel.ApiException):
            project.delete_file("big.bin")


def test_fault_switch_fails_the_next_upload_only(demo_site: Any, scratch_project: Any) -> None:
    resp = requests.post(
        demo_site.url + "/sandbox/faults",
        json={"fail_uploads": 1},
        headers=demo_site.headers(),
        timeout=10,
    )
    assert resp.json() == {"fail_uploads": 1}
    with pytest.raises(flywheel.ApiException) as raised:
        scratch_project.upload_file(flywheel.FileSpec("flaky.txt", b"attempt 1\n"))
    assert raised.value.status == 503
    assert scratch_project.reload().files == []

    uploaded = scratch_project.upload_file(flywheel.FileSpec("flaky.txt", b"attempt 2\n"))
    assert [(f.name, f.version) for f in uploaded] == [("flaky.txt", 1)]
    assert scratch_project.read_file("flaky.txt") == b"attempt 2\n"


# ---- the access log ---------------------------------------------------------------------


def test_access_log_records_every_request(demo_site: Any, anxiety: Any) -> None:
    marker = uuid.uuid4().hex
    url = f"{demo_site.api_url}/projects/{anxiety.id}/files/participants.csv"
    resp = requests.get(
        url,
        params={"marker": marker},
        headers={**demo_site.headers(), "Range": "bytes=0-3"},
        timeout=10,
    )
    assert resp.status_code == 206
    missing = requests.get(
        f"{demo_site.api_url}/projects/{anxiety.id}/files/no such file.txt",
        params={"marker": marker},
        headers=demo_site.headers(),
        timeout=10,
    )
    assert missing.status_code == 404

    entries = demo_site.wait_for_log(lambda e: marker in e["query"], count=2)
    fields = {"method", "path", "query", "range", "status", "bytes", "start", "duration"}
    assert len(entries) == 2
    assert all(fields <= set(e) for e in entries)
    ranged, not_found = entries
    assert ranged["method"] == "GET"
    assert ranged["path"] == f"/api/projects/{anxiety.id}/files/participants.csv"
    assert ranged["query"] == f"marker={marker}"
    assert (ranged["range"], ranged["status"], ranged["bytes"]) == ("bytes=0-3", 206, 4)
    assert isinstance(ranged["duration"], float) and 0 <= ranged["duration"] < 10
    assert abs(ranged["start"] - time.time()) < 60 and ranged["start"] <= not_found["start"]
    assert not_found["path"].endswith("/files/no such file.txt")
    assert (not_found["range"], not_found["status"]) == (None, 404)
    assert not_found["bytes"] == len(missing.content)


# ---- names ---------------------------------------------------------------------------


def test_zip_member_of_a_nested_path_with_spaces(demo_site: Any, scratch_project: Any) -> None:
    member = "derivatives with spaces/sub 01/scan notes #2.txt"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("derivatives with spaces/", b"")
        zf.writestr(member, b"nested member bytes\n" * 10)
        zf.writestr("top.txt", b"top\n")
    scratch_project.upload_file(flywheel.FileSpec("bundle.zip", buf.getvalue()))

    info = scratch_project.get_file_zip_info("bundle.zip")
    assert [(m.path, m.size) for m in info.members] == [
        ("derivatives with spaces/", 0),
        (member, 200),
        ("top.txt", 4),
    ]
    assert (
        scratch_project.read_file_zip_member("bundle.zip", member) == b"nested member bytes\n" * 10
    )
    sent = demo_site.wait_for_log(lambda e: query(e).get("member") == member)
    assert sent and sent[-1]["status"] == 200
    # The FileOutput's own methods reach the same member.
    entry = scratch_project.reload().get_file("bundle.zip")
    assert [m.path for m in entry.get_zip_info().members][1] == member
    assert entry.read_zip_member(member) == b"nested member bytes\n" * 10


@pytest.mark.parametrize(
    "name",
    [
        "scan notes.txt",
        "run #2.txt",
        "T1w+T2w.txt",
        "a b#c+d.nii.gz",
        "sub-04 Zoë.txt",
        "脑 scan #1+2.txt",
        'quote " in name.txt',
    ],
)
def test_awkward_file_names_round_trip(scratch_project: Any, tmp_path: Path, name: str) -> None:
    payload = f"contents of {name}\n".encode()
    local = tmp_path / name
    local.write_bytes(payload)
    uploaded = scratch_project.upload_file(str(local))
    assert [f.name for f in uploaded] == [name]
    assert [f.name for f in scratch_project.reload().files] == [name]
    assert scratch_project.read_file(name) == payload
    dest = tmp_path / "out.bin"
    scratch_project.download_file(name, str(dest))
    assert dest.read_bytes() == payload
    # A second upload from memory makes version 2 of the same name.
    again = scratch_project.upload_file(flywheel.FileSpec(name, payload + b"v2\n"))
    assert [(f.name, f.version) for f in again] == [(name, 2)]


# ---- containers and jobs created or read through the SDK ------------------------------


def test_subject_add_session_lands_under_that_subject(scratch_project: Any) -> None:
    subject = scratch_project.add_subject(label="sub-with-session")
    session = subject.add_session(label="ses-01")
    assert session.parents.subject == subject.id
    assert session.subject.label == "sub-with-session"
    assert [s.label for s in scratch_project.subjects()] == ["sub-with-session"]
    assert [s.label for s in subject.sessions()] == ["ses-01"]


def test_containers_created_through_the_sdk_land_where_asked(scratch_project: Any) -> None:
    # The paths that do not go through POST /api/sessions.
    subject = scratch_project.add_subject(label="sub-x")
    assert subject.parents.project == scratch_project.id
    analysis = subject.add_analysis(label="subject analysis")
    assert analysis.parent.id == subject.id
    assert [a.label for a in subject.reload().analyses] == ["subject analysis"]


def test_job_by_id(fw: Any) -> None:
    failed = fw.jobs.find_first("state=failed")
    job = fw.get_job(failed.id)
    assert job.id == failed.id
    assert job.gear_info.name == failed.gear_info.name
    assert job.failure_reason == failed.failure_reason

"""`fwfs serve --strict` and its single flags: each real-core refusal or reshaping, once.

Plain HTTP(S) with `requests`, and the official SDK where a user would use it. The sources of
each behaviour are in docs/SANDBOX.md ("Real-server behaviours").
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests

pytestmark = pytest.mark.timeout(120)

SUBJECT_FEATURE = {"x-accept-feature": "Safe-Redirect,Subject-Container"}


def post(
    site: Site, path: str, body: Any, member: bool = False, headers: dict[str, str] | None = None
) -> Any:
    return requests.post(
        site.api_url + path,
        json=body,
        headers={**site.headers(member=member), **(headers or {})},
        verify=site.verify,
        timeout=30,
    )


def get(site: Site, path: str, member: bool = False, **kwargs: Any) -> Any:
    headers = {**site.headers(member=member), **kwargs.pop("headers", {})}
    return requests.get(
        site.api_url + path, headers=headers, verify=site.verify, timeout=30, **kwargs
    )


def resolve(site: Site, path: list[str], member: bool = False, subjects: bool = True) -> Any:
    headers = SUBJECT_FEATURE if subjects else {}
    return post(site, "/resolve", {"path": path}, member, headers)


def node_id(site: Site, path: list[str]) -> str:
    answer = resolve(site, path)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["path"][-1]["_id"])


Site = Any  # tests/conftest.py's Site (conftest modules are not importable by name)


@pytest.fixture(scope="module")
def variant_site(start_shared_site: Any) -> Iterator[Site]:
    """The flags not in --strict, with signed URLs that live one second."""
    site = start_shared_site(
        old_core=True,
        redirect_ignores_range=True,
        signed_url=True,
        signed_url_ttl=1,
    )
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def scratch(strict_site: Site) -> str:
    """A project of Ada's own on the strict site, for writes."""
    gid = f"strict-{uuid.uuid4().hex[:8]}"
    assert post(strict_site, "/groups", {"_id": gid, "label": "strict tests"}).ok
    answer = post(strict_site, "/projects", {"group": gid, "label": "scratch"})
    assert answer.ok, answer.text
    return str(answer.json()["_id"])


def upload(site: Site, kind: str, cid: str, name: str, data: bytes) -> None:
    answer = requests.post(
        f"{site.api_url}/{kind}/{cid}/files",
        files={"file": (name, data)},
        headers=site.headers(),
        verify=site.verify,
        timeout=30,
    )
    assert answer.ok, answer.text


# ---- --gate-subjects, --trim-resolve ----------------------------------------------------


def test_subjects_only_for_clients_that_ask(strict_site: Site) -> None:
    without = resolve(strict_site, ["flywheel", "Anxiety Study"], subjects=False).json()
    kinds = {c["container_type"] for c in without["children"]}
    assert "subject" not in kinds and "session" in kinds

    # A path's element below a project is then a session: sub-01 is not found...
    gone = resolve(strict_site, ["flywheel", "Anxiety Study", "sub-01"], subjects=False)
    assert gone.status_code == 404
    ses = resolve(strict_site, ["flywheel", "Anxiety Study", "ses-followup"], subjects=False)
    assert ses.json()["path"][-1]["container_type"] == "session"

    # ... and the header (any case, anywhere in the list) brings the subject level back.
    with_ = resolve(strict_site, ["flywheel", "Anxiety Study"]).json()
    labels = [c["label"] for c in with_["children"] if c["container_type"] == "subject"]
    assert labels == ["sub-01", "sub-02", "sub-03", "sub-04 Zoë"]


def test_resolve_children_are_trimmed_but_lookup_is_whole(strict_site: Site) -> None:
    path = ["flywheel", "Anxiety Study", "sub-01", "ses-baseline"]
    children = resolve(strict_site, path).json()["children"]
    acqs = [c for c in children if c["container_type"] == "acquisition"]
    files = [c for c in children if c["container_type"] == "file"]
    assert acqs and files
    for acq in acqs:
        assert not {"files", "info", "tags", "collections"} & acq.keys(), acq.keys()
    assert all("info" not in f for f in files)
    analyses = [c for c in children if c["container_type"] == "analysis"]
    assert analyses and all("files" not in a for a in analyses)
    sessions = resolve(strict_site, path[:3]).json()["children"]
    assert not {"analyses", "age", "files", "info", "tags"} & sessions[0].keys()

    full = post(strict_site, "/lookup", {"path": [*path, "T1w"]}, headers=SUBJECT_FEATURE).json()
    assert {f["name"] for f in full["files"]} == {"T1w.dicom.zip", "T1w.nii.gz"}
    assert "info" in full and "tags" in full


# ---- --strict-permissions and the project-only member -----------------------------------


def test_project_member_sees_her_group_only_through_her_project(strict_site: Site) -> None:
    assert get(strict_site, "/groups", member=True).json() == []
    assert get(strict_site, "/groups/flywheel", member=True).status_code == 200
    anxiety = node_id(strict_site, ["flywheel", "Anxiety Study"])

    ok = resolve(strict_site, ["flywheel", f"<id:{anxiety}>"], member=True)
    assert ok.status_code == 200
    assert "sub-01" in [c.get("label") for c in ok.json()["children"]]
    top = resolve(strict_site, ["flywheel"], member=True).json()["children"]
    assert [c["label"] for c in top] == ["Anxiety Study"]
    projects = get(strict_site, "/projects", member=True).json()
    assert [p["label"] for p in projects] == ["Anxiety Study"]

    pilot = node_id(strict_site, ["flywheel", "Pilot Imaging"])
    assert resolve(strict_site, ["flywheel", "Pilot Imaging"], member=True).status_code == 403
    assert get(strict_site, f"/projects/{pilot}", member=True).status_code == 403
    assert get(strict_site, "/groups/radiology", member=True).status_code == 403
    # She writes in her project, nowhere else.
    renamed = requests.post(
        f"{strict_site.api_url}/projects/{pilot}/tags",
        json={"value": "grace-was-here"},
        headers=strict_site.headers(member=True),
        verify=strict_site.verify,
        timeout=30,
    )
    assert renamed.status_code == 403
    assert post(strict_site, "/groups", {"_id": "graces"}, member=True).status_code == 403


@pytest.mark.parametrize("which", ["demo_site", "strict_site"])
def test_permissions_show_real_membership(which: str, request: pytest.FixtureRequest) -> None:
    site: Site = request.getfixturevalue(which)
    group = get(site, "/groups/flywheel").json()
    anxiety = resolve(site, ["flywheel", "Anxiety Study"]).json()["path"][-1]
    pilot = resolve(site, ["flywheel", "Pilot Imaging"]).json()["path"][-1]
    grace = "grace@fwfs.example"
    assert grace not in [p["_id"] for p in group["permissions"]]
    assert grace not in [p["_id"] for p in pilot["permissions"]]
    mine = {p["_id"]: p["access"] for p in anxiety["permissions"]}
    assert mine == {"ada@fwfs.example": "rw", "rosalind@fwfs.example": "ro", grace: "rw"}
    me = requests.get(
        site.api_url + "/auth/status", headers=site.headers(member=True), verify=site.verify
    ).json()
    assert (me["user_id"], me["user_is_admin"]) == (grace, False)


# ---- --redirect-downloads and storage -----------------------------------------------------


def test_download_redirects_to_signed_storage(strict_site: Site) -> None:
    pid = node_id(strict_site, ["flywheel", "Anxiety Study"])
    url = f"/projects/{pid}/files/participants.csv"
    whole = get(strict_site, url)  # requests follows, dropping Authorization on the new port
    assert whole.status_code == 200 and whole.content.startswith(b"participant_id")

    moved = get(strict_site, url, allow_redirects=False)
    assert moved.status_code == 302
    location = moved.headers["Location"]
    assert strict_site.storage_url and location.startswith(strict_site.storage_url + "/")
    mark = strict_site.quiet_mark()
    with_key = requests.get(location, headers=strict_site.headers(), verify=strict_site.verify)
    assert with_key.status_code == 403
    part = requests.get(location, headers={"Range": "bytes=4-9"}, verify=strict_site.verify)
    assert part.status_code == 206 and part.content == whole.content[4:10]
    assert part.headers["Content-Range"] == f"bytes 4-9/{len(whole.content)}"
    forged = requests.get(location[:-4] + "0000", verify=strict_site.verify)
    assert forged.status_code == 403

    log = strict_site.requests_since(mark)
    assert [(e["listener"], e["status"]) for e in log] == [
        ("storage", 403),
        ("storage", 206),
        ("storage", 403),
    ]
    assert log[1]["bytes"] == 6


def test_signed_urls_expire_and_may_ignore_range(variant_site: Site) -> None:
    pid = node_id(variant_site, ["flywheel", "Anxiety Study"])
    moved = get(variant_site, f"/projects/{pid}/files/participants.csv", allow_redirects=False)
    assert moved.status_code == 302
    location = moved.headers["Location"]
    # --redirect-ignores-range: the whole file, with 200.
    whole = requests.get(location, headers={"Range": "bytes=0-3"})
    assert whole.status_code == 200 and len(whole.content) > 4
    time.sleep(2.1)  # --signed-url-ttl 1
    assert requests.get(location).status_code == 403


def test_sdk_downloads_through_the_redirect(strict_site: Site, tmp_path: Any) -> None:
    fw = strict_site.client()
    project = fw.lookup("flywheel/Anxiety Study")
    dest = tmp_path / "participants.csv"
    project.download_file("participants.csv", str(dest))
    direct = get(strict_site, f"/projects/{project.id}/files/participants.csv")
    assert dest.read_bytes() == direct.content


# ---- --default-page-limit, --max-limit ----------------------------------------------------


def test_finders_are_capped_and_limits_bounded(strict_site: Site, scratch: str) -> None:
    with requests.Session() as http:
        http.headers.update(strict_site.headers())
        for n in range(105):
            made = http.post(
                strict_site.api_url + "/subjects",
                json={"project": scratch, "label": f"s{n:03d}", "code": f"s{n:03d}"},
                verify=strict_site.verify,  # per request: REQUESTS_CA_BUNDLE beats Session.verify
            )
            assert made.ok, made.text
    subjects = f"/projects/{scratch}/subjects"
    assert len(get(strict_site, subjects).json()) == 100
    assert len(get(strict_site, subjects, params={"limit": 500}).json()) == 105
    refused = get(strict_site, subjects, params={"limit": 501})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["query", "limit"]
    assert "500" in refused.json()["message"]


# ---- --analysis-io-split ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["demo_site", "strict_site"])
def test_analysis_inputs_route(which: str, request: pytest.FixtureRequest) -> None:
    site: Site = request.getfixturevalue(which)
    path = ["flywheel", "Anxiety Study", "sub-01", "ses-baseline", "analyses"]
    aid = node_id(site, [*path, "dcm2niix 2018-09-12"])
    inputs = get(site, f"/analyses/{aid}/inputs/T1w.dicom.zip")
    assert inputs.status_code == 200 and inputs.content.startswith(b"PK")
    as_file = get(site, f"/analyses/{aid}/files/T1w.dicom.zip")
    assert as_file.status_code == (404 if which == "strict_site" else 200)
    assert get(site, f"/analyses/{aid}/files/dcm2niix.log").status_code == 200
    assert get(site, f"/analyses/{aid}/inputs/dcm2niix.log").status_code == 404


# ---- --audit-trail --------------------------------------------------------------------------


def test_deletes_need_a_reason(strict_site: Site, scratch: str) -> None:
    assert get(strict_site, "/config").json()["features"]["audit_trail"] is True
    upload(strict_site, "projects", scratch, "doomed.txt", b"bye")
    url = f"{strict_site.api_url}/projects/{scratch}/files/doomed.txt"
    kw: dict[str, Any] = {"headers": strict_site.headers(), "verify": strict_site.verify}
    assert requests.delete(url, **kw).status_code == 422
    assert requests.delete(url, params={"delete_reason": "boredom"}, **kw).status_code == 422
    assert requests.delete(url, params={"delete_reason": "test_data"}, **kw).status_code == 200
    sid = post(strict_site, "/subjects", {"project": scratch, "label": "gone"}).json()["_id"]
    subject = f"{strict_site.api_url}/subjects/{sid}"
    assert requests.delete(subject, **kw).status_code == 422
    ok = requests.delete(subject, params={"delete_reason": "container_is_empty"}, **kw)
    assert ok.status_code == 200


# ---- --info-delay -------------------------------------------------------------------------


def test_zip_info_is_slow(strict_site: Site) -> None:
    acq = ["flywheel", "Anxiety Study", "sub-01", "ses-baseline", "T1w"]
    aid = node_id(strict_site, acq)
    start = time.monotonic()
    listing = get(strict_site, f"/acquisitions/{aid}/files/T1w.dicom.zip", params={"info": "true"})
    took = time.monotonic() - start
    assert listing.status_code == 200 and listing.json()["members"]
    assert took >= 2.0


# ---- --refuse-encoded-slash and /files/{id}/download -----------------------------------------


def test_encoded_slash_refused_but_by_id_download_works(strict_site: Site, scratch: str) -> None:
    data = bytes(range(256)) * 4
    upload(strict_site, "projects", scratch, "dir/name.bin", data)
    project = get(strict_site, f"/projects/{scratch}").json()
    rec = next(f for f in project["files"] if f["name"] == "dir/name.bin")
    by_name = get(strict_site, f"/projects/{scratch}/files/{quote('dir/name.bin', safe='')}")
    assert by_name.status_code == 404

    url = f"/files/{rec['file_id']}/download"
    params = {"version": rec["version"], "view": "true"}
    part = get(strict_site, url, params=params, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert hashlib.sha256(get(strict_site, url).content).digest() == hashlib.sha256(data).digest()


def test_by_id_download_and_zip_info_exist_by_default(demo_site: Site) -> None:
    aid = node_id(demo_site, ["flywheel", "Anxiety Study", "sub-01", "ses-baseline", "T1w"])
    acq = get(demo_site, f"/acquisitions/{aid}").json()
    rec = next(f for f in acq["files"] if f["name"] == "T1w.dicom.zip")
    whole = get(demo_site, f"/files/{rec['file_id']}/download")
    assert whole.status_code == 200 and len(whole.content) == rec["size"]
    assert get(demo_site, f"/files/{rec['file_id']}/zip_info").json()["members"]


# ---- --old-core ---------------------------------------------------------------------------


def test_old_core_shapes(variant_site: Site) -> None:
    status = get(variant_site, "/auth/status").json()
    assert "user_id" not in status and status["origin"]["id"] == "ada@fwfs.example"
    pid = node_id(variant_site, ["flywheel", "Anxiety Study"])
    files = get(variant_site, f"/projects/{pid}").json()["files"]
    assert files and all("file_id" not in f and "version" not in f for f in files)
    move = post(variant_site, f"/files/{files[0]['_id']}/move", {"name": "x.csv"})
    assert move.status_code == 404
    ticket = post(
        variant_site,
        f"/projects/{pid}/files?ticket=",
        {"metadata": {"name": "t.txt", "size": 3}, "filenames": ["t.txt"]},
    )
    assert ticket.status_code == 200 and "headers" not in ticket.json()


# ---- --private-ca -------------------------------------------------------------------------


def test_private_ca_is_not_in_certifi(strict_site: Site) -> None:
    assert strict_site.url.startswith("https://") and strict_site.ca_cert is not None
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(strict_site.api_url + "/version", verify=True, timeout=10)
    assert requests.get(strict_site.api_url + "/version", verify=strict_site.verify).ok
    # Trusted through the OS trust store: with the site's environment, a client of the OS
    # store (urllib: ssl.create_default_context) gets in; requests, which trusts certifi's
    # roots only, does not (audit D1).
    url = strict_site.api_url + "/version"
    probes = {
        "os": "import urllib.request as u, sys; print(u.urlopen(sys.argv[1]).status)",
        "certifi": "import requests, sys; print(requests.get(sys.argv[1]).status_code)",
    }
    outcome = {}
    for name, probe in probes.items():
        done = subprocess.run(
            [sys.executable, "-c", probe, url],
            env=strict_site.subprocess_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        outcome[name] = done.stdout.strip() or done.stderr.strip().splitlines()[-1]
    assert outcome["os"] == "200"
    assert "CERTIFICATE_VERIFY_FAILED" in outcome["certifi"]
    assert strict_site.client(member=True).get_current_user().firstname == "Grace"

"""Every example of "Getting Started with Flywheel SDK", run unchanged against the sandbox.

The code of each example is the guide's (shared/seed/flywheel-sdk-getting-started.txt), with
the key, the labels and the paths swapped for ones that exist on the demo site. Where the
guide's code cannot run as printed, on any site, the test says why in a comment.

Reads use the demo tree; writes go to containers this module creates in its own group.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import flywheel
import httpx2
import pytest

pytestmark = pytest.mark.timeout(60)

UTC = timezone.utc

# The demo's Anxiety Study sessions, as "<subject>/<session>", with their creation times.
SESSIONS = {
    ("sub-01/ses-baseline", datetime(2018, 9, 10, 9, tzinfo=UTC)),
    ("sub-01/ses-followup", datetime(2018, 12, 14, 9, tzinfo=UTC)),
    ("sub-02/ses-baseline", datetime(2018, 9, 17, 9, tzinfo=UTC)),
    ("sub-02/ses-followup", datetime(2018, 12, 20, 9, tzinfo=UTC)),
    ("sub-03/ses-baseline", datetime(2018, 10, 1, 9, tzinfo=UTC)),
    ("sub-03/ses-baseline", datetime(2018, 10, 1, 15, tzinfo=UTC)),
    ("sub-04 Zoë/ses-baseline", datetime(2019, 2, 4, 9, tzinfo=UTC)),
}
ALL_SESSIONS = sorted(name for name, _ in SESSIONS)
SUBJECTS = ["sub-01", "sub-02", "sub-03", "sub-04 Zoë"]
# The project attachments the BIDS curation added (fwfs/sandbox/bids_demo.py).
BIDS_FILES = ["README.txt", "participants.tsv", "participants.json"]
# The demo's jobs in creation order: (gear, state).
JOBS = [
    ("dcm2niix", "complete"),
    ("dcm2niix", "failed"),
    ("file-metadata-importer", "complete"),
    ("file-metadata-importer", "failed"),
    ("dcm2niix", "running"),
    ("file-metadata-importer", "pending"),
]


def session_name(session: Any) -> str:
    return f"{session.subject.label}/{session.label}"


def query(entry: dict[str, Any]) -> dict[str, str]:
    """The query string of an access-log entry, decoded."""
    return {k: v[-1] for k, v in parse_qs(entry["query"], keep_blank_values=True).items()}


def job_state(job: Any) -> str:
    return str(getattr(job.state, "value", job.state))


# ---- Making API Calls ------------------------------------------------------------------


def test_client_with_api_key_and_current_user(demo_site: Any, capsys: Any) -> None:
    # Create client
    fw = flywheel.Client(demo_site.api_key)
    self = fw.get_current_user()
    print("I am %s %s" % (self.firstname, self.lastname))  # noqa: UP031 (the guide's code)

    assert capsys.readouterr().out == "I am Ada Lovelace\n"
    assert self.email == "ada@fwfs.example"
    # The read-only key is another user.
    other = flywheel.Client(demo_site.readonly_api_key).get_current_user()
    assert (other.firstname, other.lastname) == ("Rosalind", "Franklin")


def test_client_with_cli_credentials(demo_site: Any, tmp_path: Path, monkeypatch: Any) -> None:
    # What `fw login` leaves behind: ~/.config/flywheel/user.json.
    monkeypatch.setenv("HOME", str(tmp_path))
    user_json = tmp_path / ".config" / "flywheel" / "user.json"
    with pytest.raises(Exception, match="Must login with flywheel command-line interface"):
        flywheel.Client()

    user_json.parent.mkdir(parents=True)
    user_json.write_text(json.dumps({"key": demo_site.api_key, "root": False}))
    # Create client, using CLI credentials
    fw = flywheel.Client()
    assert fw.get_current_user().lastname == "Lovelace"

    # The key really comes from the file: log in as the other user.
    user_json.write_text(json.dumps({"key": demo_site.readonly_api_key, "root": False}))
    fw = flywheel.Client()
    assert fw.get_current_user().lastname == "Franklin"


# ---- Finding Objects -------------------------------------------------------------------


def test_resolve_project_path_and_children(fw: Any, capsys: Any) -> None:
    # Resolve project by id
    result = fw.resolve("flywheel/Anxiety Study")
    # Extract the resolved project id
    project = result.path[-1]
    # Print the ids and labels of the path elements
    for el in result.path:
        print("%s: %s" % (el.label, el.id))  # noqa: UP031
    # Print the children of project:
    # (The guide prints el.label for every child, but the children include the project's
    # files, as the SDK documents, and a FileNode has a name instead of a label.)
    for el in result.children:
        print("%s: %s" % (el.label if el.container_type != "file" else el.name, el.id))  # noqa: UP031

    assert isinstance(project, flywheel.ProjectOutput)
    assert project.label == "Anxiety Study"
    assert isinstance(result.path[0], flywheel.GroupOutput)
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["Flywheel Demo: flywheel", f"Anxiety Study: {project.id}"]
    children = [line.split(": ")[0] for line in lines[2:]]
    assert sorted(children) == sorted(
        [*SUBJECTS, "participants.csv", "dataset_description.json", "protocol.pdf", *BIDS_FILES]
    )
    kinds = {(el.container_type, type(el).__name__) for el in result.children}
    assert kinds == {("subject", "SubjectOutput"), ("file", "FileNode")}


def test_lookup_and_get_by_id(fw: Any) -> None:
    # Lookup project by id
    project = fw.lookup("flywheel/Anxiety Study")
    assert isinstance(project, flywheel.ProjectOutput)
    assert project.label == "Anxiety Study"
    assert project.id == fw.resolve("flywheel/Anxiety Study").path[-1].id

    session_id = fw.lookup("flywheel/Anxiety Study/sub-01/ses-baseline").id
    # Get session by id
    session = fw.get(session_id)
    assert isinstance(session, flywheel.SessionOutput)
    assert (session.label, session.subject.label) == ("ses-baseline", "sub-01")
    assert {"scan_notes.txt", "T1w"} <= {f.name for f in session.files}
    assert [a.label for a in session.analyses] == ["dcm2niix 2018-09-12"]


# ---- Working with Objects --------------------------------------------------------------


def test_update_project_label_then_reload(fw: Any, scratch_project: Any) -> None:
    project = scratch_project
    old_label = project.label
    # Update a project's label
    project.update(label="New Project Label")
    # "calling update will not update your local copy of the object"
    assert project.label == old_label
    assert project.reload().label == "New Project Label"
    assert fw.get_project(project.id).label == "New Project Label"


def test_update_subject_type_and_sex(scratch_project: Any) -> None:
    subject = scratch_project.add_subject(label="sub-guide", type="animal", sex="male")
    # Update a subject's type and sex
    subject.update({"type": "human", "sex": "female"})
    assert (subject.type, subject.sex) == ("animal", "male")  # the local copy
    subject = subject.reload()
    assert (subject.type, subject.sex) == ("human", "female")
    assert subject.label == "sub-guide"


def test_reload_session(scratch_project: Any) -> None:
    subject = scratch_project.add_subject(label="sub-reload")
    # (POST /api/sessions puts it under a new subject: see test_site.py's strict xfail.)
    session = subject.add_session(label="ses-reload")
    session.update({"operator": "R. Franklin", "weight": 61.5})
    assert session.operator is None  # the local copy
    # Reload a session
    session = session.reload()
    assert (session.operator, session.weight) == ("R. Franklin", 61.5)
    assert session.label == "ses-reload"


# ---- Working with Finders: the guide's examples ----------------------------------------


def test_all_projects_and_find_first(fw: Any) -> None:
    # Retrieve all projects (with a default limit)
    all_projects = fw.projects()
    labels = {p.label for p in all_projects}
    assert {"Anxiety Study", "Pilot Imaging", "Phantom QC"} <= labels
    # Find the first project with a label of 'My Project'
    project = fw.projects.find_first("label=Anxiety Study")
    assert project.label == "Anxiety Study"
    assert project.group == "flywheel"
    assert fw.projects.find_first("label=No Such Project") is None


def test_sessions_created_after(anxiety: Any) -> None:
    project = anxiety
    # Find all sessions in project created after 2018-10-31
    sessions = project.sessions.find("created>2018-10-31")
    assert sorted(map(session_name, sessions)) == [
        "sub-01/ses-followup",
        "sub-02/ses-followup",
        "sub-04 Zoë/ses-baseline",
    ]


def test_iterate_failed_jobs(fw: Any, capsys: Any) -> None:
    # Iterate over all failed jobs
    for job in fw.jobs.iter_find("state=failed"):
        print("Job: {}, Gear: {}".format(job.id, job.gear_info.name))  # noqa: UP032

    lines = capsys.readouterr().out.splitlines()
    printed = [re.fullmatch(r"Job: ([0-9a-f]{24}), Gear: (\S+)", line) for line in lines]
    assert all(printed), lines
    assert sorted(m[2] for m in printed if m) == ["dcm2niix", "file-metadata-importer"]
    every_job = {j.id: (j.gear_info.name, job_state(j), j.failure_reason) for j in fw.jobs()}
    assert sorted(every_job[m[1]] for m in printed if m) == [
        ("dcm2niix", "failed", "Gear exited with code 1: no valid DICOM files"),
        ("file-metadata-importer", "failed", "Out of memory"),
    ]


def test_iterate_sessions_of_project(anxiety: Any, capsys: Any) -> None:
    project = anxiety
    # Iterate over all sessions belonging to project
    for session in project.sessions.iter():
        print(session.label)

    lines = capsys.readouterr().out.splitlines()
    assert sorted(lines) == sorted(name.split("/")[1] for name in ALL_SESSIONS)


# ---- Filter syntax: every operator and type of the guide -------------------------------

FILTER_CASES = [
    # Comparison operators with dates, timestamps and numbers.
    ("sessions", ["created<2018-09-17"], ["sub-01/ses-baseline"]),
    ("sessions", ["created<=2018-09-17T09:00:00"], ["sub-01/ses-baseline", "sub-02/ses-baseline"]),
    ("sessions", ["label=ses-followup"], ["sub-01/ses-followup", "sub-02/ses-followup"]),
    ("sessions", ["label!=ses-baseline"], ["sub-01/ses-followup", "sub-02/ses-followup"]),
    ("sessions", ["created>=2018-12-20"], ["sub-02/ses-followup", "sub-04 Zoë/ses-baseline"]),
    (
        "sessions",
        ["created>2018-10-31"],
        ["sub-01/ses-followup", "sub-02/ses-followup", "sub-04 Zoë/ses-baseline"],
    ),
    (
        "sessions",
        ["timestamp>2018-10-01T09:00:00"],
        [
            "sub-01/ses-followup",
            "sub-02/ses-followup",
            "sub-03/ses-baseline",
            "sub-04 Zoë/ses-baseline",
        ],
    ),
    ("sessions", ["timestamp=2018-10-01T15:00:00"], ["sub-03/ses-baseline"]),
    # Numbers (the demo sessions weigh 70.0).
    ("sessions", ["weight=70"], ALL_SESSIONS),
    ("sessions", ["weight>70"], []),
    ("sessions", ["weight<70.5"], ALL_SESSIONS),
    # Quoted strings.
    ("subjects", ['label="sub-04 Zoë"'], ["sub-04 Zoë"]),
    ("sessions", ['label="ses-followup"'], ["sub-01/ses-followup", "sub-02/ses-followup"]),
    # Regular expressions: the guide's example 1 matches every label ...
    ("subjects", ["label=~.?[A-Z]?[a-z]?"], SUBJECTS),
    # ... its example 2 as printed ("d+") is a label containing "d" ...
    ("projects", ["group=flywheel", "label=~d+"], ["Anxiety Study"]),
    # ... and as meant (\d+) a label with digits.
    ("subjects", [r"label=~\d+"], SUBJECTS),
    ("subjects", ["label=~^sub-0[13]$"], ["sub-01", "sub-03"]),
    # null.
    (
        "jobs",
        ["failure_reason=null"],
        [
            ("dcm2niix", "complete"),
            ("dcm2niix", "running"),
            ("file-metadata-importer", "complete"),
            ("file-metadata-importer", "pending"),
        ],
    ),
    (
        "jobs",
        ["failure_reason!=null"],
        [("dcm2niix", "failed"), ("file-metadata-importer", "failed")],
    ),
    # List operators: the guide's gear-name example, and its negation.
    ("jobs", ["gear_info.name=|[dcm2niix,file-metadata-importer]"], sorted(JOBS)),
    (
        "jobs",
        ["gear_info.name!=|[dcm2niix]"],
        [
            ("file-metadata-importer", "complete"),
            ("file-metadata-importer", "failed"),
            ("file-metadata-importer", "pending"),
        ],
    ),
    (
        "jobs",
        ["state=|[failed,running]"],
        [
            ("dcm2niix", "failed"),
            ("dcm2niix", "running"),
            ("file-metadata-importer", "failed"),
        ],
    ),
    # Several filters, in one string separated by commas, or as several arguments.
    (
        "sessions",
        ["label=ses-baseline,created<2018-10-31"],
        [
            "sub-01/ses-baseline",
            "sub-02/ses-baseline",
            "sub-03/ses-baseline",
            "sub-03/ses-baseline",
        ],
    ),
    (
        "sessions",
        ["label=ses-baseline", "created<2018-10-01"],
        [
            "sub-01/ses-baseline",
            "sub-02/ses-baseline",
        ],
    ),
    ("jobs", ["gear_info.name=dcm2niix,state=failed"], [("dcm2niix", "failed")]),
    # Dotted sub-properties.
    ("sessions", ["subject.label=sub-03"], ["sub-03/ses-baseline", "sub-03/ses-baseline"]),
]


@pytest.mark.parametrize(
    ("finder", "filters", "expected"),
    FILTER_CASES,
    ids=[",".join(case[1]) for case in FILTER_CASES],
)
def test_filter_syntax(
    fw: Any, anxiety: Any, finder: str, filters: list[str], expected: Any
) -> None:
    found: list[Any]
    if finder == "jobs":
        found = sorted((j.gear_info.name, job_state(j)) for j in fw.jobs.find(*filters))
    elif finder == "projects":
        found = sorted(p.label for p in fw.projects.find(*filters))
    elif finder == "subjects":
        found = sorted(s.label for s in anxiety.subjects.find(*filters))
    else:
        found = sorted(session_name(s) for s in anxiety.sessions.find(*filters))
    assert found == sorted(expected)


def test_quoted_numeric_label_versus_regex(scratch_project: Any) -> None:
    # "Labels that are only numeric, but also specific (e.g., "123456") can be found with
    # label="123456", rather than regex."
    for label in ("123456", "1234567", "sub-123456"):
        scratch_project.add_subject(label=label)
    fw_obj = scratch_project.subjects
    assert [s.label for s in fw_obj.find('label="123456"')] == ["123456"]
    assert sorted(s.label for s in fw_obj.find("label=~123456")) == [
        "123456",
        "1234567",
        "sub-123456",
    ]


# ---- Sorting and pagination ------------------------------------------------------------


def test_sorting_ascending_and_descending(fw: Any, anxiety: Any) -> None:
    by_time = [when for _, when in sorted(SESSIONS, key=lambda s: s[1])]
    ascending = list(anxiety.sessions.iter_find(sort="created:asc"))
    assert [s.created for s in ascending] == by_time
    descending = list(anxiety.sessions.iter_find(sort="created:desc"))
    assert [s.created for s in descending] == by_time[::-1]
    assert session_name(descending[0]) == "sub-04 Zoë/ses-baseline"

    jobs = [(j.gear_info.name, job_state(j)) for j in fw.jobs.iter_find(sort="created:desc")]
    assert jobs == JOBS[::-1]
    # Two keys: label first, then the newest first within a label.
    two_keys = list(anxiety.sessions.iter_find(sort="label:asc,created:desc"))
    assert [session_name(s) for s in two_keys] == [
        "sub-04 Zoë/ses-baseline",
        "sub-03/ses-baseline",
        "sub-03/ses-baseline",
        "sub-02/ses-baseline",
        "sub-01/ses-baseline",
        "sub-02/ses-followup",
        "sub-01/ses-followup",
    ]
    assert two_keys[1].created > two_keys[2].created


def test_iteration_over_several_pages_ends(demo_site: Any, anxiety: Any) -> None:
    mark = demo_site.log_mark()
    sessions = list(anxiety.sessions.iter_find(limit=2))
    assert sorted(map(session_name, sessions)) == ALL_SESSIONS
    assert len({s.id for s in sessions}) == 7  # no page served twice

    # 7 sessions in pages of 2: four pages, then the empty page that ends the iteration.
    path = f"/api/projects/{anxiety.id}/sessions"
    pages = demo_site.wait_for_log(
        lambda e: e["path"] == path and query(e).get("limit") == "2", count=5, since=mark
    )
    assert len(pages) == 5
    assert "after_id" not in query(pages[0])
    after = [query(p)["after_id"] for p in pages[1:]]
    # Each page starts after the last session of the page before: 2, 4, 6 and 7.
    assert after == [sessions[i].id for i in (1, 3, 5, 6)]
    assert pages[-1]["bytes"] == len(b"[]")

    # With a sort the SDK pages with page=1, 2, ...
    sorted_sessions = list(anxiety.sessions.iter_find(sort="created:asc", limit=3))
    assert [s.created for s in sorted_sessions] == sorted(when for _, when in SESSIONS)
    paged = demo_site.wait_for_log(
        lambda e: e["path"] == path and query(e).get("limit") == "3", count=4, since=mark
    )
    assert [query(p).get("page") for p in paged] == ["1", "2", "3", "4"]
    assert all(query(p)["sort"] == "created:asc" for p in paged)


def test_iteration_over_a_populated_container(scratch_project: Any) -> None:
    labels = [f"sub-{n:02d}" for n in range(12)]
    for label in labels:
        scratch_project.add_subject(label=label)
    found = [s.label for s in scratch_project.subjects.iter_find(limit=5)]
    assert found == labels
    assert [s.label for s in scratch_project.subjects.find(limit=5)] == labels[:5]
    assert [s.label for s in scratch_project.subjects.find()] == labels


# ---- Dealing with Files ----------------------------------------------------------------


def test_upload_from_path_and_file_spec_then_download(scratch_project: Any, tmp_path: Path) -> None:
    project = scratch_project
    hello = tmp_path / "hello.txt"
    hello.write_bytes(b"Hello from a file\n")
    # Upload the file at /tmp/hello.txt
    uploaded = project.upload_file(str(hello))
    assert [(f.name, f.size, f.version) for f in uploaded] == [("hello.txt", 18, 1)]
    assert project.read_file("hello.txt") == b"Hello from a file\n"

    # Upload the data 'Hello World!'
    file_spec = flywheel.FileSpec("hello.txt", "Hello World!\n", "text/plain")
    uploaded = project.upload_file(file_spec)
    assert [(f.name, f.size, f.version) for f in uploaded] == [("hello.txt", 13, 2)]
    assert uploaded[0].mimetype == "text/plain"

    # Download file to /tmp/hello.txt
    dest = tmp_path / "downloaded" / "hello.txt"
    dest.parent.mkdir()
    project.download_file("hello.txt", str(dest))
    assert dest.read_bytes() == b"Hello World!\n"
    # Download file contents directly to memory
    data = project.read_file("hello.txt")
    assert data == b"Hello World!\n"
    assert [f.name for f in project.reload().files] == ["hello.txt"]


def test_analysis_upload_output_of_two_files(scratch_project: Any, tmp_path: Path) -> None:
    analysis = scratch_project.add_analysis(label="guide analysis")
    (tmp_path / "hello1.txt").write_bytes(b"first output\n")
    (tmp_path / "hello2.txt").write_bytes(b"second output\n")
    # Some endpoints allow multiple file uploads:
    analysis.upload_output([str(tmp_path / "hello1.txt"), str(tmp_path / "hello2.txt")])

    analysis = analysis.reload()
    assert sorted(f.name for f in analysis.files) == ["hello1.txt", "hello2.txt"]
    assert analysis.read_file("hello1.txt") == b"first output\n"
    assert analysis.read_file("hello2.txt") == b"second output\n"


def test_zip_members_of_a_dicom_series(fw: Any, tmp_path: Path) -> None:
    acquisition = fw.lookup("flywheel/Anxiety Study/sub-01/ses-baseline/T1w")
    # Get information about a zip file
    zip_info = acquisition.get_file_zip_info("T1w.dicom.zip")
    assert len(zip_info.members) == 16
    assert [m.path for m in zip_info.members][:2] == ["T1w/T1w_0001.dcm", "T1w/T1w_0002.dcm"]

    # Download the first zip entry to /tmp/{entry_name}
    entry_name = zip_info.members[0].path
    out_path = os.path.join(str(tmp_path), entry_name)
    # (The entry is "T1w/T1w_0001.dcm": the SDK does not create the T1w directory.)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    acquisition.download_file_zip_member("T1w.dicom.zip", entry_name, out_path)

    whole = zipfile.ZipFile(io.BytesIO(acquisition.read_file("T1w.dicom.zip")))
    member = Path(out_path).read_bytes()
    assert member == whole.read(entry_name)
    assert member[128:132] == b"DICM"  # a DICOM Part 10 file
    assert zip_info.members[0].size == len(member)
    assert acquisition.read_file_zip_member("T1w.dicom.zip", entry_name) == member


def test_read_zip_member_readme(scratch_project: Any) -> None:
    subject = scratch_project.add_subject(label="sub-zip")
    acquisition = new_acquisition(subject)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "Read me first.\n")
        zf.writestr("data/values.csv", "a,b\n1,2\n")
    acquisition.upload_file(flywheel.FileSpec("my-archive.zip", buf.getvalue(), "application/zip"))

    zip_info = acquisition.get_file_zip_info("my-archive.zip")
    assert [(m.path, m.size) for m in zip_info.members] == [
        ("readme.txt", 15),
        ("data/values.csv", 8),
    ]
    # Read the "readme.txt" zip entry directly to memory
    zip_data = acquisition.read_file_zip_member("my-archive.zip", "readme.txt")
    assert zip_data == b"Read me first.\n"


def new_acquisition(subject: Any) -> Any:
    """An acquisition of our own below `subject` (through the containers' own methods)."""
    session = subject.add_session(label="ses-zip")
    return session.add_acquisition(label="acq-zip")


# ---- Handling Exceptions ---------------------------------------------------------------


def test_api_exception_status_and_reason(fw: Any, capsys: Any) -> None:
    with pytest.raises(flywheel.ApiException):
        fw.get_project("NON_EXISTENT_ID")
    try:
        project = fw.get_project("NON_EXISTENT_ID")  # noqa: F841
    except flywheel.ApiException as e:
        print("API Error: %d -- %s" % (e.status, e.reason))  # noqa: UP031
        assert e.status == 404
        assert "NON_EXISTENT_ID" in e.reason and "not found" in e.reason
    assert capsys.readouterr().out.startswith("API Error: 404 -- ")


# ---- SSL CA Certificates ---------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")
def test_fw_ssl_cert_file(start_site: Any, tmp_path: Path, monkeypatch: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_pem), append=True)
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    site = start_site(demo=False, tls_cert=cert_pem, tls_key=key_pem)
    assert site.url.startswith("https://127.0.0.1:")
    assert "__force_insecure" not in site.api_key

    # The site's CA is not one the SDK trusts by default: it refuses the certificate.
    monkeypatch.delenv("FW_SSL_CERT_FILE", raising=False)
    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        flywheel.Client(site.api_key)

    # export FW_SSL_CERT_FILE=/etc/ssl/cert.pem
    monkeypatch.setenv("FW_SSL_CERT_FILE", str(ca_pem))
    fw = flywheel.Client(site.api_key)
    assert fw.get_current_user().firstname == "Ada"

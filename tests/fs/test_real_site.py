"""FlywheelFS against the sandbox behaving as a real core does (`--strict`, or one flag of it):
what issue 11 asks of the tree, driven directly (no FUSE).

- D3: a member of a project but not of its group sees the group in the root and reads the
  project; a group name the root does not list is looked up before ENOENT.
- D2: a core that returns sessions as a project's children is an EIO with a log line that
  says why, never an empty project.
- D9: `info` and `tags` that a real resolver strips from listings are fetched on getxattr.
- Analysis inputs and outputs of one name are each read from their own route.

The SDK is the witness of what the site holds.
"""

from __future__ import annotations

import errno
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import flywheel
import pytest
from writekit import DEMO_PROJECT, errno_of, names, read_all

from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

MakeModel = Callable[..., FlywheelFS]


def client_of(site: Any, key: str) -> FlywheelClient:
    config = ClientConfig.from_api_key(
        key, verify=site.verify, retries=1, total_timeout=10, read_timeout=20
    )
    return FlywheelClient(config)


@pytest.fixture
def strict_model(strict_site: Any, new_model: MakeModel) -> MakeModel:
    """`strict_model(key=Ada's, client=None, **MountConfig fields)`: a read-only model of
    the strict site. Every model made is closed after the test."""

    def make(
        key: str | None = None, client: FlywheelClient | None = None, **config: Any
    ) -> FlywheelFS:
        client = client or client_of(strict_site, key or strict_site.api_key)
        return new_model(key or strict_site.api_key, client=client, **config)

    return make


@pytest.fixture(scope="module")
def strict_fw(strict_site: Any) -> Any:
    return strict_site.client()


def paths_since(site: Any, mark: int) -> list[str]:
    return [f"{e['method']} {e['path']}" for e in site.requests_since(mark)]


# ---- D3: the root ------------------------------------------------------------------------


def test_a_project_member_sees_her_group_and_reads_her_project(
    strict_site: Any, strict_model: MakeModel
) -> None:
    grace = strict_site.client(member=True)
    # The site itself lists her no group: only her project says where it lives.
    assert [g.id for g in grace.groups()] == []
    fs = strict_model(strict_site.project_member_api_key)
    root = names(fs, "/")
    assert "flywheel" in root and "radiology" not in root
    assert names(fs, "flywheel") == {"Anxiety Study"}
    # A group she may not read is not there, asked once (then remembered) and ENOENT.
    mark = strict_site.quiet_mark()
    for _ in range(2):
        assert errno_of(lambda: fs.getattr("radiology")) == errno.ENOENT
    assert paths_since(strict_site, mark) == ["POST /api/lookup"]
    # Its label is not in the project's JSON: asked of the group when wanted.
    assert fs.getxattr("flywheel", "user.flywheel.label") == b"Flywheel Demo"
    assert {"sub-01", "sub-02", "sub-03"} <= names(fs, DEMO_PROJECT)
    f = grace.lookup(f"{DEMO_PROJECT}/files/participants.csv")
    fh = fs.open(f"{DEMO_PROJECT}/participants.csv", 0).fh
    try:
        data = read_all(fs, fh)
    finally:
        fs.release(fh)
    assert data == grace.download_file_from_project_as_data(f.parent_ref.id, f.name)


def test_an_unlisted_group_name_is_looked_up_once_and_a_miss_remembered(
    demo_site: Any, new_model: MakeModel, fw: Any
) -> None:
    fs = new_model(demo_site.api_key, metadata_ttl=300, negative_ttl=60)
    before = names(fs, "/")
    gid = f"fwfs-late-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "made after the root was listed"))
    assert gid not in before
    mark = demo_site.quiet_mark()
    # Fresh, the root listing would say ENOENT; a site's root may be short, so ask.
    assert fs.getattr(gid).is_dir
    assert fs.getxattr(gid, "user.flywheel.id") == gid.encode()
    assert paths_since(demo_site, mark) == ["POST /api/lookup"]
    mark = demo_site.quiet_mark()
    missing = f"fwfs-none-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        assert errno_of(lambda: fs.getattr(missing)) == errno.ENOENT
    # Names no group id can have (dotfiles desktops probe for) cost nothing at all.
    assert errno_of(lambda: fs.getattr(".Trash-0")) == errno.ENOENT
    assert errno_of(lambda: fs.getattr("Flywheel Demo")) == errno.ENOENT
    assert paths_since(demo_site, mark) == ["POST /api/lookup"]


# ---- D2: a core that gates subjects --------------------------------------------------------


def test_a_core_that_lists_sessions_in_a_project_is_eio_with_the_reason(
    strict_site: Any, strict_model: MakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_of(strict_site, strict_site.api_key)
    # A core without the Subject-Container feature: as if it did not honour the header.
    client._session.headers["x-accept-feature"] = "Safe-Redirect,multipart_signed_url"
    fs = strict_model(client=client)
    with caplog.at_level(logging.ERROR, logger="fwfs.tree"):
        assert errno_of(lambda: fs.readdir(DEMO_PROJECT)) == errno.EIO
    assert "does not honour the Subject-Container feature" in caplog.text
    assert "POST /resolve" in caplog.text
    # With the feature (the client's default), the same project lists its subjects.
    assert "sub-01" in names(strict_model(), DEMO_PROJECT)


# ---- D9: metadata a real resolver strips ----------------------------------------------------


@pytest.fixture(scope="module")
def tagged(strict_fw: Any) -> dict[str, Any]:
    """A tree of Ada's own on the strict site with info and tags on a session and a file."""
    gid = f"fwfs-meta-{uuid.uuid4().hex[:8]}"
    strict_fw.add_group(flywheel.Group(gid, "metadata"))
    project = strict_fw.get_group(gid).add_project(label="P")
    session = project.add_subject(label="s").add_session(label="ses")
    acq = session.add_acquisition(label="acq")
    session.update_info({"scanner": {"field": 3}})
    # A real core's project list keeps only info.BIDS (and says info_exists): the rest
    # must come from the project's own document.
    project.update_info({"BIDS": {"Name": "P"}, "funding": "R01"})
    session.add_tag("qc-passed")
    acq.upload_file(flywheel.FileSpec("a.txt", b"a\n"))
    acq.update_file_info("a.txt", {"echo_time": 0.03})
    strict_fw.modify_acquisition_file(acq.id, "a.txt", {"tags": ["raw"]})
    ses = f"{gid}/P/s/ses"
    return {
        "gid": gid,
        "project": f"{gid}/P",
        "ses": ses,
        "file": f"{ses}/acq/a.txt",
        "acq": acq.id,
        "session": session.id,
    }


def test_info_and_tags_the_listing_lacks_are_fetched_on_getxattr(
    strict_site: Any, strict_model: MakeModel, tagged: dict[str, Any]
) -> None:
    fs = strict_model(metadata_ttl=300)
    ses, path = tagged["ses"], tagged["file"]
    fs.getattr(path)
    mark = strict_site.quiet_mark()
    # Listed without a request, as `getfattr -d` needs them to be.
    assert {"user.flywheel.info", "user.flywheel.tags"} <= set(fs.listxattr(ses))
    assert "user.flywheel.info" in fs.listxattr(path)
    assert paths_since(strict_site, mark) == []
    assert json.loads(fs.getxattr(ses, "user.flywheel.info")) == {"scanner": {"field": 3}}
    assert json.loads(fs.getxattr(ses, "user.flywheel.tags")) == ["qc-passed"]
    assert json.loads(fs.getxattr(path, "user.flywheel.info")) == {"echo_time": 0.03}
    assert json.loads(fs.getxattr(path, "user.flywheel.tags")) == ["raw"]
    fetched = paths_since(strict_site, mark)
    # One request per entry, then cached for the listing TTL.
    assert len(fetched) == 2, fetched
    assert fetched[0].startswith("GET /api/sessions/")
    assert fetched[1].endswith("/files/a.txt/info")
    mark = strict_site.quiet_mark()
    fs.getxattr(ses, "user.flywheel.info")
    fs.getxattr(path, "user.flywheel.info")
    assert paths_since(strict_site, mark) == []


def test_info_a_list_answer_trimmed_is_fetched_whole_on_getxattr(
    strict_site: Any, strict_model: MakeModel, tagged: dict[str, Any]
) -> None:
    fs = strict_model(metadata_ttl=300)
    assert "P" in names(fs, tagged["gid"])  # the group's projects, from the list answer
    mark = strict_site.quiet_mark()
    info = json.loads(fs.getxattr(tagged["project"], "user.flywheel.info"))
    assert info == {"BIDS": {"Name": "P"}, "funding": "R01"}
    fetched = paths_since(strict_site, mark)
    assert len(fetched) == 1 and fetched[0].startswith("GET /api/projects/"), fetched


def test_an_analysis_info_trimmed_in_its_list_answer_is_fetched_whole(
    strict_site: Any, strict_model: MakeModel, strict_fw: Any, tagged: dict[str, Any]
) -> None:
    session = strict_fw.get_session(tagged["session"])
    analysis = session.add_analysis(label="qc-run")
    strict_fw.get_analysis(analysis.id).update_info({"BIDS": {"x": 1}, "pipeline": "mriqc"})
    analysis = strict_fw.get_analysis(analysis.id)
    analysis.upload_output(flywheel.FileSpec("report.json", b"{}"))
    strict_fw.get_analysis(analysis.id).update_file_info(
        "report.json", {"BIDS": "NA", "score": 0.9}
    )
    fs = strict_model(metadata_ttl=300)
    base = f"{tagged['ses']}/analyses/qc-run"
    assert "report.json" in names(fs, f"{base}/output")
    info = json.loads(fs.getxattr(base, "user.flywheel.info"))
    assert info == {"BIDS": {"x": 1}, "pipeline": "mriqc"}
    info = json.loads(fs.getxattr(f"{base}/output/report.json", "user.flywheel.info"))
    assert info == {"BIDS": "NA", "score": 0.9}


# ---- analysis inputs -----------------------------------------------------------------------


def test_an_input_and_an_output_of_one_name_each_read_their_own_bytes(
    strict_site: Any, strict_model: MakeModel, strict_fw: Any, tagged: dict[str, Any]
) -> None:
    # (The SDK sends no Subject-Container feature: on this site its paths skip subjects.)
    acq = strict_fw.get_acquisition(tagged["acq"])
    analysis = acq.add_analysis(label="echo", inputs=[acq.get_file("a.txt").ref()])
    strict_fw.get_analysis(analysis.id).upload_output(flywheel.FileSpec("a.txt", b"output\n"))
    fs = strict_model()
    base = f"{tagged['ses']}/acq/analyses/echo"
    for sub, expected in (("input", b"a\n"), ("output", b"output\n")):
        assert names(fs, f"{base}/{sub}") == {"a.txt"}
        fh = fs.open(f"{base}/{sub}/a.txt", 0).fh
        try:
            assert read_all(fs, fh) == expected, sub
        finally:
            fs.release(fh)


def test_a_project_member_and_an_admin_see_one_tree_of_names(
    strict_site: Any, strict_model: MakeModel
) -> None:
    def tree(fs: FlywheelFS) -> list[str]:
        out, todo = [], [DEMO_PROJECT]
        while todo:
            path = todo.pop()
            for name, attr in fs.readdir(path):
                out.append(f"{path}/{name}")
                if attr.is_dir and not name.endswith(".zip.d"):
                    todo.append(f"{path}/{name}")
        return sorted(out)

    ada = tree(strict_model())
    # The demo's collisions are there, named as the site's paths name them.
    assert f"{DEMO_PROJECT}/sub-01/ses-baseline/T1w" in ada
    assert f"{DEMO_PROJECT}/sub-03/ses-baseline" in ada
    assert tree(strict_model(strict_site.project_member_api_key)) == ada

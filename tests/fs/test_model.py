"""FlywheelFS, the filesystem model, driven directly (no FUSE) against the demo sandbox.

What docs/SEMANTICS.md promises, in the model's own terms: the layout, the names of the demo
tree, `<id:…>` aliases, attributes, extended attributes, errnos as `FwfsError.errno`, bytes
equal to the SDK's, and how the metadata TTL shows in the number of requests the site sees.
The SDK (`fw`) is the independent witness of what the site holds.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, cast

import flywheel
import pytest
from writekit import DEMO_PROJECT, DEMO_SES, errno_of, names, read_all

from fwfs.errors import FwfsError
from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(60)

PROJECT = DEMO_PROJECT
SES = DEMO_SES


# ---- helpers ------------------------------------------------------------------------------


def requests_since(site: Any, mark: int, settle: float = 0.1) -> list[dict[str, Any]]:
    # The access log is JSON-shaped; the site fixture is untyped here.
    return cast(list[dict[str, Any]], site.requests_since(mark, settle))


def quiet_mark(site: Any) -> int:
    return cast(int, site.quiet_mark())


def ts(value: Any) -> float:
    """An SDK datetime as seconds since the epoch."""
    return float(value.timestamp())


def read_path(model: FlywheelFS, path: str, chunk: int = 10_000) -> bytes:
    """The whole file at `path`: open, read `chunk` bytes at a time, release."""
    fh = model.open(path, os.O_RDONLY).fh
    try:
        return read_all(model, fh, chunk)
    finally:
        model.release(fh)


def file_suffix(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:8]


@pytest.fixture
def make_model(demo_site: Any, new_model: Callable[..., FlywheelFS]) -> Callable[..., FlywheelFS]:
    """`make_model(metadata_ttl=..., key=...)`: a fresh FlywheelFS (empty caches)."""

    def make(key: str | None = None, **config: Any) -> FlywheelFS:
        return new_model(key or demo_site.api_key, **config)

    return make


@pytest.fixture
def model(make_model: Callable[..., FlywheelFS]) -> FlywheelFS:
    return make_model(metadata_ttl=300)


@pytest.fixture(scope="module")
def anxiety(fw: Any) -> Any:
    return fw.lookup(PROJECT)


@pytest.fixture(scope="module")
def ses_baseline(fw: Any) -> Any:
    return fw.lookup(SES).reload()


@pytest.fixture(scope="module")
def t1w(fw: Any) -> Any:
    return fw.lookup(f"{SES}/T1w").reload()


@pytest.fixture(scope="module")
def scratch_project(fw: Any) -> Any:
    """A project of our own on the demo site, in a group of our own."""
    gid = f"fwfs-model-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "fwfs model tests"))
    return fw.get_group(gid).add_project(label="Model Scratch")


# ---- layout and names ---------------------------------------------------------------------


def test_root_lists_groups_by_id(model: FlywheelFS, fw: Any) -> None:
    listing = dict(model.readdir("/"))
    # Other tests may add groups; the demo's two are there, named by id, not by label.
    assert {"flywheel", "radiology"} <= set(listing)
    assert "Flywheel Demo" not in listing
    assert {g.id for g in fw.groups()} == set(listing)
    for name, attr in listing.items():
        assert attr.is_dir
        assert model.getxattr(name, "user.flywheel.id") == name.encode()
        assert model.getxattr(name, "user.flywheel.container_type") == b"group"
    assert model.getxattr("flywheel", "user.flywheel.label") == b"Flywheel Demo"


def test_project_lists_its_files_and_subjects(model: FlywheelFS) -> None:
    listing = dict(model.readdir(PROJECT))
    files = {"participants.csv", "dataset_description.json", "protocol.pdf"}
    files |= {"README.txt", "participants.tsv", "participants.json"}  # the BIDS curation's
    subjects = {"sub-01", "sub-02", "sub-03", "sub-04 Zoë"}
    assert set(listing) == files | subjects  # no analyses/: the project has none
    assert all(not listing[f].is_dir for f in files)
    assert all(listing[s].is_dir for s in subjects)
    assert names(model, "flywheel") >= {"Anxiety Study", "Pilot Imaging"}
    assert names(model, "radiology") == {"Phantom QC"}


def test_session_lists_acquisitions_files_and_analyses(model: FlywheelFS, t1w: Any) -> None:
    # SEMANTICS: an acquisition and a file both named T1w: the site's path `…/T1w` is the
    # acquisition, so it keeps the name, and the file gets a suffix.
    assert names(model, SES) == {
        "DWI",
        "analyses",
        "fMRI rest",
        "scan_notes.txt",
        "T1w",
        "T1w (file-5b6cf69b)",
    }
    assert file_suffix("T1w") == "5b6cf69b"
    assert model.getxattr(f"{SES}/T1w (file-5b6cf69b)", "user.flywheel.name") == b"T1w"
    assert model.getxattr(f"{SES}/T1w", "user.flywheel.label") == b"T1w"
    assert names(model, f"{SES}/T1w") == {"T1w.dicom.zip", "T1w.nii.gz"}


def test_analyses_directory_holds_inputs_and_outputs(model: FlywheelFS) -> None:
    assert names(model, f"{SES}/analyses") == {"dcm2niix 2018-09-12"}
    analysis = f"{SES}/analyses/dcm2niix 2018-09-12"
    assert names(model, analysis) == {"input", "output"}
    assert names(model, f"{analysis}/input") == {"T1w.dicom.zip"}
    assert names(model, f"{analysis}/output") == {"T1w.nii.gz", "dcm2niix.log"}
    assert model.getxattr(analysis, "user.flywheel.container_type") == b"analysis"


def test_analyses_is_listed_only_where_there_are_analyses(model: FlywheelFS) -> None:
    assert "analyses" not in names(model, f"{PROJECT}/sub-01/ses-followup")
    assert "analyses" not in names(model, f"{PROJECT}/sub-01")
    assert errno_of(lambda: model.getattr(f"{PROJECT}/sub-01/ses-followup/analyses")) == (
        errno.ENOENT
    )


def test_two_sessions_with_one_label_the_one_the_site_resolves_keeps_it(
    model: FlywheelFS, fw: Any
) -> None:
    sessions = fw.lookup(f"{PROJECT}/sub-03").sessions()
    assert [s.label for s in sessions] == ["ses-baseline", "ses-baseline"]
    # The SDK's path names one of them: that one is the plain name in the mount too.
    resolved = fw.lookup(f"{PROJECT}/sub-03/ses-baseline")
    other = next(s for s in sessions if s.id != resolved.id)
    assert names(model, f"{PROJECT}/sub-03") == {
        "ses-baseline",
        f"ses-baseline ({other.id[-8:]})",
    }
    plain = f"{PROJECT}/sub-03/ses-baseline"
    assert model.getxattr(plain, "user.flywheel.id") == resolved.id.encode()
    path = f"{PROJECT}/sub-03/ses-baseline ({other.id[-8:]})"
    assert model.getxattr(path, "user.flywheel.id") == other.id.encode()


def test_slash_in_a_label_becomes_a_fullwidth_solidus(model: FlywheelFS, fw: Any) -> None:
    ses = f"{PROJECT}/sub-02/ses-followup"
    assert names(model, ses) == {"T1w", "fMRI rest", "T2／FLAIR", "scan_notes.txt"}
    assert model.getxattr(f"{ses}/T2／FLAIR", "user.flywheel.label") == b"T2/FLAIR"
    acq = fw.lookup(f"{ses}").acquisitions.find_first("label=T2/FLAIR")
    expected = fw.download_file_from_acquisition_as_data(acq.id, "T2_FLAIR.nii.gz")
    assert read_path(model, f"{ses}/T2／FLAIR/T2_FLAIR.nii.gz") == expected


def test_unicode_and_space_in_a_label(model: FlywheelFS) -> None:
    assert "sub-04 Zoë" in names(model, PROJECT)  # NFC, as the site stores it
    assert names(model, f"{PROJECT}/sub-04 Zoë") == {"ses-baseline"}
    assert model.getattr(f"{PROJECT}/sub-04 Zoë/ses-baseline/DWI/DWI.nii.gz").size > 0


def test_names_do_not_depend_on_which_model_lists(make_model: Callable[..., FlywheelFS]) -> None:
    def tree(model: FlywheelFS) -> list[str]:
        out, todo = [], [PROJECT]
        while todo:
            path = todo.pop()
            for name, attr in model.readdir(path):
                out.append(f"{path}/{name}")
                if attr.is_dir:
                    todo.append(f"{path}/{name}")
        return sorted(out)

    assert tree(make_model(metadata_ttl=300)) == tree(make_model(metadata_ttl=0))


# ---- id aliases ---------------------------------------------------------------------------


def test_id_alias_names_a_listed_container_without_a_request(
    model: FlywheelFS, demo_site: Any, anxiety: Any
) -> None:
    model.readdir("flywheel")
    mark = quiet_mark(demo_site)
    alias = f"flywheel/<id:{anxiety.id}>"
    assert model.getattr(alias).is_dir
    assert model.getxattr(alias, "user.flywheel.id") == anxiety.id.encode()
    assert requests_since(demo_site, mark) == []  # found in the group's listing
    assert names(model, alias) == names(model, PROJECT)
    # The alias and the label are one directory: one listing between them.
    assert [e["path"] for e in requests_since(demo_site, mark)] == ["/api/resolve"]
    # A group's alias is its id, and aliases are never listed.
    assert model.getxattr("<id:flywheel>", "user.flywheel.id") == b"flywheel"
    assert not any(n.startswith("<id:") for n in names(model, "flywheel"))


def test_id_alias_of_a_container_not_yet_listed_is_one_lookup(
    model: FlywheelFS, demo_site: Any, scratch_project: Any
) -> None:
    group = scratch_project.group
    base = f"{group}/Model Scratch"
    before = names(model, base)
    subject = scratch_project.add_subject(label=f"late-{uuid.uuid4().hex[:6]}")
    assert subject.label not in names(model, base)  # the listing is fresh: not seen yet
    mark = quiet_mark(demo_site)
    alias = f"{base}/<id:{subject.id}>"
    assert model.getxattr(alias, "user.flywheel.label") == subject.label.encode()
    log = requests_since(demo_site, mark)
    assert [(e["method"], e["path"]) for e in log] == [("POST", "/api/lookup")]
    assert names(model, base) == before


def test_id_alias_misses_are_enoent_and_remembered(
    model: FlywheelFS, demo_site: Any, fw: Any
) -> None:
    session = fw.lookup(SES)
    model.readdir(PROJECT)
    # A session is not a child of a project: its alias does not name anything there.
    for cid in (session.id, "0123456789abcdef01234567"):
        mark = quiet_mark(demo_site)
        assert errno_of(partial(model.getattr, f"{PROJECT}/<id:{cid}>")) == errno.ENOENT
        assert len(requests_since(demo_site, mark)) == 1
        mark = quiet_mark(demo_site)
        assert errno_of(partial(model.getattr, f"{PROJECT}/<id:{cid}>")) == errno.ENOENT
        assert requests_since(demo_site, mark) == []  # within --negative-ttl


def test_a_label_shaped_like_an_alias_gets_a_suffix(
    model: FlywheelFS, scratch_project: Any
) -> None:
    shaped = f"<id:{'ab' * 12}>"
    subject = scratch_project.add_subject(label=shaped)
    listing = names(model, f"{scratch_project.group}/Model Scratch")
    assert f"{shaped} ({subject.id[-8:]})" in listing
    assert shaped not in listing
    # The alias still means what aliases mean: the container with that id (none here).
    with pytest.raises(FwfsError):
        model.getattr(f"{scratch_project.group}/Model Scratch/{shaped}")


# ---- attributes ---------------------------------------------------------------------------


def test_file_attributes_come_from_the_listed_version(model: FlywheelFS, t1w: Any) -> None:
    for f in t1w.files:
        attr = model.getattr(f"{SES}/T1w/{f.name}")
        assert stat.S_ISREG(attr.mode)
        assert stat.S_IMODE(attr.mode) == 0o444
        assert attr.size == f.size
        assert attr.mtime == pytest.approx(ts(f.modified), abs=1e-3)
        assert attr.ctime == pytest.approx(ts(f.created), abs=1e-3)


def test_directory_attributes_come_from_the_container(model: FlywheelFS, t1w: Any) -> None:
    attr = model.getattr(f"{SES}/T1w")
    assert stat.S_ISDIR(attr.mode)
    assert stat.S_IMODE(attr.mode) == 0o555
    assert attr.size == 0
    assert attr.mtime == pytest.approx(ts(t1w.modified), abs=1e-3)
    assert attr.ctime == pytest.approx(ts(t1w.created), abs=1e-3)


def test_mtime_is_modified_and_ctime_is_created(
    make_model: Callable[..., FlywheelFS], scratch_project: Any
) -> None:
    subject = scratch_project.add_subject(label="sub-times")
    scratch_project.upload_file(flywheel.FileSpec("times.txt", b"created, then modified\n"))
    time.sleep(1.1)
    subject.update(sex="female")
    scratch_project.update_file("times.txt", modality="MR")
    subject = subject.reload()
    f = scratch_project.reload().get_file("times.txt")
    assert subject.modified > subject.created and f.modified > f.created
    model = make_model(metadata_ttl=300)
    base = f"{scratch_project.group}/Model Scratch"
    for path, obj in ((f"{base}/sub-times", subject), (f"{base}/times.txt", f)):
        attr = model.getattr(path)
        assert attr.mtime == pytest.approx(ts(obj.modified), abs=1e-3)
        assert attr.ctime == pytest.approx(ts(obj.created), abs=1e-3)


# ---- extended attributes ------------------------------------------------------------------


def test_file_xattrs(model: FlywheelFS, t1w: Any) -> None:
    f = t1w.get_file("T1w.nii.gz")
    path = f"{SES}/T1w/T1w.nii.gz"
    listed = model.listxattr(path)
    assert all(n.startswith("user.flywheel.") for n in listed)
    for name in ("id", "container_type", "name", "file_id", "version", "size", "hash", "type"):
        assert f"user.flywheel.{name}" in listed
    x = {n.removeprefix("user.flywheel."): model.getxattr(path, n).decode() for n in listed}
    assert x["id"] == x["file_id"] == f.file_id
    assert x["container_type"] == "file"
    assert x["name"] == "T1w.nii.gz"
    assert (x["version"], x["size"], x["hash"]) == (str(f.version), str(f.size), f.hash)
    assert (x["type"], x["modality"]) == (f.type, f.modality)
    assert json.loads(x["classification"]) == f.classification
    # Not given by the site for a NIfTI: absent, and asking for it is an error.
    assert "user.flywheel.zip_member_count" not in listed
    with pytest.raises(FwfsError):
        model.getxattr(path, "user.flywheel.zip_member_count")
    zipped = model.getxattr(f"{SES}/T1w/T1w.dicom.zip", "user.flywheel.zip_member_count")
    assert int(zipped) == t1w.get_file("T1w.dicom.zip").zip_member_count


def test_container_xattrs(model: FlywheelFS, ses_baseline: Any) -> None:
    listed = model.listxattr(SES)
    assert "user.flywheel.name" not in listed
    assert model.getxattr(SES, "user.flywheel.id") == ses_baseline.id.encode()
    assert model.getxattr(SES, "user.flywheel.container_type") == b"session"
    assert model.getxattr(SES, "user.flywheel.label") == b"ses-baseline"
    assert json.loads(model.getxattr(SES, "user.flywheel.tags")) == ses_baseline.tags
    with pytest.raises(FwfsError):
        model.getxattr(SES, "user.flywheel.no_such_field")


def test_xattrs_cost_no_request(model: FlywheelFS, demo_site: Any) -> None:
    # scan_notes.txt's info is BIDS alone, which a real core's cut list answer could also
    # be; the listings on the way show infos with more, which a cutting core never lists,
    # so this site's listings are taken as whole (tests/fs/test_real_site.py: a cutting one).
    path = f"{SES}/scan_notes.txt"
    model.getattr(path)
    mark = quiet_mark(demo_site)
    for name in model.listxattr(path):
        model.getxattr(path, name)
    model.listxattr(SES)
    assert json.loads(model.getxattr(path, "user.flywheel.info")) == {"BIDS": "NA"}
    assert requests_since(demo_site, mark) == []


# ---- errors -------------------------------------------------------------------------------


def test_errnos(model: FlywheelFS) -> None:
    assert errno_of(lambda: model.getattr(f"{PROJECT}/sub-99")) == errno.ENOENT
    assert errno_of(lambda: model.getattr("no-such-group")) == errno.ENOENT
    assert errno_of(lambda: model.open(SES, os.O_RDONLY)) == errno.EISDIR
    through_file = f"{PROJECT}/participants.csv/anything"
    assert errno_of(lambda: model.getattr(through_file)) == errno.ENOTDIR
    path = f"{PROJECT}/participants.csv"
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
        assert errno_of(partial(model.open, path, flags)) == errno.EROFS


def test_a_fresh_listing_answers_enoent_without_a_request(
    model: FlywheelFS, demo_site: Any
) -> None:
    model.readdir(SES)
    mark = quiet_mark(demo_site)
    for missing in ("T1w.nii.gz", "scan_notes", "analyses/nothing", "DWI/none.nii.gz"):
        assert errno_of(partial(model.getattr, f"{SES}/{missing}")) == errno.ENOENT
    # DWI/ came with its session's listing: none of these costs a request.
    assert requests_since(demo_site, mark) == []


# ---- reading ------------------------------------------------------------------------------


def test_reads_equal_the_sdk_download(
    model: FlywheelFS, fw: Any, anxiety: Any, ses_baseline: Any, t1w: Any
) -> None:
    analysis = fw.get_analysis(ses_baseline.analyses[0].id)
    acq = f"{SES}/T1w"
    cases = [
        (f"{PROJECT}/participants.csv", anxiety.id, "participants.csv"),
        (f"{PROJECT}/protocol.pdf", anxiety.id, "protocol.pdf"),
        (f"{SES}/T1w (file-5b6cf69b)", ses_baseline.id, "T1w"),
        (f"{acq}/T1w.dicom.zip", t1w.id, "T1w.dicom.zip"),
        (f"{acq}/T1w.nii.gz", t1w.id, "T1w.nii.gz"),
    ]
    for path, cid, name in cases:
        assert read_path(model, path) == fw.download_file_from_container_as_data(cid, name), path
    analysis_dir = f"{SES}/analyses/dcm2niix 2018-09-12"
    for name in ("T1w.nii.gz", "dcm2niix.log"):
        expected = fw.download_file_from_analysis_as_data(analysis.id, name)
        assert read_path(model, f"{analysis_dir}/output/{name}") == expected
    # The input is the acquisition's file, linked.
    expected = fw.download_file_from_container_as_data(t1w.id, "T1w.dicom.zip")
    assert read_path(model, f"{analysis_dir}/input/T1w.dicom.zip") == expected


def test_reads_at_any_offset_and_past_the_end(model: FlywheelFS, fw: Any, t1w: Any) -> None:
    source = fw.download_file_from_container_as_data(t1w.id, "T1w.dicom.zip")
    fh = model.open(f"{SES}/T1w/T1w.dicom.zip", os.O_RDONLY).fh
    try:
        block = 128 << 10
        for offset, size in [
            (0, 352),
            (block - 10, 20),
            (len(source) - 5, 100),
            (len(source), 10),
            (len(source) + 1000, 10),
            (7, 0),
            (1, len(source) + 50),
        ]:
            assert model.read(fh, offset, size) == source[offset : offset + size], (offset, size)
    finally:
        model.release(fh)


# ---- the metadata TTL, seen in requests ---------------------------------------------------


def test_ttl_zero_lists_again_and_a_long_ttl_does_not(
    make_model: Callable[..., FlywheelFS], demo_site: Any
) -> None:
    path = f"{SES}/DWI/DWI.nii.gz"
    # Root, group, project, subject, session: five listings on the way; the acquisition's
    # came with its session's, unless no listing may be reused at all (TTL 0). The root is
    # `/groups` and `/projects`, each one page whose `total` proves it whole.
    root = ["/api/groups", "/api/projects"]
    for ttl, resolves, second in ((0, 5, len(root) + 5), (300, 4, 0)):
        model = make_model(metadata_ttl=ttl)
        mark = quiet_mark(demo_site)
        model.getattr(path)
        first = sorted(e["path"] for e in requests_since(demo_site, mark))
        assert first == sorted(root + ["/api/resolve"] * resolves)
        mark = quiet_mark(demo_site)
        model.getattr(path)
        assert len(requests_since(demo_site, mark)) == second, f"ttl={ttl}"


def test_concurrent_lookups_share_one_listing_per_directory(
    model: FlywheelFS, demo_site: Any
) -> None:
    mark = quiet_mark(demo_site)
    paths = [f"{SES}/DWI/DWI.nii.gz", f"{SES}/DWI/DWI.dicom.zip", f"{SES}/scan_notes.txt"] * 8
    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(lambda p: model.getattr(p).size, paths))
    assert all(sizes)
    # The root (one page of groups, one of projects), group, project, subject, session.
    assert len(requests_since(demo_site, mark)) == 2 + 4


def test_a_new_version_is_seen_after_the_ttl_and_open_says_whether_to_keep_pages(
    make_model: Callable[..., FlywheelFS], scratch_project: Any
) -> None:
    scratch_project.upload_file(flywheel.FileSpec("versions.txt", b"version one\n"))
    model = make_model(metadata_ttl=1)
    path = f"{scratch_project.group}/Model Scratch/versions.txt"
    fh1, keep1, _ = model.open(path, os.O_RDONLY)
    fh2, keep2, _ = model.open(path, os.O_RDONLY)
    assert (keep1, keep2) == (False, True)  # same version: the kernel may keep its pages
    scratch_project.upload_file(flywheel.FileSpec("versions.txt", b"version two, longer\n"))
    time.sleep(1.2)
    # Version one is open (and in the kernel's pages): its size stands while it is.
    assert model.getattr(path).size == len(b"version one\n")
    fh3, keep3, direct3 = model.open(path, os.O_RDONLY)
    assert (keep3, direct3) == (False, True)  # a new version, read past the page cache
    # The handles opened at version one still read version one.
    assert model.read(fh1, 0, 100) == b"version one\n"
    assert model.read(fh3, 0, 100) == b"version two, longer\n"
    model.release(fh1)
    model.release(fh2)
    # Nothing holds version one open any more: the path shows the new version.
    assert model.getattr(path).size == len(b"version two, longer\n")
    fh4, keep4, direct4 = model.open(path, os.O_RDONLY)
    assert (keep4, direct4) == (False, False)  # the kernel must drop version one's pages
    model.release(fh4)
    for fh in (fh3,):
        model.release(fh)


def test_two_files_of_one_name_in_a_listing_are_both_shown_and_marked() -> None:
    # Analysis inputs need not have unique names (the SDK's get_analysis_input_files may
    # return several); the sandbox keeps one per name, so the listing is built directly.
    from fwfs.fs.nodes import File
    from fwfs.fs.tree import NAME_SHARED, _named_files
    from fwfs.models import ContainerRef, parse_file

    parent = ContainerRef("analysis", "6b0c5cfdafda0ce900000009")
    docs = [{"name": "a.txt", "file_id": fid, "size": 2} for fid in ("f1", "f2")]
    docs.append({"name": "b.txt", "file_id": "f3", "size": 2})
    listing = _named_files([parse_file(d, parent) for d in docs])
    assert len(listing) == 3 and "b.txt" in listing and "a.txt" not in listing
    twins = {name: node for name, node in listing.items() if name != "b.txt"}
    assert all(isinstance(n, File) and n.info.raw.get(NAME_SHARED) for n in twins.values())
    assert {n.info.file_id for n in twins.values() if isinstance(n, File)} == {"f1", "f2"}
    b = listing["b.txt"]
    assert isinstance(b, File) and not b.info.raw.get(NAME_SHARED)

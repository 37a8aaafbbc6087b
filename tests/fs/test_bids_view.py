"""`<group>/<project>.bids/` in the model (fs/bidsview.py over fwfs/bids/rules.py), against
the demo site and the `--strict` one: the demo's `Anxiety Study`, curated as the
curate-bids gear leaves a project (docs/SANDBOX.md, "BIDS curation in the demo").

What a neuroimager checks: the tree a BIDS app sees, each planted case, bytes equal to the
site's, a synthesized sidecar equal to what the exporter's rules make from the file's
metadata (computed here from the SDK's view of the site, not by the view's code), stable
sizes, the listing cost from the access log, EROFS. The claims of docs/SEMANTICS.md's "BIDS
view" are each checked here.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import flywheel
import pytest
from writekit import errno_of, read_all

from fwfs.bids import ERRORS_NAME
from fwfs.client import FlywheelClient
from fwfs.config import ClientConfig, MountConfig
from fwfs.fs import FlywheelFS
from fwfs.fs.nodes import BidsFile
from fwfs.testing.faults import Clock

pytestmark = pytest.mark.timeout(180)

GROUP = "flywheel"
PROJECT = "Anxiety Study"
VIEW = f"{GROUP}/{PROJECT}.bids"
T1W = "sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz"
BOLD = "sub-01/ses-followup/func/sub-01_ses-followup_task-rest_bold.nii.gz"
FMAP = "sub-01/ses-followup/fmap/sub-01_ses-followup_dir-PA_epi"
DUPLICATE = "sub-03/ses-baseline/anat/sub-03_ses-baseline_T1w.nii.gz"
INVALID = "sub-02/ses-followup/anat/sub-02_ses-followup_acq-3D FLAIR_FLAIR.nii.gz"
INVALID_MESSAGE = "Acq '3D FLAIR' does not match '^[a-zA-Z0-9]*$'"
MakeModel = Callable[..., FlywheelFS]


@pytest.fixture(params=["demo", "strict"])
def site(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_site")


@pytest.fixture
def make_model(site: Any, new_model: MakeModel) -> MakeModel:
    """`make_model(**MountConfig fields)`: a read-only model of `site` (TTL 300 s)."""

    def make(**config: Any) -> FlywheelFS:
        config.setdefault("metadata_ttl", 300)
        return new_model(site.api_key, verify=site.verify, **config)

    return make


@pytest.fixture
def sdk(site: Any) -> Any:
    return site.client()


def walk(fs: FlywheelFS, top: str = VIEW) -> dict[str, Any]:
    """Every file below `top` by its path relative to `top`, with its getattr."""
    out: dict[str, Any] = {}
    todo = [""]
    while todo:
        rel = todo.pop()
        for name, attr in fs.readdir(posixpath.join(top, rel) if rel else top):
            path = posixpath.join(rel, name) if rel else name
            if attr.is_dir:
                todo.append(path)
            else:
                out[path] = fs.getattr(f"{top}/{path}")
    return out


def read(fs: FlywheelFS, path: str) -> bytes:
    fh = fs.open(path, os.O_RDONLY).fh
    try:
        return read_all(fs, fh)
    finally:
        fs.release(fh)


def source_ids(fs: FlywheelFS, files: dict[str, Any]) -> dict[str, str]:
    """The site file id behind each data file of the view."""
    out = {}
    for path in files:
        node = fs.lookup(f"{VIEW}/{path}")
        if isinstance(node, BidsFile) and node.entry.source is not None:
            out[path] = node.entry.source.file_id
    return out


def report(fs: FlywheelFS) -> list[str]:
    return read(fs, f"{VIEW}/{ERRORS_NAME}").decode().splitlines()


def demo_file(sdk: Any, subject: str, session: str, acq: str, name: str, nth: int = 0) -> Any:
    """The SDK's file (whole `info`) of the demo: the `nth` session of that label."""
    project = sdk.lookup(f"{GROUP}/{PROJECT}")
    subj = next(s for s in project.subjects() if s.label == subject)
    ses = sorted((s for s in subj.sessions() if s.label == session), key=lambda s: s.id)[nth]
    acquisition = next(a for a in ses.acquisitions() if a.label == acq).reload()
    return next(f for f in acquisition.files if f.name == name)


def exporter_sidecar(info: dict[str, Any], path: str) -> bytes:
    """The exporter's rules, written out here: `info` minus BIDS, `delete_info`, then
    `set_info`; TaskName from Task for func when missing; sort_keys, indent 4, no newline."""
    bids = info["BIDS"]
    content = {k: v for k, v in info.items() if k != "BIDS"}
    for key in bids.get("delete_info", []):
        content.pop(key, None)
    content.update(bids.get("set_info", {}))
    if "/func/" in path and "TaskName" not in content and bids.get("Task"):
        content["TaskName"] = bids["Task"]
    return json.dumps(content, sort_keys=True, indent=4).encode()


# ---- the tree ------------------------------------------------------------------------------


def test_the_view_is_the_projects_bids_dataset(make_model: MakeModel) -> None:
    fs = make_model()
    files = walk(fs)
    top = {p for p in files if "/" not in p}
    assert top == {
        "dataset_description.json",
        "README.txt",
        "participants.tsv",
        "participants.json",
        ERRORS_NAME,
    }
    assert {name for name, a in fs.readdir(VIEW) if a.is_dir} == {f"sub-0{n}" for n in (1, 2, 3, 4)}
    folders = {posixpath.dirname(p) for p in files if p.count("/") == 3}
    assert {f.split("/")[-1] for f in folders} == {"anat", "func", "dwi", "fmap"}
    for sub, ses in [("01", "baseline"), ("01", "followup"), ("02", "baseline")]:
        where, stem = f"sub-{sub}/ses-{ses}", f"sub-{sub}_ses-{ses}"
        assert f"{where}/anat/{stem}_T1w.nii.gz" in files
        assert f"{where}/func/{stem}_task-rest_bold.nii.gz" in files
        assert f"{where}/func/{stem}_task-rest_bold.json" in files
        for ext in ("nii.gz", "bval", "bvec", "json"):
            assert f"{where}/dwi/{stem}_dwi.{ext}" in files
    assert {f"{FMAP}.nii.gz", f"{FMAP}.json"} <= set(files)
    # Nothing the curation marks "NA", nothing of sourcedata/ by default.
    assert not any(p.startswith("sourcedata") or p.endswith((".pdf", ".csv")) for p in files)
    # Every entry is read-only.
    assert all(a.mode & 0o222 == 0 for a in files.values())
    assert fs.getattr(VIEW).mode & 0o222 == 0


def test_the_planted_cases(make_model: MakeModel, sdk: Any) -> None:
    fs = make_model()
    files = walk(fs)
    ids = source_ids(fs, files)
    lines = report(fs)
    # The ignored acquisitions (sub-03's aborted first baseline): none of their files.
    for acq in ("fMRI rest", "DWI"):
        ignored = demo_file(sdk, "sub-03", "ses-baseline", acq, f"{acq.replace(' ', '_')}.nii.gz")
        assert ignored.file_id not in ids.values()
    # The other baseline session's are there.
    assert "sub-03/ses-baseline/func/sub-03_ses-baseline_task-rest_bold.nii.gz" in files
    # The duplicate pair: both left out, both named on one line of the report.
    assert DUPLICATE not in files
    assert DUPLICATE.replace(".nii.gz", ".json") not in files
    twins = [demo_file(sdk, "sub-03", "ses-baseline", "T1w", "T1w.nii.gz", n) for n in (0, 1)]
    line = next(x for x in lines if x.startswith(f"duplicate path: {DUPLICATE}:"))
    assert all(t.file_id in line for t in twins)
    # The invalid file: shown, and reported with its error message.
    assert INVALID in files
    assert any(x.startswith(f"invalid: {INVALID}: shown;") and INVALID_MESSAGE in x for x in lines)
    assert not any("sourcedata" in x for x in lines)
    # The report's mtime is the newest of the view's.
    assert fs.getattr(f"{VIEW}/{ERRORS_NAME}").mtime == max(a.mtime for a in files.values())


def test_sourcedata_only_with_the_option(make_model: MakeModel, sdk: Any) -> None:
    dicom = "sourcedata/sub-01/ses-baseline/T1w.dicom.zip"
    assert dicom not in walk(make_model())
    fs = make_model(bids_sourcedata=True)
    files = walk(fs)
    assert dicom in files
    want = demo_file(sdk, "sub-01", "ses-baseline", "T1w", "T1w.dicom.zip")
    assert files[dicom].size == want.size
    # sub-03's two T1w archives claim one path there too.
    assert any(x.startswith("duplicate path: sourcedata/sub-03/ses-baseline/") for x in report(fs))


# ---- bytes ---------------------------------------------------------------------------------


def test_a_data_file_is_its_site_file_read_through_the_same_cache(
    make_model: MakeModel, site: Any, sdk: Any
) -> None:
    fs = make_model()
    data = read(fs, f"{VIEW}/{BOLD}")
    site_file = demo_file(sdk, "sub-01", "ses-followup", "fMRI rest", "fMRI_rest.nii.gz")
    attr = fs.getattr(f"{VIEW}/{BOLD}")
    assert attr.size == len(data) == site_file.size
    assert attr.mtime == site_file.modified.timestamp()
    normal = f"{GROUP}/{PROJECT}/sub-01/ses-followup/fMRI rest/fMRI_rest.nii.gz"
    fs.getattr(normal)
    mark = site.quiet_mark()
    assert read(fs, normal) == data
    # Same (file_id, version) blocks: the normal path's read downloads nothing more.
    assert not [e for e in site.requests_since(mark) if "/files/" in e["path"]]
    assert fs.getxattr(f"{VIEW}/{BOLD}", "user.flywheel.file_id") == site_file.file_id.encode()


@pytest.mark.parametrize(
    ("path", "where"),
    [
        # delete_info then set_info
        (T1W, ("sub-01", "ses-baseline", "T1w", "T1w.nii.gz")),
        # func: TaskName
        (BOLD, ("sub-01", "ses-followup", "fMRI rest", "fMRI_rest.nii.gz")),
        (
            "sub-02/ses-baseline/dwi/sub-02_ses-baseline_dwi.nii.gz",
            ("sub-02", "ses-baseline", "DWI", "DWI.nii.gz"),
        ),
    ],
)
def test_a_synthesized_sidecar_is_the_exporters(
    make_model: MakeModel, sdk: Any, path: str, where: tuple[str, str, str, str]
) -> None:
    fs = make_model()
    image = demo_file(sdk, *where)
    expected = exporter_sidecar(dict(image.info), path)
    sidecar = f"{VIEW}/{path.replace('.nii.gz', '.json')}"
    data = read(fs, sidecar)
    assert data == expected
    attr = fs.getattr(sidecar)
    assert attr.size == len(data)
    assert attr.mtime == image.modified.timestamp()
    content = json.loads(data)
    if "/anat/" in path and where[0] == "sub-01":
        assert "ImageComments" not in content
        assert content["InstitutionName"] == "FWFS Sandbox Imaging Centre"
    if "/func/" in path:
        assert content["TaskName"] == "rest"
    # Stable: a second model makes the same bytes.
    assert read(make_model(), sidecar) == data


def test_a_curated_sidecar_is_served_as_it_is(make_model: MakeModel, sdk: Any) -> None:
    fs = make_model()
    real = demo_file(sdk, "sub-01", "ses-followup", "fmap PA", "fmap_PA_epi.json")
    data = read(fs, f"{VIEW}/{FMAP}.json")
    site_path = f"{GROUP}/{PROJECT}/sub-01/ses-followup/fmap PA/fmap_PA_epi.json"
    assert data == read(fs, site_path) and len(data) == real.size
    assert data.startswith(b"{\n\t")  # dcm2niix's layout, not the sorted synthesized one
    assert json.loads(data)["IntendedFor"] == [
        "ses-followup/func/sub-01_ses-followup_task-rest_bold.nii.gz"
    ]


# ---- costs, staleness ----------------------------------------------------------------------


def test_listing_the_whole_view_costs_three_requests_whatever_the_files(
    make_model: MakeModel, site: Any
) -> None:
    fs = make_model()
    fs.readdir(GROUP)
    mark = site.quiet_mark()
    assert fs.getattr(VIEW).is_dir
    assert site.requests_since(mark) == []
    files = walk(fs)
    asked = [f"{e['method']} {e['path']}" for e in site.requests_since(mark)]
    project_id = fs.getxattr(f"{GROUP}/{PROJECT}", "user.flywheel.id").decode()
    assert sorted(asked) == sorted(
        [
            f"GET /api/projects/{project_id}",
            f"GET /api/projects/{project_id}/sessions",
            f"GET /api/projects/{project_id}/acquisitions",
        ]
    )
    assert len(files) > 10 * len(asked)
    # Within the TTL, the view is kept: a second walk asks nothing.
    mark = site.quiet_mark()
    walk(fs)
    assert site.requests_since(mark) == []
    # `fwfs refresh` of the view forgets it, without a request; the next walk lists again.
    assert fs.refresh(VIEW) == 1
    assert site.requests_since(mark) == []
    walk(fs)
    assert len(site.requests_since(mark)) == 3


def test_many_first_uses_at_once_compute_the_view_once(make_model: MakeModel, site: Any) -> None:
    fs = make_model()
    fs.readdir(GROUP)
    mark = site.quiet_mark()
    with ThreadPoolExecutor(8) as pool:
        listed = list(pool.map(lambda _: sorted(n for n, _ in fs.readdir(VIEW)), range(16)))
    assert all(x == listed[0] for x in listed) and "sub-01" in listed[0]
    assert len(site.requests_since(mark)) == 3


def test_the_view_is_reachable_but_listed_only_with_list_bids(make_model: MakeModel) -> None:
    fs = make_model()
    assert f"{PROJECT}.bids" not in {name for name, _ in fs.readdir(GROUP)}
    assert fs.getattr(VIEW).is_dir
    listed = dict(make_model(list_bids=True).readdir(GROUP))
    assert listed[f"{PROJECT}.bids"].is_dir
    assert listed[PROJECT].is_dir


# ---- read-only -----------------------------------------------------------------------------


def test_every_change_in_the_view_is_erofs(make_fs: Callable[..., FlywheelFS]) -> None:
    fs = make_fs()
    data_file, folder = f"{VIEW}/{T1W}", f"{VIEW}/sub-01/ses-baseline/anat"
    calls: list[Callable[[], Any]] = [
        lambda: fs.open(data_file, os.O_WRONLY),
        lambda: fs.open(f"{VIEW}/{ERRORS_NAME}", os.O_RDWR),
        lambda: fs.create(f"{folder}/new.nii.gz"),
        lambda: fs.create(f"{VIEW}/new.txt"),
        lambda: fs.mkdir(f"{VIEW}/sub-99"),
        lambda: fs.mkdir(VIEW),
        lambda: fs.unlink(data_file),
        lambda: fs.rmdir(folder),
        lambda: fs.rename(data_file, f"{folder}/moved.nii.gz"),
        lambda: fs.rename(f"{GROUP}/{PROJECT}/README.txt", f"{VIEW}/README.txt"),
        lambda: fs.rename(data_file, f"{GROUP}/{PROJECT}/moved.nii.gz"),
        lambda: fs.truncate(data_file, 0),
        lambda: fs.set_metadata(data_file),
    ]
    assert [errno_of(c) for c in calls] == [errno.EROFS] * len(calls)
    assert fs.getattr(data_file).mode & 0o222 == 0 and fs.getattr(folder).mode & 0o222 == 0
    assert "README.txt" in {n for n, _ in fs.readdir(f"{GROUP}/{PROJECT}")}


def test_a_real_project_named_like_a_view_wins(make_fs: Callable[..., FlywheelFS], fw: Any) -> None:
    gid = f"fwfs-bids-{os.getpid()}-{id(fw) % 10_000}"
    fw.add_group(flywheel.Group(gid, "bids view tests"))
    group = fw.get_group(gid)
    group.add_project(label="Study")
    real = group.add_project(label="Study.bids")
    fs = make_fs()
    node = fs.lookup(f"{gid}/Study.bids")
    assert not isinstance(node, BidsFile)
    assert fs.getxattr(f"{gid}/Study.bids", "user.flywheel.id") == real.id.encode()
    # An uncurated project's view holds only the report, which says what is missing.
    assert {n for n, _ in fs.readdir(f"{gid}/Study.bids.bids")} == {ERRORS_NAME}


class _Lists:
    """The site as a core whose list answers leave out the acquisitions' files."""

    def __init__(self, inner: FlywheelClient) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list_children(self, kind: Any, cid: str, child_kind: Any, **kw: Any) -> list[Any]:
        docs = self.inner.list_children(kind, cid, child_kind, **kw)
        if child_kind == "acquisition":
            docs = [{k: v for k, v in d.items() if k != "files"} for d in docs]
        return docs


def test_made_files_cost_nothing_and_a_list_without_files_costs_a_get_per_container(
    make_model: MakeModel, site: Any
) -> None:
    fs = make_model()
    files = walk(fs)
    mark = site.quiet_mark()
    made = [p for p in files if source_ids(fs, {p: None}) == {}]
    assert ERRORS_NAME in made and f"{T1W[:-7]}.json" in made
    for path in made:
        read(fs, f"{VIEW}/{path}")
    assert site.requests_since(mark) == []

    client = FlywheelClient(
        ClientConfig.from_api_key(site.api_key, verify=site.verify, retries=1, total_timeout=10)
    )
    lean = FlywheelFS(cast(Any, _Lists(client)), MountConfig(metadata_ttl=300))
    try:
        lean.readdir(GROUP)
        mark = site.quiet_mark()
        assert walk(lean) == files
        asked = [e["path"] for e in site.requests_since(mark)]
        acquisitions = [p for p in asked if p.startswith("/api/acquisitions/")]
        assert len(asked) == 3 + len(acquisitions)
        assert len(acquisitions) == len(set(acquisitions)) >= 20  # one GET per acquisition
    finally:
        lean.close()
        client.close()


def test_a_curation_change_shows_after_the_ttl_or_a_refresh(demo_site: Any, fw: Any) -> None:
    gid = f"fwfs-bids-ttl-{os.getpid()}"
    fw.add_group(flywheel.Group(gid, "bids view staleness"))
    project = fw.get_group(gid).add_project(label="Study")
    project.update_info({"BIDS": {"template": "project", "Sidecar": "x"}})
    session = project.add_subject(label="sub-01").add_session(label="ses-a")
    acquisition = session.add_acquisition(label="T1w")
    acquisition.upload_file(flywheel.FileSpec("t1.nii.gz", b"nifti"))
    where = {"Path": "sub-01/ses-a/anat", "Folder": "anat"}
    acquisition.update_file_info("t1.nii.gz", {"BIDS": {**where, "Filename": "a_T1w.nii.gz"}})
    clock = Clock()
    client = FlywheelClient(
        ClientConfig.from_api_key(demo_site.api_key, retries=1, total_timeout=10)
    )
    fs = FlywheelFS(client, MountConfig(metadata_ttl=60), clock=clock)
    view = f"{gid}/Study.bids/sub-01/ses-a/anat"
    try:
        assert {n for n, _ in fs.readdir(view)} == {"a_T1w.nii.gz"}
        acquisition.update_file_info("t1.nii.gz", {"BIDS": {**where, "Filename": "b_T1w.nii.gz"}})
        clock.advance(30)
        assert {n for n, _ in fs.readdir(view)} == {"a_T1w.nii.gz"}  # within the TTL
        clock.advance(31)
        assert {n for n, _ in fs.readdir(view)} == {"b_T1w.nii.gz"}
        acquisition.update_file_info("t1.nii.gz", {"BIDS": "NA"})
        assert fs.refresh(f"{gid}/Study.bids") == 1
        assert errno_of(lambda: fs.readdir(view)) == errno.ENOENT
        # Refreshing the project drops its view too.
        acquisition.update_file_info("t1.nii.gz", {"BIDS": {**where, "Filename": "c_T1w.nii.gz"}})
        fs.refresh(f"{gid}/Study")
        assert {n for n, _ in fs.readdir(view)} == {"c_T1w.nii.gz"}
    finally:
        fs.close()
        client.close()

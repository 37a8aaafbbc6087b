"""The demo's BIDS curation (fwfs/sandbox/bids_demo.py): each planted case is on the site,
every curated image agrees with its sidecar metadata, the SDK sees `info.BIDS`, and a strict
site trims list answers' `info` to the BIDS key as a real core does.

Paths are computed here from the metadata by the official exporter's rules
(flywheel_bids/export_bids.py, docs/SANDBOX.md "BIDS curation in the demo"), not by the
sandbox's code.
"""

from __future__ import annotations

import gzip
import json
from pathlib import PurePosixPath
from typing import Any

import nibabel as nib
import pytest
import requests

pytestmark = pytest.mark.timeout(120)

Site = Any  # tests/conftest.py's Site

PROJECT = "flywheel/Anxiety Study"
NEW_WAY = "data is in json sidecar, not file.info"


def bids(doc: Any) -> Any:
    """export_bids.py get_metadata: info.BIDS, or None when absent or "NA"."""
    info = doc.get("info") or {}
    value = info.get("BIDS")
    return None if value in (None, "NA") else value


def placed(fw: Any, sourcedata: bool = False) -> dict[str, list[tuple[Any, Any]]]:
    """Every file the exporter would place, by its path, as (container, file) pairs: with
    info.BIDS and a Filename, not ignored at file, acquisition or session level, not under
    sourcedata/ unless asked."""
    project = fw.lookup(PROJECT)
    out: dict[str, list[tuple[Any, Any]]] = {}

    def consider(container: Any, f: Any) -> None:
        meta = bids(f)
        if not meta or not meta.get("Filename") or meta.get("ignore"):
            return
        if not sourcedata and str(meta.get("Path", "")).startswith("sourcedata"):
            return
        path = str(PurePosixPath(meta["Path"], meta["Filename"]))
        out.setdefault(path, []).append((container, f))

    for f in project.reload().files:
        consider(project, f)
    for session in project.sessions():
        session = session.reload()
        if (bids(session) or {}).get("ignore"):
            continue
        for f in session.files:
            consider(session, f)
        for acq in session.acquisitions():
            acq = acq.reload()
            if (bids(acq) or {}).get("ignore"):
                continue
            for f in acq.files:
                consider(acq, f)
    return out


@pytest.fixture(scope="module")
def tree(fw: Any) -> dict[str, list[tuple[Any, Any]]]:
    return placed(fw)


def one(tree: dict[str, list[tuple[Any, Any]]], path: str) -> tuple[Any, Any]:
    claims = tree[path]
    assert len(claims) == 1, path
    return claims[0]


# ---- the planted cases ---------------------------------------------------------------


def test_project_is_curated_the_new_way_with_its_attachments_at_the_root(fw: Any) -> None:
    project = fw.lookup(PROJECT).reload()
    assert project.info["BIDS"]["Sidecar"] == NEW_WAY
    assert "Acknowledgements" not in project.info["BIDS"]  # not the old way
    assert project.info["pi"] == "Ada Lovelace"  # the project's own info is kept
    files = {f.name: f for f in project.files}
    for name in ("dataset_description.json", "README.txt", "participants.tsv"):
        meta = bids(files[name])
        assert (meta["Filename"], meta["Path"], meta["valid"]) == (name, "", True)
    assert files["participants.csv"].info["BIDS"] == "NA"
    assert files["protocol.pdf"].info["BIDS"] == "NA"
    description = json.loads(project.read_file("dataset_description.json"))
    assert description["Name"] == "Anxiety Study" and description["BIDSVersion"]
    rows = project.read_file("participants.tsv").decode().splitlines()
    assert rows[0].split("\t")[0] == "participant_id"
    assert [r.split("\t")[0] for r in rows[1:]] == ["sub-01", "sub-02", "sub-03", "sub-04"]


def test_sessions_carry_the_bids_labels(fw: Any) -> None:
    labels = set()
    for session in fw.lookup(PROJECT).sessions():
        meta = bids(session.reload())
        assert meta["template"] == "session" and meta["ignore"] is False
        labels.add((session.subject.label, meta["Subject"], meta["Label"]))
    assert ("sub-04 Zoë", "04", "baseline") in labels  # typed by the curator
    assert ("sub-01", "01", "followup") in labels


def test_the_ignored_acquisitions_are_sub_03s_aborted_scan(fw: Any) -> None:
    ignored = []
    for session in fw.lookup(PROJECT).sessions():
        for acq in session.acquisitions():
            meta = bids(acq.reload())
            assert meta["template"] == "acquisition"
            if meta["ignore"]:
                ignored.append((session.subject.label, session.label, session.id, acq.label))
    assert {(s, ses, label) for s, ses, _, label in ignored} == {
        ("sub-03", "ses-baseline", "fMRI rest"),
        ("sub-03", "ses-baseline", "DWI"),
    }
    assert len({sid for _, _, sid, _ in ignored}) == 1  # both in one of the two sessions


def test_one_path_is_claimed_twice(tree: dict[str, list[tuple[Any, Any]]]) -> None:
    twice = {path: claims for path, claims in tree.items() if len(claims) > 1}
    assert list(twice) == ["sub-03/ses-baseline/anat/sub-03_ses-baseline_T1w.nii.gz"]
    (a, fa), (b, fb) = twice["sub-03/ses-baseline/anat/sub-03_ses-baseline_T1w.nii.gz"]
    assert a.id != b.id and fa.name == fb.name == "T1w.nii.gz"


def test_one_file_is_invalid_with_the_gears_message(
    tree: dict[str, list[tuple[Any, Any]]],
) -> None:
    invalid = {p: bids(f) for p, claims in tree.items() for _, f in claims if not bids(f)["valid"]}
    assert list(invalid) == [
        "sub-02/ses-followup/anat/sub-02_ses-followup_acq-3D FLAIR_FLAIR.nii.gz"
    ]
    meta = next(iter(invalid.values()))
    assert meta["error_message"] == "Acq '3D FLAIR' does not match '^[a-zA-Z0-9]*$'"
    assert meta["Acq"] == "3D FLAIR"


def test_dicom_series_are_sourcedata_and_left_out_by_default(fw: Any, tree: Any) -> None:
    everything = placed(fw, sourcedata=True)
    extra = set(everything) - set(tree)
    assert extra and all(p.startswith("sourcedata/sub-") for p in extra)
    assert all(p.endswith(".dicom.zip") for p in extra)
    assert not any(p.endswith(".dicom.zip") for p in tree)


def test_func_dwi_fmap_and_the_fieldmaps_target(tree: dict[str, list[tuple[Any, Any]]]) -> None:
    _, bold = one(tree, "sub-01/ses-followup/func/sub-01_ses-followup_task-rest_bold.nii.gz")
    meta = bids(bold)
    assert (meta["Task"], meta["Suffix"], meta["sidecarChanges"]) == (
        "rest",
        "bold",
        {"TaskName": "rest"},
    )
    assert bold.info["TaskName"] == "rest"
    for ext in ("nii.gz", "bval", "bvec"):
        one(tree, f"sub-01/ses-followup/dwi/sub-01_ses-followup_dwi.{ext}")
    _, fmap = one(tree, "sub-01/ses-followup/fmap/sub-01_ses-followup_dir-PA_epi.nii.gz")
    assert bids(fmap)["IntendedFor"] == [{"Folder": "func"}]  # the resolver's filter
    # ... and its answer, relative to the subject's directory, names a file the tree has.
    assert fmap.info["IntendedFor"] == [
        "ses-followup/func/sub-01_ses-followup_task-rest_bold.nii.gz"
    ]
    for target in fmap.info["IntendedFor"]:
        assert f"sub-01/{target}" in tree


def test_the_fieldmap_has_a_curated_sidecar_the_others_are_synthesized(
    tree: dict[str, list[tuple[Any, Any]]],
) -> None:
    images = [p for p in tree if p.endswith(".nii.gz")]
    sidecars = [p for p in tree if p.endswith(".json") and "/" in p]
    assert sidecars == ["sub-01/ses-followup/fmap/sub-01_ses-followup_dir-PA_epi.json"]
    acq, f = one(tree, sidecars[0])
    sidecar = json.loads(acq.read_file(f.name))
    assert sidecar["IntendedFor"] == f.info["IntendedFor"]
    assert sidecar["PhaseEncodingDirection"] == "j"
    # Every other image has its sidecar fields in file.info, for the exporter to write out.
    for path in images:
        if path.replace(".nii.gz", ".json") in tree:
            continue
        for _, image in tree[path]:
            assert {"RepetitionTime", "EchoTime", "FlipAngle"} <= image.info.keys(), path


def test_set_info_and_delete_info_on_one_t1w(tree: dict[str, list[tuple[Any, Any]]]) -> None:
    _, t1w = one(tree, "sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz")
    meta = bids(t1w)
    assert meta["delete_info"] == ["ImageComments"] and "ImageComments" in t1w.info
    assert meta["set_info"] == {"InstitutionName": "FWFS Sandbox Imaging Centre"}


# ---- images against their metadata ---------------------------------------------------


def load(container: Any, name: str) -> Any:
    return nib.Nifti1Image.from_bytes(gzip.decompress(container.read_file(name)))


def test_every_curated_image_agrees_with_its_sidecar(
    tree: dict[str, list[tuple[Any, Any]]],
) -> None:
    checked = {"anat": 0, "func": 0, "dwi": 0, "fmap": 0}
    grids = {}
    for path, claims in tree.items():
        if not path.endswith(".nii.gz"):
            continue
        for acq, f in claims:
            image = load(acq, f.name)
            header = image.header
            meta, folder = f.info, bids(f)["Folder"]
            sidecar = meta
            side = path.replace(".nii.gz", ".json")
            if side in tree:
                side_acq, side_file = tree[side][0]
                sidecar = json.loads(side_acq.read_file(side_file.name))
            zooms = header.get_zooms()
            assert header.get_xyzt_units() == ("mm", "sec"), path
            assert zooms[2] == pytest.approx(sidecar["SliceThickness"]), path
            assert sidecar["EchoTime"] < sidecar["RepetitionTime"], path
            if folder in ("func", "dwi"):
                assert image.ndim == 4, path
                assert zooms[3] == pytest.approx(sidecar["RepetitionTime"]), path
            else:
                assert image.ndim == 3, path
            if folder == "func":
                assert sidecar["TaskName"] == bids(f)["Task"]
                timing = sidecar["SliceTiming"]
                assert len(timing) == image.shape[2], path
                assert all(0 <= t < sidecar["RepetitionTime"] for t in timing), path
                assert image.shape[3] == 10
            if folder == "dwi":
                bval = path.replace(".nii.gz", ".bval")
                bvec = path.replace(".nii.gz", ".bvec")
                values = read_text(tree, bval).split()
                rows = [r.split() for r in read_text(tree, bvec).splitlines()]
                assert len(values) == image.shape[3], path
                assert len(rows) == 3 and all(len(r) == image.shape[3] for r in rows), path
                assert float(values[0]) == 0  # a b=0 volume first
            if folder == "fmap":
                assert sidecar["PhaseEncodingDirection"] == "j"
            grids[path] = (image.shape[:3], tuple(zooms[:3]))
            checked[folder] += 1
    assert checked == {"anat": 8, "func": 6, "dwi": 5, "fmap": 1}
    # The fieldmap covers its target's grid.
    target = "sub-01/ses-followup/func/sub-01_ses-followup_task-rest_bold.nii.gz"
    assert grids["sub-01/ses-followup/fmap/sub-01_ses-followup_dir-PA_epi.nii.gz"] == grids[target]


def read_text(tree: dict[str, list[tuple[Any, Any]]], path: str) -> str:
    container, f = one(tree, path)
    return str(container.read_file(f.name).decode())


# ---- what the SDK sees -----------------------------------------------------------------


def test_the_sdk_reads_info_bids_from_a_file_and_an_acquisition(fw: Any) -> None:
    acq = fw.lookup(f"{PROJECT}/sub-01/ses-baseline/fMRI rest")
    full = fw.get_acquisition(acq.id)
    assert bids(full)["template"] == "acquisition"
    nifti = full.get_file("fMRI_rest.nii.gz")
    assert nifti.info["BIDS"]["Filename"] == "sub-01_ses-baseline_task-rest_bold.nii.gz"
    by_id = fw.get_file(nifti.file_id)
    assert by_id.info["BIDS"] == nifti.info["BIDS"]
    assert by_id.info["RepetitionTime"] == 2.0


# ---- a strict site trims info in lists -------------------------------------------------


def api(site: Site, path: str, **params: Any) -> Any:
    answer = requests.get(
        site.api_url + path, headers=site.headers(), params=params, verify=site.verify, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def first_session(site: Site) -> str:
    """sub-01/ses-baseline's id."""
    sessions = api(site, "/sessions", filter="label=ses-baseline")
    return str(next(s["_id"] for s in sessions if s["subject"]["label"] == "sub-01"))


def test_strict_lists_keep_only_info_bids_and_gets_are_whole(strict_site: Site) -> None:
    fw = strict_site.client()
    # (The SDK asks for no subject level, which this site gates: find the session by list.)
    ses_id = first_session(strict_site)
    listed = api(strict_site, f"/sessions/{ses_id}/acquisitions")
    bold = next(a for a in listed if a["label"] == "fMRI rest")
    assert bold["info"] == {
        "BIDS": {"template": "acquisition", "rule_id": "bids_acquisition", "ignore": False}
    }
    assert bold["info_exists"] is True
    nifti = next(f for f in bold["files"] if f["name"] == "fMRI_rest.nii.gz")
    assert set(nifti["info"]) == {"BIDS"} and nifti["info_exists"] is True
    assert nifti["info"]["BIDS"]["Task"] == "rest"

    whole = api(strict_site, f"/acquisitions/{bold['_id']}")
    whole_nifti = next(f for f in whole["files"] if f["name"] == "fMRI_rest.nii.gz")
    assert whole_nifti["info"]["RepetitionTime"] == 2.0
    assert whole_nifti["info"]["BIDS"] == nifti["info"]["BIDS"]

    # include_all_info=true: the SDK's "Include all info in returned objects".
    everything = api(strict_site, f"/sessions/{ses_id}/acquisitions", include_all_info="true")
    full_nifti = next(
        f
        for a in everything
        if a["label"] == "fMRI rest"
        for f in a["files"]
        if f["name"] == "fMRI_rest.nii.gz"
    )
    assert full_nifti["info"] == whole_nifti["info"]

    # The SDK's finders go through the same trimming; get_acquisition does not.
    found = fw.get_session_acquisitions(ses_id)
    assert set(next(a for a in found if a.label == "fMRI rest").info) == {"BIDS"}
    assert "RepetitionTime" in fw.get_acquisition(bold["_id"]).get_file("fMRI_rest.nii.gz").info


def test_strict_lists_drop_other_info_but_filter_on_it(strict_site: Site) -> None:
    projects = api(strict_site, "/projects", filter="info.pi=Ada Lovelace")
    assert [p["label"] for p in projects] == ["Anxiety Study"]  # filtered on the whole info
    assert set(projects[0]["info"]) == {"BIDS"} and projects[0]["info_exists"] is True
    pilot = next(p for p in api(strict_site, "/projects") if p["label"] == "Pilot Imaging")
    assert pilot["info"] == {} and pilot["info_exists"] is False
    sessions = api(strict_site, "/sessions", filter="label=ses-followup")
    assert all(set(s["info"]) == {"BIDS"} for s in sessions)
    assert all(s["subject"]["info"] == {} for s in sessions)  # the joined subject too


def test_default_lists_are_whole(demo_site: Site) -> None:
    fw = demo_site.client()
    session = fw.lookup(f"{PROJECT}/sub-01/ses-baseline")
    listed = api(demo_site, f"/sessions/{session.id}/acquisitions")
    bold = next(a for a in listed if a["label"] == "fMRI rest")
    nifti = next(f for f in bold["files"] if f["name"] == "fMRI_rest.nii.gz")
    assert nifti["info"]["RepetitionTime"] == 2.0

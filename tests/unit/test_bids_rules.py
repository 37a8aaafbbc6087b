"""fwfs/bids/rules.py: the exporter's placement rules over plain metadata (no site).

Each case states a rule of flywheel-bids' export_bids.py (docs/SANDBOX.md, "What the
exporter does") or one of the view's own (docs/SEMANTICS.md, "BIDS view") and checks what
a BIDS tool would see: the paths, the bytes made, the error report's lines.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fwfs.bids import ERRORS_NAME, build
from fwfs.bids.rules import parse_bool
from fwfs.models import Container, parse_container

NEW_WAY = {"template": "project", "Sidecar": "data is in json sidecar, not file.info"}
MODIFIED = "2024-05-01T10:00:00+00:00"


def f(name: str, bids: Any = None, **info: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "file_id": f"id-{name}",
        "version": 1,
        "size": 100,
        "modified": MODIFIED,
        "info": dict(info),
    }
    if bids is not None:
        doc["info"]["BIDS"] = bids
    return doc


def placed(path: str, name: str, **more: Any) -> dict[str, Any]:
    folder, _, filename = path.rpartition("/")
    return {"Filename": filename, "Path": folder, "Folder": folder.rpartition("/")[2], **more}


def project(files: list[dict[str, Any]], bids: Any = None) -> Container:
    return parse_container(
        {
            "_id": "p1",
            "label": "Study",
            "container_type": "project",
            "modified": MODIFIED,
            "info": {"BIDS": NEW_WAY if bids is None else bids},
            "files": files,
        }
    )


def session(sid: str = "s1", ignore: Any = False, files: Any = ()) -> Container:
    return parse_container(
        {
            "_id": sid,
            "label": f"ses-{sid}",
            "container_type": "session",
            "parents": {"project": "p1"},
            "info": {"BIDS": {"template": "session", "ignore": ignore}},
            "files": list(files),
        }
    )


def acq(aid: str, files: list[dict[str, Any]], sid: str = "s1", ignore: Any = False) -> Container:
    return parse_container(
        {
            "_id": aid,
            "label": aid,
            "container_type": "acquisition",
            "parents": {"project": "p1", "session": sid},
            "info": {"BIDS": {"template": "acquisition", "ignore": ignore}},
            "files": files,
        }
    )


DESC = f("dataset_description.json", {"Filename": "dataset_description.json", "Path": ""})
T1 = "sub-01/ses-a/anat/sub-01_ses-a_T1w.nii.gz"
BOLD = "sub-01/ses-a/func/sub-01_ses-a_task-rest_bold.nii.gz"


def test_placement_follows_path_and_filename_and_skips_na_and_unnamed() -> None:
    tree = build(
        project([DESC, f("notes.pdf", "NA"), f("extra.tsv", {"Path": "x"})]),
        [session()],
        [acq("a1", [f("t1.nii.gz", placed(T1, "t1")), f("raw.txt", {"template": "x"})])],
    )
    assert set(tree.files) == {"dataset_description.json", "extra.tsv", T1, ERRORS_NAME}
    source = tree.files[T1].source
    assert source is not None and source.name == "t1.nii.gz"
    assert tree.dirs[""] == (ERRORS_NAME, "dataset_description.json", "extra.tsv", "sub-01")
    assert tree.dirs["sub-01/ses-a/anat"] == ("sub-01_ses-a_T1w.nii.gz",)


@pytest.mark.parametrize(
    ("value", "ignored"),
    [(True, True), ("TRUE", True), (1, True), (0, False), ("false", False), (None, False)],
)
def test_a_file_is_ignored_as_parse_bool_reads_its_ignore(value: Any, ignored: bool) -> None:
    assert parse_bool(value) is ignored
    tree = build(
        project([DESC]), [session()], [acq("a1", [f("t1.nii", placed(T1, "t1", ignore=value))])]
    )
    assert (T1 in tree.files) is not ignored


def test_ignored_sessions_and_acquisitions_take_their_files_out() -> None:
    one = f("t1.nii.gz", placed(T1, "t1"))
    other = f("b.nii.gz", placed(BOLD, "b"))
    tree = build(
        project([DESC]),
        [session("s1"), session("s2", ignore=True)],
        [
            acq("a1", [one], ignore=True),
            acq("a2", [other], sid="s2"),
            acq("a3", [other], sid="gone"),
        ],
    )
    assert T1 not in tree.files and BOLD not in tree.files


def test_sourcedata_only_when_asked() -> None:
    dicom = f("t1.dicom.zip", {"Filename": "t1.dicom.zip", "Path": "sourcedata/sub-01"})
    args = (project([DESC]), [session()], [acq("a1", [dicom])])
    assert "sourcedata/sub-01/t1.dicom.zip" not in build(*args).files
    assert "sourcedata/sub-01/t1.dicom.zip" in build(*args, sourcedata=True).files


def test_two_files_claiming_one_path_are_both_left_out_and_named() -> None:
    tree = build(
        project([DESC]),
        [session("s1"), session("s2")],
        [
            acq("a1", [f("one.nii.gz", placed(T1, "x"))]),
            acq("a2", [f("two.nii.gz", placed(T1, "x"))], sid="s2"),
        ],
    )
    assert T1 not in tree.files
    assert not any(p.endswith("T1w.json") for p in tree.files)
    report = tree.files[ERRORS_NAME].data or b""
    line = next(x for x in report.decode().splitlines() if x.startswith("duplicate path"))
    assert T1 in line and '"one.nii.gz"' in line and '"two.nii.gz"' in line


def test_invalid_files_are_shown_and_reported_with_their_message() -> None:
    meta = placed(T1, "x", valid=False, error_message="Acq 'a b' does not match\nsecond")
    tree = build(project([DESC]), [session()], [acq("a1", [f("t1.nii.gz", meta)])])
    assert T1 in tree.files
    assert any(
        e.startswith(f"invalid: {T1}: shown;") and e.endswith("Acq 'a b' does not match / second")
        for e in tree.errors
    )


def test_a_sidecar_is_synthesized_from_info_with_delete_then_set_and_task_name() -> None:
    meta = placed(BOLD, "b", Task="rest", delete_info=["Secret", "Absent"])
    meta["set_info"] = {"EchoTime": 0.5, "Secret": "set after delete"}
    image = f("b.nii.gz", meta, RepetitionTime=2.0, EchoTime=0.03, Secret="x", Zoë="ü")
    tree = build(project([DESC]), [session()], [acq("a1", [image])])
    side = tree.files[BOLD.replace(".nii.gz", ".json")]
    expected = {
        "RepetitionTime": 2.0,
        "EchoTime": 0.5,
        "Secret": "set after delete",
        "Zoë": "ü",
        "TaskName": "rest",
    }
    assert side.data == json.dumps(expected, sort_keys=True, indent=4).encode()
    assert not side.data.endswith(b"\n") and side.size == len(side.data)
    assert side.mtime == tree.files[BOLD].mtime


def test_no_sidecar_from_bids_alone_and_none_for_session_images() -> None:
    only = f("t1.nii.gz", placed(T1, "t1"))
    ses_image = f("s.nii", placed("sub-01/ses-a/anat/sub-01_ses-a_T2w.nii", "s"), TR=1)
    tree = build(project([DESC]), [session(files=[ses_image])], [acq("a1", [only])])
    assert not any(p.endswith(".json") and p.startswith("sub-") for p in tree.files)


def test_a_curated_sidecar_wins_the_new_way_and_gives_way_the_old_way() -> None:
    real = f("t1.json", placed(T1.replace(".nii.gz", ".json"), "j"))
    image = f("t1.nii.gz", placed(T1, "t1"), EchoTime=0.01)
    side = T1.replace(".nii.gz", ".json")
    new = build(project([DESC]), [session()], [acq("a1", [image, real])])
    assert new.files[side].source is not None
    old_bids = {"Acknowledgements": "", "Name": "Study", "BIDSVersion": "1.8.0"}
    old = build(project([DESC], bids=old_bids), [session()], [acq("a1", [image, real])])
    assert old.files[side].data == json.dumps({"EchoTime": 0.01}, sort_keys=True, indent=4).encode()
    description = old.files["dataset_description.json"]
    assert description.source is None
    assert description.data == json.dumps(old_bids, sort_keys=True, indent=4).encode()


def test_a_new_way_project_without_a_description_says_so() -> None:
    tree = build(project([]), [session()], [])
    assert "dataset_description.json" not in tree.files
    assert any(e.startswith("missing: dataset_description.json") for e in tree.errors)


@pytest.mark.parametrize("where", ["../escape", "/etc", "a/../../b"])
def test_a_path_leaving_the_dataset_is_reported_not_placed(where: str) -> None:
    tree = build(
        project([DESC]),
        [session()],
        [acq("a1", [f("x.nii", {"Filename": "x.nii", "Path": where})])],
    )
    assert set(tree.files) == {"dataset_description.json", ERRORS_NAME}
    assert any(e.startswith("unsafe path") and '"x.nii"' in e for e in tree.errors)


def test_the_error_file_is_always_there_and_lists_nothing_when_all_is_well() -> None:
    tree = build(project([DESC]), [session()], [acq("a1", [f("t1.nii.gz", placed(T1, "t1"))])])
    report = (tree.files[ERRORS_NAME].data or b"").decode().splitlines()
    assert len(report) == 1 and report[0].startswith("# BIDS view")
    assert tree.errors == ()


def test_a_file_where_a_directory_must_be_is_left_out() -> None:
    blocker = f("sub-01", {"Filename": "sub-01", "Path": ""})
    tree = build(project([DESC]), [session()], [acq("a1", [blocker, f("t1.nii", placed(T1, "t"))])])
    assert T1 in tree.files and "sub-01" in tree.dirs and "sub-01" not in tree.files
    assert any(e.startswith("file in the way of a directory: sub-01:") for e in tree.errors)

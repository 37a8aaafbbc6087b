"""The BIDS view (`<group>/<project>.bids/`, docs/BIDS.md) proved with the field's own tools,
on real mounts of the demo site (issue 16, part 3):

* the official validator (npm `bids-validator`, installed by scripts/test into .cache/node)
  finds no error but the ones the demo's planted invalid file should cause;
* pybids' `BIDSLayout` finds every subject, session, task and run the curation defines, and
  `get_metadata` answers the synthesized sidecars' fields (and the curated one's);
* building that layout on a fresh mount moves a fraction of the dataset's bytes, with a
  number of requests bounded by the containers, not the files.

What to expect is computed here from the site's metadata (the SDK) by the official exporter's
rules (flywheel_bids/export_bids.py, docs/SANDBOX.md "What the exporter does"), not from the
view's code or a list of paths. Each test runs against the default sandbox and `--strict`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from mountkit import DEMO_PROJECT, Mount, quiet_mark, requests_since

pytestmark = pytest.mark.timeout(300)

VIEW = f"{DEMO_PROJECT}.bids"
REPO = Path(__file__).resolve().parents[2]
# scripts/setup.sh ensure_bids_validator puts it here; scripts/test exports the variable.
VALIDATOR_ENV = "FWFS_TEST_BIDS_VALIDATOR"
VALIDATOR_DEFAULT = REPO / ".cache/node/node_modules/.bin/bids-validator"


# ---- what the view should hold: the exporter's rules over the site's metadata -------------


def bids_meta(doc: Any) -> Any:
    """export_bids.py get_metadata: `info.BIDS`, or None when absent or "NA"."""
    value = (doc.get("info") or {}).get("BIDS")
    return value if isinstance(value, dict) else None


def truthy(value: Any) -> bool:
    """export_bids.py parse_bool: true, a non-zero int, or "true" in any case."""
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


def define_path(meta: dict[str, Any], name: str) -> str | None:
    """export_bids.py define_path: `<Path>/<Filename>`; else a .json/.tsv at the root."""
    if meta.get("Filename"):
        return str(PurePosixPath(meta.get("Path") or "", meta["Filename"]))
    if ".json" in name or ".tsv" in name:
        return name
    return None


@dataclass
class Placed:
    """One file the exporter places: its container's kind and id, the file, its session."""

    kind: str
    cid: str
    file: Any
    session: Any = None


@dataclass
class Expected:
    """The view by the rules: every placed path (duplicates left out), the sidecars to be
    synthesized (path -> dict), the invalid paths, the sessions holding placed files."""

    files: dict[str, Placed] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)
    sidecars: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)

    def paths(self) -> set[str]:
        return set(self.files) | set(self.sidecars)

    def size(self) -> int:
        """The dataset's bytes: placed files' sizes plus the synthesized sidecars'."""
        sidecars = sum(len(synthesized_bytes(s)) for s in self.sidecars.values())
        return sum(int(p.file.size) for p in self.files.values()) + sidecars


def synthesized_bytes(sidecar: dict[str, Any]) -> bytes:
    # export_bids.py create_json_sidecar: json.dump(sort_keys=True, indent=4), no newline.
    return json.dumps(sidecar, sort_keys=True, indent=4).encode()


def expected_view(fw: Any, sourcedata: bool = False) -> Expected:
    """Walk `Anxiety Study` with the SDK (whole documents: a real core's lists trim `info`)
    and place its files by the exporter's rules."""
    project = fw.lookup(DEMO_PROJECT).reload()
    claims: dict[str, list[Placed]] = {}

    def consider(kind: str, cid: str, f: Any, session: Any = None) -> None:
        meta = bids_meta(f)
        if meta is None or truthy(meta.get("ignore")):
            return
        if not sourcedata and str(meta.get("Path") or "").startswith("sourcedata"):
            return
        path = define_path(meta, f.name)
        if path is not None:
            claims.setdefault(path, []).append(Placed(kind, cid, f, session))

    for f in project.files:
        consider("project", project.id, f)
    for session in project.sessions():
        session = session.reload()
        if truthy((bids_meta(session) or {}).get("ignore")):
            continue
        for f in session.files:
            consider("session", session.id, f, session)
        for acq in session.acquisitions():
            acq = fw.get_acquisition(acq.id)
            if truthy((bids_meta(acq) or {}).get("ignore")):
                continue
            for f in acq.files:
                consider("acquisition", acq.id, f, session)
    out = Expected()
    for path, claimed in claims.items():
        if len(claimed) > 1:
            out.duplicates.add(path)  # the view shows neither, names both in its error file
            continue
        out.files[path] = claimed[0]
        if bids_meta(claimed[0].file).get("valid") is False:
            out.invalid.add(path)
    for path, placed in out.files.items():
        image = re.fullmatch(r"(.*)\.nii(\.gz)?", path)
        if placed.kind != "acquisition" or image is None:
            continue
        side = image.group(1) + ".json"
        if side in out.files:
            continue  # a curated sidecar is the real file
        meta = bids_meta(placed.file)
        info = {k: v for k, v in (placed.file.info or {}).items() if k != "BIDS"}
        for key in meta.get("delete_info") or []:
            info.pop(key, None)
        info.update(meta.get("set_info") or {})
        if info:
            out.sidecars[side] = info
        if side in out.sidecars and path in out.invalid:
            out.invalid.add(side)
    return out


@pytest.fixture(scope="module")
def expected(profile_fw: Any) -> Expected:
    return expected_view(profile_fw)


def view_of(mount: Mount) -> Path:
    view = mount / VIEW
    assert view.is_dir(), f"{view} is not a directory: is the BIDS view built?"
    return view


# ---- the official validator ---------------------------------------------------------------


def validator() -> Path:
    """The npm bids-validator scripts/test installed. Missing is a failure, not a skip: CI
    runs every mount test."""
    path = Path(os.environ.get(VALIDATOR_ENV) or VALIDATOR_DEFAULT)
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"bids-validator is not installed at {path}: scripts/test installs it "
            "(scripts/setup.sh ensure_bids_validator: npm install --prefix .cache/node "
            f"bids-validator), or set {VALIDATOR_ENV}",
            pytrace=False,
        )
    return path


def validate(dataset: Path) -> dict[str, Any]:
    """`bids-validator DATASET --json`: its report (it exits 1 when it finds errors)."""
    done = subprocess.run(
        [str(validator()), str(dataset), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def issues(report: dict[str, Any], severity: str) -> set[tuple[str, str]]:
    """(issue key, file relative to the dataset) of every issue of that severity."""
    out = set()
    for issue in report["issues"][severity]:
        for f in issue["files"]:
            where = (f.get("file") or {}).get("relativePath") or f.get("reason") or ""
            out.add((issue["key"], where.lstrip("/")))
    return out


def test_the_validator_finds_only_the_planted_invalid_name(
    profile_mount: Mount, expected: Expected
) -> None:
    report = validate(view_of(profile_mount))
    # The one planted error: a curator's space in `acq-3D FLAIR` (valid: false, which the
    # view shows, as the exporter exports it). The validator then includes neither the
    # image nor its sidecar in any BIDS name pattern: NOT_INCLUDED for each.
    assert expected.invalid, "the demo plants an invalid file"
    assert issues(report, "errors") == {("NOT_INCLUDED", path) for path in expected.invalid}
    # Warnings name what the demo's sessions lack (sub-03 and sub-04 have no follow-up, one
    # fieldmap in all, and the duplicate T1w and ignored scans leave sub-03's baseline
    # without anat): no other kind of warning.
    warned = {key for key, _ in issues(report, "warnings")}
    assert warned <= {"INCONSISTENT_SUBJECTS", "MISSING_SESSION"}, warned
    summary = report["summary"]
    subjects, sessions, tasks, _ = entities(expected)
    assert sorted(summary["subjects"]) == sorted(subjects)
    assert sorted(summary["sessions"]) == sorted(sessions)
    assert sorted(summary["tasks"]) == sorted(tasks)


# ---- pybids ---------------------------------------------------------------------------------


def entities(expected: Expected) -> tuple[set[str], set[str], set[str], set[int]]:
    """Subjects and sessions (their sessions' `info.BIDS`), tasks and runs (the files'
    entities) of the placed files."""
    subjects, sessions, tasks, runs = set(), set(), set(), set()
    for placed in expected.files.values():
        if placed.session is None:
            continue
        ses = bids_meta(placed.session)
        subjects.add(str(ses["Subject"]))
        sessions.add(str(ses["Label"]))
        meta = bids_meta(placed.file)
        if meta.get("Task"):
            tasks.add(str(meta["Task"]))
        if meta.get("Run") not in (None, ""):
            runs.add(int(meta["Run"]))
    return subjects, sessions, tasks, runs


def layout_of(view: Path) -> Any:
    import bids  # type: ignore[import-untyped]

    # validate=True, pybids' default: files whose names are not BIDS are left out of the
    # index, as for any user who does not ask otherwise.
    return bids.BIDSLayout(str(view), validate=True)


def test_pybids_finds_every_subject_session_task_and_run(
    profile_mount: Mount, expected: Expected
) -> None:
    layout = layout_of(view_of(profile_mount))
    subjects, sessions, tasks, runs = entities(expected)
    assert subjects and sessions and tasks, "the demo's curation defines them"
    assert set(layout.get_subjects()) == subjects
    assert set(layout.get_sessions()) == sessions
    assert set(layout.get_tasks()) == tasks
    assert set(layout.get_runs()) == runs
    # Every placed file with a BIDS name is indexed, and nothing else is.
    indexed = {
        Path(p).relative_to(view_of(profile_mount)).as_posix()
        for p in layout.get(return_type="file")
    }
    assert indexed == expected.paths() - expected.invalid


def test_pybids_get_metadata_answers_the_synthesized_and_the_curated_sidecars(
    profile_mount: Mount, expected: Expected
) -> None:
    view = view_of(profile_mount)
    layout = layout_of(view)
    bold = sorted(p for p in expected.sidecars if p.endswith("_bold.json"))
    assert bold, "the demo has synthesized BOLD sidecars"
    for side in bold:
        image = side.removesuffix(".json") + ".nii.gz"
        meta = layout.get_metadata(str(view / image))
        assert meta == expected.sidecars[side], image
        assert meta["TaskName"] == "rest" and meta["RepetitionTime"] > 0
    # A curator's set_info/delete_info reach the synthesized sidecar.
    corrected = [
        p
        for p, placed in expected.files.items()
        if bids_meta(placed.file).get("set_info") and p.endswith(".nii.gz")
    ]
    assert corrected
    for image in corrected:
        meta = layout.get_metadata(str(view / image))
        placed = expected.files[image]
        assert meta.items() >= bids_meta(placed.file)["set_info"].items()
        assert not set(bids_meta(placed.file)["delete_info"]) & set(meta)
    # A curated sidecar is the file itself: the fieldmap's, with its IntendedFor.
    curated = [
        p
        for p, placed in expected.files.items()
        if placed.kind == "acquisition" and p.endswith(".json")
    ]
    assert curated
    for side in curated:
        image = side.removesuffix(".json") + ".nii.gz"
        placed = expected.files[side]
        meta = layout.get_metadata(str(view / image))
        assert meta["IntendedFor"] == placed.file.info["IntendedFor"]


def test_the_views_files_are_the_exporters_bytes_and_times(
    profile_mount: Mount, profile_fw: Any, expected: Expected
) -> None:
    view = view_of(profile_mount)
    shown = {
        p.relative_to(view).as_posix()
        for p in view.rglob("*")
        if p.is_file() and p.name != ".fwfs-errors.txt"
    }
    assert shown == expected.paths()
    for path, placed in expected.files.items():
        f = placed.file
        data = profile_fw.download_file_from_container_as_data(placed.cid, f.name)
        assert (view / path).read_bytes() == data, path
        assert (view / path).stat().st_mtime == f.modified.timestamp(), path
    for side, sidecar in expected.sidecars.items():
        data = (view / side).read_bytes()
        assert data == synthesized_bytes(sidecar), side
        assert (view / side).stat().st_size == len(data), side


# ---- what the layout costs ------------------------------------------------------------------


def transfers(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests that carried a file's bytes: the core's own download (not its 302 to
    storage, nor a zip listing), or the storage GET a redirect led to."""
    out = []
    for e in entries:
        download = e["method"] == "GET" and "/files/" in e["path"] and e["status"] != 302
        if e["listener"] == "storage" or (download and "info=true" not in (e["query"] or "")):
            out.append(e)
    return out


def test_a_layout_from_a_fresh_mount_downloads_only_the_json_it_reads(
    profile_site: Any, profile_fw: Any, expected: Expected, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(profile_site)
    mark = quiet_mark(profile_site)
    layout = layout_of(view_of(mount))
    assert set(layout.get_subjects()) == entities(expected)[0]
    log = requests_since(profile_site, mark)
    data = transfers(log)
    size = expected.size()
    moved = sum(int(e["bytes"] or 0) for e in log)
    print(f"layout: {len(log)} requests, {moved} bytes ({sum_bytes(data)} of files), {size} B")
    # File bytes: only the files pybids opens, the real JSON files (the synthesized
    # sidecars come with the metadata), each once; no image, bval or bvec.
    real_json = [p for p, placed in expected.files.items() if p.endswith(".json")]
    assert len(data) == len(real_json), [e["path"] for e in data]
    assert sum_bytes(data) < size / 100, (sum_bytes(data), size)
    # Requests: O(containers), never one per file. The way down from the root (its two
    # lists and a resolve), then at most one per container of the project: the listings
    # (sessions, acquisitions with their files' whole `info`) and its own document. A
    # real core's 302 to storage is counted with the download it leads to.
    project = profile_fw.lookup(DEMO_PROJECT)
    sessions = list(project.sessions())
    containers = 1 + len(sessions) + sum(len(s.acquisitions()) for s in sessions)
    listings = [e for e in log if e not in data and e["status"] != 302]
    assert len(listings) <= 3 + containers, [(e["method"], e["path"]) for e in listings]


def sum_bytes(entries: list[dict[str, Any]]) -> int:
    return sum(int(e["bytes"] or 0) for e in entries)


# ---- --bids-sourcedata ----------------------------------------------------------------------


def test_with_sourcedata_the_tools_see_the_same_dataset(
    demo_site: Any, fw: Any, mount_site: Callable[..., Mount]
) -> None:
    """`--bids-sourcedata` adds the DICOM archives under sourcedata/, which BIDS tools skip:
    the validator's errors and pybids' index are those of the dataset without them."""
    with_source = expected_view(fw, sourcedata=True)
    without = expected_view(fw)
    added = with_source.paths() - without.paths()
    assert added and all(p.startswith("sourcedata/") for p in added)
    view = view_of(mount_site(demo_site, args=["--bids-sourcedata"]))
    shown = {p.relative_to(view).as_posix() for p in view.rglob("*") if p.is_file()}
    assert shown - {".fwfs-errors.txt"} == with_source.paths()
    report = validate(view)
    assert issues(report, "errors") == {("NOT_INCLUDED", path) for path in without.invalid}
    indexed = {
        Path(p).relative_to(view).as_posix() for p in layout_of(view).get(return_type="file")
    }
    assert indexed == without.paths() - without.invalid

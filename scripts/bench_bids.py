"""scripts/bench's `bids` case: a BIDS app's first step on the BIDS view of a project
against a `fw export bids`-style copy, for issue 16's targets (docs/BIDS.md), on two
datasets: the demo's `Anxiety Study` (curated with every planted case, images of ~50 kB)
and `Bench` (the bench's 50 .nii.gz of ~29 MiB, curated here as func runs: the size of a
real study's images, which the share of bytes a layout moves depends on).

- `mount: pybids BIDSLayout`: `bids.BIDSLayout(<mount>/flywheel/<project>.bids)` from a
  fresh mount (empty caches), what fMRIPrep and MRIQC do first with their dataset.
- `SDK: export (fw export bids rules)`: what `fw export bids` does, with the SDK as
  flywheel_bids/export_bids.py calls it: the project's sessions and acquisitions one `get`
  each (for the files' whole `info`), every included file downloaded one after another,
  each sidecar written from `file.info` (docs/SANDBOX.md, "What the exporter does"; files
  claiming one path are left out, as in the view, so both give one tree).

- `local copy: pybids BIDSLayout`: the same layout of the exported copy, right after it was
  written (for information: export + this is what a user of the copy waits for before the
  app starts, against the layout of the view alone).

pybids is imported and has indexed a one-file dataset before any clock runs: its lazy imports
and first-use set-up are the same for every variant. Once per run the view and the copy are
compared byte for byte (a check).

`case_bids(bench)` runs them on a `Bench` of scripts/bench.py; `bids_targets(records, link)`
judges them in the shape of bench_report.targets()'s rows; `REPORT_CASES` is what
bench_report.CASES needs to show the case (metric, unit, higher is better, title).
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import bench_kit as kit

if TYPE_CHECKING:
    from bench import Bench


@dataclass(frozen=True)
class Dataset:
    case: str
    project: str
    title: str

    @property
    def view(self) -> str:
        return f"{self.project}.bids"


DEMO = Dataset("bids", "flywheel/Anxiety Study", "Anxiety Study (demo, images of ~50 kB)")
BENCH = Dataset("bids_bench", f"flywheel/{kit.BENCH_PROJECT}", "Bench (50 images of ~29 MiB)")
DATASETS = (DEMO, BENCH)
CASE = DEMO.case
ERRORS = ".fwfs-errors.txt"
V_LAYOUT = "mount: pybids BIDSLayout"
V_EXPORT = "SDK: export (fw export bids rules)"
V_COPY_LAYOUT = "local copy: pybids BIDSLayout"
REPORT_CASES: dict[str, tuple[str, str, bool, str]] = {
    d.case: ("seconds", "s", False, f"BIDS dataset {d.title}: pybids on the view, SDK export")
    for d in DATASETS
}

__all__ = ["REPORT_CASES", "bids_targets", "case_bids"]


# ---- the exporter's rules, with the SDK ----------------------------------------------------


def _meta(doc: Any) -> dict[str, Any] | None:
    """export_bids.py get_metadata: `info.BIDS` unless absent or "NA"."""
    value = (doc.get("info") or {}).get("BIDS")
    return value if isinstance(value, dict) and value else None


def _true(value: Any) -> bool:
    """export_bids.py parse_bool."""
    return value.lower() == "true" if isinstance(value, str) else bool(value)


@dataclass
class Plan:
    """What the export writes: path -> (container id, file) downloads, path -> sidecar
    bytes, and each sidecar's image's acquisition id."""

    downloads: dict[str, tuple[str, Any]] = field(default_factory=dict)
    sidecars: dict[str, bytes] = field(default_factory=dict)
    sidecar_sources: dict[str, str] = field(default_factory=dict)

    def size(self) -> int:
        return sum(int(f.size) for _, f in self.downloads.values()) + sum(
            len(b) for b in self.sidecars.values()
        )


def plan(fw: Any, project_path: str) -> Plan:
    """The export's metadata walk: export_bids.py's calls (`get_project_sessions`,
    `get_session`, `get_session_acquisitions`, `get_acquisition`) and its rules."""
    project = fw.get_project(fw.lookup(project_path).id)
    claims: dict[str, list[tuple[str, str, Any]]] = {}

    def consider(kind: str, cid: str, files: list[Any]) -> None:
        for f in files:
            meta = _meta(f)
            if meta is None or _true(meta.get("ignore")):
                continue
            if str(meta.get("Path") or "").startswith("sourcedata"):
                continue  # no --source-data
            if meta.get("Filename"):
                path = str(PurePosixPath(meta.get("Path") or "", meta["Filename"]))
            elif ".json" in f.name or ".tsv" in f.name:
                path = f.name
            else:
                continue
            claims.setdefault(path, []).append((kind, cid, f))

    consider("project", project.id, project.files)
    for listed in fw.get_project_sessions(project.id):
        if _true((_meta(listed) or {}).get("ignore")):
            continue
        session = fw.get_session(listed.id)
        consider("session", session.id, session.files)
        for brief in fw.get_session_acquisitions(session.id):
            if _true((_meta(brief) or {}).get("ignore")):
                continue
            acq = fw.get_acquisition(brief.id)
            consider("acquisition", acq.id, acq.files)
    out = Plan()
    kinds: dict[str, str] = {}
    for path, found in claims.items():
        if len(found) == 1:  # two claims: the view leaves both out, so does this copy
            kind, cid, f = found[0]
            out.downloads[path] = (cid, f)
            kinds[path] = kind
    for path, (cid, f) in list(out.downloads.items()):
        image = re.fullmatch(r"(.*)\.nii(\.gz)?", path)
        if kinds[path] != "acquisition" or image is None:
            continue
        side = image.group(1) + ".json"
        if side in out.downloads or side in claims:
            continue
        meta = _meta(f) or {}
        info = {k: v for k, v in (f.info or {}).items() if k != "BIDS"}
        for key in meta.get("delete_info") or []:
            info.pop(key, None)
        info.update(meta.get("set_info") or {})
        if "/func/" in f"/{path}" and "TaskName" not in info and meta.get("Task"):
            info["TaskName"] = meta["Task"]
        if info:
            # create_json_sidecar: json.dump(sort_keys=True, indent=4), no newline.
            out.sidecars[side] = json.dumps(info, sort_keys=True, indent=4).encode()
            out.sidecar_sources[side] = cid
    return out


def export(fw: Any, project_path: str, dest: Path) -> dict[str, Any]:
    """The whole `fw export bids`-style copy into `dest`: walk, download, sidecars, with
    the exporter's requests (one `get_acquisition` more per synthesized sidecar)."""
    shutil.rmtree(dest, ignore_errors=True)
    todo = plan(fw, project_path)
    for path, (cid, f) in todo.downloads.items():
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        fw.download_file_from_container(cid, f.name, str(target))
        stamp = f.modified.timestamp()
        os.utime(target, (stamp, stamp))
    for path, data in todo.sidecars.items():
        # check_sidecar_exist (:194-199) reads the image's acquisition again for its info.
        todo_acq = fw.get_acquisition(todo.sidecar_sources[path])
        assert todo_acq.id == todo.sidecar_sources[path]
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return {"files": len(todo.downloads) + len(todo.sidecars), "files_bytes": todo.size()}


# ---- the case -------------------------------------------------------------------------------


def _layout(view: Path, size: int) -> dict[str, Any]:
    import bids  # type: ignore[import-untyped]

    layout = bids.BIDSLayout(str(view), validate=True)
    return {
        "files": len(layout.get(return_type="file")),
        "files_bytes": size,
        "subjects": len(layout.get_subjects()),
    }


def _same_tree(view: Path, copy: Path) -> list[str]:
    """Paths whose bytes differ between the view and the copy, or that only one has."""

    def files(root: Path) -> set[str]:
        return {
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.name != ERRORS
        }

    a, b = files(view), files(copy)
    out = sorted(a ^ b)
    out += [p for p in sorted(a & b) if not filecmp.cmp(view / p, copy / p, shallow=False)]
    return out


def _warm_up(where: Path) -> None:
    """A layout of a one-file dataset: pybids' lazy imports and set-up, off the clock."""
    (where / "sub-01" / "anat").mkdir(parents=True, exist_ok=True)
    description = {"Name": "warm-up", "BIDSVersion": "1.8.0"}
    (where / "dataset_description.json").write_text(json.dumps(description))
    (where / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"")
    _layout(where, 0)


def curate_bench(fw: Any) -> None:
    """The bench's 50 NIfTIs (the headers case's acquisition) curated as the curate-bids
    gear leaves func runs (docs/SANDBOX.md, "BIDS curation in the demo"): the new way, a
    `dataset_description.json` attachment, sidecars made from `file.info`. Once: a site
    whose files already carry `info.BIDS` is left as it is."""
    acq = fw.get_acquisition(fw.lookup(kit.bench_path("headers")).id)
    images = sorted((f for f in acq.files if f.name.endswith(".nii.gz")), key=lambda f: f.name)
    if not images or _meta(images[-1]) is not None:
        return
    project = fw.get_project(fw.lookup(BENCH.project).id)
    project.update_info({"BIDS": {"Sidecar": "data is in json sidecar, not file.info"}})
    description = {"Name": "fwfs bench", "BIDSVersion": "1.8.0", "DatasetType": "raw"}
    name = "dataset_description.json"
    import flywheel

    project.upload_file(flywheel.FileSpec(name, json.dumps(description).encode()))
    project = fw.get_project(project.id)
    project.update_file_info(name, {"BIDS": {"Filename": name, "Path": "", "ignore": False}})
    session = fw.get_session(acq.parents.session)
    session.update_info({"BIDS": {"Label": "headers", "Subject": "bench", "ignore": False}})
    acq.update_info({"BIDS": {"ignore": False}})
    folder = "sub-bench/ses-headers/func"
    for run, f in enumerate(images, 1):
        filename = f"sub-bench_ses-headers_task-rest_run-{run:03d}_bold.nii.gz"
        bids: dict[str, Any] = {"Filename": filename, "Folder": "func", "Path": folder}
        bids.update(Task="rest", Run=f"{run:03d}", Suffix="bold", ignore=False, valid=True)
        acq.update_file_info(f.name, {"BIDS": bids, "RepetitionTime": 2.0, "TaskName": "rest"})


def case_bids(bench: Bench) -> None:
    """Issue 16's figures on each dataset: a pybids layout of the view from a fresh mount,
    the SDK export, and a layout of the export, interleaved in each repetition."""
    _warm_up(bench.work / "bids-warm-up")
    curate_bench(bench.fw)
    for dataset in DATASETS:
        _case(bench, dataset)


def _case(bench: Bench, dataset: Dataset) -> None:
    expected = plan(bench.fw, dataset.project)
    size = expected.size()
    if not expected.downloads:
        raise RuntimeError(
            f"{dataset.project} has no BIDS curation on this site: the cached bench data "
            "predates the demo's curation (docs/SANDBOX.md); run scripts/bench with --fresh"
        )
    copy = bench.work / "bids-export"
    for rep in range(bench.reps):
        with bench.m.mount() as mnt:
            view = mnt / dataset.view
            layout = partial(_layout, view, size)
            bench.measure(dataset.case, V_LAYOUT, rep, layout, mount=mnt)
        bench.measure(dataset.case, V_EXPORT, rep, partial(export, bench.fw, dataset.project, copy))
        # Right after the export, as a user would start the app: its pages are cached.
        layout_copy = partial(_layout, copy, size)
        bench.measure(dataset.case, V_COPY_LAYOUT, rep, layout_copy, cold=False)
        if rep == 0:
            with bench.m.mount() as mnt:
                differ = _same_tree(mnt / dataset.view, copy)
            bench.checks[f"{dataset.case}_view_equals_export"] = not differ
            if differ:
                bench.checks[f"{dataset.case}_view_differs"] = differ[:20]
        shutil.rmtree(copy, ignore_errors=True)


# ---- targets ---------------------------------------------------------------------------------


def _by_rep(
    records: list[dict[str, Any]], variant: str, case: str = CASE
) -> dict[int, dict[str, Any]]:
    return {int(r["rep"]): r for r in records if r["case"] == case and r["variant"] == variant}


def _target(
    tid: str, text: str, variant: str, need: float, op: str, case: str = CASE
) -> dict[str, Any]:
    needed = f"{op} {need:g}x" if op == ">=" else f"{op} {need:.0%}"
    return kit.target_row(tid, text, case, variant, need, op, needed)


def bids_targets(
    records: list[dict[str, Any]], link: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """Issue 16's targets on each dataset: the layout >= 5x faster than the export over
    the link (on loopback for information: the export's cost is round trips the link
    adds), and the bytes the layout moves (every request's body, listings included) under
    1% of the dataset's; the file bytes alone for information."""
    out: list[dict[str, Any]] = []
    for dataset in DATASETS:
        out += _dataset_targets(records, link, dataset)
    return out


def _dataset_targets(
    records: list[dict[str, Any]], link: dict[str, Any] | None, dataset: Dataset
) -> list[dict[str, Any]]:
    case, name = dataset.case, dataset.title
    layout, sdk = _by_rep(records, V_LAYOUT, case), _by_rep(records, V_EXPORT, case)
    suffix = "" if dataset is DEMO else f"-{case}"
    out: list[dict[str, Any]] = []
    t = _target(
        f"bids-layout-speed{suffix}",
        f"BIDS, {name}: SDK export time / pybids layout of the view time (fresh mount)",
        V_LAYOUT,
        5.0,
        ">=",
        case,
    )
    t["informational"] = link is None
    kit.judge(
        t, [sdk[k]["seconds"] / layout[k]["seconds"] for k in sorted(layout) if k in sdk], "x"
    )
    out.append(t)
    local = _by_rep(records, V_COPY_LAYOUT, case)
    t = _target(
        f"bids-ready-speed{suffix}",
        f"BIDS, {name}: (SDK export + layout of the copy) time / layout of the view time "
        "(for information: the wait before a BIDS app starts)",
        V_LAYOUT,
        5.0,
        ">=",
        case,
    )
    t["informational"] = True
    both = [k for k in sorted(layout) if k in sdk and k in local]
    kit.judge(
        t,
        [(sdk[k]["seconds"] + local[k]["seconds"]) / layout[k]["seconds"] for k in both],
        "x",
    )
    out.append(t)
    t = _target(
        f"bids-layout-bytes{suffix}",
        f"BIDS, {name}: bytes the layout moves (all requests) / the dataset's bytes",
        V_LAYOUT,
        0.01,
        "<",
        case,
    )
    kit.judge(t, [r["bytes"] / r["files_bytes"] for r in layout.values()], "%")
    out.append(t)
    t = _target(
        f"bids-layout-file-bytes{suffix}",
        f"BIDS, {name}: file bytes the layout downloads / the dataset's bytes (for information)",
        V_LAYOUT,
        0.01,
        "<",
        case,
    )
    t["informational"] = True
    kit.judge(t, [r["file_bytes"] / r["files_bytes"] for r in layout.values()], "%")
    out.append(t)
    return out

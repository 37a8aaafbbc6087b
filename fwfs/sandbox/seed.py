"""The demo site: two groups of imaging projects with DICOM series, NIfTI volumes, reports,
an analysis and jobs, including the awkward cases a mount has to name well.

The tree is documented in docs/SANDBOX.md; tests rely on it, so change both together.
"""

from __future__ import annotations

import hashlib
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fwfs.sandbox import bids_demo, demodata
from fwfs.sandbox.files import file_type, mimetype, zip_member_count
from fwfs.sandbox.names import ADMIN_USER, GROUP, PROJECT
from fwfs.sandbox.store import Container, FileRec, Store, iso

# (series label, file stem, modality, shape (slices, rows, cols), voxel mm)
_SERIES = {
    "T1w": ("T1w", "MR", (16, 64, 64), (3.0, 2.0, 2.0)),
    "fMRI rest": ("fMRI_rest", "MR", (12, 48, 48), (4.0, 3.0, 3.0)),
    "DWI": ("DWI", "MR", (10, 48, 48), (4.0, 2.5, 2.5)),
    "T2/FLAIR": ("T2_FLAIR", "MR", (12, 64, 64), (4.0, 2.0, 2.0)),
    "localizer": ("localizer", "MR", (3, 32, 32), (8.0, 4.0, 4.0)),
    "CT head": ("CT_head", "CT", (8, 64, 64), (5.0, 1.0, 1.0)),
    # BIDS curation's fieldmap (bids_demo.py): the BOLD's grid, the opposite phase encoding.
    bids_demo.FMAP_LABEL: ("fmap_PA_epi", "MR", (12, 48, 48), (4.0, 3.0, 3.0)),
}


def _seed(*parts: str) -> int:
    return zlib.crc32("/".join(parts).encode())


class Seeder:
    def __init__(self, store: Store) -> None:
        self.store = store

    def container(
        self,
        ctype: str,
        parent: Container | None,
        label: str,
        created: datetime,
        cid: str | None = None,
        **fields: Any,
    ) -> Container:
        parents: dict[str, str] = {}
        if parent is not None:
            parents = {**parent.doc.get("parents", {}), parent.type: parent.id}
        doc = {"created": iso(created), "modified": iso(created), "parents": parents, **fields}
        return self.store.insert_container(
            ctype, parent.id if parent else None, label, doc, cid=cid
        )

    def file(
        self,
        parent: Container,
        name: str,
        data: bytes | Path,
        created: datetime,
        file_group: str = "files",
        **fields: Any,
    ) -> FileRec:
        spool = self.store.spool_path()
        if isinstance(data, Path):
            data.replace(spool)
        else:
            spool.write_bytes(data)
        sha = hashlib.sha384()
        with open(spool, "rb") as fh:
            while block := fh.read(8 << 20):
                sha.update(block)
        doc = {
            "hash": "v0-sha384-" + sha.hexdigest(),
            "mimetype": mimetype(name),
            "type": file_type(name),
            "modality": None,
            "classification": {},
            "origin": {"type": "user", "id": ADMIN_USER},
            "zip_member_count": zip_member_count(spool),
            "created": iso(created),
            "modified": iso(created),
            **fields,
        }
        return self.store.add_file(parent.id, name, spool, spool.stat().st_size, doc, file_group)

    def acquisition(
        self, session: Container, label: str, when: datetime, subject_code: str, series_no: int
    ) -> Container:
        stem, modality, shape, voxel = _SERIES[label]
        acq = self.container("acquisition", session, label, when, timestamp=iso(when))
        # Seeded from where the series sits and when, never from ids (they differ per site),
        # so every site built by --demo holds the same bytes.
        place = f"{subject_code}/{session.label}/{session.doc.get('timestamp')}"
        seed = _seed(place, label)
        zipped = demodata.dicom_series_zip(
            series_description=stem,
            modality=modality,
            shape=shape,
            voxel_mm=voxel,
            patient_id=subject_code,
            patient_name=f"{subject_code}^Demo",
            study_instance_uid=f"2.25.{_seed(place) + 1000}",
            series_number=series_no,
            acquisition_datetime=when.replace(tzinfo=None),
            seed=seed,
        )
        classification = {"Intent": ["Structural"] if label.startswith("T") else ["Functional"]}
        self.file(
            acq, f"{stem}.dicom.zip", zipped, when, modality=modality, classification=classification
        )
        # fMRI and DWI are series of volumes, with the TR as the fourth zoom.
        volumes, tr = bids_demo.SERIES_4D.get(label, ((), 0.0))
        nifti = demodata.nifti_gz(
            shape=(shape[2], shape[1], shape[0]),
            voxel_mm=(voxel[2], voxel[1], voxel[0]),
            seed=seed,
            description=stem,
            volumes=volumes,
            repetition_time=tr,
        )
        self.file(
            acq,
            f"{stem}.nii.gz",
            nifti,
            when + timedelta(minutes=20),
            modality=modality,
            classification=classification,
        )
        return acq


def _when(y: int, m: int, d: int, h: int = 9) -> datetime:
    return datetime(y, m, d, h, 0, 0, tzinfo=timezone.utc)


def seed_demo(store: Store) -> None:
    s = Seeder(store)
    with store.transaction():
        _anxiety_study(s)
        _pilot_and_radiology(s)


def _anxiety_study(s: Seeder) -> None:
    group = s.container("group", None, "Flywheel Demo", _when(2018, 1, 2), cid=GROUP)
    project = s.container(
        "project",
        group,
        PROJECT,
        _when(2018, 6, 1),
        description="Anxiety and amygdala reactivity, a demo imaging study",
        info={"funding": "NIH R01-DEMO", "pi": "Ada Lovelace"},
    )
    rows = [
        ("sub-01", "F", 34, "anxiety"),
        ("sub-02", "M", 29, "control"),
        ("sub-03", "F", 41, "anxiety"),
        ("sub-04 Zoë", "F", 38, "control"),
    ]
    s.file(
        project,
        "participants.csv",
        demodata.csv_table(["participant_id", "sex", "age", "group"], rows),
        _when(2018, 6, 2),
    )
    s.file(
        project,
        "dataset_description.json",
        demodata.json_bytes(
            {
                "Name": PROJECT,
                "BIDSVersion": "1.8.0",
                "Authors": ["Ada Lovelace", "Rosalind Franklin"],
            }
        ),
        _when(2018, 6, 2),
    )
    s.file(
        project,
        "protocol.pdf",
        demodata.pdf_report(
            "Anxiety Study protocol",
            [
                "Sequences: T1w MPRAGE, resting-state fMRI, DWI.",
                "Sessions: baseline and 3-month follow-up.",
            ],
        ),
        _when(2018, 6, 3),
    )

    sessions = {
        "sub-01": [("ses-baseline", _when(2018, 9, 10)), ("ses-followup", _when(2018, 12, 14))],
        "sub-02": [("ses-baseline", _when(2018, 9, 17)), ("ses-followup", _when(2018, 12, 20))],
        # Two sessions with one label: a rescan on the same day.
        "sub-03": [("ses-baseline", _when(2018, 10, 1)), ("ses-baseline", _when(2018, 10, 1, 15))],
        "sub-04 Zoë": [("ses-baseline", _when(2019, 2, 4))],
    }
    sex = {code: sx for code, sx, _, _ in rows}
    for code, visits in sessions.items():
        subject = s.container(
            "subject",
            project,
            code,
            visits[0][1] - timedelta(days=7),
            code=code,
            sex="female" if sex[code] == "F" else "male",
            type="human",
            species="human",
            cohort="Study",
        )
        for label, when in visits:
            session = s.container(
                "session",
                subject,
                label,
                when,
                timestamp=iso(when),
                operator="J. Smith",
                weight=70.0,
            )
            acqs = ["T1w", "fMRI rest", "DWI"]
            if code == "sub-02" and label == "ses-followup":
                acqs = ["T1w", "fMRI rest", "T2/FLAIR"]  # a label holding `/`
            built = {}
            for n, acq_label in enumerate(acqs, start=1):
                built[acq_label] = s.acquisition(
                    session, acq_label, when + timedelta(minutes=15 * n), code, n
                )
            s.file(
                session,
                "scan_notes.txt",
                f"{code} {label}: scanned {when:%Y-%m-%d}, no incidental findings.\n".encode(),
                when + timedelta(hours=2),
            )
            if code == "sub-01" and label == "ses-baseline":
                _first_session_extras(s, session, built["T1w"], when)
    bids_demo.curate(s, project, _SERIES, _when(2019, 3, 1))


def _first_session_extras(s: Seeder, session: Container, t1w: Container, when: datetime) -> None:
    # A file named like a child container: the mount has to show both.
    s.file(
        session,
        "T1w",
        b"Notes on the T1w series: motion-free, good contrast.\n",
        when + timedelta(hours=3),
    )
    done = when + timedelta(days=2)
    analysis = s.container(
        "analysis",
        session,
        "dcm2niix 2018-09-12",
        done,
        description="DICOM to NIfTI",
        gear_info={"name": "dcm2niix", "version": "1.0.20230411", "id": "gear-dcm2niix"},
    )
    dicom = s.store.file_by_name(t1w.id, "T1w.dicom.zip")
    nifti = s.store.file_by_name(t1w.id, "T1w.nii.gz")
    assert dicom is not None and nifti is not None
    s.store.link_file(dicom, analysis.id, "inputs")
    s.store.link_file(nifti, analysis.id, "files")
    s.file(
        analysis,
        "dcm2niix.log",
        b"Chris Rorden's dcm2niiX version v1.0.20230411\nConversion required 0.2 seconds.\n",
        done,
    )
    _jobs(s, session, t1w, analysis, when)


def _jobs(
    s: Seeder, session: Container, t1w: Container, analysis: Container, when: datetime
) -> None:
    gears = {
        "dcm2niix": ("gear-dcm2niix", "1.0.20230411", "converter"),
        "file-metadata-importer": ("gear-fmi", "2.1.0", "utility"),
    }
    specs = [
        ("dcm2niix", "complete", None, analysis.id),
        ("dcm2niix", "failed", "Gear exited with code 1: no valid DICOM files", None),
        ("file-metadata-importer", "complete", None, None),
        ("file-metadata-importer", "failed", "Out of memory", None),
        ("dcm2niix", "running", None, None),
        ("file-metadata-importer", "pending", None, None),
    ]
    for n, (gear, state, reason, dest) in enumerate(specs):
        gid, version, category = gears[gear]
        created = when + timedelta(days=1, hours=n)
        s.store.insert_job(
            {
                "gear_id": gid,
                "gear_info": {"name": gear, "version": version, "category": category, "id": gid},
                "state": state,
                "failure_reason": reason,
                "inputs": [{"type": "acquisition", "id": t1w.id, "name": "T1w.dicom.zip"}],
                "destination": {
                    "type": "analysis" if dest else "acquisition",
                    "id": dest or t1w.id,
                },
                "parents": dict(t1w.doc.get("parents", {}), acquisition=t1w.id),
                "tags": [gear],
                "attempt": 1,
                "created": iso(created),
                "modified": iso(created + timedelta(minutes=9)),
                "config": {},
                "origin": {"type": "user", "id": ADMIN_USER},
            }
        )


def _pilot_and_radiology(s: Seeder) -> None:
    group = s.store.get_container(GROUP)
    assert group is not None
    pilot = s.container(
        "project", group, "Pilot Imaging", _when(2018, 3, 1), description="Scanner shake-down scans"
    )
    subject = s.container("subject", pilot, "pilot-01", _when(2018, 3, 2), code="pilot-01")
    session = s.container("session", subject, "ses-01", _when(2018, 3, 5))
    s.acquisition(session, "localizer", _when(2018, 3, 5, 10), "pilot-01", 1)

    radiology = s.container("group", None, "Radiology Core", _when(2020, 1, 1), cid="radiology")
    qc = s.container(
        "project",
        radiology,
        "Phantom QC",
        _when(2024, 1, 2),
        description="Monthly CT phantom quality control",
    )
    phantom = s.container(
        "subject", qc, "phantom", _when(2024, 1, 2), code="phantom", type="phantom"
    )
    qc_session = s.container("session", phantom, "2024-01-qc", _when(2024, 1, 15))
    s.acquisition(qc_session, "CT head", _when(2024, 1, 15, 11), "phantom", 1)
    s.file(
        qc_session,
        "qc_report.pdf",
        demodata.pdf_report(
            "CT phantom QC, January 2024", ["Water HU: 0.8 (pass)", "Noise: 4.1 HU (pass)"]
        ),
        _when(2024, 1, 16),
    )


def add_big_file(store: Store, size_mb: int) -> None:
    """A file of random bytes on Anxiety Study/sub-01/ses-baseline/T1w, for benchmarks."""
    t1w = _find(store, [PROJECT, "sub-01", "ses-baseline", "T1w"])
    tmp = store.spool_path()
    demodata.random_bytes_file(tmp, size_mb << 20, seed=size_mb)
    Seeder(store).file(t1w, "big.bin", tmp, _when(2019, 1, 1))


def add_scale_project(store: Store, sessions: int) -> None:
    """A project of `sessions` sessions (ten per subject), each with two acquisitions of
    two small files, for tree-walk benchmarks."""
    s = Seeder(store)
    group = store.get_container(GROUP)
    assert group is not None
    base = _when(2021, 1, 1)
    with store.transaction():
        project = s.container("project", group, f"Scale {sessions}", base)
        subject = None
        for n in range(sessions):
            if n % 10 == 0:
                subject = s.container(
                    "subject",
                    project,
                    f"sub-{n // 10 + 1:04d}",
                    base,
                    code=f"sub-{n // 10 + 1:04d}",
                )
            assert subject is not None
            when = base + timedelta(hours=n)
            session = s.container("session", subject, f"ses-{n + 1:04d}", when)
            for label in ("anat", "func"):
                acq = s.container("acquisition", session, label, when)
                s.file(acq, f"{label}.json", demodata.json_bytes({"n": n, "label": label}), when)
                s.file(acq, f"{label}.bin", _seed(str(n), label).to_bytes(4, "big") * 256, when)


def _find(store: Store, labels: list[str]) -> Container:
    current = store.get_container(GROUP)
    assert current is not None
    for label, ctype in zip(labels, ("project", "subject", "session", "acquisition"), strict=False):
        current = next(c for c in store.children(current.id, ctype) if c.label == label)
    return current

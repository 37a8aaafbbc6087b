"""`Anxiety Study` curated for BIDS, as the curate-bids gear (flywheel-bids 1.2.34, Default
template, "new way": JSON sidecars respected) and a curator leave a real project.

Field names and shapes are the gear's (docs/SANDBOX.md, "BIDS curation in the demo", cites
the sources): `info.BIDS` on the project, sessions, acquisitions and files; the `"NA"` string
on files no rule matched; dcm2niix's sidecar fields at the top of a NIfTI's `info`, from which
the exporter synthesizes the sidecar when no JSON sidecar file is curated. The planted cases
(an ignored acquisition, an invalid file, a duplicate path, sourcedata, a fieldmap with
`IntendedFor`, a real sidecar) are listed in PLANTED; tests/sandbox/test_bids_seed.py finds
each on the site by the exporter's rules, without this module.

Image headers agree with the metadata: RepetitionTime is a 4-D image's `pixdim[4]`, and a DWI
has one b-value and one b-vector per volume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeAlias

from fwfs.sandbox.store import Container, FileRec

if TYPE_CHECKING:
    from fwfs.sandbox.seed import Seeder

# (file stem, modality, shape (slices, rows, cols), voxel mm (slice, row, col)).
Series: TypeAlias = tuple[str, str, tuple[int, int, int], tuple[float, float, float]]

BOLD_VOLUMES = 10
BOLD_TR = 2.0
DWI_BVALS = (0, 1000, 1000, 1000, 1000, 1000, 1000)
DWI_BVECS = (
    (0.0, 0.0, 0.0),
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (0.7071, 0.7071, 0.0),
    (0.7071, 0.0, 0.7071),
    (0.0, 0.7071, 0.7071),
)
DWI_TR = 2.3
# 4-D series, by acquisition label: (scale of each volume against the phantom, TR in s).
SERIES_4D: dict[str, tuple[tuple[float, ...], float]] = {
    "fMRI rest": ((1.0,) * BOLD_VOLUMES, BOLD_TR),
    # A b=0 image, then six diffusion-weighted ones: attenuated signal.
    "DWI": (tuple(1.0 if b == 0 else 0.45 for b in DWI_BVALS), DWI_TR),
}

# The fieldmap acquisition the demo adds to sub-01/ses-followup: a spin-echo EPI with the
# phase encoding opposite to the BOLD's (PEpolar, BIDS fieldmap case 4).
FMAP_LABEL = "fmap PA"
FMAP_SESSION = ("sub-01", "ses-followup")

# How the gear names things (bids-client utils.process_string_template: `<subject.code>`
# of "sub-01" is "01"), and the one label a curator typed by hand: the gear would have
# written "04 Zoë", which no BIDS tool accepts.
SUBJECT_LABELS = {"sub-01": "01", "sub-02": "02", "sub-03": "03", "sub-04 Zoë": "04"}

PLANTED: dict[str, Any] = {
    # (subject, session label, index among the sessions of that label, acquisition): the
    # curator ignored the aborted first scan of sub-03's same-day pair...
    "ignored_acquisitions": [
        ("sub-03", "ses-baseline", 0, "fMRI rest"),
        ("sub-03", "ses-baseline", 0, "DWI"),
    ],
    # ...but not its T1w: both sessions are "baseline" to the gear, so two files claim one path.
    "duplicate_path": "sub-03/ses-baseline/anat/sub-03_ses-baseline_T1w.nii.gz",
    # A curator typed a space into the acquisition entity.
    "invalid": ("sub-02", "ses-followup", "T2/FLAIR", "T2_FLAIR.nii.gz"),
    "invalid_error": "Acq '3D FLAIR' does not match '^[a-zA-Z0-9]*$'",
    "fieldmap": (*FMAP_SESSION, FMAP_LABEL, "fmap_PA_epi.nii.gz"),
    "real_sidecar": (*FMAP_SESSION, FMAP_LABEL, "fmap_PA_epi.json"),
    "intended_for": ["ses-followup/func/sub-01_ses-followup_task-rest_bold.nii.gz"],
    "set_info": ("sub-01", "ses-baseline", "T1w", "T1w.nii.gz"),
    "sourcedata_folder": "sourcedata",
    "project_files": [
        "dataset_description.json",
        "README.txt",
        "participants.tsv",
        "participants.json",
    ],
    "not_bids": ["participants.csv", "protocol.pdf"],
}

_NEW_WAY = "data is in json sidecar, not file.info"
# The data dictionary of participants.tsv's columns.
_PARTICIPANTS_JSON = {
    "sex": {"Description": "sex of the participant", "Levels": {"F": "female", "M": "male"}},
    "age": {"Description": "age of the participant at baseline", "Units": "year"},
    "group": {
        "Description": "study arm",
        "Levels": {"anxiety": "generalized anxiety disorder", "control": "healthy control"},
    },
}
_DCM2NIIX = "v1.0.20230411"


def bval_bytes() -> bytes:
    return (" ".join(str(b) for b in DWI_BVALS) + "\n").encode()


def bvec_bytes() -> bytes:
    rows = zip(*DWI_BVECS, strict=True)
    return "".join(" ".join(f"{v:g}" for v in row) + "\n" for row in rows).encode()


def _bold_slice_timing(slices: int) -> list[float]:
    # Sequential ascending acquisition, every slice within the TR.
    return [round(n * BOLD_TR / slices, 4) for n in range(slices)]


def sidecar_fields(
    label: str, stem: str, series_no: int, voxel: tuple[float, float, float], slices: int
) -> dict[str, Any]:
    """What dcm2niix writes in the sidecar of a demo series (and the metadata import copies
    into the NIfTI's `info`): the timing of demodata's DICOM headers, in seconds."""
    timing = {
        "fMRI rest": (0.03, BOLD_TR, 77.0, "EP"),
        "DWI": (0.0023, DWI_TR, 8.0, "GR_IR"),
        FMAP_LABEL: (0.0023, 2.3, 8.0, "GR_IR"),
        "T2/FLAIR": (0.09, 5.0, 150.0, "SE"),
    }
    te, tr, flip, sequence = timing.get(label, (0.0023, 2.3, 8.0, "GR_IR"))
    fields: dict[str, Any] = {
        "Modality": "MR",
        "MagneticFieldStrength": 3,
        "ImagingFrequency": 123.25,
        "Manufacturer": "FWFS Sandbox",
        "ManufacturersModelName": "Phantom MR",
        "BodyPartExamined": "HEAD",
        "PatientPosition": "HFS",
        "SeriesDescription": stem,
        "ProtocolName": stem,
        "ScanningSequence": sequence,
        "SequenceVariant": "NONE",
        "MRAcquisitionType": "2D",
        "SeriesNumber": series_no,
        "SliceThickness": voxel[0],
        "SpacingBetweenSlices": voxel[0],
        "EchoTime": te,
        "RepetitionTime": tr,
        "FlipAngle": flip,
        "ConversionSoftware": "dcm2niix",
        "ConversionSoftwareVersion": _DCM2NIIX,
    }
    if label == "fMRI rest":
        fields |= {
            "TaskName": "rest",
            "SliceTiming": _bold_slice_timing(slices),
            "PhaseEncodingDirection": "j-",
            "TotalReadoutTime": 0.05,
        }
    if label == FMAP_LABEL:
        fields |= {"PhaseEncodingDirection": "j", "TotalReadoutTime": 0.05}
    return fields


def _dcm2niix_json(fields: dict[str, Any]) -> bytes:
    # dcm2niix's own layout (tab indents, its key order), so that a curated sidecar is told
    # apart from one synthesized with sorted keys.
    body = ",\n".join(f"\t{json.dumps(k)}: {json.dumps(v)}" for k, v in fields.items())
    return ("{\n" + body + "\n}\n").encode()


def _file_bids(template: str, rule: str, **fields: Any) -> dict[str, Any]:
    return {
        "template": template,
        "rule_id": rule,
        **fields,
        "ignore": False,
        "valid": True,
        "error_message": "",
    }


class _Curator:
    def __init__(self, s: Seeder, series: Mapping[str, Series]) -> None:
        self.s = s
        self.store = s.store
        self.series = series

    def set_info(self, c: Container, bids: Any) -> None:
        c.doc["info"] = {**c.doc.get("info", {}), "BIDS": bids}
        self.store.update_container(c.id, c.label, c.doc)

    def set_file(self, rec: FileRec, info: dict[str, Any], **fields: Any) -> None:
        rec.doc.update(fields)
        rec.doc["info"] = {**rec.doc.get("info", {}), **info}
        self.store.update_file_doc(rec)

    def files(self, c: Container) -> dict[str, FileRec]:
        return {r.name: r for r in self.store.current_files(c.id, "files")}


def curate(
    s: Seeder, project: Container, series: Mapping[str, Series], readme_when: datetime
) -> None:
    """Write the demo's BIDS curation on `project` (Anxiety Study, already seeded).

    `series` is the seed's table of series (label: stem, modality, shape, voxel size)."""
    cur = _Curator(s, series)
    info = dict(project.doc.get("info", {}))
    info["BIDS"] = {"template": "project", "rule_id": "bids_project", "Sidecar": _NEW_WAY}
    project.doc["info"] = info
    s.store.update_container(project.id, project.label, project.doc)
    _project_files(s, cur, project, readme_when)
    for subject in s.store.children(project.id, "subject"):
        sub = SUBJECT_LABELS[subject.label]
        sessions = s.store.children(subject.id, "session")
        for session in sessions:
            _session(s, cur, subject, session, sub, sessions)


def _project_files(s: Seeder, cur: _Curator, project: Container, when: datetime) -> None:
    s.file(
        project,
        "README.txt",
        (
            b"Anxiety Study\n\nAnxiety and amygdala reactivity, a demo imaging study of the fwfs "
            b"sandbox.\nFour participants, a baseline and a 3-month follow-up session each: "
            b"T1w, resting-state BOLD, DWI.\nAll images are synthetic phantoms.\n"
        ),
        when,
    )
    s.file(
        project,
        "participants.tsv",
        b"participant_id\tsex\tage\tgroup\n"
        b"sub-01\tF\t34\tanxiety\nsub-02\tM\t29\tcontrol\n"
        b"sub-03\tF\t41\tanxiety\nsub-04\tF\t38\tcontrol\n",
        when,
    )
    s.file(
        project,
        "participants.json",
        json.dumps(_PARTICIPANTS_JSON, indent=4).encode() + b"\n",
        when,
    )
    files = cur.files(project)
    for name in PLANTED["project_files"]:
        bids = _file_bids("project_file", "project_files", Filename=name, Folder="", Path="")
        cur.set_file(files[name], {"BIDS": bids})
    for name in PLANTED["not_bids"]:
        cur.set_file(files[name], {"BIDS": "NA"})


def _session(
    s: Seeder,
    cur: _Curator,
    subject: Container,
    session: Container,
    sub: str,
    siblings: list[Container],
) -> None:
    ses = session.label.removeprefix("ses-")
    cur.set_info(
        session,
        {
            "template": "session",
            "rule_id": "bids_session",
            "Label": ses,
            "Subject": sub,
            "ignore": False,
        },
    )
    for rec in cur.files(session).values():
        cur.set_file(rec, {"BIDS": "NA"})  # notes, not BIDS data: no rule matched
    same_label = [c.id for c in siblings if c.label == session.label]
    index = same_label.index(session.id)
    acqs = {a.label: a for a in s.store.children(session.id, "acquisition")}
    if (subject.label, session.label) == FMAP_SESSION:
        when = datetime.fromisoformat(acqs["fMRI rest"].doc["timestamp"]) + timedelta(minutes=5)
        acqs[FMAP_LABEL] = s.acquisition(session, FMAP_LABEL, when, subject.label, len(acqs) + 1)
    where = f"sub-{sub}/ses-{ses}"
    ignored = {tuple(x) for x in PLANTED["ignored_acquisitions"]}
    for n, (label, acq) in enumerate(acqs.items(), start=1):
        ignore = (subject.label, session.label, index, label) in ignored
        acq_bids = {"template": "acquisition", "rule_id": "bids_acquisition", "ignore": ignore}
        cur.set_info(acq, acq_bids)
        _acquisition_files(cur, acq, label, where, f"sub-{sub}_ses-{ses}", n, subject, session)


def _acquisition_files(
    cur: _Curator,
    acq: Container,
    label: str,
    where: str,
    prefix: str,
    series_no: int,
    subject: Container,
    session: Container,
) -> None:
    s = cur.s
    stem, _, shape, voxel = cur.series[label]
    files = cur.files(acq)
    dicom = files[f"{stem}.dicom.zip"]
    nifti = files[f"{stem}.nii.gz"]
    dicom_bids = _file_bids(
        "dicom_file",
        "bids_dicom_file",
        Filename=dicom.name,
        Folder="sourcedata",
        Path=f"sourcedata/{where}",
    )
    meta = sidecar_fields(label, stem, series_no, voxel, shape[0])
    entities = {"Acq": "", "Ce": "", "Rec": "", "Run": ""}
    classification: dict[str, list[str]]
    if label in ("T1w", "T2/FLAIR"):
        suffix = "T1w" if label == "T1w" else "FLAIR"
        acq_entity = "3D FLAIR" if label == "T2/FLAIR" else ""
        name = f"{prefix}{f'_acq-{acq_entity}' if acq_entity else ''}_{suffix}.nii.gz"
        bids = _file_bids(
            "anat_file",
            "bids_anat_file",
            Filename=name,
            Folder="anat",
            Path=f"{where}/anat",
            **{**entities, "Acq": acq_entity, "Mod": ""},
            Suffix=suffix,
        )
        if acq_entity:
            bids["valid"] = False
            bids["error_message"] = PLANTED["invalid_error"]
        classification = {
            "Intent": ["Structural"],
            "Measurement": ["T1" if label == "T1w" else "T2"],
        }
        if (subject.label, session.label, label) == PLANTED["set_info"][:3]:
            # A curator's corrections, applied by the exporter when it synthesizes the sidecar
            # (export_bids.py create_json_sidecar: delete_info, then set_info).
            meta["ImageComments"] = "repositioned once, see scan_notes.txt"
            bids["delete_info"] = ["ImageComments"]
            bids["set_info"] = {"InstitutionName": "FWFS Sandbox Imaging Centre"}
    elif label == "fMRI rest":
        bids = _file_bids(
            "func_file",
            "bids_func_file",
            Filename=f"{prefix}_task-rest_bold.nii.gz",
            Folder="func",
            Path=f"{where}/func",
            **entities,
            Dir="",
            Echo="",
            Suffix="bold",
            Task="rest",
            sidecarChanges={"TaskName": "rest"},
        )
        classification = {"Intent": ["Functional"], "Measurement": ["T2*"]}
    elif label == "DWI":
        dwi = {"Acq": "", "Dir": "", "Run": "", "Suffix": "dwi"}
        bids = _file_bids(
            "dwi_file",
            "bids_dwi_file",
            Filename=f"{prefix}_dwi.nii.gz",
            Folder="dwi",
            Path=f"{where}/dwi",
            **dwi,
        )
        classification = {"Intent": ["Structural"], "Measurement": ["Diffusion"]}
        made = datetime.fromisoformat(nifti.doc["created"])
        for ext, data in ((".bval", bval_bytes()), (".bvec", bvec_bytes())):
            rec = s.file(
                acq, f"{stem}{ext}", data, made, modality="MR", classification=classification
            )
            side = _file_bids(
                "dwi_file",
                "bids_dwi_file",
                Filename=f"{prefix}_dwi{ext}",
                Folder="dwi",
                Path=f"{where}/dwi",
                **dwi,
            )
            cur.set_file(rec, {"BIDS": side})
    elif label == FMAP_LABEL:
        fmap = {"Acq": "", "Ce": "", "Dir": "PA", "Run": "", "IntendedFor": [{"Folder": "func"}]}
        epi = f"{prefix}_dir-PA_epi"
        bids = _file_bids(
            "fmap_dir_file",
            "bids_fmap_dir_file",
            Filename=f"{epi}.nii.gz",
            Folder="fmap",
            Path=f"{where}/fmap",
            **fmap,
        )
        classification = {"Intent": ["Fieldmap"]}
        # The resolver's answer (template "resolvers": file.info.IntendedFor).
        meta["IntendedFor"] = list(PLANTED["intended_for"])
        made = datetime.fromisoformat(nifti.doc["created"])
        sidecar = s.file(
            acq, f"{stem}.json", _dcm2niix_json(meta), made, classification=classification
        )
        side = _file_bids(
            "fmap_dir_file",
            "bids_fmap_dir_file",
            Filename=f"{epi}.json",
            Folder="fmap",
            Path=f"{where}/fmap",
            **fmap,
        )
        cur.set_file(sidecar, {"BIDS": side, "IntendedFor": meta["IntendedFor"]})
    else:
        raise ValueError(f"no BIDS curation for a {label!r} acquisition")
    cur.set_file(dicom, {"BIDS": dicom_bids}, classification=classification)
    cur.set_file(nifti, {**meta, "BIDS": bids}, classification=classification)

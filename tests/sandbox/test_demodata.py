"""The demo site's generated files, checked the way a user of the data would check them."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import time
import zipfile
from datetime import date, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fwfs.sandbox import demodata
from fwfs.sandbox.demodata import (
    csv_table,
    derive_uid,
    dicom_series_zip,
    json_bytes,
    nifti_gz,
    pdf_report,
    phantom_volume,
    random_bytes_file,
)

UID_SYNTAX = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
DCM2NIIX = shutil.which("dcm2niix") or "/usr/bin/dcm2niix"


def series_args(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "series_description": "T1w MPRAGE",
        "patient_id": "SBX-001",
        "patient_name": "Phantom^Alice",
        "study_instance_uid": derive_uid("study", "SBX-001", 1),
        "series_number": 3,
        "acquisition_datetime": datetime(2023, 4, 5, 9, 30, 12),
        "seed": 11,
    }
    args.update(overrides)
    return args


def members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def read_series(archive: bytes) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(raw)) for raw in members(archive).values()]


def is_valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and UID_SYNTAX.match(uid) is not None


# --- phantom -----------------------------------------------------------------------------------


def test_phantom_is_a_deterministic_int16_head() -> None:
    volume = phantom_volume((16, 64, 64), seed=1)
    assert volume.dtype == np.int16
    assert volume.shape == (16, 64, 64)
    assert np.array_equal(volume, phantom_volume((16, 64, 64), seed=1))
    assert not np.array_equal(volume, phantom_volume((16, 64, 64), seed=2))
    # Air around the head is dark, the middle of the head is tissue, and there is structure.
    assert volume[:, :2, :2].mean() < 50
    assert volume[8, 28:36, 28:36].mean() > 200
    assert len(np.unique(volume)) > 100


def test_phantom_handles_odd_and_tiny_shapes() -> None:
    assert phantom_volume((1, 1, 1), seed=0).shape == (1, 1, 1)
    assert phantom_volume((5, 33, 17), seed=0).shape == (5, 33, 17)
    with pytest.raises(ValueError):
        phantom_volume((0, 4, 4), seed=0)


# --- DICOM series ------------------------------------------------------------------------------


def test_series_zip_is_deterministic_and_seed_dependent() -> None:
    first = dicom_series_zip(**series_args())
    assert dicom_series_zip(**series_args()) == first
    assert dicom_series_zip(**series_args(seed=12)) != first


def test_series_zip_member_names() -> None:
    names = list(members(dicom_series_zip(**series_args(shape=(12, 32, 32)))))
    assert names == [f"T1w MPRAGE/T1w MPRAGE_{n:04d}.dcm" for n in range(1, 13)]

    archive = dicom_series_zip(**series_args(shape=(3, 16, 16), folder="1.2.3.4"))
    assert list(members(archive)) == [
        "1.2.3.4/T1w MPRAGE_0001.dcm",
        "1.2.3.4/T1w MPRAGE_0002.dcm",
        "1.2.3.4/T1w MPRAGE_0003.dcm",
    ]


def test_series_zip_is_deflated_with_fixed_timestamps() -> None:
    with zipfile.ZipFile(io.BytesIO(dicom_series_zip(**series_args()))) as zf:
        assert zf.testzip() is None
        infos = zf.infolist()
    assert {info.compress_type for info in infos} == {zipfile.ZIP_DEFLATED}
    assert {info.date_time for info in infos} == {(2023, 4, 5, 9, 30, 12)}

    # DOS timestamps start in 1980, so earlier acquisitions still give a valid archive.
    old = dicom_series_zip(**series_args(acquisition_datetime=datetime(1975, 6, 1, 8, 0, 0)))
    with zipfile.ZipFile(io.BytesIO(old)) as zf:
        assert {info.date_time for info in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_every_slice_is_a_consistent_part10_mr_file() -> None:
    shape, voxel = (16, 64, 64), (3.0, 2.0, 2.0)
    study_uid = derive_uid("study", "SBX-001", 1)
    slices = read_series(dicom_series_zip(**series_args()))
    assert len(slices) == shape[0]

    sop_uids = set()
    for number, ds in enumerate(slices, start=1):
        assert ds.preamble == b"\0" * 128
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert meta.MediaStorageSOPClassUID == pydicom.uid.MRImageStorage
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == pydicom.uid.MRImageStorage
        assert ds.Modality == "MR"
        assert ds.InstanceNumber == number
        assert ds.StudyInstanceUID == study_uid
        assert ds.PatientID == "SBX-001"
        assert str(ds.PatientName) == "Phantom^Alice"
        assert ds.SeriesDescription == "T1w MPRAGE"
        assert ds.ProtocolName == "T1w MPRAGE"
        assert ds.SeriesNumber == 3
        for prefix in ("Study", "Series", "Acquisition"):
            assert ds[f"{prefix}Date"].value == "20230405"
            assert ds[f"{prefix}Time"].value.startswith("093012")
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.PixelSpacing] == [voxel[1], voxel[2]]
        assert float(ds.SliceThickness) == float(ds.SpacingBetweenSlices) == voxel[0]
        assert (ds.Rows, ds.Columns) == shape[1:]
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 16, 15)
        assert (ds.PixelRepresentation, ds.SamplesPerPixel) == (1, 1)
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (1.0, 0.0)
        assert float(ds.EchoTime) > 0 and float(ds.RepetitionTime) > 0
        assert float(ds.MagneticFieldStrength) == 3.0
        assert ds.Manufacturer
        assert list(ds.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
        assert ds.pixel_array.shape == shape[1:]
        assert ds.pixel_array.dtype == np.int16
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID):
            assert is_valid_uid(uid), uid
        assert is_valid_uid(meta.ImplementationClassUID)
        sop_uids.add(ds.SOPInstanceUID)

    assert len(sop_uids) == len(slices)
    assert len({ds.SeriesInstanceUID for ds in slices}) == 1
    assert len({ds.FrameOfReferenceUID for ds in slices}) == 1
    assert slices[0].SeriesInstanceUID != study_uid

    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    steps = np.diff(positions, axis=0)
    assert np.allclose(steps, [0.0, 0.0, voxel[0]])
    assert np.allclose([float(ds.SliceLocation) for ds in slices], positions[:, 2])

    # Together the slices are the phantom of the same seed (T1 contrast, same anatomy).
    stacked = np.stack([ds.pixel_array for ds in slices])
    assert stacked.shape == shape
    assert stacked.max() > 300


def test_series_uids_differ_between_series_and_seeds() -> None:
    def series_uid(**overrides: Any) -> str:
        archive = dicom_series_zip(**series_args(shape=(1, 8, 8), **overrides))
        return str(read_series(archive)[0].SeriesInstanceUID)

    base = series_uid()
    assert series_uid() == base
    assert series_uid(series_number=4) != base
    assert series_uid(seed=99) != base


def test_files_are_canonically_encoded() -> None:
    # pydicom writing back what it read gives the same bytes: no padding, length or order quirk.
    for raw in members(dicom_series_zip(**series_args(shape=(3, 32, 32)))).values():
        ds = pydicom.dcmread(io.BytesIO(raw))
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        assert out.getvalue() == raw


def test_ct_series() -> None:
    archive = dicom_series_zip(**series_args(series_description="Head CT", modality="CT"))
    slices = read_series(archive)
    assert {ds.SOPClassUID for ds in slices} == {pydicom.uid.CTImageStorage}
    assert {ds.file_meta.MediaStorageSOPClassUID for ds in slices} == {pydicom.uid.CTImageStorage}
    ds = slices[len(slices) // 2]
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert -1100 < hu[0, 0] < -900  # air
    assert hu.max() > 700  # bone
    with pytest.raises(ValueError):
        dicom_series_zip(**series_args(modality="PT"))


def test_non_ascii_names_survive() -> None:
    archive = dicom_series_zip(**series_args(shape=(1, 8, 8), patient_name="Müller^Jürgen"))
    assert str(read_series(archive)[0].PatientName) == "Müller^Jürgen"


@pytest.mark.skipif(not Path(DCM2NIIX).exists(), reason="dcm2niix is not installed")
@pytest.mark.parametrize(
    ("shape", "voxel"),
    [((16, 64, 64), (3.0, 2.0, 2.0)), ((10, 48, 40), (2.5, 1.2, 0.9))],
)
def test_dcm2niix_converts_series_to_one_volume(
    tmp_path: Path, shape: tuple[int, int, int], voxel: tuple[float, float, float]
) -> None:
    archive = dicom_series_zip(**series_args(shape=shape, voxel_mm=voxel))
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        zf.extractall(tmp_path / "dicom")
    out = tmp_path / "nifti"
    out.mkdir()
    result = subprocess.run(
        [DCM2NIIX, "-z", "y", "-f", "out", "-o", str(out), str(tmp_path / "dicom")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    produced = sorted(p.name for p in out.glob("*.nii.gz"))
    assert produced == ["out.nii.gz"], result.stdout

    image: Any = nib.load(out / "out.nii.gz")
    slices, rows, cols = shape
    assert image.shape == (cols, rows, slices)
    assert np.allclose(image.header.get_zooms()[:3], (voxel[2], voxel[1], voxel[0]))
    # dcm2niix may flip axes into its preferred orientation, but not change any value.
    stacked = np.stack([ds.pixel_array for ds in read_series(archive)])
    assert np.array_equal(np.sort(np.asarray(image.dataobj).ravel()), np.sort(stacked.ravel()))


def test_default_series_build_time() -> None:
    dicom_series_zip(**series_args())  # warm caches (data dictionary look-ups)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        archive = dicom_series_zip(**series_args())
        runs.append(time.perf_counter() - start)
    print(
        f"\ndefault dicom_series_zip: {len(archive)} bytes, "
        f"best {min(runs) * 1e3:.1f} ms, worst {max(runs) * 1e3:.1f} ms"
    )


# --- NIfTI -------------------------------------------------------------------------------------


def load_nifti(data: bytes) -> Any:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data))


def test_nifti_gz_shape_zooms_and_affine(tmp_path: Path) -> None:
    data = nifti_gz(shape=(64, 64, 16), voxel_mm=(2.0, 2.0, 3.0), seed=5, description="T1w")
    assert data[:2] == b"\x1f\x8b"
    path = tmp_path / "t1.nii.gz"
    path.write_bytes(data)
    image: Any = nib.load(path)
    assert image.shape == (64, 64, 16)
    assert np.allclose(image.header.get_zooms(), (2.0, 2.0, 3.0))
    assert image.get_data_dtype() == np.int16
    qform, qcode = image.header.get_qform(coded=True)
    sform, scode = image.header.get_sform(coded=True)
    assert (int(qcode), int(scode)) == (1, 1)
    assert np.allclose(qform, sform)
    assert np.allclose(np.diag(sform)[:3], (2.0, 2.0, 3.0))
    # The world origin is the centre of the volume.
    centre = sform @ np.array([31.5, 31.5, 7.5, 1.0])
    assert np.allclose(centre[:3], 0.0)
    assert image.header.get_xyzt_units()[0] == "mm"
    assert image.header["descrip"].item().rstrip(b"\0") == b"T1w"
    assert np.asarray(image.dataobj).max() > 300


def test_nifti_gz_is_deterministic_and_seed_dependent() -> None:
    args: dict[str, Any] = {"shape": (20, 24, 12), "voxel_mm": (1.0, 1.5, 2.5), "seed": 5}
    first = nifti_gz(**args)
    assert nifti_gz(**args) == first
    assert nifti_gz(**{**args, "seed": 6}) != first
    # The gzip header carries no timestamp.
    assert first[4:8] == b"\0\0\0\0"
    image = load_nifti(first)
    assert image.shape == (20, 24, 12)
    assert np.allclose(image.header.get_zooms(), (1.0, 1.5, 2.5))


def test_nifti_matches_the_dicom_phantom_of_the_same_seed() -> None:
    image = load_nifti(nifti_gz(shape=(64, 64, 16), voxel_mm=(2.0, 2.0, 3.0), seed=8))
    expected = phantom_volume((16, 64, 64), seed=8).transpose(2, 1, 0)
    assert np.array_equal(np.asarray(image.dataobj), expected)


def test_nifti_series_is_4d_with_the_tr_as_fourth_zoom() -> None:
    args: dict[str, Any] = {"shape": (20, 24, 12), "voxel_mm": (1.0, 1.5, 2.5), "seed": 5}
    data = nifti_gz(**args, volumes=(1.0, 0.5, 0.5), repetition_time=2.3)
    assert data == nifti_gz(**args, volumes=(1.0, 0.5, 0.5), repetition_time=2.3)
    image = load_nifti(data)
    assert image.shape == (20, 24, 12, 3)
    assert np.allclose(image.header.get_zooms(), (1.0, 1.5, 2.5, 2.3))
    assert image.header.get_xyzt_units() == ("mm", "sec")
    series = np.asarray(image.dataobj).astype(float)
    phantom = np.asarray(load_nifti(nifti_gz(**args)).dataobj).astype(float)
    # Each volume is the phantom at its scale, plus noise of its own.
    assert np.corrcoef(series[..., 0].ravel(), phantom.ravel())[0, 1] > 0.95
    assert series[..., 1].mean() == pytest.approx(0.5 * series[..., 0].mean(), rel=0.05)
    assert not np.array_equal(series[..., 1], series[..., 2])


def test_nifti_long_description_is_truncated() -> None:
    image = load_nifti(nifti_gz(shape=(4, 4, 4), voxel_mm=(1, 1, 1), seed=0, description="x" * 200))
    assert len(image.header["descrip"].item().rstrip(b"\0")) < 80


# --- tables and JSON ---------------------------------------------------------------------------


def test_csv_table_round_trips() -> None:
    data = csv_table(
        ["subject", "age", "note"],
        [["sub-01", 34, 'said "hi", left'], ["sub-02", None, "Zürich"], ["sub-03", 2.5, ""]],
    )
    assert data.startswith(b"subject,age,note\n")
    assert data.endswith(b"\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"))))
    assert rows == [
        ["subject", "age", "note"],
        ["sub-01", "34", 'said "hi", left'],
        ["sub-02", "", "Zürich"],
        ["sub-03", "2.5", ""],
    ]
    assert csv_table(["a"], []) == b"a\n"


def test_json_bytes_is_sorted_indented_and_newline_terminated() -> None:
    obj = {"b": [1, 2], "a": {"z": None, "y": "é"}, "when": datetime(2023, 1, 2, 3, 4, 5)}
    data = json_bytes(obj)
    assert data.endswith(b"}\n")
    text = data.decode("utf-8")
    assert text.index('"a"') < text.index('"b"') < text.index('"when"')
    assert text.index('"y"') < text.index('"z"')
    assert '\n  "a": {\n    "y": "é"' in text
    assert json.loads(text) == {
        "a": {"y": "é", "z": None},
        "b": [1, 2],
        "when": "2023-01-02T03:04:05",
    }
    assert json_bytes({"d": date(2020, 2, 29)}) == b'{\n  "d": "2020-02-29"\n}\n'
    assert json_bytes(obj) == data
    with pytest.raises(TypeError):
        json_bytes({"x": object()})


# --- PDF ---------------------------------------------------------------------------------------


def check_pdf_structure(pdf: bytes) -> None:
    assert pdf.startswith(b"%PDF-1.")
    assert pdf.rstrip().endswith(b"%%EOF")
    startxref = int(re.findall(rb"startxref\s+(\d+)\s+%%EOF", pdf)[-1])
    assert pdf[startxref:].startswith(b"xref")
    section = re.match(rb"xref\r?\n0 (\d+)\r?\n", pdf[startxref:])
    assert section is not None
    count = int(section.group(1))
    entries_at = startxref + section.end()
    entries = pdf[entries_at : entries_at + 20 * count]
    assert entries[:20] == b"0000000000 65535 f \n"
    for number in range(1, count):
        entry = entries[20 * number : 20 * (number + 1)]
        assert re.fullmatch(rb"\d{10} 00000 n[ \r]\n|\d{10} 00000 n\r\n", entry), entry
        offset = int(entry[:10])
        assert pdf[offset:].startswith(b"%d 0 obj" % number), number
    trailer = pdf[entries_at + 20 * count :]
    assert re.match(rb"trailer\s*<<.*/Size %d\b.*/Root 1 0 R" % count, trailer, re.S)
    # Every stream's /Length is the exact number of bytes between stream and endstream.
    for match in re.finditer(rb"/Length (\d+) >>\nstream\n", pdf):
        end = match.end() + int(match.group(1))
        assert pdf[end:].startswith(b"\nendstream")


def test_pdf_report_structure_and_text() -> None:
    pdf = pdf_report("QA report (sub-01)", ["SNR: 42.0", "path C:\\data\\x", "ok (pass)"])
    check_pdf_structure(pdf)
    assert b"/BaseFont /Helvetica" in pdf
    assert b"(QA report \\(sub-01\\)) Tj" in pdf
    assert b"(path C:\\\\data\\\\x) Tj" in pdf
    assert b"(ok \\(pass\\)) Tj" in pdf
    assert pdf_report("QA report (sub-01)", ["SNR: 42.0"]) == pdf_report(
        "QA report (sub-01)", ["SNR: 42.0"]
    )


def test_pdf_report_stays_on_one_page() -> None:
    long_line = "word " * 60
    pdf = pdf_report("Überblick – € ✓", [f"line {n}" for n in range(200)] + [long_line, ""])
    check_pdf_structure(pdf)
    assert pdf.count(b"/Type /Page ") == 1
    assert b"more lines not shown" in pdf
    # Characters outside WinAnsi are replaced rather than written as broken bytes.
    assert b"(\xdcberblick \x96 \x80 ?) Tj" in pdf


def test_pdf_with_pdftotext_if_available(tmp_path: Path) -> None:
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        pytest.skip("pdftotext is not installed")
    path = tmp_path / "r.pdf"
    path.write_bytes(pdf_report("Title (x)", ["alpha", "beta \\ gamma"]))
    text = subprocess.run(
        [pdftotext, str(path), "-"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "Title (x)" in text and "alpha" in text and "beta \\ gamma" in text


# --- random bytes ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 4096, 1_000_003])
def test_random_bytes_file_size_and_determinism(tmp_path: Path, size: int) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    random_bytes_file(a, size, seed=3)
    random_bytes_file(b, size, seed=3, chunk=1000)
    random_bytes_file(c, size, seed=4)
    assert a.stat().st_size == size
    assert a.read_bytes() == b.read_bytes()
    if size >= 8:
        assert a.read_bytes() != c.read_bytes()


def test_random_bytes_file_is_a_prefix_stream_and_looks_random(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    random_bytes_file(small, 100_001, seed=9)
    random_bytes_file(large, 300_000, seed=9, chunk=64 << 10)
    data = large.read_bytes()
    assert data[:100_001] == small.read_bytes()
    counts = np.bincount(np.frombuffer(data, dtype=np.uint8), minlength=256)
    assert counts.min() > 0.8 * len(data) / 256
    assert len(gzip.compress(data)) > 0.99 * len(data)


def test_random_bytes_file_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        random_bytes_file(tmp_path / "x", -1, seed=0)
    with pytest.raises(ValueError):
        random_bytes_file(tmp_path / "x", 10, seed=0, chunk=0)


def test_random_bytes_file_throughput(tmp_path: Path) -> None:
    size = 128 << 20
    start = time.perf_counter()
    random_bytes_file(tmp_path / "big", size, seed=1)
    elapsed = time.perf_counter() - start
    assert (tmp_path / "big").stat().st_size == size
    print(f"\nrandom_bytes_file: {size / elapsed / 1e6:.0f} MB/s")


def test_module_imports_nothing_else_from_fwfs() -> None:
    source = Path(demodata.__file__).read_text(encoding="utf-8")
    assert not re.search(r"^\s*(from|import)\s+fwfs\b", source, re.M)
    assert not re.search(r"^\s*from\s+\.", source, re.M)


def test_two_demo_sites_hold_the_same_bytes(tmp_path: Path) -> None:
    # docs/SANDBOX.md: files are generated deterministically, the same on every machine.
    from fwfs.sandbox.server import Sandbox, ServeOptions

    listings = []
    for n in range(2):
        site = Sandbox(ServeOptions(data=tmp_path / f"site{n}", demo=True))
        try:
            listings.append(sorted((r.name, r.doc["hash"]) for r in site.store.all_current_files()))
        finally:
            site.stop()
    assert len(listings[0]) > 40
    assert listings[0] == listings[1]

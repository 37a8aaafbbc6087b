"""Bytes of the sandbox's demo files: DICOM series archives, NIfTI volumes, tables, reports.

Every function is pure and deterministic: the same arguments (``seed`` included) give
byte-identical output, so the demo site, its checksums and the tests that compare file contents
are reproducible from one run to the next. Every UID, date and random number is derived from the
arguments; nothing reads the clock or the environment.

Array axes follow numpy's C order for a stack of images: ``shape`` is (slices, rows, columns) and
``voxel_mm`` is (slice spacing, row spacing, column spacing), except for :func:`nifti_gz`, which
takes them in NIfTI's (i, j, k) order, the order nibabel reports them in.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import pathlib
import struct
import textwrap
import zipfile
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any, TypeAlias

import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

__all__ = [
    "csv_table",
    "derive_uid",
    "dicom_series_zip",
    "json_bytes",
    "nifti_gz",
    "pdf_report",
    "phantom_volume",
    "random_bytes_file",
]

# Tissue labels of the phantom. Later ellipsoids overwrite earlier ones, so _labels paints
# them from the outside in.
_BACKGROUND, _SCALP, _SKULL, _CSF, _GREY, _WHITE, _LESION = range(7)

# Stored intensity per tissue label. T1 is the default look; CT values are HU + 1024, stored
# with RescaleIntercept -1024 as scanners do, so that air stays non-negative.
_CONTRAST: Mapping[str, tuple[float, ...]] = {
    "T1": (0.0, 900.0, 150.0, 250.0, 600.0, 800.0, 400.0),
    "T2": (0.0, 550.0, 100.0, 1300.0, 750.0, 550.0, 1100.0),
    "CT": (24.0, 1004.0, 2024.0, 1032.0, 1064.0, 1054.0, 1044.0),
}

# (TE ms, TR ms, flip angle deg, scanning sequence) by the contrast a description suggests.
_MR_TIMING: Mapping[str, tuple[float, float, float, str]] = {
    "T1": (2.3, 2300.0, 8.0, "GR\\IR"),
    "T2": (90.0, 5000.0, 150.0, "SE"),
    "BOLD": (30.0, 2000.0, 77.0, "EP"),
}

_MANUFACTURER = "FWFS Sandbox"
_IMPLEMENTATION_VERSION = "FWFS_SANDBOX_1"

# Zip timestamps cannot predate 1980 (DOS date format).
_ZIP_EPOCH: tuple[int, int, int, int, int, int] = (1980, 1, 1, 0, 0, 0)


def derive_uid(*parts: object) -> str:
    """A DICOM UID that is a pure function of ``parts``.

    Uses the ``2.25`` root (a UUID written as an integer, PS3.5 B.2), which needs no registered
    organisation root; 128 bits of a SHA-256 keep it at most 44 characters, and an integer's
    decimal form never has a leading zero.
    """
    text = "\x1f".join(repr(p) for p in parts)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


_IMPLEMENTATION_UID = derive_uid("fwfs-sandbox-implementation")


def _labels(shape: tuple[int, int, int], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    nz, ny, nx = shape
    # Normalised coordinates keep the anatomy proportional whatever the matrix size; float32
    # halves the memory traffic, which dominates for large volumes.
    z = np.linspace(-1.0, 1.0, nz, dtype=np.float32)[:, None, None]
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[None, None, :]

    # Per-seed jitter of the head's pose and proportions, so subjects differ visibly.
    cz, cy, cx = rng.uniform(-0.04, 0.04, 3)
    sz, sy, sx = rng.uniform(0.94, 1.04, 3)

    def inside(
        centre: tuple[float, float, float], radii: tuple[float, float, float]
    ) -> npt.NDArray[np.bool_]:
        dz = (z - (cz + centre[0])) / (radii[0] * sz)
        dy = (y - (cy + centre[1])) / (radii[1] * sy)
        dx = (x - (cx + centre[2])) / (radii[2] * sx)
        result: npt.NDArray[np.bool_] = dz * dz + dy * dy + dx * dx <= 1.0
        return result

    labels = np.zeros(shape, dtype=np.uint8)
    labels[inside((0.0, 0.0, 0.0), (0.95, 0.92, 0.74))] = _SCALP
    labels[inside((0.0, 0.0, 0.0), (0.89, 0.86, 0.68))] = _SKULL
    labels[inside((0.0, 0.0, 0.0), (0.83, 0.80, 0.62))] = _CSF
    labels[inside((0.0, 0.0, 0.0), (0.80, 0.77, 0.59))] = _GREY
    labels[inside((0.05, 0.0, 0.0), (0.62, 0.60, 0.45))] = _WHITE
    for side in (-1.0, 1.0):
        labels[inside((0.1, -0.05, side * 0.11), (0.28, 0.30, 0.07))] = _CSF
    for _ in range(int(rng.integers(1, 4))):
        centre = (
            float(rng.uniform(-0.4, 0.4)),
            float(rng.uniform(-0.45, 0.45)),
            float(rng.uniform(-0.35, 0.35)),
        )
        r = float(rng.uniform(0.05, 0.1))
        labels[inside(centre, (r, r, r))] = _LESION
    return labels


def _phantom(
    shape: tuple[int, int, int], seed: int, contrast: str, noise: float
) -> npt.NDArray[np.int16]:
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes, not {shape!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    labels = _labels(shape, rng)
    table = np.asarray(_CONTRAST[contrast], dtype=np.float32)
    # Slightly different tissue values per subject, as between real scans.
    table = table * rng.uniform(0.95, 1.05, table.shape).astype(np.float32)
    volume = table[labels]
    volume += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise)
    np.clip(volume, 0.0, 32767.0, out=volume)
    return np.rint(volume).astype(np.int16)


def phantom_volume(shape: tuple[int, int, int], seed: int) -> npt.NDArray[np.int16]:
    """A T1-like int16 head phantom of ``shape`` (slices, rows, columns), different per seed.

    Nested ellipsoids for scalp, skull, CSF, grey and white matter and the lateral ventricles,
    one to three seed-placed lesions, and mild Gaussian noise.
    """
    return _phantom(shape, seed, "T1", noise=12.0)


def _ds(value: float) -> str:
    # DS values are limited to 16 characters; rounding also avoids 0.30000000000000004 forms.
    text = f"{round(value, 6):.10g}"
    return "0" if text == "-0" else text


def _contrast_of(description: str) -> str:
    upper = description.upper()
    if "BOLD" in upper or "FMRI" in upper or "REST" in upper or "TASK" in upper:
        return "BOLD"
    if "T2" in upper or "FLAIR" in upper:
        return "T2"
    return "T1"


# Explicit VR elements whose length field is 32 bits, after two reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
)
_BINARY_FORMATS: Mapping[str, str] = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}

_Value: TypeAlias = str | int | bytes | Sequence[str]


@functools.cache
def _tag_vr(keyword: str) -> tuple[int, str]:
    # Tags and VRs come from pydicom's data dictionary, so a misspelt keyword fails loudly.
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(f"unknown DICOM keyword {keyword!r}")
    return int(tag), str(dictionary_VR(tag))


def _element(keyword: str, value: _Value, vr: str | None = None) -> tuple[int, bytes]:
    """``keyword`` = ``value`` as an Explicit VR Little Endian data element."""
    tag, dictionary_vr = _tag_vr(keyword)
    vr = vr or dictionary_vr
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, int):
        raw = struct.pack(_BINARY_FORMATS[vr], value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
    else:
        raw = "\\".join(value).encode("utf-8")
    if len(raw) % 2:
        # UIDs and binary values pad with NUL, text with a space (PS3.5 6.2).
        raw += b"\0" if vr in ("UI", "OB", "OW") else b" "
    head = struct.pack("<HH2s", tag >> 16, tag & 0xFFFF, vr.encode("ascii"))
    if vr in _LONG_VRS:
        return tag, head + struct.pack("<2xI", len(raw)) + raw
    return tag, head + struct.pack("<H", len(raw)) + raw


def _part10(
    sop_class: str, sop_instance: str, elements: Mapping[int, bytes], order: Sequence[int]
) -> bytes:
    meta = b"".join(
        element
        for _, element in (
            _element("FileMetaInformationVersion", b"\0\1"),
            _element("MediaStorageSOPClassUID", sop_class),
            _element("MediaStorageSOPInstanceUID", sop_instance),
            _element("TransferSyntaxUID", str(ExplicitVRLittleEndian)),
            # Our own implementation UID, so output does not depend on a library's version.
            _element("ImplementationClassUID", _IMPLEMENTATION_UID),
            _element("ImplementationVersionName", _IMPLEMENTATION_VERSION),
        )
    )
    _, group_length = _element("FileMetaInformationGroupLength", len(meta))
    body = b"".join(elements[tag] for tag in order)
    return b"\0" * 128 + b"DICM" + group_length + meta + body


def dicom_series_zip(
    *,
    series_description: str,
    modality: str = "MR",
    shape: tuple[int, int, int] = (16, 64, 64),
    voxel_mm: tuple[float, float, float] = (3.0, 2.0, 2.0),
    patient_id: str,
    patient_name: str,
    study_instance_uid: str,
    series_number: int,
    acquisition_datetime: datetime,
    seed: int,
    folder: str | None = None,
) -> bytes:
    """A deflated zip of one Part-10 DICOM file per slice, laid out like Flywheel's archives.

    Members are ``<folder or series_description>/<series_description>_<NNNN>.dcm``, numbered
    from 1. ``shape`` is (slices, rows, columns) and ``voxel_mm`` is (slice spacing, row
    spacing, column spacing); slices are axial, stacked along +z in patient coordinates, so
    dcm2niix turns the series into one volume of columns x rows x slices.

    The files are encoded here rather than by ``pydicom.dcmwrite``: the shared header is
    encoded once per series and each slice only adds its own few elements, which is several
    times faster, and the bytes do not change with the installed pydicom's version.
    """
    if modality not in ("MR", "CT"):
        raise ValueError(f"modality must be 'MR' or 'CT', not {modality!r}")
    n_slices, rows, cols = shape
    slice_mm, row_mm, col_mm = voxel_mm

    contrast = _contrast_of(series_description) if modality == "MR" else "CT"
    volume = _phantom(
        shape, seed, "CT" if modality == "CT" else ("T2" if contrast == "T2" else "T1"), 12.0
    )
    # Explicit little endian pixel data regardless of the host's byte order.
    volume_le = volume.astype("<i2", copy=False)

    uid_key = (seed, study_instance_uid, series_number, modality, series_description)
    sop_class = str(MRImageStorage if modality == "MR" else CTImageStorage)
    day = acquisition_datetime.strftime("%Y%m%d")
    clock = acquisition_datetime.strftime("%H%M%S.%f")

    attributes: list[tuple[str, _Value]] = [
        ("SpecificCharacterSet", "ISO_IR 192"),
        ("ImageType", ["ORIGINAL", "PRIMARY", "M" if modality == "MR" else "AXIAL", "ND"]),
        ("SOPClassUID", sop_class),
        ("StudyDate", day),
        ("SeriesDate", day),
        ("AcquisitionDate", day),
        ("ContentDate", day),
        ("AcquisitionDateTime", day + clock),
        ("StudyTime", clock),
        ("SeriesTime", clock),
        ("AcquisitionTime", clock),
        ("ContentTime", clock),
        ("AccessionNumber", ""),
        ("Modality", modality),
        ("Manufacturer", _MANUFACTURER),
        ("ReferringPhysicianName", ""),
        ("StationName", "SANDBOX"),
        ("StudyDescription", ""),
        ("SeriesDescription", series_description),
        ("ManufacturerModelName", "Phantom " + modality),
        ("PatientName", patient_name),
        ("PatientID", patient_id),
        ("PatientBirthDate", ""),
        ("PatientSex", ""),
        ("BodyPartExamined", "HEAD"),
        ("SliceThickness", _ds(slice_mm)),
        ("SpacingBetweenSlices", _ds(slice_mm)),
        ("ProtocolName", series_description),
        ("PatientPosition", "HFS"),
        ("StudyInstanceUID", study_instance_uid),
        ("SeriesInstanceUID", derive_uid("series", *uid_key)),
        ("StudyID", "1"),
        ("SeriesNumber", str(series_number)),
        ("AcquisitionNumber", "1"),
        ("ImageOrientationPatient", ["1", "0", "0", "0", "1", "0"]),
        ("FrameOfReferenceUID", derive_uid("frame-of-reference", *uid_key)),
        ("PositionReferenceIndicator", ""),
        ("SamplesPerPixel", 1),
        ("PhotometricInterpretation", "MONOCHROME2"),
        ("Rows", rows),
        ("Columns", cols),
        ("PixelSpacing", [_ds(row_mm), _ds(col_mm)]),
        ("BitsAllocated", 16),
        ("BitsStored", 16),
        ("HighBit", 15),
        ("PixelRepresentation", 1),
    ]
    if modality == "MR":
        te, tr, flip, sequence = _MR_TIMING[contrast]
        attributes += [
            ("ScanningSequence", sequence),
            ("SequenceVariant", "NONE"),
            ("ScanOptions", ""),
            ("MRAcquisitionType", "2D"),
            ("RepetitionTime", _ds(tr)),
            ("EchoTime", _ds(te)),
            ("EchoTrainLength", "1"),
            ("ImagingFrequency", "123.25"),
            ("ImagedNucleus", "1H"),
            ("MagneticFieldStrength", "3"),
            ("FlipAngle", _ds(flip)),
            ("WindowCenter", "500"),
            ("WindowWidth", "1000"),
            ("RescaleIntercept", "0"),
            ("RescaleSlope", "1"),
            ("RescaleType", "US"),
        ]
    else:
        attributes += [
            ("KVP", "120"),
            ("ConvolutionKernel", "STANDARD"),
            ("WindowCenter", "40"),
            ("WindowWidth", "80"),
            ("RescaleIntercept", "-1024"),
            ("RescaleSlope", "1"),
            ("RescaleType", "HU"),
        ]
    shared = dict(_element(keyword, value) for keyword, value in attributes)
    per_slice = ("SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation")
    order = sorted([*shared, *(_tag_vr(k)[0] for k in per_slice), _tag_vr("PixelData")[0]])
    if len(order) != len(set(order)):
        raise AssertionError("a per-slice attribute is also in the shared header")

    # Centre the volume on the scanner's isocentre, as a head scan would be.
    x0 = -0.5 * (cols - 1) * col_mm
    y0 = -0.5 * (rows - 1) * row_mm
    z0 = -0.5 * (n_slices - 1) * slice_mm
    when = acquisition_datetime
    stamp = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    stamp = max(stamp, _ZIP_EPOCH)
    prefix = folder if folder is not None else series_description

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(n_slices):
            number = index + 1
            sop_uid = derive_uid("instance", *uid_key, number)
            z = _ds(z0 + index * slice_mm)
            elements = dict(shared)
            elements.update(
                (
                    _element("SOPInstanceUID", sop_uid),
                    _element("InstanceNumber", str(number)),
                    _element("ImagePositionPatient", [_ds(x0), _ds(y0), z]),
                    _element("SliceLocation", z),
                    _element("PixelData", volume_le[index].tobytes(), vr="OW"),
                )
            )
            info = zipfile.ZipInfo(f"{prefix}/{series_description}_{number:04d}.dcm", stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            # Fixed, rather than taken from the host, so archives match across platforms.
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            archive.writestr(info, _part10(sop_class, sop_uid, elements, order))
    return out.getvalue()


def _nifti_affine(
    shape: tuple[int, int, int], voxel_mm: tuple[float, float, float]
) -> npt.NDArray[np.float64]:
    affine = np.diag([*voxel_mm, 1.0]).astype(np.float64)
    # World origin at the volume's centre, matching the DICOM series' isocentre.
    affine[:3, 3] = [-0.5 * (n - 1) * v for n, v in zip(shape, voxel_mm, strict=True)]
    return affine


def nifti_gz(
    *,
    shape: tuple[int, int, int],
    voxel_mm: tuple[float, float, float],
    seed: int,
    description: str = "",
    volumes: Sequence[float] = (),
    repetition_time: float = 0.0,
) -> bytes:
    """A gzipped NIfTI-1 of the phantom; ``shape`` and ``voxel_mm`` are in (i, j, k) order.

    The affine is RAS+ with the origin at the volume's centre, set as both qform and sform
    (code 1, scanner anatomical), and the units are millimetres. ``description`` goes in the
    header's 80-byte ``descrip`` field, truncated to fit.

    ``volumes`` makes a 4-D series: one volume per entry, the phantom scaled by that factor
    (1.0 for a BOLD frame or a b=0 image, less for a diffusion-weighted one) plus fresh noise,
    with ``repetition_time`` seconds as the fourth zoom (``pixdim[4]``). Without it the image
    is 3-D, and the bytes are those it always had.
    """
    ni, nj, nk = shape
    # The phantom is built as (slices, rows, columns); transposing gives (x, y, z), so the
    # NIfTI looks like the DICOM series of the same seed does after dcm2niix.
    data = np.ascontiguousarray(phantom_volume((nk, nj, ni), seed).transpose(2, 1, 0))
    if volumes:
        data = _series(data, volumes, seed)
    affine = _nifti_affine(shape, voxel_mm)
    # nibabel's methods are unannotated; one Any-typed handle keeps mypy --strict quiet
    # without an ignore comment per call.
    nifti1_image: Any = nib.Nifti1Image
    image = nifti1_image(data, affine)
    header = image.header
    header.set_data_dtype(np.int16)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    if volumes:
        header.set_zooms((*voxel_mm, repetition_time))
    header["descrip"] = description.encode("utf-8")[:79]
    raw: bytes = image.to_bytes()
    # mtime=0 keeps the gzip header, and so the bytes, independent of when it was built.
    return gzip.compress(raw, compresslevel=6, mtime=0)


def _series(
    volume: npt.NDArray[np.int16], scales: Sequence[float], seed: int
) -> npt.NDArray[np.int16]:
    rng = np.random.Generator(np.random.PCG64(seed ^ 0x5EED))
    frames = [
        volume.astype(np.float32) * np.float32(scale)
        + rng.standard_normal(volume.shape, dtype=np.float32) * np.float32(6.0)
        for scale in scales
    ]
    series = np.clip(np.stack(frames, axis=-1), 0.0, 32767.0)
    return np.ascontiguousarray(np.rint(series).astype(np.int16))


def _csv_cell(value: object) -> object:
    return "" if value is None else value


def csv_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> bytes:
    """UTF-8 CSV with a header line; ``None`` cells are empty, lines end in ``\\n``."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(v) for v in row])
    return text.getvalue().encode("utf-8")


def _json_default(value: object) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, pathlib.PurePath):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def json_bytes(obj: object) -> bytes:
    """UTF-8 JSON, indented, keys sorted, with a trailing newline; dates become ISO strings."""
    text = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=_json_default)
    return (text + "\n").encode("utf-8")


def _pdf_text(text: str) -> bytes:
    # The standard Helvetica font speaks WinAnsi (cp1252); other characters become '?'.
    flat = " ".join(text.splitlines()) if text else ""
    raw = flat.encode("cp1252", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _pdf_info_text(text: str) -> bytes:
    # Info strings use PDFDocEncoding, which agrees with Latin-1 on the printable range.
    flat = " ".join(text.splitlines()) if text else ""
    raw = flat.encode("latin-1", errors="replace")
    return raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def pdf_report(title: str, lines: Sequence[str]) -> bytes:
    """A one-page US Letter PDF: ``title`` in 16 pt Helvetica above ``lines`` in 10 pt.

    Long lines are wrapped; lines beyond the page are dropped, with a final note saying how many.
    """
    width, height, margin = 612, 792, 72
    body_size, leading = 10, 13
    capacity = (height - 2 * margin - 30) // leading

    wrapped: list[str] = []
    for line in lines:
        wrapped.extend(textwrap.wrap(line, 95, replace_whitespace=True) or [""])
    if len(wrapped) > capacity:
        dropped = len(wrapped) - (capacity - 1)
        wrapped = [*wrapped[: capacity - 1], f"... ({dropped} more lines not shown)"]

    content = bytearray()
    content += b"BT\n/F1 16 Tf\n%d %d Td\n(%s) Tj\n" % (margin, height - margin, _pdf_text(title))
    content += b"/F1 %d Tf\n%d TL\n0 -12 Td\n" % (body_size, leading)
    for line in wrapped:
        content += b"T* (%s) Tj\n" % _pdf_text(line)
    content += b"ET\n"

    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>" % (width, height),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), bytes(content)),
        b"<< /Title (%s) /Producer (fwfs sandbox) >>" % _pdf_info_text(title),
    ]

    # The binary comment line tells transfer tools the file is not plain text.
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: list[int] = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref_at = len(out)
    # Each xref entry must be exactly 20 bytes, hence the space before the newline.
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\n" % (len(objects) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % xref_at
    return bytes(out)


def random_bytes_file(path: pathlib.Path, size: int, seed: int, chunk: int = 8 << 20) -> None:
    """Write ``size`` pseudo-random bytes to ``path``, ``chunk`` bytes of memory at a time.

    The bytes depend only on ``size`` and ``seed``, not on ``chunk``: a file of size n is a
    prefix of the file of any larger size with the same seed.
    """
    if size < 0:
        raise ValueError(f"size must be non-negative, not {size}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, not {chunk}")
    # Whole 64-bit draws per chunk keep the stream independent of the chunk size; raw PCG64
    # output is over 2 GB/s, several times faster than Generator.bytes.
    words = max(1, chunk // 8)
    bits = np.random.PCG64(seed)
    remaining = size
    with open(path, "wb") as handle:
        while remaining > 0:
            count = min(words, (remaining + 7) // 8)
            block = bits.random_raw(count).astype("<u8", copy=False).view(np.uint8)
            take = min(remaining, block.size)
            handle.write(block[:take].data)
            remaining -= take

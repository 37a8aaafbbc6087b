"""docs/SEMANTICS.md, *Writes*: the tools people write with (cp -r, rsync, cat >, tee, dd)
put every file, byte for byte, into the right container, as the SDK sees it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mountkit import ACQ, PROJECT, Mount, Scratch, sha256, wait_for

pytestmark = pytest.mark.timeout(180)


def run(argv: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr.decode(errors='replace')}"
    return done


def local_tree(root: Path) -> dict[str, bytes]:
    """A small BIDS-like tree: two subjects, sessions, acquisitions, files of odd sizes."""
    files = {
        "sub-10/notes.txt": b"subject notes\n",
        "sub-10/ses-1/session.json": b'{"scanner": "3T"}\n',
        "sub-10/ses-1/anat/T1w.nii.gz": os.urandom(700_001),
        "sub-10/ses-1/anat/T1w.json": b"{}\n",
        "sub-10/ses-1/func/bold.nii.gz": os.urandom(1_500_000),
        "sub-11/ses-1/anat/T1w.nii.gz": os.urandom(3),
        "sub-11/ses-1/anat/empty.txt": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def site_tree(fw: Any, project_path: str) -> dict[str, str]:
    """relpath -> sha256 of every file under a project, by the SDK (labels as names)."""
    out: dict[str, str] = {}
    project = fw.lookup(project_path)

    def add(prefix: str, container: Any) -> None:
        container = fw.get(container.id)
        for f in container.files:
            data = fw.download_file_from_container_as_data(container.id, f.name)
            out[f"{prefix}{f.name}"] = sha256(data)

    for subject in project.subjects():
        add(f"{subject.label}/", subject)
        for session in subject.sessions():
            add(f"{subject.label}/{session.label}/", session)
            for acq in session.acquisitions():
                add(f"{subject.label}/{session.label}/{acq.label}/", acq)
    return out


def test_cp_r_uploads_a_tree(
    scratch: Scratch, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    files = local_tree(tmp_path / "bids")
    mount = mount_site(scratch.site)
    run(["cp", "-r", f"{tmp_path / 'bids'}/.", str(mount / PROJECT)])
    want = {rel: sha256(data) for rel, data in files.items()}

    def new() -> dict[str, str]:
        got = site_tree(scratch.fw, PROJECT)
        return {rel: digest for rel, digest in got.items() if not rel.startswith("sub-01/")}

    # An empty file is uploaded at its release, which the kernel sends just after cp's
    # close() (SEMANTICS, "Empty files"); every other file is there when cp returns.
    assert {rel: d for rel, d in new().items() if files[rel]} == {
        rel: d for rel, d in want.items() if files[rel]
    }
    wait_for(lambda: new() == want, what="every file of the tree, the empty one too")
    kinds = {
        "sub-10": "subject",
        "sub-10/ses-1": "session",
        "sub-10/ses-1/anat": "acquisition",
    }
    for rel, kind in kinds.items():
        assert scratch.fw.lookup(f"g/P/{rel}").container_type == kind


def test_rsync_uploads_a_tree_and_new_versions(
    scratch: Scratch, mount_site: Callable[..., Mount], tmp_path: Path
) -> None:
    files = local_tree(tmp_path / "bids")
    mount = mount_site(scratch.site)  # no --allow-delete: rsync's temporary files are ours
    run(["rsync", "-r", f"{tmp_path / 'bids'}/", str(mount / PROJECT)])
    got = site_tree(scratch.fw, PROJECT)
    for rel, data in files.items():
        assert got[rel] == sha256(data), rel
    assert not [rel for rel in got if "/." in rel or rel.startswith(".")]  # no temp files left
    # Again, with one file changed and times and modes (-a): a new version of that file.
    changed = tmp_path / "bids/sub-10/ses-1/anat/T1w.json"
    changed.write_bytes(b'{"EchoTime": 0.003}\n')
    run(["rsync", "-a", "--checksum", f"{tmp_path / 'bids'}/", str(mount / PROJECT)])
    acq = scratch.fw.lookup("g/P/sub-10/ses-1/anat")
    by_name = {f.name: f for f in scratch.fw.get(acq.id).files}
    assert sorted(by_name) == ["T1w.json", "T1w.nii.gz"]
    assert by_name["T1w.json"].version == 2
    assert by_name["T1w.nii.gz"].version == 1
    data = scratch.fw.download_file_from_container_as_data(acq.id, "T1w.json")
    assert data == b'{"EchoTime": 0.003}\n'


def test_cat_tee_and_dd_write_files(scratch: Scratch, mount: Mount, tmp_path: Path) -> None:
    folder = mount / ACQ
    a, b, c = os.urandom(1_000_000), os.urandom(2_500_000), os.urandom(4 << 20)
    run(["sh", "-c", 'cat > "$1"', "sh", str(folder / "cat.bin")], stdin=a)
    run(["tee", str(folder / "tee.bin")], stdin=b)
    local = tmp_path / "dd-source.bin"
    local.write_bytes(c)
    run(["dd", f"if={local}", f"of={folder / 'dd.bin'}", "bs=1M", "status=none"])
    acq = scratch.acquisition
    for name, data in (("cat.bin", a), ("tee.bin", b), ("dd.bin", c)):
        assert sha256(scratch.read(acq, name)) == sha256(data), name
        assert scratch.files(acq)[name].version == 1, name


def test_a_scratch_subject_on_the_demo(
    demo_site: Any,
    mount_site: Callable[..., Mount],
    fw: Any,
    unique: Any,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The shared demo site, as a user would: mkdir -p a new subject, copy a file in. (Its
    own mount, and the subject deleted afterwards: other tests compare the demo's tree.)"""
    subject = unique("sub-scratch")
    mounted = mount_site(demo_site)

    def remove() -> None:
        for s in fw.lookup("flywheel/Pilot Imaging").subjects():
            if s.label == subject:
                fw.delete_subject(s.id)

    request.addfinalizer(remove)
    target = mounted / f"flywheel/Pilot Imaging/{subject}/ses-01/T1w"
    local = tmp_path / "T1w.nii.gz"
    local.write_bytes(os.urandom(200_000))
    run(["mkdir", "-p", str(target)])
    run(["cp", str(local), str(target)])
    acq = fw.lookup(f"flywheel/Pilot Imaging/{subject}/ses-01/T1w")
    data = fw.download_file_from_container_as_data(acq.id, "T1w.nii.gz")
    assert sha256(data) == sha256(local.read_bytes())
    assert (target / "T1w.nii.gz").read_bytes() == local.read_bytes()

"""`flywheel://` writes, on the demo site and on the strict one: uploads through the
model's spool and uploader with the mount's rules (a new version on overwrite, a failed
upload raised), containers made with mkdir, and removal only when allowed. Each test
writes into a group of its own; the SDK is the witness."""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path
from typing import Any

import flywheel
import pytest
from remotekit import MakeFs, Scratch, options_of

from fwfs.remote import FlywheelFileSystem

pytestmark = pytest.mark.timeout(120)


def site_file(scratch: Scratch, name: str) -> tuple[bytes, int]:
    """(bytes, version) of the project's file `name`, as the site holds it."""
    project = scratch.project.reload()
    (f,) = [f for f in project.files if f.name == name]
    data: bytes = project.read_file(name)
    return data, f.version


def test_pipe_file_creates_then_a_new_version(fsys: FlywheelFileSystem, scratch: Scratch) -> None:
    path = f"{scratch.path}/notes.txt"
    fsys.pipe_file(path, b"first")
    assert site_file(scratch, "notes.txt") == (b"first", 1)
    assert fsys.cat_file(path) == b"first"
    fsys.pipe_file(path, b"second, longer")
    assert site_file(scratch, "notes.txt") == (b"second, longer", 2)
    info = fsys.info(path)
    assert (info["version"], info["size"]) == (2, len(b"second, longer"))
    assert fsys.cat_file(path) == b"second, longer"
    with pytest.raises(FileExistsError):
        fsys.pipe_file(path, b"third", mode="create")
    with pytest.raises(FileExistsError):
        fsys.open(path, "xb")
    assert site_file(scratch, "notes.txt")[1] == 2


def test_put_file_round_trips_and_overwrites(
    fsys: FlywheelFileSystem, scratch: Scratch, tmp_path: Path
) -> None:
    local = tmp_path / "volume.bin"
    local.write_bytes(os.urandom((3 << 20) + 17))
    path = f"{scratch.acq_path}/volume.bin"
    fsys.put_file(str(local), path)
    assert fsys.cat_file(path) == local.read_bytes()
    first = fsys.info(path)
    local.write_bytes(os.urandom(1000))
    fsys.put(str(local), f"flywheel://{path}")
    again = fsys.info(path)
    assert (again["version"], again["size"]) == (first["version"] + 1, 1000)
    assert again["hash"] != first["hash"]
    data: bytes = scratch.acquisition.reload().read_file("volume.bin")
    assert data == local.read_bytes() == fsys.cat_file(path)
    back = tmp_path / "back.bin"
    fsys.get_file(path, str(back))
    assert back.read_bytes() == data


def test_a_large_write_in_pieces_and_an_append(fsys: FlywheelFileSystem, scratch: Scratch) -> None:
    """Larger than fsspec's write buffer (5 MiB): written to the spool in pieces, one
    upload at close."""
    path = f"{scratch.path}/large.bin"
    pieces = [os.urandom(1 << 20) for _ in range(7)]
    with fsys.open(path, "wb") as f:
        for piece in pieces:
            f.write(piece)
    assert site_file(scratch, "large.bin") == (b"".join(pieces), 1)
    with fsys.open(path, "ab") as f:
        f.write(b"tail")
    assert site_file(scratch, "large.bin") == (b"".join(pieces) + b"tail", 2)


def test_a_failed_upload_raises_with_its_errno_and_leaves_nothing(
    fsys: FlywheelFileSystem, scratch: Scratch, site: Any
) -> None:
    path = f"{scratch.path}/doomed.txt"
    site.set_faults(fail_uploads=10)
    try:
        with pytest.raises(OSError) as err:
            fsys.pipe_file(path, b"never arrives")
    finally:
        site.set_faults(fail_uploads=0)
    assert err.value.errno == errno.EIO
    assert f"flywheel://{path}" in str(err.value)
    assert "doomed.txt" not in [f.name for f in scratch.project.reload().files]
    assert not fsys.exists(path)
    fsys.pipe_file(path, b"arrives")  # the next one goes through
    assert site_file(scratch, "doomed.txt") == (b"arrives", 1)


def test_writes_refused_as_the_mount_refuses_them(
    fsys: FlywheelFileSystem, make_fs: MakeFs, site: Any, scratch: Scratch
) -> None:
    with pytest.raises(IsADirectoryError):
        fsys.pipe_file(f"{scratch.path}/sub-01", b"x")
    with pytest.raises(PermissionError) as err:  # files belong in containers, not groups
        fsys.pipe_file(f"{scratch.group}/loose.txt", b"x")
    assert err.value.errno == errno.EPERM
    with pytest.raises(OSError) as refused:
        make_fs(read_only=True).pipe_file(f"{scratch.path}/ro.txt", b"x")
    assert refused.value.errno == errno.EROFS
    rosalind = FlywheelFileSystem(**options_of(site, api_key=site.readonly_api_key))
    with pytest.raises(PermissionError) as err:
        rosalind.pipe_file(f"flywheel/Anxiety Study/{scratch.group}.txt", b"x")
    assert err.value.errno == errno.EACCES
    assert [f.name for f in scratch.project.reload().files] == []


def test_mkdir_makes_containers(fsys: FlywheelFileSystem, scratch: Scratch) -> None:
    fsys.makedirs(f"{scratch.path}/sub-02/ses-01/anat", exist_ok=True)
    subject = [s for s in scratch.project.subjects() if s.label == "sub-02"]
    assert [a.label for a in subject[0].sessions()[0].acquisitions()] == ["anat"]
    assert fsys.isdir(f"{scratch.path}/sub-02/ses-01/anat")
    fsys.makedirs(f"{scratch.path}/sub-02/ses-01/anat", exist_ok=True)
    with pytest.raises(FileExistsError):
        fsys.makedirs(f"{scratch.path}/sub-02/ses-01/anat")
    with pytest.raises(FileExistsError):
        fsys.mkdir(f"{scratch.path}/sub-02")
    fsys.mkdir(f"{scratch.path}/sub-03", create_parents=False)
    assert fsys.info(f"{scratch.path}/sub-03")["type"] == "directory"


def test_rm_needs_allow_delete(make_fs: MakeFs, site: Any, scratch: Scratch) -> None:
    plain = make_fs()
    path = f"{scratch.path}/gone.txt"
    plain.pipe_file(path, b"bye")
    with pytest.raises(PermissionError):
        plain.rm(path)
    reason = "test_data" if site.ca_cert is not None else None  # the strict site audits
    deleting = make_fs(allow_delete=True, delete_reason=reason)
    deleting.rm(path)
    assert "gone.txt" not in [f.name for f in scratch.project.reload().files]
    assert not deleting.exists(path)


def test_a_file_removed_between_ls_and_open_is_file_not_found(demo_site: Any, fw: Any) -> None:
    fsys = FlywheelFileSystem(**options_of(demo_site))
    gid = f"fsspec-{uuid.uuid4().hex[:8]}"
    fw.add_group(flywheel.Group(gid, "flywheel:// tests"))
    project = fw.get_group(gid).add_project(label="P")
    project.upload_file(flywheel.FileSpec("vanishing.txt", b"soon gone"))
    path = f"{gid}/P/vanishing.txt"
    assert fsys.ls(f"{gid}/P", detail=False) == [path]
    fw.delete_project_file(project.id, "vanishing.txt")  # behind fsys's back
    with pytest.raises(FileNotFoundError) as err:
        fsys.cat_file(path)  # its listing still shows the file: the read finds it gone
    assert f"flywheel://{path}" in str(err.value)


def test_mv_moves_and_renames_on_the_site(fsys: FlywheelFileSystem, scratch: Scratch) -> None:
    """As `mv` on the mount: the file keeps its id (no bytes copied), and needs no
    allow_delete; a container is renamed."""
    fsys.pipe_file(f"{scratch.path}/draft.txt", b"moving")
    file_id = fsys.info(f"{scratch.path}/draft.txt")["file_id"]
    fsys.mv(f"{scratch.path}/draft.txt", scratch.acq_path)  # into an existing directory
    moved = fsys.info(f"{scratch.acq_path}/draft.txt")
    assert moved["file_id"] == file_id and not fsys.exists(f"{scratch.path}/draft.txt")
    fsys.mv(f"{scratch.acq_path}/draft.txt", f"{scratch.acq_path}/final.txt")
    assert fsys.cat_file(f"{scratch.acq_path}/final.txt") == b"moving"
    assert [f.name for f in scratch.acquisition.reload().files] == ["final.txt"]
    fsys.mv(f"{scratch.path}/sub-01", f"{scratch.path}/sub-09")
    assert [s.label for s in scratch.project.subjects()] == ["sub-09"]
    assert fsys.cat_file(f"{scratch.path}/sub-09/ses-01/acq-01/final.txt") == b"moving"

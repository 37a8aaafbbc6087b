"""docs/SEMANTICS.md, *Writes*: directories are containers (mkdir), deleting only with
--allow-delete (unlink, rmdir), and renaming (files being written, site files, onto
existing names, containers).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

import flywheel
import pytest
from mountkit import (
    ACQ,
    PROJECT,
    SES,
    SUB,
    Mount,
    Scratch,
    changes,
    denied_by_mode,
    errno_of,
    moves,
    quiet_mark,
    requests_since,
    uploads,
)

pytestmark = pytest.mark.timeout(120)


# ---- mkdir --------------------------------------------------------------------------------


def test_mkdir_creates_the_next_container_level(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    fw = scratch.fw
    mount = mount_site(scratch.site)
    levels = [
        ("g/New Project", "project"),
        ("g/New Project/sub-02", "subject"),
        ("g/New Project/sub-02/ses-a", "session"),
        ("g/New Project/sub-02/ses-a/T1w", "acquisition"),
    ]
    for rel, kind in levels:
        mark = quiet_mark(scratch.site)
        os.mkdir(mount / rel)
        assert len(changes(requests_since(scratch.site, mark))) == 1, rel  # one request
        # Listed at once, as a writable container directory.
        parent, name = rel.rsplit("/", 1)
        assert name in os.listdir(mount / parent), rel
        st = os.stat(mount / rel)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o755, rel
        cid = os.getxattr(mount / rel, "user.flywheel.id").decode()
        container = fw.get(cid)
        assert (container.container_type, container.label) == (kind, name), rel
        assert os.listdir(mount / rel) == [], rel
    acq = fw.lookup("g/New Project/sub-02/ses-a/T1w")
    assert acq.parents.session == fw.lookup("g/New Project/sub-02/ses-a").id


def test_mkdir_labels_are_the_names_as_typed(scratch: Scratch, mount: Mount) -> None:
    os.mkdir(mount / PROJECT / "T2／FLAIR")
    os.mkdir(mount / PROJECT / "Zoë 1")
    labels = sorted(s.label for s in scratch.fw.get(scratch.project.id).subjects())
    assert labels == ["T2/FLAIR", "Zoë 1", "sub-01"]


def test_mkdir_p_then_cp(scratch: Scratch, mount: Mount, tmp_path: Path) -> None:
    local = tmp_path / "scan.nii.gz"
    local.write_bytes(os.urandom(50_000))
    target = mount / "g/P/sub-new/ses-01/T1w"
    os.makedirs(target)
    shutil.copy(local, target)
    acq = scratch.fw.lookup("g/P/sub-new/ses-01/T1w")
    assert acq.container_type == "acquisition"
    data = scratch.fw.download_file_from_container_as_data(acq.id, "scan.nii.gz")
    assert data == local.read_bytes()


def test_mkdir_where_there_is_no_container_level(scratch: Scratch, mount: Mount) -> None:
    os.listdir(mount / ACQ / "scan.zip.d")
    mark = quiet_mark(scratch.site)
    places = {
        "": denied_by_mode(errno.EPERM),
        ACQ: errno.EPERM,
        f"{SES}/analyses": denied_by_mode(errno.EPERM),
        f"{SES}/analyses/qc": denied_by_mode(errno.EPERM),
        f"{SES}/analyses/qc/output": denied_by_mode(errno.EPERM),
        f"{ACQ}/scan.zip.d": denied_by_mode(errno.EPERM),
    }
    for folder, expected in places.items():
        assert errno_of(partial(os.mkdir, mount / folder / "x")) == expected, folder
    assert changes(requests_since(scratch.site, mark)) == []


def test_mkdir_of_an_existing_name_is_eexist(scratch: Scratch, mount: Mount) -> None:
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: os.mkdir(mount / SUB)) == errno.EEXIST
    assert errno_of(lambda: os.mkdir(mount / PROJECT / "notes.txt")) == errno.EEXIST
    assert changes(requests_since(scratch.site, mark)) == []
    assert [s.label for s in scratch.fw.get(scratch.project.id).subjects()] == ["sub-01"]


# ---- deleting -----------------------------------------------------------------------------


def test_deleting_needs_allow_delete(scratch: Scratch, mount: Mount) -> None:
    empty = scratch.session.add_acquisition(label="empty")
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: os.unlink(mount / PROJECT / "notes.txt")) == errno.EPERM
    assert errno_of(lambda: os.rmdir(mount / SES / "empty")) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    assert "--allow-delete" in mount.log()
    assert "notes.txt" in scratch.files(scratch.project)
    assert scratch.fw.get(empty.id).label == "empty"


def test_with_allow_delete_unlink_and_rmdir_delete(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(scratch.site, args=["--allow-delete"])
    scratch.project.upload_file(flywheel.FileSpec("notes.txt", b"version two\n"))
    empty = scratch.session.add_acquisition(label="empty")
    os.unlink(mount / PROJECT / "notes.txt")
    assert "notes.txt" not in os.listdir(mount / PROJECT)
    assert "notes.txt" not in scratch.files(scratch.project)
    os.rmdir(mount / SES / "empty")
    assert "empty" not in os.listdir(mount / SES)
    with pytest.raises(flywheel.ApiException):
        scratch.fw.get(empty.id)


def test_rmdir_of_a_container_with_anything_in_it_is_enotempty(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(scratch.site, args=["--allow-delete"])
    scratch.subject.add_session(label="with-analysis").add_analysis(label="a")
    mark = quiet_mark(scratch.site)
    for rel in (ACQ, SES, SUB, f"{SUB}/with-analysis", PROJECT):
        assert errno_of(partial(os.rmdir, mount / rel)) == errno.ENOTEMPTY, rel
    # Groups are not removed through the mount at all.
    assert errno_of(lambda: os.rmdir(mount / "g")) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]


def test_unlinking_a_file_not_yet_uploaded_just_drops_it(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(scratch.site)  # no --allow-delete needed
    path = mount / ACQ / "scratch.tmp"
    mark = quiet_mark(scratch.site)
    with open(path, "wb") as f:
        f.write(b"never meant to be kept\n")
        f.flush()
        os.unlink(path)
        assert "scratch.tmp" not in os.listdir(mount / ACQ)
        f.write(b"more\n")
    assert changes(requests_since(scratch.site, mark, settle=0.5)) == []
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]


# ---- renaming -----------------------------------------------------------------------------


def test_renaming_a_file_being_written_retargets_it(scratch: Scratch, mount: Mount) -> None:
    mark = quiet_mark(scratch.site)
    with open(mount / ACQ / "draft.txt", "wb") as f:
        f.write(b"final contents\n")
        f.flush()
        os.rename(mount / ACQ / "draft.txt", mount / SES / "final.txt")
        assert "final.txt" in os.listdir(mount / SES)
        assert "draft.txt" not in os.listdir(mount / ACQ)
    assert scratch.read(scratch.session, "final.txt") == b"final contents\n"
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]
    entries = requests_since(scratch.site, mark)
    assert len(uploads(entries)) == 1 and moves(entries) == []


def test_renaming_a_site_file_to_a_free_name_is_one_move(scratch: Scratch, mount: Mount) -> None:
    file_id = scratch.files(scratch.project)["notes.txt"].file_id
    mark = quiet_mark(scratch.site)
    os.rename(mount / PROJECT / "notes.txt", mount / PROJECT / "renamed.txt")
    entries = requests_since(scratch.site, mark)
    assert len(moves(entries)) == 1 and uploads(entries) == []
    assert len(changes(entries)) == 1
    files = scratch.files(scratch.project)
    assert sorted(files) == ["renamed.txt"] and files["renamed.txt"].file_id == file_id
    assert sorted(os.listdir(mount / PROJECT)) == ["renamed.txt", "sub-01"]
    assert (mount / PROJECT / "renamed.txt").read_bytes() == Scratch.NOTES
    # To another container directory: moved there, still one request.
    mark = quiet_mark(scratch.site)
    os.rename(mount / PROJECT / "renamed.txt", mount / ACQ / "moved.txt")
    entries = requests_since(scratch.site, mark)
    assert len(moves(entries)) == 1 and len(changes(entries)) == 1
    assert "renamed.txt" not in scratch.files(scratch.project)
    assert scratch.read(scratch.acquisition, "moved.txt") == Scratch.NOTES
    assert (mount / ACQ / "moved.txt").read_bytes() == Scratch.NOTES


def test_renaming_a_file_uploaded_here_onto_a_name_makes_a_new_version(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(scratch.site)  # no --allow-delete: the temporary file is ours
    folder = mount / PROJECT
    (folder / ".notes.txt.XYZ123").write_bytes(b"saved by an editor\n")
    assert ".notes.txt.XYZ123" in scratch.files(scratch.project)  # closed: uploaded
    os.rename(folder / ".notes.txt.XYZ123", folder / "notes.txt")
    files = scratch.files(scratch.project)
    assert sorted(files) == ["notes.txt"]
    assert files["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == b"saved by an editor\n"
    assert sorted(os.listdir(folder)) == ["notes.txt", "sub-01"]
    assert (folder / "notes.txt").read_bytes() == b"saved by an editor\n"


def test_renaming_another_site_file_onto_a_name_needs_allow_delete(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    scratch.project.upload_file(flywheel.FileSpec("other.txt", b"someone else's file\n"))
    mount = mount_site(scratch.site)
    folder = mount / PROJECT
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: os.rename(folder / "other.txt", folder / "notes.txt")) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    assert sorted(scratch.files(scratch.project)) == ["notes.txt", "other.txt"]
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES
    permissive = mount_site(scratch.site, args=["--allow-delete"])
    folder = permissive / PROJECT
    os.rename(folder / "other.txt", folder / "notes.txt")
    files = scratch.files(scratch.project)
    assert sorted(files) == ["notes.txt"] and files["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == b"someone else's file\n"


def test_renaming_a_container_relabels_it(scratch: Scratch, mount: Mount) -> None:
    os.rename(mount / SUB, mount / PROJECT / "sub-renamed")
    assert scratch.fw.get(scratch.subject.id).label == "sub-renamed"
    assert "sub-renamed" in os.listdir(mount / PROJECT)
    assert "sub-01" not in os.listdir(mount / PROJECT)
    assert (mount / "g/P/sub-renamed/ses-01/anat/scan.zip").stat().st_size > 0


def test_moving_a_container_to_another_parent_is_eperm(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    other = scratch.project.add_subject(label="sub-02")
    mount = mount_site(scratch.site)
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: os.rename(mount / SES, mount / "g/P/sub-02/ses-01")) == errno.EPERM
    assert errno_of(lambda: os.rename(mount / ACQ, mount / SUB / "anat")) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    assert scratch.fw.get(scratch.session.id).parents.subject == scratch.subject.id
    assert list(scratch.fw.get(other.id).sessions()) == []


RENAME_EXCHANGE = 2
AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_exchange_is_einval(scratch: Scratch, mount_site: Callable[..., Mount]) -> None:
    scratch.project.upload_file(flywheel.FileSpec("other.txt", b"other\n"))
    mount = mount_site(scratch.site, args=["--allow-delete"])
    folder = mount / PROJECT
    mark = quiet_mark(scratch.site)
    code = errno_of(lambda: renameat2(folder / "notes.txt", folder / "other.txt", RENAME_EXCHANGE))
    assert code == errno.EINVAL
    assert changes(requests_since(scratch.site, mark)) == []
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES

"""docs/SEMANTICS.md, *Writes*: the namespace, in both tiers (`[model]`: a FlywheelFS driven
directly; `[mount]`: a real FUSE mount). `mkdir` makes containers, deleting needs
--allow-delete, renames (retarget, move, replace, relabel, flags), names with `／`, and every
refusal with its errno: read-only mount (EROFS), read-only user (EACCES), archives and
analyses (EPERM to make anything in them, EROFS to change their files).

On a mount the kernel checks modes first (`default_permissions`): for anyone but root,
writing into a `dr-x` directory or a `-r--` file is its EACCES (`tierkit.by_mode`).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import flywheel
import pytest
from mountkit import (
    changes,
    errno_of,
    moves,
    quiet_mark,
    requests_since,
    uploads,
)
from targets import RENAME_EXCHANGE, RENAME_NOREPLACE, Target
from tierkit import MakeTarget, Scratch, by_mode, model_of, mount_of

from fwfs.errors import FwfsError

pytestmark = pytest.mark.timeout(120)


def subject_labels(scratch: Scratch) -> list[str]:
    return sorted(s.label for s in scratch.fw.get(scratch.project.id).subjects())


def acquisition_labels(scratch: Scratch) -> list[str]:
    return sorted(a.label for a in scratch.fw.get(scratch.session.id).acquisitions())


# ---- mkdir --------------------------------------------------------------------------------


def test_mkdir_creates_the_next_container_level(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    fw = scratch.fw
    levels = [
        (f"{p.group}/New Project", "project"),
        (f"{p.group}/New Project/sub-02", "subject"),
        (f"{p.group}/New Project/sub-02/ses-a", "session"),
        (f"{p.group}/New Project/sub-02/ses-a/T1w", "acquisition"),
    ]
    for rel, kind in levels:
        mark = quiet_mark(scratch.site)
        target.mkdir(rel)
        assert len(changes(requests_since(scratch.site, mark))) == 1, rel  # one request
        # Listed at once, as a writable container directory.
        parent, name = rel.rsplit("/", 1)
        assert name in target.listdir(parent), rel
        mode = target.stat(rel).mode
        assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o755, rel
        container = fw.get(target.getxattr(rel, "user.flywheel.id").decode())
        assert (container.container_type, container.label) == (kind, name), rel
        assert target.listdir(rel) == [], rel
    acq = fw.lookup(f"{p.group}/New Project/sub-02/ses-a/T1w")
    assert acq.parents.session == fw.lookup(f"{p.group}/New Project/sub-02/ses-a").id
    assert fw.get_subject(acq.parents.subject).label == "sub-02"
    # Ready for files.
    target.write_file(f"{p.group}/New Project/sub-02/ses-a/T1w/a.txt", b"a")
    assert fw.download_file_from_container_as_data(acq.id, "a.txt") == b"a"


def test_mkdir_labels_are_the_names_as_typed(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    target.mkdir(f"{p.project}/T2／FLAIR")
    target.mkdir(f"{p.project}/Zoë 1")
    assert subject_labels(scratch) == ["T2/FLAIR", "Zoë 1", "sub-01"]
    assert {"T2／FLAIR", "Zoë 1"} <= set(target.listdir(p.project))
    # `／` may be in a label, not in a file name: Flywheel's file names hold no `/`.
    assert errno_of(lambda: target.write_file(f"{p.acq}/a／b.txt", b"")) == errno.EINVAL
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]


def test_a_name_that_would_not_round_trip_is_einval(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    # `␀` stands for NUL, which no Flywheel name or label can hold.
    assert errno_of(lambda: target.write_file(f"{p.acq}/a␀b.txt", b"")) == errno.EINVAL
    assert errno_of(lambda: target.mkdir(f"{p.ses}/a␀b")) == errno.EINVAL
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]
    assert acquisition_labels(scratch) == ["anat"]


def test_mkdir_where_there_is_no_container_level(scratch: Scratch, make_target: MakeTarget) -> None:
    p = scratch.paths
    scratch.subject.add_session(label="ses-02")  # a session without analyses
    target = make_target()
    target.listdir(f"{p.acq}/scan.zip.d")
    mark = quiet_mark(scratch.site)
    places = {
        "": by_mode(target, errno.EPERM),
        p.acq: errno.EPERM,
        f"{p.ses}/analyses": by_mode(target, errno.EPERM),
        f"{p.ses}/analyses/qc": by_mode(target, errno.EPERM),
        f"{p.ses}/analyses/qc/output": by_mode(target, errno.EPERM),
        f"{p.acq}/scan.zip.d": by_mode(target, errno.EPERM),
    }
    for folder, expected in places.items():
        where = f"{folder}/x" if folder else "x"
        assert errno_of(partial(target.mkdir, where)) == expected, folder
    # `analyses` is a session's analyses directory, never a label, even where none is listed.
    assert errno_of(lambda: target.mkdir(f"{p.sub}/ses-02/analyses")) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    assert acquisition_labels(scratch) == ["anat"]
    [ses_02] = [s for s in scratch.fw.get(scratch.subject.id).sessions() if s.label == "ses-02"]
    assert list(ses_02.acquisitions()) == []


def test_mkdir_of_an_existing_name_is_eexist(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: target.mkdir(p.sub)) == errno.EEXIST
    assert errno_of(lambda: target.mkdir(p.acq)) == errno.EEXIST
    assert errno_of(lambda: target.mkdir(p.notes)) == errno.EEXIST
    assert changes(requests_since(scratch.site, mark)) == []
    assert subject_labels(scratch) == ["sub-01"]
    assert acquisition_labels(scratch) == ["anat"]


# ---- deleting -----------------------------------------------------------------------------


def test_deleting_needs_allow_delete(scratch: Scratch, make_target: MakeTarget) -> None:
    p = scratch.paths
    empty = scratch.session.add_acquisition(label="empty")
    target = make_target()
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: target.unlink(p.notes)) == errno.EPERM
    assert errno_of(lambda: target.rmdir(f"{p.ses}/empty")) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    if mount := mount_of(target):
        assert "--allow-delete" in mount.log()  # the refusal says what would allow it
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES
    assert scratch.fw.get(empty.id).label == "empty"

    deleting = make_target(allow_delete=True)
    deleting.unlink(p.notes)
    assert "notes.txt" not in deleting.listdir(p.project)
    assert "notes.txt" not in scratch.files(scratch.project)
    assert errno_of(lambda: deleting.stat(p.notes)) == errno.ENOENT
    deleting.rmdir(f"{p.ses}/empty")
    assert "empty" not in deleting.listdir(p.ses)
    with pytest.raises(flywheel.ApiException):
        scratch.fw.get(empty.id)


def test_rmdir_of_a_container_with_anything_in_it_is_enotempty(
    scratch: Scratch, make_target: MakeTarget
) -> None:
    p = scratch.paths
    scratch.subject.add_session(label="with-analysis").add_analysis(label="a")
    scratch.session.add_acquisition(label="empty")
    target = make_target(allow_delete=True)
    mark = quiet_mark(scratch.site)
    for rel in (p.acq, p.ses, p.sub, f"{p.sub}/with-analysis", p.project):
        assert errno_of(partial(target.rmdir, rel)) == errno.ENOTEMPTY, rel
    # Groups are not removed through the mount at all.
    assert errno_of(lambda: target.rmdir(p.group)) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]
    assert acquisition_labels(scratch) == ["anat", "empty"]
    target.rmdir(f"{p.ses}/empty")
    assert acquisition_labels(scratch) == ["anat"]
    assert "empty" not in target.listdir(p.ses)


def test_unlinking_a_file_not_yet_uploaded_just_drops_it(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    path = f"{p.acq}/scratch.tmp"  # no --allow-delete needed
    fd = target.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        target.write(fd, b"never meant to be kept\n")
        mark = quiet_mark(scratch.site)
        target.unlink(path)
        if model_of(target):
            assert requests_since(scratch.site, mark) == []  # not a request of its own
        assert "scratch.tmp" not in target.listdir(p.acq)
        assert errno_of(lambda: target.stat(path)) == errno.ENOENT
        target.write(fd, b"more\n")
    finally:
        target.close(fd)
    assert changes(requests_since(scratch.site, mark, settle=0.5)) == []
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]


# ---- renaming -----------------------------------------------------------------------------


def test_renaming_a_file_being_written_retargets_it(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    mark = quiet_mark(scratch.site)
    fd = target.open(f"{p.acq}/draft.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        target.write(fd, b"final contents\n")
        target.rename(f"{p.acq}/draft.tmp", f"{p.acq}/draft.txt")
        assert "draft.txt" in target.listdir(p.acq)
        assert "draft.tmp" not in target.listdir(p.acq)
        target.rename(f"{p.acq}/draft.txt", f"{p.ses}/final.txt")  # into another container
        assert "final.txt" in target.listdir(p.ses)
        assert "draft.txt" not in target.listdir(p.acq)
        target.pwrite(fd, b"FINAL", 0)  # the open handle writes the renamed file
    finally:
        target.close(fd)
    assert scratch.read(scratch.session, "final.txt") == b"FINAL contents\n"
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]
    entries = requests_since(scratch.site, mark)
    assert len(uploads(entries)) == 1 and moves(entries) == []


def test_renaming_a_site_file_to_a_free_name_is_one_move(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    file_id = scratch.files(scratch.project)["notes.txt"].file_id
    target.stat(p.notes)
    mark = quiet_mark(scratch.site)
    target.rename(p.notes, f"{p.project}/renamed.txt")
    entries = requests_since(scratch.site, mark)
    assert [e["path"] for e in changes(entries)] == [f"/api/files/{file_id}/move"]
    assert len(moves(entries)) == 1 and uploads(entries) == []
    files = scratch.files(scratch.project)
    assert sorted(files) == ["renamed.txt"] and files["renamed.txt"].file_id == file_id
    assert scratch.read(scratch.project, "renamed.txt") == Scratch.NOTES
    assert target.listdir(p.project) == ["renamed.txt", "sub-01"]
    assert target.read_file(f"{p.project}/renamed.txt") == Scratch.NOTES
    # To another container directory: moved there, still one request.
    mark = quiet_mark(scratch.site)
    target.rename(f"{p.project}/renamed.txt", f"{p.acq}/moved.txt")
    entries = requests_since(scratch.site, mark)
    assert len(moves(entries)) == 1 and len(changes(entries)) == 1
    assert "renamed.txt" not in scratch.files(scratch.project)
    assert scratch.read(scratch.acquisition, "moved.txt") == Scratch.NOTES
    assert target.read_file(f"{p.acq}/moved.txt") == Scratch.NOTES


def test_renaming_a_file_uploaded_here_onto_a_name_makes_a_new_version(
    scratch: Scratch, target: Target
) -> None:
    p = scratch.paths
    tmp = f"{p.project}/.notes.txt.XYZ123"  # no --allow-delete: the temporary file is ours
    target.write_file(tmp, b"saved by an editor\n")
    assert ".notes.txt.XYZ123" in scratch.files(scratch.project)  # closed: uploaded
    target.rename(tmp, p.notes)
    files = scratch.files(scratch.project)
    assert sorted(files) == ["notes.txt"]
    assert files["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == b"saved by an editor\n"
    assert target.listdir(p.project) == ["notes.txt", "sub-01"]
    assert target.stat(p.notes).size == len(b"saved by an editor\n")
    assert target.read_file(p.notes) == b"saved by an editor\n"


def test_renaming_another_site_file_onto_a_name_needs_allow_delete(
    scratch: Scratch, make_target: MakeTarget
) -> None:
    p = scratch.paths
    scratch.project.upload_file(flywheel.FileSpec("other.txt", b"someone else's file\n"))
    target = make_target()
    target.listdir(p.project)
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: target.rename(f"{p.project}/other.txt", p.notes)) == errno.EPERM
    assert changes(requests_since(scratch.site, mark)) == []
    files = scratch.files(scratch.project)
    assert sorted(files) == ["notes.txt", "other.txt"]
    assert (files["notes.txt"].version, files["other.txt"].version) == (1, 1)
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES
    permissive = make_target(allow_delete=True)
    permissive.rename(f"{p.project}/other.txt", p.notes)
    files = scratch.files(scratch.project)
    assert sorted(files) == ["notes.txt"] and files["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == b"someone else's file\n"


def test_rename_flags(scratch: Scratch, make_target: MakeTarget) -> None:
    p = scratch.paths
    scratch.project.upload_file(flywheel.FileSpec("other.txt", b"other\n"))
    target = make_target(allow_delete=True)
    other = f"{p.project}/other.txt"
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: target.rename(p.notes, other, RENAME_NOREPLACE)) == errno.EEXIST
    assert errno_of(lambda: target.rename(p.notes, other, RENAME_EXCHANGE)) == errno.EINVAL
    assert changes(requests_since(scratch.site, mark)) == []
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES
    assert scratch.read(scratch.project, "other.txt") == b"other\n"
    # NOREPLACE onto a free name is an ordinary rename.
    target.rename(p.notes, f"{p.project}/three.txt", RENAME_NOREPLACE)
    assert sorted(scratch.files(scratch.project)) == ["other.txt", "three.txt"]


def test_renaming_a_container_relabels_it_within_its_parent_only(
    scratch: Scratch, make_target: MakeTarget
) -> None:
    p = scratch.paths
    fw = scratch.fw
    other = scratch.project.add_subject(label="sub-02")
    scratch.subject.add_session(label="ses-02")
    target = make_target()
    mark = quiet_mark(scratch.site)
    # Moving a container to another parent is not a relabel: refused.
    assert errno_of(lambda: target.rename(p.ses, f"{p.project}/sub-02/ses-01")) == errno.EPERM
    assert errno_of(lambda: target.rename(p.acq, f"{p.sub}/anat")) == errno.EPERM
    # Onto a sibling's label: taken.
    assert errno_of(lambda: target.rename(p.ses, f"{p.sub}/ses-02")) == errno.EEXIST
    assert changes(requests_since(scratch.site, mark)) == []
    assert fw.get(scratch.session.id).parents.subject == scratch.subject.id
    assert list(fw.get(other.id).sessions()) == []

    target.rename(p.sub, f"{p.project}/sub-renamed")
    assert fw.get(scratch.subject.id).label == "sub-renamed"
    assert "sub-renamed" in target.listdir(p.project)
    assert "sub-01" not in target.listdir(p.project)
    assert target.stat(f"{p.project}/sub-renamed/ses-01/anat/scan.zip").size > 0
    after = fw.get(scratch.session.id)
    assert (after.label, after.parents.subject) == ("ses-01", scratch.subject.id)


# ---- refused ------------------------------------------------------------------------------


def mode(target: Target, path: str) -> int:
    return stat.S_IMODE(target.stat(path).mode)


def test_a_read_only_mount_refuses_every_write_without_a_request(
    scratch: Scratch, make_target: MakeTarget
) -> None:
    p = scratch.paths
    target = make_target(read_only=True, allow_delete=True)
    folder = p.project
    target.listdir(p.ses)
    for d in (p.group, p.project, p.ses, p.acq, f"{p.ses}/analyses"):
        assert mode(target, d) == 0o555, d
    assert mode(target, p.notes) == 0o444
    mark = quiet_mark(scratch.site)
    attempts: dict[str, Callable[[], Any]] = {
        "open w": lambda: target.open(p.notes, os.O_WRONLY),
        "open r+b": lambda: target.open(p.notes, os.O_RDWR),
        "open ab": lambda: target.open(p.notes, os.O_WRONLY | os.O_CREAT | os.O_APPEND),
        "open wb": lambda: target.open(p.notes, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        "create": lambda: target.open(f"{folder}/new.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL),
        "truncate": lambda: target.truncate(p.notes, 0),
        "mkdir": lambda: target.mkdir(f"{folder}/sub-99"),
        "rmdir": lambda: target.rmdir(p.sub),
        "unlink": lambda: target.unlink(p.notes),
        "rename": lambda: target.rename(p.notes, f"{folder}/renamed.txt"),
    }
    if mount := mount_of(target):
        notes = mount / p.notes
        attempts |= {
            "chmod": lambda: os.chmod(notes, 0o600),
            "chown": lambda: os.chown(notes, os.getuid(), os.getgid()),
            "utime": lambda: os.utime(notes, (0, 0)),
            "symlink": lambda: os.symlink("notes.txt", mount / folder / "link"),
            "link": lambda: os.link(notes, mount / folder / "hard"),
            "setxattr": lambda: os.setxattr(notes, "user.flywheel.label", b"x"),
        }
    for what, attempt in attempts.items():
        assert errno_of(attempt) == errno.EROFS, what
    if fs := model_of(target):
        assert fs.writes is None
        # chmod, chown and utimens, as the adapter passes them on.
        with pytest.raises(FwfsError) as info:
            fs.set_metadata(p.notes)
        assert info.value.errno == errno.EROFS
    entries = requests_since(scratch.site, mark)
    assert changes(entries) == []
    if model_of(target):
        assert entries == []  # refused before any request
    assert target.read_file(p.notes) == Scratch.NOTES
    assert sorted(scratch.files(scratch.project)) == ["notes.txt"]


def test_the_read_only_user_gets_eacces_before_anything_is_staged(
    scratch: Scratch, make_target: MakeTarget, tmp_path: Path
) -> None:
    p = scratch.paths
    empty = scratch.session.add_acquisition(label="empty")
    spool = tmp_path / "spool"
    target = make_target(key=scratch.site.readonly_api_key, allow_delete=True, spool=spool)
    scan = f"{p.acq}/scan.zip"
    scan_bytes = scratch.read(scratch.acquisition, "scan.zip")
    assert target.listdir(p.acq) == ["scan.zip"]  # the permissions come with the listings
    mark = quiet_mark(scratch.site)
    attempts: dict[str, Callable[[], Any]] = {
        "create": lambda: target.write_file(f"{p.acq}/new.txt", b"x"),
        "open r+b": lambda: target.open(scan, os.O_RDWR),
        "open w": lambda: target.open(scan, os.O_WRONLY),
        "open wb": lambda: target.open(scan, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        "truncate": lambda: target.truncate(scan, 0),
        "mkdir": lambda: target.mkdir(f"{p.ses}/func"),
    }
    for what, attempt in attempts.items():
        assert errno_of(attempt) == errno.EACCES, what
    # Nothing was staged, nothing sent.
    assert list((spool / "staging").glob("*")) == []
    assert list((spool / "journal").glob("*")) == []
    assert changes(requests_since(scratch.site, mark)) == []
    # Deletes and renames are the site's to refuse: asked, and refused, they upload nothing.
    refused_by_site: dict[str, Callable[[], Any]] = {
        "unlink": lambda: target.unlink(scan),
        "rename": lambda: target.rename(scan, f"{p.acq}/x.zip"),
        "rmdir": lambda: target.rmdir(f"{p.ses}/empty"),
    }
    for what, attempt in refused_by_site.items():
        assert errno_of(attempt) == errno.EACCES, what
    assert list((spool / "staging").glob("*")) == []
    assert uploads(requests_since(scratch.site, mark)) == []
    assert target.listdir(p.acq) == ["scan.zip"]
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]
    assert scratch.files(scratch.acquisition)["scan.zip"].version == 1
    assert scratch.read(scratch.acquisition, "scan.zip") == scan_bytes
    assert "func" not in acquisition_labels(scratch)
    assert scratch.fw.get(empty.id).label == "empty"


def test_no_files_where_flywheel_keeps_none(scratch: Scratch, target: Target) -> None:
    p = scratch.paths
    target.listdir(f"{p.acq}/scan.zip.d")
    target.stat(p.notes)
    mark = quiet_mark(scratch.site)
    places = {
        "": by_mode(target, errno.EPERM),
        p.group: errno.EPERM,
        f"{p.ses}/analyses": by_mode(target, errno.EPERM),
        f"{p.ses}/analyses/qc": by_mode(target, errno.EPERM),
        f"{p.ses}/analyses/qc/output": by_mode(target, errno.EPERM),
        f"{p.ses}/analyses/qc/input": by_mode(target, errno.EPERM),
        f"{p.acq}/scan.zip.d": by_mode(target, errno.EPERM),
        f"{p.acq}/scan.zip.d/dir": by_mode(target, errno.EPERM),
    }
    for folder, expected in places.items():
        path = f"{folder}/nope.txt" if folder else "nope.txt"
        create = partial(target.open, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        assert errno_of(create) == expected, folder
        assert "nope.txt" not in target.listdir(folder), folder
        # Nor can a file be moved there.
        moved = partial(target.rename, p.notes, path)
        assert errno_of(moved) == expected, folder
    assert changes(requests_since(scratch.site, mark)) == []
    if (mount := mount_of(target)) and os.getuid() == 0:
        assert "nope.txt" in mount.log()  # each refusal the daemon saw has its line
    assert sorted(scratch.files(scratch.project)) == ["notes.txt"]


def test_analysis_files_and_archive_members_are_read_only(
    scratch: Scratch, make_target: MakeTarget
) -> None:
    p = scratch.paths
    target = make_target(allow_delete=True)
    report = f"{p.ses}/analyses/qc/output/report.txt"
    member = f"{p.acq}/scan.zip.d/dir/a.txt"
    target.stat(report)
    target.stat(member)
    mark = quiet_mark(scratch.site)
    for path in (report, member):
        for flags in (
            os.O_WRONLY,
            os.O_RDWR,  # "r+b"
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,  # "ab"
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC,  # "wb"
            os.O_RDWR | os.O_TRUNC,
        ):
            code = errno_of(partial(target.open, path, flags))
            assert code == by_mode(target, errno.EROFS), (path, flags)
        assert errno_of(partial(target.truncate, path, 0)) == by_mode(target, errno.EROFS), path
        # Nor removed, nor moved out (on a mount the kernel refuses first: its `dr-x`
        # directory).
        for change in (partial(target.unlink, path), partial(target.rename, path, f"{p.acq}/o")):
            assert errno_of(change) == by_mode(target, errno.EROFS), path
    assert errno_of(lambda: target.rmdir(f"{p.ses}/analyses/qc")) == by_mode(target, errno.EPERM)
    assert changes(requests_since(scratch.site, mark)) == []
    assert target.read_file(report) == Scratch.REPORT
    assert target.read_file(member) == Scratch.MEMBER

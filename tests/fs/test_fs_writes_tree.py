"""FlywheelFS writes, driven directly (no FUSE) against the sandbox: the namespace.

docs/SEMANTICS.md, *Writes*: `mkdir` makes containers, `rmdir` and `unlink` delete only with
allow_delete, renames (retarget, move, replace, relabel), names with `／`, and every refusal
with its errno: read-only user (EACCES), read-only mount (EROFS), archives and analyses
(EPERM to make anything in them, EROFS to change their files). The SDK (`scratch.fw`) is
the witness of what the site holds.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flywheel
import pytest
from writekit import (
    DEMO_SES,
    MakeFs,
    Scratch,
    assert_on_site,
    assert_refused,
    changes,
    close,
    errno_of,
    moves,
    names,
    uploads,
    write_file,
)

from fwfs.fs import FlywheelFS

pytestmark = pytest.mark.timeout(120)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
DEMO_ANALYSIS = f"{DEMO_SES}/analyses/dcm2niix 2018-09-12"


def acquisition_labels(fw: Any, session_id: str) -> set[str]:
    return {a.label for a in fw.get_session(session_id).acquisitions()}


# ---- mkdir ----------------------------------------------------------------------------------


def test_mkdir_makes_project_subject_session_acquisition(
    scratch: Scratch, make_fs: MakeFs, unique: Callable[[str], str]
) -> None:
    fs, fw = make_fs(), scratch.fw
    project = unique("Project")
    fs.mkdir(f"{scratch.group}/{project}")
    fs.mkdir(f"{scratch.group}/{project}/sub-9")
    fs.mkdir(f"{scratch.group}/{project}/sub-9/ses-1")
    fs.mkdir(f"{scratch.group}/{project}/sub-9/ses-1/T1w")
    # Listed at once, as directories.
    assert project in names(fs, scratch.group)
    assert fs.getattr(f"{scratch.group}/{project}/sub-9/ses-1/T1w").is_dir
    acq = fw.lookup(f"{scratch.group}/{project}/sub-9/ses-1/T1w")
    assert acq.container_type == "acquisition"
    assert acq.label == "T1w"
    assert fw.get_subject(acq.parents.subject).label == "sub-9"
    # Ready for files.
    write_file(fs, f"{scratch.group}/{project}/sub-9/ses-1/T1w/a.txt", b"a")
    assert scratch.data("a.txt", acq.id) == b"a"


def test_mkdir_of_an_existing_name_is_eexist(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    scratch.put("notes.txt", b"n", scratch.session.id)
    fs.readdir(scratch.session_path)
    mark = scratch.site.quiet_mark()
    assert errno_of(lambda: fs.mkdir(scratch.acq_path)) == errno.EEXIST
    assert errno_of(lambda: fs.mkdir(f"{scratch.session_path}/notes.txt")) == errno.EEXIST
    assert changes(scratch.site.requests_since(mark)) == []
    labels = [a.label for a in scratch.fw.get_session(scratch.session.id).acquisitions()]
    assert labels.count(scratch.acq.label) == 1
    assert "notes.txt" not in labels


def test_mkdir_where_no_container_can_be_made_is_eperm(
    scratch: Scratch, make_fs: MakeFs, demo_site: Any
) -> None:
    fs = make_fs()
    mark = demo_site.quiet_mark()
    assert_refused(
        errno.EPERM,
        lambda: fs.mkdir("new-group"),
        lambda: fs.mkdir(f"{scratch.acq_path}/deeper"),
        lambda: fs.mkdir(f"{DEMO_SES}/analyses/new"),
        lambda: fs.mkdir(f"{DEMO_ANALYSIS}/new"),
        lambda: fs.mkdir(f"{scratch.session_path}/analyses"),
    )
    assert changes(demo_site.requests_since(mark)) == []
    assert not {"deeper", "analyses"} & acquisition_labels(scratch.fw, scratch.session.id)


def test_read_only_user_gets_eacces_and_nothing_is_staged(
    scratch: Scratch, make_fs: MakeFs, spool_dir: Path, demo_site: Any
) -> None:
    scratch.put("theirs.txt", b"theirs")
    fs = make_fs(key=demo_site.readonly_api_key)
    fs.readdir(scratch.acq_path)  # the permissions come with the listings
    theirs = f"{scratch.acq_path}/theirs.txt"
    mark = demo_site.quiet_mark()
    assert_refused(
        errno.EACCES,
        lambda: fs.mkdir(f"{scratch.session_path}/new-acq"),
        lambda: fs.create(f"{scratch.acq_path}/new.txt"),
        lambda: fs.open(theirs, os.O_WRONLY),
        lambda: fs.open(theirs, os.O_WRONLY | os.O_TRUNC),
        lambda: fs.truncate(theirs, 0),
    )
    assert changes(demo_site.requests_since(mark)) == []
    assert list((spool_dir / "staging").iterdir()) == []
    assert list((spool_dir / "journal").iterdir()) == []
    assert "new.txt" not in names(fs, scratch.acq_path)
    assert "new-acq" not in acquisition_labels(scratch.fw, scratch.session.id)
    assert_on_site(scratch, "theirs.txt", b"theirs", 1)


def test_files_are_made_only_in_containers_that_hold_files(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    mark = scratch.site.quiet_mark()
    assert errno_of(lambda: fs.create("stray.txt")) == errno.EPERM
    assert errno_of(lambda: fs.create(f"{scratch.group}/stray.txt")) == errno.EPERM
    assert changes(scratch.site.requests_since(mark)) == []
    assert "stray.txt" not in names(fs, scratch.group)


def test_chmod_chown_utimens_are_accepted_and_change_nothing(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    before = scratch.put("kept.txt", b"kept")
    fs = make_fs()
    path = f"{scratch.acq_path}/kept.txt"
    attr = fs.getattr(path)
    mark = scratch.site.quiet_mark()
    fs.set_metadata(path)
    fs.set_metadata(scratch.acq_path)
    assert changes(scratch.site.requests_since(mark)) == []
    assert fs.getattr(path) == attr
    assert scratch.files()["kept.txt"].version == before.version
    assert errno_of(lambda: fs.set_metadata(f"{scratch.acq_path}/missing.txt")) == errno.ENOENT


# ---- unlink and rmdir -----------------------------------------------------------------------


def test_unlink_of_a_site_file_needs_allow_delete(scratch: Scratch, make_fs: MakeFs) -> None:
    scratch.put("keep.txt", b"keep")
    path = f"{scratch.acq_path}/keep.txt"
    fs = make_fs()
    assert errno_of(lambda: fs.unlink(path)) == errno.EPERM
    assert scratch.data("keep.txt") == b"keep"
    fs.close()

    deleting = make_fs(allow_delete=True)
    deleting.unlink(path)
    assert "keep.txt" not in scratch.files()
    assert "keep.txt" not in names(deleting, scratch.acq_path)
    assert errno_of(lambda: deleting.getattr(path)) == errno.ENOENT


def test_unlink_of_a_file_not_yet_uploaded_drops_it_without_a_request(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    site, path = scratch.site, f"{scratch.acq_path}/scratch.tmp"
    fh = fs.create(path).fh
    fs.write(fh, 0, b"temporary")
    mark = site.quiet_mark()
    fs.unlink(path)
    assert site.requests_since(mark) == []
    assert errno_of(lambda: fs.getattr(path)) == errno.ENOENT
    close(fs, fh)
    assert uploads(site.requests_since(mark)) == []
    assert "scratch.tmp" not in scratch.files()


def test_rmdir_needs_allow_delete_and_an_empty_container(scratch: Scratch, make_fs: MakeFs) -> None:
    fw = scratch.fw
    fs = make_fs()
    fs.mkdir(f"{scratch.session_path}/empty-{scratch.acq.label}")
    empty = f"{scratch.session_path}/empty-{scratch.acq.label}"
    assert errno_of(lambda: fs.rmdir(empty)) == errno.EPERM
    assert f"empty-{scratch.acq.label}" in acquisition_labels(fw, scratch.session.id)
    fs.close()

    deleting = make_fs(allow_delete=True)
    scratch.put("content.txt", b"x")
    assert errno_of(lambda: deleting.rmdir(scratch.acq_path)) == errno.ENOTEMPTY
    assert errno_of(lambda: deleting.rmdir(scratch.session_path)) == errno.ENOTEMPTY
    assert scratch.acq.label in acquisition_labels(fw, scratch.session.id)
    deleting.rmdir(empty)
    assert f"empty-{scratch.acq.label}" not in acquisition_labels(fw, scratch.session.id)
    assert f"empty-{scratch.acq.label}" not in names(deleting, scratch.session_path)


# ---- rename ---------------------------------------------------------------------------------


def test_rename_of_a_file_being_written_uploads_under_the_new_name_only(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    site = scratch.site
    old, new = f"{scratch.acq_path}/draft.tmp", f"{scratch.acq_path}/final.txt"
    mark = site.quiet_mark()
    fh = fs.create(old).fh
    fs.write(fh, 0, b"final words")
    fs.rename(old, new)
    assert "final.txt" in names(fs, scratch.acq_path)
    assert "draft.tmp" not in names(fs, scratch.acq_path)
    fs.write(fh, 0, b"FINAL")  # the open handle writes the renamed file
    close(fs, fh)
    assert len(uploads(site.requests_since(mark))) == 1
    files = scratch.files()
    assert "draft.tmp" not in files
    assert scratch.data("final.txt") == b"FINAL words"


def test_rename_of_a_file_being_written_into_another_container(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    fs = make_fs()
    old, new = f"{scratch.acq_path}/moving.txt", f"{scratch.session_path}/moved-{scratch.acq.label}"
    fh = fs.create(old).fh
    fs.write(fh, 0, b"moving")
    fs.rename(old, new)
    close(fs, fh)
    assert scratch.files() == {}
    assert scratch.data(f"moved-{scratch.acq.label}", scratch.session.id) == b"moving"


def test_rename_of_a_site_file_to_a_free_name_is_one_move(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    before = scratch.put("before.txt", b"moved, not copied")
    fs = make_fs()
    site = scratch.site
    old, new = f"{scratch.acq_path}/before.txt", f"{scratch.acq_path}/after.txt"
    fs.getattr(old)
    mark = site.quiet_mark()
    fs.rename(old, new)
    entries = site.requests_since(mark)
    assert [e["path"] for e in changes(entries)] == [f"/api/files/{before.file_id}/move"]
    assert len(moves(entries)) == 1
    files = scratch.files()
    assert "before.txt" not in files
    assert scratch.data("after.txt") == b"moved, not copied"
    assert names(fs, scratch.acq_path) >= {"after.txt"}
    assert "before.txt" not in names(fs, scratch.acq_path)


def test_rename_of_an_uploaded_file_onto_an_existing_one_replaces_it(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    target = scratch.put("settings.json", b'{"old": true}')
    fs = make_fs()  # no allow_delete: the source is this model's own upload
    tmp, dst = f"{scratch.acq_path}/.settings.json.tmp", f"{scratch.acq_path}/settings.json"
    write_file(fs, tmp, b'{"new": true}')
    assert ".settings.json.tmp" in scratch.files()
    fs.rename(tmp, dst)
    files = scratch.files()
    assert ".settings.json.tmp" not in files
    assert files["settings.json"].version == target.version + 1
    assert scratch.data("settings.json") == b'{"new": true}'
    assert ".settings.json.tmp" not in names(fs, scratch.acq_path)
    assert fs.getattr(dst).size == len(b'{"new": true}')


def test_rename_of_someone_elses_file_onto_an_existing_one_needs_allow_delete(
    scratch: Scratch, make_fs: MakeFs
) -> None:
    src = scratch.put("theirs.txt", b"theirs")
    dst = scratch.put("mine.txt", b"mine")
    fs = make_fs()
    site = scratch.site
    fs.readdir(scratch.acq_path)
    mark = site.quiet_mark()
    assert (
        errno_of(
            lambda: fs.rename(f"{scratch.acq_path}/theirs.txt", f"{scratch.acq_path}/mine.txt")
        )
        == errno.EPERM
    )
    assert changes(site.requests_since(mark)) == []
    files = scratch.files()
    assert (files["theirs.txt"].version, files["mine.txt"].version) == (src.version, dst.version)
    assert scratch.data("mine.txt") == b"mine"


def test_rename_flags(scratch: Scratch, make_fs: MakeFs) -> None:
    scratch.put("one.txt", b"1")
    scratch.put("two.txt", b"2")
    fs = make_fs(allow_delete=True)
    one, two = f"{scratch.acq_path}/one.txt", f"{scratch.acq_path}/two.txt"
    mark = scratch.site.quiet_mark()
    assert errno_of(lambda: fs.rename(one, two, RENAME_NOREPLACE)) == errno.EEXIST
    assert errno_of(lambda: fs.rename(one, two, RENAME_EXCHANGE)) == errno.EINVAL
    assert changes(scratch.site.requests_since(mark)) == []
    assert (scratch.data("one.txt"), scratch.data("two.txt")) == (b"1", b"2")
    # NOREPLACE onto a free name is an ordinary rename.
    fs.rename(one, f"{scratch.acq_path}/three.txt", RENAME_NOREPLACE)
    assert set(scratch.files()) == {"two.txt", "three.txt"}


def test_rename_of_a_session_relabels_it_within_its_subject_only(
    scratch: Scratch, make_fs: MakeFs, unique: Callable[[str], str]
) -> None:
    fw = scratch.fw
    label = unique("ses")
    session = scratch.subject.add_session(label=label)
    other = scratch.project.add_subject(label=unique("sub"))
    fs = make_fs()
    new_label = unique("ses-renamed")
    fs.rename(f"{scratch.subject_path}/{label}", f"{scratch.subject_path}/{new_label}")
    assert fw.get_session(session.id).label == new_label
    assert new_label in names(fs, scratch.subject_path)
    assert label not in names(fs, scratch.subject_path)

    taken = f"{scratch.subject_path}/ses-01"
    assert errno_of(lambda: fs.rename(f"{scratch.subject_path}/{new_label}", taken)) == (
        errno.EEXIST
    )
    moved = f"{scratch.project_path}/{other.label}/{new_label}"
    assert errno_of(lambda: fs.rename(f"{scratch.subject_path}/{new_label}", moved)) == (
        errno.EPERM
    )
    after = fw.get_session(session.id)
    assert (after.label, after.parents.subject) == (new_label, scratch.subject.id)


# ---- names ----------------------------------------------------------------------------------


def test_slash_may_be_in_a_label_but_not_in_a_file_name(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    assert errno_of(lambda: fs.create(f"{scratch.acq_path}/a\uff0fb.txt")) == errno.EINVAL
    assert scratch.files() == {}
    fs.mkdir(f"{scratch.session_path}/T2\uff0fFLAIR-{scratch.acq.label}")
    assert f"T2/FLAIR-{scratch.acq.label}" in acquisition_labels(scratch.fw, scratch.session.id)
    assert f"T2\uff0fFLAIR-{scratch.acq.label}" in names(fs, scratch.session_path)


def test_a_name_that_would_not_round_trip_is_einval(scratch: Scratch, make_fs: MakeFs) -> None:
    fs = make_fs()
    # `␀` stands for NUL, which no Flywheel name or label can hold.
    assert errno_of(lambda: fs.create(f"{scratch.acq_path}/a\u2400b.txt")) == errno.EINVAL
    assert errno_of(lambda: fs.mkdir(f"{scratch.session_path}/a\u2400b")) == errno.EINVAL
    assert scratch.files() == {}
    assert not any("\0" in label for label in acquisition_labels(scratch.fw, scratch.session.id))


# ---- refusals -------------------------------------------------------------------------------


def test_read_only_mount_refuses_every_change_with_erofs(scratch: Scratch, make_fs: MakeFs) -> None:
    scratch.put("ro.txt", b"ro")
    fs = make_fs(read_only=True)
    assert fs.writes is None
    path = f"{scratch.acq_path}/ro.txt"
    fs.getattr(path)
    mark = scratch.site.quiet_mark()
    assert_refused(
        errno.EROFS,
        lambda: fs.create(f"{scratch.acq_path}/new.txt"),
        lambda: fs.open(path, os.O_WRONLY),
        lambda: fs.truncate(path, 0),
        lambda: fs.mkdir(f"{scratch.session_path}/new"),
        lambda: fs.unlink(path),
        lambda: fs.rmdir(scratch.acq_path),
        lambda: fs.rename(path, f"{scratch.acq_path}/moved.txt"),
        lambda: fs.set_metadata(path),
    )
    assert scratch.site.requests_since(mark) == []
    assert scratch.data("ro.txt") == b"ro"


def first_file(fs: FlywheelFS, path: str) -> str:
    """The path of a file somewhere under directory `path` (depth first)."""
    for name, attr in sorted(fs.readdir(path), key=lambda e: e[1].is_dir):
        if not attr.is_dir:
            return f"{path}/{name}"
        return first_file(fs, f"{path}/{name}")
    raise AssertionError(f"no file under {path}")


def test_nothing_is_made_in_an_archive_and_its_members_are_read_only(
    scratch: Scratch, make_fs: MakeFs, demo_site: Any
) -> None:
    fs = make_fs(allow_delete=True)
    archive = f"{DEMO_SES}/T1w"  # the acquisition: it keeps the name its file shares
    zdir = f"{archive}/T1w.dicom.zip.d"
    member = first_file(fs, zdir)
    scratch.put("elsewhere.txt", b"e")
    elsewhere = f"{scratch.acq_path}/elsewhere.txt"
    fs.getattr(elsewhere)
    mark = demo_site.quiet_mark()
    # docs/SEMANTICS.md "Where": nothing is made in `.d/` and below (EPERM)...
    assert_refused(
        errno.EPERM,
        lambda: fs.create(f"{zdir}/new.dcm"),
        lambda: fs.create(f"{posixpath.dirname(member)}/new.dcm"),
        lambda: fs.mkdir(f"{zdir}/new"),
        lambda: fs.rename(elsewhere, f"{zdir}/moved.txt"),
    )
    # ...and its members are read-only (EROFS).
    assert_refused(
        errno.EROFS,
        lambda: fs.open(member, os.O_WRONLY),
        lambda: fs.open(member, os.O_WRONLY | os.O_TRUNC),
        lambda: fs.truncate(member, 0),
        lambda: fs.unlink(member),
        lambda: fs.rename(member, f"{scratch.acq_path}/out.dcm"),
    )
    assert changes(demo_site.requests_since(mark)) == []
    assert set(scratch.files()) == {"elsewhere.txt"}


def test_nothing_is_made_in_analyses_and_their_files_are_read_only(
    make_fs: MakeFs, demo_site: Any
) -> None:
    fs = make_fs(allow_delete=True)
    output, log = f"{DEMO_ANALYSIS}/output", f"{DEMO_ANALYSIS}/output/dcm2niix.log"
    mark = demo_site.quiet_mark()
    # docs/SEMANTICS.md "Where": no file is made in `analyses/`, an analysis, its input/
    # or output/ (EPERM)...
    assert_refused(
        errno.EPERM,
        lambda: fs.create(f"{DEMO_SES}/analyses/new.txt"),
        lambda: fs.create(f"{DEMO_ANALYSIS}/new.txt"),
        lambda: fs.create(f"{output}/new.txt"),
        lambda: fs.create(f"{DEMO_ANALYSIS}/input/new.txt"),
        lambda: fs.rmdir(DEMO_ANALYSIS),
    )
    # ...and the files a job wrote are read-only (EROFS).
    assert_refused(
        errno.EROFS,
        lambda: fs.open(log, os.O_WRONLY),
        lambda: fs.open(log, os.O_RDWR | os.O_TRUNC),
        lambda: fs.truncate(log, 0),
        lambda: fs.unlink(log),
        lambda: fs.rename(log, f"{output}/renamed.log"),
    )
    assert changes(demo_site.requests_since(mark)) == []


# ---- names: a file beside a container of its name -----------------------------------------


def test_a_file_named_as_a_container_never_takes_the_containers_name(
    scratch: Scratch, make_fs: MakeFs, unique: Callable[[str], str]
) -> None:
    # docs/SEMANTICS.md *Names*, rule 2: the site's path `…/T1w` is the acquisition, so a
    # pipeline working in `ses/T1w/` keeps its directory whatever files come and go.
    label = unique("ses")
    session = scratch.subject.add_session(label=label)
    acq_id = session.add_acquisition(label="T1w").id.encode()
    ses = f"{scratch.subject_path}/{label}"

    def put(name: str, data: bytes) -> None:
        scratch.fw.upload_file_to_container(session.id, flywheel.FileSpec(name, data))

    fs = make_fs(allow_delete=True, metadata_ttl=0)
    assert names(fs, ses) == {"T1w"}
    # A file of that name appears beside it (a pipeline's upload through the SDK).
    put("T1w", b"notes\n")
    assert names(fs, ses) == {"T1w", "T1w (file-5b6cf69b)"}
    assert fs.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # The kernel sees the directory at `T1w`; the file is rewritten at its suffixed name,
    # under its own name on the site, and the directory stays put.
    assert errno_of(lambda: fs.create(f"{ses}/T1w")) in (errno.EISDIR, errno.EEXIST)
    write_file(fs, f"{ses}/T1w (file-5b6cf69b)", b"notes, again\n")
    assert scratch.data("T1w", session.id) == b"notes, again\n"
    assert names(fs, ses) == {"T1w", "T1w (file-5b6cf69b)"}
    assert fs.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # A second model, which lists the session only now, names it alike.
    other = make_fs(read_only=True)
    assert names(other, ses) == {"T1w", "T1w (file-5b6cf69b)"}
    assert other.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # Gone again: the acquisition is where it was all along.
    fs.unlink(f"{ses}/T1w (file-5b6cf69b)")
    assert names(fs, ses) == {"T1w"}
    assert fs.getxattr(f"{ses}/T1w", "user.flywheel.id") == acq_id
    # mkdir of a name a file holds is refused: the file would lose its name to it.
    put("notes", b"n\n")
    assert errno_of(lambda: fs.mkdir(f"{ses}/notes")) == errno.EEXIST
    assert names(fs, ses) == {"T1w", "notes"}

"""docs/SEMANTICS.md, *Writes*: files. Where a file may be created, when its bytes reach the
site (close, fsync), new versions (O_TRUNC, copy-on-write, truncate), empty files, what is
accepted and ignored (chmod, chown, utimens), what is refused, modes, --read-only, and the
read-only user. The SDK is the witness of what the site holds.

Directories, deletes and renames: test_writes_tree.py. Tools (cp, rsync, tee, dd):
test_writes_tools.py. The spool, failures, crashes and unmount: test_writes_spool.py.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from mountkit import (
    ACQ,
    PROJECT,
    ROOT,
    SES,
    SUB,
    Mount,
    Scratch,
    SiteTree,
    changes,
    denied_by_mode,
    errno_of,
    quiet_mark,
    requests_since,
    uploads,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)


def open_as(path: Path, how: str) -> None:
    with open(path, how):
        pass


def sh(script: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sh", "-c", script, "sh", *args],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


# ---- modes --------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_modes_say_what_can_be_written(scratch: Scratch, mount: Mount) -> None:
    assert mode(mount.path) == 0o555
    for d in ("g", PROJECT, SUB, SES, ACQ):
        assert mode(mount / d) == 0o755, d
    for d in (
        f"{SES}/analyses",
        f"{SES}/analyses/qc",
        f"{SES}/analyses/qc/input",
        f"{SES}/analyses/qc/output",
        f"{ACQ}/scan.zip.d",
        f"{ACQ}/scan.zip.d/dir",
    ):
        assert mode(mount / d) == 0o555, d
    assert mode(mount / PROJECT / "notes.txt") == 0o644
    assert mode(mount / ACQ / "scan.zip") == 0o644
    assert mode(mount / f"{SES}/analyses/qc/output/report.txt") == 0o444
    assert mode(mount / f"{ACQ}/scan.zip.d/dir/a.txt") == 0o444


def test_modes_of_the_demo_on_a_writable_mount(mounted: Mount, demo_tree: SiteTree) -> None:
    read_only_dir = ("analyses", "input", "output")
    for rel in demo_tree.dirs:
        parts = rel.split("/")
        in_analysis = "analyses" in parts
        expected = 0o555 if in_analysis or parts[-1] in read_only_dir else 0o755
        assert mode(mounted / rel) == expected, rel
    for rel in demo_tree.files:
        expected = 0o444 if "analyses" in rel.split("/") else 0o644
        assert mode(mounted / rel) == expected, rel


def test_a_read_only_mount_refuses_every_write_without_a_request(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(scratch.site, read_only=True, args=["--allow-delete"])
    folder = mount / PROJECT
    notes = folder / "notes.txt"
    os.listdir(mount / SES)
    for d in ("g", PROJECT, SES, ACQ, f"{SES}/analyses"):
        assert mode(mount / d) == 0o555, d
    assert mode(notes) == 0o444
    mark = quiet_mark(scratch.site)
    attempts: dict[str, Callable[[], Any]] = {
        "open r+b": lambda: open(notes, "r+b"),  # noqa: SIM115
        "open ab": lambda: open(notes, "ab"),  # noqa: SIM115
        "open wb": lambda: open(notes, "wb"),  # noqa: SIM115
        "create": lambda: open(folder / "new.txt", "xb"),  # noqa: SIM115
        "truncate": lambda: os.truncate(notes, 0),
        "mkdir": lambda: os.mkdir(folder / "sub-99"),
        "rmdir": lambda: os.rmdir(mount / SUB),
        "unlink": lambda: os.unlink(notes),
        "rename": lambda: os.rename(notes, folder / "renamed.txt"),
        "chmod": lambda: os.chmod(notes, 0o600),
        "chown": lambda: os.chown(notes, os.getuid(), os.getgid()),
        "utime": lambda: os.utime(notes, (0, 0)),
        "symlink": lambda: os.symlink("notes.txt", folder / "link"),
        "link": lambda: os.link(notes, folder / "hard"),
        "setxattr": lambda: os.setxattr(notes, "user.flywheel.label", b"x"),
    }
    for what, attempt in attempts.items():
        assert errno_of(attempt) == errno.EROFS, what
    assert changes(requests_since(scratch.site, mark)) == []
    assert notes.read_bytes() == Scratch.NOTES
    assert sorted(scratch.files(scratch.project)) == ["notes.txt"]


# ---- create, close, fsync -----------------------------------------------------------------


def test_a_new_file_is_listed_while_written_and_uploaded_at_close(
    scratch: Scratch, mount: Mount
) -> None:
    path = mount / ACQ / "new.bin"
    chunks = [os.urandom(100_000), os.urandom(70_000), os.urandom(5)]
    mark = quiet_mark(scratch.site)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        written = 0
        for chunk in chunks:
            assert os.write(fd, chunk) == len(chunk)
            written += len(chunk)
            # Listed, with its current size, by stat and by the directory listing.
            assert os.stat(path).st_size == written
            assert "new.bin" in os.listdir(mount / ACQ)
        # Not on the site before the close: no upload yet.
        assert uploads(requests_since(scratch.site, mark)) == []
        assert "new.bin" not in scratch.files(scratch.acquisition)
    finally:
        os.close(fd)
    # close() returned: the site has it, exactly as written, from one upload.
    files = scratch.files(scratch.acquisition)
    assert files["new.bin"].size == written and files["new.bin"].version == 1
    assert scratch.read(scratch.acquisition, "new.bin") == b"".join(chunks)
    assert len(uploads(requests_since(scratch.site, mark))) == 1
    assert path.read_bytes() == b"".join(chunks)
    assert os.stat(path).st_size == written


def test_files_can_be_created_in_every_container_directory(scratch: Scratch, mount: Mount) -> None:
    where = {PROJECT: scratch.project, SUB: scratch.subject, SES: scratch.session}
    where[ACQ] = scratch.acquisition
    for folder, container in where.items():
        body = f"written into {folder}\n".encode()
        (mount / folder / "made-here.txt").write_bytes(body)
        assert scratch.read(container, "made-here.txt") == body, folder


def test_fsync_uploads_at_once(scratch: Scratch, mount: Mount) -> None:
    path = mount / PROJECT / "synced.txt"
    with open(path, "wb", buffering=0) as f:
        f.write(b"first part\n")
        os.fsync(f.fileno())
        # Uploaded before the close.
        assert scratch.read(scratch.project, "synced.txt") == b"first part\n"
        f.write(b"second part\n")
    # The close uploads what changed since: a second version.
    files = scratch.files(scratch.project)
    assert files["synced.txt"].version == 2
    assert scratch.read(scratch.project, "synced.txt") == b"first part\nsecond part\n"


def test_a_second_writer_keeps_the_upload_until_the_last_close(
    scratch: Scratch, mount: Mount
) -> None:
    path = mount / PROJECT / "two-writers.txt"
    mark = quiet_mark(scratch.site)
    first = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    second = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(first, b"AAAA", 0)
        os.pwrite(second, b"BBBB", 4)
        os.close(first)
        first = -1
        # One writer is still open: nothing uploaded yet.
        assert uploads(requests_since(scratch.site, mark)) == []
    finally:
        if first >= 0:
            os.close(first)
        os.close(second)
    assert scratch.read(scratch.project, "two-writers.txt") == b"AAAABBBB"
    assert len(uploads(requests_since(scratch.site, mark))) == 1


# ---- new versions -------------------------------------------------------------------------


def test_o_trunc_and_cp_onto_a_file_upload_a_new_version(
    scratch: Scratch, mount: Mount, tmp_path: Path
) -> None:
    notes = mount / PROJECT / "notes.txt"
    before = scratch.files(scratch.project)["notes.txt"]
    notes.write_bytes(b"version two\n")  # O_WRONLY | O_CREAT | O_TRUNC
    after = scratch.files(scratch.project)
    assert sorted(after) == ["notes.txt"]  # same name, no second file
    assert after["notes.txt"].version == before.version + 1
    assert scratch.read(scratch.project, "notes.txt") == b"version two\n"
    local = tmp_path / "v3.txt"
    local.write_bytes(b"version three, from cp\n")
    assert sh('cp "$1" "$2"', str(local), str(notes)).returncode == 0
    after = scratch.files(scratch.project)
    assert after["notes.txt"].version == before.version + 2
    assert scratch.read(scratch.project, "notes.txt") == b"version three, from cp\n"


def test_appending_is_copy_on_write(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    done = sh('printf "appended\\n" >> "$1"', str(notes))
    assert done.returncode == 0, done.stderr
    files = scratch.files(scratch.project)
    assert files["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES + b"appended\n"


def test_dd_notrunc_edits_in_place(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    done = sh('printf "V" | dd of="$1" bs=1 seek=0 conv=notrunc status=none', str(notes))
    assert done.returncode == 0, done.stderr
    assert scratch.files(scratch.project)["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == b"V" + Scratch.NOTES[1:]
    assert notes.read_bytes() == b"V" + Scratch.NOTES[1:]


def test_an_unchanged_read_write_open_uploads_nothing(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    mark = quiet_mark(scratch.site)
    with open(notes, "r+b") as f:
        assert f.read() == Scratch.NOTES
    with open(notes, "ab"):
        pass
    assert changes(requests_since(scratch.site, mark)) == []
    assert scratch.files(scratch.project)["notes.txt"].version == 1


def test_a_read_write_open_reads_and_writes_one_copy(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    with open(notes, "r+b", buffering=0) as f:
        assert f.read(8) == Scratch.NOTES[:8]
        f.seek(0)
        f.write(b"VERSION")
        f.seek(0)
        assert f.read() == b"VERSION" + Scratch.NOTES[7:]
    assert scratch.read(scratch.project, "notes.txt") == b"VERSION" + Scratch.NOTES[7:]
    assert scratch.files(scratch.project)["notes.txt"].version == 2


def test_truncate_of_a_closed_file_uploads_at_once(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    assert sh('truncate -s 7 "$1"', str(notes)).returncode == 0
    assert scratch.files(scratch.project)["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES[:7]
    os.truncate(notes, 10)  # longer: zeros at the end
    assert scratch.files(scratch.project)["notes.txt"].version == 3
    assert scratch.read(scratch.project, "notes.txt") == Scratch.NOTES[:7] + b"\0\0\0"
    assert notes.stat().st_size == 10


# ---- empty files --------------------------------------------------------------------------


def test_touch_uploads_an_empty_file(scratch: Scratch, mount: Mount) -> None:
    mark = quiet_mark(scratch.site)
    assert (
        sh('touch "$1" && : > "$2"', str(mount / ACQ / "empty"), str(mount / ACQ / "e2")).returncode
        == 0
    )
    assert os.stat(mount / ACQ / "empty").st_size == 0
    # Uploaded when the last handle is released, which the kernel sends after close()
    # returns: wait for it, then check it happened once per file.
    wait_for(
        lambda: {"empty", "e2"} <= set(scratch.files(scratch.acquisition)),
        what="the empty files on the site",
    )
    files = scratch.files(scratch.acquisition)
    assert (files["empty"].size, files["e2"].size) == (0, 0)
    assert (files["empty"].version, files["e2"].version) == (1, 1)
    assert len(uploads(requests_since(scratch.site, mark))) == 2


def test_cat_into_a_new_file_uploads_one_version(scratch: Scratch, mount: Mount) -> None:
    body = os.urandom(300_000)
    mark = quiet_mark(scratch.site)
    assert sh('cat > "$1"', str(mount / ACQ / "from-cat.bin"), stdin=body).returncode == 0
    assert scratch.read(scratch.acquisition, "from-cat.bin") == body
    assert scratch.files(scratch.acquisition)["from-cat.bin"].version == 1
    assert len(uploads(requests_since(scratch.site, mark, settle=0.5))) == 1


def test_df_shows_the_spool_s_free_space(scratch: Scratch, mount: Mount) -> None:
    mounted, spool = os.statvfs(mount.path), os.statvfs(mount.spool)
    free = mounted.f_bavail * mounted.f_frsize
    expected = spool.f_bavail * spool.f_frsize
    assert free > 0
    assert abs(free - expected) <= max(expected // 100, 64 << 20)  # others write meanwhile
    assert mounted.f_blocks * mounted.f_frsize == pytest.approx(
        spool.f_blocks * spool.f_frsize, rel=0.01
    )


# ---- accepted and ignored -----------------------------------------------------------------


def test_chmod_chown_and_times_are_accepted_and_ignored(
    scratch: Scratch, mount: Mount, tmp_path: Path
) -> None:
    notes = mount / PROJECT / "notes.txt"
    before = os.stat(notes)
    mark = quiet_mark(scratch.site)
    os.chmod(notes, 0o600)
    os.chmod(mount / SES, 0o700)
    os.chown(notes, os.getuid(), os.getgid())
    os.utime(notes, (1_000_000, 1_000_000))
    after = os.stat(notes)
    assert stat.S_IMODE(after.st_mode) == 0o644 and mode(mount / SES) == 0o755
    assert (after.st_mtime, after.st_size) == (before.st_mtime, before.st_size)
    assert notes.read_bytes() == Scratch.NOTES
    assert changes(requests_since(scratch.site, mark)) == []
    # cp -p copies bytes, then sets mode and times: the copy arrives, the rest is ignored.
    local = tmp_path / "kept.txt"
    local.write_bytes(b"cp -p keeps modes and times elsewhere\n")
    local.chmod(0o600)
    os.utime(local, (1_000_000, 1_000_000))
    done = sh('cp -p "$1" "$2"', str(local), str(mount / PROJECT / "kept.txt"))
    assert done.returncode == 0, done.stderr
    assert scratch.read(scratch.project, "kept.txt") == local.read_bytes()
    assert mode(mount / PROJECT / "kept.txt") == 0o644


def test_touching_an_existing_file_changes_nothing(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    size = notes.stat().st_size
    mark = quiet_mark(scratch.site)
    assert sh('touch "$1"', str(notes)).returncode == 0
    # touch opens for writing (copy-on-write) and writes nothing: same bytes, no upload.
    assert notes.stat().st_size == size
    assert notes.read_bytes() == Scratch.NOTES
    assert sh('touch -d "2001-02-03 04:05:06" "$1"', str(notes)).returncode == 0
    assert notes.stat().st_size == size
    assert notes.read_bytes() == Scratch.NOTES
    assert uploads(requests_since(scratch.site, mark, settle=0.5)) == []
    assert scratch.files(scratch.project)["notes.txt"].version == 1


def test_links_and_setting_xattrs_are_not_supported(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: os.symlink("notes.txt", mount / PROJECT / "link")) == errno.ENOTSUP
    assert errno_of(lambda: os.link(notes, mount / PROJECT / "hard")) == errno.ENOTSUP
    assert errno_of(lambda: os.setxattr(notes, "user.flywheel.label", b"x")) == errno.ENOTSUP
    assert errno_of(lambda: os.removexattr(notes, "user.flywheel.name")) == errno.ENOTSUP
    assert changes(requests_since(scratch.site, mark)) == []
    assert sorted(os.listdir(mount / PROJECT)) == ["notes.txt", "sub-01"]


# ---- refused ------------------------------------------------------------------------------


def test_no_files_where_flywheel_keeps_none(scratch: Scratch, mount: Mount) -> None:
    os.listdir(mount / ACQ / "scan.zip.d")
    mark = quiet_mark(scratch.site)
    places = {
        "": denied_by_mode(errno.EPERM),
        "g": errno.EPERM,
        f"{SES}/analyses": denied_by_mode(errno.EPERM),
        f"{SES}/analyses/qc": denied_by_mode(errno.EPERM),
        f"{SES}/analyses/qc/output": denied_by_mode(errno.EPERM),
        f"{SES}/analyses/qc/input": denied_by_mode(errno.EPERM),
        f"{ACQ}/scan.zip.d": denied_by_mode(errno.EPERM),
        f"{ACQ}/scan.zip.d/dir": denied_by_mode(errno.EPERM),
    }
    for folder, expected in places.items():
        target = mount / folder / "nope.txt"
        assert errno_of(partial(open_as, target, "xb")) == expected, folder
        assert "nope.txt" not in os.listdir(mount / folder), folder
    assert changes(requests_since(scratch.site, mark)) == []
    if ROOT:
        assert "nope.txt" in mount.log()  # each refusal has its line


def test_analysis_files_and_archive_members_are_read_only(scratch: Scratch, mount: Mount) -> None:
    report = mount / f"{SES}/analyses/qc/output/report.txt"
    member = mount / f"{ACQ}/scan.zip.d/dir/a.txt"
    mark = quiet_mark(scratch.site)
    for path in (report, member):
        for how in ("r+b", "ab", "wb"):
            code = errno_of(partial(open_as, path, how))
            assert code == denied_by_mode(errno.EROFS), (path, how)
        code = errno_of(partial(os.truncate, path, 0))
        assert code == denied_by_mode(errno.EROFS), path
    assert changes(requests_since(scratch.site, mark)) == []
    assert report.read_bytes() == Scratch.REPORT
    assert member.read_bytes() == Scratch.MEMBER


def test_the_read_only_user_gets_eacces_before_anything_is_staged(
    scratch: Scratch, mount_site: Callable[..., Mount]
) -> None:
    empty = scratch.session.add_acquisition(label="empty")
    mount = mount_site(scratch.site, key=scratch.site.readonly_api_key, args=["--allow-delete"])
    folder = mount / ACQ
    assert sorted(os.listdir(folder)) == ["scan.zip"]
    mark = quiet_mark(scratch.site)
    assert errno_of(lambda: open(folder / "new.txt", "wb")) == errno.EACCES  # noqa: SIM115
    assert errno_of(lambda: open(folder / "scan.zip", "r+b")) == errno.EACCES  # noqa: SIM115
    assert errno_of(lambda: open(folder / "scan.zip", "wb")) == errno.EACCES  # noqa: SIM115
    assert errno_of(lambda: os.mkdir(mount / SES / "func")) == errno.EACCES
    assert errno_of(lambda: os.unlink(folder / "scan.zip")) == errno.EACCES
    assert errno_of(lambda: os.rename(folder / "scan.zip", folder / "x.zip")) == errno.EACCES
    assert errno_of(lambda: os.rmdir(mount / SES / "empty")) == errno.EACCES
    # Nothing was staged, nothing sent.
    assert list((mount.spool / "staging").glob("*")) == []
    assert uploads(requests_since(scratch.site, mark)) == []
    assert sorted(os.listdir(folder)) == ["scan.zip"]
    assert sorted(scratch.files(scratch.acquisition)) == ["scan.zip"]
    assert scratch.fw.get(empty.id).label == "empty"

"""docs/SEMANTICS.md, *Writes*: files, where only a mount can show it: modes as the kernel
sees them, new versions made by tools (cp, dd, cat), df, what is accepted and ignored
(chmod, chown, utimens, touch), links and setting xattrs. The SDK is the witness of what the
site holds.

The scenarios the model shows alike (a file listed while written and uploaded at close,
empty files, fsync, the last writer, O_TRUNC, copy-on-write, O_APPEND, truncate, refusals,
--read-only and the read-only user) run in both tiers: tests/writes/. Tools (cp -r, rsync,
tee, dd): test_writes_tools.py. The spool, failures, crashes and unmount:
test_writes_spool.py.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from pathlib import Path

import pytest
from mountkit import (
    ACQ,
    PROJECT,
    SES,
    SUB,
    Mount,
    Scratch,
    SiteTree,
    changes,
    errno_of,
    quiet_mark,
    requests_since,
    uploads,
)

pytestmark = pytest.mark.timeout(120)


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


# ---- new versions -------------------------------------------------------------------------


def test_cp_onto_a_file_uploads_a_new_version(
    scratch: Scratch, mount: Mount, tmp_path: Path
) -> None:
    notes = mount / PROJECT / "notes.txt"
    before = scratch.files(scratch.project)["notes.txt"]
    local = tmp_path / "v2.txt"
    local.write_bytes(b"version two, from cp\n")
    assert sh('cp "$1" "$2"', str(local), str(notes)).returncode == 0
    after = scratch.files(scratch.project)
    assert sorted(after) == ["notes.txt"]  # same name, no second file
    assert after["notes.txt"].version == before.version + 1
    assert scratch.read(scratch.project, "notes.txt") == b"version two, from cp\n"


def test_dd_notrunc_edits_in_place(scratch: Scratch, mount: Mount) -> None:
    notes = mount / PROJECT / "notes.txt"
    done = sh('printf "V" | dd of="$1" bs=1 seek=0 conv=notrunc status=none', str(notes))
    assert done.returncode == 0, done.stderr
    assert scratch.files(scratch.project)["notes.txt"].version == 2
    assert scratch.read(scratch.project, "notes.txt") == b"V" + Scratch.NOTES[1:]
    assert notes.read_bytes() == b"V" + Scratch.NOTES[1:]


# ---- a new file from a tool; space --------------------------------------------------------


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

"""One test per claim of docs/SEMANTICS.md that test_mount.py and test_costs.py do not
already check, on real mounts: staleness and versions, id aliases, the reserved
`analyses`, names the kernel must accept, mode bits, owner, privacy of the mount,
extended-attribute and filesystem errnos, and what the log holds.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flywheel
import pytest
from mountkit import (
    DEMO_PROJECT,
    DEMO_SES,
    Mount,
    SiteTree,
    empty_project,
    errno_of,
    quiet_mark,
    requests_since,
    start_mount,
    stop_mount,
    wait_for,
)

pytestmark = pytest.mark.timeout(90)

PROJECT = DEMO_PROJECT
SES = DEMO_SES
TTL = 4.0


@pytest.fixture
def scratch(start_site: Callable[..., Any]) -> Any:
    """A private empty site with group `g` and project `P`; returns (site, sdk, project)."""
    return empty_project(start_site(demo=False), "Scratch")


def mounted_file(
    scratch: Any, mount_site: Callable[..., Mount], name: str, data: bytes, **options: Any
) -> tuple[Mount, Path]:
    """Upload `name` into g/P, then mount with `options`: the mount, and the file's path."""
    site, _fw, project = scratch
    project.upload_file(flywheel.FileSpec(name, data))
    mount = mount_site(site, **options)
    return mount, mount / "g/P" / name


@contextlib.contextmanager
def replaced_while_open(
    scratch: Any, mount_site: Callable[..., Mount]
) -> Iterator[tuple[Path, Any, bytes, bytes]]:
    """g/P/scan.bin (v1), mounted with the TTL and open, its first 1000 bytes read; v2
    uploaded while it is open. Yields (path, the open file, v1, v2). Once it is closed:
    the path shows v2, and reads it from the start."""
    _site, _fw, project = scratch
    v1, v2 = os.urandom(300_000), os.urandom(200_000)
    _mount, path = mounted_file(scratch, mount_site, "scan.bin", v1, ttl=TTL)
    with open(path, "rb", buffering=0) as old:
        assert old.read(1000) == v1[:1000]
        project.upload_file(flywheel.FileSpec("scan.bin", v2))
        yield path, old, v1, v2
    wait_for(lambda: path.stat().st_size == len(v2), timeout=TTL + 10)
    assert path.read_bytes() == v2


def read_after_delete(scratch: Any, mount_site: Callable[..., Mount]) -> tuple[Mount, int]:
    """Open g/P/gone.txt, delete it on the site, read the open handle: the mount, and the
    errno of the read (it must fail)."""
    _site, _fw, project = scratch
    mount, path = mounted_file(scratch, mount_site, "gone.txt", b"soon deleted\n", ttl=60)
    fd = os.open(path, os.O_RDONLY)
    try:
        project.delete_file("gone.txt")
        # Never made-up or empty data presented as the file: an error.
        return mount, errno_of(lambda: os.pread(fd, 100, 0))
    finally:
        os.close(fd)


# ---- consistency and staleness ------------------------------------------------------------


def test_listings_are_trusted_for_the_ttl_then_listed_again(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = scratch
    project.upload_file(flywheel.FileSpec("old.txt", b"to be deleted\n"))
    mount = mount_site(site, ttl=TTL)
    folder = mount / "g/P"
    listed_at = time.monotonic()
    assert os.listdir(folder) == ["old.txt"]
    project.upload_file(flywheel.FileSpec("new.txt", b"uploaded after the listing\n"))
    project.delete_file("old.txt")
    mark = quiet_mark(site)
    assert time.monotonic() - listed_at < TTL - 1, "too slow to observe the TTL"
    # Within the TTL: the new file does not appear, the deleted one still shows, and the
    # listing is authoritative: a name it lacks is ENOENT at once, without a request.
    # (Not the new name itself: see test_a_name_missing_before_is_usable_as_soon_as_it_is_listed.)
    assert os.listdir(folder) == ["old.txt"]
    assert errno_of(lambda: os.stat(folder / "never.txt")) == errno.ENOENT
    assert requests_since(site, mark) == []
    # After it, the next access lists again.
    wait_for(lambda: os.listdir(folder) == ["new.txt"], timeout=TTL + 10)
    assert (folder / "new.txt").read_bytes() == b"uploaded after the listing\n"
    # The kernel may keep the entry an earlier `ls` gave it for its one second, no longer.
    took = wait_for(lambda: not os.path.exists(folder / "old.txt"), timeout=3)
    assert took <= 1.5
    assert errno_of(lambda: os.stat(folder / "old.txt")) == errno.ENOENT


def test_a_deleted_file_is_gone_within_the_ttl(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = scratch
    ttl = 4.0
    project.upload_file(flywheel.FileSpec("old.txt", b"to be deleted\n"))
    mount = mount_site(site, ttl=ttl)
    folder = mount / "g/P"
    listed_at = time.monotonic()
    assert os.listdir(folder) == ["old.txt"]
    project.delete_file("old.txt")
    deleted_at = time.monotonic()
    # The listing is fresh (under a second old): it still shows the file.
    assert deleted_at - listed_at < 1.0
    assert os.stat(folder / "old.txt").st_size > 0
    time.sleep(max(0.0, deleted_at + ttl + 1.0 - time.monotonic()))
    # More than the TTL after the deletion: gone.
    assert errno_of(lambda: os.stat(folder / "old.txt")) == errno.ENOENT


def test_a_name_missing_before_is_usable_as_soon_as_it_is_listed(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = scratch
    mount = mount_site(site, ttl=1)
    folder = mount / "g/P"
    assert os.listdir(folder) == []
    assert not (folder / "late.txt").exists()  # looked for too early
    project.upload_file(flywheel.FileSpec("late.txt", b"here now\n"))
    wait_for(lambda: os.listdir(folder) == ["late.txt"], timeout=10)
    # ls shows it: opening it by that name must work too.
    assert (folder / "late.txt").read_bytes() == b"here now\n"


def test_an_open_file_keeps_reading_the_version_it_opened(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    with replaced_while_open(scratch, mount_site) as (path, old, v1, _v2):
        # The handle reads on in version one, to its end.
        assert old.read() == v1[1000:]
        # Within the TTL the new version is not seen: a new open gets version one, whole.
        assert path.read_bytes() == v1
    # After it, a new open reads the new version (replaced_while_open).


def test_an_open_file_keeps_its_version_after_the_new_one_is_listed(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    with replaced_while_open(scratch, mount_site) as (path, old, v1, v2):
        wait_for(lambda: os.getxattr(path, "user.flywheel.version") == b"2", timeout=TTL + 10)
        # Listed now; while version one is open its size stands, and it reads whole.
        assert path.stat().st_size == len(v1)
        whole = os.pread(old.fileno(), len(v1) + 10, 0)
        assert (len(whole), whole == v1) == (len(v1), True)
        assert path.read_bytes() == v2  # a new open reads version two...
        whole = os.pread(old.fileno(), len(v1) + 10, 0)
        assert (len(whole), whole == v1) == (len(v1), True)  # ...the old handle still one
    # Closed: the path shows version two, and reads it from the start (replaced_while_open).


def test_a_new_version_of_the_same_size_is_not_served_from_old_pages(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    _site, _fw, project = scratch
    v1, v2 = b"A" * 100_000, b"B" * 100_000
    _mount, path = mounted_file(scratch, mount_site, "same-size.bin", v1, ttl=TTL)
    assert path.read_bytes() == v1  # now in the kernel's page cache
    project.upload_file(flywheel.FileSpec("same-size.bin", v2))
    wait_for(lambda: os.getxattr(path, "user.flywheel.version") == b"2", timeout=TTL + 10, step=0.2)
    assert path.read_bytes() == v2


def test_a_file_deleted_under_an_open_handle_fails_clearly(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    mount, code = read_after_delete(scratch, mount_site)
    assert code in (errno.ENOENT, errno.ESTALE)
    assert mount.alive


def test_a_failed_read_leaves_a_log_line(scratch: Any, mount_site: Callable[..., Mount]) -> None:
    mount, _code = read_after_delete(scratch, mount_site)
    assert "gone.txt" in mount.log()


def test_an_analysis_input_reads_its_own_bytes_even_if_an_output_shares_its_name(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = scratch
    project.upload_file(flywheel.FileSpec("scan.txt", b"the input bytes\n"))
    source = project.reload().get_file("scan.txt")
    analysis = project.add_analysis(label="deid", inputs=[source.ref()])
    analysis.upload_output(flywheel.FileSpec("scan.txt", b"the output bytes, not the input\n"))
    mount = mount_site(site)
    folder = mount / "g/P/analyses/deid"
    assert (folder / "output/scan.txt").read_bytes() == b"the output bytes, not the input\n"
    # Right bytes or a clear error: never the output's bytes under input/.
    try:
        data = (folder / "input/scan.txt").read_bytes()
    except OSError:
        return
    assert data == b"the input bytes\n"


# ---- id aliases ---------------------------------------------------------------------------


def test_id_aliases_name_containers_without_being_listed(mounted: Mount, fw: Any) -> None:
    project = fw.lookup(PROJECT)
    session = fw.lookup(SES).reload()
    analysis = session.analyses[0]
    # A group's alias is its id; a project's alias works from its group, and so on.
    assert sorted(os.listdir(mounted / "<id:flywheel>")) == sorted(os.listdir(mounted / "flywheel"))
    by_alias = mounted / f"flywheel/<id:{project.id}>"
    assert sorted(os.listdir(by_alias)) == sorted(os.listdir(mounted / PROJECT))
    assert os.getxattr(by_alias, "user.flywheel.label") == b"Anxiety Study"
    sub = mounted / f"{PROJECT}/sub-01/<id:{session.id}>"
    assert os.getxattr(sub, "user.flywheel.id") == session.id.encode()
    in_analyses = mounted / f"{SES}/analyses/<id:{analysis.id}>"
    assert sorted(os.listdir(in_analyses)) == ["input", "output"]
    # cd into one, as the docs show.
    out = subprocess.run(
        ["sh", "-c", 'cd "$1" && ls', "sh", str(by_alias)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0 and "participants.csv" in out.stdout.splitlines()
    # Never listed.
    for folder in ("", "flywheel", PROJECT, SES, f"{SES}/analyses"):
        assert not [n for n in os.listdir(mounted / folder) if n.startswith("<id:")]
    # An alias names a child: a session's id means nothing in a project directory.
    assert errno_of(lambda: os.stat(mounted / f"{PROJECT}/<id:{session.id}>")) == errno.ENOENT
    assert errno_of(lambda: os.stat(mounted / "<id:no-such-group>")) == errno.ENOENT


# ---- names --------------------------------------------------------------------------------


def test_the_reserved_analyses_name(scratch: Any, mount_site: Callable[..., Mount]) -> None:
    site, fw, project = scratch
    subject = project.add_subject(label="analyses")
    project.upload_file(flywheel.FileSpec("analyses", b"a file named analyses\n"))
    project.add_analysis(label="qc")
    other = fw.get_group("g").add_project(label="Q")  # no analyses of its own
    other_subject = other.add_subject(label="analyses")
    mount = mount_site(site)
    assert sorted(os.listdir(mount / "g/P")) == sorted(
        ["analyses", f"analyses ({subject.id[-8:]})", "analyses (file-50daf91e)"]
    )
    assert os.listdir(mount / "g/P/analyses") == ["qc"]
    assert os.getxattr(mount / f"g/P/analyses ({subject.id[-8:]})", "user.flywheel.label") == (
        b"analyses"
    )
    assert (mount / "g/P/analyses (file-50daf91e)").read_bytes() == b"a file named analyses\n"
    # Reserved in every container directory, listed only where there are analyses.
    assert os.listdir(mount / "g/Q") == [f"analyses ({other_subject.id[-8:]})"]
    assert errno_of(lambda: os.stat(mount / "g/Q/analyses")) == errno.ENOENT


def test_awkward_labels_become_names_the_kernel_accepts(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = scratch
    long_label = "脳" * 100  # 300 bytes of UTF-8
    labels = [".", "..", "a/b", "a\x00b", "Sub-01", "sub-01", f"<id:{'ab' * 12}>", long_label]
    ids = {label: project.add_subject(label=label).id for label in labels}
    mount = mount_site(site)
    names = set(os.listdir(mount / "g/P"))
    alias_shaped = f"<id:{'ab' * 12}> ({ids[labels[6]][-8:]})"
    expected_plain = {"．", "．．", "a／b", "a␀b", "Sub-01", "sub-01", alias_shaped}
    assert expected_plain <= names
    (long_name,) = names - expected_plain
    assert len(long_name.encode()) <= 255
    assert long_name.startswith("脳" * 10) and long_name.endswith(f" ({ids[long_label][-8:]})")
    for name in names:  # every one of them usable by name
        label = os.getxattr(mount / "g/P" / name, "user.flywheel.label").decode()
        assert ids[label] == os.getxattr(mount / "g/P" / name, "user.flywheel.id").decode()


def test_names_are_the_same_on_every_mount(
    demo_site: Any, mounted: Mount, mount_site: Callable[..., Mount]
) -> None:
    other = mount_site(demo_site)

    def tree(root: Path) -> list[str]:
        return sorted(
            str(Path(d, n).relative_to(root))
            for d, dirs, files in os.walk(root / "flywheel")
            for n in dirs + files
        )

    assert tree(other.path) == tree(mounted.path)


# ---- attributes ---------------------------------------------------------------------------


def test_mode_bits_and_owner_on_a_read_only_mount(
    demo_site: Any, mount_site: Callable[..., Mount], demo_tree: SiteTree
) -> None:
    # The writable mount's modes: tests/mount/test_writes.py.
    mounted = mount_site(demo_site, read_only=True)
    assert stat.S_IMODE(os.stat(mounted.path).st_mode) == 0o555
    for rel in [*demo_tree.dirs, *demo_tree.files]:
        st = os.stat(mounted / rel)
        if rel in demo_tree.files:
            assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o444, rel
        else:
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555, rel
        assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid()), rel
        assert st.st_atime == st.st_mtime


def test_directory_times_are_modified_and_created(
    scratch: Any, mount_site: Callable[..., Mount]
) -> None:
    site, _fw, project = scratch
    subject = project.add_subject(label="sub-times")
    time.sleep(1.1)
    subject.update(sex="female")
    subject = subject.reload()
    assert subject.modified > subject.created
    st = os.stat(mount_site(site) / "g/P/sub-times")
    assert st.st_mtime == pytest.approx(subject.modified.timestamp(), abs=1e-3)
    assert st.st_ctime == pytest.approx(subject.created.timestamp(), abs=1e-3)


@pytest.fixture
def open_mountpoint_dir() -> Iterator[Path]:
    """A work directory other users can traverse (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fwfs-shared-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    def drop() -> None:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)

    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=drop,
    )


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_the_mount_is_private_unless_allow_other(demo_site: Any, open_mountpoint_dir: Path) -> None:
    private = start_mount(demo_site, open_mountpoint_dir / "private")
    shared = start_mount(demo_site, open_mountpoint_dir / "shared", args=["-o", "allow_other"])
    try:
        (open_mountpoint_dir / "private").chmod(0o755)
        (open_mountpoint_dir / "shared").chmod(0o755)
        denied = as_nobody("ls", str(private.path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        allowed = as_nobody("cat", str(shared / PROJECT / "participants.csv"))
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith("participant_id,")
        refused = as_nobody("touch", str(shared / PROJECT / "new.txt"))
        assert refused.returncode != 0
    finally:
        stop_mount(private)
        stop_mount(shared)


# ---- errnos -------------------------------------------------------------------------------


def test_a_missing_extended_attribute_is_enodata(mounted: Mount) -> None:
    nii = mounted / SES / "T1w" / "T1w.nii.gz"
    assert errno_of(lambda: os.getxattr(nii, "user.flywheel.no_such")) == errno.ENODATA
    # Fields the site leaves empty are absent: a NIfTI has no zip members, a file no label.
    assert errno_of(lambda: os.getxattr(nii, "user.flywheel.zip_member_count")) == errno.ENODATA
    assert errno_of(lambda: os.getxattr(nii, "user.flywheel.label")) == errno.ENODATA
    assert errno_of(lambda: os.getxattr(mounted / SES, "user.flywheel.name")) == errno.ENODATA
    assert "user.flywheel.zip_member_count" not in os.listxattr(nii)


def test_filesystem_errnos(demo_site: Any, mount_site: Callable[..., Mount]) -> None:
    # On a --read-only mount; the errnos of writes: tests/mount/test_writes*.py.
    mounted = mount_site(demo_site, read_only=True)
    folder = mounted / PROJECT
    csv = folder / "participants.csv"
    assert errno_of(lambda: os.stat(folder / "no-such-file")) == errno.ENOENT
    assert errno_of(lambda: os.stat(csv / "child")) == errno.ENOTDIR
    assert errno_of(lambda: os.listdir(csv)) == errno.ENOTDIR
    fd = os.open(folder, os.O_RDONLY)
    try:
        assert errno_of(lambda: os.read(fd, 10)) == errno.EISDIR
    finally:
        os.close(fd)
    assert errno_of(lambda: open(folder / "sub-01", "rb")) == errno.EISDIR  # noqa: SIM115
    erofs: list[Callable[[], Any]] = [
        lambda: open(csv, "r+b"),  # noqa: SIM115
        lambda: open(csv, "ab"),  # noqa: SIM115
        lambda: open(folder / "new.txt", "xb"),  # noqa: SIM115
        lambda: os.truncate(csv, 0),
        lambda: os.mkdir(folder / "sub-99"),
        lambda: os.rmdir(folder / "sub-01"),
        lambda: os.unlink(csv),
        lambda: os.rename(csv, folder / "renamed.csv"),
        lambda: os.chmod(csv, 0o644),
        lambda: os.symlink("participants.csv", folder / "link"),
        lambda: os.link(csv, folder / "hard"),
        lambda: os.setxattr(csv, "user.flywheel.label", b"x"),
        lambda: os.utime(csv, (0, 0)),
        lambda: os.chown(csv, os.getuid(), os.getgid()),
    ]
    for attempt in erofs:
        assert errno_of(attempt) == errno.EROFS
    assert csv.read_bytes().startswith(b"participant_id,")  # and nothing changed


# ---- the log ------------------------------------------------------------------------------


def test_the_api_key_never_reaches_the_log(
    demo_site: Any, mount_site: Callable[..., Mount]
) -> None:
    mount = mount_site(demo_site, args=["--debug"])
    subprocess.run(["ls", "-lR", str(mount / PROJECT)], capture_output=True, timeout=60)
    (mount / PROJECT / "participants.csv").read_bytes()
    for bad in ("no-such", "<id:0123456789abcdef01234567>", "participants.csv/x"):
        with pytest.raises(OSError):
            os.stat(mount / PROJECT / bad)
    log = mount.log()
    assert "GET" in log or "resolve" in log  # --debug logs requests
    cmdline = Path(f"/proc/{mount.proc.pid}/cmdline").read_bytes().decode()
    for secret in (demo_site.secret, demo_site.readonly_secret):
        assert secret not in log
        assert secret not in mount.output()
        assert secret not in cmdline

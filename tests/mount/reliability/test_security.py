"""Issue 7, item 6: security of a mount, on real mounts of real sandbox sites.

- The API key never appears in the daemon's log (even with --debug), in what `fwfs mount`
  prints when it fails, in the daemon's command line (unless given with --api-key, which
  the log then warns about), or in any file fwfs writes (spool, ~/.cache/fwfs); and what
  fwfs writes there no other user can read.
- The mount is private to the mounting user unless `-o allow_other`; with it, other users
  can read but not write (`default_permissions`).
- Labels and member names never make fwfs read or write outside its spool directory.
- TLS is verified: a certificate from a CA the machine does not trust, or for another host,
  fails `fwfs mount` with a clear message; trusting the CA (FW_SSL_CERT_FILE) mounts.
- The sandbox refuses requests without a valid key (401).

These tests run `fwfs mount` with an environment of their own (HOME, FW_SSL_CERT_FILE),
which mountkit.start_mount does not take, through `launch` below; the mount joins
mountkit.LIVE, so the watchdog and the teardown treat it like any other.
"""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import flywheel
import pytest
import requests
from mountkit import LIVE, Mount, is_mounted, stop_mount

from fwfs.testing.mounts import MountError, start_mount

pytestmark = pytest.mark.timeout(120)

SETPRIV = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


@pytest.fixture
def launch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Mount]]:
    """`launch(site, env={...}, args=[...], workdir=...)`: `fwfs mount MP -f --log-file LOG`
    with exactly the environment given on top of PATH (no --spool-dir unless in args)."""
    mounts: list[Mount] = []

    def start(
        site: Any,
        *,
        env: dict[str, str],
        args: list[str] | tuple[str, ...] = (),
        workdir: Path | None = None,
    ) -> Mount:
        workdir = workdir or tmp_path_factory.mktemp("secure-mount")
        try:
            mount = start_mount(site, workdir, bare_env=env, args=args, live=LIVE)
        except MountError as err:
            pytest.fail(str(err))
        mounts.append(mount)
        return mount

    yield start
    for m in reversed(mounts):
        stop_mount(m)


def mount_once(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`fwfs mount` as a user runs it (it goes to the background once mounted)."""
    full_env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **env}
    return subprocess.run(
        [sys.executable, "-m", "fwfs", "mount", *argv],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
        check=False,
    )


def scratch_site(start_site: Callable[..., Any], **options: Any) -> tuple[Any, Any, Any]:
    """A private site with g/P/sub/ses/acq holding notes.txt and scan.zip: (site, sdk, acq)."""
    site = start_site(demo=False, **options)
    fw = site.client()
    fw.add_group(flywheel.Group("g", "Security"))
    acq = (
        fw.get_group("g")
        .add_project(label="P")
        .add_subject(label="sub")
        .add_session(label="ses")
        .add_acquisition(label="acq")
    )
    acq.upload_file(flywheel.FileSpec("notes.txt", b"notes\n"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("dir/a.txt", b"member\n")
    acq.upload_file(flywheel.FileSpec("scan.zip", buf.getvalue()))
    return site, fw, acq


def files_under(root: Path) -> dict[Path, os.stat_result]:
    """Every entry under `root` (not following links), with its lstat."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            out[path] = path.lstat()
    return out


def readable_by_others(path: Path, top: Path) -> bool:
    """Whether a user other than the owner (and not in its group) could read `path`: it
    grants them read, and every directory from `top` down to it lets them through."""
    if not path.lstat().st_mode & (stat.S_IRGRP | stat.S_IROTH):
        return False
    here = path.parent
    while True:
        if not here.stat().st_mode & (stat.S_IXGRP | stat.S_IXOTH):
            return False
        if here == top:
            return True
        here = here.parent


def leaks(secret: str, root: Path) -> list[str]:
    found = []
    for path, st in files_under(root).items():
        if stat.S_ISREG(st.st_mode) and secret.encode() in path.read_bytes():
            found.append(str(path))
    return found


# ---- the API key -----------------------------------------------------------------------


def test_the_key_is_in_no_log_command_line_or_file(
    start_site: Callable[..., Any],
    launch: Callable[..., Mount],
    tmp_path: Path,
    record: Callable[[str, object], None],
) -> None:
    site, fw, acq = scratch_site(start_site)
    home = tmp_path / "home"
    home.mkdir()
    mount = launch(site, env={"HOME": str(home), "FWFS_API_KEY": site.api_key}, args=["--debug"])
    secret = site.secret
    checks = 0
    folder = mount / "g/P/sub/ses/acq"
    # Reads, a member, failures, and a write, all of which the debug log records.
    assert (folder / "notes.txt").read_bytes() == b"notes\n"
    assert (folder / "scan.zip.d/dir/a.txt").read_bytes() == b"member\n"
    with pytest.raises(FileNotFoundError):
        (folder / "absent.txt").read_bytes()
    with pytest.raises(PermissionError):
        os.unlink(folder / "notes.txt")  # EPERM without --allow-delete
    # While a file is being written, its bytes are in the spool: private, and key-free.
    spool_root = home / ".cache" / "fwfs"
    with open(folder / "new.txt", "wb") as f:
        f.write(b"being written\n")
        f.flush()
        staged = files_under(spool_root)
        assert any(p.name.endswith(".data") for p in staged), sorted(map(str, staged))
        for path, st in staged.items():
            if stat.S_ISREG(st.st_mode):
                assert not readable_by_others(path, home), f"{path}: {stat.filemode(st.st_mode)}"
                checks += 1
        assert leaks(secret, spool_root) == []
        cmdline = Path(f"/proc/{mount.proc.pid}/cmdline").read_bytes()
        assert secret.encode() not in cmdline
        checks += 2
    assert fw.download_file_from_container_as_data(acq.id, "new.txt") == b"being written\n"
    stop_mount(mount)
    log = mount.log()
    assert "GET" in log or "get" in log.lower()  # --debug did log requests
    assert secret not in log and secret not in mount.output()
    checks += 2
    everything = files_under(home)
    assert everything, "fwfs wrote nothing under HOME: the spool went elsewhere"
    for path, st in everything.items():
        if stat.S_ISREG(st.st_mode):
            assert secret.encode() not in path.read_bytes(), path
            assert not readable_by_others(path, home), (
                f"{path} is {stat.filemode(st.st_mode)} under a readable directory"
            )
            checks += 2
    record("security: key-leak and file-mode checks passed", checks)


def test_a_key_on_the_command_line_is_warned_about_and_still_kept_out_of_the_log(
    start_site: Callable[..., Any], launch: Callable[..., Mount], tmp_path: Path
) -> None:
    site, _fw, _acq = scratch_site(start_site)
    mount = launch(
        site,
        env={"HOME": str(tmp_path)},
        args=["--debug", "--api-key", site.api_key, "--spool-dir", str(tmp_path / "spool")],
    )
    assert os.listdir(mount / "g/P/sub/ses/acq")
    # The user chose to show it in `ps`: it is there, and the log says so.
    assert site.secret.encode() in Path(f"/proc/{mount.proc.pid}/cmdline").read_bytes()
    stop_mount(mount)
    assert "visible to other users in `ps`" in mount.log()
    assert site.secret not in mount.log() and site.secret not in mount.output()


def test_a_wrong_key_fails_the_mount_without_echoing_it(
    start_site: Callable[..., Any], tmp_path: Path
) -> None:
    site, _fw, _acq = scratch_site(start_site)
    wrong_secret = "Wrong-Secret-" + "q" * 20
    host = site.api_key.rsplit(":", 1)[0]
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "fwfs.log"
    for how in ("env", "argument"):
        key = f"{host}:{wrong_secret}"
        args = [str(mp), "--debug", "--log-file", str(log)]
        env = {"HOME": str(tmp_path)}
        if how == "env":
            env["FWFS_API_KEY"] = key
        else:
            args += ["--api-key", key]
        done = mount_once(args, env)
        assert done.returncode != 0, how
        assert not is_mounted(mp)
        message = done.stdout + done.stderr
        assert "401" in message or "key" in message.lower(), message
        assert wrong_secret not in message and wrong_secret not in log.read_text(), how
    # A key that does not even parse: the message says why, without the secret.
    done = mount_once([str(mp)], {"HOME": str(tmp_path), "FWFS_API_KEY": wrong_secret})
    assert done.returncode != 0 and "host" in done.stderr
    assert wrong_secret not in done.stdout + done.stderr


# ---- who may use the mount ---------------------------------------------------------------


def mount_options(mp: Path) -> set[str]:
    """The mount's options and its superblock options, from /proc/self/mountinfo."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mp):
                sep = fields.index("-")
                return set(fields[5].split(",")) | set(fields[sep + 3].split(","))
    raise AssertionError(f"{mp} is not in mountinfo")


def as_nobody(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SETPRIV, "sh", "-c", script, "sh", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user (setpriv)")
def test_the_mount_is_private_unless_allow_other(
    start_site: Callable[..., Any],
    launch: Callable[..., Mount],
    record: Callable[[str, object], None],
) -> None:
    site, _fw, _acq = scratch_site(start_site)
    # Mount points another user can reach: only the mount itself may refuse them.
    base = Path(tempfile.mkdtemp(prefix="fwfs-private-", dir="/tmp"))
    try:
        base.chmod(0o755)
        env = {"HOME": str(base), "FWFS_API_KEY": site.api_key}
        spool = ["--spool-dir", str(base / "spool")]
        private_dir, shared_dir = base / "private", base / "shared"
        private_dir.mkdir(mode=0o755)
        shared_dir.mkdir(mode=0o755)
        private = launch(site, env=env, args=spool, workdir=private_dir)
        (private_dir / "mnt").chmod(0o755)
        options = mount_options(private.path)
        assert "allow_other" not in options and "default_permissions" in options
        assert os.listdir(private.path) == ["g"]  # its owner gets in
        denied = as_nobody('ls "$1"', str(private.path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        denied = as_nobody('cat "$1"', str(private.path / "g/P/sub/ses/acq/notes.txt"))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        stop_mount(private)

        shared = launch(site, env=env, args=[*spool, "-o", "allow_other"], workdir=shared_dir)
        assert "allow_other" in mount_options(shared.path)
        folder = shared.path / "g/P/sub/ses/acq"
        read = as_nobody('cat "$1"', str(folder / "notes.txt"))
        assert read.returncode == 0 and read.stdout == "notes\n", read
        for script in (
            'echo x > "$1/new.txt"',
            'echo x >> "$1/notes.txt"',
            'mkdir "$1/../new-acq"',
            'rm "$1/notes.txt"',
        ):
            refused = as_nobody(script, str(folder))
            assert refused.returncode != 0 and "Permission denied" in refused.stderr, script
        assert sorted(os.listdir(folder)) == ["notes.txt", "scan.zip"]
        assert (folder / "notes.txt").read_bytes() == b"notes\n"
        record("security: other-user access checks passed", 8)
    finally:
        for m in list(LIVE):
            if str(m.path).startswith(str(base)):
                stop_mount(m)
        subprocess.run(["rm", "-rf", str(base)], check=False)


# ---- nothing outside the spool -----------------------------------------------------------

ESCAPING_LABELS = ["..", "../..", "../../../tmp", "/etc", "/", "..\\..", "~"]


def test_labels_and_member_names_never_lead_outside_the_spool(
    start_site: Callable[..., Any],
    launch: Callable[..., Mount],
    tmp_path: Path,
    record: Callable[[str, object], None],
) -> None:
    site, fw, acq = scratch_site(start_site)
    session = fw.get(acq.parents.session)
    escaping = {label: session.add_acquisition(label=label) for label in ESCAPING_LABELS}
    buf = io.BytesIO()
    slips = ["../../../../../../tmp/fwfs-slip", "/tmp/fwfs-abs", "../../spool/staging/x.data"]
    with zipfile.ZipFile(buf, "w") as z:
        for name in slips:
            z.writestr(name, b"slip\n")
    acq.upload_file(flywheel.FileSpec("slip.zip", buf.getvalue()))
    home = tmp_path / "home"
    home.mkdir()
    workdir = tmp_path / "mount"
    workdir.mkdir()
    spool = tmp_path / "spool"
    before_tmp = set(os.listdir("/tmp"))
    mount = launch(
        site,
        env={"HOME": str(home), "FWFS_API_KEY": site.api_key},
        args=["--spool-dir", str(spool)],
        workdir=workdir,
    )
    ses = mount / "g/P/sub/ses"
    names = {
        "..": "．．",
        "../..": "..／..",
        "../../../tmp": "..／..／..／tmp",
        "/etc": "／etc",
        "/": "／",
        "..\\..": "..\\..",
        "~": "~",
    }
    written = 0
    for label, name in names.items():
        assert os.getxattr(ses / name, "user.flywheel.label").decode() == label
        for file in ("x.txt", "..\\x.txt", "~"):
            (ses / name / file).write_bytes(f"{label}/{file}\n".encode())
            written += 1
        files = {f.name: f for f in fw.get(escaping[label].id).files}
        assert sorted(files) == sorted(["x.txt", "..\\x.txt", "~"]), label
    # mkdir of the names `..` and `.` typed as *Names* says, and a file in each.
    os.mkdir(mount / "g/P/．．")
    os.mkdir(mount / "g/P/．．/．")
    os.mkdir(mount / "g/P/．．/．/．．")
    deep = mount / "g/P/．．/．/．．/deep.txt"
    deep.write_bytes(b"deep\n")
    written += 1
    assert deep.read_bytes() == b"deep\n"
    # Zip members that point outside: read, all inside the member directory.
    members = mount / "g/P/sub/ses/acq/slip.zip.d"
    for dirpath, _dirs, filenames in os.walk(members):
        for f in filenames:
            assert Path(dirpath, f).read_bytes() == b"slip\n"
    stop_mount(mount)
    # Nothing beside the spool and the log, nothing under HOME but fwfs's own run files,
    # nothing new in /tmp by those names.
    assert sorted(os.listdir(workdir)) == ["fwfs.log", "mnt", "stderr.txt", "stdout.txt"]
    assert os.listdir(workdir / "mnt") == []
    assert {p.relative_to(home).parts[:3] for p in files_under(home)} <= {
        (".cache",),
        (".cache", "fwfs"),
        (".cache", "fwfs", "run"),
    }
    new_in_tmp = set(os.listdir("/tmp")) - before_tmp
    assert not {n for n in new_in_tmp if n.startswith("fwfs-slip") or n.startswith("fwfs-abs")}
    assert not Path("/etc/x.txt").exists()
    # The spool names its files by id only: no label or member name in a path.
    for path in files_under(spool):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", path.name), path
    assert "Traceback" not in mount.log()
    record("security: writes under escaping labels, all inside the spool", written)


# ---- TLS -----------------------------------------------------------------------------------


def tls_files(tmp_path: Path, *hosts: str) -> tuple[Path, Path, Path]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    cert_pem, key_pem, ca_pem = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    return cert_pem, key_pem, ca_pem


def test_tls_is_verified_and_a_certificate_from_an_unknown_ca_is_refused(
    start_site: Callable[..., Any],
    launch: Callable[..., Mount],
    tmp_path: Path,
    record: Callable[[str, object], None],
) -> None:
    cert, key, ca = tls_files(tmp_path, "127.0.0.1", "localhost")
    site = start_site(demo=False, tls_cert=cert, tls_key=key)
    assert site.url.startswith("https://") and "__force_insecure" not in site.api_key
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {"HOME": str(tmp_path), "FWFS_API_KEY": site.api_key}
    refused = mount_once([str(mp), "--log-file", str(tmp_path / "refused.log")], env)
    assert refused.returncode != 0 and not is_mounted(mp)
    assert "certificate" in refused.stderr.lower(), refused.stderr
    assert site.secret not in refused.stderr + refused.stdout
    # Another host's certificate, from a CA the client does trust: refused too.
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    cert2, key2, ca2 = tls_files(other_dir, "fwfs.example.org")
    other = start_site(demo=False, tls_cert=cert2, tls_key=key2)
    wrong_host = mount_once(
        [str(mp)], {**env, "FWFS_API_KEY": other.api_key, "FW_SSL_CERT_FILE": str(ca2)}
    )
    assert wrong_host.returncode != 0 and not is_mounted(mp)
    assert "certificate" in wrong_host.stderr.lower(), wrong_host.stderr
    # The control: trusting the site's CA, the same mount works.
    mount = launch(site, env={**env, "FW_SSL_CERT_FILE": str(ca)}, args=["--read-only"])
    assert os.listdir(mount.path) == []  # a site without groups
    record("security: TLS checks passed", 3)


# ---- the sandbox ---------------------------------------------------------------------------


def test_the_sandbox_refuses_requests_without_a_valid_key(start_site: Callable[..., Any]) -> None:
    site, _fw, acq = scratch_site(start_site)
    urls = [
        f"{site.api_url}/users/self",
        f"{site.api_url}/groups",
        f"{site.api_url}/acquisitions/{acq.id}",
        f"{site.api_url}/acquisitions/{acq.id}/files/notes.txt",
    ]
    wrong = [
        {},
        {"Authorization": "scitran-user not-the-key"},
        {"Authorization": f"Bearer {site.secret}x"},
        {"Authorization": site.secret},
        {"Authorization": f"scitran-user {site.secret[:-1]}"},
    ]
    for url in urls:
        for headers in wrong:
            got = requests.get(url, headers=headers, timeout=10)
            assert got.status_code == 401, (url, headers)
            assert site.secret not in got.text
        assert requests.get(url, headers=site.headers(), timeout=10).status_code == 200, url

"""The mount runner: `python -m fwfs mount MP -f` in a subprocess, for tests and benchmarks.

`start_mount(site, workdir, ...)` starts the daemon with the site's key in its environment
and returns once the kernel lists the mount; `Mount.unmount()` takes it down whatever state
it is in (`fusermount3 -u`, then a forced lazy unmount, then SIGTERM and SIGKILL), and
`Watchdog` kills daemons that outlive a deadline, because a syscall blocked on a hung FUSE
daemon cannot be interrupted: killing the daemon aborts the connection and the syscall
returns (ENOTCONN).

Mount state comes from /proc/self/mounts, which never touches a mount, so a hung daemon
cannot hang the runner (os.path.ismount stats the mount point). Only the standard library.
The key reaches the daemon in FWFS_API_KEY, never on its command line, and a message of this
module never quotes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from fwfs.linux import mount_table
from fwfs.testing.sites import Site, tail_text

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 15.0
FUSERMOUNT = "fusermount3"


class MountError(RuntimeError):
    """The daemon exited before mounting, or did not mount in time."""


# ---- mount state ----------------------------------------------------------------------------


def mounted_paths() -> list[str]:
    """Every mount point, once per mount (stacked mounts repeat): `linux.mount_table`."""
    return [point for point, _ in mount_table()]


def is_mounted(path: Path | str) -> bool:
    return str(Path(path).absolute()) in mounted_paths()


def fusermount(path: Path, lazy: bool = False) -> subprocess.CompletedProcess[str]:
    """`fusermount3 -u PATH` (`-uz` with `lazy`), to its end."""
    argv = [FUSERMOUNT, "-u", *(["-z"] if lazy else []), str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=EXIT_TIMEOUT, check=False)


def force_unmount(path: Path) -> list[str]:
    """Detach `path` now, busy or dead ("transport endpoint not connected"): `fusermount3
    -uz`, else `umount -l` (root, or a machine without fusermount3). What failed, if any."""
    problems: list[str] = []
    if shutil.which(FUSERMOUNT):
        result = fusermount(path, lazy=True)
        if result.returncode == 0:
            return problems
        problems.append(f"{FUSERMOUNT} -uz failed: {result.stderr.strip()}")
    if os.geteuid() == 0 or not shutil.which(FUSERMOUNT):
        done = subprocess.run(
            ["umount", "-l", str(path)],
            capture_output=True,
            text=True,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            problems.append(f"umount -l failed: {done.stderr.strip()}")
    return problems


# ---- processes --------------------------------------------------------------------------------


def fwfs_env(key: str | None = None, **env: str) -> dict[str, str]:
    """This process's environment without any FW_ or FWFS_ variable (no key of the user's
    leaks in), with FWFS_API_KEY=`key` if given and `env` on top."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("FW_", "FWFS_"))}
    if key is not None:
        out["FWFS_API_KEY"] = key
    out.update(env)
    return out


def run_fwfs(
    *args: str, key: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m fwfs ARGS` to its end (`unmount`, or `mount` without -f), in
    `fwfs_env(key, **env)`; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "fwfs", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=fwfs_env(key, **env),
    )


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since the process started) of `pid`, in KiB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0])
    return out


def _redact(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<secret>")
    return text


# ---- one mount --------------------------------------------------------------------------------


class Mount:
    """One `fwfs mount -f` daemon (the process is the daemon: its pid is the one to sample)
    and its mount point. Its output is in `workdir` (stdout.txt, stderr.txt, fwfs.log)."""

    def __init__(
        self,
        path: Path,
        proc: subprocess.Popen[bytes],
        workdir: Path,
        site: Site | None,
        argv: list[str],
        spool: Path,
    ) -> None:
        self.path = path
        self.proc = proc
        self.workdir = workdir
        self.site = site
        self.argv = argv
        self.spool = spool  # its --spool-dir
        self.log_file = workdir / "fwfs.log"

    def __truediv__(self, other: str) -> Path:
        return self.path / other

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def output(self) -> str:
        """The daemon's stdout and stderr."""
        return "".join(tail_text(self.workdir / n, 1 << 30) for n in ("stdout.txt", "stderr.txt"))

    def memory(self) -> dict[str, int]:
        return memory_kib(self.pid)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon: the kernel then fails every pending request (ENOTCONN)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def unmount(self) -> list[str]:
        """Unmount and stop the daemon, whatever state it is in. Returns what went wrong."""
        problems: list[str] = []
        if is_mounted(self.path):
            result = fusermount(self.path)
            if result.returncode != 0:
                problems.append(f"{FUSERMOUNT} -u failed: {result.stderr.strip()}")
                problems += force_unmount(self.path)
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            problems.append("fwfs did not exit after the unmount: terminated")
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                problems.append("fwfs ignored SIGTERM: killed")
                self.proc.kill()
                self.proc.wait(timeout=5)
        if is_mounted(self.path):
            # A killed daemon leaves a dead mount behind ("transport endpoint not connected").
            force_unmount(self.path)
        return problems

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"<Mount {self.path} of {self.site!r}>"


def start_mount(
    site: Site,
    workdir: Path,
    *,
    key: str | None = None,
    ttl: float | None = None,
    negative_ttl: float | None = None,
    cache_size: str | int | None = None,
    args: Sequence[str] = (),
    read_only: bool = False,
    mountpoint: Path | None = None,
    timeout: float = MOUNT_TIMEOUT,
    live: list[Mount] | None = None,
    bare_env: Mapping[str, str] | None = None,
) -> Mount:
    """Run `python -m fwfs mount MP -f --log-file workdir/fwfs.log` with FWFS_API_KEY set
    (`key`, default the site's read-write one); return once the mount is listed.

    MP is `mountpoint`, default `workdir/mnt`. Mounts are writable: unless `args` names a
    `--spool-dir`, the spool is `workdir/spool` (`mount.spool`), so no run touches the
    user's. `read_only=True` adds `--read-only`. The new mount joins `live` (if given)
    before it is waited for, so that a watchdog over `live` covers a hung start too. Raises
    MountError, with the daemon's output and log, if it exits or never mounts (then it is
    taken down).

    `bare_env`: the daemon gets exactly this environment on top of PATH and LANG (no
    FWFS_API_KEY, no trust of the site's CA, no `--spool-dir` unless `args` names one), for
    tests of what fwfs does with its environment: where the key comes from, the default
    spool."""
    workdir.mkdir(parents=True, exist_ok=True)
    mp = mountpoint if mountpoint is not None else workdir / "mnt"
    mp.mkdir(parents=True, exist_ok=True)
    if is_mounted(mp):
        raise MountError(f"{mp} is mounted already")
    argv = [sys.executable, "-m", "fwfs", "mount", str(mp), "-f"]
    argv += ["--log-file", str(workdir / "fwfs.log")]
    args = list(args)
    spool = workdir / "spool"
    if "--spool-dir" in args:
        spool = Path(args[args.index("--spool-dir") + 1])
    elif bare_env is None:
        argv += ["--spool-dir", str(spool)]
    if read_only:
        argv.append("--read-only")
    if ttl is not None:
        argv += ["--metadata-ttl", str(ttl)]
    if negative_ttl is not None:
        argv += ["--negative-ttl", str(negative_ttl)]
    if cache_size is not None:
        argv += ["--cache-size", str(cache_size)]
    argv += args
    key = key if key is not None else site.api_key
    env = fwfs_env(key)
    if bare_env is not None:
        env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8", **bare_env}
        key = bare_env.get("FWFS_API_KEY", key)  # what the error messages must not show
    elif site.ca_cert is not None:
        # A private CA reaches the daemon the way a company CA reaches a user: through the
        # OS trust store (`Site.subprocess_env`), never FW_SSL_CERT_FILE or certifi.
        env = site.subprocess_env(env)
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=workdir
        )
    mount = Mount(mp, proc, workdir, site, argv, spool)
    if live is not None:
        live.append(mount)
    deadline = time.monotonic() + timeout
    while not is_mounted(mp):
        if proc.poll() is not None:
            raise MountError(
                f"fwfs mount exited with {proc.returncode} before mounting\n"
                + _redact(f"output:\n{mount.output()}\nlog:\n{mount.log()}", key)
            )
        if time.monotonic() > deadline:
            mount.unmount()
            raise MountError(
                f"fwfs mount not mounted after {timeout:.0f}s\n"
                + _redact(f"output:\n{mount.output()}\nlog:\n{mount.log()}", key)
            )
        time.sleep(0.02)
    return mount


class Watchdog:
    """Kills every daemon of `live` once `seconds` have passed, unless cancelled first: a
    test or benchmark stuck in a syscall on a hung mount then gets ENOTCONN and can report
    instead of hanging. `fired` tells afterwards whether it had to. A context manager."""

    def __init__(self, live: list[Mount], seconds: float) -> None:
        self.live = live
        self.fired = threading.Event()
        self._timer = threading.Timer(max(1.0, seconds), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired.set()
        for mount in list(self.live):
            mount.kill()

    def start(self) -> Watchdog:
        self._timer.start()
        return self

    def cancel(self) -> None:
        self._timer.cancel()

    def __enter__(self) -> Watchdog:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cancel()

"""The site runner: `python -m fwfs serve` in a subprocess, for tests and benchmarks.

`start_site(workdir, **options)` starts a sandbox site and returns once its ready file is
there; `Site` holds what the ready file announced (URL, keys, CA, link), reads the site's
access log and stops the process. Each keyword option becomes a `fwfs serve` flag
(`signed_url=True` -> `--signed-url`, `big_file_mb=64` -> `--big-file-mb 64`).

Only the standard library: the site is a subprocess, so nothing here needs the SDK or
`requests` (tests/conftest.py adds an SDK client on top). The keys are secrets: they are in
`Site` and the ready file (mode 0600), never in a message of this module. `fwfs serve`
prints them on stdout, so stdout and stderr go to separate files and a failure quotes only
stderr.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fwfs.config import parse_api_key

READY_TIMEOUT = 90.0  # seeding the demo (DICOM series, NIfTI volumes) takes a few seconds
STOP_TIMEOUT = 15.0


class SiteError(RuntimeError):
    """The site exited before it was ready, or was not ready in time."""


def stop_process(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM, wait, then SIGKILL. Returns the exit status (negative: killed)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return int(proc.returncode)


def wait_until(
    predicate: Callable[[], object],
    timeout: float = 30.0,
    what: str = "the condition",
    step: float = 0.05,
) -> float:
    """Poll `predicate()` every `step` seconds until true; TimeoutError after `timeout`.
    Returns the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: still not true after {timeout:.0f} s")
        time.sleep(step)
    return time.monotonic() - start


def clean_env(prefixes: tuple[str, ...] = ("FW_",)) -> dict[str, str]:
    """This process's environment without the variables starting with `prefixes`, so that no
    setting (or key) of the user's reaches a process started for a test."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


def serve_flags(options: Mapping[str, Any]) -> list[str]:
    """`fwfs serve` flags from keywords: True -> the bare flag, False/None -> left out."""
    flags: list[str] = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value not in (False, None):
            flags += [flag, str(value)]
    return flags


def tail_text(path: Path, chars: int = 4000) -> str:
    """The end of a text file, or "" when it does not exist."""
    if not path.exists():
        return ""
    return path.read_text(encoding="utf-8", errors="replace")[-chars:]


class AccessLog:
    """The access log (one JSON line per request) read by byte offset, with clock times.

    The site logs a request when it has answered it, with its duration but no clock time; a
    thread tails the log and stamps each line as it appears, so that a run's requests can be
    placed on its timeline (start = stamp - duration, to within the tail's poll interval)."""

    POLL = 0.002

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamps: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tail, name="access-log-tail", daemon=True)
        self._thread.start()

    def _tail(self) -> None:
        offset = 0
        pending = b""
        while not self._stop.is_set():
            try:
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                now = time.monotonic()
                start = offset - len(pending)
                pending += data
                offset += len(data)
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._stamps[start] = now
                    start += len(line) + 1
            time.sleep(self.POLL)

    def close(self) -> None:
        self._stop.set()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def settle(self, quiet: float = 0.15, timeout: float = 10.0) -> int:
        """The log's size once it has not grown for `quiet` seconds: the site writes a
        request's line just after answering it, and readahead may still be landing."""
        deadline = time.monotonic() + timeout
        size = self._size()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self._size()
            if now == size:
                break
            size = now
        return size

    def mark(self) -> int:
        return self.settle()

    def since(self, mark: int) -> list[dict[str, Any]]:
        """The entries after `mark`; each with `t_end`, the monotonic time it was seen."""
        end = self.settle()
        time.sleep(3 * self.POLL)  # the tail stamps what settle saw
        with open(self.path, "rb") as f:
            f.seek(mark)
            data = f.read(end - mark)
        out = []
        offset = mark
        for line in data.split(b"\n"):
            if line.strip():
                entry = json.loads(line)
                if offset in self._stamps:
                    entry["t_end"] = self._stamps[offset]
                out.append(entry)
            offset += len(line) + 1
        return out


class Site:
    """A running `fwfs serve` subprocess and what its ready file announced."""

    def __init__(
        self,
        info: dict[str, Any],
        proc: subprocess.Popen[bytes],
        workdir: Path,
        access_log_path: Path,
        argv: list[str],
    ) -> None:
        self.info = info
        self.proc = proc
        self.workdir = workdir
        self.argv = argv
        self.url: str = info["url"]
        self.api_url = self.url + "/api"
        self.api_key: str = info["api_key"]
        self.readonly_api_key: str = info["readonly_api_key"]
        # Grace: read-write member of flywheel/Anxiety Study only (not of group flywheel).
        self.project_member_api_key: str = info["project_member_api_key"]
        # --private-ca: the PEM of the site's own CA (in no trust store); None for plain HTTP.
        self.ca_cert: Path | None = Path(info["ca_cert"]) if info.get("ca_cert") else None
        # --redirect-downloads: where downloads are redirected to.
        self.storage_url: str | None = info.get("storage_url")
        # --rtt-ms/--bandwidth-mbit: {"rtt_ms", "bandwidth_mbit", "pid"} of the link, else None.
        self.link: dict[str, Any] | None = info.get("link")
        self.data = Path(info["data"])
        self.pid: int = info["pid"]
        self.access_log_path = access_log_path
        self.port = int(self.url.rsplit(":", 1)[1])
        self._tail: AccessLog | None = None

    # ---- keys -------------------------------------------------------------------------

    @staticmethod
    def secret_of(api_key: str) -> str:
        """The secret part of an SDK key (`host:port[:__force_insecure]:SECRET`)."""
        return api_key.rsplit(":", 1)[1]

    @property
    def secret(self) -> str:
        return self.secret_of(self.api_key)

    @property
    def readonly_secret(self) -> str:
        return self.secret_of(self.readonly_api_key)

    def key(self, readonly: bool = False, member: bool = False) -> str:
        """Ada's key; Rosalind's with `readonly`; Grace's (project member) with `member`."""
        if member:
            return self.project_member_api_key
        return self.readonly_api_key if readonly else self.api_key

    def headers(self, readonly: bool = False, member: bool = False) -> dict[str, str]:
        """The Authorization header the SDK sends, for raw HTTP with `requests`."""
        return {"Authorization": f"scitran-user {self.secret_of(self.key(readonly, member))}"}

    @property
    def authorization(self) -> str:
        """Ada's Authorization header value, as fwfs derives it from her key."""
        return parse_api_key(self.api_key)[1]

    def set_faults(self, **switches: int) -> dict[str, int]:
        """The sandbox's fault switches (`POST /sandbox/faults`, docs/SANDBOX.md), e.g.
        `fail_uploads=3`: the next three uploads answer 503. Returns what is armed now;
        raises SiteError if the site does not echo a switch as set."""
        request = urllib.request.Request(
            self.url + "/sandbox/faults",
            data=json.dumps(switches).encode(),
            headers={**self.headers(), "Content-Type": "application/json"},
            method="POST",
        )
        verify = self.verify
        context = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else None
        with urllib.request.urlopen(request, timeout=10, context=context) as resp:
            state: dict[str, int] = json.load(resp)
        if any(state.get(name) != value for name, value in switches.items()):
            raise SiteError(f"fault switches {switches} not armed: the site says {state}")
        return state

    # ---- trust ------------------------------------------------------------------------

    @property
    def verify(self) -> str | bool:
        """`requests`' `verify=` for this site: the private CA's PEM, or True."""
        return str(self.ca_cert) if self.ca_cert is not None else True

    def trust_bundle(self) -> Path | None:
        """The OS trust store with the site's private CA installed: the system bundle plus
        the CA, as a company CA is installed on a real machine (not into certifi)."""
        if self.ca_cert is None:
            return None
        bundle = self.workdir / "os-trust-bundle.pem"
        if not bundle.exists():
            system = ssl.get_default_verify_paths().openssl_cafile
            roots = Path(system).read_text() if Path(system).is_file() else ""
            bundle.write_text(roots + "\n" + self.ca_cert.read_text())
        return bundle

    def trust_env(self) -> dict[str, str]:
        """What a subprocess's environment adds to trust the site through the OS trust store
        (OpenSSL reads SSL_CERT_FILE). Empty for a site without a private CA."""
        bundle = self.trust_bundle()
        return {} if bundle is None else {"SSL_CERT_FILE": str(bundle)}

    def subprocess_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default os.environ) plus `trust_env()`, without REQUESTS_CA_BUNDLE and
        CURL_CA_BUNDLE: this machine presets them to the system bundle, and they would
        decide a `requests` client's trust before any trust store is asked."""
        env = dict(os.environ if base is None else base)
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            env.pop(name, None)
        return {**env, **self.trust_env()}

    # ---- the access log ---------------------------------------------------------------

    def access_log(self) -> list[dict[str, Any]]:
        """Every request so far, one dict per access-log line."""
        if not self.access_log_path.exists():
            return []
        lines = self.access_log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def log_mark(self) -> int:
        """How many requests the log holds now: pass it as `since` to see only later ones."""
        return len(self.access_log())

    def requests_since(self, mark: int, settle: float = 0.1) -> list[dict[str, Any]]:
        """The entries after `mark`, once the log has stopped growing: the site writes a
        request's line just after answering it, so late lines get a moment."""
        seen = -1
        entries: list[dict[str, Any]] = []
        while len(entries) != seen:
            seen = len(entries)
            time.sleep(settle)
            entries = self.access_log()[mark:]
        return entries

    def quiet_mark(self) -> int:
        """`log_mark()` once the lines of requests already answered are in the log."""
        return len(self.requests_since(0))

    def wait_for_log(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int = 1,
        timeout: float = 5.0,
        since: int = 0,
    ) -> list[dict[str, Any]]:
        """The log entries (after the first `since`) matching `predicate`, once there are at
        least `count` of them, or whatever matched when `timeout` ran out.

        The server writes a request's line after it has sent the response, so the client
        can see the answer a moment before the log does.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.access_log()[since:] if predicate(e)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    @property
    def tail(self) -> AccessLog:
        """The access log by byte offset with clock times (a tailing thread, started on
        first use and stopped with the site): what a benchmark places on its timeline."""
        if self._tail is None:
            self._tail = AccessLog(self.access_log_path)
        return self._tail

    # ---- process ----------------------------------------------------------------------

    def stderr(self) -> str:
        path = self.workdir / "stderr.txt"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait, then SIGKILL. Returns the exit status (negative: killed)."""
        if self._tail is not None:
            self._tail.close()
        return stop_process(self.proc, timeout)

    def __repr__(self) -> str:
        return f"<Site {self.url} data={self.data}>"


def start_site(
    workdir: Path,
    *,
    demo: bool = True,
    data: Path | None = None,
    port: int = 0,
    timeout: float = READY_TIMEOUT,
    extra: tuple[str, ...] | list[str] = (),
    site_class: type[Site] = Site,
    **options: Any,
) -> Site:
    """Run `python -m fwfs serve` and return once its ready file exists; `options` become
    flags (`serve_flags`), `extra` is appended as given. `site_class` is what is returned
    (a subclass adds, say, an SDK client).

    The data directory defaults to `workdir/data`; the ready file, the access log and the
    process's stdout and stderr are in `workdir`. Raises SiteError, with the server's stderr,
    if the process dies or is not ready within `timeout` (then it is killed).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else workdir / "data"
    ready = workdir / "ready.json"
    access_log = workdir / "access.log"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "fwfs", "serve", "--port", str(port), "--data", str(data)]
    argv += ["--ready-file", str(ready), "--access-log", str(access_log)]
    if demo:
        argv.append("--demo")
    argv += serve_flags(options) + list(extra)
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=clean_env(), cwd=workdir
        )
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise SiteError(
                f"fwfs serve exited with {proc.returncode} before it was ready\n"
                f"argv: {argv}\nstderr:\n{tail_text(workdir / 'stderr.txt')}"
            )
        if time.monotonic() > deadline:
            stop_process(proc, timeout=5)
            raise SiteError(
                f"fwfs serve not ready after {timeout:.0f}s\nargv: {argv}\n"
                f"stderr:\n{tail_text(workdir / 'stderr.txt')}"
            )
        time.sleep(0.05)
    info = json.loads(ready.read_text(encoding="utf-8"))
    return site_class(info, proc, workdir, access_log, argv)

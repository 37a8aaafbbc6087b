"""The mount's control channel: `fwfs status` and `fwfs refresh` ask a running daemon.

Nothing is added to the mounted tree: the daemon listens on a Unix socket beside its pid
file (`daemon.control_socket`: under ~/.cache/fwfs/run/, a directory of mode 0700; the
socket itself 0600), and answers only its own user, checked with SO_PEERCRED. The client
checks the other way too: the socket must be served by its own user, so nobody else's
process can stand in for the daemon.

The protocol: one connection per question; the client sends one JSON object and a newline
(`{"op": "status"}`, `{"op": "refresh", "path": "/group/project"}`), the daemon answers
one JSON object and a newline (`{"ok": true, "result": …}` or `{"ok": false, "error":
"…"}`) and closes. The CLI side imports nothing of the mount (the daemon module only, for the path).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from fwfs.daemon import control_socket
from fwfs.linux import mount_table

log = logging.getLogger("fwfs.control")

PROTOCOL = 1
MAX_MESSAGE = 1 << 20
TIMEOUT = 10.0
# sun_path holds 108 bytes with its NUL.
_SUN_PATH = 107

Handler = Callable[[dict[str, Any]], Any]


class ControlError(Exception):
    """The daemon could not be asked, or refused, or answered an error: the message says
    which, for the user."""


# ---- mounts ---------------------------------------------------------------------------------


def fwfs_mounts() -> list[Path]:
    """Mount points of fwfs mounts (`linux.mount_table`, which touches no mount)."""
    try:
        return [Path(point) for point, kind in mount_table() if kind == "fuse.fwfs"]
    except OSError:
        return []


def mount_of(path: Path) -> tuple[Path, str] | None:
    """The fwfs mount holding `path` and the path inside it ("/a/b"), or None. `path` is
    made absolute without resolving symlinks: resolving would stat inside the mount."""
    target = Path(os.path.normpath(path.expanduser().absolute()))
    best: Path | None = None
    for point in fwfs_mounts():
        if (target == point or point in target.parents) and (
            best is None or len(point.parts) > len(best.parts)
        ):
            best = point
    if best is None:
        return None
    return best, "/" + "/".join(target.parts[len(best.parts) :])


# ---- the server (in the mount's process) ----------------------------------------------------


@contextlib.contextmanager
def _reachable(path: Path) -> Iterator[str]:
    """`path` as an address bind and connect take: a path too long for sun_path goes
    through /proc/self/fd and its directory, opened here."""
    if len(os.fsencode(path)) <= _SUN_PATH:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _read_message(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("message too long")
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError("a message is a JSON object")
    return message


def _send(conn: socket.socket, message: Mapping[str, Any]) -> None:
    conn.sendall(json.dumps(message, sort_keys=True).encode() + b"\n")


class ControlServer:
    """Serves `handlers` (op -> handler(request) -> result) on a Unix socket at `path`, one
    connection at a time on a daemon thread, to processes of user `uid` only."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler], uid: int | None = None):
        self.path = path
        self._handlers = dict(handlers)
        self._uid = os.getuid() if uid is None else uid
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; OSError if the socket cannot be made (the mount goes on without)."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A socket left by a daemon that was killed: this mount point is ours now.
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)  # born 0600, not chmod'ed after a window
            try:
                with _reachable(self.path) as address:
                    sock.bind(address)
            finally:
                os.umask(old)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        self._inode = self.path.stat().st_ino
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="fwfs-control", daemon=True)
        self._thread.start()

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        # Only our own socket: a later mount of this point may have replaced it.
        with contextlib.suppress(OSError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()

    def _serve(self) -> None:
        while True:
            sock = self._sock
            if sock is None:
                return
            try:
                conn, _ = sock.accept()
            except OSError:
                if self._sock is None:
                    return
                continue
            with conn:
                try:
                    conn.settimeout(TIMEOUT)
                    self._answer(conn)
                except Exception as err:  # one bad question must not end the channel
                    log.info("control: a request failed: %s", err)

    def _answer(self, conn: socket.socket) -> None:
        pid, uid, _ = _peer(conn)
        if uid != self._uid:
            log.warning("control: refused a request from uid %d (pid %d)", uid, pid)
            _send(conn, {"ok": False, "error": "refused: only the user who mounted may ask"})
            return
        try:
            request = _read_message(conn)
        except ValueError as err:
            _send(conn, {"ok": False, "error": f"bad request: {err}"})
            return
        handler = self._handlers.get(str(request.get("op")))
        if handler is None:
            _send(conn, {"ok": False, "error": f"unknown op {request.get('op')!r}"})
            return
        try:
            result = handler(request)
        except Exception as err:
            _send(conn, {"ok": False, "error": str(err)})
            return
        _send(conn, {"ok": True, "protocol": PROTOCOL, "result": result})


# ---- the client (`fwfs status`, `fwfs refresh`) ---------------------------------------------


def ask(path: Path, request: Mapping[str, Any], timeout: float = TIMEOUT) -> Any:
    """Send `request` to the daemon at socket `path`; its result, or ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            with _reachable(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError("no fwfs daemon answers for it (was it mounted by you?)") from None
        except OSError as err:
            raise ControlError(f"cannot reach its daemon: {err.strerror or err}") from None
        _, uid, _ = _peer(sock)
        if uid != os.getuid():
            raise ControlError(f"its control socket belongs to uid {uid}, not to you")
        try:
            _send(sock, request)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # a refusal is sent without reading the question: it is there to read
        try:
            answer = _read_message(sock)
        except (OSError, ValueError) as err:
            raise ControlError(f"the daemon did not answer: {err}") from None
    if not answer.get("ok"):
        raise ControlError(str(answer.get("error") or "the daemon refused"))
    return answer.get("result")


# ---- the commands ---------------------------------------------------------------------------


def _socket_of(point: Path) -> Path:
    # The path as /proc/self/mounts lists it: resolved already, and nothing stat'ed.
    return control_socket(str(point))


def status_command(mountpoint: Path, as_json: bool, out: IO[str], err: IO[str]) -> int:
    """`fwfs status MOUNTPOINT [--json]`."""
    found = mount_of(mountpoint)
    if found is None or found[1] != "/":
        print(f"fwfs: {mountpoint} is not an fwfs mount point", file=err)
        return 1
    point = found[0]
    try:
        report = ask(_socket_of(point), {"op": "status"})
    except ControlError as e:
        print(f"fwfs: cannot ask the mount at {point}: {e}", file=err)
        return 1
    if as_json:
        json.dump(report, out, indent=2, sort_keys=True)
        out.write("\n")
    else:
        out.write(render(report))
    return 0


def refresh_command(path: Path, out: IO[str], err: IO[str]) -> int:
    """`fwfs refresh PATH`."""
    found = mount_of(path)
    if found is None:
        print(f"fwfs: {path} is not inside an fwfs mount", file=err)
        return 1
    point, inside = found
    try:
        result = ask(_socket_of(point), {"op": "refresh", "path": inside})
    except ControlError as e:
        print(f"fwfs: cannot ask the mount at {point}: {e}", file=err)
        return 1
    forgotten = result.get("forgotten", 0) if isinstance(result, dict) else 0
    print(f"fwfs: forgot {forgotten} listing(s) under {path}; the next use lists them", file=out)
    return 0


def _size(n: Any) -> str:
    value = float(n) if isinstance(n, (int, float)) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _ratio(hits: Any, misses: Any) -> str:
    total = (hits or 0) + (misses or 0)
    return f"{hits} hits, {misses} misses" + (f" ({100 * hits / total:.0f}% hits)" if total else "")


def render(report: Mapping[str, Any]) -> str:
    """The human-readable `fwfs status`."""
    lines = [
        f"mount     {report.get('mountpoint')} (pid {report.get('pid')}, up "
        f"{report.get('uptime_s')} s{', read-only' if report.get('read_only') else ''})",
        f"site      {report.get('site')}",
    ]
    memory = report.get("memory_cache") or {}
    lines.append(
        f"memory    {_ratio(memory.get('hits', 0), memory.get('misses', 0))}; "
        f"{_size(memory.get('bytes_cached'))} of {_size(memory.get('max_bytes'))} in "
        f"{memory.get('blocks', 0)} blocks"
    )
    disk = report.get("disk_cache")
    if isinstance(disk, dict):
        lines.append(
            f"disk      {_ratio(disk.get('hits', 0), disk.get('misses', 0))}"
            + f"; {_size(disk.get('bytes_on_disk'))} of {_size(disk.get('max_bytes'))} on disk"
        )
    else:
        lines.append(f"disk      {disk}")
    lines.append(
        f"bytes     served {_size(report.get('bytes_served'))}, "
        f"fetched {_size(report.get('bytes_fetched'))}"
    )
    requests = report.get("requests") or {}
    lines.append(f"requests  {requests.get('total', 0)}")
    by_kind = requests.get("by_kind") or {}
    if by_kind:
        lines.append(
            f"  {'kind':<9}{'count':>7}{'errors':>8}{'bytes':>12}"
            f"{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
        )
        for kind, k in sorted(by_kind.items()):
            lines.append(
                f"  {kind:<9}{k['count']:>7}{k['errors']:>8}{_size(k['bytes']):>12}"
                f"{k['p50_ms']:>10.1f}{k['p90_ms']:>10.1f}{k['p99_ms']:>10.1f}"
            )
    ups = report.get("uploads") or {}
    counts = ", ".join(f"{len(ups.get(s) or [])} {s}" for s in ("running", "queued", "failed"))
    lines.append(f"uploads   {counts}")
    for state in ("running", "queued", "failed"):
        for item in ups.get(state) or []:
            why = f": {item['error']}" if item.get("error") else ""
            lines.append(f"  {state:<8}{item.get('path')} ({_size(item.get('size'))}){why}")
    errors = report.get("errors") or {}
    shown = ", ".join(f"{name} {n}" for name, n in errors.items()) or "none"
    lines.append(f"errors    {shown}")
    return "\n".join(lines) + "\n"

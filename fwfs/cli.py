"""Command line: `fwfs serve`, `mount`, `unmount`, `demo`, `doctor`, `status`, `refresh`,
`cache` and `prefetch`.

The only place that reads argv. The flags of the commands that mount or reach a site come
from the option table (fwfs/options.py); the sandbox's are declared here.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from fwfs import __version__
from fwfs.options import add_arguments


def _serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        help="site directory (SQLite + file bytes); default: a temporary directory removed on exit",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks any free port")
    p.add_argument(
        "--ready-file",
        type=Path,
        help="write {url, api_key, readonly_api_key} here (mode 0600) once listening",
    )
    p.add_argument("--access-log", type=Path, help="one JSON line per request")
    p.add_argument(
        "--range-quirk",
        action="store_true",
        help="honour Range only with ?view=true, as the real server does",
    )
    p.add_argument(
        "--signed-url", action="store_true", help="advertise signed-URL uploads in /api/config"
    )
    p.add_argument("--tls-cert", type=Path)
    p.add_argument("--tls-key", type=Path)
    p.add_argument(
        "--big-file-mb",
        type=int,
        default=0,
        help="add a file of N MiB of random bytes (benchmarks)",
    )
    p.add_argument("--scale", type=int, default=0, help="add a project of N sessions (benchmarks)")
    real = p.add_argument_group("real-server behaviours (docs/SANDBOX.md)")
    real.add_argument(
        "--strict",
        action="store_true",
        help="all of the below but --redirect-ignores-range and --old-core",
    )
    for flag, text in (
        ("--trim-resolve", "resolve children without files/info/tags, as the real resolver"),
        ("--trim-list-info", "list answers keep only info.BIDS (and info_exists) unless asked"),
        ("--gate-subjects", "subjects only for clients sending x-accept-feature subject-container"),
        ("--strict-permissions", "members see and write only their groups/projects"),
        ("--redirect-downloads", "downloads answer 302 to a signed URL on a storage listener"),
        ("--redirect-ignores-range", "storage answers 200 with the whole file despite Range"),
        ("--analysis-io-split", "/analyses/{id}/files serves outputs only, /inputs inputs"),
        ("--audit-trail", "DELETE needs a valid delete_reason (else 422)"),
        ("--refuse-encoded-slash", "404 for %%2F in a file-name segment"),
        ("--old-core", "a 2019 core: no file move, no file_id/version, no user_id"),
        ("--private-ca", "HTTPS with a CA of its own (its PEM: ca_cert in the ready file)"),
    ):
        real.add_argument(flag, action="store_true", help=text)
    real.add_argument(
        "--default-page-limit", type=int, help="finders without limit answer N (strict: 100)"
    )
    real.add_argument("--max-limit", type=int, help="limit above M answers 422 (strict: 500)")
    real.add_argument(
        "--info-delay", type=float, help="seconds before zip info/member answers (strict: 2)"
    )
    # Tests shorten the signed URLs' life instead of waiting 60 s.
    real.add_argument("--signed-url-ttl", type=float, default=60.0, help=argparse.SUPPRESS)
    link = p.add_argument_group("emulated network link (docs/SANDBOX.md)")
    link.add_argument(
        "--rtt-ms",
        type=_non_negative,
        default=0.0,
        help="round trip added to every connection's bytes, and to its handshake",
    )
    link.add_argument(
        "--bandwidth-mbit",
        type=_non_negative,
        help="rate of the link each way, shared by all connections (default: no limit)",
    )
    p.add_argument("-v", "--verbose", action="store_true")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, not {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fwfs", description="A FUSE filesystem for Flywheel.")
    parser.add_argument("--version", action="version", version=f"fwfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the sandbox: a Flywheel-compatible local site")
    _serve_args(serve)
    serve.add_argument("--demo", action="store_true", help="seed the demo data")
    mount = sub.add_parser("mount", help="mount a Flywheel site")
    mount.add_argument("mountpoint", type=Path)
    add_arguments(mount, "mount")
    doctor = sub.add_parser(
        "doctor", help="probe a site (read-only) and report what the mount will meet there"
    )
    add_arguments(doctor, "doctor")
    unmount = sub.add_parser("unmount", help="unmount a mounted site")
    unmount.add_argument("mountpoint", type=Path)
    add_arguments(unmount, "unmount")
    status = sub.add_parser(
        "status",
        help="what a running mount has done: caches, bytes, requests, uploads, errors",
    )
    status.add_argument("mountpoint", type=Path)
    add_arguments(status, "status")
    refresh = sub.add_parser(
        "refresh", help="forget the listings under PATH now: the next use lists from the site"
    )
    refresh.add_argument("path", type=Path, help="a directory (or file) inside a mount")
    cache = sub.add_parser(
        "cache",
        help="the disk cache (--disk-cache): stats, or clear it; without --cache-dir, every "
        "site's cache under ~/.cache/fwfs/cache",
    )
    cache.add_argument("action", choices=("stats", "clear"))
    add_arguments(cache, "cache")
    prefetch = sub.add_parser(
        "prefetch",
        help="warm the disk cache: read files, directories or projects into it, in parallel, "
        "within its size; run again to go on after an interruption",
    )
    prefetch.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a path inside a running fwfs mount, or a site path (group/project/...)",
    )
    add_arguments(prefetch, "prefetch")
    demo = sub.add_parser("demo", help="run the demo sandbox site and mount it (foreground)")
    demo.add_argument(
        "mountpoint",
        type=Path,
        nargs="?",
        help="where to mount (default: ./flywheel); Ctrl-C unmounts and stops",
    )
    _serve_args(demo)
    demo.add_argument("--no-mount", action="store_true", help="only run the site")
    add_arguments(demo, "demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "verbose", False) or getattr(args, "debug", False)
    log_file = getattr(args, "log_file", None)
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        filename=str(log_file) if log_file else None,
    )
    # urllib3 logs whole URLs at DEBUG, download tickets included.
    logging.getLogger("urllib3").setLevel(logging.INFO)
    if args.command in ("serve", "demo"):
        missing = _missing_extra(args, demo=args.command == "demo" or args.demo)
        if missing:
            print(
                f"fwfs {args.command} needs the sandbox extra, which is not installed "
                f"(missing: {', '.join(missing)}): pip install 'fwfs[sandbox]'",
                file=sys.stderr,
            )
            return 1
    if args.command == "serve":
        return _serve(args, demo=args.demo)
    if args.command == "demo":
        if args.no_mount:
            return _serve(args, demo=True)
        from fwfs.demo import run_demo

        return run_demo(args)
    if args.command == "mount":
        from fwfs.wiring import run_mount

        return run_mount(args)
    if args.command == "doctor":
        import os

        from fwfs.doctor import main as doctor

        return doctor(args.api_key, os.environ, Path.home(), sys.stdout)
    if args.command in ("status", "refresh"):
        # The mount's control channel: nothing of the model or of mfusepy is imported.
        from fwfs import control

        if args.command == "status":
            return control.status_command(args.mountpoint, args.json, sys.stdout, sys.stderr)
        return control.refresh_command(args.path, sys.stdout, sys.stderr)
    if args.command == "cache":
        from fwfs.daemon import cache_home
        from fwfs.diskcache import cache_command

        return cache_command(args.action, args.cache_dir, cache_home(), sys.stdout, sys.stderr)
    if args.command == "prefetch":
        from fwfs.prefetch import prefetch_command

        return prefetch_command(args, sys.stdout, sys.stderr)
    if args.command == "unmount":
        from fwfs.daemon import unmount

        return unmount(args.mountpoint, lazy=args.lazy, timeout=args.timeout)
    return 2


# The sandbox extra's modules, and what needs each: checked before the site starts, so a
# missing one is a line naming the extra, not a traceback from deep in the seeding.
_EXTRA_FOR_SERVING = ("python_multipart",)
_EXTRA_FOR_DEMO = ("pydicom", "nibabel", "numpy")
_EXTRA_FOR_TLS = ("trustme",)


def _missing_extra(args: argparse.Namespace, demo: bool) -> list[str]:
    import importlib

    wanted = list(_EXTRA_FOR_SERVING)
    if demo:
        wanted += _EXTRA_FOR_DEMO
    if getattr(args, "private_ca", False) or getattr(args, "strict", False):
        wanted += _EXTRA_FOR_TLS
    missing = []
    for name in wanted:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _serve(args: argparse.Namespace, demo: bool) -> int:
    # main() has checked the sandbox extra (_missing_extra) before any of it is imported.
    from fwfs.sandbox.server import Sandbox, ServeOptions

    if bool(args.tls_cert) != bool(args.tls_key):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    opts = ServeOptions.from_args(args, demo)
    site = Sandbox(opts)
    info = site.announce()
    print(f"fwfs sandbox listening on {info['url']}", flush=True)
    print(f"API key (read-write): {info['api_key']}", flush=True)
    print(f"API key (read-only):  {info['readonly_api_key']}", flush=True)
    print(f"API key (project member): {info['project_member_api_key']}", flush=True)
    if info.get("ca_cert"):
        print(f"CA certificate: {info['ca_cert']}", flush=True)
    print(f"data: {info['data']}", flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    site.start()
    stop.wait()
    site.stop()
    return 0

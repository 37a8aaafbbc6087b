"""Command line: `fwfs serve` (the sandbox site) and `fwfs demo`.

The only place that reads argv; it builds typed options and hands them down.
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
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fwfs", description="A FUSE filesystem for Flywheel.")
    parser.add_argument("--version", action="version", version=f"fwfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the sandbox: a Flywheel-compatible local site")
    _serve_args(serve)
    serve.add_argument("--demo", action="store_true", help="seed the demo data")
    demo = sub.add_parser("demo", help="run the sandbox with its demo data")
    _serve_args(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command in ("serve", "demo"):
        return _serve(args, demo=args.command == "demo" or args.demo)
    return 2


def _serve(args: argparse.Namespace, demo: bool) -> int:
    try:
        from fwfs.sandbox.server import Sandbox, ServeOptions
    except ImportError as err:
        print(
            f"fwfs serve needs the sandbox extra (pip install 'fwfs[sandbox]'): {err}",
            file=sys.stderr,
        )
        return 1
    if bool(args.tls_cert) != bool(args.tls_key):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    opts = ServeOptions(
        data=args.data,
        host=args.host,
        port=args.port,
        demo=demo,
        ready_file=args.ready_file,
        access_log=args.access_log,
        range_quirk=args.range_quirk,
        signed_url=args.signed_url,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        big_file_mb=args.big_file_mb,
        scale=args.scale,
    )
    site = Sandbox(opts)
    info = site.announce()
    print(f"fwfs sandbox listening on {info['url']}", flush=True)
    print(f"API key (read-write): {info['api_key']}", flush=True)
    print(f"API key (read-only):  {info['readonly_api_key']}", flush=True)
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
